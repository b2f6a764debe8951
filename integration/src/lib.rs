//! Helpers for tests against real CRIU, runc, processes and containers.
//!
//! Every prerequisite is checked explicitly and a missing one fails the test with a message
//! saying how to install it: CI installs everything, so a skipped test would be a lie.
//! Processes a test starts are killed and reaped by guards, and the test process is a child
//! subreaper so orphans of killed trees are reaped promptly (their ids would otherwise block
//! the next restore, which reuses the original pids).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

pub use cpengine;

pub mod containerd;
pub mod corpus;
pub mod cri;
pub mod faults;
pub mod grpc_core;
pub mod imgedit;
pub mod leftovers;
pub mod podman;
pub mod registry;
pub mod runc;

/// Panics unless running as root (CRIU needs it).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test drives real CRIU and must run as root (scripts/test.sh does)"
    );
}

/// Panics unless `program` is on PATH or at an absolute path.
pub fn require_program(program: &str) -> PathBuf {
    let found = if program.contains('/') {
        Path::new(program).is_file().then(|| PathBuf::from(program))
    } else {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    };
    found.unwrap_or_else(|| {
        panic!("{program} is required for this test but not installed; run scripts/setup.sh")
    })
}

/// One-time set-up for a test process: root, CRIU, subreaper, logs.
pub fn init() {
    static ONCE: Once = Once::new();
    require_root();
    ONCE.call_once(|| {
        cpengine::sys::set_child_subreaper().expect("PR_SET_CHILD_SUBREAPER");
        require_program("/usr/local/sbin/criu");
    });
}

/// A located, version-checked engine.
pub async fn engine() -> cpengine::Engine {
    init();
    cpengine::Engine::new()
        .await
        .expect("CRIU 4.x must be installed (scripts/setup.sh)")
}

/// A binary built from this workspace, next to the running test or bench binary.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>; a workspace binary (the
    // comparison runner) lives in target/<profile>/ itself.
    let parent = exe.parent().expect("binary has a directory");
    let dir = if parent.file_name().is_some_and(|n| n == "deps") {
        parent.parent().expect("target/<profile>")
    } else {
        parent
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not built; run `cargo build --workspace --bins` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The `cpengine` binary built from this workspace.
pub fn cpengine_bin() -> PathBuf {
    workspace_bin("cpengine")
}

/// The test workload binary (`cpe-workload`).
pub fn workload_bin() -> PathBuf {
    workspace_bin("cpe-workload")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads a counter file written by the workload.
pub fn read_counter(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kills every pid in `pids` and reaps those that are (or become) our children, then waits
/// until none of them exists any more.
pub fn kill_and_reap(pids: &[i32]) {
    for &p in pids {
        let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
    }
    let gone = wait_until(Duration::from_secs(10), || {
        for &p in pids {
            let _ = waitpid(Pid::from_raw(p), Some(WaitPidFlag::WNOHANG));
        }
        pids.iter().all(|&p| !cpengine::proc::exists(p))
    });
    assert!(gone, "processes {pids:?} did not go away after SIGKILL");
}

/// A running workload (a process tree) that is killed and reaped when dropped.
#[derive(Debug)]
pub struct Workload {
    pub pid: i32,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Workload {
    /// Starts `cpe-workload` in its own session with stdio on /dev/null, writing into a new
    /// temporary directory, and waits until it is ready.
    pub fn start(args: &[&str]) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("cpe-wl-")
            .tempdir_in("/var/tmp")
            .expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let mut w = Self::start_in(&dir, args);
        w._tmp = Some(tmp);
        w
    }

    /// Like [`Workload::start`] with a caller-owned directory.
    pub fn start_in(dir: &Path, args: &[&str]) -> Self {
        Self::start_in_with_env(dir, args, &[])
    }

    /// Like [`Workload::start_in`] with extra environment variables.
    pub fn start_in_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        init();
        let mut cmd = Command::new(workload_bin());
        cmd.arg("--dir").arg(dir).args(args.iter().map(OsStr::new));
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn cpe-workload");
        let pid = child.id() as i32;
        // The Child handle is dropped: we reap by pid ourselves (kill_and_reap).
        drop(child);
        let w = Self {
            pid,
            dir: dir.to_path_buf(),
            _tmp: None,
        };
        assert!(
            wait_until(Duration::from_secs(60), || dir.join("ready").exists()),
            "workload did not become ready"
        );
        w
    }

    pub fn counter(&self) -> u64 {
        read_counter(&self.dir.join("counter")).unwrap_or(0)
    }

    pub fn file_counter(&self, name: &str) -> u64 {
        read_counter(&self.dir.join(name)).unwrap_or(0)
    }

    /// Waits until the counter file `name` moves past `from`.
    pub fn advances_past(&self, name: &str, from: u64) -> bool {
        wait_until(Duration::from_secs(10), || self.file_counter(name) > from)
    }

    /// All pids of the tree.
    pub fn tree(&self) -> Vec<i32> {
        cpengine::proc::tree(self.pid)
    }

    /// Asks the workload to verify its memory pattern; returns its verdict.
    pub fn verify_memory(&self) -> String {
        let result = self.dir.join("verify-result");
        let _ = std::fs::remove_file(&result);
        std::fs::write(self.dir.join("verify-request"), b"").unwrap();
        assert!(
            wait_until(Duration::from_secs(60), || result.exists()),
            "no verify-result"
        );
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(result).unwrap()
    }

    /// Kills and reaps the tree, then forgets it (e.g. before restoring it from images).
    pub fn kill(&mut self) {
        let tree = self.tree();
        kill_and_reap(&tree);
        self.pid = 0;
    }

    /// Takes over a restored tree rooted at `pid` (so it is killed on drop).
    pub fn adopt(&mut self, pid: i32) {
        self.pid = pid;
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if self.pid > 0 {
            let tree = self.tree();
            for p in &tree {
                let _ = kill(Pid::from_raw(*p), Signal::SIGKILL);
            }
            for p in &tree {
                let _ = waitpid(Pid::from_raw(*p), None);
            }
        }
    }
}

/// What /proc says about a process: (state letter, tracer pid).
pub fn state_of(pid: i32) -> (char, i32) {
    let s = cpengine::proc::task_state(pid).unwrap_or_else(|| panic!("pid {pid} does not exist"));
    (s.state, s.tracer)
}

/// A scratch directory for images (on the same filesystem as /var/tmp).
pub fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/var/tmp")
        .expect("tempdir")
}

/// Runs a command and returns (status, stdout, stderr).
pub fn run(cmd: &mut Command) -> (std::process::ExitStatus, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
