//! A pod's namespace holder: a tiny process that owns the pod's shared namespaces.
//!
//! Kubernetes pods share IPC, UTS and (without host networking) network namespaces between
//! their containers. The standalone runtime creates them by re-executing the shim binary with
//! the hidden argument [`HOLDER_ARG`]: the holder starts a new session, `unshare`s the asked
//! namespaces, sets the pod's hostname, brings the loopback interface up in a new network
//! namespace, reports "ok" on fd 3 and then sleeps until it is killed. Containers join its
//! namespaces by path (`/proc/<holder>/ns/<kind>` in their runc spec). The holder lives in its
//! own session, so it outlives a restarting shim, like the containers do.
//!
//! Without CNI a private network namespace has only `lo`: containers of the pod reach each
//! other on localhost, not the outside. Pods that need the network use host networking.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sched::CloneFlags;

use crate::error::{Result, ShimError};

/// `argv[1]` that turns the shim binary into a pod holder.
pub const HOLDER_ARG: &str = "__cpengine-pod-holder";

/// Which namespaces a holder creates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HolderSpec {
    pub net: bool,
    pub ipc: bool,
    pub uts: bool,
    /// Set in the new UTS namespace.
    pub hostname: Option<String>,
}

/// If this process was started as a holder, runs it (never returns); otherwise returns.
pub fn run_if_holder() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_none_or(|a| a != HOLDER_ARG) {
        return;
    }
    // SAFETY: the spawner placed the write end of the readiness pipe at fd 3 for us to own.
    let ready = unsafe { OwnedFd::from_raw_fd(3) };
    let mut ready = std::fs::File::from(ready);
    let spec = parse_args(&args[2..]);
    match enter(&spec) {
        Ok(()) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            loop {
                // Sleep until a signal ends us (SIGTERM/SIGKILL keep their default action).
                nix::unistd::pause();
            }
        }
        Err(e) => {
            let _ = writeln!(ready, "error: {e}");
            std::process::exit(1);
        }
    }
}

fn parse_args(args: &[OsString]) -> HolderSpec {
    let mut spec = HolderSpec::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            Some("--net") => spec.net = true,
            Some("--ipc") => spec.ipc = true,
            Some("--uts") => spec.uts = true,
            Some("--hostname") => {
                spec.hostname = it.next().and_then(|h| h.to_str()).map(String::from)
            }
            _ => {}
        }
    }
    spec
}

fn enter(spec: &HolderSpec) -> std::io::Result<()> {
    let mut flags = CloneFlags::empty();
    if spec.net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if spec.ipc {
        flags |= CloneFlags::CLONE_NEWIPC;
    }
    if spec.uts {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    nix::sched::unshare(flags).map_err(std::io::Error::from)?;
    if spec.uts
        && let Some(h) = &spec.hostname
    {
        nix::unistd::sethostname(h).map_err(std::io::Error::from)?;
    }
    if spec.net {
        loopback_up()?;
    }
    Ok(())
}

/// Sets IFF_UP on `lo` in the current network namespace.
pub(crate) fn loopback_up() -> std::io::Result<()> {
    // SAFETY: socket(2) with constant arguments; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags of the named interface into `req`, a valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags; we only add IFF_UP.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS takes the same valid ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A running holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    pub pid: i32,
    /// Its start time, to tell it from a process that later reuses the pid.
    pub start: u64,
}

impl Holder {
    /// Path of one of its namespaces (`net`, `ipc`, `uts`).
    pub fn ns_path(&self, kind: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/{kind}", self.pid))
    }

    pub fn alive(&self) -> bool {
        cpengine::proc::is_same_process(self.pid, self.start)
    }
}

/// How long a holder may take to report.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a holder by re-executing `exe`.
pub fn spawn(exe: &Path, spec: &HolderSpec) -> Result<Holder> {
    // Close-on-exec, so that no other child (nor the holder itself, beyond its fd 3) keeps a
    // copy of the write end and the reader sees end of file once the holder reported.
    let (r, w_low) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| ShimError::Spawn {
            what: "the pod's namespace holder",
            source: e.into(),
        })?;
    // Keep the write end above 3 so dup2 onto 3 never has equal source and target.
    let w =
        cpengine::sys::dup_at_least(std::os::fd::AsFd::as_fd(&w_low), 10).map_err(|source| {
            ShimError::Spawn {
                what: "the pod's namespace holder",
                source,
            }
        })?;
    drop(w_low);
    let w_raw = w.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg(HOLDER_ARG);
    if spec.net {
        cmd.arg("--net");
    }
    if spec.ipc {
        cmd.arg("--ipc");
    }
    if spec.uts {
        cmd.arg("--uts");
    }
    if let Some(h) = &spec.hostname {
        cmd.arg("--hostname").arg(h);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only setsid and dup2 run, both async-signal-safe, on an
    // fd that is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(w_raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| ShimError::Spawn {
        what: "the pod's namespace holder",
        source,
    })?;
    drop(w);
    let pid = child.id() as i32;
    // The handle is dropped: the holder must outlive us; the reaper collects it once dead.
    drop(child);
    let answer = read_with_timeout(r, READY_TIMEOUT);
    let start = cpengine::proc::start_time(pid).unwrap_or(0);
    match answer.as_deref().map(str::trim) {
        Some("ok") => Ok(Holder { pid, start }),
        other => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(ShimError::Internal(format!(
                "the pod's namespace holder failed: {}",
                other.unwrap_or("no answer")
            )))
        }
    }
}

fn read_with_timeout(r: OwnedFd, timeout: Duration) -> Option<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::fs::File::from(r).read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(timeout).ok()
}

/// Kills a holder and waits (briefly) until it is gone.
pub fn kill(h: &Holder) {
    if !h.alive() {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(h.pid);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < end {
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        if !h.alive() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_args_round_trip() {
        let args: Vec<OsString> = ["--net", "--uts", "--hostname", "web-0"]
            .iter()
            .map(OsString::from)
            .collect();
        assert_eq!(
            parse_args(&args),
            HolderSpec {
                net: true,
                ipc: false,
                uts: true,
                hostname: Some("web-0".into())
            }
        );
    }
}
