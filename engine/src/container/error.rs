//! What can go wrong finding or reading a container, and the container status it names.

use std::path::PathBuf;

/// What can go wrong finding or reading a container.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?}: use letters, digits, '_', '-' and '.'")]
    InvalidId(String),
    #[error("container {id} not found (searched {})", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound { id: String, searched: Vec<PathBuf> },
    #[error("container {id} is not running ({status})")]
    NotRunning { id: String, status: Status },
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("runc root {} is not readable", path.display())]
    RootUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {}", path.display())]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("container {id}: {what}")]
    Invalid { id: String, what: String },
    #[error("a container named {id} already exists (cpengine delete {id} first)")]
    AlreadyExists { id: String },
}

/// Whether the container's init process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Paused,
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopped => "stopped",
        })
    }
}

/// Why an exec into a container (`cpengine exec`, the shim's ExecSync) was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("reading the confinement of the container's init (pid {pid})")]
    Status { pid: i32, source: std::io::Error },
    #[error("the container's init (pid {pid}) status has no {field} line")]
    StatusField { pid: i32, field: &'static str },
    #[error(
        "the container runs under seccomp mode {mode}; cpengine cannot give an exec'd process \
         the same filter yet, so it refuses to run one without it"
    )]
    Seccomp { mode: u8 },
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an exec argument, variable or directory contains a NUL byte")]
    Nul,
    #[error("no command to run")]
    NoCommand,
}
