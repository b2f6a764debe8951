//! Rootfs diff round trips on real overlay mounts (root): plan the upper dir of a container-like
//! overlay, write it into a checkpoint archive, extract, apply onto a fresh overlay (and onto a
//! plain copy of the base), and compare the trees. Also: a destination filesystem that fills
//! up leaves nothing behind.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cpengine::archive::{self, ArchiveError, ArchiveInput, ConfigDump, Limits, WriteOptions};
use cpengine::rootfs;
use cpengine_integration::{require_root, scratch};
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// An overlay mount that is unmounted on drop.
struct Overlay {
    merged: PathBuf,
    upper: PathBuf,
}

impl Overlay {
    fn mount(dir: &Path, lower: &Path) -> Self {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .expect("mount overlay (needs root and overlayfs)");
        Self { merged, upper }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = umount2(&self.merged, MntFlags::MNT_DETACH);
    }
}

fn write(p: &Path, data: &[u8]) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn base(lower: &Path) {
    write(&lower.join("etc/motd"), b"welcome\n");
    write(&lower.join("etc/keep"), b"to be deleted\n");
    write(&lower.join("etc/perm"), b"perm\n");
    write(&lower.join("olddir/a"), b"a");
    write(&lower.join("olddir/sub/b"), b"b");
    write(&lower.join("dir2/x"), b"x");
    write(&lower.join("bin/tool"), b"#!/bin/sh\n");
    write(&lower.join("proc/ignored"), b"");
    std::fs::create_dir_all(lower.join("var/empty")).unwrap();
}

/// Changes made through the merged view, as a container would.
fn mutate(m: &Path) {
    write(&m.join("newfile"), b"new\n");
    write(&m.join("etc/motd"), b"changed motd\n");
    std::fs::remove_file(m.join("etc/keep")).unwrap();
    std::fs::remove_dir_all(m.join("olddir")).unwrap();
    write(&m.join("olddir/c"), b"replaced");
    std::fs::set_permissions(m.join("etc/perm"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(m.join("etc/perm"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(m.join("var/empty"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink("../etc/motd", m.join("bin/motd-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/abs", m.join("abs-link")).unwrap();
    write(&m.join("hl/one"), b"shared inode");
    std::fs::hard_link(m.join("hl/one"), m.join("hl/two")).unwrap();
    write(&m.join("xa"), b"with xattrs");
    xattr::set(m.join("xa"), "user.cpengine", b"v\0alue").unwrap();
    xattr::set(m.join("xa"), "trusted.cpengine", b"t").unwrap();
    let f = std::fs::File::create(m.join("sparse")).unwrap();
    f.set_len(256 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"middle", 100 << 20).unwrap();
    std::os::unix::fs::FileExt::write_at(&f, b"start", 0).unwrap();
    drop(f);
    nix::unistd::mkfifo(
        &m.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    write(&m.join("proc/should-not-travel"), b"");
    write(
        &m.join(format!("deep/{}/file", "n".repeat(120))),
        b"long path",
    );
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    content: Option<Vec<u8>>,
    link: Option<PathBuf>,
    rdev: u64,
    mtime: Option<i64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Everything that must survive a round trip, per relative path. File contents are compared
/// in full (files here are small or sparse-but-small-in-data).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Node> {
    fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Node>) {
        let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let md = std::fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let kind = if ft.is_file() {
                "file"
            } else if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "other"
            };
            let mut xattrs: Vec<(String, Vec<u8>)> = xattr::list(&p)
                .unwrap()
                .filter_map(|k| k.into_string().ok())
                .filter(|k| !k.starts_with("trusted.overlay."))
                .map(|k| {
                    let v = xattr::get(&p, &k).unwrap().unwrap_or_default();
                    (k, v)
                })
                .collect();
            xattrs.sort();
            out.insert(
                r.clone(),
                Node {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if ft.is_file() { md.len() } else { 0 },
                    content: ft.is_file().then(|| std::fs::read(&p).unwrap()),
                    link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                    rdev: md.rdev(),
                    mtime: (!ft.is_dir()).then(|| md.mtime()),
                    xattrs,
                },
            );
            if ft.is_dir() {
                walk(root, &r, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, Path::new(""), &mut out);
    out
}

fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let ka: Vec<_> = sa.keys().collect();
    let kb: Vec<_> = sb.keys().collect();
    assert_eq!(
        ka,
        kb,
        "paths differ between {} and {}",
        a.display(),
        b.display()
    );
    for (k, na) in &sa {
        assert_eq!(Some(na), sb.get(k), "{} differs", k.display());
    }
}

fn empty_images(dir: &Path) -> PathBuf {
    let d = dir.join("images");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("inventory.img"), b"inv").unwrap();
    d
}

#[test]
fn overlay_diff_round_trips_through_an_archive() {
    require_root();
    let t = scratch("cpe-rootfs-");
    let lower = t.path().join("lower");
    base(&lower);
    let ov1 = Overlay::mount(&t.path().join("ov1"), &lower);
    mutate(&ov1.merged);

    let diff = rootfs::plan_overlay(
        &ov1.upper,
        std::slice::from_ref(&lower),
        &rootfs::default_excludes(),
    )
    .unwrap();
    let mut deleted = diff.deleted.clone();
    deleted.sort();
    assert_eq!(
        deleted,
        ["/etc/keep", "/olddir/a", "/olddir/sub"],
        "whiteout and opaque-dir deletions, never the re-created dir itself"
    );
    assert!(diff.entries.iter().all(|e| !e.path.starts_with("proc")));
    let xa = diff
        .entries
        .iter()
        .find(|e| e.path == Path::new("xa"))
        .unwrap();
    assert!(
        xa.xattrs
            .iter()
            .all(|(k, _)| !k.starts_with("trusted.overlay."))
    );
    assert!(xa.xattrs.iter().any(|(k, _)| k == "user.cpengine"));
    let sp = diff
        .entries
        .iter()
        .find(|e| e.path == Path::new("sparse"))
        .unwrap();
    assert!(sp.sparse.is_some(), "sparse file planned with its data map");
    let two = diff
        .entries
        .iter()
        .find(|e| e.path == Path::new("hl/two"))
        .unwrap();
    assert_eq!(
        two.kind,
        rootfs::EntryKind::Hardlink {
            target: "hl/one".into()
        }
    );
    // The diff tar is small although the sparse file is 256 MiB.
    assert!(
        diff.tar_size() < 1 << 20,
        "diff tar {} bytes",
        diff.tar_size()
    );

    let dest = t.path().join("ckpt.tar");
    let rep = archive::write_archive(
        &dest,
        &ArchiveInput {
            images_dir: empty_images(t.path()),
            config: ConfigDump::default(),
            spec: serde_json::json!({}),
            stats_dump: None,
            dump_log: None,
            rootfs: Some(diff.clone()),
            extra: vec![],
        },
        &WriteOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.rootfs_diff_bytes, diff.tar_size());
    let x = archive::extract(&dest, &t.path().join("x"), &Limits::default()).unwrap();
    let diff_tar = x.rootfs_diff.clone().expect("rootfs-diff.tar");

    // Onto a fresh overlay of the same base.
    let ov2 = Overlay::mount(&t.path().join("ov2"), &lower);
    let ar = rootfs::apply(
        &ov2.merged,
        std::fs::File::open(&diff_tar).unwrap(),
        &x.deleted,
    )
    .unwrap();
    assert!(ar.warnings.is_empty(), "{:?}", ar.warnings);
    assert_eq!(ar.hardlinks, 1);
    assert_eq!(ar.deleted, 3);
    // /proc is excluded from the diff, so compare without it.
    std::fs::remove_file(ov1.merged.join("proc/should-not-travel")).unwrap();
    assert_same_tree(&ov1.merged, &ov2.merged);
    let md = std::fs::metadata(ov2.merged.join("sparse")).unwrap();
    assert_eq!(md.len(), 256 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "sparse file is dense after apply: {} blocks",
        md.blocks()
    );
    let a = std::fs::metadata(ov2.merged.join("hl/one")).unwrap();
    let b = std::fs::metadata(ov2.merged.join("hl/two")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link kept");
    assert!(!ov2.merged.join("etc/keep").exists());
    assert!(!ov2.merged.join("olddir/a").exists());

    // Onto a plain copy of the base, and a plain-dir plan of the result gives the same
    // deletions.
    let plain = t.path().join("plain");
    assert!(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&lower)
            .arg(&plain)
            .status()
            .unwrap()
            .success()
    );
    rootfs::apply(&plain, std::fs::File::open(&diff_tar).unwrap(), &x.deleted).unwrap();
    assert_same_tree(&ov1.merged, &plain);
    let again = rootfs::plan_dir(
        &plain,
        &rootfs::Base::Dir(lower.clone()),
        &rootfs::default_excludes(),
    )
    .unwrap();
    let mut d2 = again.deleted.clone();
    d2.sort();
    // /proc is excluded: its base content is never reported deleted.
    assert_eq!(d2, ["/etc/keep", "/olddir/a", "/olddir/sub"]);
}

#[test]
fn apply_honours_oci_whiteouts_and_stays_inside() {
    require_root();
    let t = scratch("cpe-wh-");
    let root = t.path().join("root");
    write(&root.join("etc/gone"), b"x");
    write(&root.join("opq/old"), b"x");
    std::os::unix::fs::symlink("/", root.join("escape")).unwrap();
    // A second absolute symlink, to a host directory that exists: followed on the host, a write
    // through it lands in `outside`; resolved in the rootfs, under root/<same path>.
    let outside = t.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let outside_in_root = root.join(outside.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&outside_in_root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
    let marker = format!("cpe-outside-marker-{}", std::process::id());
    // A containerd-style gzip layer: whiteout, opaque marker, a file through an absolute
    // symlink (must land inside the rootfs) and a deletion through it.
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let add = |b: &mut tar::Builder<_>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&mut b, "etc/.wh.gone", b"");
    add(&mut b, "opq/.wh..wh..opq", b"");
    add(&mut b, "opq/new", b"n");
    add(&mut b, &format!("escape/{marker}"), b"n");
    add(&mut b, &format!("out/{marker}"), b"n");
    let gz = b.into_inner().unwrap().finish().unwrap();
    let rep = rootfs::apply(&root, &gz[..], &["/escape/etc".into()]).unwrap();
    assert_eq!(rep.compression, archive::Compression::Gzip);
    assert_eq!(rep.whiteouts, 2);
    assert!(!root.join("etc/gone").exists());
    assert!(!root.join("opq/old").exists());
    assert!(root.join("opq/new").exists());
    // Each write landed inside the rootfs, and not where following the symlink on the host
    // would have put it.
    assert!(
        root.join(&marker).exists(),
        "absolute symlink resolved in the rootfs"
    );
    assert!(
        !Path::new("/").join(&marker).exists(),
        "written through the symlink into the host's /"
    );
    assert!(
        outside_in_root.join(&marker).exists(),
        "absolute symlink resolved in the rootfs"
    );
    assert!(
        !outside.join(&marker).exists(),
        "written through the symlink outside the rootfs"
    );
    assert!(
        !root.join("etc").exists(),
        "deleted through the in-root symlink"
    );
    assert!(Path::new("/etc/passwd").exists());
    // `..` in a diff is refused.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    {
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..9].copy_from_slice(b"../escape");
    }
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    let bad = b.into_inner().unwrap();
    assert!(matches!(
        rootfs::apply(&root, &bad[..], &[]),
        Err(rootfs::RootfsError::UnsafeName { .. })
    ));
    assert!(!t.path().join("escape").exists());
}

#[test]
fn full_destination_filesystem_leaves_nothing() {
    require_root();
    let t = scratch("cpe-full-");
    let small = t.path().join("small");
    std::fs::create_dir(&small).unwrap();
    mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("size=1m"),
    )
    .expect("mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        }
    }
    let _u = Unmount(small.clone());
    let images = t.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("pages-1.img"), vec![9u8; 4 << 20]).unwrap();
    let dest = small.join("a.tar");
    let e = archive::write_archive(
        &dest,
        &ArchiveInput {
            images_dir: images,
            config: ConfigDump::default(),
            spec: serde_json::json!({}),
            stats_dump: None,
            dump_log: None,
            rootfs: None,
            extra: vec![],
        },
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, ArchiveError::Write { source, .. } if source.raw_os_error() == Some(libc::ENOSPC)),
        "{e:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&small).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
