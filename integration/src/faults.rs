//! Helpers of the fault-injection suite (`tests/faults.rs`): how many trials, a reproducible
//! random source, and the checks that a workload came out of a failed operation unharmed and
//! that a failed operation left nothing behind.
//!
//! Trials: `CPENGINE_FAULT_TRIALS` random-delay trials per scenario (default 2, what CI runs;
//! `scripts/fault-long.sh` runs 100); every hook point is tried once, and
//! `max(1, trials / 10)` times in the long mode. `CPENGINE_FAULT_SEED` replays a run (the seed
//! is printed by every scenario).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Random-delay trials per scenario.
pub fn trials() -> usize {
    std::env::var("CPENGINE_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// How many times each hook point is tried.
pub fn hook_rounds() -> usize {
    (trials() / 10).max(1)
}

/// A small xorshift generator: reproducible from its seed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from `CPENGINE_FAULT_SEED`, else from /dev/urandom; prints the seed.
    pub fn from_env(scenario: &str) -> Self {
        let seed = std::env::var("CPENGINE_FAULT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                let mut b = [0u8; 8];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| f.read_exact(&mut b))
                    .expect("reading /dev/urandom");
                u64::from_le_bytes(b)
            });
        eprintln!("faults: {scenario}: seed {seed} (CPENGINE_FAULT_SEED={seed} replays it)");
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A duration uniform in `0..=max`.
    pub fn delay(&mut self, max: Duration) -> Duration {
        let micros = max.as_micros().max(1) as u64;
        Duration::from_micros(self.below(micros + 1))
    }
}

/// Counts of one scenario, printed at its end.
#[derive(Debug, Default)]
pub struct Tally {
    /// Faults injected at hooks (or fixed moments): CRIU was really killed there.
    pub at_hooks: usize,
    /// Faults injected at random delays: CRIU was really killed.
    pub random: usize,
    /// Hook faults that injected nothing: the operation never reached the hook.
    pub not_reached: usize,
    /// Random trials whose operation finished before the kill came (nothing injected).
    pub finished_first: usize,
    /// Trials after which a repair was actually needed (frozen cgroup, network lock, staging,
    /// half-restored tasks…) and done.
    pub repairs: usize,
    /// Random SIGKILLs of CRIU that landed in its parasite phase and after which the workload
    /// died of CRIU's planted breakpoint (SIGTRAP; see [`Death::is_breakpoint_trap`]).
    pub parasite_casualties: usize,
    /// Trials after which [`assert_no_criu_helpers_left`] checked that no process a killed
    /// CRIU had forked outlived it.
    pub helpers_checked: usize,
}

impl Tally {
    pub fn report(&self, scenario: &str) {
        eprintln!(
            "faults: {scenario}: {} faults injected ({} at hooks or fixed moments, {} at random delays), {} needed a repair; not injected: {} hooks never reached, {} random kills that came after the operation had finished; workload killed by criu's own breakpoint after the test SIGKILLed criu in its parasite phase: {} of {} random kills; no helper process of a killed criu outlived the operation ({} trials checked); every other fault survived",
            self.at_hooks + self.random,
            self.at_hooks,
            self.random,
            self.repairs,
            self.not_reached,
            self.finished_first,
            self.parasite_casualties,
            self.random,
            self.helpers_checked,
        );
    }

    /// Bounds the casualties: CRIU's parasite phase is a part of a dump, so a kill at a random
    /// moment lands in it only sometimes; casualties in more than half of the random kills (plus
    /// one, so that a short run never fails by chance) mean tasks die of something else.
    pub fn assert_casualties_bounded(&self, scenario: &str) {
        assert!(
            self.parasite_casualties <= self.random / 2 + 1,
            "{scenario}: the workload died after {} of {} random kills of criu: {self:?}",
            self.parasite_casualties,
            self.random
        );
    }
}

/// A content fingerprint of every regular file under `dir` (names and bytes), to prove a
/// failed restore did not modify its input.
pub fn fingerprint(dir_or_file: &Path) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut stack = vec![dir_or_file.to_path_buf()];
    let mut files = Vec::new();
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).expect("stat");
        if md.is_dir() {
            for e in std::fs::read_dir(&p).expect("read_dir").flatten() {
                stack.push(e.path());
            }
        } else {
            files.push(p);
        }
    }
    files.sort();
    for f in files {
        f.hash(&mut h);
        std::fs::read(&f).expect("read").hash(&mut h);
    }
    h.finish()
}

/// Mount points of this process under `root`.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    cpengine::container::mountinfo::of_pid(std::process::id() as i32)
        .expect("mountinfo")
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(root))
        .collect()
}

/// The cgroup directories a container restored as `id` gets (beside our own cgroups).
pub fn restore_cgroups(id: &str) -> Vec<PathBuf> {
    let own = cpengine::cgroups::cgroups_of(std::process::id()).expect("own cgroups");
    cpengine::cgroups::hierarchies()
        .expect("hierarchies")
        .into_iter()
        .filter_map(|h| {
            let rel = own.get(&h.controllers)?;
            Some(
                h.mount_point
                    .join(rel.trim_start_matches('/'))
                    .join(format!("cpengine-{id}")),
            )
        })
        .collect()
}

/// Children of `parent` whose command name is `comm`.
pub fn children_named(parent: i32, comm: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if cpengine::proc::ppid(pid) != Some(parent) {
            continue;
        }
        let c = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if c.trim() == comm {
            out.push(pid);
        }
    }
    out
}

/// Checks that no process a SIGKILLed CRIU had forked (its kernel-feature probes stop or sleep
/// in children of their own) outlives the failed operation: the engine kills CRIU's process
/// group before it reaps CRIU. The suite is a subreaper, so such orphans become its children;
/// killed ones are reaped here, live ones fail the trial (and are killed, so the next trial
/// starts clean). Call only while no CRIU of this process is at work.
pub fn assert_no_criu_helpers_left(tally: &mut Tally, what: &str) {
    tally.helpers_checked += 1;
    let me = std::process::id() as i32;
    let live = || {
        reap_zombies();
        children_named(me, "criu")
            .into_iter()
            .filter(|&p| cpengine::proc::task_state(p).is_some_and(|s| s.state != 'Z'))
            .collect::<Vec<_>>()
    };
    // SIGKILL is delivered at once but a task dies when next scheduled: allow for a busy host.
    crate::wait_until(std::time::Duration::from_secs(10), || live().is_empty());
    let left = live();
    if !left.is_empty() {
        let states: Vec<_> = left
            .iter()
            .map(|&p| (p, cpengine::proc::task_state(p).map(|s| s.state)))
            .collect();
        crate::kill_and_reap(&left);
        panic!("{what}: helper processes of the killed criu outlived it: {states:?}");
    }
}

/// Reaps every exited child of this process (the suite is a subreaper: CRIU workers whose
/// engine was killed end up as our children).
/// How each one ended is recorded for [`death_of`].
pub fn reap_zombies() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(s) = waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::WNOHANG)) {
        let status = match s {
            WaitStatus::StillAlive => break,
            WaitStatus::Exited(pid, code) => Some((pid, (code & 0xff) << 8)),
            WaitStatus::Signaled(pid, sig, core) => {
                Some((pid, sig as i32 | if core { 0x80 } else { 0 }))
            }
            _ => None,
        };
        if let Some((pid, st)) = status {
            REAPED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(pid.as_raw(), st);
        }
    }
}

/// Checks that every task in `pids` that still exists runs: neither stopped nor traced. (A
/// container's short-lived tasks, such as its `sleep`, come and go; callers check the tasks
/// that must live — a tree's pids, a container's init — separately.)
pub fn assert_running_untraced(pids: &[i32], what: &str) {
    assert!(!pids.is_empty(), "{what}: no tasks");
    for &p in pids {
        let Some(s) = cpengine::proc::task_state(p) else {
            continue;
        };
        if s.state == 'Z' {
            // An exiting short-lived task (the counters catch a workload that died).
            continue;
        }
        assert!(
            !matches!(s.state, 'T' | 't' | 'Z' | 'X'),
            "{what}: task {p} left in state {}",
            s.state
        );
        assert_eq!(s.tracer, 0, "{what}: task {p} left ptrace-attached");
    }
}

/// The files directly in `dir`, by name.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Freezer states by cgroup path, for messages.
pub fn freezer_states(paths: &BTreeMap<String, PathBuf>) -> Vec<String> {
    paths
        .values()
        .filter_map(|p| std::fs::read_to_string(p.join("freezer.state")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// Kills the log relays of containers restored under `state_root` (relays started by this
/// test process; they outlive a test that failed half-way) and reaps them.
pub fn kill_relays_under(state_root: &Path) {
    let needle = state_root.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains(cpengine::container::relay::RELAY_ARG) && cmd.contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    reap_zombies();
}

/// How a task of the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Death {
    /// Killed by this signal (`core` when it dumped core).
    Signal { signal: i32, core: bool },
    /// Exited with this code.
    Exit(i32),
    /// Gone, and reaped by someone else than this suite: how it ended is unknown.
    Unknown,
}

impl Death {
    fn from_wait_status(status: i32) -> Self {
        if status & 0x7f == 0 {
            Self::Exit((status >> 8) & 0xff)
        } else {
            Self::Signal {
                signal: status & 0x7f,
                core: status & 0x80 != 0,
            }
        }
    }

    /// The death of a task whose breakpoint trap went unhandled: CRIU plants `int3` in a task's
    /// code (and at the end of its parasite) and catches it as the task's tracer; a CRIU that is
    /// SIGKILLed meanwhile leaves the trap to the task, which dies of SIGTRAP.
    pub fn is_breakpoint_trap(&self) -> bool {
        matches!(self, Self::Signal { signal, .. } if *signal == libc::SIGTRAP)
    }
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signal { signal, core } => {
                let name = nix::sys::signal::Signal::try_from(*signal)
                    .map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string());
                write!(
                    f,
                    "killed by {name}{}",
                    if *core { " (core dumped)" } else { "" }
                )
            }
            Self::Exit(c) => write!(f, "exited with code {c}"),
            Self::Unknown => write!(f, "gone, reaped elsewhere (its status is unknown)"),
        }
    }
}

/// Wait statuses of the children [`reap_zombies`] reaped, by pid, so that a death can still be
/// explained after the zombie is gone.
static REAPED: std::sync::Mutex<BTreeMap<i32, i32>> = std::sync::Mutex::new(BTreeMap::new());

/// How `pid` ended, or `None` while it lives. A zombie's wait status is read from
/// `/proc/<pid>/stat` (field 52, `exit_code`): the workload's children are zombies of the
/// workload (which never waits) and the workload and orphans are zombies of this suite (a
/// subreaper) until reaped; a task [`reap_zombies`] reaped is looked up in what it recorded.
pub fn death_of(pid: i32) -> Option<Death> {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // fields[0] is field 3 (state); field 52 is fields[49].
        match fields.first() {
            Some(&"Z") | Some(&"X") => {}
            Some(_) => return None,
            None => return Some(Death::Unknown),
        }
        return Some(
            fields
                .get(49)
                .and_then(|v| v.parse().ok())
                .map_or(Death::Unknown, Death::from_wait_status),
        );
    }
    let reaped = REAPED.lock().unwrap_or_else(|e| e.into_inner());
    Some(
        reaped
            .get(&pid)
            .copied()
            .map_or(Death::Unknown, Death::from_wait_status),
    )
}

/// The tasks of `pids` that are dead, with how each died.
pub fn deaths(pids: &[i32]) -> Vec<(i32, Death)> {
    pids.iter()
        .filter_map(|&p| death_of(p).map(|d| (p, d)))
        .collect()
}

/// Whether the operation failed because CRIU was SIGKILLed: the fault was really injected
/// (a kill that came after CRIU had finished, or a hook never reached, injects nothing).
pub fn criu_was_killed(e: &cpengine::Error) -> bool {
    use std::os::unix::process::ExitStatusExt;
    matches!(
        e.criu(),
        Some(cpengine::criu::CriuError::Closed { status: Some(s), .. })
            if s.signal() == Some(libc::SIGKILL)
    )
}

/// Whether CRIU's log `log` shows it was killed in its parasite phase: it had started
/// injecting its parasite into a task (`Parasite syscall_ip`, the first step of infection,
/// which already plants code in the task) and had not yet let the tasks go (`Unfreezing
/// tasks`, logged once every task is cured). Only then can the task be left with CRIU's
/// breakpoint and no tracer.
pub fn killed_in_parasite_phase(log: &Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.contains("Parasite syscall_ip") && !text.contains("Unfreezing tasks")
}

/// The kernel log from a point on: [`KernelLog::mark`] at a trial's start, then
/// [`KernelLog::since`] reads only what the kernel logged after it (never an older line that
/// happens to name a reused pid).
#[derive(Debug)]
pub struct KernelLog(std::fs::File);

impl KernelLog {
    pub fn mark() -> Self {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg (the suite runs as root)");
        f.seek(std::io::SeekFrom::End(0))
            .expect("seek /dev/kmsg to its end");
        Self(f)
    }

    /// The messages logged since the mark (one record per read; stops when none is left).
    pub fn since(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match self.0.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
                    out.push(msg.lines().next().unwrap_or_default().to_string());
                }
                // EPIPE: records were overwritten meanwhile; the next read goes on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// For an assertion message: every journal entry under `state` with its content, and for the
/// lock of each restore it names, the processes (pid, comm, ppid, state) holding that file open.
pub fn journal_report(state: &cpengine::container::state::StateRoot) -> String {
    let dir = state.run.join("journal");
    let mut out = String::new();
    for name in names_in(&dir) {
        let text = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
        out.push_str(&format!("\n{name}: {text}"));
        let id = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["restore_of"].as_str().map(str::to_owned));
        if let Some(id) = id {
            let lock = state.run.join("locks").join(format!("{id}.lock"));
            out.push_str(&format!(
                "\n  holders of {}: {:?}",
                lock.display(),
                openers(&lock)
            ));
        }
    }
    out
}

/// The processes with `path` open: (pid, comm, ppid, state).
fn openers(path: &Path) -> Vec<(i32, String, Option<i32>, Option<char>)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"));
        if fds
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == path))
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            v.push((
                pid,
                comm.trim().to_owned(),
                cpengine::proc::ppid(pid),
                cpengine::proc::task_state(pid).map(|s| s.state),
            ));
        }
    }
    v
}
