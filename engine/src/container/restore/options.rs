//! What a container restore takes and gives: the checkpoint on disk, the caller's options,
//! the report.

use std::path::PathBuf;

use crate::container::state::StateRoot;
use crate::options::CriuFlags;
use crate::report::{Phase, RestoreReport};

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
    /// The binary that runs the log relay (default: [`crate::container::relay::default_exe`]).
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
    /// Where the checkpoint's bind mounts get their host sources (see [`crate::container::binds`]).
    pub binds: crate::container::binds::BindMounts,
    /// What the restored container may have, from the live request (see [`crate::policy`]);
    /// the checkpoint's images are verified against it before anything is created.
    pub policy: crate::policy::RestorePolicy,
    /// The device rules and resource limits of the live request, written into the
    /// container's cgroups before CRIU resumes it (the policy's devices and `privileged` are
    /// added to them).
    pub containment: crate::container::containment::Containment,
    /// Accept only an archive signed by one of these keys, verified while it is extracted
    /// (see [`crate::archive::sign`]); `None` accepts unsigned archives.
    pub require_signed: Option<crate::archive::sign::TrustedKeys>,
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
            require_signed: None,
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
