//! The local image store: content-addressed blobs plus an index of image records.
//!
//! On disk, under `<state root>/images/`:
//!
//! ```text
//! blobs/sha256/<hex>   every manifest, config and layer, named by its digest (read-only 0444)
//! images.json          {"version":1,"images":[ImageRecord…]}, replaced atomically
//! lock                 flock(2)ed exclusively by every writer (any process)
//! tmp/                 staging directories of imports and pulls in progress
//! ```
//!
//! Every way content enters the store (layout import, checkpoint image build, registry pull)
//! stages blobs in a private directory under `tmp/` while hashing them, checks each against its
//! descriptor (digest and size), and only then *commits*: under the lock, the blobs the image
//! needs are renamed into `blobs/` and `images.json` is rewritten (temp file + fsync + rename).
//! A failure before the commit leaves the store exactly as it was; the staging directory is
//! removed when dropped. Garbage collection also runs under the lock, so it never removes a
//! blob that a concurrent commit is about to reference.
//!
//! An image's id is its config digest (what `docker images`/`crictl images` show); its names are
//! normalised references ([`Reference`]). A name belongs to one image at a time: giving it to
//! another image takes it away from the first, which stays in the store without a name until it
//! is removed by id.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use oci_spec::image::{ImageConfiguration, ImageManifest};
use serde::{Deserialize, Serialize};

use super::digest::{HashingWriter, sha256_hex, verify};
use super::error::{OciError, OciResult, json_err, store_err};
use super::reference::Reference;
use super::{media, now_rfc3339};

/// Where cpengine keeps its state when nothing else is said.
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/cpengine";
/// The environment variable that overrides [`DEFAULT_STATE_ROOT`] (the CLI's `--state-root`).
pub const STATE_ROOT_ENV: &str = "CPENGINE_STATE_ROOT";

/// Largest manifest or index read into memory.
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// Largest image config read into memory (configs with long histories reach a few hundred KiB).
pub const CONFIG_LIMIT: u64 = 8 << 20;
const RECORDS_LIMIT: u64 = 64 << 20;
const RECORDS_VERSION: u32 = 1;

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The config digest, `sha256:<hex>`.
    pub id: String,
    /// Normalised references naming this image (may be empty).
    pub names: Vec<String>,
    pub manifest_digest: String,
    pub manifest_media_type: String,
    /// Bytes of manifest, config and (compressed) layers.
    pub size: u64,
    /// The config's `created`, RFC 3339, if it has one.
    pub created: Option<String>,
    /// When the image entered this store, RFC 3339.
    pub added: String,
    /// The manifest's annotations over those of the index it came from (the manifest wins).
    pub annotations: BTreeMap<String, String>,
    /// The annotations of the index the image came from (kept so an export writes them back).
    #[serde(default)]
    pub index_annotations: BTreeMap<String, String>,
    /// The config's labels.
    pub labels: BTreeMap<String, String>,
    pub os: String,
    pub architecture: String,
}

impl ImageRecord {
    /// The id's hex digits.
    pub fn id_hex(&self) -> &str {
        self.id.strip_prefix("sha256:").unwrap_or(&self.id)
    }

    /// `repository@manifest-digest` for every name (what CRI calls repo digests).
    pub fn repo_digests(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .names
            .iter()
            .filter_map(|n| Reference::parse(n).ok())
            .map(|r| format!("{}@{}", r.repository(), self.manifest_digest))
            .collect();
        out.dedup();
        out
    }
}

/// What a container started from an image runs by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RunConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub stop_signal: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// One layer, bottom first, for an unpacker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayerInfo {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    /// The digest of the uncompressed layer (the config's `rootfs.diff_ids`).
    pub diff_id: Option<String>,
    pub compression: Compression,
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Disk use of the store (for CRI ImageFsInfo).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FsUsage {
    /// The directory measured.
    pub path: PathBuf,
    /// Bytes allocated (st_blocks × 512) by the store's files.
    pub used_bytes: u64,
    /// Files and directories of the store.
    pub inodes_used: u64,
}

/// What [`ImageStore::remove`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RemoveOutcome {
    /// Names taken off the image.
    pub untagged: Vec<String>,
    /// The id of the image deleted, if it was (its last name went, or it was named by id).
    pub deleted: Option<String>,
    /// Blobs garbage-collected afterwards.
    pub blobs_removed: usize,
    pub bytes_freed: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordsFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// A handle on an image store; cheap to clone, safe to share between tasks and processes.
#[derive(Debug, Clone)]
pub struct ImageStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
}

impl ImageStore {
    /// Opens (creating if needed) the store under a state directory (its `images/` directory;
    /// cpengine passes `StateRoot::lib`, so the default store is /var/lib/cpengine/images).
    pub async fn open(state_root: impl Into<PathBuf>) -> OciResult<Self> {
        let root = state_root.into();
        tokio::task::spawn_blocking(move || Self::open_blocking(&root)).await?
    }

    pub(crate) fn open_blocking(state_root: &Path) -> OciResult<Self> {
        let dir = state_root.join("images");
        for d in [dir.join("blobs").join("sha256"), dir.join("tmp")] {
            fs::create_dir_all(&d).map_err(store_err(&d))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(store_err(&dir))?;
        remove_stale_staging(&dir.join("tmp"));
        Ok(Self {
            inner: Arc::new(Inner { dir }),
        })
    }

    /// The store's directory (`<state root>/images`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where the blob `digest` lives (whether or not it is present).
    pub fn blob_path(&self, digest: &str) -> OciResult<PathBuf> {
        Ok(self.blobs_dir().join(sha256_hex(digest)?))
    }

    fn blobs_dir(&self) -> PathBuf {
        self.inner.dir.join("blobs").join("sha256")
    }

    fn records_path(&self) -> PathBuf {
        self.inner.dir.join("images.json")
    }

    /// Runs blocking store work off the async runtime.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> OciResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&ImageStore) -> OciResult<T> + Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }

    /// Every image, in the order they were added.
    pub async fn list(&self) -> OciResult<Vec<ImageRecord>> {
        self.blocking(|s| s.read_records()).await
    }

    /// The image a reference (`busybox`, `localhost:5000/a/b:t`, `name@sha256:…`) or an id
    /// (`sha256:<hex>`, or a unique prefix of the hex) names.
    pub async fn resolve(&self, reference_or_id: &str) -> OciResult<ImageRecord> {
        let r = reference_or_id.to_owned();
        self.blocking(move |s| s.resolve_blocking(&r)).await
    }

    /// [`resolve`](Self::resolve) for a name that came from untrusted input (an archive's
    /// `config.dump`): a whole reference or a whole image id (64 hex digits, `sha256:`
    /// optional) only, never an id prefix, which could pick any image of the store.
    pub async fn resolve_exact(&self, reference_or_id: &str) -> OciResult<ImageRecord> {
        if !is_exact_name(reference_or_id) {
            return Err(OciError::ImageNotFound {
                reference: reference_or_id.to_owned(),
            });
        }
        self.resolve(reference_or_id).await
    }

    pub(crate) fn resolve_blocking(&self, s: &str) -> OciResult<ImageRecord> {
        let records = self.read_records()?;
        Ok(records[resolve_in(&records, s)?].clone())
    }

    /// Adds the name `name` to the image `reference_or_id`.
    pub async fn tag(&self, reference_or_id: &str, name: &str) -> OciResult<ImageRecord> {
        let (r, name) = (
            reference_or_id.to_owned(),
            Reference::parse(name)?.to_string(),
        );
        self.blocking(move |s| {
            let _lock = s.lock()?;
            let mut records = s.read_records()?;
            let i = resolve_in(&records, &r)?;
            for rec in records.iter_mut() {
                rec.names.retain(|n| *n != name);
            }
            records[i].names.push(name);
            let out = records[i].clone();
            s.write_records(records)?;
            Ok(out)
        })
        .await
    }

    /// Removes a name from its image, or a whole image when named by id or by its last name,
    /// then garbage-collects blobs no image references any more.
    pub async fn remove(&self, reference_or_id: &str) -> OciResult<RemoveOutcome> {
        let r = reference_or_id.to_owned();
        self.blocking(move |s| s.remove_blocking(&r)).await
    }

    fn remove_blocking(&self, r: &str) -> OciResult<RemoveOutcome> {
        let _lock = self.lock()?;
        let mut records = self.read_records()?;
        let i = resolve_in(&records, r)?;
        let mut out = RemoveOutcome::default();
        let by_name = Reference::parse(r)
            .ok()
            .map(|n| n.to_string())
            .filter(|n| records[i].names.contains(n));
        match by_name {
            Some(name) if records[i].names.len() > 1 => {
                records[i].names.retain(|n| *n != name);
                out.untagged.push(name);
            }
            _ => {
                let rec = records.remove(i);
                out.untagged = rec.names;
                out.deleted = Some(rec.id);
            }
        }
        self.write_records(records)?;
        let (n, bytes) = self.gc_locked()?;
        out.blobs_removed = n;
        out.bytes_freed = bytes;
        Ok(out)
    }

    /// Removes every blob no image references; returns (blobs, bytes) removed.
    pub async fn gc(&self) -> OciResult<(usize, u64)> {
        self.blocking(|s| {
            let _lock = s.lock()?;
            s.gc_locked()
        })
        .await
    }

    fn gc_locked(&self) -> OciResult<(usize, u64)> {
        let mut keep = BTreeSet::new();
        for rec in self.read_records()? {
            keep.insert(rec.manifest_digest.clone());
            let m = self.manifest_blocking(&rec)?;
            keep.insert(m.config().digest().to_string());
            for l in m.layers() {
                keep.insert(l.digest().to_string());
            }
        }
        let dir = self.blobs_dir();
        let (mut n, mut bytes) = (0, 0);
        for e in fs::read_dir(&dir).map_err(store_err(&dir))? {
            let e = e.map_err(store_err(&dir))?;
            let name = e.file_name();
            let digest = format!("sha256:{}", name.to_string_lossy());
            if keep.contains(&digest) {
                continue;
            }
            let len = e.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(e.path()) {
                Ok(()) => {
                    n += 1;
                    bytes += len;
                }
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(store_err(e.path())(err)),
            }
        }
        if n > 0 {
            sync_dir(&dir)?;
            tracing::debug!(blobs = n, bytes, "image store garbage collected");
        }
        Ok((n, bytes))
    }

    /// The image's manifest.
    pub async fn manifest(&self, record: &ImageRecord) -> OciResult<ImageManifest> {
        let rec = record.clone();
        self.blocking(move |s| s.manifest_blocking(&rec)).await
    }

    pub(crate) fn manifest_blocking(&self, record: &ImageRecord) -> OciResult<ImageManifest> {
        let bytes = self.read_blob_limited(&record.manifest_digest, MANIFEST_LIMIT, "manifest")?;
        serde_json::from_slice(&bytes)
            .map_err(json_err(format!("manifest {}", record.manifest_digest)))
    }

    /// The image's full config.
    pub async fn image_config(&self, record: &ImageRecord) -> OciResult<ImageConfiguration> {
        let rec = record.clone();
        self.blocking(move |s| s.image_config_blocking(&rec)).await
    }

    pub(crate) fn image_config_blocking(
        &self,
        record: &ImageRecord,
    ) -> OciResult<ImageConfiguration> {
        let bytes = self.read_blob_limited(&record.id, CONFIG_LIMIT, "image config")?;
        serde_json::from_slice(&bytes).map_err(json_err(format!("image config {}", record.id)))
    }

    /// What a container of this image runs: env, entrypoint, cmd, working dir, user.
    pub async fn config(&self, record: &ImageRecord) -> OciResult<RunConfig> {
        let c = self.image_config(record).await?;
        Ok(run_config(&c))
    }

    /// The image's layers, bottom first, with media types and digests.
    pub async fn layers(&self, record: &ImageRecord) -> OciResult<Vec<LayerInfo>> {
        let rec = record.clone();
        self.blocking(move |s| s.layers_blocking(&rec)).await
    }

    pub(crate) fn layers_blocking(&self, record: &ImageRecord) -> OciResult<Vec<LayerInfo>> {
        let m = self.manifest_blocking(record)?;
        let c = self.image_config_blocking(record)?;
        let diff_ids = c.rootfs().diff_ids();
        m.layers()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let media_type = l.media_type().to_string();
                Ok(LayerInfo {
                    compression: media::layer_compression(&media_type)?,
                    media_type,
                    digest: l.digest().to_string(),
                    size: l.size(),
                    diff_id: diff_ids.get(i).cloned(),
                })
            })
            .collect()
    }

    /// Opens a layer blob decompressed: a tar stream. Blocking reads: use it inside
    /// `tokio::task::spawn_blocking`.
    pub fn open_layer(&self, layer: &LayerInfo) -> OciResult<Box<dyn Read + Send>> {
        let path = self.blob_path(&layer.digest)?;
        let f = File::open(&path).map_err(store_err(&path))?;
        let r = io::BufReader::with_capacity(256 << 10, f);
        Ok(match layer.compression {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => {
                Box::new(zstd::stream::read::Decoder::with_buffer(r).map_err(store_err(&path))?)
            }
        })
    }

    /// Bytes and inodes the store uses.
    pub async fn fs_usage(&self) -> OciResult<FsUsage> {
        self.blocking(|s| {
            let (mut used_bytes, mut inodes_used) = (0, 0);
            let mut stack = vec![s.inner.dir.clone()];
            while let Some(d) = stack.pop() {
                let md = fs::symlink_metadata(&d).map_err(store_err(&d))?;
                used_bytes += md.blocks() * 512;
                inodes_used += 1;
                for e in fs::read_dir(&d).map_err(store_err(&d))? {
                    let e = e.map_err(store_err(&d))?;
                    let md = match e.metadata() {
                        Ok(md) => md,
                        Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                        Err(err) => return Err(store_err(e.path())(err)),
                    };
                    if md.is_dir() {
                        stack.push(e.path());
                    } else {
                        used_bytes += md.blocks() * 512;
                        inodes_used += 1;
                    }
                }
            }
            Ok(FsUsage {
                path: s.inner.dir.clone(),
                used_bytes,
                inodes_used,
            })
        })
        .await
    }

    /// Reads a whole blob, refusing one larger than `limit`, and checks its digest.
    pub(crate) fn read_blob_limited(
        &self,
        digest: &str,
        limit: u64,
        what: &'static str,
    ) -> OciResult<Vec<u8>> {
        let path = self.blob_path(digest)?;
        let bytes = read_limited(&path, limit, what).map_err(|e| match e {
            ReadLimited::Io(source) => OciError::Store { path, source },
            ReadLimited::TooLarge(size) => OciError::TooLarge { what, size, limit },
        })?;
        let actual = super::digest::sha256_of(&bytes);
        verify(digest, bytes.len() as u64, &actual, bytes.len() as u64)?;
        Ok(bytes)
    }

    // --- records ----------------------------------------------------------------------

    fn read_records(&self) -> OciResult<Vec<ImageRecord>> {
        let path = self.records_path();
        let bytes = match read_limited(&path, RECORDS_LIMIT, "image index") {
            Ok(b) => b,
            Err(ReadLimited::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
            Err(ReadLimited::Io(source)) => return Err(OciError::Store { path, source }),
            Err(ReadLimited::TooLarge(size)) => {
                return Err(OciError::TooLarge {
                    what: "image store index",
                    size,
                    limit: RECORDS_LIMIT,
                });
            }
        };
        let file: RecordsFile = serde_json::from_slice(&bytes)
            .map_err(|source| OciError::StoreIndex { path, source })?;
        Ok(file.images)
    }

    fn write_records(&self, images: Vec<ImageRecord>) -> OciResult<()> {
        let file = RecordsFile {
            version: RECORDS_VERSION,
            images,
        };
        let bytes = serde_json::to_vec_pretty(&file).map_err(json_err("image store index"))?;
        write_atomic(&self.records_path(), &bytes, 0o600)
    }

    /// Takes the store's writer lock (blocking until other writers, in any process, are done).
    fn lock(&self) -> OciResult<Flock<File>> {
        let path = self.inner.dir.join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| OciError::Lock {
                path: path.clone(),
                source,
            })?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, errno)| OciError::Lock {
            path,
            source: errno.into(),
        })
    }

    /// A fresh staging area for content about to enter the store.
    pub(crate) fn staging(&self) -> OciResult<Staging> {
        let tmp = self.inner.dir.join("tmp");
        let dir = tempfile::Builder::new()
            .prefix("stage-")
            .tempdir_in(&tmp)
            .map_err(store_err(&tmp))?;
        Ok(Staging {
            dir,
            blobs: HashMap::new(),
            counter: 0,
        })
    }

    /// Moves the blobs `blobs` from `staging` into the store and records `record`, atomically
    /// with respect to other writers. Names on `record` are taken away from other images.
    pub(crate) fn commit(
        &self,
        staging: Staging,
        blobs: &[String],
        mut record: ImageRecord,
    ) -> OciResult<ImageRecord> {
        // Everything must be staged (or already stored) before anything moves.
        for d in blobs {
            if !staging.blobs.contains_key(d) && !self.blob_path(d)?.exists() {
                return Err(OciError::MissingBlob {
                    digest: d.clone(),
                    layout: staging.dir.path().to_path_buf(),
                });
            }
        }
        let _lock = self.lock()?;
        let dir = self.blobs_dir();
        for d in blobs {
            let Some((src, _)) = staging.blobs.get(d) else {
                continue;
            };
            let dest = self.blob_path(d)?;
            if dest.exists() {
                continue;
            }
            fs::rename(src, &dest).map_err(store_err(&dest))?;
        }
        sync_dir(&dir)?;
        let mut records = self.read_records()?;
        for rec in records.iter_mut() {
            rec.names.retain(|n| !record.names.contains(n));
        }
        let out = if let Some(existing) = records.iter_mut().find(|r| r.id == record.id) {
            let mut names = std::mem::take(&mut existing.names);
            for n in record.names.drain(..) {
                if !names.contains(&n) {
                    names.push(n);
                }
            }
            record.names = names;
            record.added = existing.added.clone();
            *existing = record;
            existing.clone()
        } else {
            records.push(record);
            records.last().cloned().unwrap_or_else(|| unreachable!())
        };
        self.write_records(records)?;
        Ok(out)
    }
}

/// Staging directories outlive only a crash of the process that made them; one untouched for
/// a day belongs to no running import.
const STALE_STAGING: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

fn remove_stale_staging(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let stale = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_STAGING);
        if stale && e.file_name().to_string_lossy().starts_with("stage-") {
            match fs::remove_dir_all(e.path()) {
                Ok(()) => {
                    tracing::debug!(path = %e.path().display(), "removed stale staging directory")
                }
                Err(err) => {
                    tracing::warn!(path = %e.path().display(), %err, "cannot remove stale staging directory")
                }
            }
        }
    }
}

/// The index of the record `s` names in `records`.
/// Whether `s` names an image without an id prefix: a whole id, or a reference that is not
/// (also) an id prefix. A name that is all hex digits resolves as an id prefix when no image
/// has that name, so it is exact only at the full 64 digits.
pub fn is_exact_name(s: &str) -> bool {
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    let all_hex = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
    if all_hex {
        return hex.len() == 64;
    }
    !s.starts_with("sha256:") && Reference::parse(s).is_ok()
}

fn resolve_in(records: &[ImageRecord], s: &str) -> OciResult<usize> {
    let not_found = || OciError::ImageNotFound {
        reference: s.to_owned(),
    };
    if let Ok(r) = Reference::parse(s) {
        if let Some(d) = r.digest() {
            let repo = r.repository();
            if let Some(i) = records.iter().position(|rec| {
                rec.manifest_digest == d
                    && rec
                        .names
                        .iter()
                        .any(|n| Reference::parse(n).is_ok_and(|n| n.repository() == repo))
            }) {
                return Ok(i);
            }
        }
        let name = r.to_string();
        if let Some(i) = records.iter().position(|rec| rec.names.contains(&name)) {
            return Ok(i);
        }
    }
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let hex = hex.to_ascii_lowercase();
    let hits: Vec<usize> = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.id_hex().starts_with(&hex))
        .map(|(i, _)| i)
        .collect();
    match hits.as_slice() {
        [] => Err(not_found()),
        [i] => Ok(*i),
        many => Err(OciError::AmbiguousId {
            prefix: s.to_owned(),
            ids: many
                .iter()
                .map(|&i| records[i].id_hex()[..12].to_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

pub(crate) fn run_config(c: &ImageConfiguration) -> RunConfig {
    let Some(cfg) = c.config() else {
        return RunConfig::default();
    };
    RunConfig {
        env: cfg.env().clone().unwrap_or_default(),
        entrypoint: cfg.entrypoint().clone().unwrap_or_default(),
        cmd: cfg.cmd().clone().unwrap_or_default(),
        working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
        user: cfg.user().clone().filter(|u| !u.is_empty()),
        stop_signal: cfg.stop_signal().clone(),
        labels: cfg
            .labels()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }
}

/// Builds the record of an image whose manifest and config are parsed.
pub(crate) fn make_record(
    names: Vec<String>,
    manifest_digest: &str,
    manifest_media_type: &str,
    manifest_len: u64,
    manifest: &ImageManifest,
    config: &ImageConfiguration,
    index_annotations: BTreeMap<String, String>,
) -> ImageRecord {
    let mut annotations = index_annotations.clone();
    annotations.remove(super::annotations::REF_NAME);
    if let Some(a) = manifest.annotations() {
        annotations.extend(a.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    let size = manifest_len
        + manifest.config().size()
        + manifest.layers().iter().map(|l| l.size()).sum::<u64>();
    ImageRecord {
        id: manifest.config().digest().to_string(),
        names,
        manifest_digest: manifest_digest.to_owned(),
        manifest_media_type: manifest_media_type.to_owned(),
        size,
        created: config.created().clone(),
        added: now_rfc3339(),
        annotations,
        index_annotations,
        labels: run_config(config).labels,
        os: config.os().to_string(),
        architecture: config.architecture().to_string(),
    }
}

/// Blobs received but not yet in the store, each verified against its descriptor.
#[derive(Debug)]
pub(crate) struct Staging {
    dir: tempfile::TempDir,
    /// digest → (file, size)
    blobs: HashMap<String, (PathBuf, u64)>,
    counter: u64,
}

impl Staging {
    /// A fresh name in the staging directory for content whose digest is not known yet.
    pub(crate) fn next_path(&mut self) -> PathBuf {
        self.counter += 1;
        self.dir.path().join(format!("incoming-{}", self.counter))
    }

    /// A new file in the staging directory for content whose digest is not known yet.
    pub(crate) fn new_file(&mut self) -> OciResult<(PathBuf, File)> {
        let path = self.next_path();
        let f = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(store_err(&path))?;
        Ok((path, f))
    }

    /// Records `path` (written by the caller, fsynced or not) as the blob `digest` of `size`.
    pub(crate) fn adopt(&mut self, path: &Path, digest: &str, size: u64) -> OciResult<PathBuf> {
        let hex = sha256_hex(digest)?;
        let dest = self.dir.path().join(hex);
        fs::rename(path, &dest).map_err(store_err(&dest))?;
        fs::set_permissions(&dest, fs::Permissions::from_mode(0o444)).map_err(store_err(&dest))?;
        self.blobs.insert(digest.to_owned(), (dest.clone(), size));
        Ok(dest)
    }

    /// Copies `r` into the staging area, hashing it. With `expected` = (digest, size), content
    /// that differs is refused (and deleted): at most `size + 1` bytes are read.
    pub(crate) fn put_reader(
        &mut self,
        r: impl Read,
        expected: Option<(&str, u64)>,
    ) -> OciResult<(String, u64)> {
        if let Some((d, size)) = expected {
            sha256_hex(d)?;
            if let Some((_, s)) = self.blobs.get(d)
                && *s == size
            {
                return Ok((d.to_owned(), size));
            }
        }
        let (path, f) = self.new_file()?;
        let mut w = HashingWriter::new(BufWriter::with_capacity(256 << 10, f));
        let copied = match expected {
            Some((_, size)) => io::copy(&mut r.take(size.saturating_add(1)), &mut w),
            None => {
                let mut r = r;
                io::copy(&mut r, &mut w)
            }
        };
        copied.map_err(|source| OciError::Write {
            path: path.clone(),
            source,
        })?;
        let (digest, len, mut bw) = w.finish();
        bw.flush().map_err(store_err(&path))?;
        let f = bw
            .into_inner()
            .map_err(|e| store_err(&path)(e.into_error()))?;
        if let Some((d, size)) = expected
            && let Err(e) = verify(d, size, &digest, len)
        {
            drop(f);
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        f.sync_all().map_err(store_err(&path))?;
        self.adopt(&path, &digest, len)?;
        Ok((digest, len))
    }

    pub(crate) fn put_bytes(
        &mut self,
        bytes: &[u8],
        expected: Option<(&str, u64)>,
    ) -> OciResult<(String, u64)> {
        self.put_reader(bytes, expected)
    }

    /// The staged file of `digest`, if staged.
    pub(crate) fn get(&self, digest: &str) -> Option<(&Path, u64)> {
        self.blobs.get(digest).map(|(p, s)| (p.as_path(), *s))
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub(crate) enum ReadLimited {
    Io(io::Error),
    TooLarge(u64),
}

/// Reads a file of at most `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64, _what: &str) -> Result<Vec<u8>, ReadLimited> {
    let f = File::open(path).map_err(ReadLimited::Io)?;
    let len = f.metadata().map_err(ReadLimited::Io)?.len();
    if len > limit {
        return Err(ReadLimited::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(ReadLimited::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadLimited::TooLarge(buf.len() as u64));
    }
    Ok(buf)
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync, rename, fsync the dir.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> OciResult<()> {
    crate::host::fs::write_atomic(path, bytes, mode).map_err(|source| OciError::Write {
        path: path.to_path_buf(),
        source,
    })
}

pub(crate) fn sync_dir(dir: &Path) -> OciResult<()> {
    crate::host::fs::sync_dir(dir).map_err(|source| OciError::Write {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id_hex: &str, names: &[&str]) -> ImageRecord {
        ImageRecord {
            id: format!("sha256:{id_hex}"),
            names: names.iter().map(|s| s.to_string()).collect(),
            manifest_digest: format!("sha256:{}", "f".repeat(64)),
            manifest_media_type: media::OCI_MANIFEST.into(),
            size: 0,
            created: None,
            added: String::new(),
            annotations: BTreeMap::new(),
            index_annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            os: "linux".into(),
            architecture: "amd64".into(),
        }
    }

    #[test]
    fn resolution_by_name_id_prefix_and_digest() {
        let a = "a".repeat(64);
        let ab = format!("ab{}", "0".repeat(62));
        let records = vec![
            rec(&a, &["docker.io/library/busybox:latest"]),
            rec(&ab, &["localhost:5000/x/y:t"]),
        ];
        assert_eq!(resolve_in(&records, "busybox").unwrap(), 0);
        assert_eq!(
            resolve_in(&records, "docker.io/library/busybox").unwrap(),
            0
        );
        assert_eq!(resolve_in(&records, "localhost:5000/x/y:t").unwrap(), 1);
        assert_eq!(resolve_in(&records, "ab0").unwrap(), 1);
        assert_eq!(resolve_in(&records, &format!("sha256:{a}")).unwrap(), 0);
        assert!(matches!(
            resolve_in(&records, "a"),
            Err(OciError::AmbiguousId { .. })
        ));
        assert!(matches!(
            resolve_in(&records, "busybox:1"),
            Err(OciError::ImageNotFound { .. })
        ));
        let by_digest = format!("localhost:5000/x/y@sha256:{}", "f".repeat(64));
        assert_eq!(resolve_in(&records, &by_digest).unwrap(), 1);
    }
}
