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
    pub at_hooks: usize,
    pub random: usize,
    /// Random trials whose operation finished before the kill came.
    pub finished_first: usize,
    /// Trials after which a repair was actually needed (frozen cgroup, network lock, staging,
    /// half-restored tasks…) and done.
    pub repairs: usize,
    /// Random SIGKILLs of CRIU that landed while its parasite was inside the workload, which
    /// then died of the planted breakpoint (see [`died_of_parasite_trap`]).
    pub parasite_casualties: usize,
}

impl Tally {
    pub fn report(&self, scenario: &str) {
        eprintln!(
            "faults: {scenario}: {} faults injected ({} at hooks or fixed moments, {} at random delays, {} of which came after the operation had finished), {} needed a repair; workload killed by criu's own breakpoint (external SIGKILL mid-injection): {}; every other fault survived",
            self.at_hooks + self.random,
            self.at_hooks,
            self.random,
            self.finished_first,
            self.repairs,
            self.parasite_casualties
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

/// Reaps every exited child of this process (the suite is a subreaper: CRIU workers whose
/// engine was killed end up as our children).
pub fn reap_zombies() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(s) = waitpid(None::<nix::unistd::Pid>, Some(WaitPidFlag::WNOHANG)) {
        if matches!(s, WaitStatus::StillAlive) {
            break;
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

/// Whether the kernel logged that one of `pids` died on a breakpoint trap (`trap int3`): what
/// happens to a task when CRIU is SIGKILLed while its parasite code is inside the task (the
/// breakpoint CRIU planted in the task's code then runs without a tracer). No engine can undo
/// that; the suite counts such casualties of an external SIGKILL separately and fails on any
/// other death.
pub fn died_of_parasite_trap(pids: &[i32]) -> bool {
    let out = std::process::Command::new("dmesg")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .any(|l| l.contains("trap int3") && pids.iter().any(|p| l.contains(&format!("[{p}]"))))
}
