//! The unix socket the CRI is served on, and the serving loop.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use k8s_cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use tokio::net::UnixListener;

use crate::error::{Result, ShimError};

/// Largest CRI message accepted or sent (ListContainers of a busy node, ExecSync output).
const MAX_MESSAGE: usize = 64 << 20;

/// Parses `--listen`: `unix:///abs/path` (the form of the kubelet's
/// `--container-runtime-endpoint` and crictl's `--runtime-endpoint`), gRPC's `unix:/abs/path`,
/// or a bare path. Any other scheme is refused: the shim serves unix sockets only.
pub fn listen_path(s: &str) -> Result<PathBuf> {
    let path = if let Some(rest) = s.strip_prefix("unix://") {
        rest
    } else if let Some(rest) = s.strip_prefix("unix:") {
        rest
    } else if let Some((scheme, _)) = s.split_once("://") {
        return Err(ShimError::InvalidArgument(format!(
            "--listen {s:?}: scheme {scheme:?} is not supported; give unix:///absolute/path or a path"
        )));
    } else {
        s
    };
    if path.is_empty() {
        return Err(ShimError::InvalidArgument(format!(
            "--listen {s:?} names no socket path"
        )));
    }
    if s.starts_with("unix:") && !path.starts_with('/') {
        return Err(ShimError::InvalidArgument(format!(
            "--listen {s:?}: a unix: endpoint needs an absolute path (unix:///run/x.sock)"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Binds the CRI socket: the parent directory is created 0700, a stale socket (nobody
/// answering) is removed, a live one is an error, and the new socket is made 0600.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(ShimError::fs("creating the socket directory", parent))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(path).await.is_ok() {
                return Err(ShimError::FailedPrecondition(format!(
                    "another server is listening on {}",
                    path.display()
                )));
            }
            std::fs::remove_file(path).map_err(ShimError::fs("removing the stale socket", path))?;
            tracing::info!(socket = %path.display(), "removed a stale socket");
        }
        Ok(_) => {
            return Err(ShimError::FailedPrecondition(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ShimError::fs("checking", path)(e)),
    }
    // No window in which others could connect, and no process-wide umask (other threads
    // create files meanwhile): the socket is bound in a fresh 0700 directory beside `path`,
    // made 0600 there, then renamed into place (never over anything that appeared).
    let parent = path.parent().unwrap_or(Path::new("."));
    let private = parent.join(format!(".cri-bind-{:08x}", rand::random::<u32>()));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(ShimError::fs("creating", &private))?;
    let staged = private.join("sock");
    let result = (|| {
        let listener = UnixListener::bind(&staged).map_err(ShimError::fs("binding", path))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))
            .map_err(ShimError::fs("setting the mode of", path))?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staged,
            nix::fcntl::AT_FDCWD,
            path,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| ShimError::fs("moving the socket to", path)(e.into()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Removes the socket when dropped.
#[derive(Debug)]
pub struct SocketGuard(pub PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves both services on `listener` until `shutdown` resolves.
pub async fn serve<R, I>(
    listener: UnixListener,
    runtime: R,
    images: I,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()>
where
    R: RuntimeService,
    I: ImageService,
{
    use tokio_stream::StreamExt;
    // Every connection goes through the authority relay (see crate::authority).
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener)
        .map(|conn| conn.map(crate::authority::relay));
    let rs = RuntimeServiceServer::from_arc(Arc::new(runtime))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let is = ImageServiceServer::from_arc(Arc::new(images))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    tonic::transport::Server::builder()
        .add_service(rs)
        .add_service(is)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| ShimError::Internal(format!("serving the CRI: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_accepts_unix_endpoints_and_paths_and_refuses_other_schemes() {
        for (arg, want) in [
            ("unix:///run/x.sock", "/run/x.sock"),
            ("unix:/run/x.sock", "/run/x.sock"),
            ("/run/cpengine/cri.sock", "/run/cpengine/cri.sock"),
            ("relative/cri.sock", "relative/cri.sock"),
        ] {
            assert_eq!(listen_path(arg).unwrap(), PathBuf::from(want), "{arg}");
        }
        for arg in [
            "tcp://127.0.0.1:1234",
            "npipe:////./pipe/x",
            "http://localhost",
            "unix://",
            "unix://relative.sock",
            "",
        ] {
            let e = listen_path(arg).unwrap_err();
            assert!(matches!(e, ShimError::InvalidArgument(_)), "{arg}: {e}");
            assert!(e.to_string().contains("--listen"), "{arg}: {e}");
        }
        assert!(
            listen_path("tcp://127.0.0.1:1")
                .unwrap_err()
                .to_string()
                .contains("\"tcp\" is not supported")
        );
    }

    #[tokio::test]
    async fn socket_is_private_and_stale_ones_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/cri.sock");
        let l = bind(&sock).await.unwrap();
        let md = std::fs::metadata(&sock).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        let pmd = std::fs::metadata(sock.parent().unwrap()).unwrap();
        assert_eq!(pmd.permissions().mode() & 0o777, 0o700);
        // A live listener is not replaced.
        assert!(matches!(
            bind(&sock).await,
            Err(ShimError::FailedPrecondition(_))
        ));
        drop(l);
        // The socket file of a dead listener is stale and replaced.
        assert!(sock.exists());
        let _l2 = bind(&sock).await.unwrap();
        // A regular file is never removed.
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(
            bind(&f).await,
            Err(ShimError::FailedPrecondition(_))
        ));
        assert!(f.exists());
    }

    /// Binding never changes the process-wide umask (other threads create files meanwhile):
    /// a thread watching `Umask:` in /proc/self/status sees only the test's own value while
    /// sockets are bound again and again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn binding_leaves_the_process_umask_alone() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let umask = || {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
                .unwrap()
        };
        let before = umask();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut other = std::collections::BTreeSet::new();
                while !stop.load(Ordering::Relaxed) {
                    other.insert(umask());
                }
                other
            })
        };
        let dir = tempfile::tempdir().unwrap();
        for i in 0..300 {
            let sock = dir.path().join(format!("s{i}.sock"));
            let l = bind(&sock).await.unwrap();
            assert_eq!(
                std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
                0o600
            );
            drop(l);
        }
        stop.store(true, Ordering::Relaxed);
        let seen = seen.join().unwrap();
        assert_eq!(
            seen.into_iter().collect::<Vec<_>>(),
            [before],
            "the umask changed"
        );
    }
}
