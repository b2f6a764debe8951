//! What a restore may give the restored workload, decided by the trusted side only.
//!
//! A checkpoint (its CRIU images, `spec.dump`, `config.dump`, the rootfs diff) is untrusted
//! input: whoever wrote it chose every byte. The [`RestorePolicy`] is built from the live
//! request alone — the CLI's flags ([`RestorePolicy::runtime_default`] plus the opt-ins), or
//! the CRI request's security context in the shim ([`RestorePolicy::from_security`]) — and
//! [`verify()`] checks the extracted images against it before anything is mounted or CRIU is
//! started. A restore the images would take beyond the policy is refused with a
//! [`PolicyViolation`] naming the image and field.
//!
//! The README's "Security model" section lists the same checks; keep both in step.

pub mod verify;

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use caps::Capability as Cap;
pub use verify::{PolicyViolation, Verdict, VerifyPlan, verify};

/// The capabilities a container runtime gives a container unless told otherwise (the OCI
/// runtime default set containerd and runc use).
pub const DEFAULT_CAPABILITIES: &[caps::Capability] = &[
    caps::Capability::CAP_CHOWN,
    caps::Capability::CAP_DAC_OVERRIDE,
    caps::Capability::CAP_FSETID,
    caps::Capability::CAP_FOWNER,
    caps::Capability::CAP_MKNOD,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SETGID,
    caps::Capability::CAP_SETUID,
    caps::Capability::CAP_SETFCAP,
    caps::Capability::CAP_SETPCAP,
    caps::Capability::CAP_NET_BIND_SERVICE,
    caps::Capability::CAP_SYS_CHROOT,
    caps::Capability::CAP_KILL,
    caps::Capability::CAP_AUDIT_WRITE,
];

/// Default cap on the bytes of all tmpfs images of one checkpoint together (uncompressed).
pub const DEFAULT_MAX_TMPFS_BYTES: u64 = 4 << 30;

/// A set of capabilities as a bit mask (bit n is capability n, as in `/proc/<pid>/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct CapSet(pub u64);

impl CapSet {
    /// Every capability the kernel headers cpengine knows define.
    pub fn all() -> Self {
        Self::from_caps(&caps::all())
    }

    pub fn from_caps<'a>(c: impl IntoIterator<Item = &'a caps::Capability>) -> Self {
        Self(c.into_iter().fold(0, |m, c| m | c.bitmask()))
    }

    pub fn contains(self, c: caps::Capability) -> bool {
        self.0 & c.bitmask() != 0
    }

    pub fn insert(&mut self, c: caps::Capability) {
        self.0 |= c.bitmask();
    }

    pub fn remove(&mut self, c: caps::Capability) {
        self.0 &= !c.bitmask();
    }

    /// Names of the capabilities of `bits` that are not in `self` (bits past the last known
    /// capability are named by number).
    pub fn excess(self, bits: u64) -> Vec<String> {
        let extra = bits & !self.0;
        (0..64)
            .filter(|b| extra & (1u64 << b) != 0)
            .map(|b| {
                caps::all()
                    .into_iter()
                    .find(|c| u64::from(c.index()) == b)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| format!("capability {b}"))
            })
            .collect()
    }
}

/// Parses a capability name with or without its `CAP_` prefix, in any case (`sys_admin`,
/// `CAP_NET_ADMIN`); `ALL` is every capability.
pub fn parse_cap(s: &str) -> Result<CapSet, String> {
    let up = s.trim().to_ascii_uppercase();
    if up == "ALL" {
        return Ok(CapSet::all());
    }
    let name = if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    };
    name.parse::<caps::Capability>()
        .map(|c| CapSet::from_caps([&c]))
        .map_err(|_| format!("unknown capability {s}"))
}

/// The namespaces whose sharing with the host a restore decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    Net,
    Ipc,
    Uts,
    Pid,
    Mnt,
}

impl Namespace {
    pub const ALL: [Namespace; 5] = [Self::Net, Self::Ipc, Self::Uts, Self::Pid, Self::Mnt];

    pub fn name(self) -> &'static str {
        match self {
            Self::Net => "net",
            Self::Ipc => "ipc",
            Self::Uts => "uts",
            Self::Pid => "pid",
            Self::Mnt => "mnt",
        }
    }
}

/// Whether the restored threads must run under a seccomp filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeccompRequirement {
    /// No requirement (the checkpoint's own filters, if any, are restored as they are).
    #[default]
    Optional,
    /// Every thread must be in seccomp filter (or strict) mode, with its filter in the images.
    Required,
}

/// What the restored workload may have. Built only from the live request; never from the
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RestorePolicy {
    /// No thread may have a capability outside this set in any of its five sets
    /// (inheritable, permitted, effective, bounding, ambient).
    pub capabilities: CapSet,
    /// Every thread must have `no_new_privs` set.
    pub no_new_privs: bool,
    /// The request asked for a privileged container: every capability, no `no_new_privs`
    /// requirement, and device nodes under `/dev` allowed.
    pub privileged: bool,
    /// Every thread's real, effective, saved and file-system uid must be this.
    pub uid: Option<u32>,
    /// Every thread's real, effective, saved and file-system gid must be this.
    pub gid: Option<u32>,
    pub seccomp: SeccompRequirement,
    /// Namespaces the restored tree may share with the host (the tree is otherwise in its
    /// own or its pod's).
    pub host_namespaces: BTreeSet<Namespace>,
    /// Devices the request adds to the standard set (`--device`).
    pub devices: Vec<PathBuf>,
    /// Cap on the uncompressed bytes of the tmpfs images together.
    pub max_tmpfs_bytes: u64,
    /// The caller vouches for the archive: nothing is verified (reported loudly).
    pub trust_archive: bool,
    /// No task may have an `oom_score_adj` below this (the request's, else the node's
    /// default 0): a lower one would make the node kill others first.
    pub min_oom_score_adj: i32,
    /// Per `RLIMIT_*` number, the highest hard limit a task may have: the node's own (the
    /// verifying process's hard limits, RLIM_INFINITY where it has none).
    pub max_hard_rlimits: Vec<u64>,
    /// The supplementary groups the request gives (every thread's groups must be among
    /// them or its gid); `None`: the request does not fix them.
    pub supplementary_groups: Option<Vec<u32>>,
    /// The LSM profile the request gives; without one, a thread's `lsm_profile` and
    /// `lsm_sockcreate` must be empty (or `unconfined`), never an image-chosen label.
    pub lsm_profile: Option<String>,
}

/// The hard resource limits of this process, by `RLIMIT_*` number (the node's own caps).
pub fn node_hard_rlimits() -> Vec<u64> {
    // RLIMIT_CPU (0) to RLIMIT_RTTIME (15): the 16 limits of Linux.
    (0..16u32)
        .map(|r| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the struct it is given; `l` is a valid rlimit.
            let rc = unsafe { libc::getrlimit(r as _, &mut l) };
            if rc == 0 { l.rlim_max } else { 0 }
        })
        .collect()
}

impl Default for RestorePolicy {
    fn default() -> Self {
        Self::runtime_default()
    }
}

impl RestorePolicy {
    /// What a container runtime gives a container nobody configured: the default capability
    /// set, `no_new_privs`, its own namespaces, the standard `/dev`, no host mounts.
    pub fn runtime_default() -> Self {
        Self {
            capabilities: CapSet::from_caps(DEFAULT_CAPABILITIES),
            no_new_privs: true,
            privileged: false,
            uid: None,
            gid: None,
            seccomp: SeccompRequirement::Optional,
            host_namespaces: BTreeSet::new(),
            devices: Vec::new(),
            max_tmpfs_bytes: DEFAULT_MAX_TMPFS_BYTES,
            trust_archive: false,
            min_oom_score_adj: 0,
            max_hard_rlimits: node_hard_rlimits(),
            supplementary_groups: None,
            lsm_profile: None,
        }
    }

    /// Every capability and no `no_new_privs` requirement (`--privileged`).
    pub fn privileged(mut self) -> Self {
        self.privileged = true;
        self.capabilities = CapSet::all();
        self.no_new_privs = false;
        self
    }

    /// The policy of a CRI request's security context (the shim's one decision): the
    /// runtime default set with the request's drops and adds, privileged only when asked,
    /// its `no_new_privs`, its run-as user and group, seccomp required unless the profile is
    /// unconfined, and host namespaces only where the namespace options say NODE.
    pub fn from_security(s: &SecurityRequest) -> Self {
        let mut p = Self::runtime_default();
        if s.privileged {
            p = p.privileged();
        }
        for c in &s.drop_capabilities {
            if let Ok(set) = parse_cap(c) {
                p.capabilities.0 &= !set.0;
            }
        }
        for c in &s.add_capabilities {
            if let Ok(set) = parse_cap(c) {
                p.capabilities.0 |= set.0;
            }
        }
        p.no_new_privs = s.no_new_privs;
        p.uid = s.run_as_user;
        p.gid = s.run_as_group;
        p.seccomp = if s.seccomp_confined {
            SeccompRequirement::Required
        } else {
            SeccompRequirement::Optional
        };
        p.host_namespaces = s.host_namespaces.clone();
        if let Some(o) = s.oom_score_adj {
            p.min_oom_score_adj = p.min_oom_score_adj.min(o);
        }
        p
    }
}

/// The security-relevant part of a CRI request (`LinuxContainerSecurityContext` with its
/// pod's namespace options), in the engine's own terms so the policy is decided here once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityRequest {
    pub privileged: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    pub no_new_privs: bool,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    /// The request's seccomp profile is RuntimeDefault or Localhost (not Unconfined).
    pub seccomp_confined: bool,
    pub host_namespaces: BTreeSet<Namespace>,
    /// The request's `oom_score_adj` (its resources), when it sets one. It lowers the floor
    /// below the node default 0 (a Guaranteed pod's -997), never raises it: a pod checkpointed
    /// on a node of another size carries another, still legitimate, positive value.
    pub oom_score_adj: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_set_is_the_runtime_default() {
        let p = RestorePolicy::runtime_default();
        assert_eq!(p.capabilities.0, 0x0000_0000_a804_25fb);
        assert!(p.no_new_privs && !p.privileged && !p.trust_archive);
        assert!(p.host_namespaces.is_empty());
    }

    #[test]
    fn caps_parse_and_name() {
        assert_eq!(parse_cap("sys_admin").unwrap().0, 1 << 21);
        assert_eq!(parse_cap("CAP_NET_ADMIN").unwrap().0, 1 << 12);
        assert!(parse_cap("CAP_NOPE").is_err());
        let p = RestorePolicy::runtime_default();
        assert_eq!(p.capabilities.excess((1 << 21) | 1), vec!["CAP_SYS_ADMIN"]);
    }

    #[test]
    fn cri_request_decides() {
        let p = RestorePolicy::from_security(&SecurityRequest {
            add_capabilities: vec!["SYS_PTRACE".into()],
            drop_capabilities: vec!["NET_RAW".into(), "ALL".into()],
            run_as_user: Some(1000),
            seccomp_confined: true,
            ..Default::default()
        });
        // ALL dropped, then SYS_PTRACE added.
        assert_eq!(p.capabilities.0, 1 << 19);
        assert!(!p.no_new_privs);
        assert_eq!(p.uid, Some(1000));
        assert_eq!(p.seccomp, SeccompRequirement::Required);
        let p = RestorePolicy::from_security(&SecurityRequest {
            privileged: true,
            ..Default::default()
        });
        assert_eq!(p.capabilities, CapSet::all());
    }
}
