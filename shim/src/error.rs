//! The shim's error type and its one mapping to gRPC status codes.
//!
//! Variants say what kind of failure it was (the caller's fault, a missing object, a state
//! conflict, an expired deadline) or which step failed inside the shim; [`From<ShimError>`] for
//! [`tonic::Status`] picks the code from the variant alone, never from message text.

use std::path::PathBuf;

/// Result alias for shim operations.
pub type Result<T, E = ShimError> = std::result::Result<T, E>;

/// What can go wrong serving a CRI call.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// The object does not exist (pod, container, image).
    #[error("{kind} {id:?} not found")]
    NotFound { kind: &'static str, id: String },
    /// The request is malformed or asks for something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// A name or id is already taken.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is not in a state that allows the call (e.g. checkpointing a stopped
    /// container, creating a container in a stopped pod).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The call's deadline or timeout expired before it completed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// The call is not supported by this runtime.
    #[error("{0} is not implemented by cpengine-shim")]
    Unimplemented(&'static str),
    /// A `runc` invocation failed.
    #[error("runc {op} {id}: {detail}")]
    Runc {
        op: &'static str,
        id: String,
        detail: String,
    },
    /// Starting a helper process (runc, the log relay, the pod's namespace holder) failed.
    #[error("starting {what}")]
    Spawn {
        what: &'static str,
        source: std::io::Error,
    },
    /// A file system step failed (creating directories, mounting, writing records).
    #[error("{what} {}", path.display())]
    Fs {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Reading or writing the shim's persisted state failed.
    #[error("{what} {}", path.display())]
    State {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An engine operation failed (checkpoint, restore, container lookup).
    #[error("{step}")]
    Engine {
        step: &'static str,
        source: cpengine::Error,
    },
    /// The engine could not read a container.
    #[error("{step}")]
    Container {
        step: &'static str,
        source: cpengine::container::ContainerError,
    },
    /// An operation of the OCI image store or registry client failed.
    #[error("{step}")]
    Oci {
        step: &'static str,
        source: cpengine::oci::OciError,
    },
    /// Reading or extracting a checkpoint archive failed.
    #[error("{step}")]
    Archive {
        step: &'static str,
        source: cpengine::archive::ArchiveError,
    },
    /// An image store operation failed.
    #[error("{step}")]
    Image {
        step: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The upstream runtime (proxy mode) answered with an error; its status is passed on.
    #[error("upstream runtime: {0}")]
    Upstream(tonic::Status),
    /// Something the shim cannot classify further.
    #[error("{0}")]
    Internal(String),
}

impl ShimError {
    pub fn not_found(kind: &'static str, id: impl Into<String>) -> Self {
        Self::NotFound {
            kind,
            id: id.into(),
        }
    }

    /// A file system step failure (for `map_err`).
    pub fn fs(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Fs { what, path, source }
    }

    /// A persisted-state failure (for `map_err`).
    pub fn state(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::State { what, path, source }
    }

    /// An engine failure (for `map_err`).
    pub fn engine(step: &'static str) -> impl FnOnce(cpengine::Error) -> Self {
        move |source| Self::Engine { step, source }
    }
}

/// The gRPC code of an engine error, by variant: the caller's mistakes and a bad or unsafe
/// checkpoint are INVALID_ARGUMENT or FAILED_PRECONDITION, never INTERNAL; failures of the
/// engine's own work (I/O, CRIU, a failed page stream) are INTERNAL.
fn engine_code(e: &cpengine::Error) -> tonic::Code {
    use cpengine::{Error as E, ErrorClass};
    match e {
        E::Container(c) => container_code(c),
        E::Archive(a) => archive_code(a),
        E::Rootfs(r) => rootfs_code(r),
        E::Oci(o) => oci_code(o),
        E::Images { source, .. } | E::Stats { source, .. } => image_code(source),
        E::Lock(cpengine::container::LockError::Busy { .. }) => tonic::Code::Unavailable,
        E::IdInUse { .. } => tonic::Code::Unavailable,
        // The checkpoint would give the container more than the request allows.
        E::PolicyViolation(_) => tonic::Code::PermissionDenied,
        E::Unsupported { .. } => tonic::Code::FailedPrecondition,
        E::Dump { source, .. } | E::Restore { source, .. } | E::Criu(source) => match source {
            cpengine::criu::CriuError::Timeout { .. } => tonic::Code::DeadlineExceeded,
            _ => tonic::Code::Internal,
        },
        _ => match e.class() {
            ErrorClass::Request | ErrorClass::BadCheckpoint => tonic::Code::InvalidArgument,
            ErrorClass::Precondition => tonic::Code::FailedPrecondition,
            ErrorClass::Internal => tonic::Code::Internal,
        },
    }
}

/// The gRPC code of a rootfs diff error: a diff that is malformed, unsafe or too large is the
/// checkpoint's fault; reading the base or writing the rootfs is ours.
fn rootfs_code(e: &cpengine::rootfs::RootfsError) -> tonic::Code {
    use cpengine::rootfs::RootfsError as R;
    match e {
        R::DiffFormat { .. }
        | R::UnsafeName { .. }
        | R::UnsupportedEntry { .. }
        | R::DeviceNode { .. }
        | R::TooLarge { .. }
        | R::TooManyEntries { .. } => tonic::Code::InvalidArgument,
        R::BaseTarFormat { .. } | R::OverlayRedirect { .. } => tonic::Code::FailedPrecondition,
        _ => tonic::Code::Internal,
    }
}

/// The gRPC code of a CRIU image (or statistics) error: undecodable images are the
/// checkpoint's fault, failing to read them is ours.
fn image_code(e: &cpengine::ImageError) -> tonic::Code {
    use cpengine::ImageError as I;
    match e {
        I::Io(_) => tonic::Code::Internal,
        _ => tonic::Code::InvalidArgument,
    }
}

/// The gRPC code of an image store or registry error, by variant.
fn oci_code(e: &cpengine::oci::OciError) -> tonic::Code {
    use cpengine::oci::OciError as O;
    match e {
        O::ImageNotFound { .. } => tonic::Code::NotFound,
        O::Reference(_) | O::AmbiguousId { .. } | O::BadCredentials | O::InvalidDigest { .. } => {
            tonic::Code::InvalidArgument
        }
        O::RegistryStatus { status, .. } if *status == 404 => tonic::Code::NotFound,
        O::Unauthorized { .. } => tonic::Code::Unauthenticated,
        O::Http { .. } | O::Token { .. } => tonic::Code::Unavailable,
        O::NotACheckpointImage { .. } | O::CheckpointLayers { .. } => {
            tonic::Code::FailedPrecondition
        }
        _ => tonic::Code::Internal,
    }
}

/// The gRPC code of an archive error, by variant: a malformed or unsafe archive is the
/// caller's; failing to read or write one is ours.
fn archive_code(e: &cpengine::archive::ArchiveError) -> tonic::Code {
    use cpengine::archive::ArchiveError as A;
    match e {
        A::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            tonic::Code::NotFound
        }
        A::Truncated { .. }
        | A::BadHeader { .. }
        | A::TooManyMembers { .. }
        | A::MemberTooLarge { .. }
        | A::TotalTooLarge { .. }
        | A::JsonTooLarge { .. }
        | A::PathTooLong { .. }
        | A::ExtensionTooLarge { .. }
        | A::BadName { .. }
        | A::AbsoluteName { .. }
        | A::Traversal { .. }
        | A::SymlinkMember { .. }
        | A::HardlinkMember { .. }
        | A::SpecialMember { .. }
        | A::UnsupportedMember { .. }
        | A::DuplicateMember { .. }
        | A::ThroughSymlink { .. }
        | A::MissingMember { .. }
        | A::DecodeJson { .. } => tonic::Code::InvalidArgument,
        // Unsigned, or not signed by a trusted key, or not what was signed.
        A::Provenance(_) => tonic::Code::PermissionDenied,
        _ => tonic::Code::Internal,
    }
}

fn container_code(e: &cpengine::container::ContainerError) -> tonic::Code {
    use cpengine::container::ContainerError as C;
    match e {
        C::InvalidId(_) => tonic::Code::InvalidArgument,
        C::NotFound { .. } => tonic::Code::NotFound,
        C::NotRunning { .. } => tonic::Code::FailedPrecondition,
        C::AlreadyExists { .. } => tonic::Code::AlreadyExists,
        _ => tonic::Code::Internal,
    }
}

impl From<ShimError> for tonic::Status {
    fn from(e: ShimError) -> Self {
        let code = match &e {
            ShimError::NotFound { .. } => tonic::Code::NotFound,
            ShimError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ShimError::AlreadyExists(_) => tonic::Code::AlreadyExists,
            ShimError::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            ShimError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            ShimError::Unimplemented(_) => tonic::Code::Unimplemented,
            ShimError::Engine { source, .. } => engine_code(source),
            ShimError::Container { source, .. } => container_code(source),
            ShimError::Oci { source, .. } => oci_code(source),
            ShimError::Archive { source, .. } => archive_code(source),
            ShimError::Upstream(status) => return status.clone(),
            ShimError::Runc { .. }
            | ShimError::Spawn { .. }
            | ShimError::Fs { .. }
            | ShimError::State { .. }
            | ShimError::Image { .. }
            | ShimError::Internal(_) => tonic::Code::Internal,
        };
        // The full chain, so the kubelet's event shows the cause and not only the step.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        tonic::Status::new(code, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_variants() {
        let cases: Vec<(ShimError, tonic::Code)> = vec![
            (
                ShimError::not_found("container", "x"),
                tonic::Code::NotFound,
            ),
            (
                ShimError::InvalidArgument("bad".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                ShimError::AlreadyExists("dup".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                ShimError::FailedPrecondition("stopped".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                ShimError::DeadlineExceeded("late".into()),
                tonic::Code::DeadlineExceeded,
            ),
            (
                ShimError::Unimplemented("Attach"),
                tonic::Code::Unimplemented,
            ),
            (
                ShimError::Runc {
                    op: "start",
                    id: "c".into(),
                    detail: "not found".into(),
                },
                tonic::Code::Internal,
            ),
            (
                ShimError::Container {
                    step: "finding the container",
                    source: cpengine::container::ContainerError::NotFound {
                        id: "c".into(),
                        searched: vec![],
                    },
                },
                tonic::Code::NotFound,
            ),
            (
                ShimError::Engine {
                    step: "checkpoint",
                    source: cpengine::Error::Container(
                        cpengine::container::ContainerError::NotRunning {
                            id: "c".into(),
                            status: cpengine::container::Status::Stopped,
                        },
                    ),
                },
                tonic::Code::FailedPrecondition,
            ),
            (
                ShimError::Upstream(tonic::Status::unavailable("down")),
                tonic::Code::Unavailable,
            ),
            (
                ShimError::Oci {
                    step: "resolving",
                    source: cpengine::oci::OciError::ImageNotFound {
                        reference: "x".into(),
                    },
                },
                tonic::Code::NotFound,
            ),
        ];
        for (e, code) in cases {
            let text = e.to_string();
            assert_eq!(tonic::Status::from(e).code(), code, "{text}");
        }
    }

    /// Every engine variant named for a step, and the wrapped types, map to the code of whose
    /// fault it is.
    #[tokio::test]
    async fn engine_codes_follow_variants() {
        use cpengine::Error as E;
        use tonic::Code;
        let json_err = || serde_json::from_str::<u8>("x").unwrap_err();
        let task = tokio::spawn(std::future::pending::<()>());
        task.abort();
        let join_err = task.await.unwrap_err();
        let cases: Vec<(E, Code)> = vec![
            // The caller's request.
            (
                E::UnmappedBinds {
                    mounts: vec!["/host (from /)".into()],
                },
                Code::InvalidArgument,
            ),
            (
                E::UnknownBindDestination {
                    destinations: vec!["/data".into()],
                },
                Code::InvalidArgument,
            ),
            (E::BindSource { path: "rel".into() }, Code::InvalidArgument),
            (E::NoRootfsBase, Code::InvalidArgument),
            (
                E::NoDestinationDir { path: "/x".into() },
                Code::InvalidArgument,
            ),
            (
                E::DestinationIsDir { path: "/x".into() },
                Code::InvalidArgument,
            ),
            (
                E::DirRootfsNeedsBase {
                    id: "c".into(),
                    rootfs: "/r".into(),
                },
                Code::InvalidArgument,
            ),
            (
                E::ImagesDirNotEmpty { path: "/x".into() },
                Code::InvalidArgument,
            ),
            (E::NoImages { path: "/x".into() }, Code::InvalidArgument),
            // What the operation needs is missing.
            (
                E::NotACheckpointImage {
                    reference: "x".into(),
                },
                Code::FailedPrecondition,
            ),
            (E::NoBaseImage, Code::FailedPrecondition),
            (
                E::BaseImageMissing {
                    name: "busybox".into(),
                    source: cpengine::oci::OciError::ImageNotFound {
                        reference: "busybox".into(),
                    },
                },
                Code::FailedPrecondition,
            ),
            (
                E::ContainerSpec {
                    source: cpengine::archive::SpecError::NotAnObject,
                },
                Code::FailedPrecondition,
            ),
            (E::NoSuchProcess { pid: 1 }, Code::FailedPrecondition),
            // A malformed or unsafe checkpoint: the caller's, never INTERNAL.
            (E::SpecNotOci { source: json_err() }, Code::InvalidArgument),
            (E::SpecNotObject, Code::InvalidArgument),
            (
                E::MountEscapes {
                    destination: "/../etc".into(),
                },
                Code::InvalidArgument,
            ),
            (
                E::Archive(cpengine::archive::ArchiveError::Traversal {
                    name: "../x".into(),
                }),
                Code::InvalidArgument,
            ),
            (
                E::Rootfs(cpengine::rootfs::RootfsError::UnsafeName {
                    name: "../x".into(),
                    reason: "parent",
                }),
                Code::InvalidArgument,
            ),
            (
                E::Rootfs(cpengine::rootfs::RootfsError::TooLarge { limit: 1 }),
                Code::InvalidArgument,
            ),
            (
                E::Images {
                    path: "/x/pstree.img".into(),
                    source: cpengine::ImageError::Empty,
                },
                Code::InvalidArgument,
            ),
            // The engine's own failures.
            (E::PageStream, Code::Internal),
            (E::BackgroundTask { source: join_err }, Code::Internal),
            (
                E::Io {
                    what: "writing".into(),
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                },
                Code::Internal,
            ),
            (
                E::Images {
                    path: "/x/pstree.img".into(),
                    source: cpengine::ImageError::Io(std::io::Error::from_raw_os_error(libc::EIO)),
                },
                Code::Internal,
            ),
            (
                E::Container(cpengine::container::ContainerError::AlreadyExists { id: "c".into() }),
                Code::AlreadyExists,
            ),
        ];
        for (e, code) in cases {
            let text = format!("{e:?}");
            let status = tonic::Status::from(ShimError::Engine {
                step: "restoring",
                source: e,
            });
            assert_eq!(status.code(), code, "{text}");
        }
    }

    #[test]
    fn status_message_carries_the_cause() {
        let e = ShimError::Fs {
            what: "creating",
            path: "/x".into(),
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let s = tonic::Status::from(e);
        assert!(s.message().starts_with("creating /x: "), "{}", s.message());
        assert!(s.message().contains("No space left"), "{}", s.message());
    }
}
