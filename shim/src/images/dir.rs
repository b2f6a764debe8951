//! A directory image store: `<lib>/shim/images/<hex id>/{image.json, rootfs/}`.
//!
//! An image is one layer (its `rootfs/` directory) plus the parts of an image config the
//! runtime uses and the manifest annotations (so a checkpoint image — the archive extracted
//! into the layer, with the checkpoint annotation — can be stored too). Images enter the store
//! by [`DirImages::import_dir`]; `PullImage` only answers for images already present.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::domain::{Auth, FsUsage, ImageBackend, ImageConfig, ImageInfo, Map, ResolvedImage};
use crate::error::{Result, ShimError};

use super::normalize;

/// What `image.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirImage {
    /// `sha256:<hex>`.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub config: ImageConfig,
    #[serde(default)]
    pub annotations: Map,
    pub size: u64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct DirImages {
    root: PathBuf,
}

fn image_err(step: &'static str) -> impl FnOnce(std::io::Error) -> ShimError {
    move |e| ShimError::Image {
        step,
        source: Box::new(e),
    }
}

impl DirImages {
    /// The store under a state root.
    pub fn new(state: &cpengine::container::state::StateRoot) -> Self {
        Self {
            root: state.lib.join("shim").join("images"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn all(&self) -> Vec<(PathBuf, DirImage)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return vec![];
        };
        let mut out: Vec<(PathBuf, DirImage)> = entries
            .flatten()
            .filter_map(|e| {
                let text = std::fs::read(e.path().join("image.json")).ok()?;
                Some((e.path(), serde_json::from_slice(&text).ok()?))
            })
            .collect();
        out.sort_by(|a, b| a.1.id.cmp(&b.1.id));
        out
    }

    /// Finds an image by tag (normalised), id (`sha256:<hex>`, bare hex, or a prefix of 12+
    /// hex digits).
    pub fn find(&self, reference: &str) -> Option<(PathBuf, DirImage)> {
        let want = normalize(reference);
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        self.all().into_iter().find(|(_, img)| {
            let id_hex = img.id.strip_prefix("sha256:").unwrap_or(&img.id);
            img.repo_tags.iter().any(|t| normalize(t) == want)
                || id_hex == hex
                || (hex.len() >= 12
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
                    && id_hex.starts_with(hex))
        })
    }

    /// Imports a root file system directory as image `name` (copied with `cp -a`). A tag that
    /// another image holds moves to the new one.
    pub fn import_dir(
        &self,
        name: &str,
        rootfs: &Path,
        config: ImageConfig,
        annotations: Map,
    ) -> Result<ImageInfo> {
        let tag = normalize(name);
        for (dir, mut img) in self.all() {
            if img.repo_tags.iter().any(|t| normalize(t) == tag) {
                img.repo_tags.retain(|t| normalize(t) != tag);
                self.write(&dir, &img)?;
            }
        }
        let hex = crate::standalone::store::new_id();
        let dir = self.root.join(&hex);
        let tmp = self.root.join(format!(".import-{hex}"));
        std::fs::create_dir_all(tmp.join("rootfs"))
            .map_err(image_err("creating the image directory"))?;
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", rootfs.display()))
            .arg(tmp.join("rootfs"))
            .status()
            .map_err(image_err("copying the root file system"))?;
        if !st.success() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(ShimError::Image {
                step: "copying the root file system",
                source: format!("cp -a exited with {st}").into(),
            });
        }
        let img = DirImage {
            id: format!("sha256:{hex}"),
            repo_tags: vec![tag],
            config,
            annotations,
            size: du(&tmp.join("rootfs")),
        };
        self.write(&tmp, &img)?;
        std::fs::rename(&tmp, &dir).map_err(image_err("committing the image"))?;
        Ok(info(&img))
    }

    fn write(&self, dir: &Path, img: &DirImage) -> Result<()> {
        let data =
            serde_json::to_vec_pretty(img).map_err(|e| ShimError::Internal(e.to_string()))?;
        cpengine::container::state::write_atomic(&dir.join("image.json"), &data, 0o644)
            .map_err(image_err("writing image.json"))
    }
}

fn info(img: &DirImage) -> ImageInfo {
    let (uid, username) = match img.config.user.split(':').next().unwrap_or("") {
        "" => (Some(0), String::new()),
        u => match u.parse::<i64>() {
            Ok(n) => (Some(n), String::new()),
            Err(_) => (None, u.to_string()),
        },
    };
    ImageInfo {
        id: img.id.clone(),
        repo_tags: img.repo_tags.clone(),
        repo_digests: vec![],
        size: img.size,
        uid,
        username,
        annotations: img.annotations.clone(),
        pinned: false,
    }
}

/// Bytes used by the regular files under `dir`.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

impl ImageBackend for DirImages {
    async fn list(&self) -> Result<Vec<ImageInfo>> {
        Ok(self.all().iter().map(|(_, i)| info(i)).collect())
    }

    async fn status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        Ok(self.find(reference).map(|(_, i)| info(&i)))
    }

    async fn pull(&self, reference: &str, _auth: Auth) -> Result<String> {
        match self.find(reference) {
            Some((_, img)) => Ok(img.id),
            None => Err(ShimError::not_found("image", reference)),
        }
    }

    async fn remove(&self, reference: &str) -> Result<()> {
        if let Some((dir, _)) = self.find(reference) {
            std::fs::remove_dir_all(&dir).map_err(image_err("removing the image"))?;
        }
        Ok(())
    }

    async fn fs_info(&self) -> Result<Vec<FsUsage>> {
        let root = self.root.clone();
        let used = tokio::task::spawn_blocking(move || du(&root))
            .await
            .unwrap_or(0);
        Ok(vec![FsUsage {
            mountpoint: self.root.display().to_string(),
            used_bytes: used,
            inodes_used: 0,
        }])
    }

    async fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let (dir, img) = self
            .find(reference)
            .ok_or_else(|| ShimError::not_found("image", reference))?;
        Ok(ResolvedImage {
            image_ref: img.id.clone(),
            config: img.config.clone(),
            layers: vec![dir.join("rootfs")],
            info: info(&img),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn import_find_resolve_remove() {
        let dir = tempfile::tempdir().unwrap();
        let state = cpengine::container::state::StateRoot::at(dir.path());
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("bin")).unwrap();
        std::fs::write(src.join("bin/x"), "hello").unwrap();
        let store = DirImages::new(&state);
        let cfg = ImageConfig {
            cmd: vec!["/bin/x".into()],
            ..Default::default()
        };
        let info = store
            .import_dir("busybox", &src, cfg.clone(), Map::new())
            .unwrap();
        assert_eq!(info.repo_tags, ["docker.io/library/busybox:latest"]);
        assert_eq!(info.size, 5);
        let r = store
            .resolve("docker.io/library/busybox:latest")
            .await
            .unwrap();
        assert_eq!(r.config, cfg);
        assert_eq!(
            std::fs::read_to_string(r.layers[0].join("bin/x")).unwrap(),
            "hello"
        );
        assert!(store.status(&info.id).await.unwrap().is_some());
        assert!(store.status("nope").await.unwrap().is_none());
        assert!(matches!(
            store.pull("nope", Auth::default()).await,
            Err(ShimError::NotFound { .. })
        ));
        // Re-importing the tag moves it.
        let info2 = store
            .import_dir("busybox:latest", &src, cfg, Map::new())
            .unwrap();
        assert_eq!(store.resolve("busybox").await.unwrap().info.id, info2.id);
        assert!(
            store
                .status(&info.id)
                .await
                .unwrap()
                .unwrap()
                .repo_tags
                .is_empty()
        );
        store.remove("busybox").await.unwrap();
        assert!(store.status("busybox").await.unwrap().is_none());
    }
}
