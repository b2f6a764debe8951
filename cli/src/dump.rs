//! `cpengine dump`

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::{CheckpointOptions, Engine};

use crate::flags::{CriuArgs, VerbFlags};

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
    /// Allow a tree that is a shell job (shares a session/terminal with its parent).
    #[arg(long)]
    pub shell_job: bool,
    #[command(flatten)]
    pub criu: CriuArgs,
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
    opts.flags = a.criu.into_flags(VerbFlags {
        leave_running: a.leave_running,
        shell_job: a.shell_job,
        ..VerbFlags::default()
    });
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
