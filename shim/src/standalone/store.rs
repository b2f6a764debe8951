//! What the standalone runtime persists about its pods and containers.
//!
//! Layout under the state root (see `cpengine::container::state`):
//! * `<run>/shim/pods/<id>/pod.json` — the pod record; beside it the pod's `resolv.conf` and
//!   `hostname` files that its containers bind-mount.
//! * `<run>/shim/containers/<id>/container.json` — the container record; beside it the
//!   bundle (`config.json`, the `rootfs` mount point, runc's log).
//! * `<lib>/shim/containers/<id>/{upper,work}` — the writable layer of its overlay rootfs.
//! * `<run>/runc` — the runc root of the containers the shim created with runc; containers it
//!   restored are recorded by the engine under `<run>/containers/<id>`.
//!
//! Records are JSON written atomically (temp file, fsync, rename). The in-memory maps are the
//! working copy; the files let a restarted shim find its pods and running containers again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cpengine::container::StateRoot;
use cpengine::host::fs::write_atomic;
use serde::{Deserialize, Serialize};

use crate::domain::{ContainerSpec, PodSpec, PodState};
use crate::error::{Result, ShimError};
use crate::holder::Holder;

/// A persisted pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub spec: PodSpec,
    pub created_at: i64,
    pub state: PodState,
    /// The namespace holder, if the pod has shared namespaces.
    pub holder: Option<HolderRecord>,
    /// `/etc/resolv.conf` and `/etc/hostname` for the pod's containers.
    pub resolv_conf: Option<PathBuf>,
    pub hostname_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    pub pid: i32,
    pub start: u64,
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
}

impl HolderRecord {
    pub fn holder(&self) -> Holder {
        Holder {
            pid: self.pid,
            start: self.start,
        }
    }
}

/// How a container came to run, which decides how it is found, stopped and removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CtrKind {
    /// Created with `runc create` under the shim's runc root.
    Runc,
    /// Restored from a checkpoint by the engine (recorded in the engine's state).
    Restored,
}

/// The lifecycle step the shim last took for a container (the live state also depends on
/// whether its init still runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Created,
    Started,
    Exited,
}

/// A checkpoint a container will be restored from at start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestorePlan {
    /// The extracted checkpoint (holds `checkpoint/`, `spec.dump`, …).
    pub dir: PathBuf,
    /// Where it came from (archive path or image reference).
    pub source: String,
    /// The OCI spec to restore with (spec.dump with mounts re-pointed to the new pod).
    pub spec: serde_json::Value,
    pub config: Option<serde_json::Value>,
    /// Unpacked layers of the base image.
    pub base_layers: Vec<PathBuf>,
    /// The bind mounts the request (or the pod) provides: destination → host source. Every
    /// other bind mount of the checkpoint is made fresh or refused by the engine (see
    /// `cpengine::container::binds`); the checkpoint's own host paths are never used.
    #[serde(default)]
    pub binds: std::collections::BTreeMap<PathBuf, PathBuf>,
    /// The key whose signature was verified when the checkpoint was extracted (a public key
    /// line); `None`: signatures were not required then. StartContainer checks it against the
    /// keys trusted at start.
    #[serde(default)]
    pub signed_by: Option<String>,
}

/// A persisted container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtrRecord {
    pub id: String,
    pub pod_id: String,
    pub spec: ContainerSpec,
    pub kind: CtrKind,
    pub phase: Phase,
    pub image_ref: String,
    pub image_id: String,
    /// The image's name (first tag), for archive metadata.
    pub image_name: String,
    /// Absolute path of the CRI log.
    pub log_path: PathBuf,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: Option<i32>,
    pub reason: String,
    pub message: String,
    pub pid: Option<i32>,
    pub pid_start: u64,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub lowers: Vec<PathBuf>,
    pub relay_pid: Option<i32>,
    pub restore: Option<RestorePlan>,
    /// The signal StopContainer sends first (the image's `StopSignal`; default SIGTERM).
    #[serde(default)]
    pub stop_signal: Option<String>,
}

/// The records, in memory and on disk.
#[derive(Debug)]
pub struct Store {
    pub state: StateRoot,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    pods: BTreeMap<String, PodRecord>,
    ctrs: BTreeMap<String, CtrRecord>,
}

impl Store {
    pub fn pods_dir(state: &StateRoot) -> PathBuf {
        state.run.join("shim").join("pods")
    }

    pub fn ctrs_dir(state: &StateRoot) -> PathBuf {
        state.run.join("shim").join("containers")
    }

    pub fn pod_dir(&self, id: &str) -> PathBuf {
        Self::pods_dir(&self.state).join(id)
    }

    pub fn ctr_run_dir(&self, id: &str) -> PathBuf {
        Self::ctrs_dir(&self.state).join(id)
    }

    pub fn ctr_lib_dir(&self, id: &str) -> PathBuf {
        self.state.lib.join("shim").join("containers").join(id)
    }

    /// The runc root of the containers the shim creates.
    pub fn runc_root(&self) -> PathBuf {
        self.state.run.join("runc")
    }

    /// Loads every record found under the state root.
    pub fn load(state: StateRoot) -> Result<Self> {
        let mut inner = Inner::default();
        for (dir, file) in [
            (Self::pods_dir(&state), "pod.json"),
            (Self::ctrs_dir(&state), "container.json"),
        ] {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ShimError::state("reading", &dir)(e)),
            };
            for e in entries.flatten() {
                let path = e.path().join(file);
                let Ok(text) = std::fs::read(&path) else {
                    continue;
                };
                if file == "pod.json" {
                    match serde_json::from_slice::<PodRecord>(&text) {
                        Ok(p) => {
                            inner.pods.insert(p.id.clone(), p);
                        }
                        Err(err) => {
                            tracing::warn!(path = %path.display(), %err, "ignoring unreadable pod record")
                        }
                    }
                } else {
                    match serde_json::from_slice::<CtrRecord>(&text) {
                        Ok(c) => {
                            inner.ctrs.insert(c.id.clone(), c);
                        }
                        Err(err) => {
                            tracing::warn!(path = %path.display(), %err, "ignoring unreadable container record")
                        }
                    }
                }
            }
        }
        Ok(Self {
            state,
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pod(&self, id: &str) -> Option<PodRecord> {
        self.lock().pods.get(id).cloned()
    }

    pub fn pods(&self) -> Vec<PodRecord> {
        self.lock().pods.values().cloned().collect()
    }

    pub fn ctr(&self, id: &str) -> Option<CtrRecord> {
        self.lock().ctrs.get(id).cloned()
    }

    pub fn ctrs(&self) -> Vec<CtrRecord> {
        self.lock().ctrs.values().cloned().collect()
    }

    /// Resolves a full id or a unique prefix of a pod id.
    pub fn pod_id(&self, id: &str) -> Result<String> {
        resolve(self.lock().pods.keys(), id, "pod sandbox")
    }

    /// Resolves a full id or a unique prefix of a container id.
    pub fn ctr_id(&self, id: &str) -> Result<String> {
        resolve(self.lock().ctrs.keys(), id, "container")
    }

    pub fn save_pod(&self, p: &PodRecord) -> Result<()> {
        let path = self.pod_dir(&p.id).join("pod.json");
        write_json(&path, p)?;
        self.lock().pods.insert(p.id.clone(), p.clone());
        Ok(())
    }

    pub fn save_ctr(&self, c: &CtrRecord) -> Result<()> {
        let path = self.ctr_run_dir(&c.id).join("container.json");
        write_json(&path, c)?;
        self.lock().ctrs.insert(c.id.clone(), c.clone());
        Ok(())
    }

    /// Updates a container record in place and persists it.
    pub fn update_ctr(&self, id: &str, f: impl FnOnce(&mut CtrRecord)) -> Result<CtrRecord> {
        let mut c = self
            .ctr(id)
            .ok_or_else(|| ShimError::not_found("container", id))?;
        f(&mut c);
        self.save_ctr(&c)?;
        Ok(c)
    }

    pub fn forget_pod(&self, id: &str) {
        self.lock().pods.remove(id);
        let _ = std::fs::remove_dir_all(self.pod_dir(id));
    }

    pub fn forget_ctr(&self, id: &str) {
        self.lock().ctrs.remove(id);
        let _ = std::fs::remove_dir_all(self.ctr_run_dir(id));
        let _ = std::fs::remove_dir_all(self.ctr_lib_dir(id));
    }

    /// Reserves a container name in a pod: fails if another container of the pod has the same
    /// name and attempt. The caller saves the record right after, under the same call.
    pub fn check_name_free(&self, pod_id: &str, name: &str, attempt: u32) -> Result<()> {
        let taken = self
            .lock()
            .ctrs
            .values()
            .any(|c| c.pod_id == pod_id && c.spec.name == name && c.spec.attempt == attempt);
        if taken {
            return Err(ShimError::AlreadyExists(format!(
                "container {name} (attempt {attempt}) already exists in pod {pod_id}"
            )));
        }
        Ok(())
    }
}

fn resolve<'a>(
    keys: impl Iterator<Item = &'a String>,
    id: &str,
    kind: &'static str,
) -> Result<String> {
    if id.is_empty() {
        return Err(ShimError::InvalidArgument(format!("{kind} id is empty")));
    }
    let matches: Vec<&String> = keys.filter(|k| k.starts_with(id)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ShimError::not_found(kind, id)),
        many => match many.iter().find(|k| k.as_str() == id) {
            Some(k) => Ok((*k).clone()),
            None => Err(ShimError::InvalidArgument(format!(
                "{kind} id prefix {id:?} is ambiguous"
            ))),
        },
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let data = serde_json::to_vec_pretty(v)
        .map_err(|e| ShimError::Internal(format!("encoding a record: {e}")))?;
    write_atomic(path, &data, 0o600).map_err(ShimError::state("writing", path))
}

/// A new random 64-hex id.
pub fn new_id() -> String {
    let a: u128 = rand::random();
    let b: u128 = rand::random();
    format!("{a:032x}{b:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reload_and_prefixes_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateRoot::at(dir.path());
        let s = Store::load(state.clone()).unwrap();
        let pod = PodRecord {
            id: "abc123".into(),
            spec: PodSpec::default(),
            created_at: 5,
            state: PodState::Ready,
            holder: None,
            resolv_conf: None,
            hostname_file: None,
        };
        s.save_pod(&pod).unwrap();
        let s2 = Store::load(state).unwrap();
        assert_eq!(s2.pod("abc123"), Some(pod));
        assert_eq!(s2.pod_id("abc").unwrap(), "abc123");
        assert!(matches!(s2.pod_id("zzz"), Err(ShimError::NotFound { .. })));
        assert!(matches!(s2.pod_id(""), Err(ShimError::InvalidArgument(_))));
        assert_eq!(new_id().len(), 64);
    }
}
