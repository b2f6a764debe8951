//! The checkpoint archive writer and reader against their contract: layout, modes, exact
//! nested sizes, compression round trips, atomicity, and rejection of malicious archives
//! without writing outside the target.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cpengine::archive::{
    self, ArchiveError, ArchiveInput, Compression, ConfigDump, EngineKind, GoTime, Limits,
    MemberKind, WriteOptions,
};
use cpengine::rootfs::{self, Base};
use serde_json::json;

fn images(dir: &Path) -> PathBuf {
    let d = dir.join("images");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("inventory.img"), vec![1u8; 300]).unwrap();
    std::fs::write(d.join("pages-1.img"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(d.join("pagemap-1.img"), vec![2u8; 100]).unwrap();
    std::fs::write(d.join("descriptors.json"), b"[\"/dev/null\"]").unwrap();
    d
}

fn input(dir: &Path, rootfs: Option<rootfs::RootfsDiff>) -> ArchiveInput {
    let stats = dir.join("stats-dump");
    std::fs::write(&stats, b"not parsed by the writer").unwrap();
    let log = dir.join("dump.log");
    std::fs::write(&log, b"criu log\n").unwrap();
    let mut spec = json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "x-custom": [1]});
    archive::annotate_spec(
        &mut spec,
        &archive::CheckpointAnnotations {
            container_name: "web".into(),
            sandbox_name: Some("pod".into()),
            sandbox_namespace: Some("ns".into()),
            criu_version: Some("4.2.1".into()),
            checkpointed: GoTime::now(),
        },
    )
    .unwrap();
    ArchiveInput {
        images_dir: images(dir),
        config: ConfigDump {
            id: "f".repeat(64),
            name: "web".into(),
            rootfs_image_name: "localhost/busybox:latest".into(),
            runtime: "runc".into(),
            created_time: GoTime::now(),
            checkpointed_time: GoTime::now(),
            ..Default::default()
        },
        spec,
        stats_dump: Some(stats),
        dump_log: Some(log),
        rootfs,
        extra: vec![("status.dump".into(), br#"{"id":"x"}"#.to_vec())],
    }
}

/// A small plain-directory rootfs diff (no root needed).
fn small_diff(dir: &Path) -> rootfs::RootfsDiff {
    let (base, root) = (dir.join("base"), dir.join("root"));
    for d in [&base, &root] {
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/old"), b"old").unwrap();
    }
    std::fs::write(root.join("etc/new"), b"new content").unwrap();
    std::fs::write(root.join(format!("{}.txt", "long".repeat(40))), b"x").unwrap();
    std::fs::remove_file(root.join("etc/old")).unwrap();
    rootfs::plan_dir(&root, &Base::Dir(base), &[]).unwrap()
}

/// (name, type flag, mode, uid, gid, size) of every member of a (decompressed) tar.
fn list(bytes: &[u8]) -> Vec<(String, tar::EntryType, u32, u64, u64, u64)> {
    let mut ar = tar::Archive::new(bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let h = e.header();
            (
                String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                e.size(),
            )
        })
        .collect()
}

fn decompress(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(&raw[..]).unwrap()
    } else if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    }
}

#[test]
fn writer_layout_modes_and_nested_diff() {
    let t = tempfile::tempdir().unwrap();
    let diff = small_diff(t.path());
    let planned = diff.tar_size();
    let inp = input(t.path(), Some(diff));
    let dest = t.path().join("out.tar");
    let rep = archive::write_archive(&dest, &inp, &WriteOptions::default()).unwrap();
    assert_eq!(rep.rootfs_diff_bytes, planned);
    assert_eq!(rep.images_bytes, 300 + (3 << 20) + 100 + 13);
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let bytes = std::fs::read(&dest).unwrap();
    assert_eq!(bytes.len() as u64, rep.bytes);
    let members = list(&bytes);
    let names: Vec<&str> = members.iter().map(|m| m.0.as_str()).collect();
    assert_eq!(
        names[0], "checkpoint/",
        "explicit checkpoint dir entry first"
    );
    assert_eq!(members[0].1, tar::EntryType::Directory);
    for n in [
        "checkpoint/inventory.img",
        "checkpoint/pages-1.img",
        "checkpoint/descriptors.json",
        "config.dump",
        "spec.dump",
        "stats-dump",
        "dump.log",
        "rootfs-diff.tar",
        "deleted.files",
        "status.dump",
    ] {
        assert!(names.contains(&n), "{n} missing from {names:?}");
    }
    for (name, ty, mode, uid, gid, _) in &members {
        assert!(!name.starts_with("./") && !name.starts_with('/'), "{name}");
        assert_eq!((*uid, *gid), (0, 0), "{name}");
        match ty {
            tar::EntryType::Regular => assert_eq!(*mode, 0o600, "{name}"),
            tar::EntryType::Directory => assert_eq!(*mode, 0o700, "{name}"),
            other => panic!("{name} has type {other:?}"),
        }
    }
    // The nested tar: exact declared size, a valid tar by an independent reader.
    let mut ar = tar::Archive::new(&bytes[..]);
    let mut nested = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path_bytes().as_ref() == b"rootfs-diff.tar" {
            assert_eq!(e.size(), planned);
            e.read_to_end(&mut nested).unwrap();
        }
    }
    assert_eq!(nested.len() as u64, planned);
    let inner: Vec<String> = list(&nested).into_iter().map(|m| m.0).collect();
    assert!(inner.contains(&"etc/new".to_string()), "{inner:?}");
    assert!(inner.iter().any(|n| n.starts_with("longlong")), "{inner:?}");

    let info = archive::read_info(&dest).unwrap();
    assert_eq!(info.engine, EngineKind::Cpengine);
    assert_eq!(info.identity.container_name, "web");
    assert_eq!(info.identity.pod.as_deref(), Some("pod"));
    assert_eq!(info.checkpoint_size, rep.images_bytes);
    assert_eq!(info.memory_pages_size, 3 << 20);
    assert_eq!(info.rootfs_diff_size, planned);
    assert_eq!(
        info.deleted_files.as_deref(),
        Some(&["/etc/old".to_string()][..])
    );
    assert_eq!(info.config, inp.config);
    assert_eq!(info.spec["x-custom"], json!([1]));
    assert!(info.has_stats_dump && info.has_status_dump);
    assert_eq!(info.compression, Compression::None);
}

#[test]
fn each_compression_round_trips() {
    let t = tempfile::tempdir().unwrap();
    let inp = input(t.path(), Some(small_diff(t.path())));
    let mut plain: Option<Vec<u8>> = None;
    for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
        let dest = t.path().join(format!("a-{c}.tar"));
        let rep = archive::write_archive(
            &dest,
            &inp,
            &WriteOptions {
                compression: c,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rep.compression, c);
        let tarbytes = decompress(&dest);
        assert_eq!(tarbytes.len() as u64, rep.tar_bytes);
        let info = archive::read_info(&dest).unwrap();
        assert_eq!(info.compression, c);
        let x =
            archive::extract(&dest, &t.path().join(format!("x-{c}")), &Limits::default()).unwrap();
        assert_eq!(
            std::fs::read(x.images_dir.join("pages-1.img")).unwrap(),
            vec![7u8; 3 << 20]
        );
        assert_eq!(x.deleted, ["/etc/old"]);
        assert!(x.rootfs_diff.is_some());
        // The tar stream is identical whatever the compression, except for timestamps of
        // generated members (all written within the same second here, usually).
        if let Some(p) = &plain {
            assert_eq!(p.len(), tarbytes.len());
        } else {
            plain = Some(tarbytes);
        }
    }
}

#[test]
fn zstd_is_not_rewritten_as_plain_by_name() {
    let t = tempfile::tempdir().unwrap();
    let inp = input(t.path(), None);
    let dest = t.path().join("looks-plain.tar");
    archive::write_archive(
        &dest,
        &inp,
        &WriteOptions {
            compression: Compression::Zstd,
            workers: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        std::fs::read(&dest)
            .unwrap()
            .starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
    );
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn failing_write_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let dest = out.join("a.tar");
    // A FIFO in the images dir cannot be archived: error after planning started.
    let mut inp = input(t.path(), None);
    nix::unistd::mkfifo(
        &inp.images_dir.join("zz.fifo"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let e = archive::write_archive(&dest, &inp, &WriteOptions::default()).unwrap_err();
    assert!(
        matches!(e, ArchiveError::UnsupportedImageFile { .. }),
        "{e}"
    );
    assert!(!dest.exists());
    std::fs::remove_file(inp.images_dir.join("zz.fifo")).unwrap();

    // A source that vanishes after planning fails mid-stream.
    inp.dump_log = Some(t.path().join("missing.log"));
    let e = archive::write_archive(&dest, &inp, &WriteOptions::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::ReadSource { .. }), "{e}");
    assert!(!dest.exists());
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));

    // A bad extra member name.
    inp.dump_log = None;
    inp.extra.push(("../evil".into(), vec![]));
    let e = archive::write_archive(&dest, &inp, &WriteOptions::default()).unwrap_err();
    assert!(matches!(e, ArchiveError::BadExtraMember { .. }), "{e}");
    assert!(std::fs::read_dir(&out).unwrap().next().is_none());

    // An existing destination is replaced only by a complete archive.
    inp.extra.pop();
    std::fs::write(&dest, b"previous").unwrap();
    inp.stats_dump = Some(t.path().join("nope"));
    assert!(archive::write_archive(&dest, &inp, &WriteOptions::default()).is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"previous");
}

#[test]
fn destination_parent_must_exist() {
    let t = tempfile::tempdir().unwrap();
    let inp = input(t.path(), None);
    let e = archive::write_archive(
        &t.path().join("no/such/dir/a.tar"),
        &inp,
        &WriteOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ArchiveError::DestinationParent { .. }), "{e}");
    assert!(!t.path().join("no").exists());
}

#[test]
fn symlink_at_destination_is_replaced_not_followed() {
    let t = tempfile::tempdir().unwrap();
    let inp = input(t.path(), None);
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let dest = t.path().join("a.tar");
    std::os::unix::fs::symlink(&victim, &dest).unwrap();
    archive::write_archive(&dest, &inp, &WriteOptions::default()).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
}

// ---- malicious archives -------------------------------------------------------------------

/// A raw ustar header: anything goes, as an attacker would write it.
fn raw_header(name: &[u8], flag: u8, size: u64, link: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = flag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h.to_vec()
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let base = k.len() + v.len() + 3;
        let mut len = base + 1;
        while base + len.to_string().len() != len {
            len = base + len.to_string().len();
        }
        data.extend(format!("{len} {k}=").as_bytes());
        data.extend(*v);
        data.push(b'\n');
    }
    let mut out = raw_header(b"PaxHeaders/x", b'x', data.len() as u64, b"");
    out.extend(padded(data));
    out
}

fn padded(mut d: Vec<u8>) -> Vec<u8> {
    d.resize(d.len().div_ceil(512) * 512, 0);
    d
}

fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    let mut v = raw_header(name, b'0', data.len() as u64, b"");
    v.extend(padded(data.to_vec()));
    v
}

fn finish(mut v: Vec<u8>) -> Vec<u8> {
    v.extend([0u8; 1024]);
    v
}

/// A sentinel layout: `<tmp>/sentinel/target` is the extraction target; after the attempt,
/// `<tmp>/sentinel` must hold nothing but `target`, and `<tmp>` nothing new.
struct Sentinel {
    _t: tempfile::TempDir,
    root: PathBuf,
    target: PathBuf,
    archive: PathBuf,
}

impl Sentinel {
    fn new() -> Self {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("sentinel");
        std::fs::create_dir(&root).unwrap();
        Self {
            target: root.join("target"),
            archive: t.path().join("evil.tar"),
            root,
            _t: t,
        }
    }

    fn run(&self, bytes: &[u8]) -> ArchiveError {
        std::fs::write(&self.archive, bytes).unwrap();
        let lim = Limits {
            max_total_bytes: 16 << 20,
            max_member_bytes: 8 << 20,
            max_members: 1000,
            max_json_bytes: 1 << 20,
            max_path_len: 512,
        };
        let e = archive::extract(&self.archive, &self.target, &lim).unwrap_err();
        let mut outside: Vec<String> = Vec::new();
        for d in [&self.root, self._t.path()] {
            for e in std::fs::read_dir(d).unwrap() {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                if !["target", "sentinel", "evil.tar"].contains(&n.as_str()) {
                    outside.push(n);
                }
            }
        }
        assert!(
            outside.is_empty(),
            "written outside the target: {outside:?}"
        );
        assert!(!Path::new("/etc/cpengine-evil").exists());
        e
    }
}

#[test]
fn malicious_archives_are_rejected_with_specific_errors() {
    let ok_head = || file(b"checkpoint/inventory.img", b"x");
    type Check = fn(&ArchiveError) -> bool;
    let cases: Vec<(&str, Vec<u8>, Check)> = vec![
        (
            "dot-dot",
            finish([ok_head(), file(b"../escaped", b"x")].concat()),
            |e| matches!(e, ArchiveError::Traversal { .. }),
        ),
        (
            "nested dot-dot",
            finish(file(b"checkpoint/../../escaped", b"x")),
            |e| matches!(e, ArchiveError::Traversal { .. }),
        ),
        ("absolute", finish(file(b"/etc/cpengine-evil", b"x")), |e| {
            matches!(e, ArchiveError::AbsoluteName { .. })
        }),
        (
            "symlink then through it",
            finish(
                [
                    raw_header(b"checkpoint", b'2', 0, b".."),
                    file(b"checkpoint/escaped", b"x"),
                ]
                .concat(),
            ),
            |e| matches!(e, ArchiveError::SymlinkMember { .. }),
        ),
        (
            "hardlink outside",
            finish(raw_header(b"passwd", b'1', 0, b"/etc/passwd")),
            |e| matches!(e, ArchiveError::HardlinkMember { .. }),
        ),
        (
            "char device",
            finish(raw_header(b"null", b'3', 0, b"")),
            |e| {
                matches!(
                    e,
                    ArchiveError::SpecialMember {
                        kind: MemberKind::CharDevice,
                        ..
                    }
                )
            },
        ),
        (
            "block device",
            finish(raw_header(b"sda", b'4', 0, b"")),
            |e| {
                matches!(
                    e,
                    ArchiveError::SpecialMember {
                        kind: MemberKind::BlockDevice,
                        ..
                    }
                )
            },
        ),
        ("fifo", finish(raw_header(b"fifo", b'6', 0, b"")), |e| {
            matches!(
                e,
                ArchiveError::SpecialMember {
                    kind: MemberKind::Fifo,
                    ..
                }
            )
        }),
        (
            "nul in pax path",
            finish([pax(&[("path", b"a\0b")]), file(b"x", b"")].concat()),
            |e| {
                matches!(
                    e,
                    ArchiveError::BadName {
                        reason: archive::BadName::Nul,
                        ..
                    }
                )
            },
        ),
        ("newline", finish(file(b"config\n.dump", b"")), |e| {
            matches!(
                e,
                ArchiveError::BadName {
                    reason: archive::BadName::Newline,
                    ..
                }
            )
        }),
        (
            "huge declared size",
            finish(raw_header(
                b"checkpoint/pages-1.img",
                b'0',
                0o77777777777,
                b"",
            )),
            |e| matches!(e, ArchiveError::MemberTooLarge { .. }),
        ),
        (
            "duplicate",
            finish(
                [
                    ok_head(),
                    file(b"config.dump", b"{}"),
                    file(b"./config.dump", b"{}"),
                ]
                .concat(),
            ),
            |e| matches!(e, ArchiveError::DuplicateMember { .. }),
        ),
        (
            "truncated data",
            [
                ok_head(),
                raw_header(b"spec.dump", b'0', 5000, b""),
                vec![b'{'; 700],
            ]
            .concat(),
            |e| matches!(e, ArchiveError::Truncated { .. }),
        ),
        (
            "truncated header",
            [
                ok_head(),
                raw_header(b"spec.dump", b'0', 0, b"")[..200].to_vec(),
            ]
            .concat(),
            |e| matches!(e, ArchiveError::Truncated { .. }),
        ),
        (
            "long name",
            finish(
                [
                    pax(&[("path", "a/".repeat(400).as_bytes())]),
                    file(b"x", b""),
                ]
                .concat(),
            ),
            |e| matches!(e, ArchiveError::PathTooLong { .. }),
        ),
        (
            "huge pax header",
            finish(raw_header(b"PaxHeaders/x", b'x', 1 << 30, b"")),
            |e| matches!(e, ArchiveError::ExtensionTooLarge { .. }),
        ),
        (
            "bad checksum",
            {
                let mut h = ok_head();
                h[0] = b'X';
                finish(h)
            },
            |e| matches!(e, ArchiveError::BadHeader { .. }),
        ),
    ];
    for (what, bytes, check) in cases {
        let s = Sentinel::new();
        let e = s.run(&bytes);
        assert!(check(&e), "{what}: unexpected error {e:?}");
    }
}

#[test]
fn too_many_members_and_bombs_stop_at_the_caps() {
    // Many empty members.
    let s = Sentinel::new();
    let mut v = Vec::new();
    for i in 0..1001 {
        v.extend(file(format!("checkpoint/f{i}").as_bytes(), b""));
    }
    assert!(matches!(
        s.run(&finish(v)),
        ArchiveError::TooManyMembers { limit: 1000 }
    ));

    // 64 MiB of zeros in members of 6 MiB, compressed to almost nothing.
    let mut big = file(b"checkpoint/inventory.img", b"x");
    for i in 0..11 {
        big.extend(raw_header(
            format!("checkpoint/pages-{i}.img").as_bytes(),
            b'0',
            6 << 20,
            b"",
        ));
        big.extend(vec![0u8; 6 << 20]);
    }
    let big = finish(big);
    let zs = zstd::encode_all(&big[..], 3).unwrap();
    assert!(zs.len() < 1 << 20);
    let s = Sentinel::new();
    assert!(matches!(s.run(&zs), ArchiveError::TotalTooLarge { .. }));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&big).unwrap();
    let s = Sentinel::new();
    assert!(matches!(
        s.run(&gz.finish().unwrap()),
        ArchiveError::TotalTooLarge { .. }
    ));
    // A single oversized member inside gzip.
    let one = finish(
        [
            raw_header(b"checkpoint/pages-1.img", b'0', 9 << 20, b""),
            vec![0u8; 9 << 20],
        ]
        .concat(),
    );
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&one).unwrap();
    let s = Sentinel::new();
    assert!(matches!(
        s.run(&gz.finish().unwrap()),
        ArchiveError::MemberTooLarge { .. }
    ));
}

#[test]
fn extraction_target_must_be_empty_and_files_land_inside() {
    let t = tempfile::tempdir().unwrap();
    let inp = input(t.path(), None);
    let dest = t.path().join("a.tar");
    archive::write_archive(&dest, &inp, &WriteOptions::default()).unwrap();
    let target = t.path().join("x");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("junk"), b"").unwrap();
    assert!(matches!(
        archive::extract(&dest, &target, &Limits::default()),
        Err(ArchiveError::TargetNotEmpty { .. })
    ));
    std::fs::remove_file(target.join("junk")).unwrap();
    let x = archive::extract(&dest, &target, &Limits::default()).unwrap();
    assert_eq!(x.engine, EngineKind::Cpengine);
    assert_eq!(x.status.as_ref().unwrap().id, "x");
    assert_eq!(
        std::fs::metadata(&x.images_dir)
            .unwrap()
            .permissions()
            .mode()
            & 0o700,
        0o700
    );
    assert!(x.log.is_none());
    assert!(x.stats_dump.is_some());
}
