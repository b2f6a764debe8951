//! A container's output relay: a small detached process that reads the container's stdout and
//! stderr pipes and appends them to a log file in the CRI log format
//! (`<RFC3339Nano time> <stdout|stderr> <F|P> <text>`; `P` marks a partial line).
//!
//! Why a separate process: the container must outlive whoever started or restored it (the CLI
//! exits, the shim may restart), and its stdio must be pipes — CRIU cannot checkpoint a
//! container whose stdout is a host file (the file's mount is not in the container), but it
//! can a pipe, and the pipe is handed back on restore with `inherit_fd`.
//!
//! The relay is the calling binary re-executed with the hidden argument [`RELAY_ARG`]; every
//! binary that spawns one calls [`run_if_relay`] first thing in `main`.
//!
//! Log rotation (the CRI's `ReopenContainerLog`): the kubelet renames the log and asks for a
//! new one; [`reopen`] sends the relay [`REOPEN_SIGNAL`], which interrupts its `poll`, and the
//! relay opens the log path again (creating it) before it writes anything more.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `argv[1]` that turns a cpengine binary into a relay.
pub const RELAY_ARG: &str = "__cpengine-relay";

/// The signal that makes a relay open its log path again.
pub const REOPEN_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR1;

/// Set by the relay's [`REOPEN_SIGNAL`] handler.
static REOPEN: AtomicBool = AtomicBool::new(false);

extern "C" fn on_reopen_signal(_: libc::c_int) {
    REOPEN.store(true, Ordering::SeqCst);
}

/// Longest line written as one record; longer lines are split into partial (`P`) records.
const MAX_LINE: usize = 16 << 10;

/// The binary that runs relays: `$CPENGINE_RELAY_EXE`, else the running binary (which must
/// call [`run_if_relay`] at start; `cpengine` and `cpengine-shim` do).
pub fn default_exe() -> io::Result<PathBuf> {
    match std::env::var_os("CPENGINE_RELAY_EXE") {
        Some(p) => Ok(PathBuf::from(p)),
        None => std::env::current_exe(),
    }
}

/// Starts a detached relay (`exe`, see [`default_exe`]) appending `stdout` and `stderr` (read
/// ends of pipes) to `log`. Returns its pid. The relay exits when both pipes reach end of file.
pub fn spawn(exe: &Path, log: &Path, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<i32> {
    // Stage the fds above 4 so dup2 onto 3 and 4 never has equal source and target.
    let out = crate::sys::dup_at_least(std::os::fd::AsFd::as_fd(&stdout), 10)?;
    let err = crate::sys::dup_at_least(std::os::fd::AsFd::as_fd(&stderr), 10)?;
    let (out_raw, err_raw) = (out.as_raw_fd(), err.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.arg(RELAY_ARG)
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec this only calls setsid and dup2, which are
    // async-signal-safe, on fds that are open in the child.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 || libc::dup2(out_raw, 3) < 0 || libc::dup2(err_raw, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id() as i32)
}

/// If this process was started as a relay, runs it and exits; otherwise returns.
pub fn run_if_relay() {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == RELAY_ARG) {
        let log = PathBuf::from(args.get(2).cloned().unwrap_or_default());
        // SAFETY: the spawner placed the two pipe read ends at fds 3 and 4 for us to own.
        let (out, err) = unsafe { (OwnedFd::from_raw_fd(3), OwnedFd::from_raw_fd(4)) };
        // No SA_RESTART: the signal must interrupt poll(2) so that the log is reopened at once.
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_reopen_signal),
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(REOPEN_SIGNAL, &action) };
        let code = match relay_with(&log, out, err, &REOPEN) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        std::process::exit(code);
    }
}

/// Copies both streams into `log` until both end.
pub fn relay(log: &Path, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<()> {
    relay_with(log, stdout, stderr, &AtomicBool::new(false))
}

fn open_log(log: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
}

/// [`relay`], opening `log` again whenever `reopen` is found set (and clearing it).
fn relay_with(log: &Path, stdout: OwnedFd, stderr: OwnedFd, reopen: &AtomicBool) -> io::Result<()> {
    let mut file = open_log(log)?;
    let mut streams = [Stream::new("stdout", stdout), Stream::new("stderr", stderr)];
    let mut buf = vec![0u8; 64 << 10];
    while streams.iter().any(|s| s.open) {
        let mut fds: Vec<libc::pollfd> = streams
            .iter()
            .map(|s| libc::pollfd {
                fd: if s.open { s.fd.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        // Checked after every wake-up (the signal interrupts poll), before anything is written.
        if reopen.swap(false, Ordering::SeqCst) {
            // A log that cannot be opened again keeps the old one: losing output is worse than
            // writing it to the rotated file.
            if let Ok(f) = open_log(log) {
                file = f;
            }
        }
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for (s, p) in streams.iter_mut().zip(&fds) {
            if !s.open || p.revents == 0 {
                continue;
            }
            let n = read_fd(s.fd.as_raw_fd(), &mut buf)?;
            if n == 0 {
                s.open = false;
                s.flush_partial(&mut file)?;
            } else {
                s.push(&buf[..n], &mut file)?;
            }
        }
    }
    Ok(())
}

fn read_fd(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reading into a valid, writable buffer of the given length.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

struct Stream {
    name: &'static str,
    fd: OwnedFd,
    open: bool,
    pending: Vec<u8>,
}

impl Stream {
    fn new(name: &'static str, fd: OwnedFd) -> Self {
        Self {
            name,
            fd,
            open: true,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], out: &mut impl Write) -> io::Result<()> {
        self.pending.extend_from_slice(data);
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            write_record(out, self.name, 'F', &line[..line.len() - 1])?;
        }
        while self.pending.len() >= MAX_LINE {
            let part: Vec<u8> = self.pending.drain(..MAX_LINE).collect();
            write_record(out, self.name, 'P', &part)?;
        }
        Ok(())
    }

    fn flush_partial(&mut self, out: &mut impl Write) -> io::Result<()> {
        if !self.pending.is_empty() {
            let part = std::mem::take(&mut self.pending);
            write_record(out, self.name, 'P', &part)?;
        }
        Ok(())
    }
}

/// Makes the relay `relay_pid` open `log` again (after the caller renamed it, say) and waits,
/// at most `within`, until the new file exists. Refuses a pid that is not a relay (it may have
/// been reused since it was recorded).
pub fn reopen(relay_pid: i32, log: &Path, within: Duration) -> io::Result<()> {
    let is_relay = std::fs::read(format!("/proc/{relay_pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).nth(1) == Some(RELAY_ARG.as_bytes()))
        .unwrap_or(false);
    if relay_pid <= 0 || !is_relay {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no log relay with pid {relay_pid} (the container's output is not relayed)"),
        ));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(relay_pid), REOPEN_SIGNAL)?;
    let deadline = Instant::now() + within;
    while !log.exists() {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the log relay did not open {} again", log.display()),
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(())
}

/// One CRI log record.
pub fn write_record(out: &mut impl Write, stream: &str, tag: char, text: &[u8]) -> io::Result<()> {
    let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut rec = Vec::with_capacity(text.len() + 48);
    rec.extend_from_slice(ts.as_bytes());
    rec.push(b' ');
    rec.extend_from_slice(stream.as_bytes());
    rec.push(b' ');
    rec.push(tag as u8);
    rec.push(b' ');
    rec.extend_from_slice(text);
    rec.push(b'\n');
    out.write_all(&rec)
}

/// Parses one CRI log record into (stream, tag, text).
pub fn parse_record(line: &str) -> Option<(&str, char, &str)> {
    let mut it = line.splitn(4, ' ');
    let _ts = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?.chars().next()?;
    Some((stream, tag, it.next().unwrap_or("")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_become_records_and_partials_are_marked() {
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let t = {
            let log = log.clone();
            std::thread::spawn(move || relay(&log, r1, r2))
        };
        let mut o = std::fs::File::from(w1);
        let mut e = std::fs::File::from(w2);
        o.write_all(b"hello\nwor").unwrap();
        e.write_all(b"oops\n").unwrap();
        o.write_all(b"ld\ntail").unwrap();
        drop(o);
        drop(e);
        t.join().unwrap().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let recs: Vec<_> = text.lines().map(|l| parse_record(l).unwrap()).collect();
        let out: Vec<_> = recs
            .iter()
            .filter(|r| r.0 == "stdout")
            .map(|r| (r.1, r.2))
            .collect();
        assert_eq!(out, vec![('F', "hello"), ('F', "world"), ('P', "tail")]);
        assert!(recs.contains(&("stderr", 'F', "oops")));
        let ts = text.split(' ').next().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    }

    #[test]
    fn a_reopen_request_moves_later_records_to_a_new_file() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let (r1, w1) = nix::unistd::pipe().unwrap();
        let (r2, w2) = nix::unistd::pipe().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let t = {
            let log = log.clone();
            std::thread::spawn(move || relay_with(&log, r1, r2, &FLAG))
        };
        let mut o = std::fs::File::from(w1);
        o.write_all(b"before\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            assert!(Instant::now() < deadline, "first record never written");
            std::thread::sleep(Duration::from_millis(2));
        }
        let rotated = dir.path().join("c.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        FLAG.store(true, Ordering::SeqCst);
        o.write_all(b"after\n").unwrap();
        drop(o);
        drop(w2);
        t.join().unwrap().unwrap();
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&log).unwrap();
        assert!(old.contains(" F before") && !old.contains("after"), "{old}");
        assert!(new.contains(" F after") && !new.contains("before"), "{new}");
    }

    #[test]
    fn reopen_refuses_a_pid_that_is_not_a_relay() {
        let dir = tempfile::tempdir().unwrap();
        let err = reopen(
            std::process::id() as i32,
            &dir.path().join("x.log"),
            Duration::ZERO,
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
