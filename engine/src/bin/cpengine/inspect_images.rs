//! `cpengine inspect-images`: forensic views of a CRIU images directory.
//!
//! The view flags live in [`ViewArgs`] so `inspect <ARCHIVE>` can flatten the same set once
//! an archive is extracted to an images directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use cpengine::inspect::{self, Limits, SearchOptions, ViewRequest};

/// Which views to show (shared by every inspect-style command).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ViewArgs {
    /// Show the process tree with each process's command line.
    #[arg(long)]
    pub ps_tree: bool,
    /// Show the process tree with each process's environment (implies --ps-tree).
    #[arg(long)]
    pub ps_tree_env: bool,
    /// Show the open files of each process.
    #[arg(long)]
    pub files: bool,
    /// Show the sockets of each process.
    #[arg(long)]
    pub sockets: bool,
    /// Show the container's mounts, from the OCI spec given with --spec.
    #[arg(long, requires = "spec")]
    pub mounts: bool,
    /// OCI runtime spec of the container (spec.dump or config.json).
    #[arg(long, value_name = "FILE")]
    pub spec: Option<PathBuf>,
    /// Show CRIU's dump statistics.
    #[arg(long)]
    pub stats: bool,
    /// Statistics file to read (default: stats-dump in the images directory).
    #[arg(long, value_name = "FILE")]
    pub stats_file: Option<PathBuf>,
    /// Show each process's mappings and dumped pages.
    #[arg(long)]
    pub memory: bool,
    /// Search the dumped memory of every process for this string.
    #[arg(long, value_name = "STRING")]
    pub search: Option<String>,
    /// Bytes of context shown around each search match.
    #[arg(long, value_name = "BYTES", default_value_t = 32)]
    pub search_context: usize,
    /// Stop the search after this many matches.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_hits: usize,
    /// Search only the memory of this pid.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Show every view (the search only with --search, the mounts only with --spec, the
    /// statistics only if the file exists).
    #[arg(long)]
    pub all: bool,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl ViewArgs {
    /// The views to build for `images_dir`; the process tree alone if nothing is selected.
    pub fn request(&self, images_dir: &Path) -> ViewRequest {
        let stats_path = self
            .stats_file
            .clone()
            .unwrap_or_else(|| images_dir.join("stats-dump"));
        let mut req = ViewRequest {
            ps_tree: self.ps_tree || self.ps_tree_env || self.all,
            cmdline: true,
            env: self.ps_tree_env || self.all,
            files: self.files || self.all,
            sockets: self.sockets || self.all,
            memory: self.memory || self.all,
            stats: (self.stats || (self.all && stats_path.exists())).then_some(stats_path),
            mounts: if self.mounts || self.all {
                self.spec.clone()
            } else {
                None
            },
            search: self.search.as_ref().map(|s| SearchOptions {
                pattern: s.as_bytes().to_vec(),
                context: self.search_context,
                max_hits: self.max_hits,
                pid: self.pid,
            }),
        };
        let nothing = !(req.ps_tree
            || req.files
            || req.sockets
            || req.memory
            || req.stats.is_some()
            || req.mounts.is_some()
            || req.search.is_some());
        if nothing {
            req.ps_tree = true;
        }
        req
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of CRIU images (what `cpengine dump` wrote, or an archive's checkpoint/).
    pub images_dir: PathBuf,
    #[command(flatten)]
    pub view: ViewArgs,
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let req = a.view.request(&a.images_dir);
    let result = inspect::inspect(a.images_dir.clone(), req, Limits::default())
        .await
        .with_context(|| format!("inspecting {}", a.images_dir.display()))?;
    if a.view.json {
        crate::print_json(&result)?;
    } else {
        print!("{result}");
    }
    Ok(ExitCode::SUCCESS)
}
