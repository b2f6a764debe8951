//! The lazy-pages daemon for a lazy restore.
//!
//! A restore with `lazy_pages` maps the tree's private anonymous memory empty and registers it
//! with userfaultfd instead of reading the pages; the restored tree runs at once. A separate
//! `criu lazy-pages` process (it cannot be started over RPC) serves the pages from the images:
//! on a fault it copies the faulting pages in, and in the background it copies the rest, then
//! exits. Both find each other through the unix socket `lazy-pages.socket` in the work dir,
//! which they must therefore share.
//!
//! The daemon must outlive the restore (and the calling process, for the CLI): it runs in its
//! own session, and a reaper thread collects it when it exits while we are still around. If it
//! died before every page was copied, the tasks' missing pages would read as zeros; its log
//! (`lazy-pages.log` in the work dir) tells.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::CriuError;

/// Name of the daemon's log in the work dir.
pub const LAZY_PAGES_LOG: &str = "lazy-pages.log";

/// How long to wait for the daemon to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// fd number of the status pipe in the daemon.
const STATUS_FD: i32 = 3;

/// A started lazy-pages daemon.
#[derive(Debug)]
pub struct LazyPages {
    pid: i32,
    log: PathBuf,
}

impl LazyPages {
    /// Starts `criu lazy-pages` for `images_dir` with `work_dir` (where the restore must run
    /// too) and waits until it listens.
    pub fn start(
        criu: &Path,
        images_dir: &Path,
        work_dir: &Path,
        log_level: u32,
    ) -> Result<Self, CriuError> {
        let spawn_err = |source| CriuError::Spawn {
            binary: criu.to_path_buf(),
            source,
        };
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let staged: OwnedFd =
            crate::sys::dup_at_least(std::os::fd::AsFd::as_fd(&w), 10).map_err(spawn_err)?;
        drop(w);
        let raw = staged.as_raw_fd();
        let mut cmd = Command::new(criu);
        cmd.arg("lazy-pages")
            .arg("--images-dir")
            .arg(images_dir)
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--status-fd")
            .arg(STATUS_FD.to_string())
            .arg("--log-file")
            .arg(LAZY_PAGES_LOG)
            .arg(format!("-v{log_level}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: between fork and exec only setsid and dup2 run (async-signal-safe), on an fd
        // that is open in the child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 || libc::dup2(raw, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(staged);
        let pid = child.id() as i32;
        let log = work_dir.join(LAZY_PAGES_LOG);

        // Ready = one NUL byte on the status pipe; end of file = it died first.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 1];
            let _ = tx.send(f.read(&mut b).map(|n| n == 1));
        });
        let ready = rx.recv_timeout(READY_TIMEOUT);
        match ready {
            Ok(Ok(true)) => {
                // Reap it whenever it finishes (it outlives us if we exit first).
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                Ok(Self { pid, log })
            }
            other => {
                let _ = child.kill();
                let status = child.wait().ok();
                let why = match other {
                    Err(_) => "did not become ready in time".to_string(),
                    _ => format!("exited before it was ready ({status:?})"),
                };
                Err(CriuError::LazyPages {
                    reason: why,
                    log: super::LogExcerpt::read(&log),
                })
            }
        }
    }

    /// Pid of the daemon.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Stops the daemon (after a failed restore).
    pub fn kill(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}
