//! Planning a rootfs diff: a stat walk, no data read (except to compare same-size files of a
//! plain-directory rootfs with its base).

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{DiffEntry, EntryKind, RootfsDiff, RootfsError};
use crate::archive::tarread::TarReader;

/// Paths the runtime mounts over the rootfs, never part of the diff (the container's volume and
/// bind-mount destinations must be added by the caller).
pub fn default_excludes() -> Vec<String> {
    [
        "/dev",
        "/proc",
        "/sys",
        "/run",
        "/run/secrets",
        "/run/.containerenv",
        "/dev/shm",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The base a plain-directory rootfs is compared with.
#[derive(Debug, Clone)]
pub enum Base {
    /// An unpacked base tree.
    Dir(PathBuf),
    /// A base tarball (plain, gzip or zstd).
    Tar(PathBuf),
}

impl Base {
    /// A directory is an unpacked tree; anything else is taken as a tarball (`--rootfs-base`).
    pub fn from_path(p: PathBuf) -> Self {
        if p.is_dir() {
            Self::Dir(p)
        } else {
            Self::Tar(p)
        }
    }
}

const OVERLAY_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

fn norm_excludes(ex: &[String]) -> Vec<String> {
    ex.iter()
        .map(|e| format!("/{}", e.trim_matches('/')))
        .filter(|e| e != "/")
        .collect()
}

fn excluded(ex: &[String], abs: &str) -> bool {
    ex.iter()
        .any(|e| abs == e || (abs.starts_with(e.as_str()) && abs.as_bytes()[e.len()] == b'/'))
}

fn in_container(rel: &Path) -> String {
    format!("/{}", rel.to_string_lossy())
}

fn walk_err(path: &Path) -> impl Fn(std::io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Walk {
        path: path.to_path_buf(),
        source,
    }
}

/// Sorted names in a directory.
fn names(dir: &Path) -> Result<Vec<OsString>, RootfsError> {
    let mut v: Vec<OsString> = std::fs::read_dir(dir)
        .map_err(walk_err(dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(walk_err(dir))?;
    v.sort();
    Ok(v)
}

/// All xattrs of `path` (not following a symlink), split into carried ones and overlay's own.
/// Extended attributes, name and value.
type Xattrs = Vec<(String, Vec<u8>)>;

fn xattrs(path: &Path) -> Result<(Xattrs, Xattrs), RootfsError> {
    let err = |source| RootfsError::Xattr {
        path: path.to_path_buf(),
        source,
    };
    let mut carried = Vec::new();
    let mut overlay = Vec::new();
    let list = match xattr::list(path) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok((carried, overlay)),
        Err(e) => return Err(err(e)),
    };
    let mut names: Vec<OsString> = list.collect();
    names.sort();
    for n in names {
        let Some(name) = n.to_str() else { continue };
        let Some(v) = xattr::get(path, &n).map_err(err)? else {
            continue;
        };
        if OVERLAY_PREFIXES.iter().any(|p| name.starts_with(p)) {
            overlay.push((name.to_owned(), v));
        } else {
            carried.push((name.to_owned(), v));
        }
    }
    Ok((carried, overlay))
}

fn overlay_attr<'a>(ov: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    ov.iter()
        .find(|(k, _)| {
            OVERLAY_PREFIXES
                .iter()
                .any(|p| k.strip_prefix(p) == Some(key))
        })
        .map(|(_, v)| v.as_slice())
}

/// The data segments of a file that has holes; `None` if it is dense.
fn sparse_segments(path: &Path, md: &Metadata) -> Result<Option<Vec<(u64, u64)>>, RootfsError> {
    let size = md.len();
    if size == 0 || md.blocks() * 512 >= size {
        return Ok(None);
    }
    let f = File::open(path).map_err(walk_err(path))?;
    let mut segs = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        let data = match nix::unistd::lseek(f.as_fd(), pos, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(e) => return Err(walk_err(path)(e.into())),
        };
        let hole = nix::unistd::lseek(f.as_fd(), data, nix::unistd::Whence::SeekHole)
            .map_err(|e| walk_err(path)(e.into()))?;
        let end = (hole as u64).min(size);
        if end > data as u64 {
            segs.push((data as u64, end - data as u64));
        }
        pos = hole;
    }
    if segs.len() == 1 && segs[0] == (0, size) {
        return Ok(None);
    }
    // A file that ends in a hole gets a final empty segment at its end, as GNU tar writes.
    if segs.last().is_none_or(|&(o, l)| o + l < size) {
        segs.push((size, 0));
    }
    Ok(Some(segs))
}

fn kind_of(path: &Path, md: &Metadata) -> Result<Option<EntryKind>, RootfsError> {
    let ft = md.file_type();
    let dev = || {
        let r = md.rdev();
        (
            nix::sys::stat::major(r) as u32,
            nix::sys::stat::minor(r) as u32,
        )
    };
    Ok(Some(if ft.is_file() {
        EntryKind::File
    } else if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_symlink() {
        EntryKind::Symlink {
            target: std::fs::read_link(path).map_err(walk_err(path))?,
        }
    } else if ft.is_char_device() {
        let (major, minor) = dev();
        EntryKind::CharDevice { major, minor }
    } else if ft.is_block_device() {
        let (major, minor) = dev();
        EntryKind::BlockDevice { major, minor }
    } else if ft.is_fifo() {
        EntryKind::Fifo
    } else {
        return Ok(None);
    }))
}

/// Builds an entry from metadata; hard links to an inode already in the diff become
/// [`EntryKind::Hardlink`].
#[allow(clippy::too_many_arguments)]
fn entry(
    rel: &Path,
    path: &Path,
    data_root: &Path,
    data_source: &Path,
    md: &Metadata,
    kind: EntryKind,
    xattrs: Vec<(String, Vec<u8>)>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<DiffEntry, RootfsError> {
    let mut kind = kind;
    let mut size = 0;
    let mut sparse = None;
    let mut inode = (md.dev(), md.ino());
    if kind == EntryKind::File {
        if md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                kind = EntryKind::Hardlink {
                    target: first.clone(),
                };
            } else {
                links.insert((md.dev(), md.ino()), rel.to_path_buf());
            }
        }
        if kind == EntryKind::File {
            let dmd = if data_source == path {
                md.clone()
            } else {
                std::fs::symlink_metadata(data_source).map_err(walk_err(data_source))?
            };
            inode = (dmd.dev(), dmd.ino());
            size = dmd.len();
            sparse = sparse_segments(data_source, &dmd)?;
        }
    }
    Ok(DiffEntry {
        path: rel.to_path_buf(),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        xattrs,
        size,
        source: data_source.to_path_buf(),
        source_root: data_root.to_path_buf(),
        source_inode: inode,
        sparse,
    })
}

/// Plans the diff of an overlayfs upper directory against its lower layers (top-most first).
/// `exclude` lists in-container paths to leave out (mount destinations; see
/// [`default_excludes`]).
pub fn plan_overlay(
    upper: &Path,
    lowers: &[PathBuf],
    exclude: &[String],
) -> Result<RootfsDiff, RootfsError> {
    let mut w = OverlayWalk {
        upper,
        lowers,
        ex: norm_excludes(exclude),
        diff: RootfsDiff::default(),
        links: HashMap::new(),
    };
    let (_, ov) = xattrs(upper)?;
    let opaque = overlay_attr(&ov, "opaque") == Some(b"y");
    w.walk(Path::new(""), opaque)?;
    Ok(w.diff)
}

struct OverlayWalk<'a> {
    upper: &'a Path,
    lowers: &'a [PathBuf],
    ex: Vec<String>,
    diff: RootfsDiff,
    links: HashMap<(u64, u64), PathBuf>,
}

impl OverlayWalk<'_> {
    fn walk(&mut self, rel: &Path, opaque: bool) -> Result<(), RootfsError> {
        let dir = self.upper.join(rel);
        let present = names(&dir)?;
        for n in &present {
            let crel = rel.join(n);
            let abs = in_container(&crel);
            if excluded(&self.ex, &abs) {
                continue;
            }
            let path = self.upper.join(&crel);
            let md = std::fs::symlink_metadata(&path).map_err(walk_err(&path))?;
            if md.file_type().is_char_device() && md.rdev() == 0 {
                self.diff.deleted.push(abs);
                continue;
            }
            let (carried, ov) = xattrs(&path)?;
            if md.is_file() && overlay_attr(&ov, "whiteout").is_some() {
                self.diff.deleted.push(abs);
                continue;
            }
            let Some(kind) = kind_of(&path, &md)? else {
                self.diff.skipped.push(crel);
                continue;
            };
            if kind == EntryKind::Dir && overlay_attr(&ov, "redirect").is_some() {
                return Err(RootfsError::OverlayRedirect { path });
            }
            // metacopy: the upper file has the metadata, a lower one the data.
            let (root, source) = if md.is_file() && overlay_attr(&ov, "metacopy").is_some() {
                self.lower_path(&crel)
                    .unwrap_or_else(|| (self.upper.to_path_buf(), path.clone()))
            } else {
                (self.upper.to_path_buf(), path.clone())
            };
            let is_dir = kind == EntryKind::Dir;
            let e = entry(
                &crel,
                &path,
                &root,
                &source,
                &md,
                kind,
                carried,
                &mut self.links,
            )?;
            self.diff.entries.push(e);
            if is_dir {
                let child_opaque = opaque || overlay_attr(&ov, "opaque") == Some(b"y");
                self.walk(&crel, child_opaque)?;
            }
        }
        if opaque {
            // The lower layers' children this directory hides.
            for n in self.lower_children(rel)? {
                if present.contains(&n) {
                    continue;
                }
                let abs = in_container(&rel.join(&n));
                if !excluded(&self.ex, &abs) {
                    self.diff.deleted.push(abs);
                }
            }
        }
        Ok(())
    }

    /// The lower layer holding `rel` as a regular file, and the file's path.
    fn lower_path(&self, rel: &Path) -> Option<(PathBuf, PathBuf)> {
        self.lowers
            .iter()
            .map(|l| (l.clone(), l.join(rel)))
            .find(|(_, p)| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
    }

    /// Names visible under `rel` in the merged lower layers.
    fn lower_children(&self, rel: &Path) -> Result<Vec<OsString>, RootfsError> {
        let mut seen: Vec<OsString> = Vec::new();
        let mut hidden: Vec<OsString> = Vec::new();
        for l in self.lowers {
            let d = l.join(rel);
            match std::fs::symlink_metadata(&d) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => break,
                Err(_) => continue,
            }
            for n in names(&d)? {
                let p = d.join(&n);
                let md = std::fs::symlink_metadata(&p).map_err(walk_err(&p))?;
                let whiteout = (md.file_type().is_char_device() && md.rdev() == 0)
                    || (md.is_file()
                        && xattrs(&p)
                            .map(|(_, ov)| overlay_attr(&ov, "whiteout").is_some())
                            .unwrap_or(false));
                if whiteout {
                    hidden.push(n);
                } else if !seen.contains(&n) && !hidden.contains(&n) {
                    seen.push(n);
                }
            }
            let (_, ov) = xattrs(&d)?;
            if overlay_attr(&ov, "opaque") == Some(b"y") {
                break;
            }
        }
        seen.sort();
        Ok(seen)
    }
}

/// Metadata of a base entry, from a tree or a tarball.
#[derive(Debug, Clone)]
struct BaseMeta {
    kind: EntryKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: i64,
    /// Nanoseconds; only known for a base tree.
    mtime_nsec: Option<i64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl BaseMeta {
    fn of(path: &Path, md: &Metadata) -> Result<Option<Self>, RootfsError> {
        let Some(kind) = kind_of(path, md)? else {
            return Ok(None);
        };
        Ok(Some(Self {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: if md.is_file() { md.len() } else { 0 },
            mtime: md.mtime(),
            mtime_nsec: Some(md.mtime_nsec()),
            xattrs: xattrs(path)?.0,
        }))
    }
}

/// Plans the diff of a plain rootfs directory against `base`.
pub fn plan_dir(rootfs: &Path, base: &Base, exclude: &[String]) -> Result<RootfsDiff, RootfsError> {
    let ex = norm_excludes(exclude);
    let tar_index = match base {
        Base::Tar(t) => Some(read_base_tar(t)?),
        Base::Dir(_) => None,
    };
    let lookup = |rel: &Path| -> Result<Option<BaseMeta>, RootfsError> {
        match (base, &tar_index) {
            (_, Some(idx)) => Ok(idx.get(rel).cloned()),
            (Base::Dir(b), None) => {
                let p = b.join(rel);
                match std::fs::symlink_metadata(&p) {
                    Ok(md) => BaseMeta::of(&p, &md),
                    Err(_) => Ok(None),
                }
            }
            (Base::Tar(_), None) => Ok(None),
        }
    };
    let mut diff = RootfsDiff::default();
    let mut links = HashMap::new();
    walk_dir(
        rootfs,
        Path::new(""),
        &ex,
        &lookup,
        base,
        &mut diff,
        &mut links,
    )?;
    // Deletions: base entries missing from the rootfs, top-most only.
    let mut deleted: Vec<String> = Vec::new();
    let mut gone = |rel: &Path| -> bool {
        let abs = in_container(rel);
        if excluded(&ex, &abs) {
            return true;
        }
        if std::fs::symlink_metadata(rootfs.join(rel)).is_err() {
            deleted.push(abs);
            return true;
        }
        false
    };
    match (base, &tar_index) {
        (_, Some(idx)) => {
            let mut last: Option<PathBuf> = None;
            for rel in idx.keys() {
                if last.as_ref().is_some_and(|l| rel.starts_with(l)) {
                    continue;
                }
                if gone(rel) {
                    last = Some(rel.clone());
                }
            }
        }
        (Base::Dir(b), None) => {
            let mut stack = vec![PathBuf::new()];
            while let Some(rel) = stack.pop() {
                let mut sub = Vec::new();
                for n in names(&b.join(&rel))? {
                    let crel = rel.join(&n);
                    if gone(&crel) {
                        continue;
                    }
                    let both_dirs = std::fs::symlink_metadata(b.join(&crel))
                        .is_ok_and(|m| m.is_dir())
                        && std::fs::symlink_metadata(rootfs.join(&crel)).is_ok_and(|m| m.is_dir());
                    if both_dirs {
                        sub.push(crel);
                    }
                }
                stack.extend(sub.into_iter().rev());
            }
        }
        (Base::Tar(_), None) => {}
    }
    deleted.sort();
    diff.deleted = deleted;
    Ok(diff)
}

/// Depth-first in name order, so a hard link always follows the file it names.
fn walk_dir(
    rootfs: &Path,
    rel: &Path,
    ex: &[String],
    lookup: &dyn Fn(&Path) -> Result<Option<BaseMeta>, RootfsError>,
    base: &Base,
    diff: &mut RootfsDiff,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), RootfsError> {
    for n in names(&rootfs.join(rel))? {
        let crel = rel.join(&n);
        if excluded(ex, &in_container(&crel)) {
            continue;
        }
        let path = rootfs.join(&crel);
        let md = std::fs::symlink_metadata(&path).map_err(walk_err(&path))?;
        let Some(kind) = kind_of(&path, &md)? else {
            diff.skipped.push(crel);
            continue;
        };
        let (carried, _) = xattrs(&path)?;
        let changed = match lookup(&crel)? {
            None => true,
            Some(b) => {
                b.kind != kind
                    || b.mode != md.mode() & 0o7777
                    || b.uid != md.uid()
                    || b.gid != md.gid()
                    || b.xattrs != carried
                    || (kind == EntryKind::File
                        && (b.size != md.len()
                            || ((b.mtime, b.mtime_nsec.unwrap_or(md.mtime_nsec()))
                                != (md.mtime(), md.mtime_nsec())
                                && !same_content(base, &crel, &path))))
            }
        };
        let is_dir = kind == EntryKind::Dir;
        if changed {
            diff.entries.push(entry(
                &crel, &path, rootfs, &path, &md, kind, carried, links,
            )?);
        }
        if is_dir {
            walk_dir(rootfs, &crel, ex, lookup, base, diff, links)?;
        }
    }
    Ok(())
}

fn same_content(base: &Base, rel: &Path, path: &Path) -> bool {
    let Base::Dir(b) = base else {
        // A tarball's content is not at hand: a changed mtime counts as a change.
        return false;
    };
    let (Ok(mut x), Ok(mut y)) = (File::open(b.join(rel)), File::open(path)) else {
        return false;
    };
    let mut bx = vec![0u8; 1 << 16];
    let mut by = vec![0u8; 1 << 16];
    loop {
        let nx = match read_full(&mut x, &mut bx) {
            Ok(n) => n,
            Err(_) => return false,
        };
        let ny = match read_full(&mut y, &mut by) {
            Ok(n) => n,
            Err(_) => return false,
        };
        if nx != ny || bx[..nx] != by[..ny] {
            return false;
        }
        if nx == 0 {
            return true;
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn read_base_tar(path: &Path) -> Result<BTreeMap<PathBuf, BaseMeta>, RootfsError> {
    let err = |source| RootfsError::BaseTar {
        path: path.to_path_buf(),
        source,
    };
    let fmt = |reason: String| RootfsError::BaseTarFormat {
        path: path.to_path_buf(),
        reason,
    };
    let f = File::open(path).map_err(err)?;
    let (_, r) =
        crate::archive::compress_decoder(BufReader::with_capacity(1 << 20, f)).map_err(err)?;
    let mut tar = TarReader::new(r, 16 << 20);
    let mut idx: BTreeMap<PathBuf, BaseMeta> = BTreeMap::new();
    while let Some(e) = tar.next_entry().map_err(|e| fmt(e.to_string()))? {
        let Some(rel) = rel_name(&e.name) else {
            continue;
        };
        let link = || PathBuf::from(OsString::from_vec(e.link.clone()));
        let kind = match e.flag {
            b'0' | b'7' => EntryKind::File,
            b'5' => EntryKind::Dir,
            b'2' => EntryKind::Symlink { target: link() },
            b'1' => {
                // A hard link has its target's metadata.
                if let Some(t) = rel_name(&e.link).and_then(|t| idx.get(&t).cloned()) {
                    idx.insert(rel, t);
                }
                continue;
            }
            b'3' => EntryKind::CharDevice {
                major: e.dev_major,
                minor: e.dev_minor,
            },
            b'4' => EntryKind::BlockDevice {
                major: e.dev_major,
                minor: e.dev_minor,
            },
            b'6' => EntryKind::Fifo,
            _ => continue,
        };
        let size = if kind == EntryKind::File {
            e.pax_value("GNU.sparse.realsize")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .unwrap_or(e.size)
        } else {
            0
        };
        let rel = match e.pax_value("GNU.sparse.name").and_then(rel_name) {
            Some(n) => n,
            None => rel,
        };
        let mut xattrs: Vec<(String, Vec<u8>)> = e
            .pax
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("SCHILY.xattr.")?.to_owned(), v.clone())))
            .filter(|(k, _)| !OVERLAY_PREFIXES.iter().any(|p| k.starts_with(p)))
            .collect();
        xattrs.sort();
        idx.insert(
            rel,
            BaseMeta {
                kind,
                mode: e.mode & 0o7777,
                uid: e.uid as u32,
                gid: e.gid as u32,
                size,
                mtime: e.mtime,
                mtime_nsec: None,
                xattrs,
            },
        );
    }
    Ok(idx)
}

/// A tar name as a clean relative path (`./` and trailing `/` dropped); `None` for the root or
/// anything with `..`.
fn rel_name(raw: &[u8]) -> Option<PathBuf> {
    let mut p = PathBuf::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => p.push(std::ffi::OsStr::from_bytes(c)),
        }
    }
    (!p.as_os_str().is_empty()).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_whole_components() {
        let ex = norm_excludes(&["/proc".into(), "data/".into()]);
        assert!(excluded(&ex, "/proc"));
        assert!(excluded(&ex, "/proc/1"));
        assert!(!excluded(&ex, "/process"));
        assert!(excluded(&ex, "/data/x"));
    }

    #[test]
    fn plan_dir_against_a_base_tree_finds_changes_and_deletions() {
        let t = tempfile::tempdir().unwrap();
        let (base, root) = (t.path().join("base"), t.path().join("root"));
        for d in [&base, &root] {
            std::fs::create_dir_all(d.join("etc/sub")).unwrap();
            std::fs::create_dir_all(d.join("gone/deep")).unwrap();
            std::fs::write(d.join("etc/same"), b"same").unwrap();
            std::fs::write(d.join("etc/edit"), b"aaaa").unwrap();
            std::fs::write(d.join("etc/sub/del"), b"x").unwrap();
            std::fs::write(d.join("gone/deep/f"), b"x").unwrap();
        }
        // Same bytes, different mtime: content compare says unchanged. (Timestamps are
        // coarse, so the base's are set apart explicitly.)
        std::fs::write(root.join("etc/same"), b"same").unwrap();
        std::fs::write(root.join("etc/edit"), b"bbbb").unwrap();
        for f in ["etc/same", "etc/edit"] {
            let old = nix::sys::time::TimeSpec::new(1000, 0);
            nix::sys::stat::utimensat(
                nix::fcntl::AT_FDCWD,
                &base.join(f),
                &old,
                &old,
                nix::sys::stat::UtimensatFlags::NoFollowSymlink,
            )
            .unwrap();
        }
        std::fs::remove_file(root.join("etc/sub/del")).unwrap();
        std::fs::remove_dir_all(root.join("gone")).unwrap();
        std::fs::write(root.join("new"), b"n").unwrap();
        std::fs::create_dir(root.join("proc")).unwrap();
        std::fs::write(root.join("proc/x"), b"n").unwrap();
        let diff = plan_dir(&root, &Base::Dir(base), &default_excludes()).unwrap();
        let paths: Vec<_> = diff
            .entries
            .iter()
            .map(|e| e.path.to_str().unwrap())
            .collect();
        assert_eq!(paths, ["etc/edit", "new"]);
        assert_eq!(diff.deleted, ["/etc/sub/del", "/gone"]);
    }

    #[test]
    fn sparse_files_are_mapped() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_at(&f, b"hello", 1 << 20).unwrap();
        drop(f);
        let md = std::fs::metadata(&p).unwrap();
        let segs = sparse_segments(&p, &md).unwrap().expect("sparse");
        assert!(
            segs.iter()
                .any(|&(o, l)| o <= 1 << 20 && o + l >= (1 << 20) + 5)
        );
        assert_eq!(segs.last(), Some(&(64 << 20, 0)));
        let dense = t.path().join("d");
        std::fs::write(&dense, vec![1u8; 10000]).unwrap();
        assert!(
            sparse_segments(&dense, &std::fs::metadata(&dense).unwrap())
                .unwrap()
                .is_none()
        );
    }
}
