//! File operations confined to a directory tree, resolved by the kernel.
//!
//! Extraction never trusts names: every path is resolved relative to a directory fd with
//! `openat2(2)`, and the leaf is then created, linked or removed with the `*at` calls
//! relative to its resolved parent, never following a symlink at the leaf.
//!
//! * [`Resolve::Beneath`] (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) is for the outer checkpoint
//!   archive, which holds only files and directories: a symlink anywhere on a path is an error
//!   (`ELOOP`), and nothing can resolve outside the tree (`EXDEV`).
//! * [`Resolve::InRoot`] (`RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`) is for applying a rootfs
//!   diff: the tree is a container's root filesystem, whose own symlinks (`/bin -> usr/bin`,
//!   absolute links) must resolve as they would inside the container, i.e. as if the tree were
//!   `/`. `..` and absolute links are clamped at the tree's root, so nothing escapes it.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{FileStat, Mode, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// How paths are resolved beneath the tree's root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolve {
    Beneath,
    InRoot,
}

/// A directory tree that paths are confined to.
#[derive(Debug)]
pub(crate) struct Tree {
    root: OwnedFd,
    resolve: ResolveFlag,
}

impl Tree {
    /// Opens the tree at `path` (which must be a directory; a symlink there is followed, as
    /// the caller named it).
    pub fn open(path: &Path, resolve: Resolve) -> io::Result<Self> {
        let root = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
            resolve: match resolve {
                Resolve::Beneath => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
                Resolve::InRoot => {
                    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
                }
            },
        })
    }

    #[cfg(test)]
    pub fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens `rel` (relative; empty = the root) with `flags`, resolved beneath the root.
    pub fn open_at(&self, rel: &Path, flags: OFlag, mode: u32) -> io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC)
            .mode(Mode::from_bits_truncate(mode))
            .resolve(self.resolve);
        Ok(openat2(self.root.as_fd(), rel, how)?)
    }

    /// Opens directory `rel` as an `O_PATH` fd.
    pub fn dir(&self, rel: &Path) -> io::Result<OwnedFd> {
        self.open_at(rel, OFlag::O_PATH | OFlag::O_DIRECTORY, 0)
    }

    /// Opens directory `rel`, creating missing components with `mode`.
    pub fn dir_create(&self, rel: &Path, mode: u32) -> io::Result<OwnedFd> {
        match self.dir(rel) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let mut prefix = PathBuf::new();
        let mut fd = self.dir(&prefix)?;
        for c in rel.components() {
            let Component::Normal(name) = c else {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            };
            match mkdirat(fd.as_fd(), name, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            prefix.push(name);
            fd = self.dir(&prefix)?;
        }
        Ok(fd)
    }

    /// The resolved parent directory of `rel` and its last component, creating missing
    /// parents with `mode` if `create` is set.
    pub fn parent<'p>(
        &self,
        rel: &'p Path,
        create: Option<u32>,
    ) -> io::Result<(OwnedFd, &'p OsStr)> {
        let leaf = rel
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let fd = match create {
            Some(mode) => self.dir_create(parent, mode)?,
            None => self.dir(parent)?,
        };
        Ok((fd, leaf))
    }
}

/// `lstat` of `name` in `dir`, `None` if it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Removes `name` in `dir` and, if it is a directory, everything beneath it, never following
/// a symlink (a symlink is removed itself). Returns whether anything existed.
/// `name` must be one component: `.`, `..`, an empty name or one with a `/` is refused
/// (`EINVAL`), and the directory is opened with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`.
pub(crate) fn remove_tree_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let b = name.as_bytes();
    if matches!(b, b"" | b"." | b"..") || b.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(false);
    };
    if !is_dir(&st) {
        unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)?;
        return Ok(true);
    }
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let fd = openat2(dir, name, how)?;
    clear_dir(fd)?;
    unlinkat(dir, name, UnlinkatFlags::RemoveDir)?;
    Ok(true)
}

/// Removes every entry of the directory `fd` (recursively), keeping the directory.
pub(crate) fn clear_dir(fd: OwnedFd) -> io::Result<()> {
    for name in list_dir(fd.as_fd())? {
        remove_tree_at(fd.as_fd(), OsStr::from_bytes(&name))?;
    }
    Ok(())
}

/// Names in directory `fd` (without `.` and `..`).
pub(crate) fn list_dir(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let dup = nix::fcntl::openat(
        fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// Whether an `openat2` failure means the path tried to leave the tree or pass a symlink.
pub(crate) fn is_escape(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::EXDEV))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beneath_refuses_symlinks_and_in_root_clamps_them() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();

        let b = Tree::open(&root, Resolve::Beneath).unwrap();
        let e = b.dir(Path::new("bin")).unwrap_err();
        assert!(is_escape(&e), "{e}");
        assert!(is_escape(&b.dir(Path::new("abs")).unwrap_err()));

        let r = Tree::open(&root, Resolve::InRoot).unwrap();
        // `bin/x` lands in usr/bin; `/` and `..` stay in the tree.
        r.dir_create(Path::new("bin/x"), 0o755).unwrap();
        assert!(root.join("usr/bin/x").is_dir());
        r.dir_create(Path::new("abs/y"), 0o755).unwrap();
        assert!(root.join("y").is_dir());
        r.dir_create(Path::new("up/z"), 0o755).unwrap();
        assert!(root.join("z").is_dir());
        assert!(!t.path().join("z").exists());
    }

    #[test]
    fn remove_tree_does_not_follow_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d/e")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d/e/link")).unwrap();
        let tree = Tree::open(&root, Resolve::InRoot).unwrap();
        assert!(remove_tree_at(tree.root(), OsStr::new("d")).unwrap());
        assert!(!root.join("d").exists());
        assert!(outside.join("keep").exists());
        assert!(!remove_tree_at(tree.root(), OsStr::new("d")).unwrap());
        for bad in ["", ".", "..", "a/b"] {
            let e = remove_tree_at(tree.root(), OsStr::new(bad)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
        assert!(outside.join("keep").exists());
    }
}
