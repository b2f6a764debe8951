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
    let upstream = shapes(&compile_upstream(
        &upstream_dir(),
        &[
            "stats.proto",
            "inventory.proto",
            "pstree.proto",
            "core.proto",
        ],
    ));
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
    assert!(checked > 40, "only {checked} fields compared");
}
