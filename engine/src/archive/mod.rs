//! The Kubernetes container checkpoint archive: writer, reader and safe extraction.
//!
//! # Layout
//!
//! A plain tar stream (optionally gzip- or zstd-compressed as a whole) with relative member
//! names, never `./`:
//!
//! | member | content |
//! |---|---|
//! | `checkpoint/` | an explicit directory entry (checkpointctl requires one), then CRIU's image files |
//! | `config.dump` | [`ConfigDump`] JSON |
//! | `spec.dump` | the bundle's OCI runtime spec, with cpengine's annotations ([`annotate_spec`]) |
//! | `stats-dump` | CRIU's dump statistics image |
//! | `dump.log` | CRIU's dump log |
//! | `rootfs-diff.tar` | the container's changed files, an uncompressed tar without whiteouts |
//! | `deleted.files` | JSON array of absolute in-container paths deleted from the image |
//! | extras | e.g. `status.dump`, as the caller supplies them |
//! | `cpengine-signature.json` | last, when signed: the member manifest and its ed25519 signature ([`sign`]) |
//!
//! The outer tar holds only regular files (mode 0600) and directories (mode 0700), owned by
//! uid/gid 0: containerd's restore skips every other type, and the archive holds every memory
//! page of the workload, so it is as secret as the workload's memory. Deletions go to
//! `deleted.files` (what CRI-O and Podman apply), not to whiteouts: a tar with whiteouts would
//! leave stray `.wh.*` files under CRI-O and Podman, and containerd's restore through CRI is
//! deprecated and being removed.
//!
//! # Data path of a write ([`write_archive`])
//!
//! Everything is planned first (stat of each image file, the exact byte length of the nested
//! `rootfs-diff.tar`, the JSON members in memory), so the length of every member is known
//! before its header is written. Then one pass streams the members into the archive file: the
//! CRIU images are copied with `copy_file_range` when nothing is compressed, and the rootfs
//! diff is generated inside the outer tar directly from the container's files, without an
//! intermediate file. The archive is written to a temp file beside the destination, fsynced,
//! renamed over the destination and the directory fsynced: the destination holds either the
//! complete archive or whatever it held before.
//!
//! # Reading ([`read_info`], [`extract`], [`visit`])
//!
//! Compression is sniffed from magic bytes. Caps ([`Limits`]) on members, sizes and name
//! lengths are enforced from the headers before anything is allocated or written. Extraction
//! resolves every member beneath the target with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` and refuses links, devices, traversal and duplicates with typed
//! errors before writing anything for that member.
//!
//! # Provenance ([`sign`])
//!
//! A writer given a node key appends `cpengine-signature.json` as the last member: an
//! ed25519 signature over the name, type, size and SHA-256 of every other member. An
//! extraction given trusted keys refuses an archive that is unsigned, signed by another key,
//! or whose members differ from what was signed.

mod builder;
mod compress;
mod config;
mod read;
pub mod sign;
pub mod spec;
// The tar layer under the names the archive code uses.
pub(crate) use crate::tar::format as tarfmt;
pub(crate) use crate::tar::reader as tarread;
mod write;

use std::io;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use builder::{ArchiveBuilder, StreamMember};
pub(crate) use compress::decoder as compress_decoder;
pub use config::{ConfigDump, GoTime, StatusDump, StatusImage, StatusMetadata};
pub use read::{
    ArchiveInfo, Extracted, Limits, MAX_JSON_BYTES, Member, MemberKind, ReadOptions, extract,
    extract_with, read_info, read_info_with, read_json_member, visit,
};
pub use spec::{
    CheckpointAnnotations, EngineKind, Identity, SpecError, annotate_spec, annotation, annotations,
    detect_engine, identity,
};
pub use write::{ArchiveInput, WriteOptions, WriteReport, temp_prefix, write_archive};

/// Well-known member names.
pub mod names {
    pub const CHECKPOINT_DIR: &str = "checkpoint";
    /// CRIU's image that every dump writes (in `checkpoint/`).
    pub const INVENTORY_IMG: &str = "inventory.img";
    pub const CONFIG_DUMP: &str = "config.dump";
    pub const SPEC_DUMP: &str = "spec.dump";
    pub const STATS_DUMP: &str = "stats-dump";
    pub const DUMP_LOG: &str = "dump.log";
    pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
    pub const DELETED_FILES: &str = "deleted.files";
    pub const STATUS_DUMP: &str = "status.dump";
    pub const NETWORK_STATUS: &str = "network.status";
    /// Log copies, in the order a reader looks for them (CRI-O, Podman, containerd).
    pub const LOGS: [&str; 3] = ["io.kubernetes.cri-o.LogPath", "ctr.log", "container.log"];
}

/// Compression of the whole archive stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar: what the kubelet, CRI-O and containerd expect.
    #[default]
    None,
    Gzip,
    /// Multi-threaded zstd (Podman's default).
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "gzip" => Ok(Self::Gzip),
            "zstd" => Ok(Self::Zstd),
            other => Err(format!("unknown compression {other:?} (none, gzip, zstd)")),
        }
    }
}

/// Receives progress of a long operation. The library calls it from the thread doing the work
/// every few megabytes; it must be cheap.
pub trait Progress: Sync {
    /// `done` of `total` bytes processed (`total` is 0 when unknown).
    fn update(&self, done: u64, total: u64);
}

/// Why a member name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Nul,
    Newline,
    NotUtf8,
    Empty,
}

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Nul => "contains a NUL byte",
            Self::Newline => "contains a line break",
            Self::NotUtf8 => "is not UTF-8",
            Self::Empty => "is empty",
        })
    }
}

/// Errors of writing, reading and extracting archives; each variant names the step.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    // --- writing
    #[error("destination directory {} does not exist or is not a directory", path.display())]
    DestinationParent { path: PathBuf, source: io::Error },
    #[error("creating a temporary archive in {}", dir.display())]
    CreateTemp { dir: PathBuf, source: io::Error },
    #[error("reading the images directory {}", path.display())]
    ReadImagesDir { path: PathBuf, source: io::Error },
    #[error("images directory entry {} is not a regular file or directory", path.display())]
    UnsupportedImageFile { path: PathBuf },
    #[error("reading {}", path.display())]
    ReadSource { path: PathBuf, source: io::Error },
    #[error("invalid extra member {name:?}: {reason}")]
    BadExtraMember { name: String, reason: &'static str },
    #[error("encoding {member}")]
    EncodeJson {
        member: &'static str,
        source: serde_json::Error,
    },
    #[error("writing archive {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("nested {member} was planned at {planned} bytes but {written} were written")]
    SizeMismatch {
        member: &'static str,
        planned: u64,
        written: u64,
    },
    #[error("syncing {}", path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("renaming the finished archive to {}", path.display())]
    Rename { path: PathBuf, source: io::Error },

    // --- reading
    #[error("opening archive {}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("reading archive {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("archive {} ends early (truncated)", path.display())]
    Truncated { path: PathBuf },
    #[error("archive {} has an invalid tar header: {reason}", path.display())]
    BadHeader { path: PathBuf, reason: &'static str },
    #[error("archive has more than {limit} members")]
    TooManyMembers { limit: u64 },
    #[error("member {name} declares {size} bytes, over the limit of {limit}")]
    MemberTooLarge { name: String, size: u64, limit: u64 },
    #[error("archive members add up to more than {limit} bytes")]
    TotalTooLarge { limit: u64 },
    #[error("archive member names add up to more than {limit} bytes")]
    NamesTooLarge { limit: u64 },
    #[error("member {name} has {size} bytes, over the limit of {limit} for JSON")]
    JsonTooLarge { name: String, size: u64, limit: u64 },
    #[error("member name of {len} bytes is longer than the limit of {limit}")]
    PathTooLong { len: usize, limit: usize },
    #[error("tar extension header of {size} bytes is over the limit of {limit}")]
    ExtensionTooLarge { size: u64, limit: u64 },
    #[error("member name {name:?} {reason}")]
    BadName { name: String, reason: BadName },
    #[error("member name {name:?} is absolute")]
    AbsoluteName { name: String },
    #[error("member name {name:?} contains '..'")]
    Traversal { name: String },
    #[error("member {name} is a symbolic link, which checkpoint archives never contain")]
    SymlinkMember { name: String },
    #[error("member {name} is a hard link, which checkpoint archives never contain")]
    HardlinkMember { name: String },
    #[error("member {name} is a {kind}, which checkpoint archives never contain")]
    SpecialMember { name: String, kind: MemberKind },
    #[error("member {name} has unsupported tar type {flag:?}")]
    UnsupportedMember { name: String, flag: char },
    #[error("member {name} appears twice")]
    DuplicateMember { name: String },
    #[error("member {name} would be written through a symbolic link or outside the target")]
    ThroughSymlink { name: String },
    #[error("archive {} has no {name}", path.display())]
    MissingMember { path: PathBuf, name: &'static str },
    #[error("decoding {name}")]
    DecodeJson {
        name: String,
        source: serde_json::Error,
    },
    #[error("extraction target {} is not an empty directory", path.display())]
    TargetNotEmpty { path: PathBuf },
    #[error("extracting {name}")]
    Extract { name: String, source: io::Error },

    // --- provenance
    #[error(transparent)]
    Provenance(#[from] sign::ProvenanceError),
    #[error(transparent)]
    Key(#[from] sign::KeyError),
}
