//! The archive writer: plan every member, then stream them in one pass into a temp file that is
//! renamed over the destination once complete (see the module docs of [`crate::archive`]).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::names;
use super::sign::{DigestKind, MemberDigest};
use super::tarfmt::{self, END_LEN, Meta, TarSink, TypeFlag, encode, pad_len, padded};
use super::{ArchiveError, Compression, ConfigDump, Progress};
use crate::rootfs::RootfsDiff;

/// Output buffer of the archive file: large enough that each write(2) moves a lot, small
/// enough not to matter next to the page cache (1 MiB).
const OUT_BUF: usize = 1 << 20;
/// Read buffer for copying files through a compressor (1 MiB).
const COPY_BUF: usize = 1 << 20;
/// Files shorter than this are copied through the buffer even when `copy_file_range` is
/// available: the flush and syscall overhead outweighs the saved copy for small CRIU images.
const CFR_MIN: u64 = 256 << 10;
/// Progress callbacks at most every 8 MiB.
const PROGRESS_STEP: u64 = 8 << 20;
/// zstd level 1: with two workers it compresses CRIU's page images about 1.5 times as fast as
/// zstd's own default (3) for a few percent of size. Measured with `cargo bench -p
/// cpengine-benches --bench archive` (256 MiB of pages, archive written and fsynced, 2 cores,
/// load average ~1.5): half-compressible pages at level 3 ~670 MiB/s, level 1 ~990 MiB/s,
/// level -1 ~1.1 GiB/s (a clearly worse ratio); incompressible pages ~720 MiB/s at any level,
/// the same as no compression (the fsync of as many bytes is the limit).
const ZSTD_LEVEL: i32 = 1;
/// gzip level 1: gzip is single-threaded and already the slowest option at level 1.
///
/// Measured on this project's 2-core machine, page cache warm, 1 GiB images dir (512 MiB
/// random + 512 MiB half-compressible pages), including fsync and rename:
/// `cargo run --release -p cpengine --example write_archive -- DIR OUT none|gzip|zstd`
///
/// | compression | time | tar MB/s | archive size |
/// |---|---:|---:|---:|
/// | none (copy_file_range) | 1.9–2.3 s | 475–560 | 1024 MiB |
/// | gzip level 1 | 12.6 s | 85 | 546 MiB |
/// | zstd level 3, 2 workers | 2.4 s | 452 | 512 MiB |
///
/// With no compression almost all of the time is the fsync of 1 GiB (0.0 s user time: the
/// data never passes through user space).
const GZIP_LEVEL: u32 = 1;

/// The name prefix of the temp file an archive to `dest` is written to, beside it: a dot file
/// that a crashed writer's recovery (the engine's checkpoint journal) recognises.
pub fn temp_prefix(dest: &Path) -> String {
    format!(
        ".{}.cpengine-tmp-",
        dest.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "archive".into())
    )
}

/// Everything that goes into an archive.
#[derive(Debug, Clone)]
pub struct ArchiveInput {
    /// CRIU's images directory; becomes `checkpoint/`.
    pub images_dir: PathBuf,
    pub config: ConfigDump,
    /// The OCI runtime spec (see [`super::annotate_spec`]).
    pub spec: serde_json::Value,
    /// CRIU's `stats-dump`, stored at the top level.
    pub stats_dump: Option<PathBuf>,
    /// CRIU's dump log.
    pub dump_log: Option<PathBuf>,
    /// The rootfs diff plan; streamed as `rootfs-diff.tar` plus `deleted.files`. Nothing is
    /// written for `None` or an empty diff.
    pub rootfs: Option<RootfsDiff>,
    /// Further top-level members (e.g. `status.dump`), name and content.
    pub extra: Vec<(String, Vec<u8>)>,
}

/// How to write.
#[derive(Clone, Copy, Default)]
pub struct WriteOptions<'a> {
    pub compression: Compression,
    /// Compression level; `None` for cpengine's default (zstd 1, gzip 1).
    pub level: Option<i32>,
    /// zstd worker threads; `None` for one per available core.
    pub workers: Option<u32>,
    pub progress: Option<&'a dyn Progress>,
    /// Sign the archive with this key (a last member, see [`super::sign`]).
    pub signer: Option<&'a super::sign::NodeKey>,
}

impl std::fmt::Debug for WriteOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteOptions")
            .field("compression", &self.compression)
            .field("level", &self.level)
            .field("workers", &self.workers)
            .field("progress", &self.progress.is_some())
            .field("signer", &self.signer)
            .finish()
    }
}

/// What a write produced.
#[derive(Debug, Clone, Serialize)]
pub struct WriteReport {
    pub path: PathBuf,
    /// Size of the archive file.
    pub bytes: u64,
    /// Size of the tar stream before compression.
    pub tar_bytes: u64,
    pub members: u64,
    /// Bytes of CRIU image files.
    pub images_bytes: u64,
    /// Size of the nested `rootfs-diff.tar` (0 if none).
    pub rootfs_diff_bytes: u64,
    pub deleted_files: u64,
    /// Rootfs files that changed between planning and writing (archived at planned size).
    pub changed_files: Vec<PathBuf>,
    #[serde(
        rename = "duration_ms",
        serialize_with = "crate::report::ser_duration_ms"
    )]
    pub duration: Duration,
    pub compression: Compression,
    /// The key id of the signature, if the archive is signed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
}

pub(super) enum Body<'a> {
    Dir,
    File { path: PathBuf, size: u64 },
    Bytes(Vec<u8>),
    Diff(&'a RootfsDiff, u64),
}

pub(super) struct Planned<'a> {
    name: String,
    mtime: i64,
    body: Body<'a>,
}

impl Planned<'_> {
    pub(super) fn name_str(&self) -> &str {
        &self.name
    }

    fn meta_name(&self) -> Vec<u8> {
        let mut n = self.name.clone().into_bytes();
        if matches!(self.body, Body::Dir) {
            n.push(b'/');
        }
        n
    }

    fn digest_kind(&self) -> DigestKind {
        match self.body {
            Body::Dir => DigestKind::Dir,
            _ => DigestKind::File,
        }
    }

    pub(super) fn size(&self) -> u64 {
        match &self.body {
            Body::Dir => 0,
            Body::File { size, .. } => *size,
            Body::Bytes(b) => b.len() as u64,
            Body::Diff(_, size) => *size,
        }
    }

    pub(super) fn header(&self) -> Vec<u8> {
        let name = self.meta_name();
        let (flag, mode) = match self.body {
            Body::Dir => (TypeFlag::Dir, 0o700),
            _ => (TypeFlag::File, 0o600),
        };
        encode(&Meta::new(&name, flag, mode, self.size(), self.mtime))
    }
}

fn mtime_of(m: &std::fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    m.mtime()
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Lists the images directory as members under `checkpoint/`, sorted.
fn plan_images(dir: &Path, prefix: &str, out: &mut Vec<Planned<'_>>) -> Result<(), ArchiveError> {
    let err = |source| ArchiveError::ReadImagesDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(err)?;
    names.sort();
    for n in names {
        let path = dir.join(&n);
        let Some(s) = n.to_str() else {
            return Err(ArchiveError::UnsupportedImageFile { path });
        };
        let md = std::fs::symlink_metadata(&path).map_err(|source| ArchiveError::ReadSource {
            path: path.clone(),
            source,
        })?;
        let name = format!("{prefix}/{s}");
        if md.is_dir() {
            out.push(Planned {
                name: name.clone(),
                mtime: mtime_of(&md),
                body: Body::Dir,
            });
            plan_images(&path, &name, out)?;
        } else if md.is_file() {
            out.push(Planned {
                name,
                mtime: mtime_of(&md),
                body: Body::File {
                    size: md.len(),
                    path,
                },
            });
        } else {
            // A `parent` symlink (pre-dump chains) or anything else cannot go in the outer tar.
            return Err(ArchiveError::UnsupportedImageFile { path });
        }
    }
    Ok(())
}

fn plan_file(name: &str, path: &Path) -> Result<Planned<'static>, ArchiveError> {
    let md = std::fs::metadata(path).map_err(|source| ArchiveError::ReadSource {
        path: path.to_path_buf(),
        source,
    })?;
    if !md.is_file() {
        return Err(ArchiveError::ReadSource {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    Ok(Planned {
        name: name.to_owned(),
        mtime: mtime_of(&md),
        body: Body::File {
            path: path.to_path_buf(),
            size: md.len(),
        },
    })
}

const RESERVED: [&str; 7] = [
    super::sign::SIGNATURE_MEMBER,
    names::CONFIG_DUMP,
    names::SPEC_DUMP,
    names::STATS_DUMP,
    names::DUMP_LOG,
    names::ROOTFS_DIFF,
    names::DELETED_FILES,
];

fn check_extra(name: &str, seen: &mut Vec<String>) -> Result<(), ArchiveError> {
    let bad = |reason| {
        Err(ArchiveError::BadExtraMember {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.contains(['\0', '\n', '\r']) {
        return bad("empty or contains NUL or a line break");
    }
    if name.contains('/')
        || matches!(Path::new(name).components().next(), Some(c) if c != Component::Normal(name.as_ref()))
    {
        return bad("must be a plain top-level name");
    }
    if RESERVED.contains(&name) || name == names::CHECKPOINT_DIR {
        return bad("is written by cpengine itself");
    }
    if seen.iter().any(|s| s == name) {
        return bad("appears twice");
    }
    seen.push(name.to_owned());
    Ok(())
}

fn plan<'a>(input: &'a ArchiveInput) -> Result<Vec<Planned<'a>>, ArchiveError> {
    plan_with(input, &[])
}

/// Plans every member, leaving out `written` (names already in the archive: the `checkpoint`
/// directory entry and the images an [`super::ArchiveBuilder`] streamed).
pub(super) fn plan_with<'a>(
    input: &'a ArchiveInput,
    written: &[String],
) -> Result<Vec<Planned<'a>>, ArchiveError> {
    let now = now_secs();
    let md =
        std::fs::metadata(&input.images_dir).map_err(|source| ArchiveError::ReadImagesDir {
            path: input.images_dir.clone(),
            source,
        })?;
    let mut out = vec![Planned {
        name: names::CHECKPOINT_DIR.into(),
        mtime: mtime_of(&md),
        body: Body::Dir,
    }];
    plan_images(&input.images_dir, names::CHECKPOINT_DIR, &mut out)?;
    out.retain(|m| !written.contains(&m.name));
    let json = |member: &'static str, v: &dyn erased::Json| {
        v.to_pretty()
            .map_err(|source| ArchiveError::EncodeJson { member, source })
    };
    out.push(Planned {
        name: names::CONFIG_DUMP.into(),
        mtime: now,
        body: Body::Bytes(json(names::CONFIG_DUMP, &input.config)?),
    });
    out.push(Planned {
        name: names::SPEC_DUMP.into(),
        mtime: now,
        body: Body::Bytes(json(names::SPEC_DUMP, &input.spec)?),
    });
    if let Some(p) = &input.stats_dump {
        out.push(plan_file(names::STATS_DUMP, p)?);
    }
    if let Some(p) = &input.dump_log {
        out.push(plan_file(names::DUMP_LOG, p)?);
    }
    if let Some(diff) = input.rootfs.as_ref().filter(|d| !d.is_empty()) {
        out.push(Planned {
            name: names::ROOTFS_DIFF.into(),
            mtime: now,
            body: Body::Diff(diff, diff.tar_size()),
        });
        if !diff.deleted.is_empty() {
            out.push(Planned {
                name: names::DELETED_FILES.into(),
                mtime: now,
                body: Body::Bytes(diff.deleted_json()),
            });
        }
    }
    let mut seen = Vec::new();
    for (name, bytes) in &input.extra {
        check_extra(name, &mut seen)?;
        out.push(Planned {
            name: name.clone(),
            mtime: now,
            body: Body::Bytes(bytes.clone()),
        });
    }
    Ok(out)
}

mod erased {
    /// Pretty JSON of any serializable value behind a trait object.
    pub trait Json {
        fn to_pretty(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_pretty(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec_pretty(self)
        }
    }
}

enum Enc {
    Plain(BufWriter<File>),
    Gzip(flate2::write::GzEncoder<BufWriter<File>>),
    Zstd(zstd::stream::write::Encoder<'static, BufWriter<File>>),
}

/// The archive stream: encoder, byte count and progress.
pub(super) struct Out<'p> {
    enc: Enc,
    done: u64,
    total: u64,
    next_report: u64,
    progress: Option<&'p dyn Progress>,
    buf: Vec<u8>,
    /// Cleared after the first `copy_file_range` refusal (e.g. across filesystems on old
    /// kernels); everything then goes through the buffer.
    cfr: bool,
    /// When signing: the digests of the members written so far ([`write_members`] records
    /// one per member) and the hash of the current member's data.
    digests: Option<Vec<MemberDigest>>,
    hash: Option<sha2::Sha256>,
}

impl<'p> Out<'p> {
    /// An uncompressed stream appending to `file` at its current offset; `done` starts at
    /// `start` (the bytes already in the archive), `total` is the expected end.
    pub(super) fn plain(
        file: File,
        start: u64,
        total: u64,
        progress: Option<&'p dyn Progress>,
    ) -> Self {
        Self {
            enc: Enc::Plain(BufWriter::with_capacity(OUT_BUF, file)),
            done: start,
            total,
            next_report: start,
            progress,
            buf: vec![0; COPY_BUF],
            cfr: true,
            digests: None,
            hash: None,
        }
    }

    /// Records the digest of every member [`write_members`] writes from now on.
    pub(super) fn record_digests(&mut self) {
        self.digests.get_or_insert_with(Vec::new);
    }

    /// The digests recorded (see [`Self::record_digests`]).
    pub(super) fn take_digests(&mut self) -> Vec<MemberDigest> {
        self.digests.take().unwrap_or_default()
    }

    /// Bytes of tar written so far.
    pub(super) fn done(&self) -> u64 {
        self.done
    }

    fn writer(&mut self) -> &mut dyn Write {
        match &mut self.enc {
            Enc::Plain(w) => w,
            Enc::Gzip(w) => w,
            Enc::Zstd(w) => w,
        }
    }

    /// Appends a whole member (header, data, padding) whose data is in memory, unhashed.
    pub(super) fn put_member(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.put(&encode(&Meta::new(
            name.as_bytes(),
            TypeFlag::File,
            0o600,
            data.len() as u64,
            now_secs(),
        )))?;
        self.put(data)?;
        self.put_zeros(pad_len(data.len() as u64) as u64)
    }

    fn advance(&mut self, n: u64) {
        self.done += n;
        if let Some(p) = self.progress
            && self.done >= self.next_report
        {
            p.update(self.done, self.total);
            self.next_report = self.done + PROGRESS_STEP;
        }
    }

    pub(super) fn finish(self) -> io::Result<File> {
        let bw = match self.enc {
            Enc::Plain(w) => w,
            Enc::Gzip(w) => w.finish()?,
            Enc::Zstd(w) => w.finish()?,
        };
        bw.into_inner().map_err(io::IntoInnerError::into_error)
    }

    /// `copy_file_range` of `len` bytes from `file` at `offset` to the archive file's current
    /// position. `Ok(None)` if the kernel refuses before anything was copied.
    fn copy_range(&mut self, file: &File, offset: u64, len: u64) -> io::Result<Option<u64>> {
        let Enc::Plain(w) = &mut self.enc else {
            return Ok(None);
        };
        w.flush()?;
        let dst = w.get_ref().try_clone()?;
        let at = io::Seek::stream_position(&mut &dst)?;
        let mut off = offset as i64;
        let mut copied = 0u64;
        while copied < len {
            let want = (len - copied).min(1 << 30) as usize;
            match nix::fcntl::copy_file_range(file.as_fd(), Some(&mut off), dst.as_fd(), None, want)
            {
                Ok(0) => break,
                Ok(n) => {
                    copied += n as u64;
                    self.advance(n as u64);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(
                    nix::errno::Errno::EXDEV
                    | nix::errno::Errno::ENOSYS
                    | nix::errno::Errno::EOPNOTSUPP
                    | nix::errno::Errno::EINVAL,
                ) if copied == 0 => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        // The kernel copied these bytes: hash them as they are in the archive (page cache).
        if let Some(h) = &mut self.hash {
            super::sign::hash_range(&dst, at, copied, &mut self.buf, h)?;
        }
        Ok(Some(copied))
    }
}

impl TarSink for Out<'_> {
    fn put(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(h) = &mut self.hash {
            sha2::Digest::update(h, buf);
        }
        self.writer().write_all(buf)?;
        self.advance(buf.len() as u64);
        Ok(())
    }

    fn put_file(&mut self, file: &File, offset: u64, len: u64) -> io::Result<u64> {
        let mut from_file = 0;
        if self.cfr && len >= CFR_MIN && matches!(self.enc, Enc::Plain(_)) {
            match self.copy_range(file, offset, len)? {
                Some(n) => from_file = n,
                None => self.cfr = false,
            }
            if from_file == len {
                return Ok(len);
            }
            if from_file > 0 {
                // The file ended early: zero-fill the rest.
                self.put_zeros(len - from_file)?;
                return Ok(from_file);
            }
        }
        let mut buf = std::mem::take(&mut self.buf);
        let r = tarfmt::copy_range_via(file, offset, len, &mut buf, &mut |b| self.put(b));
        self.buf = buf;
        r
    }
}

/// What writing the members produced besides the bytes.
#[derive(Debug, Default)]
pub(super) struct MemberStats {
    pub images_bytes: u64,
    pub rootfs_diff_bytes: u64,
    pub changed: Vec<PathBuf>,
}

/// Writes each planned member (header, body, padding) into `out`.
pub(super) fn write_members(
    out: &mut Out<'_>,
    members: &[Planned<'_>],
    werr: &dyn Fn(io::Error) -> ArchiveError,
) -> Result<MemberStats, ArchiveError> {
    let mut images_bytes = 0;
    let mut rootfs_diff_bytes = 0;
    let mut changed = Vec::new();
    for m in members {
        out.put(&m.header()).map_err(werr)?;
        if out.digests.is_some() {
            out.hash = Some(sha2::Digest::new());
        }
        match &m.body {
            Body::Dir => {}
            Body::File { path, size } => {
                let f = File::open(path).map_err(|source| ArchiveError::ReadSource {
                    path: path.clone(),
                    source,
                })?;
                let got = out.put_file(&f, 0, *size).map_err(werr)?;
                if got != *size || f.metadata().map(|md| md.len()).ok() != Some(*size) {
                    tracing::warn!(path = %path.display(), planned = size, "file changed while the archive was written");
                    changed.push(path.clone());
                }
                if m.name.starts_with("checkpoint/") {
                    images_bytes += size;
                }
            }
            Body::Bytes(b) => out.put(b).map_err(werr)?,
            Body::Diff(diff, planned) => {
                let before = out.done;
                let st = crate::rootfs::write_diff(diff, &mut *out).map_err(werr)?;
                let written = out.done - before;
                if written != *planned || st.bytes != *planned {
                    return Err(ArchiveError::SizeMismatch {
                        member: names::ROOTFS_DIFF,
                        planned: *planned,
                        written,
                    });
                }
                rootfs_diff_bytes = *planned;
                changed.extend(st.changed);
            }
        }
        if let (Some(h), Some(d)) = (out.hash.take(), out.digests.as_mut()) {
            d.push(MemberDigest {
                name: m.name.clone(),
                kind: m.digest_kind(),
                size: m.size(),
                sha256: sha2::Digest::finalize(h).into(),
            });
        }
        out.put_zeros(pad_len(m.size()) as u64).map_err(werr)?;
    }
    Ok(MemberStats {
        images_bytes,
        rootfs_diff_bytes,
        changed,
    })
}

fn io_err(dest: &Path) -> impl Fn(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Write {
        path: dest.to_path_buf(),
        source,
    }
}

/// Writes a checkpoint archive to `dest` atomically (blocking; run it on a blocking thread).
///
/// The archive is written to a temp file (`O_EXCL`, mode 0600) in `dest`'s directory, synced,
/// renamed over `dest` and the directory synced. On any error the temp file is removed and
/// `dest` is untouched. `dest`'s directory must exist. If `dest` is a symlink, the link itself
/// is replaced (rename never follows it), so an archive cannot be redirected elsewhere by a
/// planted link.
pub fn write_archive(
    dest: &Path,
    input: &ArchiveInput,
    opts: &WriteOptions<'_>,
) -> Result<WriteReport, ArchiveError> {
    let start = Instant::now();
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ArchiveError::DestinationParent {
                path: parent.to_path_buf(),
                source: io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        Err(source) => {
            return Err(ArchiveError::DestinationParent {
                path: parent.to_path_buf(),
                source,
            });
        }
    }
    let members = plan(input)?;
    let tar_bytes: u64 = members
        .iter()
        .map(|m| m.header().len() as u64 + padded(m.size()))
        .sum::<u64>()
        + END_LEN;

    let tmp = tempfile::Builder::new()
        .prefix(&temp_prefix(dest))
        .suffix(".tmp")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(parent)
        .map_err(|source| ArchiveError::CreateTemp {
            dir: parent.to_path_buf(),
            source,
        })?;
    let werr = io_err(dest);
    let file = tmp.as_file().try_clone().map_err(&werr)?;
    let bw = BufWriter::with_capacity(OUT_BUF, file);
    let enc = match opts.compression {
        Compression::None => Enc::Plain(bw),
        Compression::Gzip => Enc::Gzip(flate2::write::GzEncoder::new(
            bw,
            flate2::Compression::new(opts.level.map_or(GZIP_LEVEL, |l| l.clamp(0, 9) as u32)),
        )),
        Compression::Zstd => {
            let mut z = zstd::stream::write::Encoder::new(bw, opts.level.unwrap_or(ZSTD_LEVEL))
                .map_err(&werr)?;
            let workers = opts.workers.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            });
            if workers > 1 {
                z.multithread(workers).map_err(&werr)?;
            }
            Enc::Zstd(z)
        }
    };
    let mut out = Out {
        enc,
        done: 0,
        total: tar_bytes,
        next_report: 0,
        progress: opts.progress,
        buf: vec![0; COPY_BUF],
        cfr: true,
        digests: None,
        hash: None,
    };
    if opts.signer.is_some() {
        out.record_digests();
    }

    let MemberStats {
        images_bytes,
        rootfs_diff_bytes,
        changed,
    } = write_members(&mut out, &members, &werr)?;
    if out.done + END_LEN != tar_bytes {
        return Err(ArchiveError::SizeMismatch {
            member: "archive",
            planned: tar_bytes - END_LEN,
            written: out.done,
        });
    }
    // The signature: the last member, over the digests of all the others.
    let mut signed_by = None;
    let mut member_count = members.len() as u64;
    if let Some(key) = opts.signer {
        let digests = out.take_digests();
        let doc = key.signature_member(&digests);
        out.put_member(super::sign::SIGNATURE_MEMBER, &doc)
            .map_err(&werr)?;
        signed_by = Some(key.public().key_id());
        member_count += 1;
    }
    out.put_zeros(END_LEN).map_err(&werr)?;
    let tar_bytes = out.done;
    if let Some(p) = opts.progress {
        p.update(out.done, tar_bytes);
    }
    let file = out.finish().map_err(&werr)?;
    file.sync_all().map_err(|source| ArchiveError::Sync {
        path: tmp.path().to_path_buf(),
        source,
    })?;
    let bytes = file.metadata().map_err(&werr)?.len();
    drop(file);
    tmp.persist(dest).map_err(|e| ArchiveError::Rename {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    let dir = File::open(parent).map_err(|source| ArchiveError::Sync {
        path: parent.to_path_buf(),
        source,
    })?;
    dir.sync_all().map_err(|source| ArchiveError::Sync {
        path: parent.to_path_buf(),
        source,
    })?;
    Ok(WriteReport {
        path: dest.to_path_buf(),
        bytes,
        tar_bytes,
        members: member_count,
        images_bytes,
        rootfs_diff_bytes,
        deleted_files: input.rootfs.as_ref().map_or(0, |d| d.deleted.len() as u64),
        changed_files: changed,
        duration: start.elapsed(),
        compression: opts.compression,
        signed_by,
    })
}
