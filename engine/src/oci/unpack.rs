//! Image layers unpacked to directories, for overlay lower layers (a restored container's base,
//! a shim container's rootfs). Each layer is unpacked once, with the safe extractor
//! ([`crate::rootfs::apply_layer`]: everything resolved beneath the layer directory, OCI
//! whiteouts kept as overlay whiteouts and opaque directories), into `<cache>/<digest>.v2` via a temp directory renamed into place, so a crash never
//! leaves a half-unpacked layer that looks complete.

use std::path::{Path, PathBuf};

use super::{ImageRecord, ImageStore, OciError, OciResult};

/// The image's layers unpacked under `cache`, top-most first (overlay `lowerdir` order).
pub async fn layer_dirs(
    store: &ImageStore,
    record: &ImageRecord,
    cache: &Path,
) -> OciResult<Vec<PathBuf>> {
    let layers = store.layers(record).await?;
    let mut dirs = Vec::with_capacity(layers.len());
    for layer in &layers {
        // `.v2`: unpacked with overlay whiteouts. A directory an older cpengine unpacked
        // without them (files a later layer deleted would reappear) is never reused.
        let key = format!("{}.v2", layer.digest.replace(':', "-"));
        let dir = cache.join(&key);
        if !dir.is_dir() {
            let store = store.clone();
            let layer = layer.clone();
            let (cache, dir2) = (cache.to_path_buf(), dir.clone());
            tokio::task::spawn_blocking(move || unpack_one(&store, &layer, &cache, &dir2))
                .await
                .map_err(|e| OciError::Unpack {
                    digest: key.clone(),
                    reason: format!("task failed: {e}"),
                })??;
        }
        dirs.push(dir);
    }
    dirs.reverse();
    Ok(dirs)
}

fn unpack_one(
    store: &ImageStore,
    layer: &super::LayerInfo,
    cache: &Path,
    dir: &Path,
) -> OciResult<()> {
    let unpack_err = |reason: String| OciError::Unpack {
        digest: layer.digest.clone(),
        reason,
    };
    // Unpacked layers keep their set-uid binaries and device-free /dev (see rootfs::apply):
    // the cache must not be reachable by other users of the host, or any of them could run a
    // set-uid-root program from any image. 0700, also when an older version made it 0755.
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cache)
            .and_then(|()| std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| unpack_err(format!("creating {}: {e}", cache.display())))?;
    }
    let tmp = cache.join(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir(&tmp)
        .map_err(|e| unpack_err(format!("creating {}: {e}", tmp.display())))?;
    let result = store
        .open_layer(layer)
        .and_then(|r| {
            // A compressed layer must not fill the disk: at most the free space is written.
            let mut limits = crate::rootfs::ApplyLimits::default();
            limits.max_bytes = limits.max_bytes.min(crate::host::fs::free_bytes(&tmp));
            crate::rootfs::apply_layer(&tmp, r, &limits).map_err(|e| unpack_err(e.to_string()))
        })
        .and_then(|_| match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            // Someone else unpacked it meanwhile.
            Err(_) if dir.is_dir() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(unpack_err(format!("renaming into {}: {e}", dir.display()))),
        });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
