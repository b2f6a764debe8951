//! Generates the prost types for CRIU's RPC and the image entries cpengine decodes.
//! Needs `protoc` (Debian's protobuf-compiler, installed by scripts/setup.sh).

fn main() {
    const PROTOS: &[&str] = &[
        "proto/rpc.proto",
        "proto/stats.proto",
        "proto/inventory.proto",
        "proto/core.proto",
        "proto/mm.proto",
        "proto/pagemap.proto",
        "proto/fs.proto",
        "proto/fdinfo.proto",
        "proto/files.proto",
        "proto/sockets.proto",
        "proto/mnt.proto",
        "proto/seccomp.proto",
        "proto/cgroup.proto",
    ];
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut cfg = prost_build::Config::new();
    // Keep a descriptor set of our own protos so the drift test can compare it with upstream's.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    cfg.file_descriptor_set_path(out.join("criu-descriptors.bin"));
    if let Err(e) = cfg.compile_protos(PROTOS, &["proto"]) {
        panic!("compiling CRIU protos failed (is protoc installed? run scripts/setup.sh): {e}");
    }
}
