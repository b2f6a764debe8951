//! cpengine's own state: containers it restored (and later, the shim's pods and containers).
//!
//! Two directories, like every container runtime: persistent data (image store, containers'
//! writable layers) under `/var/lib/cpengine`, runtime state (records of running containers,
//! their rootfs mount points, sockets) under `/run/cpengine`. `--state-root DIR` (or
//! `$CPENGINE_STATE_ROOT`) moves both under DIR (`DIR/lib`, `DIR/run`) — tests use that.
//! Records are written atomically (temp file + fsync + rename).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::host::fs::write_atomic;

use super::error::ContainerError;

/// Default persistent state directory.
pub const DEFAULT_LIB: &str = "/var/lib/cpengine";
/// Default runtime state directory.
pub const DEFAULT_RUN: &str = "/run/cpengine";

/// Where cpengine keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRoot {
    pub lib: PathBuf,
    pub run: PathBuf,
}

impl Default for StateRoot {
    fn default() -> Self {
        Self {
            lib: PathBuf::from(DEFAULT_LIB),
            run: PathBuf::from(DEFAULT_RUN),
        }
    }
}

impl StateRoot {
    /// Both directories under `dir`.
    pub fn at(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        Self {
            lib: dir.join("lib"),
            run: dir.join("run"),
        }
    }

    /// `--state-root` if given, else `$CPENGINE_STATE_ROOT`, else the defaults.
    pub fn resolve(explicit: Option<&Path>) -> Self {
        match explicit
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("CPENGINE_STATE_ROOT").map(PathBuf::from))
        {
            Some(d) => Self::at(d),
            None => Self::default(),
        }
    }

    /// Records of containers cpengine manages.
    pub fn containers_dir(&self) -> PathBuf {
        self.run.join("containers")
    }

    /// The record file of container `id`.
    pub fn container_record(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id).join("container.json")
    }

    /// Runtime directory of container `id` (record, rootfs mount point, bundle).
    pub fn container_run_dir(&self, id: &str) -> PathBuf {
        self.containers_dir().join(id)
    }

    /// Persistent directory of container `id` (writable layer, logs).
    pub fn container_lib_dir(&self, id: &str) -> PathBuf {
        self.lib.join("containers").join(id)
    }

    /// Ids of all recorded containers.
    pub fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = std::fs::read_dir(self.containers_dir())
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().join("container.json").is_file())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

/// What cpengine records about a container it restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// Host pid of the container's init.
    pub pid: i32,
    /// Its start time (to detect pid reuse).
    pub pid_start: u64,
    pub created: String,
    /// Bundle with the container's config.json.
    pub bundle: PathBuf,
    /// The rootfs mount point.
    pub rootfs: PathBuf,
    /// Overlay layers of the rootfs (lower top first, upper, work), if it is an overlay.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// Controller ("" = unified) → cgroup directory cpengine created.
    pub cgroup_paths: BTreeMap<String, PathBuf>,
    /// Namespaces of the container (runc names: NEWNET, …).
    pub namespaces: Vec<String>,
    /// fds 0, 1, 2 of init as CRIU sees them (for the next checkpoint's descriptors.json).
    pub stdio: Vec<String>,
    /// Where the container's output goes.
    pub log_path: Option<PathBuf>,
    /// Pid of the log relay process, if any.
    pub relay_pid: Option<i32>,
    /// The archive or image it was restored from.
    pub restored_from: Option<String>,
    /// `config.dump` of that checkpoint (original name, image, …).
    pub checkpoint_config: Option<serde_json::Value>,
}

impl ContainerRecord {
    /// Reads a record.
    pub fn load(path: &Path) -> Result<Self, ContainerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ContainerError::Read {
            path: path.into(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ContainerError::Parse {
            path: path.into(),
            source,
        })
    }

    /// Writes the record atomically to `path`.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_root_layout() {
        let s = StateRoot::at("/x");
        assert_eq!(
            s.container_record("c1"),
            PathBuf::from("/x/run/containers/c1/container.json")
        );
        assert_eq!(
            s.container_lib_dir("c1"),
            PathBuf::from("/x/lib/containers/c1")
        );
        assert_eq!(StateRoot::default().lib, PathBuf::from("/var/lib/cpengine"));
    }

    #[test]
    fn record_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a/b/container.json");
        let rec = ContainerRecord {
            id: "c1".into(),
            pid: 42,
            pid_start: 7,
            created: "now".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            lowers: vec![],
            upper: None,
            work: None,
            cgroup_paths: BTreeMap::new(),
            namespaces: vec!["NEWPID".into()],
            stdio: vec!["/dev/null".into(); 3],
            log_path: None,
            relay_pid: None,
            restored_from: None,
            checkpoint_config: None,
        };
        rec.save(&p).unwrap();
        assert_eq!(ContainerRecord::load(&p).unwrap(), rec);
        let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(leftovers.len(), 1, "no temp files left");
    }
}
