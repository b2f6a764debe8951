//! Errors of the CRIU conversation, with everything needed to understand a failure: the
//! request type, CRIU's errno and first error line, and an excerpt of its log file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use criu_proto::rpc::CriuReqType;

/// Lines of CRIU's log quoted at most.
const LOG_TAIL_LINES: usize = 12;
/// Error lines of CRIU's log quoted at most.
const LOG_ERROR_LINES: usize = 8;

/// A failure talking to CRIU or reported by it.
#[derive(Debug, thiserror::Error)]
pub enum CriuError {
    #[error("starting {} swrk", binary.display())]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    #[error("{} request: socket error", req_name(*req_type))]
    Socket {
        req_type: CriuReqType,
        source: std::io::Error,
    },
    #[error("{} request: criu closed the connection{}{}{}", req_name(*req_type),
        status.map(|s| format!(" ({s})")).unwrap_or_default(),
        if stderr.trim().is_empty() { String::new() } else { format!("; stderr: {}", stderr.trim()) },
        log.as_ref().map(|l| format!("\n{l}")).unwrap_or_default())]
    Closed {
        req_type: CriuReqType,
        status: Option<ExitStatus>,
        stderr: String,
        log: Option<Box<LogExcerpt>>,
    },
    #[error("{} request: malformed reply from criu: {reason}", req_name(*req_type))]
    BadReply {
        req_type: CriuReqType,
        reason: String,
    },
    #[error("{} request: criu replied with type {}", req_name(*expected), type_name(*got))]
    UnexpectedReply { expected: CriuReqType, got: i32 },
    // `cr_errmsg` is only the first error line CRIU logged (often a harmless one), so when the
    // log is readable its error lines are shown instead.
    #[error("{} request failed{}{}", req_name(*req_type),
        errno.filter(|e| *e != 0).map(|e| format!(" (errno {e}: {})", std::io::Error::from_raw_os_error(e))).unwrap_or_default(),
        match (log, errmsg) {
            (Some(l), _) => format!("\n{l}"),
            (None, Some(m)) => format!(": {m}"),
            (None, None) => String::new(),
        })]
    Failed {
        req_type: CriuReqType,
        errno: Option<i32>,
        errmsg: Option<String>,
        log: Option<Box<LogExcerpt>>,
    },
    #[error("{} request: no reply from criu within {after:?}; criu was killed", req_name(*req_type))]
    Timeout {
        req_type: CriuReqType,
        after: Duration,
    },
    #[error("starting the lazy-pages daemon: it {reason}{}", log.as_ref().map(|l| format!("\n{l}")).unwrap_or_default())]
    LazyPages {
        reason: String,
        log: Option<Box<LogExcerpt>>,
    },
}

impl CriuError {
    /// The request that failed, if the error concerns one.
    pub fn req_type(&self) -> Option<CriuReqType> {
        match self {
            Self::Spawn { .. } | Self::LazyPages { .. } => None,
            Self::Socket { req_type, .. }
            | Self::Closed { req_type, .. }
            | Self::BadReply { req_type, .. }
            | Self::Failed { req_type, .. }
            | Self::Timeout { req_type, .. } => Some(*req_type),
            Self::UnexpectedReply { expected, .. } => Some(*expected),
        }
    }

    /// CRIU's errno for the failure (`cr_errno`), when it gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Failed { errno, .. } => errno.filter(|e| *e != 0),
            _ => None,
        }
    }

    /// The log excerpt attached to the error.
    pub fn log(&self) -> Option<&LogExcerpt> {
        match self {
            Self::Failed { log, .. } | Self::Closed { log, .. } | Self::LazyPages { log, .. } => {
                log.as_deref()
            }
            _ => None,
        }
    }
}

fn req_name(t: CriuReqType) -> &'static str {
    t.as_str_name()
}

fn type_name(t: i32) -> String {
    CriuReqType::try_from(t).map_or_else(
        |_| format!("unknown ({t})"),
        |t| t.as_str_name().to_string(),
    )
}

/// The parts of a CRIU log that explain a failure: its error lines and its last lines.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LogExcerpt {
    pub path: PathBuf,
    pub errors: Vec<String>,
    pub tail: Vec<String>,
}

impl LogExcerpt {
    /// Reads the excerpt from a log file; `None` if there is no readable log.
    pub fn read(path: &Path) -> Option<Box<Self>> {
        let text = std::fs::read(path).ok()?;
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let errors: Vec<String> = lines
            .iter()
            .filter(|l| l.contains("Error") || l.contains("BUG"))
            .map(|l| l.to_string())
            .collect();
        let errors = errors[errors.len().saturating_sub(LOG_ERROR_LINES)..].to_vec();
        let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..]
            .iter()
            .map(|l| l.to_string())
            .collect();
        Some(Box::new(Self {
            path: path.to_path_buf(),
            errors,
            tail,
        }))
    }
}

impl fmt::Display for LogExcerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "criu log {}:", self.path.display())?;
        if !self.errors.is_empty() {
            writeln!(f, "  errors:")?;
            for l in &self.errors {
                writeln!(f, "    {l}")?;
            }
        }
        writeln!(f, "  last lines:")?;
        for (i, l) in self.tail.iter().enumerate() {
            if i + 1 == self.tail.len() {
                write!(f, "    {l}")?;
            } else {
                writeln!(f, "    {l}")?;
            }
        }
        Ok(())
    }
}
