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
