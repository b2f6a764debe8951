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
    #[arg(long, visible_alias = "ps-tree-cmd")]
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
    /// Show the container's mounts, from the OCI spec (--spec, or the archive's spec.dump).
    #[arg(long)]
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
    /// The views to build for a bare images directory: statistics default to its
    /// `stats-dump`, mounts need `--spec`.
    pub fn request(&self, images_dir: &Path) -> anyhow::Result<ViewRequest> {
        self.request_with_defaults(&images_dir.join("stats-dump"), None)
    }

    /// The views to build, with the statistics file and OCI spec to use when the flags name
    /// none (for an extracted archive: its top-level `stats-dump` and `spec.dump`). Only the
    /// process tree if nothing is selected.
    pub fn request_with_defaults(
        &self,
        default_stats: &Path,
        default_spec: Option<&Path>,
    ) -> anyhow::Result<ViewRequest> {
        let stats_path = self
            .stats_file
            .clone()
            .unwrap_or_else(|| default_stats.to_path_buf());
        let spec = self
            .spec
            .clone()
            .or_else(|| default_spec.map(Path::to_path_buf));
        if self.mounts && spec.is_none() {
            anyhow::bail!("--mounts needs the container's OCI spec: pass --spec <FILE>");
        }
        let mut req = ViewRequest {
            ps_tree: self.ps_tree || self.ps_tree_env || self.all,
            cmdline: true,
            env: self.ps_tree_env || self.all,
            files: self.files || self.all,
            sockets: self.sockets || self.all,
            memory: self.memory || self.all,
            stats: (self.stats || (self.all && stats_path.exists())).then_some(stats_path),
            mounts: if self.mounts || self.all { spec } else { None },
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
        Ok(req)
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
    let req = a.view.request(&a.images_dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    fn parse(args: &[&str]) -> Args {
        let mut v = vec!["inspect-images"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().a
    }

    #[test]
    fn no_view_flag_means_the_process_tree() {
        let a = parse(&["/img"]);
        let r = a.view.request(&a.images_dir).unwrap();
        assert!(r.ps_tree && r.cmdline && !r.env && !r.files && !r.memory);
        assert!(r.stats.is_none() && r.mounts.is_none() && r.search.is_none());
    }

    #[test]
    fn flags_select_views() {
        let a = parse(&[
            "/img",
            "--ps-tree-env",
            "--sockets",
            "--stats",
            "--search",
            "hunter2",
            "--max-hits",
            "3",
            "--pid",
            "7",
            "--json",
        ]);
        assert!(a.view.json);
        let r = a.view.request(&a.images_dir).unwrap();
        assert!(r.ps_tree && r.env && r.sockets && !r.files);
        assert_eq!(r.stats.as_deref(), Some(Path::new("/img/stats-dump")));
        let s = r.search.unwrap();
        assert_eq!(s.pattern, b"hunter2");
        assert_eq!((s.max_hits, s.pid, s.context), (3, Some(7), 32));
        assert!(parse(&["/img", "--ps-tree-cmd"]).view.ps_tree);
    }

    #[test]
    fn mounts_need_a_spec_unless_the_caller_has_one() {
        let a = parse(&["/img", "--mounts"]);
        let err = a.view.request(&a.images_dir).unwrap_err();
        assert!(err.to_string().contains("--spec"), "{err}");
        // An archive supplies spec.dump and its top-level stats-dump.
        let r = a
            .view
            .request_with_defaults(Path::new("/x/stats-dump"), Some(Path::new("/x/spec.dump")))
            .unwrap();
        assert_eq!(r.mounts.as_deref(), Some(Path::new("/x/spec.dump")));
        assert!(!r.ps_tree, "an explicit view replaces the default tree");
        let a = parse(&[
            "/img",
            "--mounts",
            "--spec",
            "/s.json",
            "--stats-file",
            "/t",
        ]);
        let r = a.view.request(&a.images_dir).unwrap();
        assert_eq!(r.mounts.as_deref(), Some(Path::new("/s.json")));
        assert!(r.stats.is_none(), "--stats-file alone selects nothing");
    }

    #[test]
    fn all_turns_on_everything_available() {
        let dir = tempfile::tempdir().unwrap();
        let a = parse(&[dir.path().to_str().unwrap(), "--all"]);
        let r = a.view.request(&a.images_dir).unwrap();
        assert!(r.ps_tree && r.env && r.files && r.sockets && r.memory);
        // No stats-dump there, no spec given: those views are left out, not errors.
        assert!(r.stats.is_none() && r.mounts.is_none() && r.search.is_none());
        std::fs::write(dir.path().join("stats-dump"), b"").unwrap();
        assert!(a.view.request(&a.images_dir).unwrap().stats.is_some());
    }
}
