//! The standalone runtime's `Status` conditions, checked on every call (each check is cheap:
//! CRIU's version is cached by the engine, the rest are a lookup, a file and a namespace).
//!
//! * `RuntimeReady`: CRIU found and of a supported version (it answers VERSION), the runc binary
//!   found and executable, both state directories writable.
//! * `NetworkReady`: a pod network namespace can be made and its loopback brought up (what the
//!   pod holder does); pods get no other network (no CNI), host-network pods always work.
//!
//! A failed condition carries the reason of its first failed check (CamelCase, as the kubelet
//! prints it) and a message naming every failed check.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::domain::Condition;

use super::StandaloneConfig;

/// Reasons of a false condition.
pub const CRIU_NOT_USABLE: &str = "CRIUNotUsable";
pub const RUNC_NOT_FOUND: &str = "RuncNotFound";
pub const STATE_NOT_WRITABLE: &str = "StateRootNotWritable";
pub const POD_NETWORK_UNAVAILABLE: &str = "PodNetworkUnavailable";

/// What a ready NetworkReady says about the network pods get.
const NETWORK_NOTE: &str = "host network; pod network namespaces have loopback only (no CNI)";

/// Both conditions, checked now.
pub async fn conditions(cfg: &StandaloneConfig) -> Vec<Condition> {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    if let Err(e) = cpengine::Engine::new().await {
        problems.push((CRIU_NOT_USABLE, e.to_string()));
    }
    if let Err(m) = find_program(&cfg.runc) {
        problems.push((RUNC_NOT_FOUND, m));
    }
    for dir in [&cfg.state.lib, &cfg.state.run] {
        if let Err(e) = probe_writable(dir) {
            problems.push((
                STATE_NOT_WRITABLE,
                format!("state directory {} is not writable: {e}", dir.display()),
            ));
        }
    }
    let runtime = condition("RuntimeReady", &problems, "");
    let net = match tokio::task::spawn_blocking(probe_pod_network).await {
        Ok(r) => r,
        Err(e) => Err(format!("the network probe failed: {e}")),
    };
    let net_problems: Vec<_> = net
        .err()
        .map(|m| (POD_NETWORK_UNAVAILABLE, m))
        .into_iter()
        .collect();
    let network = condition("NetworkReady", &net_problems, NETWORK_NOTE);
    vec![runtime, network]
}

fn condition(kind: &str, problems: &[(&'static str, String)], ok_message: &str) -> Condition {
    match problems.first() {
        None => Condition {
            kind: kind.into(),
            status: true,
            reason: String::new(),
            message: ok_message.into(),
        },
        Some((reason, _)) => Condition {
            kind: kind.into(),
            status: false,
            reason: (*reason).into(),
            message: problems
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

/// The executable `program` names: a path, or a name looked up in `$PATH` as exec does.
pub fn find_program(program: &Path) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_path_buf())
        } else {
            Err(format!(
                "runc binary {} not found or not executable",
                program.display()
            ))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| {
            format!(
                "{} not found in PATH ({})",
                program.display(),
                path.to_string_lossy()
            )
        })
}

/// Creates, writes and removes a probe file in `dir`.
fn probe_writable(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let probe = dir.join(format!(".status-probe-{}", rand::random::<u64>()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    let written = f.write_all(b"ok").and_then(|()| f.sync_all());
    drop(f);
    let removed = std::fs::remove_file(&probe);
    written.and(removed)
}

/// Makes a network namespace in a thread of its own and brings its loopback up, as the pod
/// holder does; the namespace goes away with the thread.
fn probe_pod_network() -> Result<(), String> {
    std::thread::Builder::new()
        .name("netns-probe".into())
        .spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("cannot create a pod network namespace: {e}"))?;
            crate::holder::loopback_up()
                .map_err(|e| format!("cannot bring up loopback in a pod network namespace: {e}"))
        })
        .map_err(|e| format!("spawning the network probe: {e}"))?
        .join()
        .map_err(|_| "the network probe panicked".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_by_path_or_in_path() {
        assert!(find_program(Path::new("/bin/sh")).is_ok());
        assert!(find_program(Path::new("sh")).is_ok());
        let e = find_program(Path::new("/nonexistent/runc")).unwrap_err();
        assert!(e.contains("/nonexistent/runc"), "{e}");
        let e = find_program(Path::new("no-such-program-cpengine")).unwrap_err();
        assert!(e.contains("not found in PATH"), "{e}");
        // A directory is not a program.
        assert!(find_program(Path::new("/tmp")).is_err());
    }

    #[test]
    fn a_false_condition_names_its_first_reason_and_every_problem() {
        let c = condition(
            "RuntimeReady",
            &[
                (RUNC_NOT_FOUND, "a".into()),
                (STATE_NOT_WRITABLE, "b".into()),
            ],
            "",
        );
        assert!(!c.status);
        assert_eq!(c.reason, RUNC_NOT_FOUND);
        assert_eq!(c.message, "a; b");
        let ok = condition("NetworkReady", &[], NETWORK_NOTE);
        assert!(ok.status && ok.reason.is_empty());
    }

    #[test]
    fn the_state_probe_leaves_nothing_and_fails_where_it_cannot_write() {
        let d = tempfile::tempdir().unwrap();
        probe_writable(d.path()).unwrap();
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        assert!(probe_writable(&d.path().join("missing")).is_err());
    }
}
