//! `cpengine checkpoint`: a running container to a checkpoint archive.

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::Engine;
use cpengine::container::Container;
use cpengine::container::StateRoot;
use cpengine::rootfs::Base;
use cpengine::{ContainerCheckpointOptions, SharedProgress};

use crate::flags::{CriuArgs, VerbFlags};
use crate::values::{Compression, NetworkLock};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Id of the container (runc, containerd, CRI-O, or one cpengine restored).
    pub id: String,
    /// The archive to write (appears only when complete). It is signed with the node key
    /// (<state lib>/keys/node.ed25519, created on first use; see `cpengine key show`) for
    /// `cpengine restore --require-signed`.
    #[arg(long, short)]
    pub output: PathBuf,
    /// A runc state root to look in (repeatable). Default: /run/runc, /run/cpengine/runc and
    /// every /run/containerd/runc/<namespace>, after cpengine's own containers.
    #[arg(long = "runc-root", value_name = "DIR")]
    pub runc_roots: Vec<PathBuf>,
    /// For a plain-directory rootfs: the base (directory or tarball) to diff it against.
    #[arg(long, value_name = "DIR|TAR")]
    pub rootfs_base: Option<PathBuf>,
    /// Keep the container running after the checkpoint.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub leave_running: bool,
    /// Compression of the archive.
    #[arg(long, value_enum, default_value_t = Compression::None)]
    pub compress: Compression,
    /// Do not capture the rootfs changes.
    #[arg(long)]
    pub skip_rootfs: bool,
    /// Where CRIU's images are staged (default: beside the archive).
    #[arg(long, value_name = "DIR")]
    pub staging_dir: Option<PathBuf>,
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Stream CRIU's page images straight into the archive while CRIU dumps (one copy of
    /// the pages; uncompressed archives only). `false` stages the images first.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub stream_pages: bool,
    /// Freeze the container's cgroup with quick polling before CRIU seizes it. `false` lets
    /// CRIU freeze it (it polls the freezer every 100 ms).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "true|false")]
    pub fast_freeze: bool,
    /// How CRIU locks the container's network during the dump: iptables, nftables or skip.
    /// Default: skip, unless --tcp-established (then CRIU's default, iptables).
    #[arg(long, value_name = "METHOD", value_enum)]
    pub network_lock: Option<NetworkLock>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let engine = Engine::new().await?;
    let ctr = Container::find(&a.id, &a.runc_roots, state)?;
    let mut o = ContainerCheckpointOptions::new(a.output);
    o.flags = a.criu.into_flags(VerbFlags {
        leave_running: a.leave_running,
        network_lock: a.network_lock,
        ..VerbFlags::default()
    });
    o.rootfs_base = a.rootfs_base.map(Base::from_path);
    o.compression = a.compress.into();
    o.skip_rootfs = a.skip_rootfs;
    o.staging_dir = a.staging_dir;
    o.stream_pages = a.stream_pages;
    o.fast_freeze = a.fast_freeze;
    o.state = Some(state.clone());
    let bar = if a.json {
        None
    } else {
        crate::progress::Bar::on_tty("writing")
    };
    o.progress = bar.clone().map(|b| b as SharedProgress);
    let report = engine.checkpoint_container(&ctr, &o).await;
    if let Some(b) = &bar {
        b.finish();
    }
    let report = report?;
    crate::output::report(&report, a.json)?;
    Ok(ExitCode::SUCCESS)
}
