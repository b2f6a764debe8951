//! `ExecSync` and container statistics.
//!
//! Runc containers are entered with `runc exec`, which applies the container's own process
//! settings. Restored containers have no runc state; they are entered the same way by the
//! engine ([`cpengine::container::exec`]): the container's cgroups, namespaces, capabilities
//! and no_new_privs, with the user, directory and environment of the CRI request.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::domain::*;
use crate::error::{Result, ShimError};

use super::store::{CtrKind, CtrRecord, Phase};
use super::{ImageBackend, Standalone};

/// Output kept per stream (the kubelet's own limit for exec output).
const MAX_OUTPUT: u64 = 16 << 20;

impl<I: ImageBackend> Standalone<I> {
    pub(super) async fn exec_sync_impl(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> Result<ExecResult> {
        let id = self.store.ctr_id(id)?;
        let rec = self.refresh(&id)?;
        if rec.phase != Phase::Started {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let pid_file = self
            .store
            .ctr_run_dir(&id)
            .join(format!("exec-{:08x}.pid", rand::random::<u32>()));
        let command = match rec.kind {
            CtrKind::Runc => self.runc.exec_command(&id, &cmd, &pid_file),
            CtrKind::Restored => {
                let cgroups = self
                    .engine_container(&rec)?
                    .cgroup_paths
                    .into_values()
                    .collect();
                confined_command(&rec, cgroups, &cmd, &pid_file)?
            }
        };
        let result = run_captured(command, timeout, &pid_file).await;
        let _ = std::fs::remove_file(&pid_file);
        result.map_err(|e| match e {
            ShimError::DeadlineExceeded(_) => ShimError::DeadlineExceeded(format!(
                "exec in container {id} did not finish within {:?}",
                timeout.unwrap_or_default()
            )),
            e => e,
        })
    }

    pub(super) async fn stats_impl(&self, id: &str) -> Result<ContainerStats> {
        let id = self.store.ctr_id(id)?;
        let rec = self.refresh(&id)?;
        let mut s = ContainerStats {
            id: rec.id.clone(),
            name: rec.spec.name.clone(),
            attempt: rec.spec.attempt,
            labels: rec.spec.labels.clone(),
            annotations: rec.spec.annotations.clone(),
            timestamp: now_ns(),
            writable_layer_mountpoint: rec.upper.display().to_string(),
            ..Default::default()
        };
        if rec.phase == Phase::Started
            && let Ok(ctr) = self.engine_container(&rec)
        {
            let cg = &ctr.cgroup_paths;
            let read = |p: &Path| std::fs::read_to_string(p).ok();
            if let Some(d) = cg.get("cpuacct").or_else(|| cg.get("cpu")) {
                s.cpu_usage_ns = read(&d.join("cpuacct.usage")).and_then(|v| v.trim().parse().ok());
            }
            if let Some(d) = cg.get("memory") {
                let usage: Option<u64> =
                    read(&d.join("memory.usage_in_bytes")).and_then(|v| v.trim().parse().ok());
                let inactive = read(&d.join("memory.stat"))
                    .and_then(|t| stat_value(&t, "total_inactive_file"))
                    .unwrap_or(0);
                s.memory_working_set = usage.map(|u| u.saturating_sub(inactive));
            }
            if let Some(d) = cg.get("") {
                if s.cpu_usage_ns.is_none() {
                    s.cpu_usage_ns = read(&d.join("cpu.stat"))
                        .and_then(|t| stat_value(&t, "usage_usec"))
                        .map(|u| u * 1000);
                }
                if s.memory_working_set.is_none() {
                    s.memory_working_set =
                        read(&d.join("memory.current")).and_then(|v| v.trim().parse().ok());
                }
            }
        }
        let upper = rec.upper.clone();
        s.writable_layer_bytes = tokio::task::spawn_blocking(move || du(&upper)).await.ok();
        Ok(s)
    }
}

/// A restored container's exec, confined like `runc exec` by the engine
/// ([`cpengine::container::exec`]): its cgroups (from cpengine's record), namespaces,
/// capabilities and no_new_privs; the user, working directory and environment of the live
/// CRI request (never the checkpoint's `spec.dump`).
fn confined_command(
    rec: &CtrRecord,
    cgroups: Vec<std::path::PathBuf>,
    cmd: &[String],
    pid_file: &Path,
) -> Result<Command> {
    let pid = rec.pid.ok_or_else(|| {
        ShimError::FailedPrecondition(format!("container {} has no process", rec.id))
    })?;
    let no_image = crate::domain::ImageConfig::default();
    let env = super::spec::resolve_env(&rec.spec, &no_image, "")
        .into_iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e, String::new()),
        })
        .collect();
    let sec = &rec.spec.security;
    let user = if sec.run_as_user.is_some() || !sec.run_as_username.is_empty() {
        let u = super::spec::resolve_user(&rec.spec, &no_image, &rec.rootfs)?;
        let mut groups = u.additional;
        groups.extend(
            sec.supplemental_groups
                .iter()
                .filter_map(|g| u32::try_from(*g).ok()),
        );
        Some(cpengine::container::exec::ExecUser {
            uid: u.uid,
            gid: u.gid,
            groups,
        })
    } else {
        None
    };
    let req = cpengine::container::exec::ExecRequest {
        pid,
        cgroups,
        args: cmd.to_vec(),
        env,
        cwd: rec.spec.working_dir.clone(),
        user,
        pid_file: Some(pid_file.to_path_buf()),
    };
    let c = cpengine::container::exec::command(&req).map_err(|e| match e {
        cpengine::container::exec::ExecError::Seccomp { .. } => {
            ShimError::FailedPrecondition(e.to_string())
        }
        e => ShimError::Internal(format!("preparing the exec: {e}")),
    })?;
    Ok(Command::from(c))
}

/// Runs a command with captured stdout/stderr (each capped), killing it and the process whose
/// pid it wrote to `pid_file` when `timeout` passes.
async fn run_captured(
    mut cmd: Command,
    timeout: Option<Duration>,
    pid_file: &Path,
) -> Result<ExecResult> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| ShimError::Spawn {
        what: "the exec process",
        source,
    })?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let work = async {
        let (o, e, st) = tokio::join!(read_capped(&mut out), read_capped(&mut err), child.wait());
        (o, e, st)
    };
    let finished = match timeout {
        Some(t) => tokio::time::timeout(t, work).await.ok(),
        None => Some(work.await),
    };
    let Some((stdout, stderr, status)) = finished else {
        // Kill the exec'd process first and let its parent (runc exec, nsenter) reap it and
        // exit: killing the parent first would orphan the process, and an unreaped process
        // inside the container's pid namespace keeps the container from ever dying.
        if let Some(pid) = std::fs::read_to_string(pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        return Err(ShimError::DeadlineExceeded("exec timed out".into()));
    };
    let status = status.map_err(|source| ShimError::Spawn {
        what: "the exec process",
        source,
    })?;
    use std::os::unix::process::ExitStatusExt;
    let exit_code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255);
    Ok(ExecResult {
        stdout,
        stderr,
        exit_code,
    })
}

/// Reads a stream to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn read_capped(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = (MAX_OUTPUT as usize).saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    kept
}

fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Bytes of the regular files under `dir` (the writable layer's usage).
pub(super) fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_stat_values() {
        let t = "cache 10\ntotal_inactive_file 4096\n";
        assert_eq!(stat_value(t, "total_inactive_file"), Some(4096));
        assert_eq!(stat_value(t, "nope"), None);
    }

    #[tokio::test]
    async fn captured_output_and_exit_code() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 3"]);
        let r = run_captured(c, Some(Duration::from_secs(5)), Path::new("/nonexistent"))
            .await
            .unwrap();
        assert_eq!(r.stdout, b"out\n");
        assert_eq!(r.stderr, b"err\n");
        assert_eq!(r.exit_code, 3);
        let mut c = Command::new("sleep");
        c.arg("5");
        assert!(matches!(
            run_captured(
                c,
                Some(Duration::from_millis(100)),
                Path::new("/nonexistent")
            )
            .await,
            Err(ShimError::DeadlineExceeded(_))
        ));
    }
}
