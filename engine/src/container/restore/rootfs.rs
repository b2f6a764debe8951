//! Step 1 of a restore: the new rootfs. An overlay whose lower layers are the container's base
//! (a directory, a tarball unpacked into the container's lib dir, or an image's unpacked
//! layers) and whose upper layer starts empty; the checkpoint's rootfs diff is applied on top
//! and the deleted files removed.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

use super::options::{CheckpointDir, ContainerRestoreOptions, RootfsBase};
use super::undo::Cleanup;

/// The restored container's rootfs: mounted at `path`, an overlay of `lowers` (top first)
/// with `upper` and `work` in the container's lib dir.
pub(crate) struct Rootfs {
    pub(crate) path: PathBuf,
    pub(crate) lowers: Vec<PathBuf>,
    pub(crate) upper: PathBuf,
    pub(crate) work: PathBuf,
}

/// Mounts the rootfs at `<run_dir>/rootfs` (a mount point whose parent is not over-mounted,
/// which is what CRIU needs for `root`) and applies the checkpoint's changes to it. The mount
/// goes on the undo list as soon as it exists.
pub(crate) async fn prepare(
    ckpt: &CheckpointDir,
    opts: &ContainerRestoreOptions,
    run_dir: &Path,
    lib_dir: &Path,
    cleanup: &mut Cleanup,
) -> Result<Rootfs> {
    let lowers = base_lowers(opts, lib_dir).await?;
    let (upper, work, rootfs) = (
        lib_dir.join("upper"),
        lib_dir.join("work"),
        run_dir.join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))?;
    }
    mount_overlay(&lowers, &upper, &work, &rootfs)?;
    cleanup.mounted = Some(rootfs.clone());
    // The new root must have the mode CRIU recorded for the old one.
    if let Ok(Some(mode)) = crate::images::root_dir_mode(&ckpt.images_dir) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(mode)).map_err(
            Error::io(format!("setting the mode of {}", rootfs.display())),
        )?;
    }
    if ckpt.rootfs_diff.is_some() || !ckpt.deleted.is_empty() {
        let (r, diff, deleted) = (
            rootfs.clone(),
            ckpt.rootfs_diff.clone(),
            ckpt.deleted.clone(),
        );
        crate::blocking(move || apply_diff(&r, diff.as_deref(), &deleted)).await?;
    }
    Ok(Rootfs {
        path: rootfs,
        lowers,
        upper,
        work,
    })
}

/// The overlay's lower layers (top first): the caller's base directory, a base tarball
/// unpacked into `<lib_dir>/base`, or the base image's layers.
async fn base_lowers(opts: &ContainerRestoreOptions, lib_dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(match &opts.base {
        None => opts.base_layers.clone(),
        Some(RootfsBase::Dir(d)) => vec![d.clone()],
        Some(RootfsBase::Tar(t)) => {
            let dir = lib_dir.join("base");
            std::fs::create_dir_all(&dir)
                .map_err(Error::io(format!("creating {}", dir.display())))?;
            let (t, d2) = (t.clone(), dir.clone());
            crate::blocking(move || {
                let f = std::fs::File::open(&t)
                    .map_err(Error::io(format!("opening {}", t.display())))?;
                crate::rootfs::apply_with(&d2, f, &[], &space_limits(&d2))?;
                Ok(())
            })
            .await?;
            vec![dir]
        }
    })
}

/// Mounts an overlay.
pub fn mount_overlay(lowers: &[PathBuf], upper: &Path, work: &Path, target: &Path) -> Result<()> {
    let lower = lowers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let data = format!(
        "lowerdir={lower},upperdir={},workdir={}",
        upper.display(),
        work.display()
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| Error::io(format!("mounting overlay at {}", target.display()))(e.into()))
}

/// Applies the rootfs changes: the diff tar over the rootfs (safely, beneath it), then the
/// deletions.
fn apply_diff(rootfs: &Path, diff: Option<&Path>, deleted: &[String]) -> Result<()> {
    match diff {
        Some(d) => {
            let f =
                std::fs::File::open(d).map_err(Error::io(format!("opening {}", d.display())))?;
            crate::rootfs::apply_with(rootfs, f, deleted, &space_limits(rootfs))?;
        }
        // An empty tar (two zero blocks) carries only the deletions.
        None => {
            crate::rootfs::apply_with(
                rootfs,
                std::io::Read::take(std::io::repeat(0), 1024),
                deleted,
                &space_limits(rootfs),
            )?;
        }
    }
    Ok(())
}

/// Apply caps for a diff written into `dir`: its file system's free space.
fn space_limits(dir: &Path) -> crate::rootfs::ApplyLimits {
    let mut l = crate::rootfs::ApplyLimits::default();
    l.max_bytes = l.max_bytes.min(crate::host::fs::free_bytes(dir));
    l
}
