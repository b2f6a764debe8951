//! The in-flight journal: what a running checkpoint has touched, so that if the engine process
//! dies mid-checkpoint (SIGKILL, OOM, power cut of the process), the next engine start repairs
//! it — thaws the container's freezer cgroup if it was left frozen, removes the staging
//! directory and the partial archive — instead of leaving a frozen workload and garbage.
//!
//! Each checkpoint writes one small JSON entry under `<run>/journal/` before it freezes
//! anything and removes it when done (success or handled failure). [`recover`] looks at every
//! entry whose owner process is gone (pid dead, or reused: start time differs) and undoes it.
//! CLI commands that touch containers and the shim call it at start-up.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::state::{StateRoot, write_atomic};

/// One checkpoint in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    /// The engine process doing it, and its start time (to detect pid reuse).
    pub pid: u32,
    pub pid_start: u64,
    pub container: String,
    /// Freezer cgroup CRIU may leave frozen.
    pub freezer: Option<PathBuf>,
    /// Staging directory to remove.
    pub staging: Option<PathBuf>,
    /// The destination: temp files beside it (`.<name>.cpengine-tmp-*`) are partial archives.
    pub output: Option<PathBuf>,
    pub started: String,
}

/// What recovery did for one abandoned checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub container: String,
    pub thawed: Option<PathBuf>,
    pub removed: Vec<PathBuf>,
}

/// Removes its journal entry when dropped.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn dir(state: &StateRoot) -> PathBuf {
    state.run.join("journal")
}

/// Records a checkpoint in progress; the entry disappears when the returned guard drops.
pub fn begin(state: &StateRoot, mut entry: InFlight) -> std::io::Result<Entry> {
    entry.pid = std::process::id();
    entry.pid_start = crate::proc::start_time(entry.pid as i32).unwrap_or(0);
    let path = dir(state).join(format!(
        "{}-{}-{:08x}.json",
        entry.container,
        entry.pid,
        rand::random::<u32>()
    ));
    write_atomic(
        &path,
        &serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?,
        0o600,
    )?;
    Ok(Entry { path })
}

/// The temp-file prefix an archive being written to `output` has (see the archive writer).
pub fn temp_prefix(output: &Path) -> String {
    format!(
        ".{}.cpengine-tmp-",
        output
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("archive")
    )
}

fn owner_alive(e: &InFlight) -> bool {
    crate::proc::start_time(e.pid as i32).is_some_and(|t| e.pid_start == 0 || t == e.pid_start)
}

/// Repairs every checkpoint whose engine process is gone. Safe to call at any time: entries of
/// live processes (another cpengine running a checkpoint now) are left alone.
pub fn recover(state: &StateRoot) -> Vec<Recovered> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir(state)) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(entry) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<InFlight>(&b).ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if owner_alive(&entry) {
            continue;
        }
        let mut rec = Recovered {
            container: entry.container.clone(),
            thawed: None,
            removed: Vec::new(),
        };
        if let Some(f) = &entry.freezer
            && crate::cgroups::is_frozen(f)
        {
            crate::cgroups::thaw(f);
            rec.thawed = Some(f.clone());
        }
        if let Some(s) = &entry.staging
            && s.exists()
            && std::fs::remove_dir_all(s).is_ok()
        {
            rec.removed.push(s.clone());
        }
        if let Some(o) = &entry.output
            && let Some(parent) = o.parent()
        {
            let prefix = temp_prefix(o);
            for t in std::fs::read_dir(parent).into_iter().flatten().flatten() {
                if t.file_name().to_string_lossy().starts_with(&prefix)
                    && std::fs::remove_file(t.path()).is_ok()
                {
                    rec.removed.push(t.path());
                }
            }
        }
        let _ = std::fs::remove_file(&path);
        tracing::warn!(container = %rec.container, thawed = ?rec.thawed, removed = ?rec.removed, "repaired an abandoned checkpoint");
        out.push(rec);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_entries_are_kept_and_dead_ones_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateRoot::at(tmp.path());
        let staging = tmp.path().join("stage");
        std::fs::create_dir_all(staging.join("images")).unwrap();
        let out = tmp.path().join("ckpt.tar");
        let partial = tmp.path().join(format!("{}1234", temp_prefix(&out)));
        std::fs::write(&partial, b"partial").unwrap();
        let entry = InFlight {
            pid: 0,
            pid_start: 0,
            container: "c1".into(),
            freezer: None,
            staging: Some(staging.clone()),
            output: Some(out.clone()),
            started: "now".into(),
        };
        // Our own entry: we are alive, so recovery leaves it.
        let guard = begin(&state, entry.clone()).unwrap();
        assert!(recover(&state).is_empty());
        assert!(staging.exists());
        // Pretend the owner died: rewrite the entry with a pid that does not exist.
        std::mem::forget(guard);
        for e in std::fs::read_dir(dir(&state)).unwrap().flatten() {
            let mut v: InFlight =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            v.pid = 4_194_305;
            std::fs::write(e.path(), serde_json::to_vec(&v).unwrap()).unwrap();
        }
        let r = recover(&state);
        assert_eq!(r.len(), 1);
        assert!(!staging.exists());
        assert!(!partial.exists());
        assert!(
            std::fs::read_dir(dir(&state)).unwrap().next().is_none(),
            "entry removed"
        );
    }
}
