//! Drift check: our `.proto` description of CRIU's formats must agree with upstream CRIU.
//!
//! Compiles the upstream `images/*.proto` of the CRIU source tree that `scripts/setup.sh`
//! downloads (default `/usr/local/src/criu-4.2.1`, or `$CPENGINE_CRIU_SRC`) with `protoc` and
//! compares every message and enum field by field. For the RPC (`rpc.proto`) the sets must be
//! identical in both directions; for image entries every field we declare must exist upstream
//! with the same number, type and label. The upstream files are read here, never committed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;
use prost_types::{FileDescriptorSet, field_descriptor_proto::Label, field_descriptor_proto::Type};

fn upstream_dir() -> PathBuf {
    let root = std::env::var_os("CPENGINE_CRIU_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/src/criu-4.2.1"));
    let images = root.join("images");
    assert!(
        images.join("rpc.proto").is_file(),
        "upstream CRIU source not found at {} (run scripts/setup.sh, or set CPENGINE_CRIU_SRC)",
        images.display()
    );
    images
}

fn compile_upstream(dir: &Path, files: &[&str]) -> FileDescriptorSet {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = Command::new("protoc")
        .arg(format!("-I{}", dir.display()))
        .arg("-I/usr/include")
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.path().display()))
        .args(files)
        .status()
        .expect("protoc must be installed (scripts/setup.sh installs protobuf-compiler)");
    assert!(status.success(), "protoc failed on upstream {files:?}");
    FileDescriptorSet::decode(std::fs::read(out.path()).unwrap().as_slice()).unwrap()
}

/// message or enum name -> (file, { field name -> description })
type Shapes = BTreeMap<String, (String, BTreeMap<String, String>)>;

fn shapes(set: &FileDescriptorSet) -> Shapes {
    let mut out = Shapes::new();
    for file in &set.file {
        let fname = file.name().rsplit('/').next().unwrap().to_string();
        for msg in &file.message_type {
            let fields = msg
                .field
                .iter()
                .map(|f| {
                    let ty = match f.r#type() {
                        Type::Message | Type::Enum => {
                            f.type_name().rsplit('.').next().unwrap().to_string()
                        }
                        t => format!("{t:?}"),
                    };
                    let label = match f.label() {
                        Label::Required => "required",
                        Label::Optional => "optional",
                        Label::Repeated => "repeated",
                    };
                    let default = f.default_value.clone().unwrap_or_default();
                    (
                        f.name().to_string(),
                        format!("{} {label} {ty} [{default}]", f.number()),
                    )
                })
                .collect();
            out.insert(msg.name().to_string(), (fname.clone(), fields));
        }
        for en in &file.enum_type {
            let values = en
                .value
                .iter()
                .map(|v| (v.name().to_string(), v.number().to_string()))
                .collect();
            out.insert(en.name().to_string(), (fname.clone(), values));
        }
    }
    out
}

fn ours() -> Shapes {
    shapes(&FileDescriptorSet::decode(criu_proto::DESCRIPTOR_SET).unwrap())
}

#[test]
fn rpc_proto_matches_upstream_exactly() {
    let upstream = shapes(&compile_upstream(&upstream_dir(), &["rpc.proto"]));
    let ours = ours();
    let mut problems = Vec::new();
    for (name, (_, fields)) in upstream.iter().filter(|(_, (f, _))| f == "rpc.proto") {
        match ours.get(name) {
            None => problems.push(format!("{name}: missing in ours")),
            Some((_, our_fields)) => {
                for (field, shape) in fields {
                    match our_fields.get(field) {
                        None => problems.push(format!("{name}.{field}: missing ({shape})")),
                        Some(s) if s != shape => {
                            problems.push(format!("{name}.{field}: ours {s}, upstream {shape}"))
                        }
                        Some(_) => {}
                    }
                }
                for field in our_fields.keys().filter(|f| !fields.contains_key(*f)) {
                    problems.push(format!("{name}.{field}: not upstream"));
                }
            }
        }
    }
    for (name, (file, _)) in &ours {
        if file == "rpc.proto" && !upstream.contains_key(name) {
            problems.push(format!("{name}: not upstream"));
        }
    }
    assert!(
        problems.is_empty(),
        "rpc.proto drifted from CRIU:\n{}",
        problems.join("\n")
    );
    // Sanity: the comparison really covered the RPC.
    assert!(
        upstream["criu_opts"].1.len() >= 70,
        "criu_opts has {} fields",
        upstream["criu_opts"].1.len()
    );
}

#[test]
fn image_entries_match_upstream() {
    let upstream = shapes(&compile_upstream(&upstream_dir(), UPSTREAM_IMAGE_PROTOS));
    let ours = ours();
    let mut checked = 0;
    let mut problems = Vec::new();
    for (name, (file, fields)) in ours.iter().filter(|(_, (f, _))| f != "rpc.proto") {
        let Some((_, up)) = upstream.get(name) else {
            problems.push(format!("{name} ({file}): not upstream"));
            continue;
        };
        for (field, shape) in fields {
            checked += 1;
            match up.get(field) {
                None => problems.push(format!("{name}.{field}: not upstream")),
                Some(s) if s != shape => {
                    problems.push(format!("{name}.{field}: ours {shape}, upstream {s}"))
                }
                Some(_) => {}
            }
        }
    }
    assert!(
        problems.is_empty(),
        "image protos drifted from CRIU:\n{}",
        problems.join("\n")
    );
    assert!(checked > 250, "only {checked} fields compared");
    // Every image message and enum we declare was compared (none silently skipped), and
    // the inspection entries are among them.
    for name in [
        "core_entry",
        "task_core_entry",
        "thread_core_entry",
        "creds_entry",
        "mm_entry",
        "vma_entry",
        "pagemap_head",
        "pagemap_entry",
        "fs_entry",
        "fdinfo_entry",
        "file_entry",
        "fd_types",
        "reg_file_entry",
        "pipe_entry",
        "fifo_entry",
        "tty_file_entry",
        "tty_info_entry",
        "TtyType",
        "unix_sk_entry",
        "inet_sk_entry",
        "sk_opts_entry",
        "packet_sock_entry",
        "netlink_sk_entry",
        "eventfd_file_entry",
        "eventpoll_file_entry",
        "signalfd_entry",
        "inotify_file_entry",
        "timerfd_entry",
        "memfd_file_entry",
        "pidfd_entry",
        "ns_file_entry",
        "ext_file_entry",
        "mnt_entry",
        "fstype",
        "seccomp_entry",
        "seccomp_filter",
        "seccomp_mode",
        "cgroup_entry",
        "cg_set_entry",
        "cg_member_entry",
        "cg_controller_entry",
        "cgroup_dir_entry",
        "cgroup_prop_entry",
        "cgroup_perms",
    ] {
        assert!(ours.contains_key(name), "{name} not declared in our protos");
        assert!(upstream.contains_key(name), "{name} not found upstream");
    }
}

/// Upstream files holding every image message we declare (their imports come along).
const UPSTREAM_IMAGE_PROTOS: &[&str] = &[
    "stats.proto",
    "inventory.proto",
    "pstree.proto",
    "core.proto",
    "creds.proto",
    "mm.proto",
    "vma.proto",
    "pagemap.proto",
    "fs.proto",
    "fdinfo.proto",
    "regfile.proto",
    "pipe.proto",
    "fifo.proto",
    "tty.proto",
    "eventfd.proto",
    "eventpoll.proto",
    "signalfd.proto",
    "fsnotify.proto",
    "timerfd.proto",
    "memfd.proto",
    "pidfd.proto",
    "ns.proto",
    "ext-file.proto",
    "sk-opts.proto",
    "sk-inet.proto",
    "sk-unix.proto",
    "packet-sock.proto",
    "sk-netlink.proto",
    "mnt.proto",
    "seccomp.proto",
    "cgroup.proto",
];

/// Nested messages and enums (such as `core_entry.march`) are compared too: the shapes of
/// top-level declarations alone would let a nested enum drift unnoticed.
#[test]
fn nested_enums_match_upstream() {
    let find = |set: &FileDescriptorSet| -> BTreeMap<String, i32> {
        set.file
            .iter()
            .flat_map(|f| &f.message_type)
            .filter(|m| m.name() == "core_entry")
            .flat_map(|m| &m.enum_type)
            .filter(|e| e.name() == "march")
            .flat_map(|e| &e.value)
            .map(|v| (v.name().to_string(), v.number()))
            .collect()
    };
    let upstream = find(&compile_upstream(&upstream_dir(), &["core.proto"]));
    let ours = find(&FileDescriptorSet::decode(criu_proto::DESCRIPTOR_SET).unwrap());
    assert!(upstream.len() >= 9, "upstream march has {upstream:?}");
    for (name, number) in &ours {
        assert_eq!(upstream.get(name), Some(number), "core_entry.march.{name}");
    }
    assert_eq!(ours.len(), upstream.len(), "march values: ours {ours:?}");
}
