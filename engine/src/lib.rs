//! cpengine: checkpoint and restore of processes and containers, driving CRIU natively over
//! its RPC protocol.
//!
//! The data path of a checkpoint: [`Engine::dump`] vets the target and the images directory,
//! starts `criu swrk` on a socketpair ([`criu::Session`]), sends one DUMP request with the
//! options built by [`criu::convert`], answers CRIU's hooks, and returns a [`report`] with the
//! engine's phases and CRIU's own statistics. A restore is the mirror image, with the restored
//! tree re-parented to the caller (`rst_sibling`).

pub mod archive;
pub mod container;
pub mod criu;
mod error;
pub mod fault;
pub mod host;
pub mod images;
pub mod inspect;
pub mod oci;
pub mod options;
pub mod policy;
pub(crate) mod process;
pub mod report;
pub mod rootfs;
pub(crate) mod tar;

// The host layer under the paths the rest of the crate and its users know.
pub(crate) use host::beneath;
pub use host::{cgroups, netlock, privilege, proc, sys};

pub use container::checkpoint::{
    ContainerCheckpointOptions, ContainerCheckpointReport, ImageInfo, PodInfo, SharedProgress,
};
pub use container::restore::{CheckpointDir, ContainerRestoreOptions, ContainerRestoreReport};
pub use criu_proto::image::ImageError;
pub use error::{Error, ErrorClass, Result};
pub use options::{CheckpointOptions, CriuFlags, RestoreOptions};
pub use report::{DumpReport, RestoreReport};

use criu::{AckAll, Criu, CriuVersion, Features, NotifyHandler};

/// A ready-to-use engine: a located CRIU of a supported version.
#[derive(Debug, Clone)]
pub struct Engine {
    criu: Criu,
    version: CriuVersion,
}

impl Engine {
    /// Finds CRIU and checks its version.
    pub async fn new() -> Result<Self> {
        let (criu, version) = Criu::detect().await?;
        Ok(Self { criu, version })
    }

    /// An engine over a specific CRIU whose version is already known.
    pub fn with_criu(criu: Criu, version: CriuVersion) -> Self {
        Self { criu, version }
    }

    pub fn criu(&self) -> &Criu {
        &self.criu
    }

    pub fn criu_version(&self) -> &CriuVersion {
        &self.version
    }

    /// FEATURE_CHECK for every feature cpengine knows.
    pub async fn features(&self) -> Result<Features> {
        Ok(self.criu.features(Features::ALL).await?)
    }

    /// Checkpoints a process tree.
    pub async fn dump(&self, opts: &CheckpointOptions) -> Result<DumpReport> {
        self.dump_with(opts, &mut AckAll).await
    }

    /// Checkpoints a process tree, answering CRIU's hooks with `handler`.
    pub async fn dump_with(
        &self,
        opts: &CheckpointOptions,
        handler: &mut dyn NotifyHandler,
    ) -> Result<DumpReport> {
        process::dump(&self.criu, Some(&self.version), opts, handler).await
    }

    /// Pre-dumps a process tree's memory (the tree left running, memory changes tracked from
    /// now on) for a later incremental [`Engine::dump`] whose `parent_images` points there;
    /// fails with [`Error::Unsupported`] without soft-dirty tracking, before touching the tree.
    pub async fn pre_dump(&self, opts: &CheckpointOptions) -> Result<DumpReport> {
        process::pre_dump(&self.criu, Some(&self.version), opts, &mut AckAll).await
    }

    /// Restores a process tree; the restored root becomes a child of this process.
    pub async fn restore(&self, opts: RestoreOptions) -> Result<RestoreReport> {
        self.restore_with(opts, &mut AckAll).await
    }

    /// Restores a process tree, answering CRIU's hooks with `handler`.
    pub async fn restore_with(
        &self,
        opts: RestoreOptions,
        handler: &mut dyn NotifyHandler,
    ) -> Result<RestoreReport> {
        process::restore(&self.criu, opts, handler).await
    }
}

/// The container operations: what the CLI and the shim call.
///
/// The operations on cpengine's own state (listing, loading, killing, deleting, recovering
/// after a crash) need no CRIU and are associated functions; checkpoint and restore are
/// methods on the located CRIU.
impl Engine {
    /// Checkpoints a running container into an archive at `opts.output` (see
    /// [`container::checkpoint::checkpoint`]).
    pub async fn checkpoint_container(
        &self,
        ctr: &container::Container,
        opts: &ContainerCheckpointOptions,
    ) -> Result<ContainerCheckpointReport> {
        container::checkpoint::checkpoint(self, ctr, opts).await
    }

    /// Restores a container from an opened checkpoint (see [`Engine::open_checkpoint`]).
    pub async fn restore_container(
        &self,
        ckpt: &CheckpointDir,
        opts: &ContainerRestoreOptions,
    ) -> Result<ContainerRestoreReport> {
        container::restore::restore(self, ckpt, opts).await
    }

    /// Restores a container from an archive path or a checkpoint image reference, the base
    /// image looked up in the image store unless `opts` names one.
    pub async fn restore_container_from(
        &self,
        source: &str,
        opts: &ContainerRestoreOptions,
        insecure: bool,
    ) -> Result<ContainerRestoreReport> {
        container::restore::restore_archive(self, source, opts, insecure).await
    }

    /// Extracts a checkpoint (an archive file named by an absolute path, or a checkpoint image in the store or a
    /// registry) into `target` through the hardened archive reader; with `trust`, only an
    /// archive signed by one of those keys (see [`archive::sign`]).
    pub async fn open_checkpoint(
        source: &str,
        state: &container::StateRoot,
        target: &std::path::Path,
        insecure: bool,
        trust: Option<&archive::sign::TrustedKeys>,
    ) -> Result<(CheckpointDir, archive::Extracted)> {
        container::restore::open_source(source, state, target, insecure, trust).await
    }

    /// The node key of a state root (`<lib>/keys/node.ed25519`), created on first use: what
    /// checkpoints with that state root are signed with.
    pub fn node_key(
        state: &container::StateRoot,
    ) -> std::result::Result<archive::sign::NodeKey, archive::ArchiveError> {
        Ok(archive::sign::NodeKey::load_or_create(
            &archive::sign::node_key_path(&state.lib),
        )?)
    }

    /// The containers cpengine restored (`cpengine ps`).
    pub fn list_containers(state: &container::StateRoot) -> Vec<container::manage::Summary> {
        container::manage::list(state)
    }

    /// Sends `signal` to a running container's init.
    pub fn kill_container(
        state: &container::StateRoot,
        id: &str,
        signal: nix::sys::signal::Signal,
    ) -> std::result::Result<(), container::ContainerError> {
        container::manage::kill(state, id, signal)
    }

    /// Deletes a container cpengine manages: with `force` a running one is killed first.
    pub async fn delete_container(
        state: &container::StateRoot,
        id: &str,
        force: bool,
    ) -> std::result::Result<(), container::ContainerError> {
        container::manage::delete(state, id, force).await
    }

    /// Finishes or rolls back what a crashed engine left in flight: thaws a container left
    /// frozen, stops a CRIU worker whose caller died, removes staging and partial archives.
    pub fn recover(state: &container::StateRoot) -> Vec<container::Recovered> {
        container::journal::recover(state)
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| Error::BackgroundTask { source })?
}
