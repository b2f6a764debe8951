//! OCI images: references, layouts, a local image store, checkpoint images and a registry
//! client.
//!
//! - [`mod@reference`]: parsing and normalising `[domain/]path[:tag][@digest]`.
//! - [`store`]: the content-addressed [`ImageStore`] under the state root
//!   (`/var/lib/cpengine/images`), shared by the CLI and the shim, safe for several processes.
//! - [`layout`]: reading an OCI image layout (directory or tar archive) into the store, with
//!   every blob checked against its descriptor, and writing one ([`export`]).
//! - [`checkpoint`]: checkpoint images, the convention CRI-O, containerd and Podman restore
//!   from: FROM scratch, one layer holding the checkpoint archive's members at `/`, and the
//!   annotations each runtime looks for (see `reference/archive-format.md` §4.1).
//! - [`registry`]: the OCI distribution API v2 (pull and push), with anonymous bearer tokens
//!   and basic credentials.
//!
//! Data path of a checkpoint image: archive (plain/gzip/zstd tar) → members copied one by one
//! into a new tar → gzip (in parallel blocks) → staged blob, hashed on the way twice (the
//! uncompressed stream gives the config's `diff_id`, the compressed one the layer digest) →
//! config and manifest JSON → committed to the store → exported as a layout or pushed.
//!
//! All public operations are async; blocking file work runs on tokio's blocking pool.

pub mod checkpoint;
pub mod digest;
mod error;
pub mod layout;
pub(crate) mod pgzip;
pub mod reference;
#[cfg(feature = "registry")]
pub mod registry;
pub mod store;
pub mod unpack;

pub use checkpoint::{
    CheckpointImageOptions, build_checkpoint_image, checkpoint_layer, is_checkpoint_image,
};
pub use error::{OciError, OciResult};
pub use layout::{Format, export};
pub use reference::{Reference, ReferenceError};
#[cfg(feature = "registry")]
pub use registry::{PullOutcome, PushOutcome, RegistryOptions, pull, push};
pub use store::{
    Compression, FsUsage, ImageRecord, ImageStore, LayerInfo, RemoveOutcome, RunConfig,
    is_exact_name,
};

/// Media types cpengine reads and writes.
pub mod media {
    use super::{Compression, OciError, OciResult};

    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    pub fn is_manifest(m: &str) -> bool {
        m == OCI_MANIFEST || m == DOCKER_MANIFEST
    }

    pub fn is_index(m: &str) -> bool {
        m == OCI_INDEX || m == DOCKER_LIST
    }

    /// The compression a layer media type announces.
    pub fn layer_compression(m: &str) -> OciResult<Compression> {
        match m {
            OCI_LAYER | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Ok(Compression::None)
            }
            OCI_LAYER_GZIP
            | DOCKER_LAYER_GZIP
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Compression::Gzip),
            OCI_LAYER_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Ok(Compression::Zstd)
            }
            other => Err(OciError::UnsupportedMediaType {
                what: "layer",
                media_type: other.to_owned(),
            }),
        }
    }
}

/// Annotation keys.
pub mod annotations {
    /// Names a manifest inside an image layout's index.json.
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    pub const CREATED: &str = "org.opencontainers.image.created";

    /// CRI-O: the image is a checkpoint (read only from an OCI manifest).
    pub const CRIO_CHECKPOINT_NAME: &str = "io.kubernetes.cri-o.annotations.checkpoint.name";
    pub const CRIO_ROOTFS_IMAGE_NAME: &str =
        "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName";
    pub const CRIO_ROOTFS_IMAGE_ID: &str =
        "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageID";
    pub const CRIO_CRIU_VERSION: &str = "io.kubernetes.cri-o.annotations.checkpoint.criu.version";

    /// containerd (and checkpointctl's generic keys): the image is a checkpoint.
    pub const CRIU_CONTAINER_NAME: &str = "org.criu.checkpoint.container.name";
    pub const CRIU_ROOTFS_IMAGE_NAME: &str = "org.criu.checkpoint.rootfsImageName";
    pub const CRIU_ROOTFS_IMAGE_ID: &str = "org.criu.checkpoint.rootfsImageID";
    pub const CRIU_RUNTIME_NAME: &str = "org.criu.checkpoint.runtime.name";
    pub const CRIU_ENGINE_NAME: &str = "org.criu.checkpoint.engine.name";
    pub const CRIU_CRIU_VERSION: &str = "org.criu.checkpoint.criu.version";
    pub const CRIU_POD_NAME: &str = "org.criu.checkpoint.pod.name";
    pub const CRIU_POD_NAMESPACE: &str = "org.criu.checkpoint.pod.namespace";

    /// Podman's checkpoint image keys share this prefix.
    pub const PODMAN_CHECKPOINT_PREFIX: &str = "io.podman.annotations.checkpoint.";
    pub const PODMAN_CHECKPOINT_NAME: &str = "io.podman.annotations.checkpoint.name";
}

/// The current time as RFC 3339 UTC with seconds (`2026-01-02T03:04:05Z`).
pub(crate) fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 UTC.
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), era-based.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_767_323_045), "2026-01-02T03:04:05Z");
    }
}

#[cfg(test)]
mod store_tests;
