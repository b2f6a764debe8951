//! Applying a diff tar to a rootfs (see the module docs of [`crate::rootfs`]).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use serde::Serialize;

use super::RootfsError;
use crate::archive::Compression;
use crate::archive::tarread::{RawEntry, TarReader};
use crate::beneath::{self, Resolve, Tree};

/// Cap on tar extension headers (pax records with xattrs, long names) in a diff.
const MAX_EXT: u64 = 16 << 20;
/// Cap on a GNU sparse map (offsets and lengths as text).
const MAX_SPARSE_MAP: usize = 16 << 20;

/// What [`apply`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub compression: Compression,
    pub entries: u64,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hardlinks: u64,
    pub devices: u64,
    /// File data bytes written.
    pub bytes: u64,
    /// OCI whiteouts and opaque markers honoured.
    pub whiteouts: u64,
    /// `deleted.files` paths removed.
    pub deleted: u64,
    /// `deleted.files` paths that did not exist.
    pub deleted_missing: u64,
    /// Things that could not be applied exactly (e.g. an xattr the filesystem refuses).
    pub warnings: Vec<String>,
    #[serde(
        rename = "duration_ms",
        serialize_with = "crate::report::ser_duration_ms"
    )]
    pub duration: Duration,
}

/// Character devices a diff may carry, as (major, minor): null, zero, full, random, urandom,
/// tty — what runc creates in every container anyway — and 0:0, an overlay whiteout.
pub const DEVICE_ALLOWLIST: &[(u32, u32)] =
    &[(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (0, 0)];

/// Caps on what one [`apply_with`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyLimits {
    /// Bytes of file data written (sparse files count their data segments).
    pub max_bytes: u64,
    /// Entries of the diff.
    pub max_entries: u64,
}

impl Default for ApplyLimits {
    /// Generous for real root filesystems; callers that know the free space of the target pass
    /// that instead (a compressed diff must not fill the disk).
    fn default() -> Self {
        Self {
            max_bytes: 1 << 40,
            max_entries: 10_000_000,
        }
    }
}

/// Extracts `diff` (a tar, plain, gzip or zstd) into `rootfs`, then removes every `deleted`
/// path (absolute in-container paths) beneath it. Paths resolve with the rootfs as their
/// root; symlinks and hard links are created as the tar says, device nodes only if harmless
/// (see the module docs); ownership, modes (set-id bits included), mtimes and xattrs are
/// restored; holes of GNU sparse members are re-created. [`ApplyLimits::default`] caps.
pub fn apply(
    rootfs: &Path,
    diff: impl Read,
    deleted: &[String],
) -> Result<ApplyReport, RootfsError> {
    apply_with(rootfs, diff, deleted, &ApplyLimits::default())
}

/// [`apply`] with explicit caps.
pub fn apply_with(
    rootfs: &Path,
    diff: impl Read,
    deleted: &[String],
    limits: &ApplyLimits,
) -> Result<ApplyReport, RootfsError> {
    apply_inner(rootfs, diff, deleted, limits, Whiteouts::Apply)
}

/// Unpacks one image layer into the empty directory `dir`, to be stacked with the image's
/// other layers as overlay lower directories: the layer's OCI whiteouts are kept as overlay
/// whiteouts (a `0:0` character device named like the deleted path) and its opaque markers as
/// `trusted.overlay.opaque=y` on their directory, so that what a later layer deleted does not
/// reappear from an earlier one.
pub fn apply_layer(
    dir: &Path,
    layer: impl Read,
    limits: &ApplyLimits,
) -> Result<ApplyReport, RootfsError> {
    apply_inner(dir, layer, &[], limits, Whiteouts::Overlay)
}

/// What an OCI whiteout does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    /// Remove the path from the tree (a diff applied onto a full rootfs).
    Apply,
    /// Record it as an overlayfs whiteout / opaque directory (a layer unpacked alone).
    Overlay,
}

fn apply_inner(
    rootfs: &Path,
    diff: impl Read,
    deleted: &[String],
    limits: &ApplyLimits,
    whiteouts: Whiteouts,
) -> Result<ApplyReport, RootfsError> {
    let start = Instant::now();
    let tree = Tree::open(rootfs, Resolve::InRoot).map_err(|source| RootfsError::OpenRootfs {
        path: rootfs.to_path_buf(),
        source,
    })?;
    let beneath =
        Tree::open(rootfs, Resolve::Beneath).map_err(|source| RootfsError::OpenRootfs {
            path: rootfs.to_path_buf(),
            source,
        })?;
    let (compression, r) =
        crate::archive::compress_decoder(BufReader::with_capacity(1 << 20, diff))
            .map_err(|source| RootfsError::ReadDiff { source })?;
    let mut rep = ApplyReport {
        compression,
        ..Default::default()
    };
    let mut tar = TarReader::new(r, MAX_EXT);
    let mut created: HashSet<PathBuf> = HashSet::new();
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let e = match tar.next_entry() {
            Ok(Some(e)) => e,
            Ok(None) => break,
            Err(e) => {
                return Err(RootfsError::DiffFormat {
                    reason: e.to_string(),
                });
            }
        };
        if e.flag == b'g' {
            continue;
        }
        let sparse = e.pax_value("GNU.sparse.major") == Some(b"1");
        let raw_name = match (sparse, e.pax_value("GNU.sparse.name")) {
            (true, Some(n)) => n.to_vec(),
            _ => e.name.clone(),
        };
        let Some(rel) = safe_rel(&raw_name)? else {
            continue;
        };
        rep.entries += 1;
        if rep.entries > limits.max_entries {
            return Err(RootfsError::TooManyEntries {
                limit: limits.max_entries,
            });
        }
        let data_len = if sparse {
            e.pax_value("GNU.sparse.realsize")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .unwrap_or(0)
                .min(e.size)
        } else if matches!(e.flag, b'0' | b'7') {
            e.size
        } else {
            0
        };
        if rep.bytes.saturating_add(data_len) > limits.max_bytes {
            return Err(RootfsError::TooLarge {
                limit: limits.max_bytes,
            });
        }
        let name = rel.display().to_string();
        let fail = |source: io::Error| RootfsError::Apply {
            name: name.clone(),
            source,
        };
        let leaf_bytes = rel.file_name().map(OsStr::as_bytes).unwrap_or(b"");
        if let Some(hidden) = leaf_bytes.strip_prefix(b".wh.") {
            if matches!(hidden, b"" | b"." | b"..") || hidden.contains(&b'/') {
                return Err(RootfsError::UnsafeName {
                    name,
                    reason: "whiteout of '.', '..' or '/'",
                });
            }
            let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            if whiteouts == Whiteouts::Overlay {
                overlay_whiteout(&beneath, &parent, hidden).map_err(|e| {
                    if beneath::is_escape(&e) {
                        RootfsError::UnsafeName {
                            name: name.clone(),
                            reason: "whiteout through a symlink",
                        }
                    } else {
                        fail(e)
                    }
                })?;
                rep.whiteouts += 1;
                continue;
            }
            // Removals resolve beneath the tree without passing any symlink: a whiteout names
            // the path itself, never what a link (of this or an earlier layer) points at.
            let dir = match beneath.dir(&parent) {
                Ok(d) => d,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                    continue;
                }
                Err(e) if beneath::is_escape(&e) => {
                    return Err(RootfsError::UnsafeName {
                        name,
                        reason: "whiteout through a symlink",
                    });
                }
                Err(e) => return Err(fail(e)),
            };
            if hidden == b".wh..opq" {
                for child in beneath::list_dir(dir.as_fd()).map_err(&fail)? {
                    let c = OsStr::from_bytes(&child);
                    if !created.contains(&parent.join(c)) {
                        beneath::remove_tree_at(dir.as_fd(), c).map_err(&fail)?;
                    }
                }
            } else if !hidden.is_empty() {
                beneath::remove_tree_at(dir.as_fd(), OsStr::from_bytes(hidden)).map_err(&fail)?;
            }
            rep.whiteouts += 1;
            continue;
        }
        let (pfd, leaf) = tree.parent(&rel, Some(0o755)).map_err(&fail)?;
        let pfd = pfd.as_fd();
        let existing = beneath::lstat_at(pfd, leaf).map_err(&fail)?;
        match e.flag {
            b'5' => {
                match existing {
                    Some(st) if beneath::is_dir(&st) => {}
                    Some(_) => {
                        beneath::remove_tree_at(pfd, leaf).map_err(&fail)?;
                        mkdir(pfd, leaf).map_err(&fail)?;
                    }
                    None => mkdir(pfd, leaf).map_err(&fail)?,
                }
                let d = nix::fcntl::openat(
                    pfd,
                    leaf,
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| fail(e.into()))?;
                let d = File::from(d);
                owner_mode(&d, &e).map_err(&fail)?;
                set_xattrs_fd(&d, &e, &name, &mut rep.warnings);
                dir_times.push((rel.clone(), e.mtime));
                rep.dirs += 1;
            }
            b'0' | b'7' => {
                if existing.is_some() {
                    beneath::remove_tree_at(pfd, leaf).map_err(&fail)?;
                }
                let mut f = crate::sys::create_new_at(pfd, leaf).map_err(|e| fail(e.into()))?;
                let mut data = tar.data();
                if sparse {
                    let real: u64 = e
                        .pax_value("GNU.sparse.realsize")
                        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                        .ok_or_else(|| RootfsError::DiffFormat {
                            reason: format!("{name}: sparse member without GNU.sparse.realsize"),
                        })?;
                    rep.bytes += write_sparse(&mut data, &mut f, real, &name, &mut buf)?;
                } else {
                    rep.bytes += copy_all(&mut data, &mut f, &mut buf).map_err(&fail)?;
                }
                owner_mode(&f, &e).map_err(&fail)?;
                set_xattrs_fd(&f, &e, &name, &mut rep.warnings);
                let t = TimeSpec::new(e.mtime, 0);
                nix::sys::stat::futimens(&f, &t, &t).map_err(|e| fail(e.into()))?;
                rep.files += 1;
            }
            b'2' => {
                if existing.is_some() {
                    beneath::remove_tree_at(pfd, leaf).map_err(&fail)?;
                }
                nix::unistd::symlinkat(OsStr::from_bytes(&e.link), pfd, leaf)
                    .map_err(|e| fail(e.into()))?;
                chown_at(pfd, leaf, &e).map_err(&fail)?;
                set_xattrs_at(pfd, leaf, &e, &name, &mut rep.warnings);
                let t = TimeSpec::new(e.mtime, 0);
                nix::sys::stat::utimensat(pfd, leaf, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| fail(e.into()))?;
                rep.symlinks += 1;
            }
            b'1' => {
                let Some(trel) = safe_rel(&e.link)? else {
                    return Err(RootfsError::UnsafeName {
                        name: String::from_utf8_lossy(&e.link).into_owned(),
                        reason: "hard link to the root",
                    });
                };
                let (tfd, tleaf) = tree.parent(&trel, None).map_err(&fail)?;
                if existing.is_some() {
                    beneath::remove_tree_at(pfd, leaf).map_err(&fail)?;
                }
                nix::unistd::linkat(tfd.as_fd(), tleaf, pfd, leaf, AtFlags::empty())
                    .map_err(|e| fail(e.into()))?;
                rep.hardlinks += 1;
            }
            b'3' | b'4' | b'6' => {
                if e.flag != b'6'
                    && !(e.flag == b'3' && DEVICE_ALLOWLIST.contains(&(e.dev_major, e.dev_minor)))
                {
                    return Err(RootfsError::DeviceNode {
                        name,
                        kind: if e.flag == b'3' { "character" } else { "block" },
                        major: e.dev_major,
                        minor: e.dev_minor,
                    });
                }
                if existing.is_some() {
                    beneath::remove_tree_at(pfd, leaf).map_err(&fail)?;
                }
                let kind = match e.flag {
                    b'3' => SFlag::S_IFCHR,
                    b'4' => SFlag::S_IFBLK,
                    _ => SFlag::S_IFIFO,
                };
                let dev = nix::sys::stat::makedev(e.dev_major.into(), e.dev_minor.into());
                nix::sys::stat::mknodat(
                    pfd,
                    leaf,
                    kind,
                    Mode::from_bits_truncate(e.mode & 0o777),
                    dev,
                )
                .map_err(|e| fail(e.into()))?;
                chown_at(pfd, leaf, &e).map_err(&fail)?;
                chmod_nofollow(pfd, leaf, e.mode & 0o7777).map_err(&fail)?;
                let t = TimeSpec::new(e.mtime, 0);
                nix::sys::stat::utimensat(pfd, leaf, &t, &t, UtimensatFlags::NoFollowSymlink)
                    .map_err(|e| fail(e.into()))?;
                rep.devices += 1;
            }
            other => {
                return Err(RootfsError::UnsupportedEntry {
                    name,
                    flag: other as char,
                });
            }
        }
        created.insert(rel);
    }
    // Directory mtimes last, deepest first: creating children changed them.
    for (rel, mtime) in dir_times.iter().rev() {
        if let Ok((pfd, leaf)) = tree.parent(rel, None) {
            let t = TimeSpec::new(*mtime, 0);
            let _ = nix::sys::stat::utimensat(
                pfd.as_fd(),
                leaf,
                &t,
                &t,
                UtimensatFlags::NoFollowSymlink,
            );
        }
    }
    for d in deleted {
        let Some(rel) = safe_rel(d.trim_start_matches('/').as_bytes())? else {
            return Err(RootfsError::UnsafeName {
                name: d.clone(),
                reason: "deletes the root",
            });
        };
        let err = |source| RootfsError::Delete {
            path: d.clone(),
            source,
        };
        let (pfd, leaf) = match tree.parent(&rel, None) {
            Ok(x) => x,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {
                rep.deleted_missing += 1;
                continue;
            }
            Err(e) => return Err(err(e)),
        };
        if beneath::remove_tree_at(pfd.as_fd(), leaf).map_err(err)? {
            rep.deleted += 1;
        } else {
            rep.deleted_missing += 1;
        }
    }
    rep.duration = start.elapsed();
    Ok(rep)
}

/// Records the whiteout of `hidden` (or, for `.wh..opq`, the opacity) of directory `parent`
/// the way overlayfs reads it from a lower layer. The parent resolves beneath the tree
/// without passing a symlink and is created if the layer did not list it.
fn overlay_whiteout(tree: &Tree, parent: &Path, hidden: &[u8]) -> io::Result<()> {
    let dir = tree.dir_create(parent, 0o755)?;
    if hidden == b".wh..opq" {
        use xattr::FileExt;
        let d = File::from(tree.open_at(parent, OFlag::O_RDONLY | OFlag::O_DIRECTORY, 0)?);
        return d.set_xattr("trusted.overlay.opaque", b"y");
    }
    let leaf = OsStr::from_bytes(hidden);
    beneath::remove_tree_at(dir.as_fd(), leaf)?;
    nix::sys::stat::mknodat(
        dir.as_fd(),
        leaf,
        SFlag::S_IFCHR,
        Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )?;
    Ok(())
}

/// A tar name as a relative path; `None` for the root itself; an error for `..`, absolute
/// names and NUL bytes.
fn safe_rel(raw: &[u8]) -> Result<Option<PathBuf>, RootfsError> {
    let unsafe_name = |reason| RootfsError::UnsafeName {
        name: String::from_utf8_lossy(raw).into_owned(),
        reason,
    };
    if raw.contains(&0) {
        return Err(unsafe_name("contains a NUL byte"));
    }
    if raw.starts_with(b"/") {
        return Err(unsafe_name("is absolute"));
    }
    let mut p = PathBuf::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(unsafe_name("contains '..'")),
            c => p.push(OsStr::from_bytes(c)),
        }
    }
    Ok((!p.as_os_str().is_empty()).then_some(p))
}

fn mkdir(dir: BorrowedFd<'_>, leaf: &OsStr) -> io::Result<()> {
    nix::sys::stat::mkdirat(dir, leaf, Mode::from_bits_truncate(0o700)).map_err(Into::into)
}

/// chown first (it clears set-id bits), then the full mode.
fn owner_mode(f: &File, e: &RawEntry) -> io::Result<()> {
    nix::unistd::fchown(
        f,
        Some(nix::unistd::Uid::from_raw(e.uid as u32)),
        Some(nix::unistd::Gid::from_raw(e.gid as u32)),
    )?;
    nix::sys::stat::fchmod(f, Mode::from_bits_truncate(e.mode & 0o7777))?;
    Ok(())
}

fn chown_at(dir: BorrowedFd<'_>, leaf: &OsStr, e: &RawEntry) -> io::Result<()> {
    nix::unistd::fchownat(
        dir,
        leaf,
        Some(nix::unistd::Uid::from_raw(e.uid as u32)),
        Some(nix::unistd::Gid::from_raw(e.gid as u32)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(Into::into)
}

/// The mode of the node just created at `leaf`, without following a symlink that could have
/// replaced it meanwhile: the node is opened `O_PATH | O_NOFOLLOW` (which opens a device or a
/// FIFO without I/O) and changed through its `/proc/self/fd` link, which names that inode.
fn chmod_nofollow(dir: BorrowedFd<'_>, leaf: &OsStr, mode: u32) -> io::Result<()> {
    let fd = nix::fcntl::openat(
        dir,
        leaf,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let st = nix::sys::stat::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        return Err(io::Error::from_raw_os_error(libc::ELOOP));
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::sys::stat::fchmodat(
        nix::fcntl::AT_FDCWD,
        link.as_str(),
        Mode::from_bits_truncate(mode),
        FchmodatFlags::FollowSymlink,
    )?;
    Ok(())
}

/// Extended attributes of an entry, without `trusted.overlay.*`: those steer overlayfs itself
/// (redirects, opaque directories, metacopy origins) and a diff never carries them (the planner
/// drops them); set on a layer used as a lower directory they would change what the overlay
/// shows.
fn xattrs_of(e: &RawEntry) -> impl Iterator<Item = (&str, &[u8])> {
    e.pax.iter().filter_map(|(k, v)| {
        let n = k.strip_prefix("SCHILY.xattr.")?;
        if n.starts_with("trusted.overlay.") {
            return None;
        }
        Some((n, v.as_slice()))
    })
}

fn set_xattrs_fd(f: &File, e: &RawEntry, name: &str, warnings: &mut Vec<String>) {
    use xattr::FileExt;
    for (k, v) in xattrs_of(e) {
        if let Err(err) = f.set_xattr(k, v) {
            warnings.push(format!("{name}: xattr {k}: {err}"));
        }
    }
}

fn set_xattrs_at(
    dir: BorrowedFd<'_>,
    leaf: &OsStr,
    e: &RawEntry,
    name: &str,
    warnings: &mut Vec<String>,
) {
    // No fd can be opened on a symlink for fsetxattr; the parent's /proc/self/fd link is
    // resolved by the kernel to the already-confined directory, and lsetxattr does not follow
    // the leaf.
    let path = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(leaf);
    for (k, v) in xattrs_of(e) {
        if let Err(err) = xattr::set(&path, k, v) {
            warnings.push(format!("{name}: xattr {k}: {err}"));
        }
    }
}

fn copy_all(r: &mut impl Read, w: &mut File, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

enum SparseMapError {
    Io(io::Error),
    Bad(&'static str),
}

/// Reads the GNU sparse 1.0 map at the start of a member's data: a count, then that many
/// offset/length pairs, one decimal number a line, padded to whole blocks. Parsed as the
/// blocks arrive, each byte examined once (`examined` counts them): linear in the map's size,
/// which is capped at [`MAX_SPARSE_MAP`]. Returns the numbers after the count, in pairs.
fn read_sparse_map(r: &mut impl Read, examined: &mut u64) -> Result<Vec<u64>, SparseMapError> {
    let bad = SparseMapError::Bad;
    let mut total = 0usize;
    let mut line: Vec<u8> = Vec::new();
    let mut count: Option<u64> = None;
    let mut nums: Vec<u64> = Vec::new();
    loop {
        let mut block = [0u8; 512];
        r.read_exact(&mut block).map_err(SparseMapError::Io)?;
        total += block.len();
        if total > MAX_SPARSE_MAP {
            return Err(bad("sparse map too large"));
        }
        for &b in &block {
            *examined += 1;
            if b != b'\n' {
                line.push(b);
                continue;
            }
            let n: u64 = std::str::from_utf8(&line)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(bad("bad sparse map"))?;
            line.clear();
            match count {
                None => {
                    if n > (MAX_SPARSE_MAP as u64) / 4 {
                        return Err(bad("bad sparse map"));
                    }
                    count = Some(n);
                }
                Some(_) => nums.push(n),
            }
            if count.is_some_and(|c| nums.len() as u64 == 2 * c) {
                // The rest of this block is padding; the data starts at the next one.
                return Ok(nums);
            }
        }
    }
}

/// Writes a GNU sparse 1.0 member: the segment map, then each segment at its offset, leaving
/// holes between them; the file is then extended to its real size.
fn write_sparse(
    r: &mut impl Read,
    f: &mut File,
    real: u64,
    name: &str,
    buf: &mut [u8],
) -> Result<u64, RootfsError> {
    let bad = |reason: &str| RootfsError::DiffFormat {
        reason: format!("{name}: {reason}"),
    };
    let io_fail = |source| RootfsError::Apply {
        name: name.to_owned(),
        source,
    };
    let mut examined = 0u64;
    let nums = read_sparse_map(r, &mut examined).map_err(|e| match e {
        SparseMapError::Io(source) => io_fail(source),
        SparseMapError::Bad(reason) => bad(reason),
    })?;
    let mut written = 0u64;
    for pair in nums.chunks(2) {
        let (off, len) = (pair[0], pair[1]);
        if off.checked_add(len).is_none_or(|end| end > real) {
            return Err(bad("sparse segment beyond the file's size"));
        }
        f.seek(SeekFrom::Start(off)).map_err(io_fail)?;
        let mut left = len;
        while left > 0 {
            let want = buf.len().min(left as usize);
            r.read_exact(&mut buf[..want]).map_err(io_fail)?;
            f.write_all(&buf[..want]).map_err(io_fail)?;
            left -= want as u64;
        }
        written += len;
    }
    f.set_len(real).map_err(io_fail)?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// `.wh...` hides `..` and `.wh..` hides `.`: both are refused, and neither the rootfs nor
    /// its parent directory loses anything.
    #[test]
    fn whiteout_of_dot_or_dotdot_is_refused_and_removes_nothing() {
        for leaf in [".wh...", ".wh..", "d/.wh...", "d/.wh.."] {
            let t = tempfile::tempdir().unwrap();
            let root = t.path().join("layer");
            std::fs::create_dir_all(root.join("d")).unwrap();
            std::fs::write(root.join("d/keep"), b"x").unwrap();
            std::fs::write(root.join("keep"), b"x").unwrap();
            std::fs::create_dir(t.path().join("sibling")).unwrap();
            std::fs::write(t.path().join("sibling/keep"), b"x").unwrap();
            let r = apply(&root, &tar_of(&[(leaf, b"")])[..], &[]);
            assert!(
                matches!(r, Err(RootfsError::UnsafeName { .. })),
                "{leaf}: {r:?}"
            );
            for p in ["layer/keep", "layer/d/keep", "sibling/keep"] {
                assert!(t.path().join(p).exists(), "{leaf} removed {p}");
            }
        }
    }

    /// A whiteout whose parent is a symlink does not remove through it.
    #[test]
    fn whiteout_does_not_resolve_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("layer");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::write(root.join("real/keep"), b"x").unwrap();
        std::os::unix::fs::symlink("real", root.join("link")).unwrap();
        let r = apply(&root, &tar_of(&[("link/.wh.keep", b"")])[..], &[]);
        assert!(matches!(r, Err(RootfsError::UnsafeName { .. })), "{r:?}");
        assert!(root.join("real/keep").exists());
    }

    /// A map of 100,000 segments is parsed with each byte examined once (the old parser
    /// re-split the whole map after every 512-byte block: ~1,400 MB examined for this 1.4 MB
    /// map), and the pairs come out in order with the data starting at the next block.
    #[test]
    fn sparse_map_parse_is_linear() {
        let n = 100_000u64;
        let mut map = format!("{n}\n").into_bytes();
        for i in 0..n {
            map.extend(format!("{}\n{}\n", i * 8192, 4096).as_bytes());
        }
        let len = map.len().div_ceil(512) * 512;
        map.resize(len, 0);
        map.extend(b"DATA");
        let mut r = &map[..];
        let mut examined = 0u64;
        let Ok(nums) = read_sparse_map(&mut r, &mut examined) else {
            panic!("map refused");
        };
        assert_eq!(nums.len() as u64, 2 * n);
        assert_eq!((nums[2], nums[3]), (8192, 4096));
        assert!(
            examined <= len as u64,
            "{examined} bytes examined for a {len}-byte map"
        );
        assert_eq!(r, b"DATA");
    }

    /// A sparse file planned, written and applied again keeps its content and size.
    #[test]
    fn sparse_file_round_trips() {
        use std::os::unix::fs::FileExt;
        let t = tempfile::tempdir().unwrap();
        let (base, src, dst) = (t.path().join("b"), t.path().join("s"), t.path().join("d"));
        for d in [&base, &src, &dst] {
            std::fs::create_dir(d).unwrap();
        }
        let f = File::create(src.join("sp")).unwrap();
        for i in 0..64u64 {
            f.write_all_at(format!("seg{i}").as_bytes(), i * (1 << 20))
                .unwrap();
        }
        f.set_len(70 << 20).unwrap();
        let diff = super::super::plan_dir(&src, &super::super::Base::Dir(base), &[]).unwrap();
        let mut tar = Vec::new();
        super::super::write_tar(&diff, &mut tar).unwrap();
        apply(&dst, &tar[..], &[]).unwrap();
        assert_eq!(
            std::fs::read(src.join("sp")).unwrap(),
            std::fs::read(dst.join("sp")).unwrap()
        );
    }
}
