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

/// The CRIU knobs a caller sets on a checkpoint or a restore, in one place: embedded (as
/// `flags`) by [`CheckpointOptions`], [`RestoreOptions`] and the container options, filled by
/// the CLI's one flag set and by the shim, and read into CRIU's request only by
/// [`crate::criu::convert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CriuFlags {
    /// Keep the tree running after a dump (otherwise CRIU kills it). Dump only: a restore
    /// ignores it.
    pub leave_running: bool,
    /// Checkpoint and restore established TCP connections.
    pub tcp_established: bool,
    /// Connected unix sockets whose peer is outside the tree.
    pub ext_unix_sk: bool,
    /// Checkpoint and restore file locks.
    pub file_locks: bool,
    /// The tree is a shell job (shares a session or terminal with its parent).
    pub shell_job: bool,
    /// Bound on the whole CRIU request.
    pub timeout: Duration,
    /// CRIU's log verbosity (see [`DEFAULT_LOG_LEVEL`]).
    pub log_level: u32,
    /// How CRIU locks the network of a tree with its own network namespace while it dumps.
    /// Dump only: CRIU records the method in the images and a restore uses the same, so a
    /// skipped lock is also skipped on restore, by any runtime. `None` is CRIU's default
    /// (iptables) for a process dump; a container checkpoint takes `None` as "no lock unless
    /// established TCP connections are checkpointed".
    ///
    /// The lock only matters for `tcp_established`: without it CRIU refuses to dump an
    /// established connection anyway, and a packet that arrives during the dump is no
    /// different from one that arrives just after it. CRIU's default lock runs
    /// `iptables-restore` and `ip6tables-restore` in the container's network namespace to lock
    /// and again to unlock, plus `iptables` checks: measured on this machine (16 MiB
    /// container, `perf trace -e sched:sched_process_exec`), ~80 ms before the pages are
    /// dumped and ~65 ms after, all of it with the container frozen.
    pub network_lock: Option<NetworkLock>,
    /// Fault injection for tests (inert when `None`, the default; see [`crate::fault`]).
    pub fault: Option<crate::fault::FaultPoint>,
}

impl Default for CriuFlags {
    /// Everything off, the tree killed after a dump (as CRIU does unless asked otherwise),
    /// [`DEFAULT_TIMEOUT`] and [`DEFAULT_LOG_LEVEL`].
    fn default() -> Self {
        Self {
            leave_running: false,
            tcp_established: false,
            ext_unix_sk: false,
            file_locks: false,
            shell_job: false,
            timeout: DEFAULT_TIMEOUT,
            log_level: DEFAULT_LOG_LEVEL,
            network_lock: None,
            fault: None,
        }
    }
}

/// A checkpoint (CRIU dump) of a process tree.
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    /// Root of the process tree.
    pub pid: i32,
    /// Where CRIU writes its images (created 0700 if missing).
    pub images_dir: PathBuf,
    /// Where CRIU writes its log and stats; defaults to the images dir.
    pub work_dir: Option<PathBuf>,
    /// The CRIU knobs shared with restores (leave running, TCP, locks, timeout, …).
    pub flags: CriuFlags,
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
}

impl CheckpointOptions {
    /// Options for dumping `pid` into `images_dir`, everything else at its default
    /// (tree killed afterwards, as CRIU does unless asked to leave it running).
    pub fn new(pid: i32, images_dir: impl Into<PathBuf>) -> Self {
        Self {
            pid,
            images_dir: images_dir.into(),
            work_dir: None,
            flags: CriuFlags::default(),
            link_remap: false,
            tcp_skip_in_flight: false,
            root: None,
            freeze_cgroup: None,
            cgroups: None,
            external: Vec::new(),
            ext_mounts: Vec::new(),
            empty_net_ns: false,
            orphan_pts_master: false,
            ghost_limit: None,
            parent_images: None,
            track_mem: false,
            lazy_pages: false,
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
    /// The CRIU knobs shared with checkpoints (`leave_running` and `network_lock` unused).
    pub flags: CriuFlags,
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
}

impl RestoreOptions {
    /// Options for restoring the images in `images_dir`, everything else at its default.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        Self {
            images_dir: images_dir.into(),
            work_dir: None,
            root: None,
            flags: CriuFlags::default(),
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
        }
    }

    /// The work dir CRIU will use (log, stats).
    pub fn effective_work_dir(&self) -> &std::path::Path {
        self.work_dir.as_deref().unwrap_or(&self.images_dir)
    }
}
