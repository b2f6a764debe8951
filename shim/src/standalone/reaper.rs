//! Exit statuses of container init processes.
//!
//! The shim is a child subreaper: a container's init, left behind by `runc create` (its parent
//! runc exits) or restored by CRIU as our sibling-child, is re-parented to the shim, so the shim
//! can `waitpid` it and learn how it ended. The reaper waits only for the pids it was told to
//! track: other children (CRIU workers, runc invocations) are waited for by whoever started
//! them, and reaping them here would steal their status. Children nobody waits for (the log
//! relays and pod holders, whose handles are dropped on purpose) are reaped once they have
//! been zombies for a while.
//!
//! After a shim restart the running containers are no longer our children; their exit codes
//! are then unknown and the container status says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How a tracked process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal number for a killed process.
    pub code: i32,
    /// Nanoseconds since the epoch.
    pub at: i64,
}

/// How long an untracked child may stay a zombie before the reaper collects it: its owner
/// (a tokio `Child`, the engine's CRIU session) reaps its own children within milliseconds.
const STALE_ZOMBIE: Duration = Duration::from_secs(5);

/// The reaper: tracked pids and their exits.
#[derive(Debug, Default)]
pub struct Reaper {
    tracked: Mutex<HashMap<i32, Option<Exit>>>,
    zombies_seen: Mutex<HashMap<i32, Instant>>,
}

impl Reaper {
    /// Makes this process a child subreaper and starts the reaping task.
    pub fn start() -> std::io::Result<Arc<Self>> {
        cpengine::sys::set_child_subreaper()?;
        let me = Arc::new(Self::default());
        let weak = Arc::downgrade(&me);
        let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                let Some(r) = weak.upgrade() else { break };
                r.reap();
            }
        });
        Ok(me)
    }

    /// Starts tracking `pid` (a container init that is, or will become, our child).
    pub fn track(&self, pid: i32) {
        self.lock().entry(pid).or_insert(None);
        self.reap();
    }

    /// Stops tracking `pid`.
    pub fn forget(&self, pid: i32) {
        self.lock().remove(&pid);
    }

    /// The exit of `pid`, if it was tracked and has ended.
    pub fn exit_of(&self, pid: i32) -> Option<Exit> {
        self.reap();
        self.lock().get(&pid).copied().flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, Option<Exit>>> {
        self.tracked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Collects the exits of tracked pids and stale untracked zombies.
    pub fn reap(&self) {
        let mut tracked = self.lock();
        for (pid, exit) in tracked.iter_mut().filter(|(_, e)| e.is_none()) {
            match waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => {
                    *exit = Some(Exit {
                        code,
                        at: crate::domain::now_ns(),
                    })
                }
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    *exit = Some(Exit {
                        code: 128 + sig as i32,
                        at: crate::domain::now_ns(),
                    })
                }
                // Still running, or not our child (the status logic then checks /proc).
                _ => {}
            }
        }
        let tracked_pids: Vec<i32> = tracked.keys().copied().collect();
        drop(tracked);
        self.reap_stale_zombies(&tracked_pids);
    }

    fn reap_stale_zombies(&self, tracked: &[i32]) {
        let now = Instant::now();
        let mut seen = self.zombies_seen.lock().unwrap_or_else(|p| p.into_inner());
        let zombies: Vec<i32> = children()
            .into_iter()
            .filter(|p| !tracked.contains(p))
            .filter(|p| cpengine::proc::task_state(*p).is_some_and(|s| s.state == 'Z'))
            .collect();
        seen.retain(|p, _| zombies.contains(p));
        for p in zombies {
            let first = *seen.entry(p).or_insert(now);
            if now.duration_since(first) >= STALE_ZOMBIE {
                let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
                seen.remove(&p);
            }
        }
    }
}

/// This process's children (from every thread's `children` list).
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracked_child_exit_is_recorded() {
        let r = Reaper::default();
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // The Child handle is forgotten on purpose: the reaper owns the wait.
        std::mem::forget(child);
        r.track(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.exit_of(pid).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(r.exit_of(pid).map(|e| e.code), Some(7));
    }
}
