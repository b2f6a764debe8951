//! The archive reader on arbitrary bytes: compression sniffing, the capped tar reader, name
//! rules, and the metadata pass (`read_info`) with its JSON decoders.
#![no_main]

use std::sync::OnceLock;

use cpengine::archive::{self, Limits, ReadOptions};
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm"))
}

fn limits() -> Limits {
    Limits {
        max_members: 10_000,
        max_total_bytes: 4 << 20,
        max_member_bytes: 2 << 20,
        max_json_bytes: 1 << 20,
        max_path_len: 4096,
    }
}

fuzz_target!(|data: &[u8]| {
    let path = scratch().path().join("a.tar");
    std::fs::write(&path, data).expect("writing the input");
    let opts = ReadOptions {
        limits: limits(),
        ..Default::default()
    };
    let _ = archive::read_info_with(&path, &opts);
    let mut buf = vec![0u8; 4096];
    let _ = archive::visit(&path, &opts, |m, r| {
        assert!(!m.name.is_empty() && !m.name.starts_with('/'));
        assert!(!m.name.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
        while r.read(&mut buf).map_err(|e| archive::ArchiveError::Extract {
            name: m.name.clone(),
            source: e,
        })? > 0
        {}
        Ok(())
    });
});
