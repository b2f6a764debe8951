//! Store-level tests on layouts made here: import, verification failures, checkpoint images,
//! export round trips, garbage collection.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde_json::{Value, json};

use super::annotations as ann;
use super::digest::sha256_of;
use super::*;

fn blob(dir: &Path, bytes: &[u8]) -> (String, u64) {
    let d = sha256_of(bytes);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
    (d, bytes.len() as u64)
}

fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Made {
    manifest: (String, u64),
    config: (String, u64),
    layer: (String, u64),
}

/// Writes a one-layer image (plain tar layer) into a layout at `dir`; `descriptor_size`
/// overrides the layer size its descriptor announces.
fn write_layout(dir: &Path, ref_name: Option<&str>, layer_size_override: Option<u64>) -> Made {
    let layer_bytes = layer_tar(&[("bin/hello", b"hello world\n")]);
    let layer = blob(dir, &layer_bytes);
    let config = serde_json::to_vec(&json!({
        "architecture": layout::host_platform().1, "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/hello"], "WorkingDir": "/w",
                   "Labels": {"l": "v"}},
        "rootfs": {"type": "layers", "diff_ids": [layer.0]},
    }))
    .unwrap();
    let config = blob(dir, &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config.0, "size": config.1},
        "layers": [{"mediaType": media::OCI_LAYER, "digest": layer.0,
                    "size": layer_size_override.unwrap_or(layer.1)}],
        "annotations": {"m": "1"},
    }))
    .unwrap();
    let manifest = blob(dir, &manifest);
    let mut desc =
        json!({"mediaType": media::OCI_MANIFEST, "digest": manifest.0, "size": manifest.1});
    if let Some(r) = ref_name {
        desc["annotations"] = json!({ann::REF_NAME: r});
    }
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "manifests": [desc], "annotations": {"i": "2"}}),
        )
        .unwrap(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    Made {
        manifest,
        config,
        layer,
    }
}

fn blob_count(store: &ImageStore) -> usize {
    fs::read_dir(store.dir().join("blobs/sha256"))
        .unwrap()
        .count()
}

async fn new_store() -> (tempfile::TempDir, ImageStore) {
    let root = tempfile::tempdir().unwrap();
    let store = ImageStore::open(root.path()).await.unwrap();
    (root, store)
}

#[tokio::test]
async fn import_names_by_ref_annotation_and_tag_overrides() {
    let (_root, store) = new_store().await;
    let src = tempfile::tempdir().unwrap();
    let made = write_layout(src.path(), Some("example.com/hello:1"), None);
    let rec = store.import(src.path(), None).await.unwrap();
    assert_eq!(rec.names, vec!["example.com/hello:1"]);
    assert_eq!(rec.id, made.config.0);
    assert_eq!(rec.manifest_digest, made.manifest.0);
    assert_eq!(rec.size, made.manifest.1 + made.config.1 + made.layer.1);
    assert_eq!(rec.created.as_deref(), Some("2026-01-02T03:04:05Z"));
    assert_eq!(rec.annotations["m"], "1");
    assert_eq!(rec.annotations["i"], "2");
    assert!(!rec.annotations.contains_key(ann::REF_NAME));
    assert_eq!(rec.labels["l"], "v");
    let cfg = store.config(&rec).await.unwrap();
    assert_eq!(cfg.env, vec!["PATH=/bin"]);
    assert_eq!(cfg.cmd, vec!["/bin/hello"]);
    assert_eq!(cfg.working_dir.as_deref(), Some("/w"));
    let layers = store.layers(&rec).await.unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0].digest, made.layer.0);
    assert_eq!(layers[0].compression, Compression::None);
    assert_eq!(layers[0].diff_id.as_deref(), Some(made.layer.0.as_str()));
    assert_eq!(blob_count(&store), 3);

    // Same image again under another name: one record with both names, no new blobs.
    let rec2 = store.import(src.path(), Some("other")).await.unwrap();
    assert_eq!(
        rec2.names,
        vec!["example.com/hello:1", "docker.io/library/other:latest"]
    );
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert_eq!(store.resolve("other").await.unwrap().id, rec.id);
    assert_eq!(store.resolve(&rec.id_hex()[..10]).await.unwrap().id, rec.id);
    assert!(store.fs_usage().await.unwrap().used_bytes > 0);

    // Removing one name only untags; removing the last deletes and collects the blobs.
    let out = store.remove("other").await.unwrap();
    assert_eq!(out.deleted, None);
    assert_eq!(blob_count(&store), 3);
    let out = store.remove("example.com/hello:1").await.unwrap();
    assert_eq!(out.deleted.as_deref(), Some(rec.id.as_str()));
    assert_eq!(out.blobs_removed, 3);
    assert_eq!(blob_count(&store), 0);
    assert!(store.list().await.unwrap().is_empty());
    assert!(matches!(
        store.resolve("example.com/hello:1").await,
        Err(OciError::ImageNotFound { .. })
    ));
}

#[tokio::test]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_nothing_is_committed() {
    let (_root, store) = new_store().await;
    let src = tempfile::tempdir().unwrap();
    let made = write_layout(src.path(), Some("x"), None);
    // Same size, different content.
    let p = src.path().join("blobs/sha256").join(&made.layer.0[7..]);
    let mut bytes = fs::read(&p).unwrap();
    bytes[600] ^= 0xff;
    fs::write(&p, bytes).unwrap();
    let err = store.import(src.path(), None).await.unwrap_err();
    assert!(
        matches!(&err, OciError::DigestMismatch { expected, .. } if *expected == made.layer.0),
        "{err:?}"
    );
    assert!(err.is_integrity());
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(blob_count(&store), 0);
    assert_eq!(fs::read_dir(store.dir().join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn corrupt_layouts_are_refused() {
    let (_root, store) = new_store().await;
    // Descriptor size disagrees with the blob.
    let src = tempfile::tempdir().unwrap();
    let made = write_layout(src.path(), Some("x"), Some(5));
    let err = store.import(src.path(), None).await.unwrap_err();
    assert!(
        matches!(&err, OciError::SizeMismatch { digest, expected: 5, .. } if *digest == made.layer.0),
        "{err:?}"
    );
    // Missing blob.
    let src = tempfile::tempdir().unwrap();
    let made = write_layout(src.path(), Some("x"), None);
    fs::remove_file(src.path().join("blobs/sha256").join(&made.layer.0[7..])).unwrap();
    let err = store.import(src.path(), None).await.unwrap_err();
    assert!(
        matches!(&err, OciError::MissingBlob { digest, .. } if *digest == made.layer.0),
        "{err:?}"
    );
    // No oci-layout file.
    let src = tempfile::tempdir().unwrap();
    write_layout(src.path(), Some("x"), None);
    fs::remove_file(src.path().join("oci-layout")).unwrap();
    assert!(matches!(
        store.import(src.path(), None).await,
        Err(OciError::NotALayout { .. })
    ));
    // A digest that would escape blobs/.
    let src = tempfile::tempdir().unwrap();
    write_layout(src.path(), Some("x"), None);
    fs::write(
        src.path().join("index.json"),
        br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:../../../../etc/passwd","size":1}]}"#,
    )
    .unwrap();
    assert!(store.import(src.path(), None).await.is_err());
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(blob_count(&store), 0);
}

#[tokio::test]
async fn multi_arch_index_picks_the_host_manifest() {
    let (_root, store) = new_store().await;
    let src = tempfile::tempdir().unwrap();
    let made = write_layout(src.path(), None, None);
    let (os, arch) = layout::host_platform();
    // A nested index: the host's manifest plus a bogus one for another architecture.
    let other = json!({"mediaType": media::OCI_MANIFEST,
        "digest": format!("sha256:{}", "0".repeat(64)), "size": 10,
        "platform": {"os": "linux", "architecture": "s390x"}});
    let inner = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": media::OCI_INDEX,
        "manifests": [other, {"mediaType": media::OCI_MANIFEST, "digest": made.manifest.0,
            "size": made.manifest.1, "platform": {"os": os, "architecture": arch}}],
        "annotations": {"nested": "yes"}}))
    .unwrap();
    let inner = blob(src.path(), &inner);
    fs::write(
        src.path().join("index.json"),
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "manifests": [{"mediaType": media::OCI_INDEX,
            "digest": inner.0, "size": inner.1, "annotations": {ann::REF_NAME: "multi:v1"}}]}),
        )
        .unwrap(),
    )
    .unwrap();
    let rec = store.import(src.path(), None).await.unwrap();
    assert_eq!(rec.manifest_digest, made.manifest.0);
    assert_eq!(rec.names, vec!["docker.io/library/multi:v1"]);
    assert_eq!(rec.annotations["nested"], "yes");
}

/// A checkpoint-style archive: `checkpoint/` + files, config.dump, spec.dump.
pub(crate) fn checkpoint_archive(path: &Path, compress: Compression) {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o700);
    dir.set_size(0);
    b.append_data(&mut dir, "checkpoint/", std::io::empty())
        .unwrap();
    let config = json!({"id": "c0ffee", "name": "web", "rootfsImageName": "docker.io/library/busybox:latest",
        "rootfsImageRef": "sha256:abc", "runtime": "runc", "createdTime": "2026-01-01T00:00:00Z"});
    let spec = json!({"ociVersion": "1.0.2", "annotations": {"io.cpengine.criu.version": "4.2.1",
        "io.kubernetes.pod.name": "pod1", "io.kubernetes.pod.namespace": "ns1"}});
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("checkpoint/inventory.img", vec![1u8; 100]),
        (
            "checkpoint/pages-1.img",
            (0..200_000u32).map(|i| i as u8).collect(),
        ),
        ("config.dump", serde_json::to_vec(&config).unwrap()),
        ("spec.dump", serde_json::to_vec(&spec).unwrap()),
        ("stats-dump", vec![9u8; 10]),
    ];
    for (name, data) in &files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o600);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let bytes = match compress {
        Compression::None => tar,
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut e, &tar).unwrap();
            e.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(&tar[..], 3).unwrap(),
    };
    fs::write(path, bytes).unwrap();
}

fn member_names(mut r: Box<dyn Read + Send>) -> BTreeMap<String, Vec<u8>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf).unwrap();
    let mut ar = tar::Archive::new(&buf[..]);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn checkpoint_image_from_plain_gzip_and_zstd_archives() {
    let (_root, store) = new_store().await;
    let dir = tempfile::tempdir().unwrap();
    for (i, c) in [Compression::None, Compression::Gzip, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        let archive = dir.path().join(format!("a{i}.tar"));
        checkpoint_archive(&archive, c);
        let tag = format!("localhost/ckpt:{i}");
        let rec = build_checkpoint_image(&store, &archive, &tag, &Default::default())
            .await
            .unwrap();
        // The same members give the same image (same id) whatever the archive compression.
        assert!(rec.names.contains(&tag), "{:?}", rec.names);
        assert_eq!(is_checkpoint_image(&rec).as_deref(), Some("web"));
        let a = &rec.annotations;
        assert_eq!(a[ann::CRIO_CHECKPOINT_NAME], "web");
        assert_eq!(a[ann::CRIU_CONTAINER_NAME], "web");
        assert_eq!(
            a[ann::CRIU_ROOTFS_IMAGE_NAME],
            "docker.io/library/busybox:latest"
        );
        assert_eq!(a[ann::CRIU_ROOTFS_IMAGE_ID], "sha256:abc");
        assert_eq!(a[ann::CRIU_RUNTIME_NAME], "runc");
        assert_eq!(a[ann::CRIU_ENGINE_NAME], "cpengine");
        assert_eq!(a[ann::CRIU_CRIU_VERSION], "4.2.1");
        assert_eq!(a[ann::CRIU_POD_NAME], "pod1");
        assert_eq!(rec.index_annotations[ann::CRIU_CONTAINER_NAME], "web");

        // The manifest blob itself carries both runtimes' keys.
        let m = store.manifest(&rec).await.unwrap();
        let ma = m.annotations().clone().unwrap();
        assert_eq!(ma[ann::CRIO_CHECKPOINT_NAME], "web");
        assert_eq!(ma[ann::CRIU_CONTAINER_NAME], "web");
        assert_eq!(m.layers().len(), 1);
        assert_eq!(
            m.layers()[0].media_type().to_string(),
            media::OCI_LAYER_GZIP
        );

        // diff_id is the digest of the uncompressed layer; the layer holds the members at /.
        let layers = store.layers(&rec).await.unwrap();
        let mut raw = Vec::new();
        store
            .open_layer(&layers[0])
            .unwrap()
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(layers[0].diff_id.as_deref(), Some(sha256_of(&raw).as_str()));
        let members = member_names(checkpoint_layer(&store, &rec).await.unwrap());
        let names: Vec<&str> = members.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "checkpoint/",
                "checkpoint/inventory.img",
                "checkpoint/pages-1.img",
                "config.dump",
                "spec.dump",
                "stats-dump"
            ]
        );
        assert_eq!(members["checkpoint/pages-1.img"].len(), 200_000);
    }
}

#[tokio::test]
async fn archives_that_are_not_checkpoints_are_refused() {
    let (_root, store) = new_store().await;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("plain.tar");
    fs::write(
        &p,
        layer_tar(&[("config.dump", b"{}"), ("spec.dump", b"{}")]),
    )
    .unwrap();
    assert!(matches!(
        build_checkpoint_image(&store, &p, "x", &Default::default()).await,
        Err(OciError::NotACheckpointArchive {
            missing: "checkpoint/",
            ..
        })
    ));
    let p = dir.path().join("evil.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_entry_type(tar::EntryType::Regular);
    // Written raw: the tar crate refuses to build a `..` path itself.
    h.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../etc/passwd");
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    fs::write(&p, b.into_inner().unwrap()).unwrap();
    assert!(matches!(
        build_checkpoint_image(&store, &p, "x", &Default::default()).await,
        Err(OciError::UnsafeMember { .. })
    ));
    let p = dir.path().join("noname.tar");
    fs::write(
        &p,
        layer_tar(&[
            ("checkpoint/x", b"1"),
            ("config.dump", b"{}"),
            ("spec.dump", b"{}"),
        ]),
    )
    .unwrap();
    assert!(matches!(
        build_checkpoint_image(&store, &p, "x", &Default::default()).await,
        Err(OciError::NoContainerName { .. })
    ));
    assert!(store.list().await.unwrap().is_empty());
    assert_eq!(blob_count(&store), 0);
}

#[tokio::test]
async fn export_round_trips_through_dir_and_archive() {
    let (_root, store) = new_store().await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    checkpoint_archive(&archive, Compression::None);
    let rec = build_checkpoint_image(&store, &archive, "ckpt:v1", &Default::default())
        .await
        .unwrap();
    let out_dir = dir.path().join("layout");
    export(&store, &rec, Format::OciDir, &out_dir)
        .await
        .unwrap();
    let index: Value =
        serde_json::from_slice(&fs::read(out_dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["annotations"][ann::CRIU_CONTAINER_NAME], "web");
    assert_eq!(index["manifests"][0]["digest"], rec.manifest_digest);
    assert_eq!(
        index["manifests"][0]["annotations"][ann::REF_NAME],
        "docker.io/library/ckpt:v1"
    );
    // No clobbering.
    assert!(matches!(
        export(&store, &rec, Format::OciDir, &out_dir).await,
        Err(OciError::DestinationExists { .. })
    ));
    let out_tar = dir.path().join("layout.tar");
    export(&store, &rec, Format::OciArchive, &out_tar)
        .await
        .unwrap();
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Import both into a fresh store: same image, same annotations.
    for src in [&out_dir, &out_tar] {
        let (_root2, other) = new_store().await;
        let back = other.import(src, None).await.unwrap();
        assert_eq!(back.manifest_digest, rec.manifest_digest);
        assert_eq!(back.id, rec.id);
        assert_eq!(back.names, rec.names);
        assert_eq!(back.annotations, rec.annotations);
        assert_eq!(back.index_annotations, rec.index_annotations);
        assert_eq!(is_checkpoint_image(&back).as_deref(), Some("web"));
    }
}

#[tokio::test]
async fn a_corrupt_archive_blob_is_refused() {
    let (_root, store) = new_store().await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    checkpoint_archive(&archive, Compression::None);
    let rec = build_checkpoint_image(&store, &archive, "ckpt", &Default::default())
        .await
        .unwrap();
    let out = dir.path().join("layout.tar");
    export(&store, &rec, Format::OciArchive, &out)
        .await
        .unwrap();
    // Flip a byte inside the last blob member's data (the archive ends with 1024 zero bytes).
    let mut bytes = fs::read(&out).unwrap();
    let n = bytes.len();
    let pos = (0..n - 1024).rev().find(|&i| bytes[i] != 0).unwrap();
    bytes[pos] ^= 0x55;
    fs::write(&out, bytes).unwrap();
    let (_r, fresh) = new_store().await;
    let err = fresh.import(&out, None).await.unwrap_err();
    assert!(err.is_integrity(), "{err:?}");
    assert!(fresh.list().await.unwrap().is_empty());
    assert_eq!(blob_count(&fresh), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_through_separate_handles_lose_nothing() {
    // Separate handles open the lock file separately, as separate processes would: flock(2)
    // serialises them just the same.
    let root = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("a.tar");
    checkpoint_archive(&archive, Compression::None);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (root, archive) = (root.path().to_path_buf(), archive.clone());
        tasks.push(tokio::spawn(async move {
            let store = ImageStore::open(&root).await.unwrap();
            let opts = CheckpointImageOptions {
                container_name: Some(format!("c{i}")),
                ..Default::default()
            };
            build_checkpoint_image(&store, &archive, &format!("ckpt:{i}"), &opts)
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let store = ImageStore::open(root.path()).await.unwrap();
    let list = store.list().await.unwrap();
    let mut names: Vec<String> = list.iter().flat_map(|r| r.names.clone()).collect();
    names.sort();
    let want: Vec<String> = (0..8)
        .map(|i| format!("docker.io/library/ckpt:{i}"))
        .collect();
    assert_eq!(names, want);
    for i in 0..8 {
        let rec = store.resolve(&format!("ckpt:{i}")).await.unwrap();
        assert_eq!(is_checkpoint_image(&rec), Some(format!("c{i}")));
    }
}

/// A two-layer image whose upper layer deletes `a/gone` (whiteout) and makes `o/` opaque:
/// the unpacked layers, stacked as overlay lower directories the way a restore mounts them,
/// show neither `a/gone` nor `o/old`, and keep `a/kept` and `o/new`.
#[tokio::test]
async fn unpacked_layers_keep_whiteouts_and_opaque_dirs() {
    let (root, store) = new_store().await;
    let src = tempfile::tempdir().unwrap();
    let dir = src.path();
    let l1 = blob(
        dir,
        &layer_tar(&[("a/gone", b"1"), ("a/kept", b"1"), ("o/old", b"1")]),
    );
    let l2 = blob(
        dir,
        &layer_tar(&[
            ("a/.wh.gone", b""),
            ("o/.wh..wh..opq", b""),
            ("o/new", b"2"),
        ]),
    );
    let config = blob(
        dir,
        &serde_json::to_vec(&json!({
            "architecture": layout::host_platform().1, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [l1.0, l2.0]},
        }))
        .unwrap(),
    );
    let manifest = blob(
        dir,
        &serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config.0, "size": config.1},
            "layers": [
                {"mediaType": media::OCI_LAYER, "digest": l1.0, "size": l1.1},
                {"mediaType": media::OCI_LAYER, "digest": l2.0, "size": l2.1},
            ],
        }))
        .unwrap(),
    );
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": media::OCI_MANIFEST, "digest": manifest.0, "size": manifest.1,
             "annotations": {ann::REF_NAME: "wh:1"}}]}))
        .unwrap(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let rec = store.import(dir, None).await.unwrap();
    let cache = root.path().join("layers");
    // What an older cpengine left for the upper layer: its files, without the whiteouts.
    let stale = cache.join(l2.0.replace(':', "-"));
    fs::create_dir_all(stale.join("o")).unwrap();
    fs::write(stale.join("o/new"), b"2").unwrap();
    let lowers = unpack::layer_dirs(&store, &rec, &cache).await.unwrap();
    assert_eq!(lowers.len(), 2);
    assert!(
        !lowers.contains(&stale),
        "a stale unpacked layer was reused"
    );

    let mnt = root.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let lowerdir = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    nix::mount::mount(
        Some("overlay"),
        &mnt,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={lowerdir}").as_str()),
    )
    .expect("mounting the layers as overlay lower directories (needs root)");
    let seen: Vec<bool> = ["a/gone", "a/kept", "o/old", "o/new"]
        .iter()
        .map(|p| mnt.join(p).exists())
        .collect();
    nix::mount::umount2(&mnt, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(
        seen,
        [false, true, false, true],
        "a/gone a/kept o/old o/new"
    );
}

/// A layer that unpacks to more than the free space of the layer cache stops at that cap with
/// the cap's own error (before the file system is full), and leaves no temp directory.
#[tokio::test]
async fn layer_unpacking_is_capped_at_the_free_space() {
    let (root, store) = new_store().await;
    let src = tempfile::tempdir().unwrap();
    let dir = src.path();
    let big = vec![7u8; 8 << 20];
    let l1 = blob(dir, &layer_tar(&[("big", &big)]));
    let config = blob(
        dir,
        &serde_json::to_vec(&json!({
            "architecture": layout::host_platform().1, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [l1.0]},
        }))
        .unwrap(),
    );
    let manifest = blob(
        dir,
        &serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": media::OCI_CONFIG, "digest": config.0, "size": config.1},
            "layers": [{"mediaType": media::OCI_LAYER, "digest": l1.0, "size": l1.1}],
        }))
        .unwrap(),
    );
    fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [
            {"mediaType": media::OCI_MANIFEST, "digest": manifest.0, "size": manifest.1,
             "annotations": {ann::REF_NAME: "big:1"}}]}))
        .unwrap(),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let rec = store.import(dir, None).await.unwrap();
    let cache = root.path().join("layers");
    fs::create_dir(&cache).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &cache,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=4m,mode=0700"),
    )
    .expect("mounting a small tmpfs as the layer cache (needs root)");
    let r = unpack::layer_dirs(&store, &rec, &cache).await;
    let left = fs::read_dir(&cache).unwrap().count();
    nix::mount::umount2(&cache, nix::mount::MntFlags::MNT_DETACH).unwrap();
    match r {
        Err(OciError::Unpack { reason, .. }) => {
            assert!(reason.contains("writes more than"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(left, 0, "a temp directory was left in the cache");
}

/// The base image a checkpoint's config.dump names is matched exactly: an id prefix (or a
/// short hex name that is one) picks nothing, a whole name or id does, and the caller's own
/// choice is resolved as the caller wrote it.
#[tokio::test]
async fn an_archive_named_base_image_is_matched_exactly() {
    use crate::container::restore::base_image_record;
    let (_root, store) = new_store().await;
    let src = tempfile::tempdir().unwrap();
    write_layout(src.path(), Some("example.com/hello:1"), None);
    let rec = store.import(src.path(), None).await.unwrap();
    let named = |n: &str| crate::archive::ConfigDump {
        rootfs_image_name: n.to_string(),
        ..Default::default()
    };
    let prefix = rec.id_hex()[..12].to_string();
    for bad in [prefix.clone(), format!("sha256:{prefix}"), "e".into()] {
        let r = base_image_record(&store, None, &named(&bad)).await;
        assert!(
            matches!(r, Err(crate::Error::BaseImageMissing { .. })),
            "{bad}: {r:?}"
        );
    }
    for good in [
        "example.com/hello:1".to_string(),
        rec.id.clone(),
        rec.id_hex().to_string(),
    ] {
        let r = base_image_record(&store, None, &named(&good)).await;
        assert_eq!(r.unwrap().id, rec.id, "{good}");
    }
    let r = base_image_record(&store, Some(&prefix), &named("nothing/here:1")).await;
    assert_eq!(r.unwrap().id, rec.id);
}
