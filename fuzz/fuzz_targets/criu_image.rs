//! CRIU image files: the framing reader (`criu_proto::image`) with every kind of header, the
//! entry decoders the engine uses, the statistics decoder, and the whole inspection
//! (`cpengine::inspect`) of an images directory built from the input.
//!
//! Input: image files separated by the marker `\xffIMG`; the n-th file gets the n-th name of
//! [`NAMES`], so the fuzzer can build consistent sets (a pstree naming pid 1, its core, mm,
//! pagemap and pages files, …).
#![no_main]

use std::sync::OnceLock;

use criu_proto::image::{Header, ImageReader, header_for};
use criu_proto::images::{
    CoreEntry, FdinfoEntry, FileEntry, FsEntry, InventoryEntry, MmEntry, PagemapEntry,
    PagemapHead, PstreeEntry, TaskKobjIdsEntry,
};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "pstree.img",
    "core-1.img",
    "mm-1.img",
    "pagemap-1.img",
    "pages-1.img",
    "ids-1.img",
    "fdinfo-2.img",
    "files.img",
    "fs-1.img",
    "inventory.img",
    "stats-dump",
    "core-2.img",
];

fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm"))
}

fn entries<M: criu_proto::prost::Message + Default>(data: &[u8], header: Header) {
    let Ok(mut r) = ImageReader::with_limit(data, header, 1 << 20) else {
        return;
    };
    for _ in 0..1000 {
        match r.next_entry::<M>() {
            Ok(Some(_)) => {}
            _ => return,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let files: Vec<&[u8]> = split(data, b"\xffIMG");
    // The framing and the decoders on the first file, under every header kind.
    if let Some(first) = files.first() {
        for h in [
            Header::Raw,
            Header::Single(criu_proto::image::magic::INVENTORY),
            Header::Common(criu_proto::image::magic::PSTREE),
            Header::Service(criu_proto::image::magic::STATS),
        ] {
            entries::<PstreeEntry>(first, h);
        }
        let _ = cpengine::report::decode_stats(*first);
    }
    // Every file with its own name's header and message.
    for (name, bytes) in NAMES.iter().zip(&files) {
        let Some(h) = header_for(name) else { continue };
        match *name {
            "pstree.img" => entries::<PstreeEntry>(bytes, h),
            n if n.starts_with("core-") => entries::<CoreEntry>(bytes, h),
            "mm-1.img" => entries::<MmEntry>(bytes, h),
            "pagemap-1.img" => {
                entries::<PagemapHead>(bytes, h);
                entries::<PagemapEntry>(bytes, h);
            }
            "ids-1.img" => entries::<TaskKobjIdsEntry>(bytes, h),
            "fdinfo-2.img" => entries::<FdinfoEntry>(bytes, h),
            "files.img" => entries::<FileEntry>(bytes, h),
            "fs-1.img" => entries::<FsEntry>(bytes, h),
            "inventory.img" => entries::<InventoryEntry>(bytes, h),
            _ => {}
        }
    }
    // The whole inspection of the set.
    let dir = scratch().path().join("images");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    for (name, bytes) in NAMES.iter().zip(&files) {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let req = cpengine::inspect::ViewRequest {
        ps_tree: true,
        cmdline: true,
        env: true,
        files: true,
        sockets: true,
        memory: true,
        search: Some(cpengine::inspect::SearchOptions::new(&b"ab"[..])),
        ..Default::default()
    };
    let limits = cpengine::inspect::Limits {
        max_scan: 1 << 20,
        max_read: 1 << 16,
        ..Default::default()
    };
    let _ = cpengine::inspect::inspect_dir(&dir, &req, &limits);
    let _ = cpengine::images::read_pstree(&dir);
    let _ = cpengine::images::read_inventory(&dir);
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
