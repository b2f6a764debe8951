//! Checkpointing a container: the CRIU request runc would send, answered natively.
//!
//! Options (mirroring runc's `criu_linux.go`, which is what the ecosystem's archives contain):
//! * `root` = the container's rootfs, `pid` = its init, `freeze_cgroup` = its freezer cgroup (so
//!   CRIU freezes the whole cgroup rather than ptrace-stopping task by task), cgroups managed
//!   (`soft`), `orphan_pts_master` (terminals), `empty_ns` = net (the runtime, not CRIU, owns
//!   network devices), `notify_scripts` (our hooks).
//! * External bind mounts, named by their destination; cgroup v1 hierarchies bind-mounted into
//!   the container (each `/sys/fs/cgroup/<ctrl>`); masked paths that are files (runc binds
//!   /dev/null over them) named `/dev/null`; device nodes by path.
//! * Joined namespaces (a pod's network or pid namespace, given by path) are external:
//!   `net[<inode>]:extRootNetNS`, `pid[<inode>]:extRootPidNS`.
//! * `descriptors.json` (the init's stdio at start) goes into the images for restore.
//!
//! The rootfs diff is *planned* in the `post-dump` hook, while the container is still frozen
//! (a stat walk, no data), so its file list and sizes match the memory image; data is read
//! after the container resumes.

use std::path::{Path, PathBuf};

use crate::criu::{Ack, Notification, NotifyHandler};
use crate::options::{CgroupMode, CheckpointOptions, ExtMount};

use super::{Container, ContainerError};

/// Name of the stdio description runc keeps in the images directory.
pub const DESCRIPTORS_JSON: &str = "descriptors.json";

/// CRIU-level knobs of a container checkpoint (the archive-level ones live with the caller).
#[derive(Debug, Clone)]
pub struct DumpKnobs {
    pub leave_running: bool,
    pub tcp_established: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    pub shell_job: bool,
    pub timeout: std::time::Duration,
    pub log_level: u32,
}

impl Default for DumpKnobs {
    fn default() -> Self {
        Self {
            leave_running: true,
            tcp_established: false,
            ext_unix_sk: false,
            file_locks: false,
            shell_job: false,
            timeout: crate::options::DEFAULT_TIMEOUT,
            log_level: crate::options::DEFAULT_LOG_LEVEL,
        }
    }
}

/// The CRIU options for dumping `ctr` into `images_dir`, with log and stats in `work_dir`.
pub fn dump_options(
    ctr: &Container,
    images_dir: &Path,
    work_dir: &Path,
    knobs: &DumpKnobs,
) -> Result<CheckpointOptions, ContainerError> {
    let mut o = CheckpointOptions::new(ctr.init_pid, images_dir);
    o.work_dir = Some(work_dir.to_path_buf());
    o.root = Some(ctr.rootfs.clone());
    o.leave_running = knobs.leave_running;
    o.tcp_established = knobs.tcp_established;
    o.ext_unix_sk = knobs.ext_unix_sk;
    o.file_locks = knobs.file_locks;
    o.shell_job = knobs.shell_job;
    o.timeout = knobs.timeout;
    o.log_level = knobs.log_level;
    o.freeze_cgroup = ctr.freezer();
    o.cgroups = Some(CgroupMode::Soft);
    o.orphan_pts_master = true;
    o.empty_net_ns = true;
    o.ext_mounts = external_mounts(ctr)?;
    for ns in &ctr.namespaces {
        let (Some(_), Some(name), Some(key)) =
            (&ns.path, ns_proc_name(&ns.kind), external_ns_key(&ns.kind))
        else {
            continue;
        };
        if let Some(ino) = ctr.namespace_inode(name) {
            o.external.push(format!("{name}[{ino}]:{key}"));
        }
    }
    Ok(o)
}

/// External mounts of a container at dump time: (mount point in the container → name).
pub fn external_mounts(ctr: &Container) -> Result<Vec<ExtMount>, ContainerError> {
    let mut out: Vec<ExtMount> = Vec::new();
    let mut add = |key: &str, val: &str| {
        if !out.iter().any(|m| m.key == key) {
            out.push(ExtMount::new(key, val));
        }
    };
    let mounts = ctr.mounts()?;
    for m in &ctr.spec_mounts {
        if m.bind {
            add(&m.destination, &m.destination);
        } else if m.fs_type == "cgroup" {
            // cgroup v1 without a cgroup namespace: the runtime bind-mounts each host hierarchy
            // under the destination; each is external.
            let dest = Path::new(&m.destination);
            for mi in mounts
                .iter()
                .filter(|mi| mi.mount_point.starts_with(dest) && mi.mount_point != dest)
            {
                if mi.fs_type == "cgroup" || mi.fs_type == "cgroup2" {
                    let p = mi.mount_point.display().to_string();
                    add(&p, &p);
                }
            }
        }
    }
    for masked in &ctr.masked_paths {
        let in_ctr = PathBuf::from(format!("/proc/{}/root{}", ctr.init_pid, masked));
        let is_mount = mounts.iter().any(|mi| mi.mount_point == Path::new(masked));
        if is_mount && std::fs::metadata(&in_ctr).is_ok_and(|md| !md.is_dir()) {
            add(masked, "/dev/null");
        }
    }
    for d in &ctr.devices {
        add(d, d);
    }
    Ok(out)
}

fn ns_proc_name(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "NEWNET" => "net",
        "NEWPID" => "pid",
        _ => return None,
    })
}

fn external_ns_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "NEWNET" => "extRootNetNS",
        "NEWPID" => "extRootPidNS",
        _ => return None,
    })
}

/// Writes `descriptors.json` (the init's stdio as recorded at start) into the images dir.
pub fn write_descriptors(ctr: &Container, images_dir: &Path) -> std::io::Result<()> {
    let mut stdio = ctr.stdio.clone();
    stdio.resize(3, String::new());
    let json = serde_json::to_vec(&stdio).map_err(std::io::Error::other)?;
    std::fs::write(images_dir.join(DESCRIPTORS_JSON), json)
}

/// Reads `descriptors.json` from an images dir (missing → three empty entries).
pub fn read_descriptors(images_dir: &Path) -> Vec<String> {
    std::fs::read(images_dir.join(DESCRIPTORS_JSON))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .unwrap_or_else(|| vec![String::new(); 3])
}

/// Answers the hooks of a container dump: runs `on_frozen` at `post-dump` (images written,
/// container still frozen) and acks everything.
pub struct FrozenHook<F: FnMut() -> bool + Send> {
    on_frozen: F,
    pub ran: bool,
}

impl<F: FnMut() -> bool + Send> FrozenHook<F> {
    pub fn new(on_frozen: F) -> Self {
        Self {
            on_frozen,
            ran: false,
        }
    }
}

impl<F: FnMut() -> bool + Send> NotifyHandler for FrozenHook<F> {
    fn on_notify(&mut self, n: Notification) -> Ack {
        if let Notification::PostDump = n {
            self.ran = true;
            if !(self.on_frozen)() {
                return Ack::fail();
            }
        }
        Ack::ok()
    }
}

impl<F: FnMut() -> bool + Send> std::fmt::Debug for FrozenHook<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrozenHook")
            .field("ran", &self.ran)
            .finish()
    }
}

/// Kubernetes identity of a container, recorded in the archive's metadata when known (the shim
/// knows it; a bare runc container has none).
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// Container name in the pod spec.
    pub container_name: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
}

/// Image identity recorded in `config.dump` (`rootfsImage`, `rootfsImageRef`,
/// `rootfsImageName`).
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    /// The image as the user asked for it.
    pub image: String,
    /// A resolvable reference (`repo@sha256:…` or an image id).
    pub image_ref: String,
    /// The normalised image name.
    pub image_name: String,
}

/// A container checkpoint to an archive.
#[derive(Debug, Clone)]
pub struct ContainerCheckpointOptions {
    /// The archive to write (atomically; its parent must exist).
    pub output: PathBuf,
    pub knobs: DumpKnobs,
    /// For a plain-directory rootfs: the base to diff against.
    pub rootfs_base: Option<super::restore::RootfsBase>,
    /// Where CRIU's images are staged (default: beside `output`, same filesystem).
    pub staging_dir: Option<PathBuf>,
    pub pod: Option<PodInfo>,
    pub image: Option<ImageInfo>,
    /// Runtime name written to `config.dump` (default `runc`).
    pub runtime: Option<String>,
}

impl ContainerCheckpointOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        Self {
            output: output.into(),
            knobs: DumpKnobs::default(),
            rootfs_base: None,
            staging_dir: None,
            pod: None,
            image: None,
            runtime: None,
        }
    }
}
