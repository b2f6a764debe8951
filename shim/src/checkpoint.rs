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

use cpengine::container::Container;
use cpengine::container::checkpoint::ContainerCheckpointOptions;
use cpengine::container::state::StateRoot;
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
    o.knobs.leave_running = true;
    o
}

/// Runs engine checkpoints.
#[derive(Debug)]
pub struct Checkpointer {
    engine: tokio::sync::OnceCell<cpengine::Engine>,
    state: StateRoot,
    /// Directories a checkpoint location may be in (`--checkpoint-dir`).
    allowed: Vec<PathBuf>,
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

impl Checkpointer {
    pub fn new(state: StateRoot, allowed: Vec<PathBuf>) -> Arc<Self> {
        Arc::new(Self {
            engine: tokio::sync::OnceCell::new(),
            state,
            allowed,
        })
    }

    /// Checks a CRI checkpoint location: a well-formed absolute file path
    /// ([`validate_location`]) whose directory is one of the allowed checkpoint directories or
    /// below one (after resolving symlinks in the directory part), and that does not exist yet
    /// (the archive is created there exclusively, never over an existing file).
    pub fn location(&self, location: &str) -> Result<PathBuf> {
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
        for r in cpengine::container::journal::recover(&self.state) {
            tracing::warn!(container = %r.container, killed_criu = ?r.killed_criu, thawed = ?r.thawed, unlocked = ?r.unlocked, removed = ?r.removed, "repaired a checkpoint the previous shim left unfinished");
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
        opts.knobs.leave_running = true;
        opts.state = Some(self.state.clone());
        let id = ctr.id.clone();
        let work = async move { engine_checkpoint(&engine, &ctr, &opts).await };
        race(lock, &id, deadline, pending, location, work).await
    }
}

/// Runs `work` (which writes the archive at `pending`) in its own task holding `lock`, and
/// races it against `deadline`: the archive is renamed onto `location` only if the work
/// finished first; otherwise the caller gets `DEADLINE_EXCEEDED` at the deadline and the
/// work's archive is deleted when it ends.
async fn race<F>(
    lock: OwnedMutexGuard<()>,
    id: &str,
    deadline: Option<Instant>,
    pending: PathBuf,
    location: PathBuf,
    work: F,
) -> Result<()>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
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
    let report = cpengine::container::checkpoint::checkpoint(engine, ctr, opts)
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
        let dir = tempfile::tempdir().unwrap();
        let loc = dir.path().join("c.tar");
        let pending = pending_path(&loc);
        let locks = Arc::new(crate::locks::KeyedLocks::default());
        let lock = locks.lock("c").await;
        let t = Instant::now();
        let r = race(
            lock,
            "c",
            Some(t + Duration::from_millis(100)),
            pending.clone(),
            loc.clone(),
            writer(pending.clone(), Duration::from_millis(400)),
        )
        .await;
        assert!(matches!(r, Err(ShimError::DeadlineExceeded(_))), "{r:?}");
        assert!(
            t.elapsed() < Duration::from_millis(300),
            "answered late: {:?}",
            t.elapsed()
        );
        // The job still holds the container's lock until it is over.
        let l2 = locks.clone();
        let waited = tokio::spawn(async move {
            let t = Instant::now();
            let _g = l2.lock("c").await;
            t.elapsed()
        });
        assert!(waited.await.unwrap() >= Duration::from_millis(200));
        tokio::time::sleep(Duration::from_millis(50)).await;
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
