//! Managing containers cpengine restored: list, signal, delete (with full cleanup of the
//! rootfs mount, cgroups, relay and state).

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde::Serialize;

use super::state::StateRoot;
use super::{Container, ContainerError, Status};

/// One line of `cpengine ps`.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub id: String,
    pub pid: i32,
    pub status: Status,
    pub created: String,
    pub rootfs: PathBuf,
    pub log_path: Option<PathBuf>,
    pub restored_from: Option<String>,
}

/// Every container cpengine manages, with its live status.
pub fn list(state: &StateRoot) -> Vec<Summary> {
    state
        .container_ids()
        .into_iter()
        .filter_map(|id| Container::from_record(&state.container_record(&id)).ok())
        .map(|c| {
            let rec = c.record.clone().unwrap_or_else(|| unreachable_record(&c));
            Summary {
                status: c.status(),
                id: c.id,
                pid: c.init_pid,
                created: c.created,
                rootfs: c.rootfs,
                log_path: rec.log_path,
                restored_from: rec.restored_from,
            }
        })
        .collect()
}

fn unreachable_record(c: &Container) -> super::state::ContainerRecord {
    super::state::ContainerRecord {
        id: c.id.clone(),
        pid: c.init_pid,
        pid_start: c.init_start,
        created: c.created.clone(),
        bundle: c.bundle.clone(),
        rootfs: c.rootfs.clone(),
        lowers: vec![],
        upper: None,
        work: None,
        cgroup_paths: c.cgroup_paths.clone(),
        namespaces: vec![],
        stdio: c.stdio.clone(),
        log_path: None,
        relay_pid: None,
        restored_from: None,
        checkpoint_config: None,
    }
}

/// Loads a container cpengine manages.
pub fn load(state: &StateRoot, id: &str) -> Result<Container, ContainerError> {
    super::validate_id(id)?;
    let path = state.container_record(id);
    if !path.is_file() {
        return Err(ContainerError::NotFound {
            id: id.to_string(),
            searched: vec![state.containers_dir()],
        });
    }
    Container::from_record(&path)
}

/// Parses a signal name or number (`KILL`, `SIGTERM`, `9`).
pub fn parse_signal(s: &str) -> Option<Signal> {
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).ok();
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse().ok()
}

/// Sends `signal` to the container's init.
pub fn kill(state: &StateRoot, id: &str, signal: Signal) -> Result<(), ContainerError> {
    let c = load(state, id)?;
    if c.status() == Status::Stopped {
        return Err(ContainerError::NotRunning {
            id: id.to_string(),
            status: Status::Stopped,
        });
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.init_pid), signal).map_err(|e| {
        ContainerError::Invalid {
            id: id.to_string(),
            what: format!("sending {signal} to pid {}: {e}", c.init_pid),
        }
    })
}

/// Deletes a container: with `force` a running one is killed first, otherwise it must be
/// stopped. Unmounts its rootfs, removes its cgroups, state and writable layer.
pub async fn delete(state: &StateRoot, id: &str, force: bool) -> Result<(), ContainerError> {
    let c = load(state, id)?;
    let rec = c.record.clone().unwrap_or_else(|| unreachable_record(&c));
    if c.status() != Status::Stopped {
        if !force {
            return Err(ContainerError::Invalid {
                id: id.to_string(),
                what: "is running; stop it first or use --force".into(),
            });
        }
        if let Some(f) = c.freezer() {
            crate::cgroups::thaw(&f);
        }
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.init_pid), Signal::SIGKILL);
    }
    // Wait for every task of the container to be gone from its cgroups.
    let cgroups: std::collections::BTreeMap<String, PathBuf> = rec.cgroup_paths.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let _ = nix::sys::wait::waitpid(
            nix::unistd::Pid::from_raw(c.init_pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        let busy = cgroups.values().any(|d| {
            std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
        });
        let init_gone = crate::proc::task_state(c.init_pid).is_none_or(|s| s.state == 'Z');
        if (!busy && init_gone) || std::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = nix::mount::umount2(&rec.rootfs, nix::mount::MntFlags::MNT_DETACH);
    let left = crate::cgroups::remove_all(&cgroups);
    if !left.is_empty() {
        tracing::warn!(?left, "cgroups could not be removed");
    }
    let _ = std::fs::remove_dir_all(state.container_lib_dir(id));
    let _ = std::fs::remove_dir_all(state.container_run_dir(id));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("KILL"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("sigterm"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }
}
