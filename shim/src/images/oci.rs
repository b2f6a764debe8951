//! The image backend over cpengine's OCI image store (`<lib>/images`, shared with
//! `cpengine image …`).
//!
//! * `ListImages`/`ImageStatus`/`RemoveImage`/`ImageFsInfo` map onto the store.
//! * `PullImage` answers from the store when the image is there, else pulls from the registry
//!   the reference names (plain HTTP on loopback, HTTPS elsewhere), with the CRI credentials.
//! * A container's rootfs layers are the image's layers unpacked once into
//!   `<lib>/layers/<digest>.v2` (shared with `cpengine restore`) by the engine's
//!   [`cpengine::oci::unpack::layer_dirs`], which uses the safe layer extractor
//!   ([`cpengine::rootfs::apply`]: every path resolved beneath the layer directory, OCI
//!   whiteouts honoured) through a temp directory renamed into place.

use std::path::PathBuf;

use cpengine::oci::{ImageRecord, ImageStore, OciError, RegistryOptions};

use crate::domain::{Auth, FsUsage, ImageBackend, ImageConfig, ImageInfo, ResolvedImage};
use crate::error::{Result, ShimError};

/// The OCI store backend.
#[derive(Debug, Clone)]
pub struct OciImages {
    store: ImageStore,
    layers: PathBuf,
}

fn oci(step: &'static str) -> impl FnOnce(OciError) -> ShimError {
    move |source| ShimError::Oci { step, source }
}

impl OciImages {
    /// Opens the store under the state root's persistent directory.
    pub async fn open(state: &cpengine::container::StateRoot) -> Result<Self> {
        let store = ImageStore::open(&state.lib)
            .await
            .map_err(oci("opening the image store"))?;
        Ok(Self {
            store,
            layers: state.lib.join("layers"),
        })
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    async fn find(&self, reference: &str) -> Result<Option<ImageRecord>> {
        match self.store.resolve(reference).await {
            Ok(r) => Ok(Some(r)),
            Err(OciError::ImageNotFound { .. }) => Ok(None),
            Err(e) => Err(oci("looking the image up")(e)),
        }
    }
}

fn info(r: &ImageRecord, user: Option<&str>) -> ImageInfo {
    let mut annotations = r.index_annotations.clone();
    annotations.extend(r.annotations.clone());
    let (uid, username) = match user.unwrap_or("").split(':').next().unwrap_or("") {
        "" => (Some(0), String::new()),
        u => match u.parse::<i64>() {
            Ok(n) => (Some(n), String::new()),
            Err(_) => (None, u.to_string()),
        },
    };
    ImageInfo {
        id: r.id.clone(),
        repo_tags: r.names.clone(),
        repo_digests: r.repo_digests(),
        size: r.size,
        uid,
        username,
        annotations: annotations.into_iter().collect(),
        pinned: false,
    }
}

impl ImageBackend for OciImages {
    async fn list(&self) -> Result<Vec<ImageInfo>> {
        let records = self.store.list().await.map_err(oci("listing images"))?;
        let mut out = Vec::with_capacity(records.len());
        for r in &records {
            let user = self.store.config(r).await.ok().and_then(|c| c.user);
            out.push(info(r, user.as_deref()));
        }
        Ok(out)
    }

    async fn status(&self, reference: &str) -> Result<Option<ImageInfo>> {
        let Some(r) = self.find(reference).await? else {
            return Ok(None);
        };
        let user = self.store.config(&r).await.ok().and_then(|c| c.user);
        Ok(Some(info(&r, user.as_deref())))
    }

    async fn pull(&self, reference: &str, auth: Auth) -> Result<String> {
        if let Some(r) = self.find(reference).await? {
            return Ok(r.id);
        }
        let credentials = if !auth.username.is_empty() {
            Some((auth.username, auth.password))
        } else if !auth.auth.is_empty() {
            // `auth` is base64("user:password"), as in a docker config.
            decode_basic(&auth.auth)
        } else {
            None
        };
        let opts = RegistryOptions {
            credentials,
            ..Default::default()
        };
        let out = cpengine::oci::pull(reference, &self.store, &opts)
            .await
            .map_err(oci("pulling the image"))?;
        Ok(out.image.id)
    }

    async fn remove(&self, reference: &str) -> Result<()> {
        match self.store.remove(reference).await {
            Ok(_) | Err(OciError::ImageNotFound { .. }) => Ok(()),
            Err(e) => Err(oci("removing the image")(e)),
        }
    }

    async fn fs_info(&self) -> Result<Vec<FsUsage>> {
        let u = self
            .store
            .fs_usage()
            .await
            .map_err(oci("measuring the image store"))?;
        Ok(vec![FsUsage {
            mountpoint: u.path.display().to_string(),
            used_bytes: u.used_bytes,
            inodes_used: u.inodes_used,
        }])
    }

    async fn resolve(&self, reference: &str) -> Result<ResolvedImage> {
        let r = self
            .find(reference)
            .await?
            .ok_or_else(|| ShimError::not_found("image", reference))?;
        let c = self
            .store
            .config(&r)
            .await
            .map_err(oci("reading the image config"))?;
        let mut layers = cpengine::oci::unpack::layer_dirs(&self.store, &r, &self.layers)
            .await
            .map_err(oci("unpacking the image's layers"))?;
        layers.reverse();
        let image_ref = r
            .repo_digests()
            .into_iter()
            .next()
            .unwrap_or_else(|| r.id.clone());
        Ok(ResolvedImage {
            info: info(&r, c.user.as_deref()),
            image_ref,
            config: ImageConfig {
                entrypoint: c.entrypoint,
                cmd: c.cmd,
                env: c.env,
                working_dir: c.working_dir.unwrap_or_default(),
                user: c.user.unwrap_or_default(),
                stop_signal: c.stop_signal.unwrap_or_default(),
            },
            layers,
        })
    }
}

fn decode_basic(b64: &str) -> Option<(String, String)> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in b64.trim().bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_decodes() {
        // "user:pa:ss"
        assert_eq!(
            decode_basic("dXNlcjpwYTpzcw=="),
            Some(("user".into(), "pa:ss".into()))
        );
        assert_eq!(decode_basic("!!"), None);
    }
}
