//! Errors of the image store, layouts, checkpoint images and the registry client.

use std::io;
use std::path::PathBuf;

use super::reference::ReferenceError;

/// Result alias for image operations.
pub type OciResult<T, E = OciError> = std::result::Result<T, E>;

/// What went wrong, named by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("unpacking layer {digest}: {reason}")]
    Unpack { digest: String, reason: String },
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("invalid digest {digest:?} (cpengine stores sha256 digests only)")]
    InvalidDigest { digest: String },
    #[error("blob {expected} has digest {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("blob {digest} has {actual} bytes (or more), its descriptor says {expected}")]
    SizeMismatch {
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("blob {digest} is missing from {}", layout.display())]
    MissingBlob { digest: String, layout: PathBuf },
    #[error("reading OCI layout {}", path.display())]
    ReadLayout { path: PathBuf, source: io::Error },
    #[error("{} is not an OCI layout: {reason}", path.display())]
    NotALayout { path: PathBuf, reason: String },
    #[error("decoding {what}")]
    Json {
        what: String,
        source: serde_json::Error,
    },
    #[error("unsupported media type {media_type} for {what}")]
    UnsupportedMediaType {
        what: &'static str,
        media_type: String,
    },
    #[error("no manifest for {os}/{architecture} in image index {digest}")]
    NoPlatformManifest {
        digest: String,
        os: String,
        architecture: String,
    },
    #[error("image indexes nested deeper than {limit} levels")]
    IndexTooDeep { limit: usize },
    #[error(
        "the layout holds {count} images ({names}); pick one by importing a layout with one image"
    )]
    AmbiguousLayout { count: usize, names: String },
    #[error("the layout holds no image")]
    EmptyLayout,
    #[error("no image {reference:?} in the store")]
    ImageNotFound { reference: String },
    #[error("{prefix:?} matches several images: {ids}")]
    AmbiguousId { prefix: String, ids: String },
    #[error("image store {}", path.display())]
    Store { path: PathBuf, source: io::Error },
    #[error("locking the image store {}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("image store index {} is corrupt", path.display())]
    StoreIndex {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("writing {}", path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("{} already exists", path.display())]
    DestinationExists { path: PathBuf },
    #[error("reading checkpoint archive {}", path.display())]
    ReadArchive { path: PathBuf, source: io::Error },
    #[error("checkpoint archive {} has an unsafe member {member:?}", path.display())]
    UnsafeMember { path: PathBuf, member: String },
    #[error("checkpoint archive {} has member {member:?} of unsupported type {kind}", path.display())]
    UnsupportedMember {
        path: PathBuf,
        member: String,
        kind: String,
    },
    #[error("{} is not a checkpoint archive: {missing} missing", path.display())]
    NotACheckpointArchive {
        path: PathBuf,
        missing: &'static str,
    },
    #[error("no container name in {} (no name in config.dump, no container-name annotation in spec.dump); give one", path.display())]
    NoContainerName { path: PathBuf },
    #[error("image {id} is not a checkpoint image")]
    NotACheckpointImage { id: String },
    #[error("checkpoint image {id} has {count} layers, expected one")]
    CheckpointLayers { id: String, count: usize },
    #[error("setting up the HTTP client")]
    HttpClient {
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[cfg(feature = "registry")]
    #[error("{method} {url}")]
    Http {
        method: &'static str,
        url: String,
        source: reqwest::Error,
    },
    #[error("{method} {url} answered {status}: {body}")]
    RegistryStatus {
        method: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    #[error("registry {registry} refused the credentials (401 after authenticating)")]
    Unauthorized { registry: String },
    #[error("getting a token from {realm}")]
    Token {
        realm: String,
        #[source]
        source: Box<OciError>,
    },
    #[error("registry answer is malformed: {reason}")]
    RegistryProtocol { reason: String },
    #[error("credentials must be user:password")]
    BadCredentials,
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
}

impl OciError {
    /// `true` for a blob whose content does not match its descriptor (digest or size).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::DigestMismatch { .. } | Self::SizeMismatch { .. }
        )
    }
}

pub(crate) fn json_err(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> OciError {
    let what = what.into();
    move |source| OciError::Json { what, source }
}

pub(crate) fn store_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> OciError {
    let path = path.into();
    move |source| OciError::Store { path, source }
}
