//! Reading archives: a capped streaming visitor ([`visit`]), the metadata pass ([`read_info`])
//! and safe extraction ([`extract`]).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use serde::Serialize;

use super::compress;
use super::config::{ConfigDump, StatusDump};
use super::spec::{self, EngineKind, Identity};
use super::tarread::{RawEntry, TarError, TarReader};
use super::{ArchiveError, BadName, Compression, Progress, names};
use crate::beneath::{self, Resolve, Tree};

/// Caps enforced while reading, from headers, before anything is allocated or written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Members (of any type) in the archive.
    pub max_members: u64,
    /// Declared data bytes of all members together.
    pub max_total_bytes: u64,
    /// Declared data bytes of one member.
    pub max_member_bytes: u64,
    /// Bytes of a JSON member read into memory (config.dump, spec.dump, …) and of tar
    /// extension headers (pax records, long names).
    pub max_json_bytes: u64,
    /// Bytes of a member name.
    pub max_path_len: usize,
}

/// The one cap on a JSON document the engine reads into memory from a checkpoint (config.dump,
/// spec.dump, deleted.files, …), inside an archive or already extracted.
pub const MAX_JSON_BYTES: u64 = 64 << 20;

/// Reads the extracted JSON member `name` of `dir`, at most [`MAX_JSON_BYTES`]; `None` when
/// absent. A symlink or anything but a regular file is refused.
pub fn read_json_member<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, ArchiveError> {
    let path = dir.join(name);
    let md = match std::fs::symlink_metadata(&path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ArchiveError::Extract {
                name: name.into(),
                source,
            });
        }
    };
    if !md.is_file() {
        return Err(ArchiveError::Extract {
            name: name.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a regular file"),
        });
    }
    if md.len() > MAX_JSON_BYTES {
        return Err(ArchiveError::JsonTooLarge {
            name: name.into(),
            size: md.len(),
            limit: MAX_JSON_BYTES,
        });
    }
    let bytes = std::fs::read(&path).map_err(|source| ArchiveError::Extract {
        name: name.into(),
        source,
    })?;
    decode(name, &bytes).map(Some)
}

impl Default for Limits {
    /// Generous for real checkpoints (a container with hundreds of GiB of memory, thousands of
    /// processes) and small enough to stop a decompression bomb long before the disk fills.
    fn default() -> Self {
        Self {
            max_members: 1_000_000,
            max_total_bytes: 1 << 40,
            max_member_bytes: 1 << 40,
            max_json_bytes: MAX_JSON_BYTES,
            max_path_len: 4096,
        }
    }
}

/// How to read.
#[derive(Clone, Copy, Default)]
pub struct ReadOptions<'a> {
    pub limits: Limits,
    /// Reports bytes of the archive file consumed, of its size.
    pub progress: Option<&'a dyn Progress>,
    /// Require a signature by one of these keys ([`extract_with`] only; see
    /// [`super::sign`]). `None`: a signature member is extracted like any other.
    pub trust: Option<&'a super::sign::TrustedKeys>,
}

impl std::fmt::Debug for ReadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOptions")
            .field("limits", &self.limits)
            .field("progress", &self.progress.is_some())
            .field("trust", &self.trust)
            .finish()
    }
}

/// The type of a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    File,
    Dir,
    Symlink,
    Hardlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Other,
}

impl std::fmt::Display for MemberKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::File => "regular file",
            Self::Dir => "directory",
            Self::Symlink => "symbolic link",
            Self::Hardlink => "hard link",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
            Self::Fifo => "fifo",
            Self::Other => "special member",
        })
    }
}

/// One member as listed by [`visit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    /// Normalized name: relative, no `./`, no trailing `/`.
    pub name: String,
    pub kind: MemberKind,
    /// Declared data size.
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    /// Raw tar type flag.
    #[serde(skip)]
    pub flag: u8,
}

/// Counts bytes read from the archive file for progress.
struct Counting<'a, R> {
    r: R,
    done: u64,
    total: u64,
    next: u64,
    progress: Option<&'a dyn Progress>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.done += n as u64;
        if let Some(p) = self.progress
            && (self.done >= self.next || n == 0)
        {
            p.update(self.done, self.total);
            self.next = self.done + (8 << 20);
        }
        Ok(n)
    }
}

fn kind_of(flag: u8) -> MemberKind {
    match flag {
        b'0' | b'7' => MemberKind::File,
        b'5' => MemberKind::Dir,
        b'2' => MemberKind::Symlink,
        b'1' => MemberKind::Hardlink,
        b'3' => MemberKind::CharDevice,
        b'4' => MemberKind::BlockDevice,
        b'6' => MemberKind::Fifo,
        _ => MemberKind::Other,
    }
}

/// Validates and normalizes a member name; `Ok(None)` for the archive root (`./`).
pub(crate) fn normalize(raw: &[u8], max_len: usize) -> Result<Option<String>, ArchiveError> {
    let lossy = || String::from_utf8_lossy(raw).into_owned();
    if raw.len() > max_len {
        return Err(ArchiveError::PathTooLong {
            len: raw.len(),
            limit: max_len,
        });
    }
    let bad = |reason| ArchiveError::BadName {
        name: lossy(),
        reason,
    };
    if raw.contains(&0) {
        return Err(bad(BadName::Nul));
    }
    if raw.contains(&b'\n') || raw.contains(&b'\r') {
        return Err(bad(BadName::Newline));
    }
    let s = std::str::from_utf8(raw).map_err(|_| bad(BadName::NotUtf8))?;
    if s.starts_with('/') {
        return Err(ArchiveError::AbsoluteName { name: s.into() });
    }
    let mut parts = Vec::new();
    for c in s.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(ArchiveError::Traversal { name: s.into() }),
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

fn tar_err(path: &Path, e: TarError) -> ArchiveError {
    match e {
        TarError::Truncated => ArchiveError::Truncated {
            path: path.to_path_buf(),
        },
        TarError::BadHeader(reason) => ArchiveError::BadHeader {
            path: path.to_path_buf(),
            reason,
        },
        TarError::ExtensionTooLarge { size, limit } => {
            ArchiveError::ExtensionTooLarge { size, limit }
        }
        TarError::Io(e) => io_read_err(path, e),
    }
}

fn io_read_err(path: &Path, e: io::Error) -> ArchiveError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ArchiveError::Truncated {
            path: path.to_path_buf(),
        }
    } else {
        ArchiveError::Read {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Streams every member of the archive at `path` through `f` with its data, enforcing the
/// caps, name rules and uniqueness. `f` may read the data or leave it (it is skipped).
/// Returns the archive's compression.
pub fn visit(
    path: &Path,
    opts: &ReadOptions<'_>,
    mut f: impl FnMut(&Member, &mut dyn Read) -> Result<(), ArchiveError>,
) -> Result<Compression, ArchiveError> {
    visit_raw(path, opts, |m, _raw, r| f(m, r))
}

/// Cap on the bytes of member names a pass keeps in memory (the duplicate check, the member
/// list of [`read_info`]): far above real archives, far below what `max_members` long names
/// would take.
const MAX_NAME_BYTES: u64 = 256 << 20;

fn visit_raw(
    path: &Path,
    opts: &ReadOptions<'_>,
    f: impl FnMut(&Member, &RawEntry, &mut dyn Read) -> Result<(), ArchiveError>,
) -> Result<Compression, ArchiveError> {
    visit_raw_capped(path, opts, MAX_NAME_BYTES, f)
}

fn visit_raw_capped(
    path: &Path,
    opts: &ReadOptions<'_>,
    max_name_bytes: u64,
    mut f: impl FnMut(&Member, &RawEntry, &mut dyn Read) -> Result<(), ArchiveError>,
) -> Result<Compression, ArchiveError> {
    let lim = &opts.limits;
    let file = File::open(path).map_err(|source| ArchiveError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let counting = Counting {
        r: file,
        done: 0,
        total,
        next: 0,
        progress: opts.progress,
    };
    let (compression, reader) = compress::decoder(BufReader::with_capacity(1 << 20, counting))
        .map_err(|e| io_read_err(path, e))?;
    let mut tar = TarReader::new(reader, lim.max_json_bytes);
    let mut count = 0u64;
    let mut sum = 0u64;
    let mut seen = HashSet::new();
    let mut name_bytes = 0u64;
    while let Some(raw) = tar.next_entry().map_err(|e| tar_err(path, e))? {
        count += 1;
        if count > lim.max_members {
            return Err(ArchiveError::TooManyMembers {
                limit: lim.max_members,
            });
        }
        if raw.flag == b'g' {
            continue;
        }
        let Some(name) = normalize(&raw.name, lim.max_path_len)? else {
            continue;
        };
        if raw.size > lim.max_member_bytes {
            return Err(ArchiveError::MemberTooLarge {
                name,
                size: raw.size,
                limit: lim.max_member_bytes,
            });
        }
        sum = sum.saturating_add(raw.size);
        if sum > lim.max_total_bytes {
            return Err(ArchiveError::TotalTooLarge {
                limit: lim.max_total_bytes,
            });
        }
        name_bytes += name.len() as u64;
        if name_bytes > max_name_bytes {
            return Err(ArchiveError::NamesTooLarge {
                limit: max_name_bytes,
            });
        }
        if !seen.insert(name.clone()) {
            return Err(ArchiveError::DuplicateMember { name });
        }
        let m = Member {
            kind: kind_of(raw.flag),
            name,
            size: raw.size,
            mode: raw.mode,
            mtime: raw.mtime,
            flag: raw.flag,
        };
        let mut data = tar.data();
        f(&m, &raw, &mut data)?;
    }
    Ok(compression)
}

/// Reads a JSON member of at most `limit` bytes.
fn read_json_bytes(m: &Member, r: &mut dyn Read, limit: u64) -> Result<Vec<u8>, ArchiveError> {
    if m.size > limit {
        return Err(ArchiveError::JsonTooLarge {
            name: m.name.clone(),
            size: m.size,
            limit,
        });
    }
    // Grown as bytes arrive: a header's size alone does not get memory.
    let mut b = Vec::with_capacity(m.size.min(64 << 10) as usize);
    r.read_to_end(&mut b).map_err(|e| ArchiveError::Extract {
        name: m.name.clone(),
        source: e,
    })?;
    Ok(b)
}

fn decode<T: serde::de::DeserializeOwned>(name: &str, b: &[u8]) -> Result<T, ArchiveError> {
    serde_json::from_slice(b).map_err(|source| ArchiveError::DecodeJson {
        name: name.to_owned(),
        source,
    })
}

fn under_checkpoint(name: &str) -> bool {
    name == names::CHECKPOINT_DIR || name.starts_with("checkpoint/")
}

/// What an archive holds, read without extracting it.
#[derive(Debug, Clone, Serialize)]
pub struct ArchiveInfo {
    pub path: PathBuf,
    pub compression: Compression,
    /// Size of the archive file.
    pub archive_bytes: u64,
    pub members: Vec<Member>,
    pub config: ConfigDump,
    pub spec: serde_json::Value,
    pub engine: EngineKind,
    pub identity: Identity,
    /// Sum of regular files under `checkpoint/` (checkpointctl's CHKPT SIZE).
    pub checkpoint_size: u64,
    /// `checkpoint/pages-*` files.
    pub memory_pages_size: u64,
    /// `checkpoint/amdgpu-pages-*` files.
    pub amd_gpu_memory_pages_size: u64,
    /// Stored size of `rootfs-diff.tar` (compressed size for containerd's gzip diff); 0 if
    /// absent.
    pub rootfs_diff_size: u64,
    pub has_rootfs_diff: bool,
    pub has_stats_dump: bool,
    pub has_status_dump: bool,
    pub has_deleted_files: bool,
    /// `deleted.files`, if present.
    pub deleted_files: Option<Vec<String>>,
    /// `status.dump`, if present (containerd).
    pub status: Option<StatusDump>,
    /// The member holding the container log, if any.
    pub log_member: Option<String>,
    /// The raw top-level `stats-dump` (a CRIU image), if present.
    #[serde(skip)]
    pub stats_dump: Option<Vec<u8>>,
}

impl ArchiveInfo {
    /// CRIU's dump statistics from the top-level `stats-dump`, if present.
    pub fn dump_stats(
        &self,
    ) -> Result<Option<crate::report::DumpStats>, criu_proto::image::ImageError> {
        let Some(b) = &self.stats_dump else {
            return Ok(None);
        };
        let e = crate::report::decode_stats(&b[..])?;
        Ok(e.dump.map(Into::into))
    }
}

/// [`read_info_with`] with default limits and no progress.
pub fn read_info(path: &Path) -> Result<ArchiveInfo, ArchiveError> {
    read_info_with(path, &ReadOptions::default())
}

/// Reads an archive's metadata in one streaming pass, without writing anything to disk.
pub fn read_info_with(path: &Path, opts: &ReadOptions<'_>) -> Result<ArchiveInfo, ArchiveError> {
    let lim = opts.limits;
    let mut members = Vec::new();
    let mut config = None;
    let mut spec_v = None;
    let mut stats = None;
    let mut status = None;
    let mut deleted = None;
    let (mut ck, mut pages, mut amd, mut diff) = (0u64, 0u64, 0u64, None);
    let mut has_ck = false;
    let compression = visit(path, opts, |m, r| {
        if under_checkpoint(&m.name) {
            has_ck = true;
            if m.kind == MemberKind::File {
                ck += m.size;
                // A regular file named `checkpoint` itself has no base name.
                let base = m.name.strip_prefix("checkpoint/").unwrap_or("");
                if base.starts_with("pages-") {
                    pages += m.size;
                } else if base.starts_with("amdgpu-pages-") {
                    amd += m.size;
                }
            }
        }
        match m.name.as_str() {
            names::CONFIG_DUMP => {
                config = Some(decode::<ConfigDump>(
                    &m.name,
                    &read_json_bytes(m, r, lim.max_json_bytes)?,
                )?)
            }
            names::SPEC_DUMP => {
                spec_v = Some(decode::<serde_json::Value>(
                    &m.name,
                    &read_json_bytes(m, r, lim.max_json_bytes)?,
                )?)
            }
            names::STATS_DUMP => stats = Some(read_json_bytes(m, r, lim.max_json_bytes)?),
            names::STATUS_DUMP => {
                status = Some(decode::<StatusDump>(
                    &m.name,
                    &read_json_bytes(m, r, lim.max_json_bytes)?,
                )?)
            }
            names::DELETED_FILES => {
                deleted = Some(decode::<Vec<String>>(
                    &m.name,
                    &read_json_bytes(m, r, lim.max_json_bytes)?,
                )?)
            }
            names::ROOTFS_DIFF => diff = Some(m.size),
            _ => {}
        }
        members.push(m.clone());
        Ok(())
    })?;
    let missing = |name| ArchiveError::MissingMember {
        path: path.to_path_buf(),
        name,
    };
    if !has_ck {
        return Err(missing("checkpoint/"));
    }
    let config = config.ok_or_else(|| missing(names::CONFIG_DUMP))?;
    let spec_v = spec_v.ok_or_else(|| missing(names::SPEC_DUMP))?;
    let engine = spec::detect_engine(&spec_v);
    let identity = spec::identity(&spec_v, engine, &config.name);
    let log_member = names::LOGS
        .iter()
        .find(|l| {
            members
                .iter()
                .any(|m| m.name == **l && m.kind == MemberKind::File)
        })
        .map(|s| (*s).to_owned());
    Ok(ArchiveInfo {
        path: path.to_path_buf(),
        compression,
        archive_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        config,
        engine,
        identity,
        checkpoint_size: ck,
        memory_pages_size: pages,
        amd_gpu_memory_pages_size: amd,
        rootfs_diff_size: diff.unwrap_or(0),
        has_rootfs_diff: diff.is_some(),
        has_stats_dump: stats.is_some(),
        has_status_dump: status.is_some(),
        has_deleted_files: deleted.is_some(),
        deleted_files: deleted,
        status,
        log_member,
        stats_dump: stats,
        spec: spec_v,
        members,
    })
}

/// What [`extract`] produced.
#[derive(Debug, Clone, Serialize)]
pub struct Extracted {
    pub root: PathBuf,
    pub compression: Compression,
    /// `checkpoint/`: CRIU's images.
    pub images_dir: PathBuf,
    pub config_path: PathBuf,
    pub config: ConfigDump,
    pub spec_path: PathBuf,
    pub spec: serde_json::Value,
    pub engine: EngineKind,
    pub rootfs_diff: Option<PathBuf>,
    /// `deleted.files`, empty if absent.
    pub deleted: Vec<String>,
    pub stats_dump: Option<PathBuf>,
    pub status: Option<StatusDump>,
    /// The container log copy (`io.kubernetes.cri-o.LogPath`, `ctr.log` or `container.log`).
    pub log: Option<PathBuf>,
    /// Names of every extracted member.
    pub members: Vec<String>,
    /// Bytes of file data written.
    pub bytes: u64,
    /// The key whose signature was verified ([`ReadOptions::trust`]); `None` when no
    /// signature was required (a signature member is then not checked).
    pub signed_by: Option<super::sign::PublicKey>,
}

/// [`extract_with`] without progress.
pub fn extract(path: &Path, target: &Path, limits: &Limits) -> Result<Extracted, ArchiveError> {
    extract_with(
        path,
        target,
        &ReadOptions {
            limits: *limits,
            ..Default::default()
        },
    )
}

/// Extracts an archive into `target` (created 0700 if missing; otherwise it must be an empty
/// directory). Only regular files and directories are accepted; every member is created
/// beneath `target` with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and `O_EXCL`, so
/// nothing can be written outside it, through a symlink, or over an earlier member.
/// Directories get u+rwx, files at least u+rw; set-id bits are dropped; ownership is the
/// caller's.
pub fn extract_with(
    path: &Path,
    target: &Path,
    opts: &ReadOptions<'_>,
) -> Result<Extracted, ArchiveError> {
    match std::fs::create_dir(target) {
        Ok(()) => {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o700));
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let empty = std::fs::read_dir(target)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            if !empty {
                return Err(ArchiveError::TargetNotEmpty {
                    path: target.to_path_buf(),
                });
            }
        }
        Err(source) => {
            return Err(ArchiveError::Extract {
                name: target.display().to_string(),
                source,
            });
        }
    }
    let tree = Tree::open(target, Resolve::Beneath).map_err(|source| ArchiveError::Extract {
        name: target.display().to_string(),
        source,
    })?;
    let mut members = Vec::new();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    // With a signature required: every member's digest, checked at the end of the stream,
    // before anything extracted is parsed or returned (see `super::sign`).
    let mut verifier = opts.trust.map(super::sign::StreamVerifier::new);
    let compression = visit(path, opts, |m, r| {
        let name = &m.name;
        if let Some(v) = verifier.as_mut() {
            v.check_order(name)?;
            if name == super::sign::SIGNATURE_MEMBER {
                if m.kind != MemberKind::File {
                    return Err(super::sign::ProvenanceError::BadSignatureMember {
                        field: "type",
                        detail: format!("a {:?}, not a regular file", m.kind),
                    }
                    .into());
                }
                v.set_signature(read_json_bytes(m, r, super::sign::MAX_SIGNATURE_BYTES)?);
                return Ok(());
            }
        }
        match m.kind {
            MemberKind::File | MemberKind::Dir => {}
            MemberKind::Symlink => {
                return Err(ArchiveError::SymlinkMember { name: name.clone() });
            }
            MemberKind::Hardlink => {
                return Err(ArchiveError::HardlinkMember { name: name.clone() });
            }
            MemberKind::CharDevice | MemberKind::BlockDevice | MemberKind::Fifo => {
                return Err(ArchiveError::SpecialMember {
                    name: name.clone(),
                    kind: m.kind,
                });
            }
            MemberKind::Other => {
                return Err(ArchiveError::UnsupportedMember {
                    name: name.clone(),
                    flag: m.flag as char,
                });
            }
        }
        let rel = Path::new(name);
        let fail = |source: io::Error| {
            if beneath::is_escape(&source) {
                ArchiveError::ThroughSymlink { name: name.clone() }
            } else {
                ArchiveError::Extract {
                    name: name.clone(),
                    source,
                }
            }
        };
        let (parent, leaf) = tree.parent(rel, Some(0o700)).map_err(fail)?;
        if m.kind == MemberKind::Dir {
            let mode = (m.mode & 0o777) | 0o700;
            match nix::sys::stat::mkdirat(parent.as_fd(), leaf, Mode::from_bits_truncate(mode)) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(fail(e.into())),
            }
            let d = nix::fcntl::openat(
                parent.as_fd(),
                leaf,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fail(e.into()))?;
            nix::sys::stat::fchmod(&d, Mode::from_bits_truncate(mode))
                .map_err(|e| fail(e.into()))?;
            if let Some(v) = verifier.as_mut() {
                v.record(super::sign::MemberDigest::dir(name));
            }
        } else {
            let mode = (m.mode & 0o777) | 0o600;
            let mut f =
                crate::sys::create_new_at(parent.as_fd(), leaf).map_err(|e| fail(e.into()))?;
            let mut hash = verifier
                .as_ref()
                .map(|_| <sha2::Sha256 as sha2::Digest>::new());
            let mut left = m.size;
            while left > 0 {
                let n = r.read(&mut buf).map_err(|e| io_read_err(path, e))?;
                if n == 0 {
                    return Err(ArchiveError::Truncated {
                        path: path.to_path_buf(),
                    });
                }
                if let Some(h) = &mut hash {
                    sha2::Digest::update(h, &buf[..n]);
                }
                io::Write::write_all(&mut f, &buf[..n]).map_err(fail)?;
                left -= n as u64;
            }
            if let (Some(v), Some(h)) = (verifier.as_mut(), hash) {
                v.record(super::sign::MemberDigest {
                    name: name.clone(),
                    kind: super::sign::DigestKind::File,
                    size: m.size,
                    sha256: sha2::Digest::finalize(h).into(),
                });
            }
            bytes += m.size;
            nix::sys::stat::fchmod(&f, Mode::from_bits_truncate(mode))
                .map_err(|e| fail(e.into()))?;
            let t = nix::sys::time::TimeSpec::new(m.mtime, 0);
            let _ = nix::sys::stat::futimens(&f, &t, &t);
        }
        members.push(name.clone());
        Ok(())
    })?;
    // Nothing extracted is read before the signature and every digest are checked.
    let signed_by = verifier
        .map(super::sign::StreamVerifier::finish)
        .transpose()?;

    let missing = |name| ArchiveError::MissingMember {
        path: path.to_path_buf(),
        name,
    };
    let has = |n: &str| members.iter().any(|m| m == n);
    if !members.iter().any(|m| under_checkpoint(m)) {
        return Err(missing("checkpoint/"));
    }
    let lim = opts.limits;
    let read_json = |name: &'static str| -> Result<Option<Vec<u8>>, ArchiveError> {
        if !has(name) {
            return Ok(None);
        }
        let p = target.join(name);
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if len > lim.max_json_bytes {
            return Err(ArchiveError::JsonTooLarge {
                name: name.into(),
                size: len,
                limit: lim.max_json_bytes,
            });
        }
        std::fs::read(&p)
            .map(Some)
            .map_err(|source| ArchiveError::Extract {
                name: name.into(),
                source,
            })
    };
    let config: ConfigDump = decode(
        names::CONFIG_DUMP,
        &read_json(names::CONFIG_DUMP)?.ok_or_else(|| missing(names::CONFIG_DUMP))?,
    )?;
    let spec_v: serde_json::Value = decode(
        names::SPEC_DUMP,
        &read_json(names::SPEC_DUMP)?.ok_or_else(|| missing(names::SPEC_DUMP))?,
    )?;
    let deleted = match read_json(names::DELETED_FILES)? {
        Some(b) => decode::<Vec<String>>(names::DELETED_FILES, &b)?,
        None => Vec::new(),
    };
    let status = match read_json(names::STATUS_DUMP)? {
        Some(b) => Some(decode::<StatusDump>(names::STATUS_DUMP, &b)?),
        None => None,
    };
    let opt = |n: &str| has(n).then(|| target.join(n));
    Ok(Extracted {
        root: target.to_path_buf(),
        compression,
        images_dir: target.join(names::CHECKPOINT_DIR),
        config_path: target.join(names::CONFIG_DUMP),
        spec_path: target.join(names::SPEC_DUMP),
        engine: spec::detect_engine(&spec_v),
        config,
        spec: spec_v,
        rootfs_diff: opt(names::ROOTFS_DIFF),
        deleted,
        stats_dump: opt(names::STATS_DUMP),
        status,
        log: names::LOGS.iter().find_map(|l| opt(l)),
        members,
        bytes,
        signed_by,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names kept in memory are capped in total, however many members are allowed.
    #[test]
    fn names_kept_in_memory_are_capped() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("a.tar");
        let mut b = tar::Builder::new(Vec::new());
        for i in 0..100 {
            let mut h = tar::Header::new_ustar();
            h.set_size(0);
            h.set_mode(0o600);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, format!("checkpoint/{i:0>60}"), &b""[..])
                .unwrap();
        }
        std::fs::write(&p, b.into_inner().unwrap()).unwrap();
        let ok = visit_raw_capped(&p, &ReadOptions::default(), 1 << 20, |_, _, _| Ok(()));
        assert!(ok.is_ok(), "{ok:?}");
        let r = visit_raw_capped(&p, &ReadOptions::default(), 4096, |_, _, _| Ok(()));
        assert!(
            matches!(r, Err(ArchiveError::NamesTooLarge { limit: 4096 })),
            "{r:?}"
        );
    }

    /// The inputs in `fuzz/regressions/archive_read/` (a regular file named `checkpoint`, a pax
    /// `size=-1`, a base-256 size of 2^64-1) are refused with an error, never a panic.
    #[test]
    fn fuzz_regressions_are_errors_not_panics() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/archive_read");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let r = read_info(&p);
            assert!(r.is_err(), "{}: {r:?}", p.display());
            // The streaming pass must not panic either (a lone `checkpoint` file is a valid
            // tar; only read_info needs the directory).
            let _ = visit(&p, &ReadOptions::default(), |_, r| {
                io::copy(r, &mut io::sink())
                    .map(|_| ())
                    .map_err(|source| ArchiveError::Extract {
                        name: String::new(),
                        source,
                    })
            });
            n += 1;
        }
        assert!(n >= 3, "regression inputs missing in {}", dir.display());
    }

    #[test]
    fn names_are_normalized_and_checked() {
        let n = |s: &[u8]| normalize(s, 4096);
        assert_eq!(n(b"./checkpoint/").unwrap().as_deref(), Some("checkpoint"));
        assert_eq!(n(b"a//b/./c").unwrap().as_deref(), Some("a/b/c"));
        assert_eq!(n(b"./").unwrap(), None);
        assert!(matches!(n(b"../x"), Err(ArchiveError::Traversal { .. })));
        assert!(matches!(
            n(b"a/../../x"),
            Err(ArchiveError::Traversal { .. })
        ));
        assert!(matches!(
            n(b"/etc/x"),
            Err(ArchiveError::AbsoluteName { .. })
        ));
        assert!(matches!(
            n(b"a\nb"),
            Err(ArchiveError::BadName {
                reason: BadName::Newline,
                ..
            })
        ));
        assert!(matches!(
            n(b"a\0b"),
            Err(ArchiveError::BadName {
                reason: BadName::Nul,
                ..
            })
        ));
        assert!(matches!(
            normalize(&[b'a'; 20], 10),
            Err(ArchiveError::PathTooLong { len: 20, limit: 10 })
        ));
    }
}
