//! Provenance: archives signed by the node that wrote them, and a restore that accepts only
//! archives signed by a trusted key.
//!
//! # The node key
//!
//! An ed25519 key kept at `<state lib>/keys/node.ed25519` ([`node_key_path`]): the 32-byte
//! secret seed as 64 hex digits and a newline. [`NodeKey::load_or_create`] creates it on first
//! use, atomically (written to a temp file of mode 0600 in `keys/` (mode 0700), fsynced, then
//! linked into place with `RENAME_NOREPLACE`, so two first checkpoints racing end with one
//! key), and refuses a key file that is not a regular file, is group- or world-accessible, or
//! is not owned by the engine's own user (root). The public key ([`PublicKey`]) is printed by
//! `cpengine key show` as one line, `ed25519 <64 hex digits>`, the form `--trusted-key` files
//! take; its key id is the first 16 hex digits of the SHA-256 of the public key.
//!
//! # What is signed
//!
//! The writer records, while each member streams into the archive, its normalized name, type
//! (file or directory), size and the SHA-256 of its data ([`MemberDigest`]). Bytes that pass
//! through user space are hashed as they are written; bytes the kernel moves itself
//! (`copy_file_range`, the `splice` of CRIU's page pipes) are hashed by reading them back from
//! the archive file (the page cache) once the workload runs again, so the digest is of what is
//! in the archive, never of a source that could change meanwhile. The last member,
//! [`SIGNATURE_MEMBER`] (JSON: version, algorithm, key id, public key, the member manifest and
//! the signature), carries an ed25519 signature over the canonical manifest bytes
//! ([`canonical_manifest`]): a fixed first line, the public key, then one line per member
//! `<type> <size> <sha256> <name>` in archive order (member names never contain a line break:
//! the reader refuses them). Tar headers' modes, owners and times are not covered: extraction
//! ignores owners, forces the modes it needs and drops set-id bits. CRI-O, Podman and
//! checkpointctl ignore a top-level member they do not know.
//!
//! # Verification
//!
//! With a [`TrustedKeys`] in [`super::ReadOptions::trust`], [`super::extract_with`] hashes every
//! member while it extracts it into the (private, fresh) extraction directory and, at the end
//! of the stream, before it parses any JSON member or returns anything, checks with
//! [`verify_signature`]: the signature member present, last, well-formed, by a trusted key,
//! its signature valid, and the members seen exactly the members signed (same names, types,
//! sizes and digests, none added, none missing). Until then nothing extracted is used: the
//! restore only reads the extraction after `extract_with` returns, and its caller removes the
//! directory on an error. So a refusal comes before the policy verification, the rootfs, the
//! bundle, the cgroups or CRIU. A signed archive is still verified against the restore policy
//! ([`crate::policy`]): the signature says who wrote it, not that what it holds is safe for
//! the live request.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The name of the signature member, the last of a signed archive.
pub const SIGNATURE_MEMBER: &str = "cpengine-signature.json";
/// The only algorithm.
pub const ALGORITHM: &str = "ed25519";
/// The node key under the state root's lib directory.
pub const NODE_KEY_FILE: &str = "keys/node.ed25519";
/// The first line of the canonical manifest (also a domain separator for the signature).
const MANIFEST_MAGIC: &str = "cpengine-archive-manifest v1";
/// Cap on the signature member read into memory (a million members fit).
pub const MAX_SIGNATURE_BYTES: u64 = 256 << 20;

/// Why a signed archive is refused (or an unsigned one, when signatures are required); each
/// names the member or field.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    #[error(
        "the archive is not signed (no {SIGNATURE_MEMBER}), and only signed archives are accepted"
    )]
    Unsigned,
    #[error("{SIGNATURE_MEMBER}: {field}: {detail}")]
    BadSignatureMember { field: &'static str, detail: String },
    #[error("{SIGNATURE_MEMBER} is signed by key {key_id}, which is not a trusted key")]
    UntrustedKey { key_id: String },
    #[error("{SIGNATURE_MEMBER}: the signature by key {key_id} does not match its manifest")]
    BadSignature { key_id: String },
    #[error("member {name} is not in the signed manifest")]
    UnsignedMember { name: String },
    #[error("member {name} of the signed manifest is not in the archive")]
    MissingMember { name: String },
    #[error("member {name}: its {field} differs from the signed manifest")]
    Mismatch { name: String, field: &'static str },
    #[error("member {name} follows {SIGNATURE_MEMBER}, which must be the last member")]
    AfterSignature { name: String },
}

/// Errors of the node key and of trusted key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("key file {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("key file {} has mode {mode:04o}: group or others may access it (want 0600)", path.display())]
    Mode { path: PathBuf, mode: u32 },
    #[error("key file {} is owned by uid {uid}, not by the engine's uid {want}", path.display())]
    Owner { path: PathBuf, uid: u32, want: u32 },
    #[error("key file {}: {detail}", path.display())]
    Malformed { path: PathBuf, detail: String },
}

/// The type of a member, as the manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestKind {
    File,
    Dir,
}

impl DigestKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Dir => "dir",
        }
    }
}

/// One member as signed: name (normalized: relative, no trailing `/`), type, size, SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDigest {
    pub name: String,
    pub kind: DigestKind,
    pub size: u64,
    pub sha256: [u8; 32],
}

impl MemberDigest {
    /// A directory entry (no data).
    pub fn dir(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            kind: DigestKind::Dir,
            size: 0,
            sha256: Sha256::digest([]).into(),
        }
    }
}

/// An ed25519 public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The first 16 hex digits of the SHA-256 of the key.
    pub fn key_id(&self) -> String {
        hex(&Sha256::digest(self.0)[..8])
    }

    /// `ed25519 <64 hex digits>`: what `cpengine key show` prints and trusted key files hold.
    pub fn to_line(&self) -> String {
        format!("{ALGORITHM} {}", hex(&self.0))
    }

    /// Parses [`Self::to_line`]'s form (or bare hex); surrounding blank space and `#` comment
    /// lines are ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let line = lines.next().ok_or("no key")?;
        if lines.next().is_some() {
            return Err("more than one key line".into());
        }
        let hexpart = match line.split_once(char::is_whitespace) {
            Some((alg, rest)) if alg == ALGORITHM => rest.trim(),
            Some((alg, _)) => return Err(format!("algorithm {alg:?} is not {ALGORITHM}")),
            None => line,
        };
        let b = unhex(hexpart).ok_or("not 64 hex digits")?;
        let arr: [u8; 32] = b.try_into().map_err(|_| "not 64 hex digits")?;
        ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|_| "not an ed25519 point")?;
        Ok(Self(arr))
    }

    /// Reads a trusted key file (at most 64 KiB).
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let mut s = String::new();
        File::open(path)
            .and_then(|f| f.take(64 << 10).read_to_string(&mut s))
            .map_err(|source| KeyError::Io {
                what: "reading trusted key",
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&s).map_err(|detail| KeyError::Malformed {
            path: path.to_path_buf(),
            detail,
        })
    }
}

impl Serialize for PublicKey {
    /// As [`Self::to_line`].
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_line())
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_line())
    }
}

/// The keys a restore accepts signatures of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    pub fn new(keys: impl IntoIterator<Item = PublicKey>) -> Self {
        let mut t = Self::default();
        for k in keys {
            t.add(k);
        }
        t
    }

    pub fn add(&mut self, k: PublicKey) {
        if !self.keys.contains(&k) {
            self.keys.push(k);
        }
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    pub fn contains(&self, k: &PublicKey) -> bool {
        self.keys.contains(k)
    }
}

/// Where the node key of a state root lives (`lib` is the state root's lib directory).
pub fn node_key_path(lib: &Path) -> PathBuf {
    lib.join(NODE_KEY_FILE)
}

/// The node's signing key.
pub struct NodeKey {
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKey")
            .field("key_id", &self.public().key_id())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// A key from a 32-byte seed (tests, and keys kept elsewhere).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    /// A fresh key from the kernel's random source.
    pub fn generate() -> io::Result<Self> {
        let mut seed = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut seed)?;
        Ok(Self::from_seed(seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.key.verifying_key().to_bytes())
    }

    /// Loads the key at `path`, refusing a file that is not a regular file of mode 0600 (no
    /// group or other bits) owned by this process's effective uid.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| KeyError::Io {
                what: "opening node key",
                path: path.to_path_buf(),
                source,
            })?;
        let md = f.metadata().map_err(|source| KeyError::Io {
            what: "reading node key",
            path: path.to_path_buf(),
            source,
        })?;
        if !md.is_file() {
            return Err(KeyError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        let want = nix::unistd::geteuid().as_raw();
        if md.uid() != want {
            return Err(KeyError::Owner {
                path: path.to_path_buf(),
                uid: md.uid(),
                want,
            });
        }
        if md.mode() & 0o077 != 0 {
            return Err(KeyError::Mode {
                path: path.to_path_buf(),
                mode: md.mode() & 0o7777,
            });
        }
        let mut s = String::new();
        f.take(4096)
            .read_to_string(&mut s)
            .map_err(|source| KeyError::Io {
                what: "reading node key",
                path: path.to_path_buf(),
                source,
            })?;
        let bad = |detail: &str| KeyError::Malformed {
            path: path.to_path_buf(),
            detail: detail.into(),
        };
        let seed: [u8; 32] = unhex(s.trim())
            .ok_or_else(|| bad("not 64 hex digits"))?
            .try_into()
            .map_err(|_| bad("not 64 hex digits"))?;
        Ok(Self::from_seed(seed))
    }

    /// Loads the key at `path`, creating it (and its directory, mode 0700) first if there is
    /// none (see the module docs).
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::load(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
            other => return other,
        }
        let io_err = |what| {
            move |source| KeyError::Io {
                what,
                path: path.to_path_buf(),
                source,
            }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("creating the key directory of"))?;
        }
        let key = Self::generate().map_err(io_err("generating node key"))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".node-key-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(dir)
            .map_err(io_err("creating node key"))?;
        writeln!(tmp, "{}", hex(key.key.as_bytes())).map_err(io_err("writing node key"))?;
        tmp.as_file()
            .sync_all()
            .map_err(io_err("writing node key"))?;
        match tmp.persist_noclobber(path) {
            Ok(_) => {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
                Ok(key)
            }
            // Another engine created it first: use that one.
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => Self::load(path),
            Err(e) => Err(io_err("creating node key")(e.error)),
        }
    }

    /// The signature member's bytes for `members` (in archive order).
    pub fn signature_member(&self, members: &[MemberDigest]) -> Vec<u8> {
        let public = self.public();
        let msg = canonical_manifest(&public, members);
        let sig = self.key.sign(&msg);
        let doc = SignatureDoc {
            version: 1,
            algorithm: ALGORITHM.into(),
            key_id: public.key_id(),
            public_key: hex(&public.0),
            members: members
                .iter()
                .map(|m| ManifestEntry {
                    name: m.name.clone(),
                    kind: m.kind.as_str().into(),
                    size: m.size,
                    sha256: hex(&m.sha256),
                })
                .collect(),
            signature: hex(&sig.to_bytes()),
        };
        serde_json::to_vec_pretty(&doc).expect("a signature document always serializes")
    }
}

/// The bytes the signature covers.
pub fn canonical_manifest(key: &PublicKey, members: &[MemberDigest]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + members.len() * 120);
    out.extend_from_slice(MANIFEST_MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(format!("public-key {}\n", hex(&key.0)).as_bytes());
    for m in members {
        out.extend_from_slice(
            format!(
                "{} {} {} {}\n",
                m.kind.as_str(),
                m.size,
                hex(&m.sha256),
                m.name
            )
            .as_bytes(),
        );
    }
    out
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureDoc {
    version: u32,
    algorithm: String,
    key_id: String,
    public_key: String,
    members: Vec<ManifestEntry>,
    signature: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    size: u64,
    sha256: String,
}

/// Verifies a signature member (`doc`, untrusted bytes) against the trusted keys and the
/// members the reader saw (in archive order, the signature member left out); returns the
/// signer's key. See the module docs.
pub fn verify_signature(
    doc: &[u8],
    seen: &[MemberDigest],
    trust: &TrustedKeys,
) -> Result<PublicKey, ProvenanceError> {
    let bad =
        |field: &'static str, detail: String| ProvenanceError::BadSignatureMember { field, detail };
    let d: SignatureDoc = serde_json::from_slice(doc).map_err(|e| bad("json", e.to_string()))?;
    if d.version != 1 {
        return Err(bad("version", format!("{} is not 1", d.version)));
    }
    if d.algorithm != ALGORITHM {
        return Err(bad(
            "algorithm",
            format!("{:?} is not {ALGORITHM}", d.algorithm),
        ));
    }
    let public = unhex(&d.public_key)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .map(PublicKey)
        .ok_or_else(|| bad("public_key", "not 64 hex digits".into()))?;
    if d.key_id != public.key_id() {
        return Err(bad(
            "key_id",
            format!("{:?} is not the public key's id", d.key_id),
        ));
    }
    if !trust.contains(&public) {
        return Err(ProvenanceError::UntrustedKey {
            key_id: public.key_id(),
        });
    }
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&public.0)
        .map_err(|_| bad("public_key", "not an ed25519 point".into()))?;
    let sig: [u8; 64] = unhex(&d.signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("signature", "not 128 hex digits".into()))?;
    let mut signed = Vec::with_capacity(d.members.len());
    for (i, e) in d.members.into_iter().enumerate() {
        let kind = match e.kind.as_str() {
            "file" => DigestKind::File,
            "dir" => DigestKind::Dir,
            other => return Err(bad("members.type", format!("entry {i}: {other:?}"))),
        };
        let sha256 = unhex(&e.sha256)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| bad("members.sha256", format!("entry {i}: not 64 hex digits")))?;
        if e.name.is_empty() || e.name.contains(['\n', '\r', '\0']) {
            return Err(bad(
                "members.name",
                format!("entry {i}: empty or a line break"),
            ));
        }
        signed.push(MemberDigest {
            name: e.name,
            kind,
            size: e.size,
            sha256,
        });
    }
    vk.verify_strict(
        &canonical_manifest(&public, &signed),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .map_err(|_| ProvenanceError::BadSignature {
        key_id: public.key_id(),
    })?;
    // The signature is good: now the archive must hold exactly what was signed.
    let mut by_name: std::collections::HashMap<&str, &MemberDigest> =
        std::collections::HashMap::with_capacity(signed.len());
    for m in &signed {
        if by_name.insert(&m.name, m).is_some() {
            return Err(bad("members.name", format!("{} appears twice", m.name)));
        }
    }
    for m in seen {
        let Some(s) = by_name.remove(m.name.as_str()) else {
            return Err(ProvenanceError::UnsignedMember {
                name: m.name.clone(),
            });
        };
        let field = if s.kind != m.kind {
            "type"
        } else if s.size != m.size {
            "size"
        } else if s.sha256 != m.sha256 {
            "sha256"
        } else {
            continue;
        };
        return Err(ProvenanceError::Mismatch {
            name: m.name.clone(),
            field,
        });
    }
    // What is left was signed but not seen (reported in manifest order).
    if let Some(m) = signed
        .iter()
        .find(|m| by_name.contains_key(m.name.as_str()))
    {
        return Err(ProvenanceError::MissingMember {
            name: m.name.clone(),
        });
    }
    Ok(public)
}

/// Collects the digests of members as a reader sees them and checks them at the end of the
/// stream ([`verify_signature`]).
#[derive(Debug)]
pub(crate) struct StreamVerifier<'a> {
    trust: &'a TrustedKeys,
    seen: Vec<MemberDigest>,
    signature: Option<Vec<u8>>,
}

impl<'a> StreamVerifier<'a> {
    pub(crate) fn new(trust: &'a TrustedKeys) -> Self {
        Self {
            trust,
            seen: Vec::new(),
            signature: None,
        }
    }

    /// Called for every member before its data is consumed: refuses one after the signature.
    pub(crate) fn check_order(&self, name: &str) -> Result<(), ProvenanceError> {
        if self.signature.is_some() {
            return Err(ProvenanceError::AfterSignature {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub(crate) fn record(&mut self, m: MemberDigest) {
        self.seen.push(m);
    }

    pub(crate) fn set_signature(&mut self, doc: Vec<u8>) {
        self.signature = Some(doc);
    }

    pub(crate) fn finish(self) -> Result<PublicKey, ProvenanceError> {
        let doc = self.signature.ok_or(ProvenanceError::Unsigned)?;
        verify_signature(&doc, &self.seen, self.trust)
    }
}

/// The SHA-256 of `len` bytes of `file` at `offset` (read back through `buf`).
pub(crate) fn hash_range(
    file: &File,
    offset: u64,
    len: u64,
    buf: &mut [u8],
    h: &mut Sha256,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0u64;
    while done < len {
        let want = (len - done).min(buf.len() as u64) as usize;
        let n = file.read_at(&mut buf[..want], offset + done)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok(())
}

pub(crate) fn hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    let v = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    b.chunks(2)
        .map(|p| Some(v(p[0])? << 4 | v(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::super::{
        ArchiveBuilder, ArchiveError, ArchiveInput, Compression, ConfigDump, Limits, ReadOptions,
        WriteOptions, extract_with, write_archive,
    };
    use super::*;

    fn key(n: u8) -> NodeKey {
        NodeKey::from_seed([n; 32])
    }

    /// An images dir with a small image and one large enough for `copy_file_range`.
    fn images(dir: &Path) -> PathBuf {
        let images = dir.join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("inventory.img"), b"inventory").unwrap();
        let pages: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(images.join("pages-1.img"), pages).unwrap();
        images
    }

    fn input(images: &Path) -> ArchiveInput {
        ArchiveInput {
            images_dir: images.to_path_buf(),
            config: ConfigDump {
                id: "x".into(),
                runtime: "runc".into(),
                ..Default::default()
            },
            spec: serde_json::json!({"ociVersion": "1.0.2"}),
            stats_dump: None,
            dump_log: None,
            rootfs: None,
            extra: vec![("status.dump".into(), b"{}".to_vec())],
        }
    }

    fn write(dir: &Path, name: &str, c: Compression, signer: Option<&NodeKey>) -> PathBuf {
        let dest = dir.join(name);
        let rep = write_archive(
            &dest,
            &input(&images(&dir.join(format!("{name}.src")).tap_mkdir())),
            &WriteOptions {
                compression: c,
                signer,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(rep.signed_by, signer.map(|k| k.public().key_id()));
        dest
    }

    trait TapMkdir {
        fn tap_mkdir(self) -> Self;
    }
    impl TapMkdir for PathBuf {
        fn tap_mkdir(self) -> Self {
            std::fs::create_dir_all(&self).unwrap();
            self
        }
    }

    fn extract(archive: &Path, trust: Option<&TrustedKeys>) -> Result<PublicKey, ArchiveError> {
        let target = archive.with_extension(format!("x{}", rand::random::<u32>()));
        let r = extract_with(
            archive,
            &target,
            &ReadOptions {
                limits: Limits::default(),
                trust,
                ..Default::default()
            },
        );
        r.map(|x| x.signed_by.unwrap_or(PublicKey([0; 32])))
    }

    /// Rewrites the plain tar at `path`: `edit` may change each member's data (`None`
    /// drops the member); `add` members are appended (before the signature when `before_sig`).
    fn rewrite(
        path: &Path,
        mut edit: impl FnMut(&str, &mut Vec<u8>) -> bool,
        add: &[(&str, &[u8])],
        before_sig: bool,
    ) {
        let mut ar = tar::Archive::new(File::open(path).unwrap());
        let mut out = tar::Builder::new(Vec::new());
        let mut added = false;
        let push_adds = |out: &mut tar::Builder<Vec<u8>>| {
            for (n, d) in add {
                let mut h = tar::Header::new_ustar();
                h.set_size(d.len() as u64);
                h.set_mode(0o600);
                h.set_entry_type(tar::EntryType::Regular);
                out.append_data(&mut h, n, *d).unwrap();
            }
        };
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if name == SIGNATURE_MEMBER && before_sig && !added {
                push_adds(&mut out);
                added = true;
            }
            if !edit(name.trim_end_matches('/'), &mut data) {
                continue;
            }
            let mut h = e.header().clone();
            h.set_size(data.len() as u64);
            h.set_cksum();
            out.append(&h, &data[..]).unwrap();
        }
        if !added {
            push_adds(&mut out);
        }
        std::fs::write(path, out.into_inner().unwrap()).unwrap();
    }

    fn trust(k: &NodeKey) -> TrustedKeys {
        TrustedKeys::new([k.public()])
    }

    #[test]
    fn signed_archives_verify_with_every_compression_and_the_streamed_builder() {
        let t = tempfile::tempdir().unwrap();
        let k = key(1);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let a = write(t.path(), &format!("a-{c}.tar"), c, Some(&k));
            assert_eq!(extract(&a, Some(&trust(&k))).unwrap(), k.public(), "{c}");
        }
        // Streamed through a pipe (splice), as a checkpoint writes its pages.
        let src = images(&t.path().join("s").tap_mkdir());
        let pages = std::fs::read(src.join("pages-1.img")).unwrap();
        std::fs::remove_file(src.join("pages-1.img")).unwrap();
        let out = t.path().join("streamed.tar");
        let mut b = ArchiveBuilder::create(&out).unwrap();
        b.set_signer(std::sync::Arc::new(key(1))).unwrap();
        b.append_dir("checkpoint", 0).unwrap();
        let mut m = b.begin_stream("checkpoint/pages-1.img").unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let data = pages.clone();
        let writer = std::thread::spawn(move || File::from(w).write_all(&data).unwrap());
        loop {
            match b.splice_from(&mut m, r.as_fd(), 1 << 20) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap();
        b.end_stream(m).unwrap();
        b.append(&input(&src), None).unwrap();
        let rep = b.finish().unwrap();
        assert_eq!(rep.signed_by, Some(k.public().key_id()));
        assert_eq!(extract(&out, Some(&trust(&k))).unwrap(), k.public());
        // A flipped byte in the spliced data is caught.
        rewrite(
            &out,
            |n, d| {
                if n == "checkpoint/pages-1.img" {
                    d[500_000] ^= 1;
                }
                true
            },
            &[],
            false,
        );
        assert!(matches!(
            extract(&out, Some(&trust(&k))),
            Err(ArchiveError::Provenance(ProvenanceError::Mismatch { ref name, field: "sha256" }))
                if name == "checkpoint/pages-1.img"
        ));
    }

    #[test]
    fn tampered_content_is_refused_naming_the_member() {
        let t = tempfile::tempdir().unwrap();
        let k = key(2);
        for (member, at) in [("checkpoint/pages-1.img", 123_456), ("spec.dump", 3)] {
            let a = write(
                t.path(),
                &format!("{}.tar", member.replace('/', "_")),
                Compression::None,
                Some(&k),
            );
            rewrite(
                &a,
                |n, d| {
                    if n == member {
                        d[at] ^= 0x20;
                    }
                    true
                },
                &[],
                false,
            );
            let r = extract(&a, Some(&trust(&k)));
            assert!(
                matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::Mismatch { name, field: "sha256" })) if name == member),
                "{r:?}"
            );
            // Without a requirement the same archive extracts (the signature is not checked;
            // the edited spec.dump is no longer JSON).
            if member != "spec.dump" {
                assert!(extract(&a, None).is_ok());
            }
        }
    }

    #[test]
    fn added_removed_and_resized_members_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let k = key(3);
        let tk = trust(&k);
        let a = write(t.path(), "added.tar", Compression::None, Some(&k));
        rewrite(&a, |_, _| true, &[("checkpoint/extra.img", b"x")], true);
        let r = extract(&a, Some(&tk));
        assert!(
            matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::UnsignedMember { name })) if name == "checkpoint/extra.img"),
            "{r:?}"
        );
        let a = write(t.path(), "after.tar", Compression::None, Some(&k));
        rewrite(&a, |_, _| true, &[("late.json", b"{}")], false);
        let r = extract(&a, Some(&tk));
        assert!(
            matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::AfterSignature { name })) if name == "late.json"),
            "{r:?}"
        );
        let a = write(t.path(), "removed.tar", Compression::None, Some(&k));
        rewrite(&a, |n, _| n != "checkpoint/inventory.img", &[], false);
        let r = extract(&a, Some(&tk));
        assert!(
            matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::MissingMember { name })) if name == "checkpoint/inventory.img"),
            "{r:?}"
        );
        let a = write(t.path(), "resized.tar", Compression::None, Some(&k));
        rewrite(
            &a,
            |n, d| {
                if n == "status.dump" {
                    d.push(b' ');
                }
                true
            },
            &[],
            false,
        );
        let r = extract(&a, Some(&tk));
        assert!(
            matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::Mismatch { name, field: "size" })) if name == "status.dump"),
            "{r:?}"
        );
    }

    #[test]
    fn unsigned_untrusted_and_forged_signatures_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let k = key(4);
        let unsigned = write(t.path(), "unsigned.tar", Compression::None, None);
        let r = extract(&unsigned, Some(&trust(&k)));
        assert!(
            matches!(r, Err(ArchiveError::Provenance(ProvenanceError::Unsigned))),
            "{r:?}"
        );
        assert!(extract(&unsigned, None).is_ok());

        let other = write(t.path(), "other.tar", Compression::None, Some(&key(5)));
        let r = extract(&other, Some(&trust(&k)));
        assert!(
            matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::UntrustedKey { key_id })) if *key_id == key(5).public().key_id()),
            "{r:?}"
        );
        // Trusting both keys accepts it.
        let both = TrustedKeys::new([k.public(), key(5).public()]);
        assert_eq!(extract(&other, Some(&both)).unwrap(), key(5).public());

        // A manifest edited to match tampered data, the signature left alone.
        let a = write(t.path(), "forged.tar", Compression::None, Some(&k));
        rewrite(
            &a,
            |n, d| {
                if n == "status.dump" {
                    d[0] = b'[';
                    d[1] = b']';
                }
                if n == SIGNATURE_MEMBER {
                    let mut v: serde_json::Value = serde_json::from_slice(d).unwrap();
                    for m in v["members"].as_array_mut().unwrap() {
                        if m["name"] == "status.dump" {
                            m["sha256"] = hex(&Sha256::digest(b"[]")).into();
                        }
                    }
                    *d = serde_json::to_vec(&v).unwrap();
                }
                true
            },
            &[],
            false,
        );
        let r = extract(&a, Some(&trust(&k)));
        assert!(
            matches!(&r, Err(ArchiveError::Provenance(ProvenanceError::BadSignature { key_id })) if *key_id == k.public().key_id()),
            "{r:?}"
        );
        // Garbage in the signature member names the field.
        let a = write(t.path(), "garbage.tar", Compression::None, Some(&k));
        rewrite(
            &a,
            |n, d| {
                if n == SIGNATURE_MEMBER {
                    let mut v: serde_json::Value = serde_json::from_slice(d).unwrap();
                    v["algorithm"] = "rsa".into();
                    *d = serde_json::to_vec(&v).unwrap();
                }
                true
            },
            &[],
            false,
        );
        let r = extract(&a, Some(&trust(&k)));
        assert!(
            matches!(
                r,
                Err(ArchiveError::Provenance(
                    ProvenanceError::BadSignatureMember {
                        field: "algorithm",
                        ..
                    }
                ))
            ),
            "{r:?}"
        );
    }

    #[test]
    fn the_verifier_never_panics_on_garbage() {
        let k = key(6);
        let tk = trust(&k);
        let good = k.signature_member(&[MemberDigest::dir("checkpoint")]);
        assert!(verify_signature(&good, &[MemberDigest::dir("checkpoint")], &tk).is_ok());
        for n in 0..good.len() {
            let _ = verify_signature(&good[..n], &[], &tk);
            let mut b = good.clone();
            b[n] ^= 0xff;
            assert!(
                verify_signature(&b, &[MemberDigest::dir("checkpoint")], &tk).is_err() || b == good
            );
        }
    }

    #[test]
    fn the_node_key_is_created_private_once_and_unsafe_files_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = node_key_path(t.path());
        let k = NodeKey::load_or_create(&path).unwrap();
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600);
        assert_eq!(
            std::fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777,
            0o700
        );
        // The same key on the next use.
        assert_eq!(NodeKey::load_or_create(&path).unwrap().public(), k.public());
        // Its public line parses back.
        assert_eq!(PublicKey::parse(&k.public().to_line()).unwrap(), k.public());
        assert!(PublicKey::parse("rsa 00").is_err());

        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let r = NodeKey::load_or_create(&path);
            assert!(
                matches!(r, Err(KeyError::Mode { mode: m, .. }) if m == mode),
                "{r:?}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&path, Some(1000), None).unwrap();
            let r = NodeKey::load(&path);
            assert!(matches!(r, Err(KeyError::Owner { uid: 1000, .. })), "{r:?}");
            std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        }
        // A symlink in its place is not followed.
        let link = t.path().join("keys/link.ed25519");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(NodeKey::load(&link).is_err());
        assert_eq!(NodeKey::load(&path).unwrap().public(), k.public());
    }
}
