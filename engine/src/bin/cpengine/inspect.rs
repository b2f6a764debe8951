//! `cpengine inspect`: what a checkpoint archive holds (checkpointctl's `show` view).
//!
//! The archive is read in one streaming pass ([`cpengine::archive::read_info_with`]); a
//! [`View`] is built from it with one optional section per kind of detail, so deeper views
//! (process tree, files, sockets, mounts) are added as further flags and sections without
//! touching the others. Human output is a table; `--json` prints the [`View`].

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::archive::{self, ArchiveInfo, ReadOptions};
use cpengine::report::{DumpStats, human_bytes, ms};
use serde::Serialize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The checkpoint archive (plain, gzip or zstd tar; CRI-O, containerd, Podman or cpengine).
    pub archive: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
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
        push_table(&mut out, &rows);
        if let Some(s) = &self.statistics {
            out.push_str("\nCRIU dump statistics\n");
            push_table(
                &mut out,
                &[
                    ("freezing time", ms(s.freezing)),
                    ("frozen time", ms(s.frozen)),
                    ("memdump time", ms(s.memdump)),
                    ("memwrite time", ms(s.memwrite)),
                    ("pages scanned", s.pages_scanned.to_string()),
                    ("pages written", s.pages_written.to_string()),
                ],
            );
        }
        out
    }
}

fn push_table(out: &mut String, rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        out.push_str(&format!("  {k:<w$}  {v}\n"));
    }
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let path = a.archive.clone();
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
    if a.json {
        crate::print_json(&view)?;
    } else {
        print!("{}", view.render());
    }
    Ok(ExitCode::SUCCESS)
}
