//! What an operation did and how long each part took: the engine's phases, CRIU's own
//! statistics (decoded from `stats-dump` / `stats-restore`) and the bytes written.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_proto::image::{self, ImageError, ImageReader};
use criu_proto::images::{DumpStatsEntry, RestoreStatsEntry, StatsEntry};
use serde::Serialize;

use crate::criu::{CriuVersion, HookTiming};

/// Serializes a duration as fractional milliseconds.
pub fn ser_duration_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1e3)
}

/// One timed step of an operation.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    #[serde(rename = "ms", serialize_with = "ser_duration_ms")]
    pub duration: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
}

impl Phase {
    pub fn new(name: impl Into<String>, duration: Duration) -> Self {
        Self {
            name: name.into(),
            duration,
            bytes: None,
        }
    }

    pub fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = Some(bytes);
        self
    }
}

/// CRIU's dump statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DumpStats {
    /// Seizing/freezing the tree.
    #[serde(rename = "freezing_ms", serialize_with = "ser_duration_ms")]
    pub freezing: Duration,
    /// From frozen until resumed or killed: the workload's downtime.
    #[serde(rename = "frozen_ms", serialize_with = "ser_duration_ms")]
    pub frozen: Duration,
    /// Draining memory into page pipes.
    #[serde(rename = "memdump_ms", serialize_with = "ser_duration_ms")]
    pub memdump: Duration,
    /// Writing pages out.
    #[serde(rename = "memwrite_ms", serialize_with = "ser_duration_ms")]
    pub memwrite: Duration,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub page_pipes: u64,
    pub page_pipe_bufs: u64,
    pub shpages_scanned: u64,
    pub shpages_written: u64,
}

impl From<DumpStatsEntry> for DumpStats {
    fn from(e: DumpStatsEntry) -> Self {
        let us = |v: u32| Duration::from_micros(v.into());
        Self {
            freezing: us(e.freezing_time),
            frozen: us(e.frozen_time),
            memdump: us(e.memdump_time),
            memwrite: us(e.memwrite_time),
            pages_scanned: e.pages_scanned,
            pages_skipped_parent: e.pages_skipped_parent,
            pages_written: e.pages_written,
            pages_lazy: e.pages_lazy,
            page_pipes: e.page_pipes.unwrap_or(0),
            page_pipe_bufs: e.page_pipe_bufs.unwrap_or(0),
            shpages_scanned: e.shpages_scanned.unwrap_or(0),
            shpages_written: e.shpages_written.unwrap_or(0),
        }
    }
}

impl DumpStats {
    /// The statistics as report rows (label, value), for human output.
    pub fn rows(&self, page_size: u64) -> Vec<(String, String)> {
        let pages = self.pages_written * page_size;
        vec![
            ("freezing time".into(), ms(self.freezing)),
            ("frozen time".into(), ms(self.frozen)),
            ("memdump time".into(), ms(self.memdump)),
            ("memwrite time".into(), ms(self.memwrite)),
            ("pages scanned".into(), self.pages_scanned.to_string()),
            (
                "pages written".into(),
                format!("{} ({})", self.pages_written, human_bytes(pages)),
            ),
            ("pages lazy".into(), self.pages_lazy.to_string()),
            (
                "memory write rate".into(),
                rate(pages, self.memdump + self.memwrite),
            ),
        ]
    }
}

/// CRIU's restore statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreStats {
    #[serde(rename = "forking_ms", serialize_with = "ser_duration_ms")]
    pub forking: Duration,
    #[serde(rename = "restore_ms", serialize_with = "ser_duration_ms")]
    pub restore: Duration,
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    pub pages_restored: u64,
}

impl From<RestoreStatsEntry> for RestoreStats {
    fn from(e: RestoreStatsEntry) -> Self {
        let us = |v: u32| Duration::from_micros(v.into());
        Self {
            forking: us(e.forking_time),
            restore: us(e.restore_time),
            pages_compared: e.pages_compared,
            pages_skipped_cow: e.pages_skipped_cow,
            pages_restored: e.pages_restored.unwrap_or(0),
        }
    }
}

/// Reads a CRIU stats file (`stats-dump` or `stats-restore`).
pub fn read_stats(path: &Path) -> Result<StatsEntry, ImageError> {
    let f = std::fs::File::open(path)?;
    decode_stats(std::io::BufReader::new(f))
}

/// Decodes a CRIU stats image from any reader (e.g. a member of a checkpoint archive).
pub fn decode_stats(r: impl std::io::Read) -> Result<StatsEntry, ImageError> {
    ImageReader::new(r, image::Header::Service(image::magic::STATS))?.one()
}

/// The result of a checkpoint of a process tree.
#[derive(Debug, Clone, Serialize)]
pub struct DumpReport {
    pub pid: i32,
    pub images_dir: PathBuf,
    pub leave_running: bool,
    pub criu_version: Option<CriuVersion>,
    pub phases: Vec<Phase>,
    #[serde(rename = "total_ms", serialize_with = "ser_duration_ms")]
    pub total: Duration,
    pub hooks: Vec<HookTiming>,
    /// CRIU's statistics; `None` only if CRIU did not write them.
    pub criu: Option<DumpStats>,
    /// Bytes of image files written.
    pub images_bytes: u64,
    pub images_files: u64,
    pub page_size: u64,
    /// When the engine had the tree running again (its freezer cgroup thawed) after a
    /// leave-running dump; for measuring the workload's downtime.
    #[serde(skip)]
    pub resumed_at: Option<std::time::Instant>,
}

impl DumpReport {
    /// Bytes of memory pages written by CRIU.
    pub fn pages_bytes(&self) -> u64 {
        self.criu
            .as_ref()
            .map_or(0, |s| s.pages_written * self.page_size)
    }
}

/// The result of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Host pid of the restored root.
    pub pid: i32,
    pub images_dir: PathBuf,
    pub phases: Vec<Phase>,
    #[serde(rename = "total_ms", serialize_with = "ser_duration_ms")]
    pub total: Duration,
    pub hooks: Vec<HookTiming>,
    pub criu: Option<RestoreStats>,
    /// Pid of the lazy-pages daemon still copying the memory in (lazy restores).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lazy_pages_pid: Option<i32>,
}

/// Formats a byte count in binary units.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Formats a duration in milliseconds.
/// The rows of a report's phase table: one per phase, then the total.
pub fn phase_rows(phases: &[Phase], total: Duration) -> Vec<(String, String)> {
    phases
        .iter()
        .map(|p| (p.name.clone(), ms(p.duration)))
        .chain(std::iter::once(("total".to_owned(), ms(total))))
        .collect()
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Formats a throughput in decimal megabytes per second.
pub fn rate(bytes: u64, d: Duration) -> String {
    if d.is_zero() {
        return "-".into();
    }
    format!("{:.0} MB/s", bytes as f64 / d.as_secs_f64() / 1e6)
}

/// Writes `rows` as two aligned columns.
pub(crate) fn table(f: &mut fmt::Formatter<'_>, rows: &[(String, String)]) -> fmt::Result {
    write_table(f, rows, 0)
}

/// Writes `rows` as two columns indented by two spaces, the keys padded to the longest key
/// or to `min_width`: the one key/value layout of every human report.
pub fn write_table<K: AsRef<str>, V: fmt::Display>(
    out: &mut impl fmt::Write,
    rows: &[(K, V)],
    min_width: usize,
) -> fmt::Result {
    let w = rows
        .iter()
        .map(|(k, _)| k.as_ref().len())
        .max()
        .unwrap_or(0)
        .max(min_width);
    for (k, v) in rows {
        writeln!(out, "  {:<w$}  {v}", k.as_ref())?;
    }
    Ok(())
}

impl fmt::Display for DumpReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dumped pid {} to {}{}",
            self.pid,
            self.images_dir.display(),
            if self.leave_running {
                " (left running)"
            } else {
                ""
            }
        )?;
        let rows = phase_rows(&self.phases, self.total);
        writeln!(f, "phases")?;
        table(f, &rows)?;
        if let Some(s) = &self.criu {
            writeln!(f, "criu dump statistics")?;
            table(f, &s.rows(self.page_size))?;
        }
        writeln!(f, "images")?;
        table(
            f,
            &[
                ("files".into(), self.images_files.to_string()),
                ("bytes".into(), human_bytes(self.images_bytes)),
            ],
        )
    }
}

impl fmt::Display for RestoreReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "restored {} as pid {}",
            self.images_dir.display(),
            self.pid
        )?;
        let rows = phase_rows(&self.phases, self.total);
        writeln!(f, "phases")?;
        table(f, &rows)?;
        if let Some(s) = &self.criu {
            writeln!(f, "criu restore statistics")?;
            table(
                f,
                &[
                    ("forking time".into(), ms(s.forking)),
                    ("restore time".into(), ms(s.restore)),
                    ("pages restored".into(), s.pages_restored.to_string()),
                    ("pages compared".into(), s.pages_compared.to_string()),
                ],
            )?;
        }
        if let Some(pid) = self.lazy_pages_pid {
            writeln!(
                f,
                "memory is copied in lazily by the lazy-pages daemon (pid {pid}), which exits when done"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
    }

    #[test]
    fn dump_stats_from_entry_converts_microseconds() {
        let s = DumpStats::from(DumpStatsEntry {
            freezing_time: 226,
            frozen_time: 11_919,
            memdump_time: 1674,
            memwrite_time: 193,
            pages_scanned: 50,
            pages_written: 36,
            ..Default::default()
        });
        assert_eq!(s.frozen, Duration::from_micros(11_919));
        assert_eq!(s.pages_written, 36);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["frozen_ms"], 11.919);
    }
}
