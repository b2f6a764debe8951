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
        Self::spawn(criu, images_dir, work_dir, log_level)?.wait(READY_TIMEOUT)
    }

    /// Starts the daemon without waiting for it (see [`Pending::wait`] and [`Gate`]).
    pub fn spawn(
        criu: &Path,
        images_dir: &Path,
        work_dir: &Path,
        log_level: u32,
    ) -> Result<Pending, CriuError> {
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
        let child = cmd.spawn().map_err(spawn_err)?;
        drop(staged);
        let log = work_dir.join(LAZY_PAGES_LOG);
        // Ready = one NUL byte on the status pipe; end of file = it died first.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut f = std::fs::File::from(r);
            let mut b = [0u8; 1];
            let _ = tx.send(f.read(&mut b).map(|n| n == 1));
        });
        Ok(Pending {
            child: Some(child),
            ready: rx,
            log,
        })
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

/// A lazy-pages daemon that was started and may not listen yet. Dropping it unused kills it.
#[derive(Debug)]
pub struct Pending {
    child: Option<std::process::Child>,
    ready: std::sync::mpsc::Receiver<std::io::Result<bool>>,
    log: PathBuf,
}

impl Pending {
    /// Waits until the daemon listens (or fails, or `timeout` passes: it is killed then).
    pub fn wait(mut self, timeout: Duration) -> Result<LazyPages, CriuError> {
        let mut child = self.child.take().expect("waited once");
        let pid = child.id() as i32;
        match self.ready.recv_timeout(timeout) {
            Ok(Ok(true)) => {
                // Reap it whenever it finishes (it outlives us if we exit first).
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                Ok(LazyPages {
                    pid,
                    log: self.log.clone(),
                })
            }
            other => {
                let _ = child.kill();
                let status = child.wait().ok();
                let reason = match other {
                    Err(_) => "did not become ready in time".to_string(),
                    _ => format!("exited before it was ready ({status:?})"),
                };
                Err(CriuError::LazyPages {
                    reason,
                    log: super::LogExcerpt::read(&self.log),
                })
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Lets a lazy restore start before its daemon listens.
///
/// The restore connects to the daemon's socket early (before its first hook), so it would
/// have to wait for the daemon's whole start-up, and each is a full CRIU start-up (tens of
/// milliseconds here). Instead the restore reads the images through a *view*: a directory
/// inside the images directory with hard links to every image, in which `pstree.img` is a
/// FIFO. CRIU reads the process tree after its own start-up and before it connects; the gate
/// writes the real `pstree.img` into the FIFO only once the daemon listens. Both start-ups run
/// at the same time and the restore never connects too early. If the daemon fails, the gate
/// closes the FIFO empty and the restore fails reading the tree.
///
/// Measured (1 GiB process, `cpengine-compare --sizes 1024 --runs 3`): time to running 113–127
/// ms with the daemon started first, 58–67 ms through the gate.
#[derive(Debug)]
pub struct Gate {
    view: tempfile::TempDir,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<LazyPages, CriuError>>>,
}

/// A view of an images directory for [`Gate`].
#[derive(Debug)]
pub struct View {
    dir: tempfile::TempDir,
    pstree: Vec<u8>,
}

impl View {
    /// Builds the view inside `images_dir` (hard links: they read the same from whatever
    /// mount namespace the restore enters). Fails if the directory is not writable; the
    /// caller then waits for the daemon before restoring.
    pub fn new(images_dir: &Path) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(".cpengine-lazy-view-")
            .tempdir_in(images_dir)?;
        for e in std::fs::read_dir(images_dir)? {
            let e = e?;
            let name = e.file_name();
            let ty = e.file_type()?;
            if name == "pstree.img" || ty.is_dir() {
                continue;
            }
            if ty.is_symlink() {
                // A relative link (`parent`) must still reach its target from one level down.
                let target = std::fs::read_link(e.path())?;
                let target = if target.is_relative() {
                    Path::new("..").join(target)
                } else {
                    target
                };
                std::os::unix::fs::symlink(target, dir.path().join(&name))?;
            } else {
                std::fs::hard_link(e.path(), dir.path().join(&name))?;
            }
        }
        let pstree = std::fs::read(images_dir.join("pstree.img"))?;
        nix::unistd::mkfifo(
            &dir.path().join("pstree.img"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )?;
        Ok(Self { dir, pstree })
    }
}

impl Gate {
    /// Starts the thread that opens the gate of `view` once `daemon` listens.
    pub fn start(view: View, daemon: Pending) -> std::io::Result<Self> {
        let View { dir, pstree } = view;
        let fifo = dir.path().join("pstree.img");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("cpengine-lazy-gate".into())
            .spawn(move || {
                use std::io::Write;
                use std::sync::atomic::Ordering;
                // Wait for CRIU to open the tree for reading (a non-blocking open for writing
                // fails with ENXIO until then), without hanging if it never does.
                let deadline = std::time::Instant::now() + Duration::from_secs(300);
                let fd = loop {
                    match nix::fcntl::open(
                        &fifo,
                        nix::fcntl::OFlag::O_WRONLY
                            | nix::fcntl::OFlag::O_NONBLOCK
                            | nix::fcntl::OFlag::O_CLOEXEC,
                        nix::sys::stat::Mode::empty(),
                    ) {
                        Ok(fd) => break Some(fd),
                        Err(nix::errno::Errno::ENXIO) | Err(nix::errno::Errno::EINTR) => {
                            if stop2.load(Ordering::Relaxed) || std::time::Instant::now() > deadline
                            {
                                break None;
                            }
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        Err(_) => break None,
                    }
                };
                let ready = daemon.wait(READY_TIMEOUT);
                if let (Some(fd), Ok(_)) = (fd, &ready) {
                    let _ = nix::fcntl::fcntl(
                        &fd,
                        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
                    );
                    let _ = std::fs::File::from(fd).write_all(&pstree);
                }
                ready
            })?;
        Ok(Self {
            view: dir,
            stop,
            thread: Some(thread),
        })
    }

    /// The directory the restore reads its images from.
    pub fn view(&self) -> &Path {
        self.view.path()
    }

    /// After the restore's reply: the daemon (or why it failed). Removes the view.
    pub fn finish(mut self) -> Result<LazyPages, CriuError> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join())
            .unwrap_or_else(|| Ok(Err(gate_gone())))
            .unwrap_or_else(|_| Err(gate_gone()))
    }
}

fn gate_gone() -> CriuError {
    CriuError::LazyPages {
        reason: "gate thread failed".into(),
        log: None,
    }
}
