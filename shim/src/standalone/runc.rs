//! The few `runc` commands the standalone runtime uses, under its own runc root.
//!
//! `create` runs with the container's stdio (pipes to the log relay), so runc's own messages
//! go to a `--log` file that is read back when it fails; every other command's stderr is
//! captured.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::error::{Result, ShimError};

/// runc commands get this long before they are killed (runc itself never takes this long; a
/// hung runc must not hang the CRI call).
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);

/// runc under a given state root.
#[derive(Debug, Clone)]
pub struct Runc {
    pub bin: PathBuf,
    pub root: PathBuf,
}

/// What `runc state` reports.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RuncStatus {
    pub status: String,
    #[serde(default)]
    pub pid: i32,
}

impl Runc {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root);
        c.kill_on_drop(true);
        c
    }

    async fn run(&self, op: &'static str, id: &str, mut cmd: Command) -> Result<Vec<u8>> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|source| ShimError::Spawn {
            what: "runc",
            source,
        })?;
        let out = tokio::time::timeout(RUNC_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| ShimError::Runc {
                op,
                id: id.to_string(),
                detail: format!("no answer within {RUNC_TIMEOUT:?}"),
            })?
            .map_err(|source| ShimError::Spawn {
                what: "runc",
                source,
            })?;
        if !out.status.success() {
            return Err(ShimError::Runc {
                op,
                id: id.to_string(),
                detail: detail(&String::from_utf8_lossy(&out.stderr), out.status),
            });
        }
        Ok(out.stdout)
    }

    /// `runc create`: the container's init waits for `start`. Its stdin is /dev/null, stdout
    /// and stderr the given pipe ends. Returns the init pid.
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        stdout: OwnedFd,
        stderr: OwnedFd,
        log: &Path,
    ) -> Result<i32> {
        let pid_file = bundle.join("init.pid");
        let mut cmd = self.cmd();
        cmd.arg("--log")
            .arg(log)
            .args(["--log-format", "json", "create", "--bundle"])
            .arg(bundle)
            .arg("--pid-file")
            .arg(&pid_file)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().map_err(|source| ShimError::Spawn {
            what: "runc create",
            source,
        })?;
        // Our copies of the pipe ends went into the Command, which we drop now, so that only
        // runc (until it exits) and the container hold them.
        drop(cmd);
        let status = tokio::time::timeout(RUNC_TIMEOUT, child.wait())
            .await
            .map_err(|_| ShimError::Runc {
                op: "create",
                id: id.to_string(),
                detail: format!("no answer within {RUNC_TIMEOUT:?}"),
            })?
            .map_err(|source| ShimError::Spawn {
                what: "runc create",
                source,
            })?;
        if !status.success() {
            return Err(ShimError::Runc {
                op: "create",
                id: id.to_string(),
                detail: detail(&log_errors(log), status),
            });
        }
        let text = std::fs::read_to_string(&pid_file)
            .map_err(ShimError::state("reading runc's pid file", &pid_file))?;
        text.trim().parse().map_err(|_| ShimError::Runc {
            op: "create",
            id: id.to_string(),
            detail: format!("pid file holds {text:?}"),
        })
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let mut c = self.cmd();
        c.args(["start", id]);
        self.run("start", id, c).await.map(drop)
    }

    /// Sends `signal` (a name such as `TERM`) to the init, or with `all` to every process.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<()> {
        let mut c = self.cmd();
        c.arg("kill");
        if all {
            c.arg("--all");
        }
        c.args([id, signal]);
        self.run("kill", id, c).await.map(drop)
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<()> {
        let mut c = self.cmd();
        c.arg("delete");
        if force {
            c.arg("--force");
        }
        c.arg(id);
        self.run("delete", id, c).await.map(drop)
    }

    pub async fn state(&self, id: &str) -> Result<RuncStatus> {
        let mut c = self.cmd();
        c.args(["state", id]);
        let out = self.run("state", id, c).await?;
        serde_json::from_slice(&out).map_err(|e| ShimError::Runc {
            op: "state",
            id: id.to_string(),
            detail: format!("unreadable answer: {e}"),
        })
    }

    /// Whether runc knows the container (its state directory exists).
    pub fn exists(&self, id: &str) -> bool {
        self.root.join(id).join("state.json").is_file()
    }

    /// A `runc exec` of `args` in container `id` writing the process pid to `pid_file`.
    pub fn exec_command(&self, id: &str, args: &[String], pid_file: &Path) -> Command {
        let mut c = self.cmd();
        c.args(["exec", "--pid-file"])
            .arg(pid_file)
            .arg(id)
            .args(args);
        c
    }
}

fn detail(stderr: &str, status: std::process::ExitStatus) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        format!("exited with {status}")
    } else {
        s.lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The error messages of a runc JSON log.
fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let msgs: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .collect();
    if msgs.is_empty() {
        text.lines().rev().take(3).collect::<Vec<_>>().join("; ")
    } else {
        msgs.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_log_errors_are_extracted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("runc.log");
        std::fs::write(
            &p,
            "{\"level\":\"warning\",\"msg\":\"meh\",\"time\":\"t\"}\n{\"level\":\"error\",\"msg\":\"exec: \\\"nope\\\": executable file not found in $PATH\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(
            log_errors(&p),
            "exec: \"nope\": executable file not found in $PATH"
        );
    }
}
