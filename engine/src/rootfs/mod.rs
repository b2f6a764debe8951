//! The container's root filesystem changes: planning a diff, streaming it as a tar, applying it.
//!
//! # Model
//!
//! A [`RootfsDiff`] is a *plan*: metadata only (kind, mode, owner, mtime, xattrs, size, where
//! the data is on the host), made by a stat walk that is cheap enough to run while the
//! container is frozen. The data is read later, when the archive writer streams the plan into
//! `rootfs-diff.tar` ([`RootfsDiff::tar_size`] is exact, so the nested tar needs no temporary
//! file). Deletions are kept apart as absolute in-container paths for `deleted.files`, the
//! CRI-O/Podman convention: restore untars the diff first, then removes each listed path, so a
//! directory that has new content is never listed.
//!
//! * [`plan_overlay`] reads an overlayfs upper directory: whiteouts (0/0 character devices or
//!   the `trusted.overlay.whiteout` xattr) become deletions; an opaque directory
//!   (`trusted.overlay.opaque=y`) hides the lower layers, so the lower children it does not
//!   have become deletions; `trusted.overlay.*` xattrs describe overlay itself and are dropped,
//!   every other xattr (`security.capability`, `user.*`, …) is carried.
//! * [`plan_dir`] compares a plain rootfs directory (a bare runc bundle) with its base, a tree
//!   or a tarball.
//!
//! # The diff tar
//!
//! POSIX pax tar, uncompressed, without whiteouts, entries relative (`etc/motd`), directories
//! included for their own metadata. Ownership and modes are numeric, xattrs are
//! `SCHILY.xattr.*` records, hard links within the diff become tar hard links to the first
//! path of the inode. Sparse files are written as GNU sparse 1.0 pax members (only the data
//! segments are stored, located with `SEEK_DATA`/`SEEK_HOLE`); Go's archive/tar (CRI-O,
//! Podman, containerd) reads them, and [`apply`] re-creates the holes.
//!
//! # Apply
//!
//! [`apply`] extracts a diff into a rootfs with every path resolved in the rootfs as its root
//! (`openat2(RESOLVE_IN_ROOT)`), so the rootfs's own symlinks behave as inside the container
//! and nothing lands outside it; symlinks and hard links are allowed there. OCI whiteouts
//! (`.wh.<name>`, `.wh..wh..opq`) are honoured when present (containerd's diffs), then every
//! `deleted.files` path is removed without following symlinks. The bytes written and the
//! entries are capped ([`ApplyLimits`]): a compressed diff cannot fill the disk.
//!
//! # Set-id files and device nodes
//!
//! A diff is untrusted input that is written as root, so two kinds of entry are decided here:
//!
//! * **Set-uid/set-gid files are kept** (mode bits and owner as in the diff). Inside the
//!   container's own root they are the container's business: its image may ship `su` or
//!   `ping`, and a process inside may have installed `sudo`; dropping the bits would break the
//!   restored workload. They are no way out of the container, because nothing applied here is
//!   reachable from the host by anyone but root: a restored rootfs is mounted under
//!   `<run>/containers/<id>` and its layers live under `<lib>/containers/<id>`, both 0700, and
//!   unpacked image layers are kept in a 0700 cache. And whoever writes the archive already
//!   controls every process of the restored container (their memory is in it), so a set-uid
//!   file in the diff grants nothing inside the container it did not already have.
//! * **Device nodes are refused** (a typed [`RootfsError::DeviceNode`]), except the harmless
//!   pseudo-devices runc creates in every container anyway ([`DEVICE_ALLOWLIST`]) and 0:0, the
//!   overlay whiteout. A block or character device node gives raw access to host hardware to
//!   whoever can open it; a restored container's device cgroup is not the original runtime's,
//!   so a node planted in its rootfs could open the host's disks. FIFOs are plain files for
//!   this purpose and are kept.

mod apply;
mod plan;
mod tar;

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;

pub use apply::{ApplyLimits, ApplyReport, DEVICE_ALLOWLIST, apply, apply_layer, apply_with};
pub use plan::{Base, default_excludes, plan_dir, plan_overlay};
pub(crate) use tar::write_diff;
pub use tar::write_tar;

/// What a diff entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum EntryKind {
    File,
    Dir,
    Symlink {
        target: PathBuf,
    },
    /// A second name of a file earlier in the diff (`target` is its relative path).
    Hardlink {
        target: PathBuf,
    },
    CharDevice {
        major: u32,
        minor: u32,
    },
    BlockDevice {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One planned member of the diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiffEntry {
    /// Relative path in the rootfs, e.g. `etc/motd`.
    pub path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes carried (never `trusted.overlay.*`).
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Size of a regular file when planned (0 for everything else).
    pub size: u64,
    /// Where the data is read from on the host.
    pub source: PathBuf,
    /// The directory `source` is read beneath (the upper dir, a lower layer or the rootfs):
    /// the writer resolves `source` from it without passing a symlink.
    pub source_root: PathBuf,
    /// `(st_dev, st_ino)` of the data file when planned; the writer reads only that inode.
    pub source_inode: (u64, u64),
    /// Data segments `(offset, length)` of a sparse file; `None` for a dense one.
    pub sparse: Option<Vec<(u64, u64)>>,
}

/// A planned rootfs diff.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RootfsDiff {
    pub entries: Vec<DiffEntry>,
    /// Absolute in-container paths removed from the base (`deleted.files`).
    pub deleted: Vec<String>,
    /// Paths that exist but cannot be carried in a tar (sockets), relative.
    pub skipped: Vec<PathBuf>,
}

impl RootfsDiff {
    /// Whether there is nothing to carry (then no `rootfs-diff.tar` is written).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.deleted.is_empty()
    }

    /// The exact byte length of the diff tar [`write_tar`] produces.
    pub fn tar_size(&self) -> u64 {
        tar::tar_size(self)
    }

    /// Bytes of file data in the plan (sparse files count their data segments).
    pub fn data_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .map(|e| match &e.sparse {
                Some(s) => s.iter().map(|(_, l)| l).sum(),
                None => e.size,
            })
            .sum()
    }

    /// `deleted.files`: a JSON array of the deleted paths.
    pub fn deleted_json(&self) -> Vec<u8> {
        serde_json::to_vec(&self.deleted).unwrap_or_else(|_| b"[]".to_vec())
    }
}

/// Errors of planning and applying a rootfs diff.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("reading {}", path.display())]
    Walk { path: PathBuf, source: io::Error },
    #[error("reading extended attributes of {}", path.display())]
    Xattr { path: PathBuf, source: io::Error },
    #[error("overlay directory {} is redirected (redirect_dir), which cpengine does not support", path.display())]
    OverlayRedirect { path: PathBuf },
    #[error("reading base tarball {}", path.display())]
    BaseTar { path: PathBuf, source: io::Error },
    #[error("base tarball {}: {reason}", path.display())]
    BaseTarFormat { path: PathBuf, reason: String },
    #[error("opening rootfs {}", path.display())]
    OpenRootfs { path: PathBuf, source: io::Error },
    #[error("reading the diff tar")]
    ReadDiff { source: io::Error },
    #[error("diff tar: {reason}")]
    DiffFormat { reason: String },
    #[error("diff entry name {name:?} is unsafe: {reason}")]
    UnsafeName { name: String, reason: &'static str },
    #[error("diff entry {name} has unsupported tar type {flag:?}")]
    UnsupportedEntry { name: String, flag: char },
    #[error("applying {name}")]
    Apply { name: String, source: io::Error },
    #[error(
        "diff entry {name} is a {kind} device {major}:{minor}; only the harmless pseudo-devices (null, zero, full, random, urandom, tty) may be restored"
    )]
    DeviceNode {
        name: String,
        kind: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("the diff writes more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the diff has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("deleting {path}")]
    Delete { path: String, source: io::Error },
}

/// `/`-joined bytes of a relative path.
pub(crate) fn path_bytes(p: &std::path::Path) -> &[u8] {
    p.as_os_str().as_bytes()
}
