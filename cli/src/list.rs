//! `cpengine list`: the checkpoint archives in directories — by default the kubelet's — with
//! whose container they hold (checkpointctl's `list`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cpengine::archive;
use serde::Serialize;

/// Where the kubelet writes the archives of `POST /checkpoint/...`.
const KUBELET_CHECKPOINTS: &str = "/var/lib/kubelet/checkpoints";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directories to look in (their .tar, .tar.gz, .tgz and .tar.zst files) or archives.
    /// Default: the kubelet's /var/lib/kubelet/checkpoints.
    pub paths: Vec<PathBuf>,
    /// Print the list as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    archive: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    container: String,
    engine: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpointed: Option<String>,
    archive_bytes: u64,
}

fn is_archive_name(p: &Path) -> bool {
    let n = p
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    [".tar", ".tar.gz", ".tgz", ".tar.zst"]
        .iter()
        .any(|s| n.ends_with(s))
}

pub async fn run(a: Args) -> anyhow::Result<ExitCode> {
    let given = !a.paths.is_empty();
    let paths = if given {
        a.paths
    } else {
        vec![PathBuf::from(KUBELET_CHECKPOINTS)]
    };
    let mut files = Vec::new();
    for p in &paths {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.is_file() && is_archive_name(f))
                .collect();
            found.sort();
            files.extend(found);
        } else if p.is_file() {
            files.push(p.clone());
        } else if given {
            anyhow::bail!("{}: no such file or directory", p.display());
        }
    }
    let rows = tokio::task::spawn_blocking(move || {
        let mut rows = Vec::new();
        for f in files {
            match archive::read_info(&f) {
                Ok(info) => rows.push(Row {
                    namespace: info.identity.namespace.clone(),
                    pod: info.identity.pod.clone(),
                    container: info.identity.container_name.clone(),
                    engine: info.engine.to_string(),
                    checkpointed: (!info.config.checkpointed_time.is_zero())
                        .then(|| info.config.checkpointed_time.to_rfc3339_seconds()),
                    archive_bytes: info.archive_bytes,
                    archive: f,
                }),
                // One unreadable file does not hide the others.
                Err(e) => eprintln!("skipped {}: {e}", f.display()),
            }
        }
        rows
    })
    .await?;
    if a.json {
        crate::output::json(&rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no checkpoint archives in {}", join(&paths));
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = cpengine::inspect::Table::new([
        "namespace",
        "pod",
        "container",
        "engine",
        "checkpointed",
        "size",
        "archive",
    ]);
    for r in &rows {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        table.row([
            or_dash(&r.namespace),
            or_dash(&r.pod),
            r.container.clone(),
            r.engine.clone(),
            or_dash(&r.checkpointed),
            cpengine::report::human_bytes(r.archive_bytes),
            r.archive.display().to_string(),
        ]);
    }
    print!("{table}");
    Ok(ExitCode::SUCCESS)
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn archive_names() {
        for n in [
            "a.tar",
            "checkpoint-x_y-z-2026-11-22T10:00:00Z.tar",
            "b.tar.zst",
            "c.tgz",
        ] {
            assert!(super::is_archive_name(std::path::Path::new(n)), "{n}");
        }
        for n in ["a.txt", "tar", "a.tar.bak"] {
            assert!(!super::is_archive_name(std::path::Path::new(n)), "{n}");
        }
    }
}
