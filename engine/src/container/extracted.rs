//! An extracted checkpoint: where its members are (the archive's layout, [`names`]) and what
//! CRIU's images in it say about the checkpointed container's namespaces. A caller that keeps
//! an extraction between two steps (the shim prepares at `CreateContainer` and restores at
//! `StartContainer`) reopens it here instead of rebuilding the layout.

use std::path::{Path, PathBuf};

use crate::archive::names;
use crate::error::{Error, Result};

use super::restore::CheckpointDir;

impl CheckpointDir {
    /// Reopens the checkpoint extracted at `root` (its `checkpoint/` images, `rootfs-diff.tar`
    /// and `deleted.files`), with the `spec` and `config` the caller kept from the first open.
    pub fn reopen(
        root: &Path,
        spec: serde_json::Value,
        config: Option<serde_json::Value>,
        source: Option<String>,
    ) -> Result<Self> {
        let deleted = crate::archive::read_json_member(root, names::DELETED_FILES)?;
        Ok(Self {
            images_dir: root.join(names::CHECKPOINT_DIR),
            spec,
            config,
            rootfs_diff: Some(root.join(names::ROOTFS_DIFF)).filter(|p| p.is_file()),
            deleted: deleted.unwrap_or_default(),
            source,
        })
    }

    /// Whether the images directory holds CRIU's inventory (every dump writes one).
    pub fn has_images(&self) -> bool {
        self.images_dir.join(names::INVENTORY_IMG).is_file()
    }

    /// The namespaces the checkpointed container had apart from the host's (see
    /// [`DumpedNamespaces`]).
    pub fn dumped_namespaces(&self) -> Result<DumpedNamespaces> {
        DumpedNamespaces::read(&self.images_dir)
    }
}

/// The images directory of the checkpoint extracted at `root`.
pub fn images_dir(root: &Path) -> PathBuf {
    root.join(names::CHECKPOINT_DIR)
}

/// The namespaces (network, IPC, UTS) the checkpointed container had apart from the host's,
/// from CRIU's images: CRIU writes `netns-<id>.img` (also for an external, joined network
/// namespace), `ipcns-var-<id>.img` and `utsns-<id>.img` only for namespaces other than its
/// own. A runtime may name a host namespace by path (containerd joins its pause container's,
/// which is the host's for a host-network pod), so the spec alone cannot tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DumpedNamespaces {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

impl DumpedNamespaces {
    /// Reads the image names in `images_dir`.
    pub fn read(images_dir: &Path) -> Result<Self> {
        let mut d = Self::default();
        let entries = std::fs::read_dir(images_dir)
            .map_err(Error::io(format!("reading {}", images_dir.display())))?;
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let numbered = |prefix: &str| {
                name.strip_prefix(prefix)
                    .and_then(|r| r.strip_suffix(".img"))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            d.net |= numbered("netns-");
            d.ipc |= numbered("ipcns-var-");
            d.uts |= numbered("utsns-");
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopen_finds_the_layout_and_reads_deleted_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(names::CHECKPOINT_DIR)).unwrap();
        let ckpt = CheckpointDir::reopen(dir.path(), serde_json::json!({}), None, None).unwrap();
        assert!(!ckpt.has_images());
        assert!(ckpt.rootfs_diff.is_none() && ckpt.deleted.is_empty());
        std::fs::write(images_dir(dir.path()).join(names::INVENTORY_IMG), b"").unwrap();
        std::fs::write(dir.path().join(names::ROOTFS_DIFF), b"").unwrap();
        std::fs::write(dir.path().join(names::DELETED_FILES), br#"["/a","/b"]"#).unwrap();
        let ckpt = CheckpointDir::reopen(dir.path(), serde_json::json!({}), None, None).unwrap();
        assert!(ckpt.has_images());
        assert_eq!(ckpt.rootfs_diff, Some(dir.path().join(names::ROOTFS_DIFF)));
        assert_eq!(ckpt.deleted, ["/a", "/b"]);
    }

    #[test]
    fn an_oversized_or_bad_deleted_files_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(dir.path().join(names::DELETED_FILES)).unwrap();
        f.set_len(crate::archive::MAX_JSON_BYTES + 1).unwrap();
        let e = CheckpointDir::reopen(dir.path(), serde_json::json!({}), None, None).unwrap_err();
        assert!(
            matches!(&e, Error::Archive(crate::archive::ArchiveError::JsonTooLarge { name, .. }) if name == names::DELETED_FILES),
            "{e:?}"
        );
        std::fs::write(dir.path().join(names::DELETED_FILES), b"{").unwrap();
        let e = CheckpointDir::reopen(dir.path(), serde_json::json!({}), None, None).unwrap_err();
        assert!(
            matches!(&e, Error::Archive(crate::archive::ArchiveError::DecodeJson { name, .. }) if name == names::DELETED_FILES),
            "{e:?}"
        );
    }
}
