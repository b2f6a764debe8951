//! What a caller asks of a checkpoint or a restore, in the engine's own terms. The one place
//! these become CRIU's `CriuOpts` is [`crate::criu::convert`].

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

/// How CRIU treats cgroups (CRIU's `manage_cgroups_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupMode {
    /// Leave cgroups alone.
    Ignore,
    /// Restore no cgroup properties.
    None,
    /// Restore properties only.
    Props,
    /// Create missing cgroups, keep existing ones (CRIU's default).
    Soft,
    /// Create and configure everything.
    Full,
    /// Like full, but fail if a cgroup exists.
    Strict,
    /// CRIU's default (soft).
    Default,
}

impl TryFrom<i32> for CgroupMode {
    type Error = i32;
    fn try_from(v: i32) -> Result<Self, i32> {
        use criu_proto::rpc::CriuCgMode as W;
        Ok(match W::try_from(v).map_err(|_| v)? {
            W::Ignore => Self::Ignore,
            W::CgNone => Self::None,
            W::Props => Self::Props,
            W::Soft => Self::Soft,
            W::Full => Self::Full,
            W::Strict => Self::Strict,
            W::Default => Self::Default,
        })
    }
}

/// How CRIU locks the network of a tree with its own network namespace during a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkLock {
    Iptables,
    Nftables,
    Skip,
}

/// An external bind mount: the mount point inside the tree and the name CRIU records for it
/// (dump) or the host path to bind there (restore).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExtMount {
    pub key: String,
    pub value: String,
}

impl ExtMount {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Default bound on one CRIU request. Large dumps to slow disks take a while; a hung CRIU
/// must not hang the caller forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// CRIU's log verbosity used by default: 4 (debug) is what runc uses and what makes a failed
/// checkpoint diagnosable from its log. It costs nothing measurable: `criu dump` of a 16 MiB
/// process with `-v4` and with `-v2`, 21 alternating runs on the 2-core machine, took a median
/// 56.6 and 57.3 ms (1,142 log lines against 2).
pub const DEFAULT_LOG_LEVEL: u32 = 4;

/// A checkpoint (CRIU dump) of a process tree.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Root of the process tree.
    pub pid: i32,
    /// Where CRIU writes its images (created 0700 if missing).
    pub images_dir: PathBuf,
    /// Where CRIU writes its log and stats; defaults to the images dir.
    pub work_dir: Option<PathBuf>,
    /// Keep the tree running afterwards (otherwise CRIU kills it).
    pub leave_running: bool,
    pub tcp_established: bool,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    pub link_remap: bool,
    pub tcp_skip_in_flight: bool,
    /// Root of the tree's filesystem (a container's rootfs).
    pub root: Option<PathBuf>,
    /// Freeze with this freezer cgroup instead of ptrace.
    pub freeze_cgroup: Option<PathBuf>,
    pub cgroups: Option<CgroupMode>,
    /// `external` entries (`mnt[..]:..`, `net[ino]:key`, `dev[..]`, …).
    pub external: Vec<String>,
    /// External bind mounts.
    pub ext_mounts: Vec<ExtMount>,
    /// The tree's network namespace is not dumped (CRIU's `empty_ns` with CLONE_NEWNET).
    pub empty_net_ns: bool,
    /// Dump orphaned/external pty slaves so restore hands us a new master.
    pub orphan_pts_master: bool,
    pub network_lock: Option<NetworkLock>,
    /// Largest ghost (deleted-but-open) file CRIU copies into the images. `None` keeps CRIU's
    /// 1 MiB: it is a correctness bound (a larger deleted file fails the dump rather than
    /// silently bloating the archive), not a speed knob — workloads without deleted-but-open
    /// files never touch it.
    pub ghost_limit: Option<u32>,
    /// Parent images directory for an incremental dump (relative to the images dir).
    pub parent_images: Option<PathBuf>,
    /// Track memory changes (soft-dirty) for a later incremental dump.
    pub track_mem: bool,
    /// Leave pages for lazy transfer.
    pub lazy_pages: bool,
    pub log_level: u32,
    /// Bound on the whole CRIU request.
    pub timeout: Duration,
    /// Fault injection for tests (inert when `None`, the default; see [`crate::fault`]).
    pub fault: Option<crate::fault::FaultPoint>,
}

impl CheckpointOptions {
    /// Options for dumping `pid` into `images_dir`, everything else at its default
    /// (tree killed afterwards, as CRIU does unless asked to leave it running).
    pub fn new(pid: i32, images_dir: impl Into<PathBuf>) -> Self {
        Self {
            pid,
            images_dir: images_dir.into(),
            work_dir: None,
            leave_running: false,
            tcp_established: false,
            shell_job: false,
            ext_unix_sk: false,
            file_locks: false,
            link_remap: false,
            tcp_skip_in_flight: false,
            root: None,
            freeze_cgroup: None,
            cgroups: None,
            external: Vec::new(),
            ext_mounts: Vec::new(),
            empty_net_ns: false,
            orphan_pts_master: false,
            network_lock: None,
            ghost_limit: None,
            parent_images: None,
            track_mem: false,
            lazy_pages: false,
            log_level: DEFAULT_LOG_LEVEL,
            timeout: DEFAULT_TIMEOUT,
            fault: None,
        }
    }

    /// The work dir CRIU will use (log, stats).
    pub fn effective_work_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().unwrap_or(&self.images_dir)
    }
}

/// A resource the restored tree gets from us: CRIU matches `key` (e.g. `pipe:[1234]`, as
/// recorded at dump time) and uses `fd` in its place.
#[derive(Debug)]
pub struct InheritFd {
    pub key: String,
    pub fd: OwnedFd,
}

/// Where a cgroup controller's tree is rooted on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    /// Controller name; `None` for the unified (v2) hierarchy.
    pub controller: Option<String>,
    pub path: String,
}

/// Join an existing namespace on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinNamespace {
    /// `net`, `ipc`, `uts`, `user`, `pid`, `mnt`, `cgroup`, `time`.
    pub ns: String,
    pub path: PathBuf,
}

/// A restore of a process tree from CRIU images.
#[derive(Debug)]
pub struct RestoreOptions {
    pub images_dir: PathBuf,
    /// Where CRIU writes its log and stats; defaults to the images dir.
    pub work_dir: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub tcp_established: bool,
    pub shell_job: bool,
    pub ext_unix_sk: bool,
    pub file_locks: bool,
    pub evasive_devices: bool,
    pub inherit_fds: Vec<InheritFd>,
    pub external: Vec<String>,
    pub ext_mounts: Vec<ExtMount>,
    pub cgroup_roots: Vec<CgroupRoot>,
    pub cgroups: Option<CgroupMode>,
    pub join_ns: Vec<JoinNamespace>,
    pub empty_net_ns: bool,
    pub orphan_pts_master: bool,
    pub lazy_pages: bool,
    pub lsm_profile: Option<String>,
    pub lsm_mount_context: Option<String>,
    /// Cgroup directories (controller list → dir) the CRIU worker joins before the request; its
    /// resulting cgroups become `cg_root` entries, so the restored tree lands in them (what
    /// runc does before it sends RESTORE).
    pub join_cgroups: std::collections::BTreeMap<String, PathBuf>,
    /// Wait for (and otherwise refuse) ids of the tree that are still held by other processes.
    /// Off when the tree is restored into a new pid namespace, where ids are its own.
    pub check_pids: bool,
    /// The worker's stdio (the restored tree sees it where images say "inherit").
    pub stdio: [Option<OwnedFd>; 3],
    pub log_level: u32,
    pub timeout: Duration,
    /// Fault injection for tests (inert when `None`, the default; see [`crate::fault`]).
    pub fault: Option<crate::fault::FaultPoint>,
}

impl RestoreOptions {
    /// Options for restoring the images in `images_dir`, everything else at its default.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            work_dir: None,
            root: None,
            tcp_established: false,
            shell_job: false,
            ext_unix_sk: false,
            file_locks: false,
            evasive_devices: false,
            inherit_fds: Vec::new(),
            external: Vec::new(),
            ext_mounts: Vec::new(),
            cgroup_roots: Vec::new(),
            cgroups: None,
            join_ns: Vec::new(),
            empty_net_ns: false,
            orphan_pts_master: false,
            lazy_pages: false,
            lsm_profile: None,
            lsm_mount_context: None,
            join_cgroups: Default::default(),
            check_pids: true,
            stdio: [None, None, None],
            log_level: DEFAULT_LOG_LEVEL,
            timeout: DEFAULT_TIMEOUT,
            fault: None,
        }
    }

    /// The work dir CRIU will use (log, stats).
    pub fn effective_work_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().unwrap_or(&self.images_dir)
    }
}
