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
//!    `rst_sibling`, empty network namespace), then a record in cpengine's state so `ps`,
//!    `kill`, `delete` and the next checkpoint find it.
//!
//! Anything that fails undoes what was done: the relay stops, the rootfs is unmounted, the
//! cgroups and the state directories are removed. The checkpoint itself is never modified.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::Engine;
use crate::criu::{Ack, Notification};
use crate::error::{Error, Result};
use crate::options::{CgroupMode, CriuFlags, ExtMount, InheritFd, RestoreOptions};
use crate::report::{Phase, RestoreReport};

use super::descriptors::read_descriptors;
use super::state::{ContainerRecord, StateRoot};
use super::{RUNC_DEFAULT_DEVICES, validate_id};

pub use crate::rootfs::Base as RootfsBase;

/// A checkpoint laid out on disk (an extracted archive, or a dump made in place).
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    /// CRIU images (the archive's `checkpoint/`).
    pub images_dir: PathBuf,
    /// The container's OCI spec (`spec.dump`).
    pub spec: serde_json::Value,
    /// `config.dump`, if any.
    pub config: Option<serde_json::Value>,
    /// The rootfs changes (`rootfs-diff.tar`), if any.
    pub rootfs_diff: Option<PathBuf>,
    /// Paths deleted from the base (`deleted.files`).
    pub deleted: Vec<String>,
    /// Where it came from (archive path or image reference), for the record.
    pub source: Option<String>,
}

/// How to restore.
#[derive(Debug, Clone)]
pub struct ContainerRestoreOptions {
    /// Id of the restored container.
    pub id: String,
    pub base: Option<RootfsBase>,
    pub state: StateRoot,
    /// Where the container's output goes (default: `<lib>/containers/<id>/container.log`).
    pub log_path: Option<PathBuf>,
    /// Join this network namespace instead of creating an empty one (a pod's).
    pub netns: Option<PathBuf>,
    /// Join these existing namespaces (a pod's IPC and UTS) instead of recreating the dumped
    /// ones, as runc does for namespaces its spec gives by path.
    pub join_ns: Vec<crate::options::JoinNamespace>,
    /// The CRIU knobs (`leave_running` and `network_lock` unused; see [`CriuFlags`]).
    pub flags: CriuFlags,
    /// The binary that runs the log relay (default: [`super::relay::default_exe`]).
    pub relay_exe: Option<PathBuf>,
    /// Overlay lower layers (top first) to use as the base when `base` is not given (an
    /// image's unpacked layers).
    pub base_layers: Vec<PathBuf>,
    /// The base image the caller names (a reference or id in the image store), used when
    /// neither `base` nor `base_layers` is given. Without it, only an image the checkpoint's
    /// `config.dump` names exactly (a whole reference or id, never an id prefix) is used.
    pub base_image: Option<String>,
    /// Lazy restore: the container runs as soon as its tasks exist, and a lazy-pages daemon
    /// copies its memory in on demand and in the background (see [`crate::criu::lazy`]). The
    /// checkpoint's images stay in the container's state until it is deleted.
    pub lazy_pages: bool,
    /// Where the checkpoint's bind mounts get their host sources (see [`super::binds`]).
    pub binds: super::binds::BindMounts,
    /// What the restored container may have, from the live request (see [`crate::policy`]);
    /// the checkpoint's images are verified against it before anything is created.
    pub policy: crate::policy::RestorePolicy,
    /// The device rules and resource limits of the live request, written into the
    /// container's cgroups before CRIU resumes it (the policy's devices and `privileged` are
    /// added to them).
    pub containment: super::containment::Containment,
}

impl ContainerRestoreOptions {
    pub fn new(id: impl Into<String>, state: StateRoot) -> Self {
        Self {
            id: id.into(),
            base: None,
            state,
            log_path: None,
            netns: None,
            join_ns: Vec::new(),
            flags: CriuFlags::default(),
            relay_exe: None,
            base_layers: Vec::new(),
            base_image: None,
            lazy_pages: false,
            binds: Default::default(),
            policy: Default::default(),
            containment: Default::default(),
        }
    }
}

/// The result of a container restore.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerRestoreReport {
    pub id: String,
    pub pid: i32,
    pub rootfs: PathBuf,
    pub log_path: PathBuf,
    /// Pid of the process relaying the container's output into `log_path`.
    pub relay_pid: i32,
    /// What the verification of the images against the policy covered (or that it was
    /// skipped because the caller trusts the archive).
    pub verification: crate::policy::Verdict,
    pub criu: RestoreReport,
    pub phases: Vec<Phase>,
    #[serde(rename = "total_ms", serialize_with = "crate::report::ser_duration_ms")]
    pub total: std::time::Duration,
}

/// Undo list for a restore in progress.
#[derive(Default)]
struct Cleanup {
    mounted: Option<PathBuf>,
    cgroups: BTreeMap<String, PathBuf>,
    dirs: Vec<PathBuf>,
    /// A namespace the restore joined: CRIU may have left its network lock in it.
    netns: Option<PathBuf>,
    armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Whatever CRIU left of the tree (half-restored, stopped, or already running past
        // pre-resume) lives in the container's cgroups: nothing of a failed restore survives.
        let killed = crate::cgroups::kill_all(&self.cgroups);
        if killed > 0 {
            tracing::warn!(killed, "killed the tasks of a failed restore");
        }
        if let Some(ns) = &self.netns
            && let Err(e) = crate::netlock::unlock(ns)
        {
            tracing::error!(netns = %ns.display(), error = %e, "removing criu's network lock failed");
        }
        if let Some(m) = &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = crate::cgroups::remove_all(&self.cgroups);
        if !left.is_empty() {
            tracing::warn!(?left, "cgroups of a failed restore could not be removed");
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

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
    let bind_plan = super::binds::plan(&ckpt.spec, &opts.binds)?;
    // The images against the live request's policy, before anything is mounted,
    // started or locked (read-only: no lock needed).
    let t = Instant::now();
    let verification = {
        let (dir, spec, policy) = (
            ckpt.images_dir.clone(),
            ckpt.spec.clone(),
            opts.policy.clone(),
        );
        crate::blocking(move || {
            let plan = crate::policy::VerifyPlan::for_container(&spec, &policy);
            Ok(crate::policy::verify(&dir, &spec, &policy, &plan)?)
        })
        .await?
    };
    if verification.trusted_unverified {
        tracing::warn!(
            container = id,
            "restoring WITHOUT verifying the checkpoint: the caller trusts the archive (--trust-archive)"
        );
    }
    let verify_time = t.elapsed();
    // What the container is held to after the restore, decided before anything is created.
    let mut containment = opts.containment.clone();
    containment.all_devices |= opts.policy.privileged;
    for d in &opts.policy.devices {
        containment
            .devices
            .push(super::containment::DeviceRule::of_path(d)?);
    }
    // Two restores under one id must not race between the check and the record.
    let _lock = super::lock::lock(&opts.state, id, opts.flags.timeout).await?;
    let record_path = opts.state.container_record(id);
    if record_path.exists() {
        return Err(super::ContainerError::AlreadyExists { id: id.to_string() }.into());
    }
    if opts.base.is_none() && opts.base_layers.is_empty() {
        return Err(Error::NoRootfsBase);
    }
    let run_dir = opts.state.container_run_dir(id);
    let lib_dir = opts.state.container_lib_dir(id);
    // If this process dies before the record is written, the next engine start undoes what is
    // listed here (see `journal`; `restore_archive` journals its extraction itself).
    let mut journal = super::journal::begin(
        &opts.state,
        super::journal::InFlight::restore(id, vec![run_dir.clone(), lib_dir.clone()]),
    )
    .map_err(Error::io("writing the restore journal"))?;
    let mut cleanup = Cleanup::default();
    cleanup.armed = true;
    for d in [&run_dir, &lib_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(Error::io(format!("creating {}", d.display())))?;
        cleanup.dirs.push(d.clone());
    }
    let mut phases = vec![Phase::new("verify images", verify_time)];

    // 1. rootfs
    let t = Instant::now();
    let lowers: Vec<PathBuf> = match &opts.base {
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
    };
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
    phases.push(Phase::new("rootfs", t.elapsed()));

    // 2. bundle
    let t = Instant::now();
    let bundle = run_dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(Error::io("creating the bundle"))?;
    // The spec must be a valid OCI runtime spec before anything is derived from it (a hostile
    // spec.dump of the wrong shape is an error, never a panic).
    let mut spec_in = ckpt.spec.clone();
    super::binds::apply(&mut spec_in, &bind_plan, &lib_dir.join("binds"))?;
    let (spec, spec_json) = spec_with_root(&spec_in, &rootfs)?;
    super::state::write_atomic(
        &bundle.join("config.json"),
        &serde_json::to_vec_pretty(&spec_json).unwrap_or_default(),
        0o600,
    )
    .map_err(Error::io("writing the bundle's config.json"))?;
    let mounts = spec.mounts().clone().unwrap_or_default();
    prepare_mount_points(&rootfs, &mounts)?;
    let has_pidns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid)
        });
    let namespaces: Vec<String> = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .map(|n| runc_ns_name(n.typ()).to_string())
        .collect();

    // 3. cgroups
    let cg_name = format!("cpengine-{id}");
    // Journaled before they exist: a death while they are made leaves none behind.
    let planned =
        crate::cgroups::beside_self(&cg_name).map_err(|source| Error::Cgroups { source })?;
    journal
        .update(|e| e.cgroups = planned.clone())
        .map_err(Error::io("writing the restore journal"))?;
    let cgroups = crate::cgroups::create(&planned).map_err(|source| Error::Cgroups { source })?;
    cleanup.cgroups = cgroups.clone();
    // Device rules and limits before any task (the CRIU worker included) joins them.
    super::containment::apply(&cgroups, &containment)?;

    // 4. stdio: new pipes for the recorded ones, read by a relay into the log
    let log_path = opts
        .log_path
        .clone()
        .unwrap_or_else(|| lib_dir.join("container.log"));
    let descriptors = read_descriptors(&ckpt.images_dir);
    let mut ro = RestoreOptions::new(&ckpt.images_dir);
    ro.work_dir = Some(run_dir.join("work"));
    let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating stdio pipes")(e.into()))?;
    let (err_r, err_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating stdio pipes")(e.into()))?;
    let mut keys_seen: Vec<String> = Vec::new();
    for (i, key) in descriptors.iter().enumerate() {
        if !key.starts_with("pipe:") || keys_seen.contains(key) {
            continue;
        }
        keys_seen.push(key.clone());
        let fd: OwnedFd = match i {
            // stdin: a pipe whose writer is gone reads as end of file.
            0 => {
                let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                    .map_err(|e| Error::io("creating stdio pipes")(e.into()))?;
                drop(w);
                r
            }
            1 => out_w
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::io("dup"))?,
            _ => err_w
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::io("dup"))?,
        };
        ro.inherit_fds.push(InheritFd {
            key: key.clone(),
            fd,
        });
    }
    let relay_exe = match &opts.relay_exe {
        Some(p) => p.clone(),
        None => super::relay::default_exe().map_err(Error::io("locating the log relay binary"))?,
    };
    let relay_pid = super::relay::spawn(&relay_exe, &log_path, out_r, err_r)
        .map_err(Error::io("starting the log relay"))?;
    phases.push(Phase::new("bundle, cgroups, stdio", t.elapsed()));

    // 5. RESTORE
    ro.root = Some(rootfs.clone());
    ro.evasive_devices = true;
    ro.flags = opts.flags.clone();
    ro.cgroups = Some(CgroupMode::Soft);
    ro.orphan_pts_master = true;
    ro.empty_net_ns = opts.netns.is_none();
    ro.check_pids = !has_pidns;
    ro.lazy_pages = opts.lazy_pages;
    ro.join_cgroups = cgroups.clone();
    ro.ext_mounts = restore_ext_mounts(&mounts, &cgroups, &spec);
    cleanup.netns = opts.netns.clone().or_else(|| {
        opts.join_ns
            .iter()
            .find(|j| j.ns == "net")
            .map(|j| j.path.clone())
    });
    ro.join_ns = opts.join_ns.clone();
    if let Some(netns) = &opts.netns {
        let f = std::fs::File::open(netns)
            .map_err(Error::io(format!("opening {}", netns.display())))?;
        ro.inherit_fds.push(InheritFd {
            key: "extRootNetNS".into(),
            fd: f.into(),
        });
    }
    let mut restored_pid = -1;
    let mut handler = |n: Notification| {
        if let Notification::PostRestore { pid } = n {
            restored_pid = pid;
        }
        Ack::ok()
    };
    let result = {
        let mut journaled = super::journal::Journaled {
            entry: &mut journal,
            inner: &mut handler,
        };
        engine.restore_with(ro, &mut journaled).await
    };
    // Our copies of the pipes' write ends must go, or the relay never sees end of file.
    drop(out_w);
    drop(err_w);
    let criu = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(relay_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
    };
    let pid = if criu.pid > 0 { criu.pid } else { restored_pid };
    phases.extend(criu.phases.iter().cloned());
    // The record's identity of the restored init: without its start time a later check
    // could take any process for it, so the restore fails (Cleanup kills the tree).
    let pid_start = match restored_start_time(pid) {
        Ok(s) => s,
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(relay_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(e);
        }
    };

    // 6. record
    let stdio = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    let record = ContainerRecord {
        id: id.to_string(),
        pid,
        pid_start,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        bundle: bundle.clone(),
        rootfs: rootfs.clone(),
        lowers,
        upper: Some(upper),
        work: Some(work),
        cgroup_paths: cgroups
            .iter()
            .map(|(c, p)| (runc_cgroup_key(c), p.clone()))
            .collect(),
        namespaces,
        stdio,
        log_path: Some(log_path.clone()),
        relay_pid: Some(relay_pid),
        restored_from: ckpt.source.clone(),
        checkpoint_config: ckpt.config.clone(),
    };
    record
        .save(&record_path)
        .map_err(Error::io(format!("writing {}", record_path.display())))?;
    cleanup.armed = false;
    Ok(ContainerRestoreReport {
        id: id.to_string(),
        pid,
        rootfs,
        log_path,
        relay_pid,
        verification,
        criu,
        phases,
        total: started.elapsed(),
    })
}

/// The start time of the restored init, or an error: a start time of 0 would match any
/// process.
fn restored_start_time(pid: i32) -> Result<u64> {
    match crate::proc::start_time(pid) {
        Some(s) if s > 0 => Ok(s),
        _ => Err(Error::io(format!(
            "reading the start time of the restored process {pid}"
        ))(std::io::Error::other(
            "no start time (the process is gone or /proc/<pid>/stat is unreadable)",
        ))),
    }
}

/// The checkpoint's spec with its root pointing at the new rootfs: typed, and verbatim (every
/// field kept, for the bundle and the next checkpoint's `spec.dump`). The typed parse comes
/// first, so a spec of the wrong shape is an error before the JSON is edited.
pub fn spec_with_root(
    spec: &serde_json::Value,
    rootfs: &Path,
) -> Result<(oci_spec::runtime::Spec, serde_json::Value)> {
    let not_spec = |source| Error::SpecNotOci { source };
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(not_spec)?;
    let mut json = spec.clone();
    let path = serde_json::Value::String(rootfs.display().to_string());
    match json.as_object_mut().map(|o| o.entry("root")) {
        Some(serde_json::map::Entry::Occupied(mut e)) => match e.get_mut() {
            serde_json::Value::Object(root) => {
                root.insert("path".into(), path);
            }
            other => *other = serde_json::json!({ "path": path }),
        },
        Some(serde_json::map::Entry::Vacant(e)) => {
            e.insert(serde_json::json!({ "path": path }));
        }
        None => {
            return Err(Error::SpecNotObject);
        }
    }
    let typed = serde_json::from_value(json.clone()).map_err(not_spec)?;
    Ok((typed, json))
}

/// runc's key for a cgroup hierarchy in `cgroup_paths` ("" for unified, the first controller
/// otherwise, e.g. `cpu` for `cpu,cpuacct`, `name=systemd` kept whole).
fn runc_cgroup_key(controllers: &str) -> String {
    if controllers.starts_with("name=") {
        return controllers.to_string();
    }
    controllers.split(',').next().unwrap_or("").to_string()
}

fn runc_ns_name(t: oci_spec::runtime::LinuxNamespaceType) -> &'static str {
    use oci_spec::runtime::LinuxNamespaceType as T;
    match t {
        T::Mount => "NEWNS",
        T::Cgroup => "NEWCGROUP",
        T::Uts => "NEWUTS",
        T::Ipc => "NEWIPC",
        T::User => "NEWUSER",
        T::Pid => "NEWPID",
        T::Network => "NEWNET",
        T::Time => "NEWTIME",
    }
}

/// External mounts at restore: image name → new host source.
fn restore_ext_mounts(
    mounts: &[oci_spec::runtime::Mount],
    cgroups: &BTreeMap<String, PathBuf>,
    spec: &oci_spec::runtime::Spec,
) -> Vec<ExtMount> {
    let mut out: Vec<ExtMount> = Vec::new();
    let mut add = |k: String, v: String| {
        if !out.iter().any(|m| m.key == k) {
            out.push(ExtMount { key: k, value: v });
        }
    };
    for m in mounts {
        let opts = m.options().clone().unwrap_or_default();
        let ty = m.typ().clone().unwrap_or_default();
        let dest = m.destination().display().to_string();
        if ty == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind") {
            if let Some(src) = m.source() {
                add(dest, src.display().to_string());
            }
        } else if ty == "cgroup" {
            // Each v1 hierarchy was bind-mounted at <dest>/<name>; point it at the new cgroup.
            for (ctrls, dir) in cgroups {
                if ctrls.is_empty() {
                    continue;
                }
                let name = ctrls.strip_prefix("name=").unwrap_or(ctrls);
                add(format!("{dest}/{name}"), dir.display().to_string());
            }
        }
    }
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    if !masked.is_empty() {
        add("/dev/null".into(), "/dev/null".into());
    }
    let mut devices: Vec<String> = RUNC_DEFAULT_DEVICES.iter().map(|d| d.to_string()).collect();
    if let Some(devs) = spec.linux().as_ref().and_then(|l| l.devices().clone()) {
        devices.extend(devs.iter().map(|d| d.path().display().to_string()));
    }
    for d in devices {
        add(d.clone(), d);
    }
    out
}

/// Creates the mount points the spec needs in the rootfs, except under tmpfs mounts (CRIU
/// restores their content, mount points included). Every path is resolved inside the rootfs
/// as its root (`openat2(RESOLVE_IN_ROOT)`): the rootfs comes from the archive's diff, and a
/// symlink planted there (`/evil -> /etc`) must not make a mount point appear on the host.
fn prepare_mount_points(rootfs: &Path, mounts: &[oci_spec::runtime::Mount]) -> Result<()> {
    use crate::beneath::{Resolve, Tree};
    let tmpfs: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination().clone())
        .collect();
    let tree = Tree::open(rootfs, Resolve::InRoot)
        .map_err(Error::io(format!("opening rootfs {}", rootfs.display())))?;
    for m in mounts {
        let dest = m.destination();
        if tmpfs.iter().any(|t| dest.starts_with(t) && dest != t) {
            continue;
        }
        let rel = dest.strip_prefix("/").unwrap_or(dest);
        if rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::MountEscapes {
                destination: dest.to_path_buf(),
            });
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let fail = Error::io(format!("creating mount point {}", dest.display()));
        let is_file_bind = m
            .source()
            .as_ref()
            .is_some_and(|s| std::fs::metadata(s).is_ok_and(|md| !md.is_dir()));
        let (parent, leaf) = tree.parent(rel, Some(0o755)).map_err(fail)?;
        let fail = Error::io(format!("creating mount point {}", dest.display()));
        if crate::beneath::lstat_at(std::os::fd::AsFd::as_fd(&parent), leaf)
            .map_err(fail)?
            .is_some()
        {
            continue;
        }
        let fail = Error::io(format!("creating mount point {}", dest.display()));
        if is_file_bind {
            nix::fcntl::openat(
                &parent,
                leaf,
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_EXCL
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .map(drop)
            .map_err(|e| fail(e.into()))?;
        } else {
            match nix::sys::stat::mkdirat(
                &parent,
                leaf,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(fail(e.into())),
            }
        }
    }
    Ok(())
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

/// Apply caps for a diff written into `dir`: its file system's free space.
fn space_limits(dir: &Path) -> crate::rootfs::ApplyLimits {
    let mut l = crate::rootfs::ApplyLimits::default();
    l.max_bytes = l.max_bytes.min(crate::host::fs::free_bytes(dir));
    l
}

/// Where a checkpoint comes from: an archive file, or an image (local or in a registry).
pub async fn open_source(
    source: &str,
    state: &StateRoot,
    target: &Path,
    insecure: bool,
) -> Result<(CheckpointDir, crate::archive::Extracted)> {
    // What is extracted must fit where it goes: a decompression bomb stops at the free space,
    // with a typed error, before the disk is full.
    let mut limits = crate::archive::Limits::default();
    limits.max_total_bytes = limits.max_total_bytes.min(crate::host::fs::free_bytes(
        target.parent().unwrap_or(target),
    ));
    let path = Path::new(source);
    let archive = if path.is_file() {
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
    let (a, t) = (archive.clone(), target.to_path_buf());
    let extracted = crate::blocking(move || Ok(crate::archive::extract(&a, &t, &limits)?)).await;
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
        return Err(super::ContainerError::AlreadyExists {
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
    let _journal = super::journal::begin(
        &opts.state,
        super::journal::InFlight::restore(&opts.id, vec![work.clone()]),
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
    let (ckpt, extracted) = open_source(source, &opts.state, &work, insecure).await?;
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

#[cfg(test)]
mod copy_cap_tests {
    use std::io::Read;

    use super::*;

    /// Review finding 15: a start time that cannot be read fails the restore (it used to
    /// be stored as 0, which matches any process).
    #[test]
    fn restored_start_time_is_never_zero() {
        let me = std::process::id() as i32;
        assert!(restored_start_time(me).unwrap() > 0);
        // Beyond any pid_max: no such process.
        let e = restored_start_time(i32::MAX).unwrap_err();
        assert!(e.to_string().contains("start time"), "{e}");
    }

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
}
