//! OCI image layouts: import into the store (from a directory or a tar archive of one) and
//! export from it.
//!
//! A layout is `oci-layout` (`{"imageLayoutVersion":"1.0.0"}`), `index.json` (an image index
//! whose descriptors point at manifests or nested indexes) and `blobs/sha256/<hex>`. Import
//! picks one image (the only one, or the one for this host's platform), follows nested
//! indexes to the manifest for linux/\<host arch\>, and stages manifest, config and layers, each
//! checked against its descriptor's digest and size before anything is committed. From an
//! archive, members are read in one pass in whatever order they come; each `blobs/sha256/<hex>`
//! member must hash to its own name.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde_json::json;

use super::annotations::REF_NAME;
use super::digest::sha256_hex;
use super::error::{OciError, OciResult, json_err};
use super::media;
use super::reference::Reference;
use super::store::{
    CONFIG_LIMIT, ImageRecord, ImageStore, MANIFEST_LIMIT, Staging, make_record, read_limited,
    sync_dir,
};

/// How deep image indexes may nest (an index of indexes of manifests is depth 2).
pub const MAX_INDEX_DEPTH: usize = 4;
const LAYOUT_FILE_LIMIT: u64 = 64 << 10;

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An OCI image layout directory (`skopeo … oci:<dir>`).
    OciDir,
    /// A tar archive of an OCI image layout (`skopeo … oci-archive:<file>`).
    OciArchive,
}

/// This host's platform as OCI names it (`linux`, `amd64`).
pub fn host_platform() -> (String, String) {
    (
        oci_spec::image::Os::default().to_string(),
        oci_spec::image::Arch::default().to_string(),
    )
}

impl ImageStore {
    /// Imports the image of an OCI layout directory or OCI archive tar. The image is named
    /// `tag` if given, else by the layout's `org.opencontainers.image.ref.name` annotation (an
    /// image with neither stays nameless, addressable by id).
    pub async fn import(&self, source: &Path, tag: Option<&str>) -> OciResult<ImageRecord> {
        let (source, tag) = (source.to_path_buf(), tag.map(str::to_owned));
        self.blocking(move |s| import_blocking(s, &source, tag.as_deref()))
            .await
    }
}

fn import_blocking(store: &ImageStore, source: &Path, tag: Option<&str>) -> OciResult<ImageRecord> {
    let tag = tag.map(Reference::parse).transpose()?;
    let mut staging = store.staging()?;
    let md = fs::metadata(source).map_err(|e| read_err(source, e))?;
    let mut src: Box<dyn BlobSource> = if md.is_dir() {
        Box::new(DirSource::open(source)?)
    } else {
        Box::new(ArchiveSource::load(source, &mut staging)?)
    };
    let index: ImageIndex = serde_json::from_slice(src.index_json())
        .map_err(json_err(format!("{}/index.json", source.display())))?;
    let top = select_top(&index)?.clone();
    let ref_name = top
        .annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .cloned();
    let mut index_annotations: BTreeMap<String, String> = index
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let (manifest_desc, manifest_bytes) =
        resolve_manifest(src.as_mut(), &mut staging, &top, &mut index_annotations, 0)?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(json_err(format!("manifest {}", manifest_desc.digest())))?;
    let config_desc = manifest.config();
    let config_bytes = fetch_small(
        src.as_mut(),
        &mut staging,
        config_desc,
        CONFIG_LIMIT,
        "image config",
    )?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(json_err(format!("image config {}", config_desc.digest())))?;
    let mut blobs = vec![
        manifest_desc.digest().to_string(),
        config_desc.digest().to_string(),
    ];
    for l in manifest.layers() {
        media::layer_compression(l.media_type().as_ref())?;
        src.stage(&mut staging, l.digest().as_ref(), l.size())?;
        blobs.push(l.digest().to_string());
    }
    let names = match (tag, ref_name) {
        (Some(t), _) => vec![t.to_string()],
        (None, Some(r)) => match Reference::parse(&r) {
            Ok(r) => vec![r.to_string()],
            Err(e) => {
                tracing::warn!(%e, "layout names its image by something that is not a reference; imported without a name");
                vec![]
            }
        },
        (None, None) => vec![],
    };
    let record = make_record(
        names,
        manifest_desc.digest().as_ref(),
        manifest_desc.media_type().as_ref(),
        manifest_bytes.len() as u64,
        &manifest,
        &config,
        index_annotations,
    );
    store.commit(staging, &blobs, record)
}

fn read_err(path: &Path, source: io::Error) -> OciError {
    OciError::ReadLayout {
        path: path.to_path_buf(),
        source,
    }
}

/// Where an import reads blobs from.
trait BlobSource {
    /// The layout's index.json.
    fn index_json(&self) -> &[u8];
    /// Makes the blob `digest` of `size` bytes available in `staging`, verified.
    fn stage(&mut self, staging: &mut Staging, digest: &str, size: u64) -> OciResult<()>;
}

fn check_layout_file(path: &Path, bytes: &[u8]) -> OciResult<()> {
    let v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(json_err(format!("{}/oci-layout", path.display())))?;
    match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
        Some(ver) if ver.starts_with("1.") => Ok(()),
        other => Err(OciError::NotALayout {
            path: path.to_path_buf(),
            reason: format!("unsupported imageLayoutVersion {other:?}"),
        }),
    }
}

struct DirSource {
    root: PathBuf,
    index: Vec<u8>,
}

impl DirSource {
    fn open(root: &Path) -> OciResult<Self> {
        let read = |name: &str, limit| {
            let p = root.join(name);
            read_limited(&p, limit, name).map_err(|e| match e {
                super::store::ReadLimited::Io(e) if e.kind() == io::ErrorKind::NotFound => {
                    OciError::NotALayout {
                        path: root.to_path_buf(),
                        reason: format!("{name} missing"),
                    }
                }
                super::store::ReadLimited::Io(e) => read_err(&p, e),
                super::store::ReadLimited::TooLarge(size) => OciError::TooLarge {
                    what: "layout file",
                    size,
                    limit,
                },
            })
        };
        check_layout_file(root, &read("oci-layout", LAYOUT_FILE_LIMIT)?)?;
        Ok(Self {
            root: root.to_path_buf(),
            index: read("index.json", MANIFEST_LIMIT)?,
        })
    }
}

impl BlobSource for DirSource {
    fn index_json(&self) -> &[u8] {
        &self.index
    }

    fn stage(&mut self, staging: &mut Staging, digest: &str, size: u64) -> OciResult<()> {
        let path = self
            .root
            .join("blobs")
            .join("sha256")
            .join(sha256_hex(digest)?);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OciError::MissingBlob {
                    digest: digest.to_owned(),
                    layout: self.root.clone(),
                });
            }
            Err(e) => return Err(read_err(&path, e)),
        };
        staging.put_reader(BufReader::with_capacity(256 << 10, f), Some((digest, size)))?;
        Ok(())
    }
}

/// An OCI archive, read in one pass: every blob is staged (by its verified digest) up front.
struct ArchiveSource {
    path: PathBuf,
    index: Vec<u8>,
}

impl ArchiveSource {
    fn load(path: &Path, staging: &mut Staging) -> OciResult<Self> {
        let f = File::open(path).map_err(|e| read_err(path, e))?;
        let (_, r) = crate::archive::compress_decoder(BufReader::with_capacity(256 << 10, f))
            .map_err(|e| read_err(path, e))?;
        let mut ar = tar::Archive::new(r);
        let (mut layout, mut index) = (None, None);
        for entry in ar.entries().map_err(|e| read_err(path, e))? {
            let mut entry = entry.map_err(|e| read_err(path, e))?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = entry.path().map_err(|e| read_err(path, e))?;
            let name = name.to_string_lossy();
            let name = name.trim_start_matches("./").to_owned();
            let small = |entry: &mut tar::Entry<'_, _>, limit: u64| -> OciResult<Vec<u8>> {
                let size = entry.size();
                if size > limit {
                    return Err(OciError::TooLarge {
                        what: "layout file",
                        size,
                        limit,
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                entry.read_to_end(&mut buf).map_err(|e| read_err(path, e))?;
                Ok(buf)
            };
            if name == "oci-layout" {
                layout = Some(small(&mut entry, LAYOUT_FILE_LIMIT)?);
            } else if name == "index.json" {
                index = Some(small(&mut entry, MANIFEST_LIMIT)?);
            } else if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                let digest = format!("sha256:{hex}");
                if sha256_hex(&digest).is_err() {
                    continue;
                }
                let size = entry.size();
                staging.put_reader(&mut entry, Some((&digest, size)))?;
            }
        }
        let not_layout = |what: &str| OciError::NotALayout {
            path: path.to_path_buf(),
            reason: format!("{what} missing"),
        };
        check_layout_file(path, &layout.ok_or_else(|| not_layout("oci-layout"))?)?;
        Ok(Self {
            path: path.to_path_buf(),
            index: index.ok_or_else(|| not_layout("index.json"))?,
        })
    }
}

impl BlobSource for ArchiveSource {
    fn index_json(&self) -> &[u8] {
        &self.index
    }

    fn stage(&mut self, staging: &mut Staging, digest: &str, size: u64) -> OciResult<()> {
        match staging.get(digest) {
            None => Err(OciError::MissingBlob {
                digest: digest.to_owned(),
                layout: self.path.clone(),
            }),
            Some((_, actual)) if actual != size => Err(OciError::SizeMismatch {
                digest: digest.to_owned(),
                expected: size,
                actual,
            }),
            Some(_) => Ok(()),
        }
    }
}

/// Stages a small blob (manifest, index, config) and returns its bytes; the size limit is
/// checked against the descriptor before anything is read.
fn fetch_small(
    src: &mut dyn BlobSource,
    staging: &mut Staging,
    desc: &Descriptor,
    limit: u64,
    what: &'static str,
) -> OciResult<Vec<u8>> {
    if desc.size() > limit {
        return Err(OciError::TooLarge {
            what,
            size: desc.size(),
            limit,
        });
    }
    let digest = desc.digest().to_string();
    src.stage(staging, &digest, desc.size())?;
    let (path, _) = staging.get(&digest).ok_or_else(|| OciError::MissingBlob {
        digest: digest.clone(),
        layout: staging.path().to_path_buf(),
    })?;
    fs::read(path).map_err(|e| read_err(path, e))
}

/// Follows `desc` through nested indexes to the manifest for this host; collects the
/// annotations of the indexes passed on the way.
fn resolve_manifest(
    src: &mut dyn BlobSource,
    staging: &mut Staging,
    desc: &Descriptor,
    index_annotations: &mut BTreeMap<String, String>,
    depth: usize,
) -> OciResult<(Descriptor, Vec<u8>)> {
    let mt = desc.media_type().to_string();
    if media::is_manifest(&mt) {
        let bytes = fetch_small(src, staging, desc, MANIFEST_LIMIT, "manifest")?;
        return Ok((desc.clone(), bytes));
    }
    if !media::is_index(&mt) {
        return Err(OciError::UnsupportedMediaType {
            what: "image",
            media_type: mt,
        });
    }
    if depth >= MAX_INDEX_DEPTH {
        return Err(OciError::IndexTooDeep {
            limit: MAX_INDEX_DEPTH,
        });
    }
    let bytes = fetch_small(src, staging, desc, MANIFEST_LIMIT, "image index")?;
    let index: ImageIndex =
        serde_json::from_slice(&bytes).map_err(json_err(format!("index {}", desc.digest())))?;
    if let Some(a) = index.annotations() {
        index_annotations.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let next = select_platform(&index, desc.digest().as_ref())?.clone();
    resolve_manifest(src, staging, &next, index_annotations, depth + 1)
}

fn platform_matches(d: &Descriptor, os: &str, arch: &str) -> Option<bool> {
    d.platform()
        .as_ref()
        .map(|p| p.os().to_string() == os && p.architecture().to_string() == arch)
}

/// The manifest of a multi-platform index for linux/\<host arch\>.
pub(crate) fn select_platform<'a>(
    index: &'a ImageIndex,
    digest: &str,
) -> OciResult<&'a Descriptor> {
    let (os, arch) = host_platform();
    let m = index.manifests();
    if let Some(d) = m
        .iter()
        .find(|d| platform_matches(d, &os, &arch) == Some(true))
    {
        return Ok(d);
    }
    match m.as_slice() {
        [only] if only.platform().is_none() => Ok(only),
        _ => Err(OciError::NoPlatformManifest {
            digest: digest.to_owned(),
            os,
            architecture: arch,
        }),
    }
}

/// The image of a layout's top-level index: its only entry, or the one for this platform.
fn select_top(index: &ImageIndex) -> OciResult<&Descriptor> {
    let (os, arch) = host_platform();
    let m = index.manifests();
    if m.len() == 1 {
        return Ok(&m[0]);
    }
    if m.is_empty() {
        return Err(OciError::EmptyLayout);
    }
    let fitting: Vec<&Descriptor> = m
        .iter()
        .filter(|d| platform_matches(d, &os, &arch) != Some(false))
        .collect();
    match fitting.as_slice() {
        [one] => Ok(one),
        [] => Err(OciError::NoPlatformManifest {
            digest: "index.json".into(),
            os,
            architecture: arch,
        }),
        many => Err(OciError::AmbiguousLayout {
            count: many.len(),
            names: many
                .iter()
                .map(|d| {
                    d.annotations()
                        .as_ref()
                        .and_then(|a| a.get(REF_NAME).cloned())
                        .unwrap_or_else(|| d.digest().to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Writes `record` as an OCI layout (directory or archive) at `dest`, which must not exist.
/// The layout appears at `dest` only when complete (temp beside it + fsync + rename).
pub async fn export(
    store: &ImageStore,
    record: &ImageRecord,
    format: Format,
    dest: &Path,
) -> OciResult<()> {
    let (record, dest) = (record.clone(), dest.to_path_buf());
    store
        .blocking(move |s| export_blocking(s, &record, format, &dest))
        .await
}

/// The index.json of a one-image layout of `record`.
pub(crate) fn layout_index(record: &ImageRecord) -> serde_json::Value {
    let mut desc_annotations = serde_json::Map::new();
    if let Some(n) = record.names.first() {
        desc_annotations.insert(REF_NAME.into(), n.clone().into());
    }
    let mut index = json!({
        "schemaVersion": 2,
        "mediaType": media::OCI_INDEX,
        "manifests": [{
            "mediaType": record.manifest_media_type,
            "digest": record.manifest_digest,
            "size": 0,
            "platform": {"architecture": record.architecture, "os": record.os},
            "annotations": desc_annotations,
        }],
    });
    if !record.index_annotations.is_empty() {
        index["annotations"] = json!(record.index_annotations);
    }
    index
}

fn export_blocking(
    store: &ImageStore,
    record: &ImageRecord,
    format: Format,
    dest: &Path,
) -> OciResult<()> {
    if dest.symlink_metadata().is_ok() {
        return Err(OciError::DestinationExists {
            path: dest.to_path_buf(),
        });
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OciError::Write { path, source }
    };
    let manifest_bytes = store.read_blob_limited(
        &record.manifest_digest,
        super::store::MANIFEST_LIMIT,
        "manifest",
    )?;
    let manifest: ImageManifest = serde_json::from_slice(&manifest_bytes)
        .map_err(json_err(format!("manifest {}", record.manifest_digest)))?;
    let mut index = layout_index(record);
    index["manifests"][0]["size"] = json!(manifest_bytes.len());
    let index_bytes = serde_json::to_vec(&index).map_err(json_err("index.json"))?;
    let layout_bytes = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut blobs = vec![
        record.manifest_digest.clone(),
        manifest.config().digest().to_string(),
    ];
    blobs.extend(manifest.layers().iter().map(|l| l.digest().to_string()));
    blobs.dedup();

    match format {
        Format::OciDir => {
            let tmp = tempfile::Builder::new()
                .prefix(".cpe-export-")
                .tempdir_in(&parent)
                .map_err(werr(&parent))?;
            let bdir = tmp.path().join("blobs").join("sha256");
            fs::create_dir_all(&bdir).map_err(werr(&bdir))?;
            for d in &blobs {
                let to = bdir.join(sha256_hex(d)?);
                fs::copy(store.blob_path(d)?, &to).map_err(werr(&to))?;
                File::open(&to)
                    .and_then(|f| f.sync_all())
                    .map_err(werr(&to))?;
            }
            for (name, bytes) in [
                ("oci-layout", &layout_bytes[..]),
                ("index.json", &index_bytes),
            ] {
                let p = tmp.path().join(name);
                let mut f = File::create(&p).map_err(werr(&p))?;
                f.write_all(bytes)
                    .and_then(|_| f.sync_all())
                    .map_err(werr(&p))?;
            }
            for d in [bdir.as_path(), &tmp.path().join("blobs"), tmp.path()] {
                sync_dir(d)?;
            }
            let kept = tmp.keep();
            std::fs::set_permissions(&kept, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(werr(&kept))?;
            if let Err(e) = rename_noreplace(&kept, dest) {
                let _ = fs::remove_dir_all(&kept);
                return Err(werr(dest)(e));
            }
            sync_dir(&parent)
        }
        Format::OciArchive => {
            let tmp = tempfile::Builder::new()
                .prefix(".cpe-export-")
                .tempfile_in(&parent)
                .map_err(werr(&parent))?;
            {
                let mut b =
                    tar::Builder::new(io::BufWriter::with_capacity(256 << 10, tmp.as_file()));
                b.mode(tar::HeaderMode::Deterministic);
                let mtime = 0;
                let dir = |b: &mut tar::Builder<_>, name: &str| {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_mtime(mtime);
                    b.append_data(&mut h, name, io::empty())
                };
                let file_header = |size: u64| {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o644);
                    h.set_size(size);
                    h.set_mtime(mtime);
                    h
                };
                let w = werr(dest);
                (|| -> io::Result<()> {
                    b.append_data(
                        &mut file_header(layout_bytes.len() as u64),
                        "oci-layout",
                        &layout_bytes[..],
                    )?;
                    b.append_data(
                        &mut file_header(index_bytes.len() as u64),
                        "index.json",
                        &index_bytes[..],
                    )?;
                    dir(&mut b, "blobs/")?;
                    dir(&mut b, "blobs/sha256/")?;
                    for d in &blobs {
                        let p = store.blob_path(d).map_err(io::Error::other)?;
                        let f = File::open(&p)?;
                        let len = f.metadata()?.len();
                        let name =
                            format!("blobs/sha256/{}", sha256_hex(d).map_err(io::Error::other)?);
                        b.append_data(&mut file_header(len), name, BufReader::new(f))?;
                    }
                    let mut w = b.into_inner()?;
                    w.flush()
                })()
                .map_err(w)?;
            }
            tmp.as_file().sync_all().map_err(werr(dest))?;
            tmp.persist_noclobber(dest)
                .map_err(|e| werr(dest)(e.error))?;
            std::fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .map_err(werr(dest))?;
            sync_dir(&parent)
        }
    }
}

/// rename(2) that fails instead of replacing an existing `to` (renameat2 RENAME_NOREPLACE).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        from,
        nix::fcntl::AT_FDCWD,
        to,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    )
    .map_err(io::Error::from)
}
