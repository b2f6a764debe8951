//! The provenance check of a signed archive: the signature member's bytes through
//! `verify_signature` (JSON, key, signature, manifest against the members seen), and the same
//! bytes as a whole archive through the extraction that requires a signature.
#![no_main]

use cpengine::archive::sign::{MemberDigest, NodeKey, TrustedKeys, verify_signature};
use cpengine::archive::{self, Limits, ReadOptions};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a scratch directory"))
}

fuzz_target!(|data: &[u8]| {
    let key = NodeKey::from_seed([7; 32]);
    let trust = TrustedKeys::new([key.public()]);
    let seen = [MemberDigest::dir("checkpoint")];
    if let Ok(k) = verify_signature(data, &seen, &trust) {
        assert_eq!(k, key.public());
    }
    let path = scratch().path().join("a.tar");
    std::fs::write(&path, data).expect("writing the input");
    let target = scratch().path().join("x");
    let _ = std::fs::remove_dir_all(&target);
    let opts = ReadOptions {
        limits: Limits {
            max_members: 1000,
            max_total_bytes: 16 << 20,
            max_member_bytes: 8 << 20,
            max_json_bytes: 1 << 20,
            max_path_len: 4096,
        },
        trust: Some(&trust),
        ..Default::default()
    };
    if let Ok(x) = archive::extract_with(&path, &target, &opts) {
        assert_eq!(x.signed_by, Some(key.public()));
    }
    let _ = std::fs::remove_dir_all(&target);
});
