//! The standalone runtime: pods and containers run by the shim itself with runc.
//!
//! * A pod is a record plus, when it has shared namespaces, a namespace holder process
//!   ([`crate::holder`]); its containers join the holder's namespaces by path.
//! * A container is an overlay rootfs over the image's unpacked layers (writable layer under
//!   `<lib>/shim/containers/<id>`), a runc bundle, `runc create`/`start` under the shim's runc
//!   root, and a detached log relay reading the container's stdout/stderr pipes into the CRI
//!   log. Pipes, never a host file: CRIU can checkpoint a container whose stdout is a pipe.
//! * Containers restored from a checkpoint are run by the engine instead of runc and recorded
//!   in the engine's state; the shim's record says which kind a container is.
//!
//! Nothing the containers need lives in the shim process: runc containers, relays and holders
//! survive a shim restart, and the new shim finds them again from the records
//! ([`store`]) and the pids' start times.

mod container;
mod exec;
pub mod health;
mod pod;
pub mod reaper;
pub mod restore;
pub mod runc;
pub mod spec;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cpengine::container::StateRoot;

use crate::checkpoint::Checkpointer;
use crate::domain::*;
use crate::error::{Result, ShimError};
use crate::locks::KeyedLocks;

use self::reaper::Reaper;
use self::runc::Runc;
use self::store::Store;

/// Settings of the standalone runtime.
#[derive(Debug, Clone)]
pub struct StandaloneConfig {
    pub state: StateRoot,
    /// The runc binary.
    pub runc: PathBuf,
    /// The binary re-executed as log relay and pod holder (the shim itself).
    pub exe: PathBuf,
}

/// The standalone runtime over an image store `I`.
#[derive(Debug)]
pub struct Standalone<I> {
    cfg: StandaloneConfig,
    images: Arc<I>,
    store: Store,
    runc: Runc,
    reaper: Arc<Reaper>,
    locks: KeyedLocks,
    checkpointer: Arc<Checkpointer>,
}

impl<I: ImageBackend> Standalone<I> {
    /// Loads the persisted pods and containers and starts tracking the running ones. Must run
    /// inside the tokio runtime (the reaper is a task).
    pub fn new(
        cfg: StandaloneConfig,
        images: Arc<I>,
        checkpointer: Arc<Checkpointer>,
    ) -> Result<Self> {
        let store = Store::load(cfg.state.clone())?;
        for d in [
            Store::pods_dir(&cfg.state),
            Store::ctrs_dir(&cfg.state),
            store.runc_root(),
        ] {
            create_private_dir(&d)?;
        }
        let reaper = Reaper::start().map_err(|source| ShimError::Spawn {
            what: "the reaper (child subreaper)",
            source,
        })?;
        let runc = Runc {
            bin: cfg.runc.clone(),
            root: store.runc_root(),
        };
        let me = Self {
            cfg,
            images,
            store,
            runc,
            reaper,
            locks: KeyedLocks::default(),
            checkpointer,
        };
        let (pods, ctrs) = (me.store.pods().len(), me.store.ctrs().len());
        for c in me.store.ctrs() {
            if let Some(pid) = c.pid
                && c.phase != store::Phase::Exited
            {
                me.reaper.track(pid);
            }
        }
        tracing::info!(pods, containers = ctrs, state = %me.cfg.state.run.display(), "standalone runtime ready");
        Ok(me)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Creates a directory (and its parents) with mode 0700.
pub(crate) fn create_private_dir(d: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(d)
        .map_err(ShimError::fs("creating", d))
}

impl<I: ImageBackend> RuntimeBackend for Standalone<I> {
    fn version(&self) -> RuntimeVersion {
        RuntimeVersion {
            runtime_name: "cpengine".into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }
    }

    async fn conditions(&self) -> Vec<Condition> {
        health::conditions(&self.cfg).await
    }

    async fn run_pod(&self, spec: PodSpec) -> Result<String> {
        self.run_pod_impl(spec).await
    }

    async fn stop_pod(&self, id: &str) -> Result<()> {
        self.stop_pod_impl(id).await
    }

    async fn remove_pod(&self, id: &str) -> Result<()> {
        self.remove_pod_impl(id).await
    }

    async fn pod(&self, id: &str) -> Result<Pod> {
        let id = self.store.pod_id(id)?;
        let rec = self
            .store
            .pod(&id)
            .ok_or_else(|| ShimError::not_found("pod sandbox", &id))?;
        Ok(pod::to_pod(&rec))
    }

    async fn list_pods(&self, filter: PodFilter) -> Result<Vec<Pod>> {
        Ok(self
            .store
            .pods()
            .iter()
            .map(pod::to_pod)
            .filter(|p| filter.matches(p))
            .collect())
    }

    async fn create_container(&self, pod_id: &str, spec: ContainerSpec) -> Result<String> {
        self.create_container_impl(pod_id, spec).await
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        self.start_container_impl(id).await
    }

    async fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let id = self.store.ctr_id(id)?;
        let _lock = self.locks.lock(&id).await;
        self.stop_locked(&id, timeout).await
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let id = match self.store.ctr_id(id) {
            Ok(id) => id,
            // Removing what is already gone succeeds (the CRI asks for idempotence).
            Err(ShimError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _lock = self.locks.lock(&id).await;
        self.remove_locked(&id).await
    }

    async fn container(&self, id: &str) -> Result<ContainerInfo> {
        let id = self.store.ctr_id(id)?;
        let rec = self.refresh(&id)?;
        Ok(self.info(&rec))
    }

    async fn list_containers(&self, filter: ContainerFilter) -> Result<Vec<ContainerInfo>> {
        let mut out = Vec::new();
        for c in self.store.ctrs() {
            let rec = self.refresh(&c.id).unwrap_or(c);
            let info = self.info(&rec);
            if filter.matches(&info) {
                out.push(info);
            }
        }
        Ok(out)
    }

    async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecResult> {
        self.exec_sync_impl(id, cmd, timeout).await
    }

    async fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        self.stats_impl(id).await
    }

    async fn checkpoint_container(&self, req: CheckpointRequest) -> Result<()> {
        self.checkpoint_impl(req).await
    }

    async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let id = self.store.ctr_id(id)?;
        let _lock = self.locks.lock(&id).await;
        let rec = self.refresh(&id)?;
        // The CRI lets a runtime refuse a container that is not running; then no new log file
        // may appear.
        if rec.phase != store::Phase::Started || !container::rec_alive(&rec) {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let relay = rec.relay_pid.ok_or_else(|| {
            ShimError::FailedPrecondition(format!("container {id} has no log relay"))
        })?;
        let log = rec.log_path.clone();
        tokio::task::spawn_blocking(move || {
            cpengine::container::relay::reopen(relay, &log, Duration::from_secs(5))
        })
        .await
        .map_err(|e| ShimError::Internal(format!("reopening the log: {e}")))?
        .map_err(|e| ShimError::FailedPrecondition(format!("reopening the log of {id}: {e}")))
    }
}
