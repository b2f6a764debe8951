//! Errors of the inspection views: each variant names the image or step that failed.

use std::io;
use std::path::PathBuf;

use criu_proto::image::ImageError;

/// Why a range of a process's memory cannot be read from the images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageAbsence {
    /// No pagemap run covers the address: CRIU did not dump it (untouched, file-backed and
    /// clean, or not mapped at all).
    NotDumped,
    /// The page was left for lazy restore and is not in the pages file.
    Lazy,
    /// The page is in the parent image set (pre-dump chain), which is not available.
    InParent,
}

impl std::fmt::Display for PageAbsence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotDumped => "not dumped",
            Self::Lazy => "left for lazy restore",
            Self::InParent => "in the parent images, which are missing",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("opening image {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("reading image {}", path.display())]
    Image { path: PathBuf, source: ImageError },
    #[error("image {} holds more than {limit} {what}", path.display())]
    TooMany {
        path: PathBuf,
        what: &'static str,
        limit: usize,
    },
    #[error("image {} is inconsistent: {reason}", path.display())]
    Inconsistent { path: PathBuf, reason: String },
    #[error(
        "pages file {} is truncated: {needed} bytes needed at offset {offset}, the file has {len}",
        path.display()
    )]
    PagesTruncated {
        path: PathBuf,
        offset: u64,
        needed: u64,
        len: u64,
    },
    #[error("reading pages file {}", path.display())]
    ReadPages { path: PathBuf, source: io::Error },
    #[error("memory of pid {pid} at {vaddr:#x} is {reason}")]
    PageNotDumped {
        pid: u32,
        vaddr: u64,
        reason: PageAbsence,
    },
    #[error(
        "memory range {start:#x}-{end:#x} of pid {pid} is over the read limit of {limit} bytes"
    )]
    RangeTooLarge {
        pid: u32,
        start: u64,
        end: u64,
        limit: u64,
    },
    #[error("no process with pid {pid} in the images")]
    NoSuchPid { pid: u32 },
    #[error("the search pattern is empty")]
    EmptyPattern,
    #[error("the search pattern is {len} bytes, over the limit of {limit}")]
    PatternTooLong { len: usize, limit: usize },
    #[error("reading OCI spec {}", path.display())]
    SpecRead { path: PathBuf, source: io::Error },
    #[error("OCI spec {} is over the limit of {limit} bytes", path.display())]
    SpecTooLarge { path: PathBuf, limit: u64 },
    #[error("parsing OCI spec {}", path.display())]
    SpecParse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("reading CRIU statistics {}", path.display())]
    Stats { path: PathBuf, source: ImageError },
    #[error("CRIU statistics {} hold no dump statistics", path.display())]
    NoDumpStats { path: PathBuf },
    #[error("inspection task failed")]
    Join(#[from] tokio::task::JoinError),
}
