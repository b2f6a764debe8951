//! `cpengine dump`

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::{CheckpointOptions, Engine};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pid of the root of the process tree to checkpoint.
    pub pid: i32,
    /// Directory for CRIU's images (created 0700; must not already hold a checkpoint).
    #[arg(long, short = 'D')]
    pub images_dir: PathBuf,
    /// Keep the tree running after the checkpoint (default: CRIU kills it).
    #[arg(long)]
    pub leave_running: bool,
    /// Checkpoint established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow a tree that is a shell job (shares a session/terminal with its parent).
    #[arg(long)]
    pub shell_job: bool,
    /// Allow connected unix sockets whose peer is outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Checkpoint file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Pre-dump: copy the memory only and leave the tree running, tracking which pages change
    /// afterwards (needs the kernel's soft-dirty bit: `cpengine check` shows mem_track).
    #[arg(long)]
    pub pre_dump: bool,
    /// Images of an earlier pre-dump (absolute, or relative to --images-dir as CRIU takes it):
    /// pages unchanged since then are not copied again.
    #[arg(long, value_name = "DIR")]
    pub parent: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let engine = Engine::new().await?;
    let mut opts = CheckpointOptions::new(a.pid, a.images_dir);
    opts.leave_running = a.leave_running;
    opts.tcp_established = a.tcp_established;
    opts.shell_job = a.shell_job;
    opts.ext_unix_sk = a.ext_unix_sk;
    opts.file_locks = a.file_locks;
    opts.track_mem = a.parent.is_some();
    opts.parent_images = a.parent;
    let report = if a.pre_dump {
        engine.pre_dump(&opts).await?
    } else {
        engine.dump(&opts).await?
    };
    crate::output::report(&report, a.json)?;
    Ok(ExitCode::SUCCESS)
}
