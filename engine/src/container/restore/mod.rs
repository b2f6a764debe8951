//! Restoring a container from a checkpoint, natively over swrk.
//!
//! 1. A new rootfs: an overlay whose lower layer is the container's base (image) tree and
//!    whose upper layer starts empty; the checkpoint's rootfs diff is applied on top and the
//!    deleted files removed. It is mounted at `<run>/containers/<id>/rootfs`, a mount point
//!    whose parent is not over-mounted, which is what CRIU needs for `root`.
//! 2. A bundle with the checkpoint's spec pointing at that rootfs, and every mount point the
//!    spec needs created in it (except under tmpfs mounts, whose content CRIU restores).
//! 3. Cgroups for the container beside our own; the CRIU worker joins them before the request,
//!    so `cg_root` puts the restored tasks there.
//! 4. Stdio: the pipes recorded in `descriptors.json` are replaced (`inherit_fd`) by new pipes
//!    whose read ends go to a detached log relay ([`super::relay`]).
//! 5. RESTORE with runc's options (external mounts mapped to their new sources, evasive devices,
//!    `rst_sibling`, empty network namespace),
//! 6. then a record in cpengine's state so `ps`, `kill`, `delete` and the next checkpoint
//!    find it.
//!
//! Anything that fails undoes what was done: the relay stops, the rootfs is unmounted, the
//! cgroups and the state directories are removed. The checkpoint itself is never modified.
//!
//! [`restore`] reads top-down through the steps, each in its own module: `policy` (verify
//! the images, decide the containment, before anything is created), `rootfs` (1), `bundle`
//! (2), `runtime` (3 and 5: cgroups, the CRIU request, the restored init), `stdio` (4),
//! `record` (6); `undo` holds what a failure undoes. [`restore_archive`] extracts an archive
//! or image first (`source`).

mod bundle;
mod options;
mod policy;
mod record;
mod rootfs;
mod runtime;
mod source;
mod stdio;
mod undo;

use std::path::PathBuf;
use std::time::Instant;

use crate::Engine;
use crate::container::validate_id;
use crate::error::{Error, Result};
use crate::report::Phase;

pub use self::bundle::spec_with_root;
pub use self::options::{
    CheckpointDir, ContainerRestoreOptions, ContainerRestoreReport, RootfsBase,
};
pub use self::rootfs::mount_overlay;
pub(crate) use self::source::base_image_record;
pub use self::source::open_source;

/// Restores a container from `ckpt`.
pub async fn restore(
    engine: &Engine,
    ckpt: &CheckpointDir,
    opts: &ContainerRestoreOptions,
) -> Result<ContainerRestoreReport> {
    let started = Instant::now();
    let id = opts.id.as_str();
    validate_id(id)?;
    // Every bind mount's host source is decided before anything is created.
    let bind_plan = crate::container::binds::plan(&ckpt.spec, &opts.binds)?;
    let t = Instant::now();
    let verification = policy::verify_images(ckpt, opts).await?;
    let mut phases = vec![Phase::new("verify images", t.elapsed())];
    let containment = policy::containment(opts)?;
    // Two restores under one id must not race between the check and the record.
    let _lock = crate::container::lock::lock(&opts.state, id, opts.flags.timeout).await?;
    let record_path = opts.state.container_record(id);
    if record_path.exists() {
        return Err(crate::container::ContainerError::AlreadyExists { id: id.to_string() }.into());
    }
    if opts.base.is_none() && opts.base_layers.is_empty() {
        return Err(Error::NoRootfsBase);
    }
    let run_dir = opts.state.container_run_dir(id);
    let lib_dir = opts.state.container_lib_dir(id);
    let (mut journal, mut cleanup) = undo::start(&opts.state, id, &run_dir, &lib_dir)?;

    // 1. rootfs
    let t = Instant::now();
    let rootfs = rootfs::prepare(ckpt, opts, &run_dir, &lib_dir, &mut cleanup).await?;
    phases.push(Phase::new("rootfs", t.elapsed()));

    // 2. bundle, 3. cgroups, 4. stdio
    let t = Instant::now();
    let bundle = bundle::write(ckpt, &bind_plan, &run_dir, &lib_dir, &rootfs.path)?;
    let cgroups = runtime::cgroups(id, &containment, &mut journal, &mut cleanup)?;
    let log_path = opts
        .log_path
        .clone()
        .unwrap_or_else(|| lib_dir.join("container.log"));
    let (inherit, relay) = stdio::start(&ckpt.images_dir, opts.relay_exe.as_ref(), &log_path)?;
    phases.push(Phase::new("bundle, cgroups, stdio", t.elapsed()));

    // 5. RESTORE
    cleanup.netns = runtime::joined_netns(opts);
    let ro = runtime::criu_options(
        ckpt,
        opts,
        &run_dir,
        &rootfs.path,
        &bundle,
        &cgroups,
        inherit,
    )?;
    let restored = runtime::run(engine, ro, &mut journal, relay).await?;
    phases.extend(restored.criu.phases.iter().cloned());

    // 6. record
    record::save(
        &record_path,
        record::Parts {
            id,
            ckpt,
            restored: &restored,
            bundle: &bundle,
            rootfs: &rootfs,
            cgroups: &cgroups,
            log_path: &log_path,
        },
    )?;
    cleanup.armed = false;
    Ok(ContainerRestoreReport {
        id: id.to_string(),
        pid: restored.pid,
        rootfs: rootfs.path,
        log_path,
        relay_pid: restored.relay_pid,
        verification,
        criu: restored.criu,
        phases,
        total: started.elapsed(),
    })
}

/// Restores a container from an archive path or a checkpoint image reference. Without a base
/// in `opts`, the base image named in the checkpoint's config.dump is looked up in the image
/// store and its layers are used.
pub async fn restore_archive(
    engine: &Engine,
    source: &str,
    opts: &ContainerRestoreOptions,
    insecure: bool,
) -> Result<ContainerRestoreReport> {
    validate_id(&opts.id)?;
    // Refused before anything is extracted (restore checks again under the id's lock).
    if opts.state.container_record(&opts.id).exists() {
        return Err(crate::container::ContainerError::AlreadyExists {
            id: opts.id.clone(),
        }
        .into());
    }
    // A lazy restore reads pages from the images after it returns: they are extracted into
    // the container's own state (removed with the container, or by a failed restore).
    let work = if opts.lazy_pages {
        opts.state.container_lib_dir(&opts.id).join("checkpoint")
    } else {
        opts.state
            .lib
            .join("restores")
            .join(format!("{}-{:08x}", opts.id, rand::random::<u32>()))
    };
    // Should this process die while it extracts, the next engine start removes the extraction.
    let _journal = crate::container::journal::begin(
        &opts.state,
        crate::container::journal::InFlight::restore(&opts.id, vec![work.clone()]),
    )
    .map_err(Error::io("writing the restore journal"))?;
    std::fs::create_dir_all(work.parent().unwrap_or(&work))
        .map_err(Error::io("creating the restore work dir"))?;
    struct Gone(Option<PathBuf>);
    impl Drop for Gone {
        fn drop(&mut self) {
            if let Some(p) = &self.0 {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }
    let mut gone = Gone(Some(if opts.lazy_pages {
        opts.state.container_lib_dir(&opts.id)
    } else {
        work.clone()
    }));
    let t = Instant::now();
    let trust = opts.require_signed.as_ref();
    let (ckpt, extracted) = open_source(source, &opts.state, &work, insecure, trust).await?;
    let extract_time = t.elapsed();
    let mut opts = opts.clone();
    if opts.base.is_none() && opts.base_layers.is_empty() {
        let store = crate::oci::ImageStore::open(&opts.state.lib).await?;
        let record =
            base_image_record(&store, opts.base_image.as_deref(), &extracted.config).await?;
        opts.base_layers =
            crate::oci::unpack::layer_dirs(&store, &record, &opts.state.lib.join("layers")).await?;
    }
    let mut report = restore(engine, &ckpt, &opts).await?;
    if opts.lazy_pages {
        // The daemon still reads the images; they go with the container.
        gone.0 = None;
    }
    report
        .phases
        .insert(0, Phase::new("extract checkpoint", extract_time));
    // The whole restore, extraction included.
    report.total += extract_time;
    Ok(report)
}
