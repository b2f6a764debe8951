//! Containers: runc-style OCI containers found by id, and what checkpointing them needs.
//!
//! A container is found either in a runc state root (`<root>/<id>/state.json` plus the bundle's
//! `config.json`; runc's own default root is `/run/runc`, containerd keeps its runc containers
//! under `/run/containerd/runc/<namespace>`, CRI-O under `/run/runc`) or in cpengine's own state
//! (containers cpengine restored, see [`state`]). Either way the engine learns the init pid,
//! rootfs and how it is mounted, cgroups, namespaces, devices, masked paths and the stdio the
//! container started with — the inputs runc's `criu_linux.go` uses to build its CRIU request.

pub mod binds;
pub mod checkpoint;
pub mod containment;
mod descriptors;
mod error;
pub mod exec;
pub mod extracted;
pub(crate) mod journal;
pub(crate) mod lock;
pub mod manage;
pub use crate::host::mountinfo;
pub mod relay;
pub mod restore;
pub mod runc;
pub mod state;
pub(crate) mod stream;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

pub use self::error::{ContainerError, ExecError, Status};
pub use self::extracted::DumpedNamespaces;
pub use self::journal::Recovered;
pub use self::lock::LockError;
use self::mountinfo::MountInfo;
use self::runc::RuncState;
use self::state::ContainerRecord;
pub use self::state::StateRoot;
pub use self::stream::StreamStats;

/// Default runc state roots searched for a container id, in order.
pub const DEFAULT_RUNC_ROOTS: &[&str] = &["/run/runc", "/run/cpengine/runc"];
/// containerd keeps one runc root per namespace under this directory.
pub const CONTAINERD_RUNC_DIR: &str = "/run/containerd/runc";

/// Where a container's description came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A runc state root.
    Runc { root: PathBuf },
    /// cpengine's own state (a container cpengine restored).
    Cpengine { record: PathBuf },
}

/// How the container's root filesystem is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsKind {
    /// An overlay: its changes are in `upper`.
    Overlay {
        lowers: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A plain directory (a bare runc bundle): changes need a base to diff against.
    Dir,
}

/// A namespace of the container and, if it joined an existing one, that namespace's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// runc's name: `NEWNET`, `NEWPID`, `NEWNS`, `NEWIPC`, `NEWUTS`, `NEWUSER`, `NEWCGROUP`.
    pub kind: String,
    /// Set when the container joined an existing namespace (e.g. a pod's network namespace).
    pub path: Option<PathBuf>,
}

/// Everything the engine knows about one container.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub origin: Origin,
    pub init_pid: i32,
    pub init_start: u64,
    pub created: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// The bundle's `config.json`, typed.
    pub spec: Spec,
    /// The same, verbatim (for `spec.dump`).
    pub spec_json: serde_json::Value,
    /// Controller ("" = unified) → cgroup directory.
    pub cgroup_paths: BTreeMap<String, PathBuf>,
    pub namespaces: Vec<Namespace>,
    /// Device nodes the runtime created in the container.
    pub devices: Vec<String>,
    /// Mounts runc/cpengine set up from the spec: (destination, type, source, is bind).
    pub spec_mounts: Vec<SpecMount>,
    pub masked_paths: Vec<String>,
    /// fds 0, 1, 2 of init when it started (`pipe:[123]`, `/dev/null`, …).
    pub stdio: Vec<String>,
    /// Extra information kept by cpengine for restored containers.
    pub record: Option<ContainerRecord>,
}

/// A mount from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecMount {
    pub destination: String,
    pub fs_type: String,
    pub source: String,
    pub bind: bool,
}

/// Checks a container id is a safe single path component.
pub fn validate_id(id: &str) -> Result<(), ContainerError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ContainerError::InvalidId(id.to_string()))
    }
}

/// The runc roots to search: the given ones, or the defaults plus every containerd namespace.
pub fn runc_roots(explicit: &[PathBuf]) -> Vec<PathBuf> {
    if !explicit.is_empty() {
        return explicit.to_vec();
    }
    let mut roots: Vec<PathBuf> = DEFAULT_RUNC_ROOTS.iter().map(PathBuf::from).collect();
    if let Ok(entries) = std::fs::read_dir(CONTAINERD_RUNC_DIR) {
        let mut ns: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        ns.sort();
        roots.extend(ns);
    }
    roots
}

impl Container {
    /// Finds container `id`: first among containers cpengine restored, then in the runc roots
    /// (`explicit` ones, or the defaults).
    pub fn find(
        id: &str,
        explicit_roots: &[PathBuf],
        state: &StateRoot,
    ) -> Result<Self, ContainerError> {
        validate_id(id)?;
        let mut searched = Vec::new();
        if explicit_roots.is_empty() {
            let record = state.container_record(id);
            searched.push(state.containers_dir());
            if record.is_file() {
                return Self::from_record(&record);
            }
        }
        for root in runc_roots(explicit_roots) {
            let state_json = root.join(id).join("state.json");
            searched.push(root.clone());
            match std::fs::metadata(&root) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(ContainerError::RootUnreadable {
                        path: root,
                        source: e,
                    });
                }
                Ok(_) => {}
            }
            if let Err(e) = std::fs::read_dir(&root) {
                return Err(ContainerError::RootUnreadable {
                    path: root,
                    source: e,
                });
            }
            if state_json.is_file() {
                return Self::from_runc(&root, &state_json);
            }
        }
        Err(ContainerError::NotFound {
            id: id.to_string(),
            searched,
        })
    }

    /// Loads a container from runc's state.
    pub fn from_runc(root: &Path, state_json: &Path) -> Result<Self, ContainerError> {
        let text = read(state_json)?;
        let st: RuncState =
            serde_json::from_str(&text).map_err(|source| ContainerError::Parse {
                path: state_json.into(),
                source,
            })?;
        let bundle = st.config.bundle().ok_or_else(|| ContainerError::Invalid {
            id: st.id.clone(),
            what: "runc state has no bundle label".into(),
        })?;
        let (spec, spec_json) = load_spec(&bundle.join("config.json"))?;
        let namespaces = st
            .config
            .namespaces
            .iter()
            .map(|n| Namespace {
                kind: n.kind.clone(),
                path: (!n.path.is_empty()).then(|| PathBuf::from(&n.path)),
            })
            .collect();
        let spec_mounts = spec_mounts(&spec);
        Ok(Self {
            id: st.id.clone(),
            origin: Origin::Runc {
                root: root.to_path_buf(),
            },
            init_pid: st.init_process_pid,
            init_start: st.init_process_start,
            created: st.created.clone(),
            bundle,
            rootfs: st.config.rootfs.clone(),
            spec,
            spec_json,
            cgroup_paths: st.cgroup_paths.clone(),
            namespaces,
            devices: st.config.devices.iter().map(|d| d.path.clone()).collect(),
            spec_mounts,
            masked_paths: st.config.mask_paths.clone(),
            stdio: st.external_descriptors.clone(),
            record: None,
        })
    }

    /// Loads a container cpengine restored.
    pub fn from_record(path: &Path) -> Result<Self, ContainerError> {
        let rec = ContainerRecord::load(path)?;
        let (spec, spec_json) = load_spec(&rec.bundle.join("config.json"))?;
        let spec_mounts = spec_mounts(&spec);
        let masked_paths = spec
            .linux()
            .as_ref()
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default();
        let mut devices: Vec<String> = RUNC_DEFAULT_DEVICES.iter().map(|d| d.to_string()).collect();
        if let Some(devs) = spec.linux().as_ref().and_then(|l| l.devices().clone()) {
            devices.extend(devs.iter().map(|d| d.path().display().to_string()));
        }
        Ok(Self {
            id: rec.id.clone(),
            origin: Origin::Cpengine {
                record: path.to_path_buf(),
            },
            init_pid: rec.pid,
            init_start: rec.pid_start,
            created: rec.created.clone(),
            bundle: rec.bundle.clone(),
            rootfs: rec.rootfs.clone(),
            spec,
            spec_json,
            cgroup_paths: rec.cgroup_paths.clone(),
            namespaces: rec
                .namespaces
                .iter()
                .map(|k| Namespace {
                    kind: k.clone(),
                    path: None,
                })
                .collect(),
            devices,
            spec_mounts,
            masked_paths,
            stdio: rec.stdio.clone(),
            record: Some(rec),
        })
    }

    /// Running, paused (frozen) or stopped; a reused pid counts as stopped.
    pub fn status(&self) -> Status {
        let alive = crate::proc::is_same_process(self.init_pid, self.init_start);
        if !alive {
            return Status::Stopped;
        }
        match self.freezer() {
            Some(f) if crate::cgroups::is_frozen(&f) => Status::Paused,
            _ => Status::Running,
        }
    }

    /// Fails unless the container runs.
    pub fn ensure_running(&self) -> Result<(), ContainerError> {
        match self.status() {
            Status::Running => Ok(()),
            status => Err(ContainerError::NotRunning {
                id: self.id.clone(),
                status,
            }),
        }
    }

    /// The freezer cgroup (v1 `freezer` controller, else the unified cgroup).
    pub fn freezer(&self) -> Option<PathBuf> {
        self.cgroup_paths
            .get("freezer")
            .or_else(|| self.cgroup_paths.get(""))
            .filter(|p| p.join("freezer.state").exists() || p.join("cgroup.freeze").exists())
            .cloned()
    }

    /// The container's mount table, as its init process sees it.
    pub fn mounts(&self) -> Result<Vec<MountInfo>, ContainerError> {
        mountinfo::of_pid(self.init_pid).map_err(|source| ContainerError::Read {
            path: PathBuf::from(format!("/proc/{}/mountinfo", self.init_pid)),
            source,
        })
    }

    /// How the rootfs is mounted (from the host's mount table, where overlay options have
    /// the absolute layer paths).
    pub fn rootfs_kind(&self) -> Result<RootfsKind, ContainerError> {
        let host = mountinfo::of_pid(std::process::id() as i32).map_err(|source| {
            ContainerError::Read {
                path: "/proc/self/mountinfo".into(),
                source,
            }
        })?;
        let rootfs = std::fs::canonicalize(&self.rootfs).unwrap_or_else(|_| self.rootfs.clone());
        match mountinfo::find_at(&host, &rootfs).and_then(mountinfo::overlay_layers) {
            Some((lowers, upper, work)) => {
                if lowers
                    .iter()
                    .chain([&upper, &work])
                    .any(|p| p.is_relative())
                {
                    return Err(ContainerError::Invalid {
                        id: self.id.clone(),
                        what: format!(
                            "overlay rootfs {} was mounted with relative layer paths; cannot locate its upper dir",
                            rootfs.display()
                        ),
                    });
                }
                Ok(RootfsKind::Overlay {
                    lowers,
                    upper,
                    work,
                })
            }
            None => Ok(RootfsKind::Dir),
        }
    }

    /// The inode of one of init's namespaces (`net`, `pid`, …).
    pub fn namespace_inode(&self, ns: &str) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{}/ns/{ns}", self.init_pid))
            .ok()
            .map(|m| m.ino())
    }

    /// The spec annotations.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        self.spec
            .annotations()
            .clone()
            .map(|a| a.into_iter().collect())
            .unwrap_or_default()
    }
}

/// Device nodes runc creates in every container besides the spec's `linux.devices`.
pub const RUNC_DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/random",
    "/dev/full",
    "/dev/tty",
    "/dev/zero",
    "/dev/urandom",
];

fn read(path: &Path) -> Result<String, ContainerError> {
    std::fs::read_to_string(path).map_err(|source| ContainerError::Read {
        path: path.into(),
        source,
    })
}

/// Reads a bundle's config.json both typed and verbatim.
pub fn load_spec(path: &Path) -> Result<(Spec, serde_json::Value), ContainerError> {
    let text = read(path)?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ContainerError::Parse {
            path: path.into(),
            source,
        })?;
    let spec: Spec =
        serde_json::from_value(json.clone()).map_err(|source| ContainerError::Parse {
            path: path.into(),
            source,
        })?;
    Ok((spec, json))
}

fn spec_mounts(spec: &Spec) -> Vec<SpecMount> {
    spec.mounts()
        .as_ref()
        .map(|ms| {
            ms.iter()
                .map(|m| {
                    let opts = m.options().clone().unwrap_or_default();
                    let fs_type = m.typ().clone().unwrap_or_default();
                    let bind =
                        fs_type == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind");
                    SpecMount {
                        destination: m.destination().display().to_string(),
                        fs_type,
                        source: m
                            .source()
                            .as_ref()
                            .map(|s| s.display().to_string())
                            .unwrap_or_default(),
                        bind,
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_single_safe_components() {
        for ok in ["ctr1", "a.b-c_d", "0123456789abcdef"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "x\n"] {
            assert!(
                matches!(validate_id(bad), Err(ContainerError::InvalidId(_))),
                "{bad:?}"
            );
        }
    }
}
