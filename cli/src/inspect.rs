//! `cpengine inspect`: what a checkpoint archive holds (checkpointctl's `show` view).
//!
//! The archive is read in one streaming pass ([`cpengine::archive::read_info_with`]); a
//! [`View`] is built from it with one optional section per kind of detail, so deeper views
//! (process tree, files, sockets, mounts) are added as further flags and sections without
//! touching the others. Human output is a table; `--json` prints the [`View`].

use std::path::{Path, PathBuf};

use anyhow::Context;
use cpengine::inspect::{self, Limits, SearchOptions, ViewRequest};
use std::process::ExitCode;

use cpengine::archive::{self, ArchiveInfo, ReadOptions};
use cpengine::report::{DumpStats, human_bytes, ms};
use serde::Serialize;

use crate::output::table;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A checkpoint archive (plain, gzip or zstd tar; CRI-O, containerd, Podman or cpengine),
    /// or a directory of CRIU images (what `cpengine dump` wrote).
    pub target: PathBuf,
    #[command(flatten)]
    pub view: ViewArgs,
}

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
    /// Whether any deep view was asked for.
    pub fn any(&self) -> bool {
        self.ps_tree
            || self.ps_tree_env
            || self.files
            || self.sockets
            || self.mounts
            || self.stats
            || self.memory
            || self.search.is_some()
            || self.all
    }

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

/// Sizes, as checkpointctl names them.
#[derive(Debug, Serialize)]
pub struct Sizes {
    pub total_size: u64,
    pub memory_pages_size: u64,
    pub amd_gpu_memory_pages_size: u64,
    pub root_fs_diff_size: u64,
}

/// The inspect view; JSON keys follow checkpointctl's `inspect --format json` where they
/// overlap.
#[derive(Debug, Serialize)]
pub struct View {
    pub archive: PathBuf,
    pub container_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub image: String,
    pub id: String,
    pub runtime: String,
    pub created: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpointed: Option<String>,
    pub engine: String,
    pub compression: String,
    pub checkpoint_size: Sizes,
    /// CRIU's dump statistics from `stats-dump`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistics: Option<DumpStats>,
}

impl View {
    pub fn new(info: &ArchiveInfo) -> anyhow::Result<Self> {
        let c = &info.config;
        let created = match info.engine {
            // CRI-O's CREATED is its annotation, verbatim.
            archive::EngineKind::CriO => {
                archive::annotation(&info.spec, archive::spec::CRIO_CREATED)
                    .map(str::to_owned)
                    .unwrap_or_else(|| c.created_time.to_rfc3339_seconds())
            }
            _ => c.created_time.to_rfc3339_seconds(),
        };
        let statistics = info
            .dump_stats()
            .map_err(|e| anyhow::anyhow!("decoding stats-dump: {e}"))?;
        Ok(Self {
            archive: info.path.clone(),
            container_name: info.identity.container_name.clone(),
            pod: info.identity.pod.clone(),
            namespace: info.identity.namespace.clone(),
            image: c.rootfs_image_name.clone(),
            id: c.id.chars().take(12).collect(),
            runtime: c.runtime.clone(),
            created,
            checkpointed: (!c.checkpointed_time.is_zero())
                .then(|| c.checkpointed_time.to_rfc3339_seconds()),
            engine: info.engine.to_string(),
            compression: info.compression.to_string(),
            checkpoint_size: Sizes {
                total_size: info.checkpoint_size,
                memory_pages_size: info.memory_pages_size,
                amd_gpu_memory_pages_size: info.amd_gpu_memory_pages_size,
                root_fs_diff_size: info.rootfs_diff_size,
            },
            statistics,
        })
    }

    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![("container", self.container_name.clone())];
        if let Some(p) = &self.pod {
            rows.push(("pod", p.clone()));
        }
        if let Some(n) = &self.namespace {
            rows.push(("namespace", n.clone()));
        }
        rows.extend([
            ("image", self.image.clone()),
            ("id", self.id.clone()),
            ("runtime", self.runtime.clone()),
            ("created", self.created.clone()),
        ]);
        if let Some(c) = &self.checkpointed {
            rows.push(("checkpointed", c.clone()));
        }
        rows.extend([
            ("engine", self.engine.clone()),
            ("compression", self.compression.clone()),
            (
                "checkpoint size",
                human_bytes(self.checkpoint_size.total_size),
            ),
            (
                "memory pages size",
                human_bytes(self.checkpoint_size.memory_pages_size),
            ),
        ]);
        if self.checkpoint_size.amd_gpu_memory_pages_size > 0 {
            rows.push((
                "amd gpu memory pages size",
                human_bytes(self.checkpoint_size.amd_gpu_memory_pages_size),
            ));
        }
        rows.push((
            "root fs diff size",
            human_bytes(self.checkpoint_size.root_fs_diff_size),
        ));
        let mut out = format!(
            "Displaying container checkpoint data from {}\n\n",
            self.archive.display()
        );
        out.push_str(&table(&rows, 0));
        if let Some(s) = &self.statistics {
            out.push_str("\nCRIU dump statistics\n");
            out.push_str(&table(
                &[
                    ("freezing time", ms(s.freezing)),
                    ("frozen time", ms(s.frozen)),
                    ("memdump time", ms(s.memdump)),
                    ("memwrite time", ms(s.memwrite)),
                    ("pages scanned", s.pages_scanned.to_string()),
                    ("pages written", s.pages_written.to_string()),
                ],
                0,
            ));
        }
        out
    }
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    if a.target.is_dir() {
        let req = a.view.request(&a.target)?;
        let result = inspect::inspect(a.target.clone(), req, Limits::default())
            .await
            .with_context(|| format!("inspecting {}", a.target.display()))?;
        if a.view.json {
            crate::output::json(&result)?;
        } else {
            print!("{result}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let path = a.target.clone();
    let info = tokio::task::spawn_blocking(move || {
        let bar = crate::progress::Bar::on_tty("reading");
        let opts = ReadOptions {
            progress: bar.as_deref().map(|b| b as &dyn archive::Progress),
            ..Default::default()
        };
        let r = archive::read_info_with(&path, &opts);
        if let Some(b) = bar {
            b.finish();
        }
        r
    })
    .await??;
    let view = View::new(&info)?;
    if !a.view.any() {
        if a.view.json {
            crate::output::json(&view)?;
        } else {
            print!("{}", view.render());
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Deep views read the CRIU images: extract the archive (safely, size-capped) to a
    // private temp dir first.
    let tmp = tempfile::Builder::new()
        .prefix("cpengine-inspect-")
        .tempdir_in("/var/tmp")?;
    let (path, target) = (a.target.clone(), tmp.path().join("x"));
    let extracted = tokio::task::spawn_blocking(move || {
        let bar = crate::progress::Bar::on_tty("extracting");
        let opts = ReadOptions {
            progress: bar.as_deref().map(|b| b as &dyn archive::Progress),
            ..Default::default()
        };
        let r = archive::extract_with(&path, &target, &opts);
        if let Some(b) = bar {
            b.finish();
        }
        r
    })
    .await??;
    let req = a.view.request_with_defaults(
        &extracted.root.join("stats-dump"),
        Some(&extracted.spec_path),
    )?;
    let result = inspect::inspect(extracted.images_dir.clone(), req, Limits::default())
        .await
        .with_context(|| format!("inspecting the images in {}", a.target.display()))?;
    if a.view.json {
        let mut v = serde_json::to_value(&view)?;
        if let (Some(obj), serde_json::Value::Object(deep)) =
            (v.as_object_mut(), serde_json::to_value(&result)?)
        {
            obj.extend(deep);
        }
        crate::output::json(&v)?;
    } else {
        print!("{}", view.render());
        println!();
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
        let mut v = vec!["inspect"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).unwrap().a
    }

    #[test]
    fn no_view_flag_means_the_process_tree() {
        let a = parse(&["/img"]);
        let r = a.view.request(&a.target).unwrap();
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
        let r = a.view.request(&a.target).unwrap();
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
        let err = a.view.request(&a.target).unwrap_err();
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
        let r = a.view.request(&a.target).unwrap();
        assert_eq!(r.mounts.as_deref(), Some(Path::new("/s.json")));
        assert!(r.stats.is_none(), "--stats-file alone selects nothing");
    }

    #[test]
    fn all_turns_on_everything_available() {
        let dir = tempfile::tempdir().unwrap();
        let a = parse(&[dir.path().to_str().unwrap(), "--all"]);
        let r = a.view.request(&a.target).unwrap();
        assert!(r.ps_tree && r.env && r.files && r.sockets && r.memory);
        // No stats-dump there, no spec given: those views are left out, not errors.
        assert!(r.stats.is_none() && r.mounts.is_none() && r.search.is_none());
        std::fs::write(dir.path().join("stats-dump"), b"").unwrap();
        assert!(a.view.request(&a.target).unwrap().stats.is_some());
    }
}
