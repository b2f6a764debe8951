//! The generator of the malicious-archive corpus in `integration/corpus/`.
//!
//! Every case is a complete checkpoint archive (a tar, sometimes compressed) written byte by
//! byte the way an attacker would, without a tar library that might refuse to write it. The
//! bytes are a pure function of this code (no times, no randomness), so the committed corpus is
//! reproducible: `tests/malicious.rs` checks that every committed file equals its generated
//! bytes, and `cargo run -p cpengine-integration --bin cpe-corpus -- integration/corpus`
//! rewrites the directory after a change here.
//!
//! What each case must produce is decided in `tests/malicious.rs`, keyed by the file name.

use std::io::Write;

/// Where a case attacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The outer archive: extraction must refuse it.
    Archive,
    /// The outer archive is fine; its `rootfs-diff.tar` / `deleted.files` attack the rootfs.
    Rootfs,
    /// The outer archive is fine; a JSON member or a CRIU image is hostile to its decoder.
    Content,
}

/// One malicious archive.
#[derive(Debug, Clone)]
pub struct Case {
    /// File name in the corpus directory.
    pub file: &'static str,
    pub stage: Stage,
    pub bytes: Vec<u8>,
}

// ---- raw tar ---------------------------------------------------------------------------------

/// A ustar header with anything in it.
pub fn header(
    name: &[u8],
    flag: u8,
    mode: u32,
    size: u64,
    link: &[u8],
    dev: (u32, u32),
) -> Vec<u8> {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..107].copy_from_slice(format!("{mode:07o}").as_bytes());
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = flag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[329..336].copy_from_slice(format!("{:07o}", dev.0).as_bytes());
    h[337..344].copy_from_slice(format!("{:07o}", dev.1).as_bytes());
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    h.to_vec()
}

fn padded(mut d: Vec<u8>) -> Vec<u8> {
    d.resize(d.len().div_ceil(512) * 512, 0);
    d
}

/// A regular file member.
pub fn file(name: &[u8], data: &[u8]) -> Vec<u8> {
    file_mode(name, 0o600, data)
}

pub fn file_mode(name: &[u8], mode: u32, data: &[u8]) -> Vec<u8> {
    let mut v = header(name, b'0', mode, data.len() as u64, b"", (0, 0));
    v.extend(padded(data.to_vec()));
    v
}

pub fn dir(name: &[u8]) -> Vec<u8> {
    header(name, b'5', 0o700, 0, b"", (0, 0))
}

/// A pax extended header with `records` for the next member.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
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
    let mut out = header(b"PaxHeaders/x", b'x', 0o644, data.len() as u64, b"", (0, 0));
    out.extend(padded(data));
    out
}

/// The two zero blocks that end a tar.
pub fn end(mut v: Vec<u8>) -> Vec<u8> {
    v.extend([0u8; 1024]);
    v
}

// ---- valid pieces ----------------------------------------------------------------------------

/// A minimal OCI runtime spec (enough for the engine's typed parse) with these mounts.
pub fn spec_json(mounts: &str) -> Vec<u8> {
    format!(
        r#"{{"ociVersion":"1.0.2","process":{{"cwd":"/","args":["sh"],"user":{{"uid":0,"gid":0}}}},"root":{{"path":"rootfs"}},"mounts":{mounts},"linux":{{"namespaces":[{{"type":"pid"}},{{"type":"mount"}},{{"type":"network"}}]}}}}"#
    )
    .into_bytes()
}

pub const CONFIG_JSON: &[u8] = br#"{"id":"evil","name":"evil","createdTime":"0001-01-01T00:00:00Z","checkpointedTime":"0001-01-01T00:00:00Z","restoredTime":"0001-01-01T00:00:00Z","restored":false}"#;

/// CRIU's inventory magic with nothing after it: any restore of these images fails in CRIU.
const INVENTORY: &[u8] = &[0x16, 0x31, 0x31, 0x58];

/// The members of a well-formed archive, with `extra` members in between.
pub fn archive_with(extra: Vec<u8>, spec: &[u8], config: &[u8]) -> Vec<u8> {
    end([
        dir(b"checkpoint/"),
        file(b"checkpoint/inventory.img", INVENTORY),
        file(b"config.dump", config),
        file(b"spec.dump", spec),
        extra,
    ]
    .concat())
}

/// A well-formed archive carrying a `rootfs-diff.tar` (raw bytes) and optionally
/// `deleted.files`.
pub fn with_diff(diff: Vec<u8>, deleted: Option<&[u8]>) -> Vec<u8> {
    let mut extra = file(b"rootfs-diff.tar", &diff);
    if let Some(d) = deleted {
        extra.extend(file(b"deleted.files", d));
    }
    archive_with(extra, &spec_json("[]"), CONFIG_JSON)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).expect("gzip");
    gz.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 10).expect("zstd")
}

/// Zero-filled members under `checkpoint/` adding up to `mib` MiB, in 6 MiB members.
fn zero_members(mib: u64) -> Vec<u8> {
    let mut v = Vec::new();
    let mut left = mib << 20;
    let mut i = 0;
    while left > 0 {
        let n = left.min(6 << 20);
        v.extend(header(
            format!("checkpoint/pages-{i}.img").as_bytes(),
            b'0',
            0o600,
            n,
            b"",
            (0, 0),
        ));
        v.extend(vec![0u8; n as usize]);
        left -= n;
        i += 1;
    }
    v
}

/// A CRIU image: the common magic, `magic`, then raw `body`.
fn image(magic: u32, body: &[u8]) -> Vec<u8> {
    let mut v = 0x5456_4319u32.to_le_bytes().to_vec();
    v.extend(magic.to_le_bytes());
    v.extend(body);
    v
}

const PSTREE_MAGIC: u32 = 0x5027_3030;

// ---- the cases -------------------------------------------------------------------------------

/// Every case of the corpus.
pub fn cases() -> Vec<Case> {
    let head = || {
        [
            dir(b"checkpoint/"),
            file(b"checkpoint/inventory.img", INVENTORY),
        ]
        .concat()
    };
    let a = |file, bytes| Case {
        file,
        stage: Stage::Archive,
        bytes,
    };
    let r = |file, bytes| Case {
        file,
        stage: Stage::Rootfs,
        bytes,
    };
    let c = |file, bytes| Case {
        file,
        stage: Stage::Content,
        bytes,
    };
    let ok_spec = spec_json("[]");
    vec![
        // The outer archive.
        a(
            "dotdot.tar",
            end([head(), file(b"../escaped", b"x")].concat()),
        ),
        a(
            "nested-dotdot.tar",
            end([head(), file(b"checkpoint/../../escaped", b"x")].concat()),
        ),
        a(
            "absolute.tar",
            end([head(), file(b"/etc/cpengine-evil", b"x")].concat()),
        ),
        a(
            "symlink-then-file.tar",
            end([
                header(b"cp", b'2', 0o777, 0, b"..", (0, 0)),
                file(b"cp/escaped", b"x"),
            ]
            .concat()),
        ),
        a(
            "hardlink-outside.tar",
            end([
                head(),
                header(b"passwd", b'1', 0o644, 0, b"/etc/passwd", (0, 0)),
            ]
            .concat()),
        ),
        a(
            "char-device.tar",
            end([head(), header(b"mem", b'3', 0o666, 0, b"", (1, 1))].concat()),
        ),
        a(
            "block-device.tar",
            end([head(), header(b"sda", b'4', 0o666, 0, b"", (8, 0))].concat()),
        ),
        a(
            "fifo.tar",
            end([head(), header(b"fifo", b'6', 0o666, 0, b"", (0, 0))].concat()),
        ),
        a(
            "nul-name.tar",
            end([head(), pax(&[("path", b"config\0.dump")]), file(b"x", b"")].concat()),
        ),
        a(
            "newline-name.tar",
            end([head(), file(b"config\n.dump", b"")].concat()),
        ),
        a(
            "huge-declared-size.tar",
            end([
                head(),
                header(
                    b"checkpoint/pages-1.img",
                    b'0',
                    0o600,
                    0o77777777777,
                    b"",
                    (0, 0),
                ),
            ]
            .concat()),
        ),
        a(
            "gzip-bomb.tar.gz",
            gzip(&end([head(), zero_members(24)].concat())),
        ),
        a(
            "zstd-bomb.tar.zst",
            zstd(&end([head(), zero_members(24)].concat())),
        ),
        a(
            "truncated-data.tar",
            [
                head(),
                header(b"spec.dump", b'0', 0o600, 5000, b"", (0, 0)),
                vec![b'{'; 700],
            ]
            .concat(),
        ),
        a(
            "truncated-header.tar",
            [
                head(),
                header(b"spec.dump", b'0', 0o600, 0, b"", (0, 0))[..200].to_vec(),
            ]
            .concat(),
        ),
        a(
            "duplicate-member.tar",
            end([
                head(),
                file(b"config.dump", CONFIG_JSON),
                file(b"./config.dump", CONFIG_JSON),
            ]
            .concat()),
        ),
        a(
            "setuid-member.tar",
            archive_with(
                file_mode(b"checkpoint/suid", 0o6755, b"#!/bin/sh\n"),
                &ok_spec,
                CONFIG_JSON,
            ),
        ),
        // JSON members and CRIU images hostile to their decoders.
        c(
            "config-wrong-types.tar",
            archive_with(
                Vec::new(),
                &ok_spec,
                br#"{"id":5,"name":[],"restored":"yes"}"#,
            ),
        ),
        c(
            "status-wrong-types.tar",
            archive_with(
                file(b"status.dump", br#"{"id":[1],"metadata":"x"}"#),
                &ok_spec,
                CONFIG_JSON,
            ),
        ),
        c(
            "deleted-wrong-type.tar",
            with_diff(end(Vec::new()), Some(br#"{"/etc":1}"#)),
        ),
        c(
            "spec-not-an-object.tar",
            archive_with(Vec::new(), b"[1,2,3]", CONFIG_JSON),
        ),
        c(
            "spec-root-wrong-type.tar",
            archive_with(
                Vec::new(),
                br#"{"ociVersion":"1.0.2","root":"rootfs","process":{"cwd":"/","args":["sh"]}}"#,
                CONFIG_JSON,
            ),
        ),
        c(
            "pstree-bad-magic.tar",
            archive_with(
                file(b"checkpoint/pstree.img", &image(0x1234_5678, &[])),
                &ok_spec,
                CONFIG_JSON,
            ),
        ),
        c(
            "pstree-truncated.tar",
            archive_with(
                file(
                    b"checkpoint/pstree.img",
                    &image(PSTREE_MAGIC, &[40, 0, 0, 0, 8, 1]),
                ),
                &ok_spec,
                CONFIG_JSON,
            ),
        ),
        c(
            "pstree-oversized-entry.tar",
            archive_with(
                file(
                    b"checkpoint/pstree.img",
                    &image(PSTREE_MAGIC, &0xffff_fff0u32.to_le_bytes()),
                ),
                &ok_spec,
                CONFIG_JSON,
            ),
        ),
        // The rootfs diff and deleted.files.
        r(
            "diff-dotdot.tar",
            with_diff(end(file(b"../../cpengine-evil", b"x")), None),
        ),
        // A whiteout whose hidden name is `..` (or `.`): it must not empty the parent of the
        // rootfs (or the rootfs).
        r(
            "diff-whiteout-dotdot.tar",
            with_diff(end(file(b".wh...", b"")), None),
        ),
        r(
            "diff-whiteout-dot.tar",
            with_diff(end(file(b"etc/.wh..", b"")), None),
        ),
        r(
            "diff-absolute.tar",
            with_diff(end(file(b"/etc/cpengine-evil", b"x")), None),
        ),
        r(
            "diff-nul-name.tar",
            with_diff(
                end([pax(&[("path", b"etc/a\0b")]), file(b"x", b"")].concat()),
                None,
            ),
        ),
        r(
            "diff-symlink-then-file.tar",
            with_diff(
                end([
                    header(b"etc", b'2', 0o777, 0, b"/", (0, 0)),
                    file(b"etc/cpengine-evil", b"x"),
                    header(b"up", b'2', 0o777, 0, b"../../../../..", (0, 0)),
                    file(b"up/cpengine-evil-up", b"x"),
                ]
                .concat()),
                None,
            ),
        ),
        r(
            "diff-hardlink-absolute.tar",
            with_diff(
                end(header(b"passwd", b'1', 0o644, 0, b"/etc/passwd", (0, 0))),
                None,
            ),
        ),
        r(
            "diff-hardlink-dotdot.tar",
            with_diff(
                end(header(
                    b"passwd",
                    b'1',
                    0o644,
                    0,
                    b"../../../etc/passwd",
                    (0, 0),
                )),
                None,
            ),
        ),
        r(
            "diff-block-device.tar",
            with_diff(end(header(b"dev/sda", b'4', 0o666, 0, b"", (8, 0))), None),
        ),
        r(
            "diff-char-device.tar",
            with_diff(end(header(b"dev/mem", b'3', 0o666, 0, b"", (1, 1))), None),
        ),
        r(
            "diff-harmless-devices.tar",
            with_diff(
                end([
                    header(b"dev/null", b'3', 0o666, 0, b"", (1, 3)),
                    header(b"dev/fifo", b'6', 0o600, 0, b"", (0, 0)),
                ]
                .concat()),
                None,
            ),
        ),
        r(
            "diff-setuid.tar",
            with_diff(end(file_mode(b"bin/su", 0o4755, b"#!/bin/sh\n")), None),
        ),
        r(
            "diff-overlay-xattr.tar",
            with_diff(
                end([
                    pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/etc")]),
                    dir(b"redirected/"),
                ]
                .concat()),
                None,
            ),
        ),
        r(
            "diff-gzip-bomb.tar",
            with_diff(
                gzip(&end([
                    header(b"zeros", b'0', 0o600, 24 << 20, b"", (0, 0)),
                    vec![0u8; 24 << 20],
                ]
                .concat())),
                None,
            ),
        ),
        r(
            "deleted-dotdot.tar",
            with_diff(end(Vec::new()), Some(br#"["/../../etc"]"#)),
        ),
        r(
            "deleted-root.tar",
            with_diff(end(Vec::new()), Some(br#"["/"]"#)),
        ),
        c(
            "bind-host-root.tar",
            archive_with(
                Vec::new(),
                &spec_json(
                    r#"[{"destination":"/host","type":"bind","source":"/","options":["rbind","rw"]}]"#,
                ),
                CONFIG_JSON,
            ),
        ),
        r(
            "mount-through-symlink.tar",
            archive_with(
                file(
                    b"rootfs-diff.tar",
                    &end(header(b"evil", b'2', 0o777, 0, b"/etc", (0, 0))),
                ),
                &spec_json(
                    r#"[{"destination":"/evil/cpengine-planted","type":"tmpfs","source":"tmpfs"}]"#,
                ),
                CONFIG_JSON,
            ),
        ),
    ]
}
