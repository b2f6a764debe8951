//! `cpengine restore`

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::{Engine, RestoreOptions};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of CRIU images written by `cpengine dump`.
    #[arg(long, short = 'D')]
    pub images_dir: PathBuf,
    /// Restore established TCP connections (needed if the dump had them).
    #[arg(long)]
    pub tcp_established: bool,
    /// The tree was dumped as a shell job.
    #[arg(long)]
    pub shell_job: bool,
    /// Restore connected unix sockets whose peer was outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Restore file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let engine = Engine::new().await?;
    let mut opts = RestoreOptions::new(a.images_dir);
    opts.tcp_established = a.tcp_established;
    opts.shell_job = a.shell_job;
    opts.ext_unix_sk = a.ext_unix_sk;
    opts.file_locks = a.file_locks;
    let report = engine.restore(opts).await?;
    if a.json {
        crate::print_json(&report)?;
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}
