//! The restore verifier (`cpengine::policy::verify`): CRIU image bytes in, a verdict out —
//! never a panic, a hang or an unbounded allocation, whatever the images hold.
//!
//! Input: image files separated by the marker `\xffIMG`; the n-th file gets the n-th name of
//! [`NAMES`] (the images the verifier reads: inventory, pstree, cores, ids, mounts, seccomp,
//! files, a tmpfs tarball). The first byte picks the policy's variations.
#![no_main]

use std::sync::OnceLock;

use cpengine::policy::{RestorePolicy, SeccompRequirement, VerifyPlan, verify};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "inventory.img",
    "pstree.img",
    "core-1.img",
    "ids-1.img",
    "mountpoints-13.img",
    "seccomp.img",
    "files.img",
    "tmpfs-dev-45.tar.gz.img",
    "core-2.img",
    "unixsk.img",
    "reg-files.img",
];

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, rest)) = data.split_first() else {
        return;
    };
    let files = split(rest, b"\xffIMG");
    let dir = scratch().path().join("images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    for (name, bytes) in NAMES.iter().zip(&files) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let mut policy = RestorePolicy::runtime_default();
    if knobs & 1 != 0 {
        policy = policy.privileged();
    }
    if knobs & 2 != 0 {
        policy.seccomp = SeccompRequirement::Required;
    }
    if knobs & 4 != 0 {
        policy.uid = Some(0);
        policy.gid = Some(0);
    }
    policy.max_tmpfs_bytes = 1 << 20;
    let spec = serde_json::json!({
        "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind"]}],
        "linux": {"devices": [{"path": "/dev/null"}]}
    });
    let plan = VerifyPlan::for_container(&spec, &policy);
    let _ = verify(&dir, &spec, &policy, &plan);
});

fn split<'a>(data: &'a [u8], sep: &[u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(i) = rest.windows(sep.len()).position(|w| w == sep) {
        out.push(&rest[..i]);
        rest = &rest[i + sep.len()..];
    }
    out.push(rest);
    out
}
