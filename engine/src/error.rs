//! The engine's error type: each variant names the step that failed.

use std::io;
use std::path::PathBuf;

use criu_proto::image::ImageError;

use crate::criu::{CriuError, LocateError};

/// Result alias for engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    Lock(#[from] crate::container::lock::LockError),
    #[error(transparent)]
    Archive(#[from] crate::archive::ArchiveError),
    #[error(transparent)]
    Rootfs(#[from] crate::rootfs::RootfsError),
    #[error(transparent)]
    Oci(#[from] crate::oci::OciError),
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    PolicyViolation(#[from] crate::policy::PolicyViolation),
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
