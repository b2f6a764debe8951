//! OCI images against real tools: skopeo reads what cpengine writes, cpengine imports what
//! skopeo writes, and images go through Debian's real registry (`docker-registry`) and back.

use std::collections::BTreeMap;

use cpengine_integration::registry::Registry;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use cpengine::oci::{self, ImageStore, RegistryOptions};
use cpengine_integration::*;
use serde_json::Value;

const CRIO_KEY: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
const CRIU_KEY: &str = "org.criu.checkpoint.container.name";

fn skopeo() -> PathBuf {
    require_program("skopeo")
}

/// Runs `cpengine --state-root <root> args…`, asserts success, returns stdout.
fn cpe(root: &Path, args: &[&str]) -> String {
    let (status, out, err) = run(Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(root)
        .args(args));
    assert!(status.success(), "cpengine {args:?} failed: {err}\n{out}");
    out
}

fn cpe_json(root: &Path, args: &[&str]) -> Value {
    let out = cpe(root, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cpengine {args:?}: {e}: {out}"))
}

fn run_ok(cmd: &mut Command) -> String {
    let (status, out, err) = run(cmd);
    assert!(status.success(), "{cmd:?} failed: {err}\n{out}");
    out
}

fn tar_header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_767_225_600);
    h
}

/// A checkpoint-style archive: a `checkpoint/` directory entry with CRIU-like image files,
/// `config.dump`, `spec.dump`, `stats-dump`; `pages_len` bytes of page data.
fn checkpoint_archive(path: &Path, name: &str, pages_len: usize) {
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(
        &mut tar_header(tar::EntryType::Directory, 0, 0o700),
        "checkpoint/",
        std::io::empty(),
    )
    .unwrap();
    let config = serde_json::json!({
        "id": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "name": name, "rootfsImageName": "docker.io/library/busybox:latest",
        "rootfsImageRef": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "runtime": "runc", "createdTime": "2026-01-01T00:00:00Z",
        "checkpointedTime": "2026-01-01T00:01:00Z", "restoredTime": "0001-01-01T00:00:00Z",
        "restored": false,
    });
    let spec = serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["/bin/sh"]},
        "annotations": {"io.cpengine.criu.version": "4.2.1"}});
    // Pseudo-random pages (a little LCG) so the layer does not compress to nothing.
    let mut x: u32 = 12345;
    let pages: Vec<u8> = (0..pages_len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let files: Vec<(&str, Vec<u8>)> = vec![
        (
            "checkpoint/inventory.img",
            vec![0x58, 0x59, 0x0e, 0x49, 1, 2, 3, 4],
        ),
        ("checkpoint/pstree.img", vec![7; 64]),
        ("checkpoint/pages-1.img", pages),
        (
            "checkpoint/descriptors.json",
            br#"["/dev/null","pipe:[1]","pipe:[2]"]"#.to_vec(),
        ),
        ("config.dump", serde_json::to_vec_pretty(&config).unwrap()),
        ("spec.dump", serde_json::to_vec(&spec).unwrap()),
        ("stats-dump", vec![1; 32]),
    ];
    for (n, data) in &files {
        b.append_data(
            &mut tar_header(tar::EntryType::Regular, data.len() as u64, 0o600),
            n,
            &data[..],
        )
        .unwrap();
    }
    std::fs::write(path, b.into_inner().unwrap()).unwrap();
}

/// Member names of a (gzip or plain) layer tar.
fn layer_members(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let raw: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::MultiGzDecoder::new(&bytes[..]))
    } else {
        Box::new(&bytes[..])
    };
    let mut ar = tar::Archive::new(raw);
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn annotations(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["annotations"].clone()).unwrap_or_default()
}

#[test]
fn checkpoint_image_is_read_by_skopeo_with_the_annotations_in_place() {
    require_root();
    let skopeo = skopeo();
    let tmp = scratch("cpe-oci-");
    let (root, archive) = (tmp.path().join("state"), tmp.path().join("ckpt.tar"));
    checkpoint_archive(&archive, "web", 300_000);
    let dir = tmp.path().join("layout");
    let built = cpe_json(
        &root,
        &[
            "image",
            "build",
            archive.to_str().unwrap(),
            "--tag",
            "localhost/ckpt-test:v1",
            "--format",
            "oci-dir",
            "--output",
            dir.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(built["checkpoint"], "web");
    assert_eq!(built["names"][0], "localhost/ckpt-test:v1");
    let manifest_digest = built["manifest_digest"].as_str().unwrap().to_owned();

    // The manifest skopeo reads carries both runtimes' keys and the generic metadata.
    let raw = run_ok(
        Command::new(&skopeo)
            .arg("inspect")
            .arg("--raw")
            .arg(format!("oci:{}", dir.display())),
    );
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let ma = annotations(&manifest);
    assert_eq!(ma[CRIO_KEY], "web");
    assert_eq!(ma[CRIU_KEY], "web");
    assert_eq!(
        ma["org.criu.checkpoint.rootfsImageName"],
        "docker.io/library/busybox:latest"
    );
    assert_eq!(ma["org.criu.checkpoint.runtime.name"], "runc");
    assert_eq!(ma["org.criu.checkpoint.criu.version"], "4.2.1");
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    // containerd looks at the index: the key is there too, and the ref name names the image.
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(annotations(&index)[CRIU_KEY], "web");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "localhost/ckpt-test:v1"
    );
    assert_eq!(index["manifests"][0]["digest"], manifest_digest.as_str());

    // The archive form is accepted as well, and describes the same image.
    let archive_out = tmp.path().join("ckpt-oci.tar");
    cpe(
        &root,
        &[
            "image",
            "export",
            "localhost/ckpt-test:v1",
            "--format",
            "oci-archive",
            "--output",
            archive_out.to_str().unwrap(),
        ],
    );
    let info: Value = serde_json::from_str(&run_ok(
        Command::new(&skopeo)
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive_out.display())),
    ))
    .unwrap();
    assert_eq!(info["Digest"], manifest_digest.as_str());
    assert_eq!(info["Os"], "linux");
    assert_eq!(info["Layers"].as_array().unwrap().len(), 1);

    // skopeo copies it out; the layer's tar holds the archive's members at its root.
    let copied = tmp.path().join("copied");
    run_ok(
        Command::new(&skopeo)
            .arg("copy")
            .arg(format!("oci:{}", dir.display()))
            .arg(format!("dir:{}", copied.display())),
    );
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let members = layer_members(&copied.join(&layer_digest[7..]));
    for want in [
        "checkpoint/",
        "checkpoint/inventory.img",
        "checkpoint/pages-1.img",
        "config.dump",
        "spec.dump",
        "stats-dump",
    ] {
        assert!(
            members.iter().any(|m| m == want),
            "{want} not in layer: {members:?}"
        );
    }
    assert!(
        members
            .iter()
            .all(|m| !m.starts_with('/') && !m.starts_with("./")),
        "{members:?}"
    );
}

/// A busybox rootfs layer: bin/busybox (static, from the host) and bin/sh -> busybox.
fn busybox_layout(dir: &Path, ref_name: &str) {
    let bb = std::fs::read(require_program("/bin/busybox")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(
        &mut tar_header(tar::EntryType::Directory, 0, 0o755),
        "bin/",
        std::io::empty(),
    )
    .unwrap();
    b.append_data(
        &mut tar_header(tar::EntryType::Regular, bb.len() as u64, 0o755),
        "bin/busybox",
        &bb[..],
    )
    .unwrap();
    b.append_link(
        &mut tar_header(tar::EntryType::Symlink, 0, 0o777),
        "bin/sh",
        "busybox",
    )
    .unwrap();
    let layer_tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&layer_tar).unwrap();
    let layer = gz.finish().unwrap();
    let blob = |bytes: &[u8]| {
        let d = cpengine::oci::digest::sha256_of(bytes);
        let p = dir.join("blobs/sha256").join(&d[7..]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        (d, bytes.len())
    };
    let (layer_d, layer_n) = blob(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "created": "2026-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [cpengine::oci::digest::sha256_of(&layer_tar)]},
    }))
    .unwrap();
    let (config_d, config_n) = blob(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_d, "size": config_n},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_d, "size": layer_n}],
    }))
    .unwrap();
    let (m_d, m_n) = blob(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_d, "size": m_n,
            "annotations": {"org.opencontainers.image.ref.name": ref_name}}]}))
        .unwrap(),
    )
    .unwrap();
}

fn blob_files(root: &Path) -> usize {
    std::fs::read_dir(root.join("lib/images/blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn busybox_layout_written_by_skopeo_imports_lists_and_removes() {
    require_root();
    let skopeo = skopeo();
    let tmp = scratch("cpe-oci-");
    let root = tmp.path().join("state");
    let ours = tmp.path().join("ours");
    busybox_layout(&ours, "busybox:handmade");
    // skopeo validates our layout by copying it into a layout of its own, named by it.
    let theirs = tmp.path().join("theirs");
    run_ok(
        Command::new(&skopeo)
            .arg("copy")
            .arg(format!("oci:{}", ours.display()))
            .arg(format!("oci:{}:localhost/busybox:test", theirs.display())),
    );

    let rec = cpe_json(
        &root,
        &["image", "import", theirs.to_str().unwrap(), "--json"],
    );
    assert_eq!(rec["names"], serde_json::json!(["localhost/busybox:test"]));
    assert_eq!(rec["checkpoint"], Value::Null);
    let id = rec["id"].as_str().unwrap().to_owned();
    // --tag overrides the layout's name; the same image gets a second name.
    let rec = cpe_json(
        &root,
        &[
            "image",
            "import",
            ours.to_str().unwrap(),
            "--tag",
            "bb:custom",
            "--json",
        ],
    );
    assert_eq!(rec["id"], id.as_str());
    let list = cpe_json(&root, &["image", "ls", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let names: Vec<&str> = list[0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"localhost/busybox:test") && names.contains(&"docker.io/library/bb:custom"),
        "{names:?}"
    );
    let human = cpe(&root, &["image", "ls"]);
    assert!(
        human.contains("localhost/busybox") && human.contains("docker.io/library/bb"),
        "{human}"
    );

    let inspect = cpe_json(&root, &["image", "inspect", "bb:custom", "--json"]);
    assert_eq!(inspect["config"]["cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(inspect["layers"][0]["compression"], "gzip");
    assert!(blob_files(&root) >= 3);

    // rm by one name untags; rm by the last removes the image and GC frees every blob.
    let out = cpe_json(&root, &["image", "rm", "bb:custom", "--json"]);
    assert_eq!(out["deleted"], Value::Null);
    let out = cpe_json(&root, &["image", "rm", "localhost/busybox:test", "--json"]);
    assert_eq!(out["deleted"], id.as_str());
    assert_eq!(out["blobs_removed"], 3);
    assert_eq!(blob_files(&root), 0);
    assert_eq!(
        cpe_json(&root, &["image", "ls", "--json"]),
        serde_json::json!([])
    );
    let (status, _, err) = run(Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(&root)
        .args(["image", "inspect", "localhost/busybox:test"]));
    assert!(!status.success());
    assert!(err.contains("no image"), "{err}");
}

#[test]
fn checkpoint_image_goes_through_a_real_registry_and_back() {
    require_root();
    let skopeo = skopeo();
    let reg = Registry::start();
    let tmp = scratch("cpe-oci-");
    let (root, archive) = (tmp.path().join("state"), tmp.path().join("ckpt.tar"));
    checkpoint_archive(&archive, "db", 500_000);
    let built = cpe_json(
        &root,
        &[
            "image",
            "build",
            archive.to_str().unwrap(),
            "--tag",
            "localhost/ckpt-db:v1",
            "--json",
        ],
    );
    let before = cpe_json(
        &root,
        &["image", "inspect", "localhost/ckpt-db:v1", "--json"],
    );
    let remote = format!("{}/checkpoints/db:v1", reg.host());

    let pushed = cpe_json(
        &root,
        &["image", "push", "localhost/ckpt-db:v1", &remote, "--json"],
    );
    assert_eq!(pushed["reference"], remote.as_str());
    assert_eq!(pushed["manifest_digest"], built["manifest_digest"]);
    assert_eq!(pushed["blobs_uploaded"], 2);
    // Again: everything is there already.
    let again = cpe_json(
        &root,
        &[
            "image",
            "push",
            "localhost/ckpt-db:v1",
            &remote,
            "--json",
            "--insecure",
        ],
    );
    assert_eq!(again["blobs_uploaded"], 0);
    assert_eq!(again["blobs_existing"], 2);

    // skopeo sees the manifest in the registry, annotations included.
    let raw = run_ok(
        Command::new(&skopeo)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{remote}")),
    );
    let manifest: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(annotations(&manifest)[CRIO_KEY], "db");
    assert_eq!(annotations(&manifest)[CRIU_KEY], "db");
    let info: Value = serde_json::from_str(&run_ok(
        Command::new(&skopeo)
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{remote}")),
    ))
    .unwrap();
    assert_eq!(info["Digest"], built["manifest_digest"]);

    // Delete the local copy (GC empties the store), pull it back: identical.
    cpe(&root, &["image", "rm", "localhost/ckpt-db:v1"]);
    assert_eq!(blob_files(&root), 0);
    let pulled = cpe_json(&root, &["image", "pull", &remote, "--json"]);
    assert_eq!(pulled["image"]["names"], serde_json::json!([remote]));
    assert_eq!(pulled["blobs_fetched"], 2);
    let after = cpe_json(&root, &["image", "inspect", &remote, "--json"]);
    for k in [
        "id",
        "manifest_digest",
        "annotations",
        "layers",
        "checkpoint",
    ] {
        assert_eq!(after[k], before[k], "{k} differs after the round trip");
    }
    assert_eq!(after["checkpoint"], "db");
}

/// Chunked uploads (PATCH with Content-Range) through the library, into a second store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_push_and_pull_between_two_stores() {
    require_root();
    let reg = Registry::start();
    let tmp = scratch("cpe-oci-");
    let archive = tmp.path().join("ckpt.tar");
    checkpoint_archive(&archive, "big", 3 << 20);
    let a = ImageStore::open(tmp.path().join("a")).await.unwrap();
    let b = ImageStore::open(tmp.path().join("b")).await.unwrap();
    let rec = oci::build_checkpoint_image(&a, &archive, "localhost/big:1", &Default::default())
        .await
        .unwrap();
    let layer = a.layers(&rec).await.unwrap().remove(0);
    assert!(
        layer.size > 2 * 65_536,
        "layer of {} bytes is too small to chunk",
        layer.size
    );
    let opts = RegistryOptions {
        chunk_size: 65_536,
        ..Default::default()
    };
    let remote = format!("{}/big/ckpt:1", reg.host());
    let pushed = oci::push(&a, "localhost/big:1", &remote, &opts)
        .await
        .unwrap();
    assert_eq!(pushed.blobs_uploaded, 2);
    // Layer and config went up; the manifest is not a blob.
    assert_eq!(pushed.bytes_uploaded, rec.size - manifest_len(&a, &rec));
    let pulled = oci::pull(&remote, &b, &opts).await.unwrap();
    assert_eq!(pulled.image.manifest_digest, rec.manifest_digest);
    assert_eq!(pulled.image.annotations, rec.annotations);
    // The layer arrived intact: same members, same uncompressed digest.
    let mut r = oci::checkpoint_layer(&b, &pulled.image).await.unwrap();
    let data = tokio::task::spawn_blocking(move || {
        let mut v = Vec::new();
        r.read_to_end(&mut v).unwrap();
        v
    })
    .await
    .unwrap();
    assert_eq!(Some(oci::digest::sha256_of(&data)), layer.diff_id);
    // Pulling a tag that does not exist is an error naming the status.
    let err = oci::pull(&format!("{}/big/ckpt:nope", reg.host()), &b, &opts)
        .await
        .unwrap_err();
    assert!(
        matches!(err, oci::OciError::RegistryStatus { status: 404, .. }),
        "{err:?}"
    );
}

fn manifest_len(store: &ImageStore, rec: &oci::ImageRecord) -> u64 {
    std::fs::metadata(store.blob_path(&rec.manifest_digest).unwrap())
        .unwrap()
        .len()
}
