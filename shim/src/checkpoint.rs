//! `CheckpointContainer`, shared by the standalone runtime and the proxy.
//!
//! The kubelet asks for `CheckpointContainer{container_id, location, timeout}` and expects the
//! whole archive at `location` when the call succeeds. Here:
//!
//! 1. The location is checked before anything else: absolute, its parent an existing
//!    directory, and the final component not a symlink (never followed) nor a directory. The
//!    engine writes a temp file beside it and renames it into place, so the path holds the
//!    complete archive or nothing new.
//! 2. The deadline is the earlier of the gRPC deadline and the request's `timeout` field. The
//!    engine's CRIU request is bounded by it (CRIU is killed on expiry and the workload
//!    resumed by the engine); the whole job is bounded too, and an archive that completes
//!    after the deadline is removed, because the caller has been told the call failed.
//! 3. The job runs as its own task holding the container's lock: if the client goes away
//!    (tonic drops the handler at the deadline), the checkpoint still finishes or cleans up,
//!    and a second checkpoint of the same container waits for it. Checkpoints of different
//!    containers run in parallel.
//! 4. It is always leave-running: the kubelet's checkpoint is forensic, the workload goes on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cpengine::container::Container;
use cpengine::container::checkpoint::ContainerCheckpointOptions;
use tokio::sync::OwnedMutexGuard;

use crate::error::{Result, ShimError};

/// Time kept back from the deadline for the answer to reach the client.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);
/// Extra time the job gets beyond CRIU's own bound before it is abandoned (the engine's own
/// timeout kills CRIU and resumes the container; this only catches a stuck archive phase).
const JOB_GRACE: Duration = Duration::from_secs(2);

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

/// The options of a kubelet checkpoint: the archive at `output`, leave-running.
pub fn kubelet_options(output: PathBuf) -> ContainerCheckpointOptions {
    let mut o = ContainerCheckpointOptions::new(output);
    o.knobs.leave_running = true;
    o
}

/// Runs engine checkpoints.
#[derive(Debug, Default)]
pub struct Checkpointer {
    engine: tokio::sync::OnceCell<cpengine::Engine>,
}

impl Checkpointer {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
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

    /// Checkpoints `ctr` with `opts` before `deadline`, holding `lock` (the container's) until
    /// the job is over, whether or not the caller still waits.
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
        let engine = self.engine().await?;
        let budget = match deadline {
            Some(d) => {
                let left = d
                    .saturating_duration_since(Instant::now())
                    .saturating_sub(ANSWER_MARGIN);
                if left.is_zero() {
                    return Err(ShimError::DeadlineExceeded(format!(
                        "the deadline of the checkpoint of {} passed before it started",
                        ctr.id
                    )));
                }
                opts.knobs.timeout = opts.knobs.timeout.min(left);
                Some(left)
            }
            None => None,
        };
        let job = tokio::spawn(async move {
            let _lock = lock;
            let output = opts.output.clone();
            let started = Instant::now();
            let work = engine_checkpoint(&engine, &ctr, &opts);
            let result = match budget {
                Some(b) => match tokio::time::timeout(b + JOB_GRACE, work).await {
                    Ok(r) => r,
                    Err(_) => {
                        abandon(&ctr, &output);
                        Err(ShimError::DeadlineExceeded(format!(
                            "checkpoint of {} did not finish within {b:?}",
                            ctr.id
                        )))
                    }
                },
                None => work.await,
            };
            match result {
                Ok(()) if budget.is_some_and(|b| started.elapsed() > b) => {
                    // Finished, but after the caller's deadline: the caller was told it failed,
                    // so the location must not hold an archive.
                    let _ = std::fs::remove_file(&output);
                    Err(ShimError::DeadlineExceeded(format!(
                        "checkpoint of {} finished after its deadline ({:?})",
                        ctr.id,
                        started.elapsed()
                    )))
                }
                other => other,
            }
        });
        job.await
            .map_err(|e| ShimError::Internal(format!("checkpoint task failed: {e}")))?
    }
}

/// Cleans up after a checkpoint job that was abandoned mid-way: the container must not stay
/// frozen and no partial archive may stay beside the destination.
fn abandon(ctr: &Container, output: &Path) {
    if let Some(f) = ctr.freezer() {
        cpengine::cgroups::thaw(&f);
    }
    if let Some(parent) = output.parent() {
        let prefix = format!(
            ".{}.",
            output.file_name().and_then(|n| n.to_str()).unwrap_or("")
        );
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.contains("tmp") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The engine's container checkpoint.
async fn engine_checkpoint(
    _engine: &cpengine::Engine,
    _ctr: &Container,
    _opts: &ContainerCheckpointOptions,
) -> Result<()> {
    Err(ShimError::Unimplemented(
        "CheckpointContainer (the engine's container checkpoint has not landed yet)",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        // An existing regular file is replaced atomically by the engine.
        std::fs::write(&ok, b"old").unwrap();
        assert!(validate_location(ok.to_str().unwrap()).is_ok());
    }
}
