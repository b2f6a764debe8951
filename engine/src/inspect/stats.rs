//! CRIU's dump statistics (`stats-dump`), with checkpointctl's `statistics` keys: times in
//! microseconds as CRIU records them.

use std::path::Path;

use serde::Serialize;

use super::{InspectError, Result};

/// What CRIU measured while dumping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Statistics {
    /// µs to seize and freeze the tree.
    pub freezing_time: u32,
    /// µs the tree stayed frozen.
    pub frozen_time: u32,
    /// µs draining memory into page pipes.
    pub memdump_time: u32,
    /// µs writing pages out.
    pub memwrite_time: u32,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_pipes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_pipe_bufs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shpages_scanned: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shpages_skipped_parent: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shpages_written: Option<u64>,
}

/// Reads the dump statistics from a `stats-dump` file.
pub fn statistics(path: &Path) -> Result<Statistics> {
    let entry = crate::report::read_stats(path).map_err(|source| InspectError::Stats {
        path: path.to_path_buf(),
        source,
    })?;
    let d = entry.dump.ok_or_else(|| InspectError::NoDumpStats {
        path: path.to_path_buf(),
    })?;
    Ok(Statistics {
        freezing_time: d.freezing_time,
        frozen_time: d.frozen_time,
        memdump_time: d.memdump_time,
        memwrite_time: d.memwrite_time,
        pages_scanned: d.pages_scanned,
        pages_skipped_parent: d.pages_skipped_parent,
        pages_written: d.pages_written,
        pages_lazy: d.pages_lazy,
        page_pipes: d.page_pipes,
        page_pipe_bufs: d.page_pipe_bufs,
        shpages_scanned: d.shpages_scanned,
        shpages_skipped_parent: d.shpages_skipped_parent,
        shpages_written: d.shpages_written,
    })
}
