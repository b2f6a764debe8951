//! One operation per container at a time, across processes: a checkpoint (or a restore under
//! that id) holds an exclusive `flock` on `<run>/locks/<id>.lock` for its whole duration.
//!
//! Two CRIU dumps of the same container at once cannot both work (the second finds the cgroup
//! frozen and the tasks seized by the first, and its failure path would thaw the cgroup under
//! the first one's feet), so the second waits for the first. The lock is the kernel's: it is
//! released when its holder exits, even by SIGKILL, so a crashed engine never leaves a
//! container locked. Lock files are never removed (removing one would let two holders lock
//! different inodes of the same name).

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use super::state::StateRoot;

/// How often a waiting operation retries the lock.
const POLL: Duration = Duration::from_millis(20);

/// What went wrong taking the lock.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("opening lock file {}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("container {id} is busy with another checkpoint or restore (waited {waited:?})")]
    Busy { id: String, waited: Duration },
}

/// Held while the container is being worked on.
#[derive(Debug)]
pub struct ContainerLock {
    _lock: Flock<File>,
}

/// The lock file of container `id`.
pub fn lock_path(state: &StateRoot, id: &str) -> PathBuf {
    state.run.join("locks").join(format!("{id}.lock"))
}

fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Takes container `id`'s lock, waiting at most `wait` for another holder to finish.
/// `id` must already be a valid container id (a single safe path component).
pub async fn lock(state: &StateRoot, id: &str, wait: Duration) -> Result<ContainerLock, LockError> {
    let path = lock_path(state, id);
    let started = Instant::now();
    let mut file = open(&path).map_err(|source| LockError::Open {
        path: path.clone(),
        source,
    })?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(ContainerLock { _lock: l }),
            Err((f, nix::errno::Errno::EWOULDBLOCK | nix::errno::Errno::EINTR)) => {
                file = f;
            }
            Err((_, e)) => {
                return Err(LockError::Open {
                    path,
                    source: e.into(),
                });
            }
        }
        if started.elapsed() >= wait {
            return Err(LockError::Busy {
                id: id.to_string(),
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Takes container `id`'s lock if nobody holds it.
pub fn try_lock(state: &StateRoot, id: &str) -> Option<ContainerLock> {
    let file = open(&lock_path(state, id)).ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .ok()
        .map(|l| ContainerLock { _lock: l })
}

/// Takes container `id`'s lock for recovery, waiting at most `wait` for its holder to let go.
///
/// A holder that is not a live operation on `id` lets go within milliseconds: a child a killed
/// engine forked holds the engine's descriptors (the lock's among them) until it executes its
/// program, which closes them (they are all close-on-exec). A live restore holds it for as
/// long as it runs; recovery then leaves that id for later. Blocking: call before the async
/// runtime runs tasks, or from a blocking thread.
pub fn lock_for_recovery(state: &StateRoot, id: &str, wait: Duration) -> Option<ContainerLock> {
    let started = Instant::now();
    loop {
        if let Some(l) = try_lock(state, id) {
            return Some(l);
        }
        if started.elapsed() >= wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes that have container `id`'s lock file open (one of them holds the lock when
/// it is busy), for messages.
pub fn openers(state: &StateRoot, id: &str) -> Vec<i32> {
    let path = lock_path(state, id);
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let has = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| std::fs::read_link(f.path()).is_ok_and(|l| l == path));
        if has {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_holder_waits_and_gets_it_after_release() {
        let t = tempfile::tempdir().unwrap();
        let state = StateRoot::at(t.path());
        let first = lock(&state, "c1", Duration::ZERO).await.unwrap();
        // Same process, another open file description: flock excludes it too.
        let busy = lock(&state, "c1", Duration::from_millis(60))
            .await
            .unwrap_err();
        assert!(matches!(busy, LockError::Busy { .. }), "{busy:?}");
        // Another container is independent.
        let _other = lock(&state, "c2", Duration::ZERO).await.unwrap();
        let waiter = {
            let state = state.clone();
            tokio::spawn(async move { lock(&state, "c1", Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        waiter.await.unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(lock_path(&state, "c1"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
