//! Checkpoint images: a checkpoint archive as an OCI image that CRI-O, containerd and Podman
//! recognise and restore from (what `buildah from scratch; buildah add <ctr> archive.tar /;
//! buildah config --annotation …; buildah commit` produces, without buildah).
//!
//! The image is FROM scratch with one gzip layer whose root holds the archive's members as
//! they are (`checkpoint/…`, `config.dump`, `spec.dump`, `stats-dump`, `rootfs-diff.tar`, …).
//! The runtimes find out that an image is a checkpoint from annotations, each its own:
//!
//! | who | key | where |
//! |---|---|---|
//! | CRI-O | `io.kubernetes.cri-o.annotations.checkpoint.name` | the OCI manifest (only there) |
//! | containerd 2.1–2.3 | `org.criu.checkpoint.container.name` | the index *and* the manifest |
//! | Podman | `io.podman.annotations.checkpoint.*` | the manifest |
//!
//! so the manifest carries both the CRI-O and the `org.criu.*` keys, and an exported layout's
//! index.json carries `org.criu.checkpoint.container.name` too. The values come from the
//! archive's `config.dump` (container name, base image name and id, runtime) and `spec.dump`
//! annotations (engine, pod, CRIU version), read leniently: any of CRI-O's, containerd's,
//! Podman's or cpengine's archives will do.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use serde_json::{Value, json};

use super::annotations as ann;
use super::digest::HashingWriter;
use super::error::{OciError, OciResult, json_err};
use super::layout::host_platform;
use super::pgzip::ParGzWriter;
use super::reference::Reference;
use super::store::{ImageRecord, ImageStore, make_record};
use super::{media, now_rfc3339};

/// Largest `config.dump` / `spec.dump` read into memory.
const DUMP_LIMIT: u64 = 16 << 20;

/// Knobs of [`build_checkpoint_image`].
#[derive(Debug, Clone, Default)]
pub struct CheckpointImageOptions {
    /// The container name to announce; default: `name` in config.dump, else the container-name
    /// annotation of spec.dump.
    pub container_name: Option<String>,
    /// More annotations for the manifest (they win over the computed ones).
    pub annotations: BTreeMap<String, String>,
}

/// What the archive says about the checkpoint, for the annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointMetadata {
    pub container_name: Option<String>,
    pub rootfs_image_name: Option<String>,
    pub rootfs_image_id: Option<String>,
    pub runtime: Option<String>,
    pub engine: Option<String>,
    pub criu_version: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl CheckpointMetadata {
    /// Reads the fields from a `config.dump` and a `spec.dump` (JSON; unknown keys ignored).
    pub fn from_dumps(config: &Value, spec: &Value) -> Self {
        let s = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let empty = serde_json::Map::new();
        let anns = spec
            .get("annotations")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let a = |k: &str| s(spec.get("annotations").unwrap_or(&Value::Null), k);
        let engine = match anns.get("io.container.manager").and_then(Value::as_str) {
            Some("cri-o") => Some("CRI-O".to_owned()),
            Some("libpod") => Some("Podman".to_owned()),
            Some(other) if !other.is_empty() => Some(other.to_owned()),
            _ if anns.keys().any(|k| k.starts_with("io.cpengine.")) => Some("cpengine".to_owned()),
            _ if anns.keys().any(|k| k.starts_with("io.kubernetes.cri.")) => {
                Some("containerd".to_owned())
            }
            _ => None,
        };
        // cpengine's archives may carry the CRIU version as io.cpengine.<…criu…version…>.
        let criu_version = anns
            .iter()
            .find(|(k, _)| {
                let k = k.to_ascii_lowercase();
                k.starts_with("io.cpengine.") && k.contains("criu") && k.contains("version")
            })
            .and_then(|(_, v)| v.as_str())
            .map(str::to_owned)
            .or_else(|| s(config, "criuVersion"));
        Self {
            container_name: s(config, "name")
                .or_else(|| a("io.kubernetes.cri.container-name"))
                .or_else(|| a("io.kubernetes.container.name")),
            rootfs_image_name: s(config, "rootfsImageName").or_else(|| s(config, "rootfsImage")),
            rootfs_image_id: s(config, "rootfsImageRef").or_else(|| s(config, "rootfsImageID")),
            runtime: s(config, "runtime"),
            engine,
            criu_version,
            pod_name: a("io.kubernetes.pod.name").or_else(|| a("io.kubernetes.cri.sandbox-name")),
            pod_namespace: a("io.kubernetes.pod.namespace")
                .or_else(|| a("io.kubernetes.cri.sandbox-namespace")),
        }
    }
}

/// The (manifest, index) annotations of a checkpoint image of container `name`.
pub fn checkpoint_annotations(
    name: &str,
    meta: &CheckpointMetadata,
    created: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: Option<&String>| {
        if let Some(v) = v {
            m.insert(k.to_owned(), v.clone());
        }
    };
    let name = name.to_owned();
    put(ann::CRIO_CHECKPOINT_NAME, Some(&name));
    put(ann::CRIU_CONTAINER_NAME, Some(&name));
    put(ann::CRIU_ROOTFS_IMAGE_NAME, meta.rootfs_image_name.as_ref());
    put(ann::CRIO_ROOTFS_IMAGE_NAME, meta.rootfs_image_name.as_ref());
    put(ann::CRIU_ROOTFS_IMAGE_ID, meta.rootfs_image_id.as_ref());
    put(ann::CRIO_ROOTFS_IMAGE_ID, meta.rootfs_image_id.as_ref());
    put(ann::CRIU_RUNTIME_NAME, meta.runtime.as_ref());
    put(ann::CRIU_ENGINE_NAME, meta.engine.as_ref());
    put(ann::CRIU_CRIU_VERSION, meta.criu_version.as_ref());
    put(ann::CRIO_CRIU_VERSION, meta.criu_version.as_ref());
    put(ann::CRIU_POD_NAME, meta.pod_name.as_ref());
    put(ann::CRIU_POD_NAMESPACE, meta.pod_namespace.as_ref());
    put(ann::CREATED, Some(&created.to_owned()));
    let index = BTreeMap::from([(ann::CRIU_CONTAINER_NAME.to_owned(), name)]);
    (m, index)
}

/// A member name made relative and checked: no `..`, no absolute path, no empty name.
fn clean_member(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Builds a checkpoint image from a checkpoint archive (plain, gzip or zstd tar) into the
/// store, named `tag`.
pub async fn build_checkpoint_image(
    store: &ImageStore,
    archive: &Path,
    tag: &str,
    opts: &CheckpointImageOptions,
) -> OciResult<ImageRecord> {
    let tag = Reference::parse(tag)?;
    let (archive, opts) = (archive.to_path_buf(), opts.clone());
    store
        .blocking(move |s| build_blocking(s, &archive, &tag, &opts))
        .await
}

fn build_blocking(
    store: &ImageStore,
    archive: &Path,
    tag: &Reference,
    opts: &CheckpointImageOptions,
) -> OciResult<ImageRecord> {
    let rerr = |source| OciError::ReadArchive {
        path: archive.to_path_buf(),
        source,
    };
    let f = File::open(archive).map_err(rerr)?;
    let (_, input) =
        crate::archive::compress_decoder(BufReader::with_capacity(1 << 20, f)).map_err(rerr)?;
    let mut staging = store.staging()?;
    let (layer_path, layer_file) = staging.new_file()?;
    let werr = |source| OciError::Write {
        path: layer_path.clone(),
        source,
    };
    // tar → sha256 (diff_id) → parallel gzip → sha256 (layer digest) → file
    let compressed = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, layer_file));
    let gz = ParGzWriter::new(compressed, flate2::Compression::fast());
    let mut out = tar::Builder::new(HashingWriter::new(gz));
    out.mode(tar::HeaderMode::Complete);

    let mut ar = tar::Archive::new(input);
    let (mut config_dump, mut spec_dump, mut has_checkpoint) = (None, None, false);
    for entry in ar.entries().map_err(rerr)? {
        let mut entry = entry.map_err(rerr)?;
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let raw = entry.path().map_err(rerr)?.into_owned();
        let member = raw.to_string_lossy().into_owned();
        let Some(name) = clean_member(&raw) else {
            return Err(OciError::UnsafeMember {
                path: archive.to_path_buf(),
                member,
            });
        };
        if name.as_os_str().is_empty() {
            continue;
        }
        if name.starts_with("checkpoint") {
            has_checkpoint = true;
        }
        let mut header = entry.header().clone();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if name == Path::new("config.dump") || name == Path::new("spec.dump") {
                    let size = entry.size();
                    if size > DUMP_LIMIT {
                        return Err(OciError::TooLarge {
                            what: "config.dump/spec.dump",
                            size,
                            limit: DUMP_LIMIT,
                        });
                    }
                    let mut buf = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut buf).map_err(rerr)?;
                    out.append_data(&mut header, &name, &buf[..])
                        .map_err(werr)?;
                    if name == Path::new("config.dump") {
                        config_dump = Some(buf);
                    } else {
                        spec_dump = Some(buf);
                    }
                } else {
                    out.append_data(&mut header, &name, &mut entry)
                        .map_err(werr)?;
                }
            }
            tar::EntryType::Directory => {
                // Directory members end in '/', as every engine writes them.
                let mut dir = name.into_os_string();
                dir.push("/");
                out.append_data(&mut header, &dir, io::empty())
                    .map_err(werr)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(rerr)?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                out.append_link(&mut header, &name, &target).map_err(werr)?;
            }
            other => {
                return Err(OciError::UnsupportedMember {
                    path: archive.to_path_buf(),
                    member,
                    kind: format!("{other:?}"),
                });
            }
        }
    }
    let not_ckpt = |missing| OciError::NotACheckpointArchive {
        path: archive.to_path_buf(),
        missing,
    };
    if !has_checkpoint {
        return Err(not_ckpt("checkpoint/"));
    }
    let config_dump = config_dump.ok_or_else(|| not_ckpt("config.dump"))?;
    let spec_dump = spec_dump.ok_or_else(|| not_ckpt("spec.dump"))?;

    let tar_out = out.into_inner().map_err(werr)?;
    let (diff_id, _tar_len, gz) = tar_out.finish();
    let compressed = gz.finish().map_err(werr)?;
    let (layer_digest, layer_size, mut file) = compressed.finish();
    file.flush().map_err(werr)?;
    let file = file.into_inner().map_err(|e| werr(e.into_error()))?;
    file.sync_all().map_err(werr)?;
    drop(file);
    staging.adopt(&layer_path, &layer_digest, layer_size)?;

    let config_v: Value =
        serde_json::from_slice(&config_dump).map_err(json_err("config.dump of the archive"))?;
    let spec_v: Value =
        serde_json::from_slice(&spec_dump).map_err(json_err("spec.dump of the archive"))?;
    let meta = CheckpointMetadata::from_dumps(&config_v, &spec_v);
    let name = opts
        .container_name
        .clone()
        .or_else(|| meta.container_name.clone())
        .ok_or_else(|| OciError::NoContainerName {
            path: archive.to_path_buf(),
        })?;
    let created = now_rfc3339();
    let (mut manifest_ann, index_ann) = checkpoint_annotations(&name, &meta, &created);
    manifest_ann.extend(opts.annotations.clone());

    let (os, arch) = host_platform();
    let config = json!({
        "created": created,
        "architecture": arch,
        "os": os,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{
            "created": created,
            "created_by": "cpengine image build",
            "comment": format!("checkpoint of container {name}"),
        }],
    });
    let config_bytes = serde_json::to_vec(&config).map_err(json_err("image config"))?;
    let (config_digest, config_size) = staging.put_bytes(&config_bytes, None)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_MANIFEST,
        "config": {"mediaType": media::OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": media::OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
        "annotations": manifest_ann,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(json_err("manifest"))?;
    let (manifest_digest, manifest_size) = staging.put_bytes(&manifest_bytes, None)?;

    let manifest: oci_spec::image::ImageManifest =
        serde_json::from_slice(&manifest_bytes).map_err(json_err("manifest"))?;
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_slice(&config_bytes).map_err(json_err("image config"))?;
    let record = make_record(
        vec![tag.to_string()],
        &manifest_digest,
        media::OCI_MANIFEST,
        manifest_size,
        &manifest,
        &config,
        index_ann,
    );
    tracing::debug!(image = %record.id, layer = %layer_digest, layer_size, "checkpoint image built");
    store.commit(
        staging,
        &[manifest_digest, config_digest, layer_digest],
        record,
    )
}

/// The container name if `record` is a checkpoint image under any runtime's convention
/// (CRI-O, containerd/`org.criu`, Podman). A Podman checkpoint image that names no container
/// gives an empty name.
pub fn is_checkpoint_image(record: &ImageRecord) -> Option<String> {
    let a = &record.annotations;
    for k in [
        ann::CRIO_CHECKPOINT_NAME,
        ann::CRIU_CONTAINER_NAME,
        ann::PODMAN_CHECKPOINT_NAME,
    ] {
        if let Some(v) = a.get(k).or_else(|| record.index_annotations.get(k)) {
            return Some(v.clone());
        }
    }
    a.keys()
        .any(|k| k.starts_with(ann::PODMAN_CHECKPOINT_PREFIX))
        .then(String::new)
}

/// The decompressed tar stream of a checkpoint image's layer: the archive's members, to feed
/// an archive extractor. The reader blocks: consume it inside `tokio::task::spawn_blocking`.
pub async fn checkpoint_layer(
    store: &ImageStore,
    record: &ImageRecord,
) -> OciResult<Box<dyn Read + Send>> {
    if is_checkpoint_image(record).is_none() {
        return Err(OciError::NotACheckpointImage {
            id: record.id.clone(),
        });
    }
    let layers = store.layers(record).await?;
    let [layer] = layers.as_slice() else {
        return Err(OciError::CheckpointLayers {
            id: record.id.clone(),
            count: layers.len(),
        });
    };
    store.open_layer(layer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_from_crio_containerd_and_cpengine_dumps() {
        let config = json!({"id": "abc", "name": "k8s_web_pod_ns_uid_0", "rootfsImageName": "docker.io/library/nginx:latest",
            "rootfsImageRef": "0123", "runtime": "runc", "extra": {"x": 1}});
        let spec = json!({"annotations": {"io.container.manager": "cri-o",
            "io.kubernetes.pod.name": "pod", "io.kubernetes.pod.namespace": "ns"}});
        let m = CheckpointMetadata::from_dumps(&config, &spec);
        assert_eq!(m.container_name.as_deref(), Some("k8s_web_pod_ns_uid_0"));
        assert_eq!(m.engine.as_deref(), Some("CRI-O"));
        assert_eq!(m.rootfs_image_id.as_deref(), Some("0123"));
        assert_eq!(m.pod_namespace.as_deref(), Some("ns"));

        let spec = json!({"annotations": {"io.kubernetes.cri.container-name": "web",
            "io.kubernetes.cri.sandbox-name": "p"}});
        let m = CheckpointMetadata::from_dumps(&json!({"rootfsImageID": "x"}), &spec);
        assert_eq!(m.container_name.as_deref(), Some("web"));
        assert_eq!(m.engine.as_deref(), Some("containerd"));
        assert_eq!(m.pod_name.as_deref(), Some("p"));
        assert_eq!(m.rootfs_image_id.as_deref(), Some("x"));

        let spec = json!({"annotations": {"io.cpengine.criu.version": "4.2.1"}});
        let m = CheckpointMetadata::from_dumps(&json!({"name": "c"}), &spec);
        assert_eq!(m.criu_version.as_deref(), Some("4.2.1"));
        assert_eq!(m.engine.as_deref(), Some("cpengine"));
        // Not JSON objects at all: nothing, no panic.
        assert_eq!(
            CheckpointMetadata::from_dumps(&json!([1]), &json!("x")),
            CheckpointMetadata::default()
        );
    }

    #[test]
    fn annotation_placement() {
        let meta = CheckpointMetadata {
            rootfs_image_name: Some("busybox".into()),
            criu_version: Some("4.2.1".into()),
            ..Default::default()
        };
        let (m, i) = checkpoint_annotations("ctr", &meta, "2026-01-01T00:00:00Z");
        // CRI-O reads the manifest only; containerd reads the index and/or the manifest.
        assert_eq!(m[ann::CRIO_CHECKPOINT_NAME], "ctr");
        assert_eq!(m[ann::CRIU_CONTAINER_NAME], "ctr");
        assert_eq!(i[ann::CRIU_CONTAINER_NAME], "ctr");
        assert_eq!(m[ann::CRIU_ROOTFS_IMAGE_NAME], "busybox");
        assert_eq!(m[ann::CRIU_CRIU_VERSION], "4.2.1");
        assert!(!m.contains_key(ann::CRIU_RUNTIME_NAME));
        assert!(!i.contains_key(ann::CRIO_CHECKPOINT_NAME));
    }

    #[test]
    fn member_names_are_cleaned_or_refused() {
        assert_eq!(
            clean_member(Path::new("./checkpoint/x.img")),
            Some(PathBuf::from("checkpoint/x.img"))
        );
        assert_eq!(
            clean_member(Path::new("/config.dump")),
            Some(PathBuf::from("config.dump"))
        );
        assert_eq!(clean_member(Path::new("a/../../etc/passwd")), None);
    }
}
