//! The in-flight journal: what a running checkpoint has touched, so that if the engine process
//! dies mid-checkpoint (SIGKILL, OOM, power cut of the process), the next engine start repairs
//! it — thaws the container's freezer cgroup if it was left frozen, removes the staging
//! directory and the partial archive — instead of leaving a frozen workload and garbage.
//!
//! Each checkpoint writes one small JSON entry under `<run>/journal/` before it creates its
//! staging directory or freezes anything, records its CRIU worker as soon as that starts, and
//! removes the entry when done (success or handled failure). [`recover`] looks at every entry
//! whose owner process is gone (pid dead, or reused: start time differs) and undoes it, in
//! this order: stop the orphaned CRIU worker (it still holds the frozen, seized tasks), thaw
//! the freezer, remove CRIU's network lock from the container's namespace, remove the staging
//! directory and partial archives. Every CLI command that touches containers and the shim
//! call it at start-up.
//!
//! A container restore journals itself the same way ([`InFlight::restore_of`]): if its engine
//! dies before the container's record is written, recovery stops its CRIU worker, kills
//! whatever was restored into its cgroups and removes them, unmounts what is mounted under its
//! run directory (the rootfs, CRIU's leftovers) and removes its directories, so the id can be
//! restored again. If the record was written, the restore had finished: only the entry goes.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::state::{StateRoot, write_atomic};

/// One checkpoint (or restore) in progress.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The container's init and its start time: its network namespace may carry CRIU's lock.
    #[serde(default)]
    pub init_pid: i32,
    #[serde(default)]
    pub init_start: u64,
    /// The CRIU worker of the dump and its start time, once it runs.
    #[serde(default)]
    pub criu_pid: u32,
    #[serde(default)]
    pub criu_start: u64,
    /// For a restore: the id of the container being restored (`container` too).
    #[serde(default)]
    pub restore_of: Option<String>,
    /// For a restore: its cgroups, once created.
    #[serde(default)]
    pub cgroups: std::collections::BTreeMap<String, PathBuf>,
    /// For a restore: directories to unmount everything under and remove.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
}

impl InFlight {
    /// An entry for the restore of container `id` that created `dirs`.
    pub fn restore(id: &str, dirs: Vec<PathBuf>) -> Self {
        Self {
            container: id.to_string(),
            restore_of: Some(id.to_string()),
            dirs,
            ..Default::default()
        }
    }
}

/// What recovery did for one abandoned checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recovered {
    pub container: String,
    /// The orphaned CRIU worker that was stopped.
    pub killed_criu: Option<u32>,
    pub thawed: Option<PathBuf>,
    /// CRIU's network lock removed from the container's namespace.
    pub unlocked: Option<crate::netlock::Unlocked>,
    pub removed: Vec<PathBuf>,
}

/// Removes its journal entry when dropped.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
    entry: InFlight,
}

impl Entry {
    /// Records the CRIU worker of the checkpoint (rewrites the entry atomically).
    pub fn record_worker(&mut self, pid: u32) -> std::io::Result<()> {
        self.entry.criu_pid = pid;
        self.entry.criu_start = crate::proc::start_time(pid as i32).unwrap_or(0);
        self.write()
    }

    /// Changes the entry and rewrites it atomically.
    pub fn update(&mut self, f: impl FnOnce(&mut InFlight)) -> std::io::Result<()> {
        f(&mut self.entry);
        self.write()
    }

    fn write(&self) -> std::io::Result<()> {
        write_atomic(
            &self.path,
            &serde_json::to_vec_pretty(&self.entry).map_err(std::io::Error::other)?,
            0o600,
        )
    }
}

/// A hook handler that records the CRIU worker in the journal entry and passes every hook on.
pub struct Journaled<'a> {
    pub entry: &'a mut Entry,
    pub inner: &'a mut dyn crate::criu::NotifyHandler,
}

impl std::fmt::Debug for Journaled<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journaled")
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

impl crate::criu::NotifyHandler for Journaled<'_> {
    fn on_worker(&mut self, pid: u32) {
        if let Err(e) = self.entry.record_worker(pid) {
            tracing::warn!(error = %e, "recording the criu worker in the checkpoint journal failed");
        }
        self.inner.on_worker(pid);
    }

    fn on_notify(&mut self, n: crate::criu::Notification) -> crate::criu::Ack {
        self.inner.on_notify(n)
    }
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
    Ok(Entry { path, entry })
}

/// Whether `pid` is still the process that started at `start` (0: unknown, any).
fn same_process(pid: i32, start: u64) -> bool {
    crate::proc::is_same_process(pid, start)
}

fn owner_alive(e: &InFlight) -> bool {
    same_process(e.pid as i32, e.pid_start)
}

/// Stops an orphaned CRIU worker and waits until it is gone (its tasks are detached from it
/// by the kernel when it dies). A checkpoint's worker first gets `grace` to abort by itself:
/// its client is gone, so it fails at its next hook or reply and cures and resumes the tasks
/// it holds; a SIGKILL while its parasite is inside a task would kill the task (see
/// `criu::Session::abort`). A restore's worker is killed at once: its tasks are killed anyway.
fn stop_worker(pid: u32, start: u64, grace: std::time::Duration) -> bool {
    let pid = pid as i32;
    if start == 0 || !same_process(pid, start) {
        return false;
    }
    let gone = |pid: i32| {
        // Our child only if the dead engine was our ancestor's child; reap if we can.
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        !same_process(pid, start)
            || crate::proc::task_state(pid).is_none_or(|s| s.state == 'Z' || s.state == 'X')
    };
    let until = std::time::Instant::now() + grace;
    while std::time::Instant::now() < until {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    tracing::warn!(
        pid,
        ?grace,
        "an orphaned criu did not stop by itself; killing it"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for _ in 0..500 {
        if gone(pid) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    true
}

/// How long recovery waits for the lock of an abandoned restore's container before it leaves
/// that restore for later (see [`super::lock::lock_for_recovery`]).
const RECOVERY_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Repairs every checkpoint whose engine process is gone. Safe to call at any time: entries of
/// live processes (another cpengine running a checkpoint now) are left alone.
pub fn recover(state: &StateRoot) -> Vec<Recovered> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir(state)) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        // A half-written entry (the writer died between creating its temp file and renaming
        // it): `.<name>.tmp-<pid>-<rand>`, removed once that pid is gone.
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix('.').and_then(|n| n.split(".tmp-").nth(1)) {
            let writer = rest.split('-').next().and_then(|p| p.parse::<i32>().ok());
            if writer.is_some_and(|p| !crate::proc::exists(p)) {
                let _ = std::fs::remove_file(&path);
            }
            continue;
        }
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
        if let Some(id) = &entry.restore_of {
            // The directories and cgroups are the id's: another restore of the same id that is
            // running now (it holds the id's lock) must not lose them. Its turn comes later.
            let Some(_lock) = super::lock::lock_for_recovery(state, id, RECOVERY_LOCK_WAIT) else {
                tracing::warn!(
                    container = %id,
                    entry = %path.display(),
                    openers = ?super::lock::openers(state, id),
                    "the container of an abandoned restore is locked by a live process; left for later"
                );
                continue;
            };
            if let Some(r) = recover_restore(state, id, &entry) {
                out.push(r);
            }
            let _ = std::fs::remove_file(&path);
            continue;
        }
        let mut rec = Recovered {
            container: entry.container.clone(),
            killed_criu: None,
            thawed: None,
            unlocked: None,
            removed: Vec::new(),
        };
        if stop_worker(entry.criu_pid, entry.criu_start, crate::criu::ABORT_GRACE) {
            rec.killed_criu = Some(entry.criu_pid);
        }
        if let Some(f) = &entry.freezer
            && crate::cgroups::is_frozen(f)
        {
            crate::cgroups::thaw(f);
            rec.thawed = Some(f.clone());
        }
        if same_process(entry.init_pid, entry.init_start)
            && let Some(ns) = crate::netlock::foreign_netns_of(entry.init_pid)
        {
            match crate::netlock::unlock(&ns) {
                Ok(u) if !u.is_empty() => rec.unlocked = Some(u),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(container = %rec.container, error = %e, "removing criu's network lock failed")
                }
            }
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
            let prefix = crate::archive::temp_prefix(o);
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

/// Undoes a restore whose engine died before it finished (see the module docs).
fn recover_restore(state: &StateRoot, id: &str, entry: &InFlight) -> Option<Recovered> {
    if state.container_record(id).exists() {
        // The restore finished: the container is the record's (and `delete`'s) business; only
        // the extracted archive (not needed once restored) may be left.
        let restores = state.lib.join("restores");
        for d in entry.dirs.iter().filter(|d| d.starts_with(&restores)) {
            let _ = std::fs::remove_dir_all(d);
        }
        return None;
    }
    let mut rec = Recovered {
        container: id.to_string(),
        killed_criu: None,
        thawed: None,
        unlocked: None,
        removed: Vec::new(),
    };
    if stop_worker(entry.criu_pid, entry.criu_start, std::time::Duration::ZERO) {
        rec.killed_criu = Some(entry.criu_pid);
    }
    let killed = crate::cgroups::kill_all(&entry.cgroups);
    let left = crate::cgroups::remove_all(&entry.cgroups);
    if !left.is_empty() {
        tracing::warn!(
            ?left,
            "cgroups of an abandoned restore could not be removed"
        );
    }
    for d in &entry.dirs {
        crate::process::unmount_leftovers(d);
        let _ = nix::mount::umount2(d, nix::mount::MntFlags::MNT_DETACH);
        if d.exists() && std::fs::remove_dir_all(d).is_ok() {
            rec.removed.push(d.clone());
        }
    }
    tracing::warn!(container = %id, killed, removed = ?rec.removed, "repaired an abandoned restore");
    Some(rec)
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
        let partial = tmp
            .path()
            .join(format!("{}1234", crate::archive::temp_prefix(&out)));
        std::fs::write(&partial, b"partial").unwrap();
        let entry = InFlight {
            container: "c1".into(),
            staging: Some(staging.clone()),
            output: Some(out.clone()),
            started: "now".into(),
            ..Default::default()
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
        // A half-written entry of a dead writer, and one of a live writer (us).
        let dead_tmp = dir(&state).join(".c1-9-x.json.tmp-4194305-7");
        let live_tmp = dir(&state).join(format!(".c1-9-x.json.tmp-{}-7", std::process::id()));
        std::fs::write(&dead_tmp, b"{").unwrap();
        std::fs::write(&live_tmp, b"{").unwrap();
        let r = recover(&state);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].killed_criu, None);
        assert!(!dead_tmp.exists() && live_tmp.exists());
        std::fs::remove_file(&live_tmp).unwrap();
        assert!(!staging.exists());
        assert!(!partial.exists());
        assert!(
            std::fs::read_dir(dir(&state)).unwrap().next().is_none(),
            "entry removed"
        );
    }

    /// Writes `entry` as if a process that no longer exists had begun it.
    fn orphan(state: &StateRoot, mut entry: InFlight) {
        entry.pid = 4_194_305;
        entry.pid_start = 1;
        std::fs::create_dir_all(dir(state)).unwrap();
        std::fs::write(
            dir(state).join(format!("{}-dead.json", entry.container)),
            serde_json::to_vec(&entry).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn an_abandoned_restore_is_undone_unless_it_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateRoot::at(tmp.path());
        let run = state.container_run_dir("r1");
        std::fs::create_dir_all(run.join("rootfs")).unwrap();
        orphan(&state, InFlight::restore("r1", vec![run.clone()]));
        let r = recover(&state);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].removed, vec![run.clone()]);
        assert!(!run.exists());
        assert!(names(&dir(&state)).is_empty(), "entry left");

        // Finished (its record exists): nothing of the container is touched.
        let run2 = state.container_run_dir("r2");
        std::fs::create_dir_all(&run2).unwrap();
        let record = state.container_record("r2");
        std::fs::create_dir_all(record.parent().unwrap()).unwrap();
        std::fs::write(&record, b"{}").unwrap();
        orphan(&state, InFlight::restore("r2", vec![run2.clone()]));
        assert!(recover(&state).is_empty());
        assert!(run2.exists());
        assert!(names(&dir(&state)).is_empty(), "entry left");
    }

    #[test]
    fn an_abandoned_restore_waits_for_a_passing_holder_of_its_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateRoot::at(tmp.path());
        let run = state.container_run_dir("r3");
        std::fs::create_dir_all(&run).unwrap();
        orphan(&state, InFlight::restore("r3", vec![run.clone()]));
        // A holder that is not a live restore (a forked child about to exec) lets go soon.
        let held = crate::container::lock::try_lock(&state, "r3").unwrap();
        assert_eq!(
            crate::container::lock::openers(&state, "r3"),
            vec![std::process::id() as i32]
        );
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(held);
        });
        let r = recover(&state);
        t.join().unwrap();
        assert_eq!(r.len(), 1);
        assert!(!run.exists());
        assert!(names(&dir(&state)).is_empty(), "entry left");
    }

    fn names(d: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}
