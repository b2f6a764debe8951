//! Running a command inside a container cpengine restored, confined the way `runc exec`
//! confines one: in the container's cgroups (every v1 hierarchy and the unified one) and
//! namespaces, with the container's capability sets (bounding, effective, permitted,
//! inheritable, ambient) and `no_new_privs`, as a user and with an environment the trusted
//! caller gives (the live request), never from the checkpoint's `spec.dump`.
//!
//! The container's own process state is the reference: the capability sets, `no_new_privs`
//! and seccomp mode are read from its init's `/proc/<pid>/status` (the init was verified
//! against the restore policy before it was restored). A container whose init runs under a
//! seccomp filter is refused for now ([`ExecError::Seccomp`]): copying its filter needs a
//! ptrace of the init, which the shim's reaper would race.
//!
//! The command is forked from the caller with a `pre_exec` that joins the cgroups (writing 0
//! to `cgroup.procs`), enters the namespaces, forks once more (a pid namespace applies to
//! children only; the middle process waits and exits with the command's status, and the
//! command dies with it), then sets the bounding set, user, capabilities and `no_new_privs`.
//! Everything the `pre_exec` uses is opened or allocated before the fork.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The confinement of a running container, as its init has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Confinement {
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 none, 1 strict, 2 filter.
    pub seccomp: u8,
    pub uid: u32,
    pub gid: u32,
}

/// Who runs the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// What to run, and where.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    /// Host pid of the container's init.
    pub pid: i32,
    /// The container's cgroup directories (from cpengine's record, not from the workload).
    pub cgroups: Vec<PathBuf>,
    pub args: Vec<String>,
    /// The whole environment (nothing of the caller's is passed on).
    pub env: Vec<(String, String)>,
    /// Working directory inside the container.
    pub cwd: String,
    /// `None`: the init's uid and gid, no supplementary groups.
    pub user: Option<ExecUser>,
    /// Where to write the host pid of the command (for a caller that must kill it).
    pub pid_file: Option<PathBuf>,
}

pub use super::error::ExecError;

/// The init's capability sets, `no_new_privs`, seccomp mode, uid and gid.
pub fn confinement_of(pid: i32) -> Result<Confinement, ExecError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|source| ExecError::Status { pid, source })?;
    let field = |name: &'static str| -> Result<&str, ExecError> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
            .ok_or(ExecError::StatusField { pid, field: name })
    };
    let hex = |name: &'static str| -> Result<u64, ExecError> {
        u64::from_str_radix(field(name)?, 16)
            .map_err(|_| ExecError::StatusField { pid, field: name })
    };
    let first = |name: &'static str| -> Result<u32, ExecError> {
        field(name)?
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .ok_or(ExecError::StatusField { pid, field: name })
    };
    Ok(Confinement {
        cap_inh: hex("CapInh")?,
        cap_prm: hex("CapPrm")?,
        cap_eff: hex("CapEff")?,
        cap_bnd: hex("CapBnd")?,
        cap_amb: hex("CapAmb")?,
        no_new_privs: field("NoNewPrivs")? == "1",
        seccomp: field("Seccomp")?.parse().unwrap_or(u8::MAX),
        // The effective ids (the second column).
        uid: first("Uid")?,
        gid: first("Gid")?,
    })
}

/// The container's cgroup directories from cpengine's record of a container it restored.
pub fn cgroups_of(c: &super::Container) -> Vec<PathBuf> {
    c.cgroup_paths.values().cloned().collect()
}

/// The namespaces an exec enters, in order (mount last: it changes the root).
const NAMESPACES: &[(&str, libc::c_int)] = &[
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

fn open(path: &Path, write: bool) -> Result<OwnedFd, ExecError> {
    std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|source| ExecError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn cstring(s: &str) -> Result<CString, ExecError> {
    CString::new(s).map_err(|_| ExecError::Nul)
}

/// A command that runs `req.args` confined like the container. Spawn it as any command (its
/// stdio is the caller's to set); its exit status is the command's (128 + signal if killed).
pub fn command(req: &ExecRequest) -> Result<std::process::Command, ExecError> {
    let conf = confinement_of(req.pid)?;
    if conf.seccomp != 0 {
        return Err(ExecError::Seccomp { mode: conf.seccomp });
    }
    let (program, rest) = req.args.split_first().ok_or(ExecError::NoCommand)?;
    if req.args.iter().any(|a| a.contains('\0'))
        || req
            .env
            .iter()
            .any(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(ExecError::Nul);
    }
    let mut cgroup_fds = Vec::new();
    for dir in &req.cgroups {
        cgroup_fds.push(open(&dir.join("cgroup.procs"), true)?);
    }
    let own = |ns: &str| std::fs::metadata(format!("/proc/self/ns/{ns}")).ok();
    let mut ns_fds = Vec::new();
    for (ns, ty) in NAMESPACES {
        let path = PathBuf::from(format!("/proc/{}/ns/{ns}", req.pid));
        let fd = open(&path, false)?;
        // A namespace the container shares with us needs no entering (the mount one always
        // is: entering it moves the root to the container's).
        use std::os::unix::fs::MetadataExt;
        let theirs = std::fs::metadata(&path).map_err(|source| ExecError::Open {
            path: path.clone(),
            source,
        })?;
        if *ns != "mnt" && own(ns).is_some_and(|m| m.ino() == theirs.ino()) {
            continue;
        }
        ns_fds.push((fd, *ty));
    }
    let pid_fd = match &req.pid_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(p)
                .map(OwnedFd::from)
                .map_err(|source| ExecError::Open {
                    path: p.clone(),
                    source,
                })?,
        ),
        None => None,
    };
    let cwd = cstring(if req.cwd.is_empty() { "/" } else { &req.cwd })?;
    let user = req.user.clone().unwrap_or(ExecUser {
        uid: conf.uid,
        gid: conf.gid,
        groups: Vec::new(),
    });
    let groups: Vec<libc::gid_t> = user.groups.clone();

    let mut cmd = std::process::Command::new(program);
    cmd.args(rest).env_clear();
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    let hook = move || -> std::io::Result<()> {
        let err = std::io::Error::last_os_error;
        // SAFETY: every call below is an async-signal-safe system call on memory allocated
        // before the fork (fds, the working directory, the groups); nothing allocates.
        unsafe {
            for fd in &cgroup_fds {
                if libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(err());
                }
            }
            for (fd, ty) in &ns_fds {
                if libc::setns(fd.as_raw_fd(), *ty) != 0 {
                    return Err(err());
                }
            }
            let child = libc::fork();
            if child < 0 {
                return Err(err());
            }
            if child > 0 {
                wait_and_exit(child, pid_fd.as_ref().map(|f| f.as_raw_fd()));
            }
            let parent_before = libc::getppid();
            if libc::chdir(cwd.as_ptr()) != 0 {
                return Err(err());
            }
            for cap in 0..64 {
                if conf.cap_bnd & (1u64 << cap) == 0
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                    && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL)
                {
                    return Err(err());
                }
            }
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
                || libc::setgroups(groups.len(), groups.as_ptr()) != 0
                || libc::setresgid(user.gid, user.gid, user.gid) != 0
                || libc::setresuid(user.uid, user.uid, user.uid) != 0
                || libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) != 0
            {
                return Err(err());
            }
            let mut header = CapHeader {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
            let data = [0u32, 1].map(|i| CapData {
                effective: half(conf.cap_eff, i),
                permitted: half(conf.cap_prm, i),
                inheritable: half(conf.cap_inh, i),
            });
            if libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            ) != 0
            {
                return Err(err());
            }
            if libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            ) != 0
            {
                return Err(err());
            }
            for cap in 0..64u64 {
                if conf.cap_amb & (1u64 << cap) != 0
                    && libc::prctl(
                        libc::PR_CAP_AMBIENT,
                        libc::PR_CAP_AMBIENT_RAISE,
                        cap as libc::c_ulong,
                        0,
                        0,
                    ) != 0
                {
                    return Err(err());
                }
            }
            if conf.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(err());
            }
            // Set last: a change of credentials clears it. The command dies with the middle
            // process (which the caller kills on a timeout).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(err());
            }
            if libc::getppid() != parent_before {
                libc::_exit(137);
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe system calls (see inside).
    unsafe {
        cmd.pre_exec(hook);
    }
    Ok(cmd)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The middle process: records the command's host pid, lets go of every other descriptor
/// (the spawner's exec-error pipe among them, so the spawn returns when the command execs),
/// waits for the command and exits with its status.
///
/// # Safety
/// Call only in a forked child; makes async-signal-safe calls only.
unsafe fn wait_and_exit(child: libc::pid_t, pid_fd: Option<libc::c_int>) -> ! {
    // SAFETY: plain system calls on a stack buffer and our own descriptors.
    unsafe {
        if let Some(fd) = pid_fd {
            let mut buf = [0u8; 12];
            let mut n = child as u32;
            let mut i = buf.len();
            loop {
                i -= 1;
                buf[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            let _ = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
        }
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        let mut status = 0;
        loop {
            let r = libc::waitpid(child, &mut status, 0);
            if r == child {
                break;
            }
            if r < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(127);
            }
        }
        if libc::WIFEXITED(status) {
            libc::_exit(libc::WEXITSTATUS(status));
        }
        libc::_exit(128 + libc::WTERMSIG(status));
    }
}

/// Runs a command in a container cpengine restored (`cpengine exec`), with the terminal's
/// stdio, and returns its exit code.
pub fn run(
    state: &super::state::StateRoot,
    id: &str,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    user: Option<ExecUser>,
) -> Result<i32, crate::error::Error> {
    let c = super::manage::load(state, id)?;
    if c.status() == super::Status::Stopped {
        return Err(super::ContainerError::NotRunning {
            id: id.to_string(),
            status: super::Status::Stopped,
        }
        .into());
    }
    let req = ExecRequest {
        pid: c.init_pid,
        cgroups: cgroups_of(&c),
        args,
        env,
        cwd,
        user,
        pid_file: None,
    };
    let status = command(&req)?
        .status()
        .map_err(crate::error::Error::io("running the exec'd command"))?;
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confinement_is_read_from_proc() {
        let c = confinement_of(std::process::id() as i32).unwrap();
        assert_eq!(c.uid, nix::unistd::geteuid().as_raw());
        assert!(c.cap_bnd != 0);
        assert!(matches!(
            confinement_of(-1),
            Err(ExecError::Status { pid: -1, .. })
        ));
    }
}
