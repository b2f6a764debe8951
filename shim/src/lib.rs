//! cpengine-shim: a CRI runtime endpoint whose `CheckpointContainer` is served by cpengine.
//!
//! This is how Kubernetes reaches the engine: the kubelet's
//! `POST /checkpoint/{namespace}/{pod}/{container}` becomes a CRI
//! `CheckpointContainer{container_id, location, timeout}` on the runtime's socket, and the
//! runtime writes the whole archive at `location`.
//!
//! Two modes:
//! * **standalone** ([`standalone`]): the shim is the runtime. Pods (namespace holders) and
//!   containers (runc, overlay rootfs, CRI logs through a relay) are its own, images come from
//!   an [`ImageBackend`](domain::ImageBackend), a checkpoint archive or checkpoint image given
//!   as a container's image is restored at `CreateContainer`/`StartContainer`.
//! * **proxy** ([`proxy`]): the shim sits in front of containerd (or CRI-O) and forwards every
//!   call, except `CheckpointContainer`, which the engine serves on the upstream's runc
//!   container.
//!
//! Layers: the tonic services ([`cri`]) convert the generated CRI messages into the shim's own
//! types ([`domain`]) and call the backend traits; errors are [`ShimError`]
//! variants mapped to gRPC codes in one place.

pub mod authority;
pub mod checkpoint;
pub mod cri;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod holder;
pub mod images;
pub mod locks;
pub mod proxy;
pub mod restore_mode;
pub mod server;
pub mod standalone;

use std::path::PathBuf;
use std::sync::Arc;

use cpengine::container::StateRoot;

pub use error::{Result, ShimError};

/// Default CRI socket.
pub const DEFAULT_SOCKET: &str = "/run/cpengine/cri.sock";
/// containerd's runc root for the CRI namespace.
pub const CONTAINERD_K8S_RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";

/// How the shim runs.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// The CRI socket to serve.
    pub listen: PathBuf,
    pub state: StateRoot,
    /// `Some(socket)`: proxy mode in front of that runtime.
    pub upstream: Option<PathBuf>,
    /// The upstream's runc root (proxy mode).
    pub upstream_runc_root: PathBuf,
    /// The runtime name recorded in archives of upstream containers.
    pub upstream_runtime_name: String,
    /// The runc binary (standalone mode).
    pub runc: PathBuf,
    /// The shim binary, re-executed as log relay and pod holder.
    pub exe: PathBuf,
    /// Directories CRI checkpoint locations must be in.
    pub checkpoint_dirs: Vec<PathBuf>,
    /// What the CRI allows of checkpoint/restore (default: verified restores).
    pub restore_mode: restore_mode::RestoreMode,
    /// Restore only archives signed by one of these keys (`--require-signed`); `None`
    /// accepts unsigned archives. CheckpointContainer always signs with the node key.
    pub require_signed: Option<cpengine::archive::sign::TrustedKeys>,
}

/// Serves the CRI until `shutdown` resolves. The socket is removed on the way out; pods and
/// containers keep running.
pub async fn run(
    cfg: ShimConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let listener = server::bind(&cfg.listen).await?;
    let _guard = server::SocketGuard(cfg.listen.clone());
    let checkpointer = checkpoint::Checkpointer::with_provenance(
        cfg.state.clone(),
        cfg.checkpoint_dirs.clone(),
        cfg.restore_mode,
        cfg.require_signed.clone(),
    );
    checkpointer.recover();
    // Locate CRIU now rather than in the first CheckpointContainer (a missing CRIU is logged,
    // and reported again by the calls that need it).
    {
        let c = checkpointer.clone();
        tokio::spawn(async move {
            match c.engine().await {
                Ok(e) => tracing::info!(criu = %e.criu_version(), "criu ready"),
                Err(e) => {
                    tracing::warn!(error = %e, "criu is not usable; CheckpointContainer and restores will fail")
                }
            }
        });
    }
    match &cfg.upstream {
        Some(up) => {
            tracing::info!(socket = %cfg.listen.display(), upstream = %up.display(), runc_root = %cfg.upstream_runc_root.display(), "serving CRI (proxy mode)");
            let ch = proxy::channel(up.clone())?;
            let pcfg = proxy::ProxyConfig {
                upstream: up.clone(),
                runc_root: cfg.upstream_runc_root.clone(),
                state: cfg.state.clone(),
                runtime_name: cfg.upstream_runtime_name.clone(),
            };
            server::serve(
                listener,
                proxy::ProxyRuntime::new(pcfg, ch.clone(), checkpointer),
                proxy::ProxyImages::new(ch),
                shutdown,
            )
            .await
        }
        None => {
            let images = Arc::new(images::oci::OciImages::open(&cfg.state).await?);
            let rt = standalone::Standalone::new(
                standalone::StandaloneConfig {
                    state: cfg.state.clone(),
                    runc: cfg.runc.clone(),
                    exe: cfg.exe.clone(),
                },
                images.clone(),
                checkpointer,
            )?;
            tracing::info!(socket = %cfg.listen.display(), "serving CRI (standalone mode)");
            server::serve(
                listener,
                cri::CriRuntime::new(Arc::new(rt)),
                cri::CriImages::new(images),
                shutdown,
            )
            .await
        }
    }
}
