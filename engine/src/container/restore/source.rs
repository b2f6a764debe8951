//! Where a checkpoint comes from: an archive file, or a checkpoint image (local, or pulled
//! from its registry), extracted within the free space of its target; and the base image a
//! restore from the image store uses.

use std::path::Path;

use crate::container::state::StateRoot;
use crate::error::{Error, Result};

use super::options::CheckpointDir;

/// Where a checkpoint comes from: an archive file, or an image (local or in a registry).
pub async fn open_source(
    source: &str,
    state: &StateRoot,
    target: &Path,
    insecure: bool,
    trust: Option<&crate::archive::sign::TrustedKeys>,
) -> Result<(CheckpointDir, crate::archive::Extracted)> {
    // What is extracted must fit where it goes: a decompression bomb stops at the free space,
    // with a typed error, before the disk is full.
    let mut limits = crate::archive::Limits::default();
    limits.max_total_bytes = limits.max_total_bytes.min(crate::host::fs::free_bytes(
        target.parent().unwrap_or(target),
    ));
    // Only an absolute path names a file: a relative one would resolve against whatever the
    // caller's working directory is, so that an image reference such as `tmp/x` could name a
    // file instead of the image.
    let path = Path::new(source);
    let archive = if path.is_absolute() && path.is_file() {
        path.to_path_buf()
    } else {
        // An image reference: local store first, then the registry it names.
        let store = crate::oci::ImageStore::open(&state.lib).await?;
        let record = match store.resolve(source).await {
            Ok(r) => r,
            #[cfg(feature = "registry")]
            Err(_) => {
                let ro = crate::oci::RegistryOptions {
                    insecure,
                    ..Default::default()
                };
                crate::oci::pull(source, &store, &ro).await?;
                store.resolve(source).await?
            }
            #[cfg(not(feature = "registry"))]
            Err(e) => {
                let _ = insecure;
                return Err(e.into());
            }
        };
        if crate::oci::is_checkpoint_image(&record).is_none() {
            return Err(Error::NotACheckpointImage {
                reference: source.to_string(),
            });
        }
        let mut layer = crate::oci::checkpoint_layer(&store, &record).await?;
        let tar = target.with_extension("layer.tar");
        // The layer is decompressed to disk: at most what the extraction may write.
        let cap = limits.max_total_bytes;
        let t2 = tar.clone();
        crate::blocking(move || {
            let mut f = std::fs::File::create(&t2)
                .map_err(Error::io(format!("creating {}", t2.display())))?;
            copy_capped(&mut layer, &mut f, cap)?;
            Ok(())
        })
        .await?;
        tar
    };
    let (a, t, trust) = (archive.clone(), target.to_path_buf(), trust.cloned());
    let extracted = crate::blocking(move || {
        let opts = crate::archive::ReadOptions {
            limits,
            trust: trust.as_ref(),
            ..Default::default()
        };
        Ok(crate::archive::extract_with(&a, &t, &opts)?)
    })
    .await;
    if archive != path {
        let _ = std::fs::remove_file(&archive);
    }
    let extracted = extracted?;
    let config = serde_json::to_value(&extracted.config).ok();
    let dir = CheckpointDir {
        images_dir: extracted.images_dir.clone(),
        spec: extracted.spec.clone(),
        config,
        rootfs_diff: extracted.rootfs_diff.clone(),
        deleted: extracted.deleted.clone(),
        source: Some(source.to_string()),
    };
    Ok((dir, extracted))
}

/// The base image of a restore from the image store: the one the caller names (`explicit`,
/// any form the store resolves), else the one the checkpoint's `config.dump` names, matched
/// exactly (a whole reference or id): an archive never picks an image by id prefix.
pub(crate) async fn base_image_record(
    store: &crate::oci::ImageStore,
    explicit: Option<&str>,
    config: &crate::archive::ConfigDump,
) -> Result<crate::oci::ImageRecord> {
    if let Some(name) = explicit {
        return store
            .resolve(name)
            .await
            .map_err(|source| Error::BaseImageMissing {
                name: name.to_owned(),
                source,
            });
    }
    // The archive's word: its names in the one precedence (most exact first), each matched
    // whole (a full reference or a full id), never as an id prefix.
    let refs = config.base_image_refs();
    let mut missing = None;
    for r in &refs {
        match store.resolve_exact(r).await {
            Ok(rec) => return Ok(rec),
            Err(e) => missing = missing.or(Some(e)),
        }
    }
    match missing {
        Some(source) => Err(Error::BaseImageMissing {
            name: refs.join(" / "),
            source,
        }),
        None => Err(Error::NoBaseImage),
    }
}

/// Copies `r` into `w`, refusing more than `cap` bytes (a decompressed layer that would fill
/// the disk) with [`ArchiveError::TotalTooLarge`](crate::archive::ArchiveError::TotalTooLarge),
/// as the archive it holds would be; returns the bytes copied.
fn copy_capped(r: impl std::io::Read, w: &mut impl std::io::Write, cap: u64) -> Result<u64> {
    let n = std::io::copy(&mut r.take(cap.saturating_add(1)), w)
        .map_err(Error::io("reading the checkpoint image's layer"))?;
    if n > cap {
        return Err(crate::archive::ArchiveError::TotalTooLarge { limit: cap }.into());
    }
    Ok(n)
}

#[cfg(test)]
mod copy_cap_tests {
    use std::io::Read;

    use super::*;

    /// A layer that decompresses past the cap stops there with a typed error.
    #[test]
    fn the_decompressed_layer_is_capped() {
        let mut out = Vec::new();
        let mut big = std::io::repeat(0).take(10 << 20);
        let e = copy_capped(&mut big, &mut out, 1 << 20).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Archive(crate::archive::ArchiveError::TotalTooLarge { limit }) if limit == 1 << 20
            ),
            "{e:?}"
        );
        assert!(out.len() as u64 <= (1 << 20) + 1);
        let mut small = std::io::repeat(1).take(1000);
        assert_eq!(
            copy_capped(&mut small, &mut Vec::new(), 1000).unwrap(),
            1000
        );
    }

    /// Review of the signing change: a relative path is an image reference, never a file in
    /// whatever the working directory is (the shim's `tmp/x` image would have read `/tmp/x`).
    #[tokio::test]
    async fn a_relative_path_is_an_image_reference_not_a_file() {
        assert!(
            Path::new("Cargo.toml").is_file(),
            "run from the package directory"
        );
        let d = tempfile::tempdir().unwrap();
        let state = StateRoot::at(d.path());
        let e = open_source("Cargo.toml", &state, &d.path().join("t"), false, None)
            .await
            .unwrap_err();
        assert!(!matches!(e, Error::Archive(_)), "read as an archive: {e:?}");
        let abs = std::path::absolute("Cargo.toml").unwrap();
        let e = open_source(
            abs.to_str().unwrap(),
            &state,
            &d.path().join("t"),
            false,
            None,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, Error::Archive(_)),
            "an absolute path is a file: {e:?}"
        );
    }
}
