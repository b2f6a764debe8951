//! `CheckpointContainer`, shared by the standalone runtime and the proxy.
//!
//! The kubelet asks for `CheckpointContainer{container_id, location, timeout}` and expects the
//! whole archive at `location` when the call succeeds. Here:
//!
//! 1. The location is checked before anything else: absolute, its parent an existing
//!    directory, and the final component not a symlink (never followed) nor a directory.
//! 2. The engine writes the archive to a hidden *pending* name beside the location (same
//!    directory, so the same file system), itself atomically (temp file, fsync, rename).
//! 3. The deadline is the earlier of the gRPC deadline and the request's `timeout` field. The
//!    checkpoint job and the call race for it through one atomic decision: if the job finishes
//!    first, the pending archive is renamed onto the location and the call succeeds; if the
//!    deadline comes first, the call answers `DEADLINE_EXCEEDED` at once and the job, when it
//!    finishes, deletes its pending archive. So the location holds a complete archive exactly
//!    when the call succeeded.
//! 4. CRIU is never killed to meet the deadline: killing it while its parasite code runs
//!    inside the workload would kill the workload. The job runs to its end in its own task
//!    (bounded by the engine's own CRIU timeout), holding the container's lock, so a second
//!    checkpoint of the same container waits for it, and a client that goes away changes
//!    nothing. Checkpoints of different containers run in parallel.
//! 5. It is always leave-running: the kubelet's checkpoint is forensic, the workload goes on.
//!    The engine's in-flight journal is kept under the state root, so a shim killed
//!    mid-checkpoint is repaired (container thawed, partial files removed) at its next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use cpengine::ContainerCheckpointOptions;
use cpengine::container::{Container, StateRoot};
use tokio::sync::OwnedMutexGuard;

use crate::error::{Result, ShimError};

pub use crate::deadline::answer_deadline;

const UNDECIDED: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

/// Checks a checkpoint location and returns it as a path.
pub fn validate_location(location: &str) -> Result<PathBuf> {
    if location.is_empty() {
        return Err(ShimError::InvalidArgument(
            "checkpoint location is empty".into(),
        ));
    }
    let p = Path::new(location);
    if !p.is_absolute() {
        return Err(ShimError::InvalidArgument(format!(
            "checkpoint location {location:?} is not an absolute path"
        )));
    }
    if location.ends_with('/')
        || p.file_name().is_none()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ShimError::InvalidArgument(format!(
            "checkpoint location {location:?} does not name a file"
        )));
    }
    let parent = p.parent().unwrap_or(Path::new("/"));
    match std::fs::metadata(parent) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(ShimError::FailedPrecondition(format!(
                "the parent of checkpoint location {location:?} is not a directory"
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ShimError::FailedPrecondition(format!(
                "the directory of checkpoint location {location:?} does not exist"
            )));
        }
        Err(e) => return Err(ShimError::fs("checking", parent)(e)),
    }
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.file_type().is_symlink() => Err(ShimError::FailedPrecondition(format!(
            "checkpoint location {location:?} is a symbolic link; refusing to write through it"
        ))),
        Ok(md) if md.is_dir() => Err(ShimError::FailedPrecondition(format!(
            "checkpoint location {location:?} is a directory"
        ))),
        Ok(_) => Ok(p.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(p.to_path_buf()),
        Err(e) => Err(ShimError::fs("checking", p)(e)),
    }
}

/// The options of a kubelet checkpoint: the archive at `output` (uncompressed, as the kubelet
/// and every runtime expect), leave-running.
/// The kubelet's checkpoint directory, the default (and usually only) allowed location.
pub const KUBELET_CHECKPOINT_DIR: &str = "/var/lib/kubelet/checkpoints";

/// Refuses a location whose directory is not one of `allowed` or below one. The directory is
/// resolved (`realpath`), so a symlink cannot lead a location out of the allowed tree; allowed
/// directories that do not exist allow nothing.
pub fn check_allowed(location: &Path, allowed: &[PathBuf]) -> Result<()> {
    let parent = location.parent().unwrap_or(Path::new("/"));
    let real = std::fs::canonicalize(parent).map_err(ShimError::fs("resolving", parent))?;
    let ok = allowed
        .iter()
        .filter_map(|a| std::fs::canonicalize(a).ok())
        .any(|a| real.starts_with(&a));
    if ok {
        Ok(())
    } else {
        Err(ShimError::InvalidArgument(format!(
            "checkpoint location {} is not in an allowed checkpoint directory ({}); start the shim with --checkpoint-dir to allow another",
            location.display(),
            allowed
                .iter()
                .map(|a| a.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

pub fn kubelet_options(output: PathBuf) -> ContainerCheckpointOptions {
    let mut o = ContainerCheckpointOptions::new(output);
    o.flags.leave_running = true;
    o
}

/// Runs engine checkpoints.
#[derive(Debug)]
pub struct Checkpointer {
    engine: tokio::sync::OnceCell<cpengine::Engine>,
    state: StateRoot,
    /// Directories a checkpoint location may be in (`--checkpoint-dir`).
    allowed: Vec<PathBuf>,
    /// What the admin allows of checkpoint/restore (`--restore-mode`).
    mode: crate::restore_mode::RestoreMode,
    /// Restore only archives signed by one of these keys (`--require-signed`).
    require_signed: Option<cpengine::archive::sign::TrustedKeys>,
}

/// The hidden name the archive is written under until it is committed.
pub fn pending_path(location: &Path) -> PathBuf {
    let name = location
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    location.with_file_name(format!(
        ".{name}.cpengine-pending-{:08x}",
        rand::random::<u32>()
    ))
}

/// Notes of the pending archives in flight, under the state root: each names one pending
/// path, so a shim that died after the engine finished the archive but before it was renamed
/// onto the location (or removed) knows at its next start which file to delete.
fn pending_notes(state: &StateRoot) -> PathBuf {
    state.lib.join("pending-archives")
}

/// A note of one pending archive; removed when dropped (after the archive was committed or
/// deleted).
#[derive(Debug)]
pub(crate) struct PendingNote(PathBuf);

impl PendingNote {
    pub(crate) fn write(state: &StateRoot, pending: &Path) -> Result<Self> {
        use std::io::Write;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let dir = pending_notes(state);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(ShimError::fs("creating", &dir))?;
        let note = dir.join(format!("{:016x}", rand::random::<u64>()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&note)
            .map_err(ShimError::fs("creating", &note))?;
        f.write_all(pending.as_os_str().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(ShimError::fs("writing", &note))?;
        Ok(Self(note))
    }
}

impl Drop for PendingNote {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether `p` has the shape of a name [`pending_path`] makes.
fn is_pending_name(p: &Path) -> bool {
    let Some(n) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some((head, hex)) = n.rsplit_once(".cpengine-pending-") else {
        return false;
    };
    head.starts_with('.') && hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Deletes the pending archives a previous shim left behind (their notes name them); returns
/// the paths removed.
pub(crate) fn remove_stale_pending(state: &StateRoot) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let mut removed = Vec::new();
    let Ok(rd) = std::fs::read_dir(pending_notes(state)) else {
        return removed;
    };
    for note in rd.flatten().map(|e| e.path()) {
        if let Ok(bytes) = std::fs::read(&note) {
            let p = PathBuf::from(std::ffi::OsStr::from_bytes(&bytes));
            // Only a regular file with a pending name, never through a symlink at the leaf.
            if p.is_absolute()
                && is_pending_name(&p)
                && std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_file())
                && std::fs::remove_file(&p).is_ok()
            {
                removed.push(p);
            }
        }
        let _ = std::fs::remove_file(&note);
    }
    removed
}

impl Checkpointer {
    pub fn new(state: StateRoot, allowed: Vec<PathBuf>) -> Arc<Self> {
        Self::with_mode(state, allowed, Default::default())
    }

    pub fn with_mode(
        state: StateRoot,
        allowed: Vec<PathBuf>,
        mode: crate::restore_mode::RestoreMode,
    ) -> Arc<Self> {
        Self::with_provenance(state, allowed, mode, None)
    }

    /// As [`Self::with_mode`]; with `require_signed`, a restore accepts only an archive signed
    /// by one of those keys (checked while it is extracted, before anything is created).
    pub fn with_provenance(
        state: StateRoot,
        allowed: Vec<PathBuf>,
        mode: crate::restore_mode::RestoreMode,
        require_signed: Option<cpengine::archive::sign::TrustedKeys>,
    ) -> Arc<Self> {
        Arc::new(Self {
            engine: tokio::sync::OnceCell::new(),
            state,
            allowed,
            mode,
            require_signed,
        })
    }

    /// The keys a restored archive must be signed by, if signatures are required.
    pub fn require_signed(&self) -> Option<&cpengine::archive::sign::TrustedKeys> {
        self.require_signed.as_ref()
    }

    /// The directories checkpoint archives may be written to and restored from.
    pub fn allowed(&self) -> &[PathBuf] {
        &self.allowed
    }

    pub fn mode(&self) -> crate::restore_mode::RestoreMode {
        self.mode
    }

    /// Checks a CRI checkpoint location: a well-formed absolute file path
    /// ([`validate_location`]) whose directory is one of the allowed checkpoint directories or
    /// below one (after resolving symlinks in the directory part), and that does not exist yet
    /// (the archive is created there exclusively, never over an existing file).
    pub fn location(&self, location: &str) -> Result<PathBuf> {
        if !self.mode.allows_checkpoint() {
            return Err(ShimError::FailedPrecondition(format!(
                "checkpointing is switched off on this node (--restore-mode {})",
                self.mode.name()
            )));
        }
        let p = validate_location(location)?;
        check_allowed(&p, &self.allowed)?;
        if std::fs::symlink_metadata(&p).is_ok() {
            return Err(ShimError::AlreadyExists(format!(
                "checkpoint location {location:?} already exists; cpengine never overwrites a file"
            )));
        }
        Ok(p)
    }

    /// Repairs checkpoints a previous shim left half-done (thaws, removes partial files).
    pub fn recover(&self) {
        for r in cpengine::Engine::recover(&self.state) {
            tracing::warn!(container = %r.container, killed_criu = ?r.killed_criu, thawed = ?r.thawed, unlocked = ?r.unlocked, removed = ?r.removed, "repaired a checkpoint the previous shim left unfinished");
        }
        for p in remove_stale_pending(&self.state) {
            tracing::warn!(archive = %p.display(), "removed a pending checkpoint archive the previous shim left uncommitted");
        }
    }

    /// The engine, located on first use (CRIU missing fails the call, not the shim).
    pub async fn engine(&self) -> Result<cpengine::Engine> {
        self.engine
            .get_or_try_init(cpengine::Engine::new)
            .await
            .cloned()
            .map_err(|source| ShimError::Engine {
                step: "locating CRIU",
                source,
            })
    }

    /// Checkpoints `ctr` into the archive `opts.output` before `deadline`, holding `lock` (the
    /// container's) until the job is over, whether or not the caller still waits.
    pub async fn run(
        &self,
        lock: OwnedMutexGuard<()>,
        ctr: Container,
        mut opts: ContainerCheckpointOptions,
        deadline: Option<Instant>,
    ) -> Result<()> {
        ctr.ensure_running()
            .map_err(|source| ShimError::Container {
                step: "checkpointing",
                source,
            })?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(ShimError::DeadlineExceeded(format!(
                "the deadline of the checkpoint of {} passed before it started",
                ctr.id
            )));
        }
        let engine = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.engine())
                .await
                .map_err(|_| {
                    ShimError::DeadlineExceeded(format!(
                        "the deadline of the checkpoint of {} passed while locating CRIU",
                        ctr.id
                    ))
                })??,
            None => self.engine().await?,
        };
        let location = opts.output.clone();
        let pending = pending_path(&location);
        opts.output = pending.clone();
        opts.flags.leave_running = true;
        opts.state = Some(self.state.clone());
        let id = ctr.id.clone();
        let note = PendingNote::write(&self.state, &pending)?;
        let work = async move { engine_checkpoint(&engine, &ctr, &opts).await };
        race((lock, note), &id, deadline, pending, location, work).await
    }
}

/// Runs `work` (which writes the archive at `pending`) in its own task holding `lock`, and
/// races it against `deadline`: the archive is renamed onto `location` only if the work
/// finished first; otherwise the caller gets `DEADLINE_EXCEEDED` at the deadline and the
/// work's archive is deleted when it ends.
/// `lock` (with anything else to keep until the job is over, e.g. its [`PendingNote`]) is
/// dropped only after the archive was committed or deleted.
async fn race<F, L>(
    lock: L,
    id: &str,
    deadline: Option<Instant>,
    pending: PathBuf,
    location: PathBuf,
    work: F,
) -> Result<()>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
    L: Send + 'static,
{
    let decision = Arc::new(AtomicU8::new(UNDECIDED));
    let job = {
        let decision = decision.clone();
        let id = id.to_string();
        tokio::spawn(async move {
            let _lock = lock;
            let result = work.await;
            let in_time = deadline.is_none_or(|d| Instant::now() < d);
            match result {
                Ok(())
                    if in_time
                        && decision
                            .compare_exchange(
                                UNDECIDED,
                                COMMITTED,
                                Ordering::SeqCst,
                                Ordering::SeqCst,
                            )
                            .is_ok() =>
                {
                    commit(&pending, &location)
                }
                Ok(()) => {
                    let _ = std::fs::remove_file(&pending);
                    tracing::info!(container = %id, "checkpoint finished after its deadline; archive discarded");
                    Err(ShimError::DeadlineExceeded(format!(
                        "checkpoint of {id} finished after its deadline"
                    )))
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&pending);
                    Err(e)
                }
            }
        })
    };
    let joined = match deadline {
        None => job.await,
        Some(d) => {
            tokio::pin!(job);
            tokio::select! {
                r = &mut job => r,
                _ = tokio::time::sleep_until(d.into()) => {
                    if decision
                        .compare_exchange(UNDECIDED, ABANDONED, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok()
                    {
                        return Err(ShimError::DeadlineExceeded(format!(
                            "checkpoint of {id} did not finish before its deadline; it completes in the background and its archive is discarded"
                        )));
                    }
                    // The job committed an instant before the deadline: its answer is final.
                    job.await
                }
            }
        }
    };
    joined.map_err(|e| ShimError::Internal(format!("checkpoint task failed: {e}")))?
}

/// Renames the finished archive onto the location (replacing a symlink there, never following
/// it) and makes the rename durable.
fn commit(pending: &Path, location: &Path) -> Result<()> {
    // Exclusive, like O_CREAT|O_EXCL|O_NOFOLLOW: whatever appeared at the location since it was
    // checked (a file, a symlink) is neither replaced nor followed.
    let r = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        pending,
        nix::fcntl::AT_FDCWD,
        location,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    );
    if let Err(e) = r {
        let _ = std::fs::remove_file(pending);
        if e == nix::errno::Errno::EEXIST {
            return Err(ShimError::AlreadyExists(format!(
                "checkpoint location {} appeared while the checkpoint ran; it was left alone",
                location.display()
            )));
        }
        return Err(ShimError::fs("moving the archive to", location)(e.into()));
    }
    if let Some(dir) = location.parent() {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// The engine's container checkpoint.
async fn engine_checkpoint(
    engine: &cpengine::Engine,
    ctr: &Container,
    opts: &ContainerCheckpointOptions,
) -> Result<()> {
    let report = engine
        .checkpoint_container(ctr, opts)
        .await
        .map_err(ShimError::engine("checkpointing the container"))?;
    tracing::info!(
        container = %ctr.id,
        total_ms = report.total.as_millis() as u64,
        frozen_ms = report.frozen.as_millis() as u64,
        bytes = report.archive.bytes,
        "checkpoint written"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Work that writes `pending` after `delay`.
    async fn writer(pending: PathBuf, delay: Duration) -> Result<()> {
        tokio::time::sleep(delay).await;
        std::fs::write(&pending, b"archive").map_err(ShimError::fs("writing", &pending))
    }

    #[tokio::test]
    async fn work_that_beats_the_deadline_is_committed() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("c.tar");
        let pending = pending_path(&loc);
        let locks = crate::locks::KeyedLocks::default();
        let lock = locks.lock("c").await;
        let d = Some(Instant::now() + Duration::from_secs(5));
        race(
            lock,
            "c",
            d,
            pending.clone(),
            loc.clone(),
            writer(pending.clone(), Duration::from_millis(10)),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(&loc).unwrap(), b"archive");
        assert!(!pending.exists());
    }

    #[tokio::test]
    async fn a_deadline_answers_at_once_and_the_late_archive_is_discarded() {
        // Event-driven, no clock: the work cannot finish until the test lets it, so the answer
        // that comes meanwhile can only be the deadline's.
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("c.tar");
        let pending = pending_path(&loc);
        let locks = Arc::new(crate::locks::KeyedLocks::default());
        let lock = locks.lock("c").await;
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let work = {
            let pending = pending.clone();
            async move {
                let _ = released.await;
                std::fs::write(&pending, b"archive").map_err(ShimError::fs("writing", &pending))
            }
        };
        let r = race(
            lock,
            "c",
            Some(Instant::now() + Duration::from_millis(1)),
            pending.clone(),
            loc.clone(),
            work,
        )
        .await;
        assert!(matches!(r, Err(ShimError::DeadlineExceeded(_))), "{r:?}");
        // The job still holds the container's lock: a waiter does not get it (on this
        // single-threaded runtime a free lock is taken at the waiter's first poll).
        let l2 = locks.clone();
        let got = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let got = got.clone();
            tokio::spawn(async move {
                let _g = l2.lock("c").await;
                got.store(true, std::sync::atomic::Ordering::SeqCst);
            })
        };
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !got.load(std::sync::atomic::Ordering::SeqCst),
            "the abandoned job let go of the lock before it was over"
        );
        // Now the job finishes late: its archive is removed before it lets go of the lock.
        release.send(()).unwrap();
        waiter.await.unwrap();
        assert!(!loc.exists(), "a late archive reached the location");
        assert!(!pending.exists(), "the late archive was not removed");
    }

    #[tokio::test]
    async fn a_failed_job_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("c.tar");
        let pending = pending_path(&loc);
        let locks = crate::locks::KeyedLocks::default();
        let lock = locks.lock("c").await;
        let p2 = pending.clone();
        let work = async move {
            std::fs::write(&p2, b"partial").unwrap();
            Err(ShimError::Internal("criu failed".into()))
        };
        let r = race(lock, "c", None, pending.clone(), loc.clone(), work).await;
        assert!(matches!(r, Err(ShimError::Internal(_))));
        assert!(!loc.exists() && !pending.exists());
    }

    /// A shim that died between the engine finishing the pending archive and the commit:
    /// the next start deletes exactly that archive, and nothing else beside it.
    #[test]
    fn recovery_removes_a_pending_archive_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateRoot::at(dir.path().join("state"));
        let cdir = dir.path().join("checkpoints");
        std::fs::create_dir(&cdir).unwrap();
        let loc = cdir.join("c.tar");
        let pending = pending_path(&loc);
        let note = PendingNote::write(&state, &pending).unwrap();
        std::fs::write(&pending, b"complete archive").unwrap();
        std::fs::write(cdir.join("other.tar"), b"x").unwrap();
        std::mem::forget(note); // the crash
        let c = Checkpointer::new(state.clone(), vec![cdir.clone()]);
        c.recover();
        assert!(!pending.exists(), "the pending archive survived recovery");
        assert!(cdir.join("other.tar").exists());
        assert!(remove_stale_pending(&state).is_empty());
        assert!(is_pending_name(&pending) && !is_pending_name(&loc));
    }

    #[test]
    fn locations_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ok = d.join("checkpoint-p_ns-c-2026-01-01T00:00:00Z.tar");
        assert_eq!(validate_location(ok.to_str().unwrap()).unwrap(), ok);
        assert!(matches!(
            validate_location(""),
            Err(ShimError::InvalidArgument(_))
        ));
        assert!(matches!(
            validate_location("relative/x.tar"),
            Err(ShimError::InvalidArgument(_))
        ));
        assert!(matches!(
            validate_location(&format!("{}/", d.display())),
            Err(ShimError::InvalidArgument(_))
        ));
        assert!(matches!(
            validate_location(&format!("{}/a/../x.tar", d.display())),
            Err(ShimError::InvalidArgument(_))
        ));
        assert!(matches!(
            validate_location(d.join("missing/x.tar").to_str().unwrap()),
            Err(ShimError::FailedPrecondition(_))
        ));
        let link = d.join("link.tar");
        std::os::unix::fs::symlink(d.join("target.tar"), &link).unwrap();
        assert!(matches!(
            validate_location(link.to_str().unwrap()),
            Err(ShimError::FailedPrecondition(_))
        ));
        assert!(!d.join("target.tar").exists());
        assert!(matches!(
            validate_location(d.to_str().unwrap()),
            Err(ShimError::FailedPrecondition(_))
        ));
        // The path itself is well formed even if a file is there ([`Checkpointer::location`]
        // refuses existing files).
        std::fs::write(&ok, b"old").unwrap();
        assert!(validate_location(ok.to_str().unwrap()).is_ok());
    }

    #[test]
    fn locations_must_be_new_files_in_an_allowed_directory() {
        let t = tempfile::tempdir().unwrap();
        let allowed = t.path().join("checkpoints");
        let other = t.path().join("elsewhere");
        std::fs::create_dir_all(allowed.join("pod-a")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        // A symlink inside the allowed directory that leads out of it.
        std::os::unix::fs::symlink(&other, allowed.join("escape")).unwrap();
        let c = Checkpointer::new(StateRoot::at(t.path().join("s")), vec![allowed.clone()]);
        let loc = |p: PathBuf| c.location(p.to_str().unwrap());
        assert!(loc(allowed.join("c.tar")).is_ok());
        assert!(
            loc(allowed.join("pod-a/c.tar")).is_ok(),
            "subdirectories allowed"
        );
        for bad in [other.join("c.tar"), allowed.join("escape/c.tar")] {
            let e = loc(bad.clone()).unwrap_err();
            assert!(matches!(e, ShimError::InvalidArgument(_)), "{bad:?}: {e:?}");
        }
        std::fs::write(allowed.join("old.tar"), b"keep").unwrap();
        assert!(matches!(
            loc(allowed.join("old.tar")),
            Err(ShimError::AlreadyExists(_))
        ));
        assert_eq!(std::fs::read(allowed.join("old.tar")).unwrap(), b"keep");
        // Nothing is allowed when the list is empty or names a missing directory.
        let none = Checkpointer::new(
            StateRoot::at(t.path().join("s")),
            vec![t.path().join("nope")],
        );
        assert!(
            none.location(allowed.join("c.tar").to_str().unwrap())
                .is_err()
        );
    }

    #[test]
    fn commit_never_replaces_what_appeared_at_the_location() {
        let t = tempfile::tempdir().unwrap();
        let loc = t.path().join("c.tar");
        let pending = pending_path(&loc);
        std::fs::write(&pending, b"archive").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &loc).unwrap();
        assert!(matches!(
            commit(&pending, &loc),
            Err(ShimError::AlreadyExists(_))
        ));
        assert!(
            std::fs::symlink_metadata(&loc)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!pending.exists(), "the pending archive is removed");
        std::fs::remove_file(&loc).unwrap();
        std::fs::write(&pending, b"archive").unwrap();
        commit(&pending, &loc).unwrap();
        assert_eq!(std::fs::read(&loc).unwrap(), b"archive");
    }
}
