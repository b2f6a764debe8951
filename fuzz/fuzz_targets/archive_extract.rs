//! Safe extraction and rootfs apply on arbitrary bytes: whatever the input, nothing may be
//! written outside the target directory. The input is extracted as a checkpoint archive into
//! `<sentinel>/target` and applied as a rootfs diff to `<sentinel>/rootfs`; afterwards the
//! sentinel directory must hold nothing else.
#![no_main]

use std::sync::OnceLock;

use cpengine::archive::{self, Limits};
use cpengine::rootfs::{self, ApplyLimits};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm"))
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("listing the sentinel")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    let top = scratch().path();
    let input = top.join("input");
    std::fs::write(&input, data).expect("writing the input");
    let sentinel = top.join("sentinel");
    let _ = std::fs::remove_dir_all(&sentinel);
    std::fs::create_dir(&sentinel).unwrap();
    let rootfs_dir = sentinel.join("rootfs");
    std::fs::create_dir(&rootfs_dir).unwrap();
    let limits = Limits {
        max_members: 2_000,
        max_total_bytes: 4 << 20,
        max_member_bytes: 2 << 20,
        max_json_bytes: 1 << 20,
        max_path_len: 1024,
    };
    let _ = archive::extract(&input, &sentinel.join("target"), &limits);
    let diff = std::fs::File::open(&input).unwrap();
    let lim = ApplyLimits {
        max_bytes: 4 << 20,
        max_entries: 2_000,
    };
    let _ = rootfs::apply_with(&rootfs_dir, diff, &["/a/b".to_string()], &lim);
    let left = names(&sentinel);
    assert!(
        left.iter().all(|n| n == "target" || n == "rootfs"),
        "written outside the targets: {left:?}"
    );
    assert_eq!(names(top), ["input", "sentinel"], "written beside the sentinel");
});
