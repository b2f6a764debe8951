//! Reading process state from /proc: the tree under a pid, whether a task is stopped or
//! traced. Used to make sure a failed checkpoint leaves its workload running.

use std::collections::BTreeSet;
use std::fs;

/// What /proc says about one task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    /// The state letter (`R`, `S`, `D`, `T` stopped, `t` traced, `Z`, …).
    pub state: char,
    /// Pid of the tracer, 0 if none.
    pub tracer: i32,
}

impl TaskState {
    /// Stopped by a signal or a tracer.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }
}

/// `State` and `TracerPid` of a process, `None` if it does not exist.
pub fn task_state(pid: i32) -> Option<TaskState> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut state = None;
    let mut tracer = 0;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("State:") {
            state = v.trim().chars().next();
        } else if let Some(v) = line.strip_prefix("TracerPid:") {
            tracer = v.trim().parse().unwrap_or(0);
        }
    }
    Some(TaskState {
        state: state?,
        tracer,
    })
}

/// Whether a process with this pid exists (zombies included).
pub fn exists(pid: i32) -> bool {
    pid > 0 && fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// `pid` and all its descendants (through every thread's `children` list).
pub fn tree(pid: i32) -> Vec<i32> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        if !seen.insert(p) {
            continue;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let Ok(children) = fs::read_to_string(t.path().join("children")) else {
                continue;
            };
            stack.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            );
        }
    }
    seen.into_iter().collect()
}

/// Parent pid of a process.
pub fn ppid(pid: i32) -> Option<i32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A process that holds an id a restore needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdHolder {
    /// The id that is taken.
    pub id: i32,
    /// The process holding it.
    pub pid: i32,
    pub comm: String,
    pub state: char,
    /// `pid`, `process group` or `session`.
    pub role: &'static str,
}

/// Which of `ids` are in use as a pid, process-group id or session id by some process.
/// Those ids cannot be given to a new task (clone3 with `set_tid` fails with EEXIST), which is
/// what CRIU needs when it restores a tree with its original pids.
pub fn ids_in_use(ids: &[i32]) -> Vec<IdHolder> {
    let wanted: BTreeSet<i32> = ids.iter().copied().collect();
    let mut out = Vec::new();
    for id in &wanted {
        if let Some(st) = task_state(*id) {
            out.push(IdHolder {
                id: *id,
                pid: *id,
                comm: comm(*id),
                state: st.state,
                role: "pid",
            });
        }
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((name, rest)) = parse_stat(&stat) else {
            continue;
        };
        // Fields after the command: state ppid pgrp session ...
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let state = f[0].chars().next().unwrap_or('?');
        for (idx, role) in [(2, "process group"), (3, "session")] {
            if let Ok(v) = f[idx].parse::<i32>()
                && v != pid
                && wanted.contains(&v)
                && !out.iter().any(|h| h.id == v)
            {
                {
                    out.push(IdHolder {
                        id: v,
                        pid,
                        comm: name.to_string(),
                        state,
                        role,
                    });
                }
            }
        }
    }
    out
}

/// Splits `/proc/PID/stat` into the command name and the fields after it.
fn parse_stat(stat: &str) -> Option<(&str, &str)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    Some((&stat[open + 1..close], stat.get(close + 2..)?))
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether `pid` is still the process that started at `start` (clock ticks since boot, as
/// [`start_time`] gives) and has not exited: a zombie or dead task, or a later process that
/// reuses the pid, is not. A recorded start of 0 (not known when it was stored) matches no
/// process: a pid alone may have been reused by any other process since. The one "is this pid
/// still that process" check of the engine and the shim.
pub fn is_same_process(pid: i32, start: u64) -> bool {
    start != 0
        && pid > 0
        && start_time(pid) == Some(start)
        && task_state(pid).is_some_and(|s| s.state != 'Z' && s.state != 'X')
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/PID/stat`), used to
/// tell a process from a later one that reuses its pid.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = parse_stat(&stat)?;
    // `rest` starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod same_process_tests {
    use super::*;

    #[test]
    fn a_start_time_of_zero_matches_no_process() {
        let me = std::process::id() as i32;
        let start = start_time(me).unwrap();
        assert!(is_same_process(me, start));
        assert!(!is_same_process(me, start + 1));
        assert!(!is_same_process(me, 0), "start 0 matched a live process");
    }
}
