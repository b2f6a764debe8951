//! The engine's error type: each variant names the step that failed.

use std::io;
use std::path::PathBuf;

use criu_proto::image::ImageError;

use crate::criu::{CriuError, LocateError};

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Whose fault an [`Error`] is (see [`Error::class`]); variants wrapping another error type
/// (archive, rootfs, container, OCI, CRIU) are classified by their own type's variants at the
/// edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is malformed or asks for something impossible.
    Request,
    /// Something the operation needs is missing or in the wrong state.
    Precondition,
    /// The checkpoint being restored is malformed or unsafe.
    BadCheckpoint,
    /// The engine's own work failed (I/O, CRIU, a background task).
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Locate(#[from] LocateError),
    #[error("no process with pid {pid}")]
    NoSuchProcess { pid: i32 },
    #[error("images directory {}", path.display())]
    ImagesDir { path: PathBuf, source: io::Error },
    #[error("images directory {} is not writable", path.display())]
    ImagesDirNotWritable { path: PathBuf, source: io::Error },
    #[error("images directory {} already holds a checkpoint; use an empty directory", path.display())]
    ImagesDirNotEmpty { path: PathBuf },
    #[error("no CRIU images in {} (inventory.img missing)", path.display())]
    NoImages { path: PathBuf },
    #[error("id {} needed by the restored tree is held by pid {} ({}, state {}) as its {}", holder.id, holder.pid, holder.comm, holder.state, holder.role)]
    IdInUse { holder: crate::proc::IdHolder },
    #[error("reading CRIU image {}", path.display())]
    Images { path: PathBuf, source: ImageError },
    #[error("setting up cgroups")]
    Cgroups { source: io::Error },
    #[error(transparent)]
    Container(#[from] crate::container::ContainerError),
    #[error(transparent)]
    Containment(#[from] crate::container::containment::ContainmentError),
    #[error(transparent)]
    Exec(#[from] crate::container::ExecError),
    #[error(transparent)]
    Lock(#[from] crate::container::lock::LockError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error(transparent)]
    PolicyViolation(#[from] crate::policy::PolicyViolation),

    // The caller's request cannot be carried out as asked.
    #[error(
        "the checkpoint bind-mounts host paths into the container at: {}; name a source for \
         each with --mount SRC:DEST (or --trust-archive-binds to use the archive's own \
         sources, for an archive you trust)",
        mounts.join(", ")
    )]
    UnmappedBinds { mounts: Vec<String> },
    #[error("the checkpoint has no bind mount at {} (a restore cannot add mounts)", destinations.join(", "))]
    UnknownBindDestination { destinations: Vec<String> },
    #[error("bind mount source {} must be an existing absolute path", path.display())]
    BindSource { path: PathBuf },
    #[error(
        "restore needs the container's base filesystem: pass --rootfs-base DIR|TAR or import its image"
    )]
    NoRootfsBase,
    #[error("destination directory {} does not exist", path.display())]
    NoDestinationDir { path: PathBuf },
    #[error("destination {} is a directory", path.display())]
    DestinationIsDir { path: PathBuf },
    #[error(
        "container {id} has a plain-directory rootfs ({}): pass --rootfs-base DIR|TAR to diff it against its base, or --skip-rootfs",
        rootfs.display()
    )]
    DirRootfsNeedsBase { id: String, rootfs: PathBuf },

    // What the checkpoint needs is not there.
    #[error("image {reference} is not a checkpoint image (no checkpoint annotation)")]
    NotACheckpointImage { reference: String },
    #[error(
        "the checkpoint names no base image: pass --rootfs-image NAME or --rootfs-base DIR|TAR"
    )]
    NoBaseImage,
    #[error(
        "base image {name} is not in the image store by that exact name or id; import or pull it, or pass --rootfs-image NAME or --rootfs-base DIR|TAR"
    )]
    BaseImageMissing {
        name: String,
        source: crate::oci::OciError,
    },
    #[error("the container's spec cannot be annotated")]
    ContainerSpec {
        source: crate::archive::spec::SpecError,
    },

    // The checkpoint itself is malformed or unsafe.
    #[error("the checkpoint's spec.dump is not an OCI runtime spec")]
    SpecNotOci { source: serde_json::Error },
    #[error("the checkpoint's spec.dump is not a JSON object")]
    SpecNotObject,
    #[error("mount destination {} escapes the rootfs", destination.display())]
    MountEscapes { destination: PathBuf },

    // Failures of the engine's own work.
    #[error("streaming the pages into the archive failed")]
    PageStream,
    #[error("background task failed")]
    BackgroundTask { source: tokio::task::JoinError },
    #[error("work directory {}", path.display())]
    WorkDir { path: PathBuf, source: io::Error },
    #[error("checkpoint of pid {pid} failed")]
    Dump { pid: i32, source: CriuError },
    #[error("restore from {} failed", images_dir.display())]
    Restore {
        images_dir: PathBuf,
        source: CriuError,
    },
    #[error("starting criu")]
    Criu(#[from] CriuError),
    #[error("reading CRIU statistics {}", path.display())]
    Stats { path: PathBuf, source: ImageError },
    #[error("{what} is not supported here: CRIU's feature check reports {feature}=false ({hint})")]
    Unsupported {
        what: &'static str,
        feature: &'static str,
        hint: &'static str,
    },
}

impl Error {
    /// Whose fault the error is, by variant: the one classification the edges (the shim's
    /// status codes) build on.
    pub fn class(&self) -> ErrorClass {
        use ErrorClass as C;
        match self {
            Self::UnmappedBinds { .. }
            | Self::UnknownBindDestination { .. }
            | Self::BindSource { .. }
            | Self::NoRootfsBase
            | Self::NoDestinationDir { .. }
            | Self::DestinationIsDir { .. }
            | Self::DirRootfsNeedsBase { .. }
            | Self::ImagesDirNotEmpty { .. }
            | Self::NoImages { .. }
            | Self::Containment(
                crate::container::containment::ContainmentError::Device { .. }
                | crate::container::containment::ContainmentError::NotADevice { .. },
            ) => C::Request,
            Self::Containment(crate::container::containment::ContainmentError::NoDeviceCgroup) => {
                C::Precondition
            }
            Self::NotACheckpointImage { .. }
            | Self::NoBaseImage
            | Self::BaseImageMissing { .. }
            | Self::ContainerSpec { .. }
            | Self::NoSuchProcess { .. }
            | Self::Exec(crate::container::ExecError::Seccomp { .. })
            | Self::Locate(_) => C::Precondition,
            Self::SpecNotOci { .. } | Self::SpecNotObject | Self::MountEscapes { .. } => {
                C::BadCheckpoint
            }
            _ => C::Internal,
        }
    }

    /// The CRIU failure underneath, if this error is one.
    pub fn criu(&self) -> Option<&CriuError> {
        match self {
            Self::Dump { source, .. } | Self::Restore { source, .. } | Self::Criu(source) => {
                Some(source)
            }
            _ => None,
        }
    }
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
