//! Page images streamed into the archive while CRIU dumps: the single-copy data path.
//!
//! CRIU 4.2.1 opens each page image with a plain `openat(O_WRONLY | O_CREAT | O_TRUNC)` in the
//! images directory and `splice`s its page pipes into it. A FIFO placed at `pages-<id>.img`
//! before the dump is therefore opened instead of a file, and the pages flow through it:
//! CRIU's page pipe → FIFO (pipe-to-pipe splice moves page references, no copy) → the archive
//! file at the member's final offset (one copy, into the archive's page cache). The staging
//! path copies the same bytes twice (into the staged image, then into the archive).
//!
//! One thread serves every FIFO: it polls them all, streams the first that receives data into
//! an [`ArchiveBuilder`] member, and, should CRIU ever write two page images at once, spills
//! the second into a regular file at the same path (archived later like any other image).
//! Page images with ids beyond the FIFOs are created by CRIU as regular files and take the
//! normal path too. When the archive side fails (disk full), the thread closes the read end
//! of the FIFO CRIU is writing: CRIU's next splice fails with `EPIPE`, the dump fails and CRIU
//! resumes the workload; the builder is dropped with its temp file.
//!
//! Consistency: CRIU considers pages written once they are in the FIFO, and those pipe
//! buffers still reference the workload's memory. They must reach the archive before CRIU
//! resumes the workload, so the `post-dump` hook waits for [`PageStream::finish_pages`]
//! (every FIFO CRIU opened drained to its end) before acknowledging.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};

use crate::archive::{ArchiveBuilder, ArchiveError, StreamMember};

/// Bytes moved per `splice` call (a FIFO holds at most `pipe-max-size`, 1 MiB by default).
const SPLICE_CHUNK: usize = 4 << 20;

/// Page-image FIFOs created beyond one per task of the tree: shared memory segments
/// (anonymous shared mappings, memfds, SysV shm) get page images of their own.
pub const SPARE_FIFOS: u32 = 8;

/// How long the `post-dump` hook waits for the last pages to reach the archive. CRIU has
/// closed every page image by then, so only what sits in the FIFOs (a few MiB) is left.
const FINISH_TIMEOUT: Duration = Duration::from_secs(60);

/// What the streaming did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StreamStats {
    /// Page images that went straight into the archive.
    pub streamed: Vec<String>,
    /// Page images spilled to regular files (CRIU wrote two at once).
    pub spilled: Vec<String>,
    /// FIFOs CRIU never opened (removed before the images were archived).
    pub unused: u32,
    /// Page bytes streamed into the archive.
    pub bytes: u64,
}

enum Ctl {
    /// CRIU is at `post-dump`: drain what is left, remove unused FIFOs, report.
    Finish,
    /// The dump failed: close everything and drop the archive.
    Abort,
}

enum State {
    /// No writer seen yet.
    Waiting,
    /// Being streamed into the archive (the current member).
    Streaming,
    /// Being copied into a regular file at the image's path.
    Spilling(File),
    Done,
}

struct Fifo {
    name: String,
    path: PathBuf,
    fd: Option<OwnedFd>,
    state: State,
}

/// A running page streamer (see the module docs).
#[derive(Debug)]
pub struct PageStream {
    ctl: mpsc::Sender<Ctl>,
    /// Write end of the pipe that wakes the thread's poll.
    wake: OwnedFd,
    /// (Behind a mutex so that the hook handler holding a `&PageStream` stays `Send`.)
    done: std::sync::Mutex<mpsc::Receiver<bool>>,
    handle: Option<std::thread::JoinHandle<Result<(ArchiveBuilder, StreamStats), ArchiveError>>>,
}

impl std::fmt::Debug for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Finish => "Finish",
            Self::Abort => "Abort",
        })
    }
}

impl PageStream {
    /// Creates `pages-1.img` … `pages-<count>.img` as FIFOs in `images_dir`, opens their read
    /// ends (non-blocking, so CRIU's open never waits) and starts the thread that streams
    /// them into `builder` as `checkpoint/pages-<id>.img`.
    pub fn start(builder: ArchiveBuilder, images_dir: &Path, count: u32) -> io::Result<Self> {
        let mut fifos = Vec::with_capacity(count as usize);
        let pipe_size = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(1 << 20);
        for id in 1..=count {
            let name = format!("pages-{id}.img");
            let path = images_dir.join(&name);
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
            let fd = nix::fcntl::open(
                &path,
                nix::fcntl::OFlag::O_RDONLY
                    | nix::fcntl::OFlag::O_NONBLOCK
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )?;
            // A larger FIFO lets CRIU move more page references per splice while we copy.
            let _ = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(pipe_size as _));
            fifos.push(Fifo {
                name: format!("checkpoint/{name}"),
                path,
                fd: Some(fd),
                state: State::Waiting,
            });
        }
        let (wake_r, wake_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        let (ctl_tx, ctl_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("cpengine-pages".into())
            .spawn(move || serve(builder, fifos, wake_r, ctl_rx, done_tx))?;
        Ok(Self {
            ctl: ctl_tx,
            wake: wake_w,
            done: std::sync::Mutex::new(done_rx),
            handle: Some(handle),
        })
    }

    fn send(&self, c: Ctl) {
        let _ = self.ctl.send(c);
        let _ = nix::unistd::write(&self.wake, &[1]);
    }

    /// At `post-dump`: waits until every page image CRIU wrote is in the archive (or spilled
    /// to a file) and the unused FIFOs are gone. `false` if the archive side failed; the
    /// hook must then fail so that CRIU resumes the workload.
    pub fn finish_pages(&self) -> bool {
        self.send(Ctl::Finish);
        self.done
            .lock()
            .map(|rx| rx.recv_timeout(FINISH_TIMEOUT).unwrap_or(false))
            .unwrap_or(false)
    }

    /// After a successful dump: the builder with the streamed members, and what was streamed.
    pub fn join(mut self) -> Result<(ArchiveBuilder, StreamStats), ArchiveError> {
        self.send(Ctl::Finish);
        let h = self.handle.take().expect("joined once");
        h.join().unwrap_or_else(|_| {
            Err(ArchiveError::Write {
                path: PathBuf::new(),
                source: io::Error::other("the page streaming thread panicked"),
            })
        })
    }

    /// After a failed dump: stops streaming and drops the unfinished archive. Returns the
    /// archive side's own error, if it failed first (the likely cause of the dump's failure).
    pub fn abort(mut self) -> Option<ArchiveError> {
        self.send(Ctl::Abort);
        let h = self.handle.take()?;
        match h.join() {
            Ok(Err(e)) if !matches!(&e, ArchiveError::Write { source, .. } if source.kind() == io::ErrorKind::Interrupted) => {
                Some(e)
            }
            _ => None,
        }
    }
}

impl Drop for PageStream {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.send(Ctl::Abort);
            let _ = h.join();
        }
    }
}

fn aborted() -> ArchiveError {
    ArchiveError::Write {
        path: PathBuf::new(),
        source: io::Error::new(io::ErrorKind::Interrupted, "checkpoint aborted"),
    }
}

/// The streaming thread.
fn serve(
    mut b: ArchiveBuilder,
    mut fifos: Vec<Fifo>,
    wake: OwnedFd,
    ctl: mpsc::Receiver<Ctl>,
    done: mpsc::Sender<bool>,
) -> Result<(ArchiveBuilder, StreamStats), ArchiveError> {
    let mut current: Option<(usize, StreamMember)> = None;
    let mut failed: Option<ArchiveError> = None;
    let mut finishing = false;
    let mut stats = StreamStats::default();
    let dest = b.dest().to_path_buf();
    let werr = |source: io::Error| ArchiveError::Write {
        path: dest.clone(),
        source,
    };
    loop {
        let busy = fifos
            .iter()
            .any(|f| matches!(f.state, State::Streaming | State::Spilling(_)));
        // Once CRIU is at post-dump and nothing is active, one non-blocking look catches
        // FIFOs whose writer came and went without data; then the rest were never used.
        let timeout = if finishing && !busy {
            PollTimeout::ZERO
        } else {
            PollTimeout::NONE
        };
        let watched: Vec<usize> = fifos
            .iter()
            .enumerate()
            .filter(|(_, f)| f.fd.is_some() && !matches!(f.state, State::Done))
            .map(|(i, _)| i)
            .collect();
        let events: Vec<(usize, PollFlags)> = {
            let mut pfds = Vec::with_capacity(watched.len() + 1);
            pfds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
            for &i in &watched {
                let fd = fifos[i].fd.as_ref().expect("watched fifos are open");
                pfds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            match nix::poll::poll(&mut pfds, timeout) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(werr(e.into())),
            }
            let mut ev = Vec::new();
            if pfds[0].revents().is_some_and(|r| !r.is_empty()) {
                ev.push((usize::MAX, PollFlags::POLLIN));
            }
            for (k, &i) in watched.iter().enumerate() {
                if let Some(r) = pfds[k + 1].revents()
                    && !r.is_empty()
                {
                    ev.push((i, r));
                }
            }
            ev
        };
        let mut any_fifo = false;
        for (i, _) in events {
            if i == usize::MAX {
                let mut buf = [0u8; 64];
                while nix::unistd::read(&wake, &mut buf).is_ok_and(|n| n > 0) {}
                while let Ok(c) = ctl.try_recv() {
                    match c {
                        Ctl::Finish => finishing = true,
                        Ctl::Abort => {
                            drop(current.take());
                            return Err(failed.unwrap_or_else(aborted));
                        }
                    }
                }
                continue;
            }
            any_fifo = true;
            let f = &mut fifos[i];
            if failed.is_some() {
                // The archive is lost: hang up on CRIU (its writes fail with EPIPE).
                f.fd = None;
                f.state = State::Done;
                continue;
            }
            if matches!(f.state, State::Waiting) {
                if current.is_none() {
                    match b.begin_stream(&f.name) {
                        Ok(m) => {
                            current = Some((i, m));
                            f.state = State::Streaming;
                        }
                        Err(e) => {
                            fail(&mut fifos, &mut current, &mut failed, e);
                            continue;
                        }
                    }
                } else {
                    match spill_file(&f.path) {
                        Ok(file) => f.state = State::Spilling(file),
                        Err(e) => {
                            fail(&mut fifos, &mut current, &mut failed, werr(e));
                            continue;
                        }
                    }
                }
            }
            let r = pump(&mut b, &mut fifos[i], &mut current, i, &mut stats);
            if let Err(e) = r {
                fail(&mut fifos, &mut current, &mut failed, werr(e));
            }
        }
        let busy = fifos
            .iter()
            .any(|f| matches!(f.state, State::Streaming | State::Spilling(_)));
        if finishing && !busy && !any_fifo {
            // Quiescent after CRIU closed every image: the waiting FIFOs were never used.
            for f in fifos
                .iter_mut()
                .filter(|f| matches!(f.state, State::Waiting))
            {
                let _ = std::fs::remove_file(&f.path);
                f.fd = None;
                f.state = State::Done;
                stats.unused += 1;
            }
            let ok = failed.is_none();
            let _ = done.send(ok);
            return match failed {
                Some(e) => Err(e),
                None => Ok((b, stats)),
            };
        }
    }
}

/// Moves what the FIFO holds into its destination; at its end, closes the member.
fn pump(
    b: &mut ArchiveBuilder,
    f: &mut Fifo,
    current: &mut Option<(usize, StreamMember)>,
    idx: usize,
    stats: &mut StreamStats,
) -> io::Result<()> {
    let Some(fd) = f.fd.as_ref() else {
        return Ok(());
    };
    loop {
        let n = match &mut f.state {
            State::Streaming => {
                let (_, m) = current
                    .as_mut()
                    .filter(|(c, _)| *c == idx)
                    .expect("the streaming fifo is the current member");
                b.splice_from(m, fd.as_fd(), SPLICE_CHUNK)
            }
            State::Spilling(file) => loop {
                match nix::fcntl::splice(
                    fd.as_fd(),
                    None,
                    file.as_fd(),
                    None,
                    SPLICE_CHUNK,
                    nix::fcntl::SpliceFFlags::SPLICE_F_MOVE
                        | nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK,
                ) {
                    Ok(n) => break Ok(n),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => break Err(e.into()),
                }
            },
            _ => return Ok(()),
        };
        match n {
            Ok(0) => {
                if matches!(f.state, State::Streaming) {
                    let (_, m) = current.take().expect("current member");
                    let len = b
                        .end_stream(m)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    stats.bytes += len;
                    stats.streamed.push(f.name.clone());
                    // The image lives in the archive now; the FIFO goes.
                    std::fs::remove_file(&f.path)?;
                } else {
                    stats.spilled.push(f.name.clone());
                }
                f.fd = None;
                f.state = State::Done;
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// The archive side failed: hang up on the FIFOs CRIU is writing so that CRIU fails.
/// FIFOs not opened yet keep their read end (CRIU's open must not block); they are closed as
/// soon as a writer shows up.
fn fail(
    fifos: &mut [Fifo],
    current: &mut Option<(usize, StreamMember)>,
    failed: &mut Option<ArchiveError>,
    e: ArchiveError,
) {
    tracing::warn!(error = %e, "streaming pages into the archive failed; failing the dump");
    current.take();
    for f in fifos {
        if matches!(f.state, State::Streaming | State::Spilling(_)) {
            f.fd = None;
            f.state = State::Done;
        }
    }
    failed.get_or_insert(e);
}

/// Replaces the FIFO at `path` by a new regular file (CRIU keeps writing into the FIFO it
/// opened; we copy from it into the file).
fn spill_file(path: &Path) -> io::Result<File> {
    std::fs::remove_file(path)?;
    let fd = nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn concurrent_writers_stream_one_and_spill_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("checkpoint");
        std::fs::create_dir(&images).unwrap();
        let out = dir.path().join("a.tar");
        let mut b = ArchiveBuilder::create(&out).unwrap();
        b.append_dir("checkpoint", 0).unwrap();
        let ps = PageStream::start(b, &images, 3).unwrap();
        let one: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        let two: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        {
            // Like CRIU, but with two images open at once, written in turns.
            let open = |n: &str| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(images.join(n))
                    .unwrap()
            };
            let mut f1 = open("pages-1.img");
            f1.write_all(&one[..1_000_000]).unwrap();
            let mut f2 = open("pages-2.img");
            f2.write_all(&two[..1_000_000]).unwrap();
            f1.write_all(&one[1_000_000..]).unwrap();
            f2.write_all(&two[1_000_000..]).unwrap();
        }
        assert!(ps.finish_pages());
        let (b, stats) = ps.join().unwrap();
        assert_eq!(stats.streamed, vec!["checkpoint/pages-1.img".to_string()]);
        assert_eq!(stats.spilled, vec!["checkpoint/pages-2.img".to_string()]);
        assert_eq!(stats.unused, 1);
        assert_eq!(stats.bytes, one.len() as u64);
        // The FIFOs are gone; the spilled image is a regular file with all of its data.
        assert!(!images.join("pages-1.img").exists());
        assert!(!images.join("pages-3.img").exists());
        assert_eq!(std::fs::read(images.join("pages-2.img")).unwrap(), two);
        let mut b = b;
        let input = crate::archive::ArchiveInput {
            images_dir: images.clone(),
            config: Default::default(),
            spec: serde_json::json!({}),
            stats_dump: None,
            dump_log: None,
            rootfs: None,
            extra: Vec::new(),
        };
        b.append(&input, None).unwrap();
        b.finish().unwrap();
        let mut ar = tar::Archive::new(File::open(&out).unwrap());
        let mut got = std::collections::BTreeMap::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            got.insert(name, data);
        }
        assert_eq!(got["checkpoint/pages-1.img"], one);
        assert_eq!(got["checkpoint/pages-2.img"], two);
    }

    #[test]
    fn an_abort_drops_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("checkpoint");
        std::fs::create_dir(&images).unwrap();
        let out = dir.path().join("a.tar");
        let b = ArchiveBuilder::create(&out).unwrap();
        let ps = PageStream::start(b, &images, 2).unwrap();
        assert!(ps.abort().is_none(), "no archive error of its own");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("checkpoint")]);
    }
}
