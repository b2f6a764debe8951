//! The little cgroup handling the engine needs itself: freezer state.

use std::fs;
use std::path::Path;

/// Thaws a freezer cgroup given as its path (cgroup v1 `freezer.state` or v2 `cgroup.freeze`).
/// Best effort: a missing cgroup is already "thawed".
pub fn thaw(cgroup: &Path) {
    let v1 = cgroup.join("freezer.state");
    let v2 = cgroup.join("cgroup.freeze");
    let r = if v1.exists() {
        fs::write(&v1, "THAWED")
    } else if v2.exists() {
        fs::write(&v2, "0")
    } else {
        return;
    };
    if let Err(e) = r {
        tracing::warn!(cgroup = %cgroup.display(), error = %e, "thawing freezer cgroup failed");
    }
}

/// Freezes a freezer cgroup and waits until every task in it is frozen, polling the state
/// quickly (a first look after 20 µs, then doubling up to 1 ms between looks). Returns how
/// long it took, or `None` if the cgroup was not frozen within `timeout` (it is thawed
/// again then).
///
/// Why: CRIU freezes a cgroup itself when it finds it thawed, but checks the state only every
/// 100 ms, and a freezer v1 cgroup is never FROZEN at the first look (its tasks freeze
/// asynchronously). So every container checkpoint paid ~100 ms of freezing, frozen the whole
/// time. Handing CRIU a cgroup that is already FROZEN skips that wait (CRIU seizes the frozen
/// tasks directly, as for a paused container); the workload is frozen only for as long as
/// its tasks take to reach the freezer, typically well under a millisecond. CRIU puts a
/// cgroup it found frozen back into FROZEN after the dump, so the caller thaws it when CRIU
/// answers.
pub fn freeze_fast(
    cgroup: &Path,
    timeout: std::time::Duration,
) -> std::io::Result<Option<std::time::Duration>> {
    use std::time::{Duration, Instant};
    let v1 = cgroup.join("freezer.state");
    let started = Instant::now();
    let frozen = || -> std::io::Result<bool> {
        if v1.exists() {
            Ok(fs::read_to_string(&v1)?.trim() == "FROZEN")
        } else {
            Ok(fs::read_to_string(cgroup.join("cgroup.events"))?
                .lines()
                .any(|l| l.trim() == "frozen 1"))
        }
    };
    if v1.exists() {
        fs::write(&v1, "FROZEN")?;
    } else {
        fs::write(cgroup.join("cgroup.freeze"), "1")?;
    }
    let mut pause = Duration::from_micros(20);
    loop {
        // Reading freezer.state is what makes a v1 cgroup move from FREEZING to FROZEN.
        if frozen()? {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() >= timeout {
            thaw(cgroup);
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// Whether a freezer cgroup is frozen (or freezing).
pub fn is_frozen(cgroup: &Path) -> bool {
    if let Ok(s) = fs::read_to_string(cgroup.join("freezer.state")) {
        return s.trim() != "THAWED";
    }
    fs::read_to_string(cgroup.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
}

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One mounted cgroup hierarchy of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Controllers as /proc/PID/cgroup lists them (`cpu`, `cpu,cpuacct`, `name=systemd`; "" for
    /// the unified hierarchy).
    pub controllers: String,
    pub mount_point: PathBuf,
}

/// The cgroup hierarchies mounted on this host (v1 controllers and the unified hierarchy).
pub fn hierarchies() -> std::io::Result<Vec<Hierarchy>> {
    let mounts = super::mountinfo::of_pid(std::process::id() as i32)?;
    let mut out: Vec<Hierarchy> = Vec::new();
    for m in mounts {
        let controllers = match m.fs_type.as_str() {
            "cgroup2" => String::new(),
            "cgroup" => {
                let known = [
                    "rw",
                    "ro",
                    "relatime",
                    "nosuid",
                    "nodev",
                    "noexec",
                    "clone_children",
                    "noprefix",
                    "xattr",
                ];
                m.super_options
                    .split(',')
                    .filter(|o| !known.contains(o) && !o.starts_with("release_agent"))
                    .collect::<Vec<_>>()
                    .join(",")
            }
            _ => continue,
        };
        if !out.iter().any(|h| h.controllers == controllers) {
            out.push(Hierarchy {
                controllers,
                mount_point: m.mount_point,
            });
        }
    }
    Ok(out)
}

/// This process's cgroup in each hierarchy (from /proc/PID/cgroup), keyed by controller list.
pub fn cgroups_of(pid: u32) -> std::io::Result<BTreeMap<String, String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_string();
            Some((ctrls, it.next()?.to_string()))
        })
        .collect())
}

/// Creates a cgroup named `name` under this process's own cgroup in every hierarchy (the way
/// runc places a container with no explicit cgroups path). Returns controller list → dir.
pub fn create_beside_self(name: &str) -> std::io::Result<BTreeMap<String, PathBuf>> {
    create(&beside_self(name)?)
}

/// The cgroup directories [`create_beside_self`] makes for `name`, without making them.
pub fn beside_self(name: &str) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let own = cgroups_of(std::process::id())?;
    let mut out = BTreeMap::new();
    for h in hierarchies()? {
        if let Some(rel) = own.get(&h.controllers) {
            let dir = h.mount_point.join(rel.trim_start_matches('/')).join(name);
            out.insert(h.controllers, dir);
        }
    }
    Ok(out)
}

/// Creates the cgroup directories `dirs` (controllers → directory).
pub fn create(dirs: &BTreeMap<String, PathBuf>) -> std::io::Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for (controllers, dir) in dirs {
        let dir = dir.clone();
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                remove_all(&out);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("creating cgroup {}: {e}", dir.display()),
                ));
            }
        }
        // cpuset cgroups start empty and refuse tasks until given cpus and mems.
        if controllers.split(',').any(|c| c == "cpuset") {
            for f in ["cpuset.cpus", "cpuset.mems"] {
                if let Ok(v) = fs::read_to_string(dir.parent().unwrap_or(&dir).join(f)) {
                    let _ = fs::write(dir.join(f), v.trim());
                }
            }
        }
        out.insert(controllers.clone(), dir);
    }
    Ok(out)
}

/// Moves `pid` into each of the cgroup directories.
pub fn join(dirs: &BTreeMap<String, PathBuf>, pid: u32) -> std::io::Result<()> {
    for dir in dirs.values() {
        fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            std::io::Error::new(e.kind(), format!("joining cgroup {}: {e}", dir.display()))
        })?;
    }
    Ok(())
}

/// Removes cgroup directories (they must be empty of tasks). Best effort; returns those left.
pub fn remove_all(dirs: &BTreeMap<String, PathBuf>) -> Vec<PathBuf> {
    let mut left = Vec::new();
    for dir in dirs.values() {
        let mut ok = false;
        for _ in 0..50 {
            match fs::remove_dir(dir) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ok = true;
                    break;
                }
                // EBUSY while the last tasks are still exiting.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        if !ok {
            left.push(dir.clone());
        }
    }
    left
}

/// The tasks (thread-group ids) in a cgroup directory.
pub fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills every task in the cgroups (thawing a frozen one first, so the kill is delivered) and
/// waits until they are empty, reaping those that are our children. Returns how many tasks
/// were signalled. Best effort, bounded to about two seconds.
pub fn kill_all(dirs: &BTreeMap<String, PathBuf>) -> usize {
    let mut signalled = std::collections::BTreeSet::new();
    for dir in dirs.values() {
        if is_frozen(dir) {
            thaw(dir);
        }
    }
    for _ in 0..100 {
        let mut left = 0;
        for dir in dirs.values() {
            for pid in procs(dir) {
                left += 1;
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                signalled.insert(pid);
            }
        }
        for &pid in &signalled {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    signalled.len()
}
