//! Steps 3 and 5 of a restore: the container's cgroups, and the RESTORE request with runc's
//! options (external mounts mapped to their new sources, evasive devices, `rst_sibling`,
//! empty network namespace or the pod's), answered by CRIU; the restored init handed over
//! with its identity (pid and start time).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};

use crate::Engine;
use crate::container::RUNC_DEFAULT_DEVICES;
use crate::container::containment::Containment;
use crate::container::journal;
use crate::criu::{Ack, Notification};
use crate::error::{Error, Result};
use crate::options::{CgroupMode, ExtMount, InheritFd, RestoreOptions};
use crate::report::RestoreReport;

use super::bundle::Bundle;
use super::options::{CheckpointDir, ContainerRestoreOptions};
use super::stdio::{Relay, kill_relay};
use super::undo::Cleanup;

/// Creates the container's cgroups beside our own, journaled before they exist (a death while
/// they are made leaves none behind), with the device rules and limits written before any
/// task (the CRIU worker included) joins them.
pub(crate) fn cgroups(
    id: &str,
    containment: &Containment,
    journal: &mut journal::Entry,
    cleanup: &mut Cleanup,
) -> Result<BTreeMap<String, PathBuf>> {
    let cg_name = format!("cpengine-{id}");
    let planned =
        crate::cgroups::beside_self(&cg_name).map_err(|source| Error::Cgroups { source })?;
    journal
        .update(|e| e.cgroups = planned.clone())
        .map_err(Error::io("writing the restore journal"))?;
    let cgroups = crate::cgroups::create(&planned).map_err(|source| Error::Cgroups { source })?;
    cleanup.cgroups = cgroups.clone();
    crate::container::containment::apply(&cgroups, containment)?;
    Ok(cgroups)
}

/// The network namespace the restored container joins (the caller's `netns`, else a `net`
/// entry of `join_ns`); none when CRIU makes an empty one.
pub(crate) fn joined_netns(opts: &ContainerRestoreOptions) -> Option<PathBuf> {
    opts.netns.clone().or_else(|| {
        opts.join_ns
            .iter()
            .find(|j| j.ns == "net")
            .map(|j| j.path.clone())
    })
}

/// The RESTORE request's options: the checkpoint's images into `rootfs`, CRIU's work dir in
/// `<run_dir>/work`, the caller's CRIU flags, the tree's stdio `inherit`ed, into `cgroups`.
pub(crate) fn criu_options(
    ckpt: &CheckpointDir,
    opts: &ContainerRestoreOptions,
    run_dir: &Path,
    rootfs: &Path,
    bundle: &Bundle,
    cgroups: &BTreeMap<String, PathBuf>,
    inherit: Vec<InheritFd>,
) -> Result<RestoreOptions> {
    let mut ro = RestoreOptions::new(&ckpt.images_dir);
    ro.work_dir = Some(run_dir.join("work"));
    ro.inherit_fds = inherit;
    ro.root = Some(rootfs.to_path_buf());
    ro.evasive_devices = true;
    ro.flags = opts.flags.clone();
    ro.cgroups = Some(CgroupMode::Soft);
    ro.orphan_pts_master = true;
    ro.empty_net_ns = opts.netns.is_none();
    ro.check_pids = !bundle.has_pidns;
    ro.lazy_pages = opts.lazy_pages;
    ro.join_cgroups = cgroups.clone();
    ro.ext_mounts = restore_ext_mounts(&bundle.mounts, cgroups, &bundle.spec);
    ro.join_ns = opts.join_ns.clone();
    if let Some(netns) = &opts.netns {
        let f = std::fs::File::open(netns)
            .map_err(Error::io(format!("opening {}", netns.display())))?;
        ro.inherit_fds.push(InheritFd {
            key: "extRootNetNS".into(),
            fd: f.into(),
        });
    }
    Ok(ro)
}

/// The restored init: CRIU's report, its pid and its start time; and the relay of its output.
pub(crate) struct Restored {
    pub(crate) criu: RestoreReport,
    pub(crate) pid: i32,
    pub(crate) pid_start: u64,
    pub(crate) relay_pid: i32,
}

/// Sends RESTORE (the CRIU worker journaled) and takes over the restored init. Our copies of
/// the stdio pipes' write ends go once CRIU is done; a failure stops the `relay` (the undo
/// list kills whatever CRIU left of the tree).
pub(crate) async fn run(
    engine: &Engine,
    ro: RestoreOptions,
    journal: &mut journal::Entry,
    relay: Relay,
) -> Result<Restored> {
    let mut restored_pid = -1;
    let mut handler = |n: Notification| {
        if let Notification::PostRestore { pid } = n {
            restored_pid = pid;
        }
        Ack::ok()
    };
    let result = {
        let mut journaled = journal::Journaled {
            entry: journal,
            inner: &mut handler,
        };
        engine.restore_with(ro, &mut journaled).await
    };
    // Our copies of the pipes' write ends must go, or the relay never sees end of file.
    let relay_pid = relay.let_go();
    let criu = match result {
        Ok(r) => r,
        Err(e) => {
            kill_relay(relay_pid);
            return Err(e);
        }
    };
    let pid = if criu.pid > 0 { criu.pid } else { restored_pid };
    // The record's identity of the restored init: without its start time a later check
    // could take any process for it, so the restore fails (Cleanup kills the tree).
    let pid_start = match restored_start_time(pid) {
        Ok(s) => s,
        Err(e) => {
            kill_relay(relay_pid);
            return Err(e);
        }
    };
    Ok(Restored {
        criu,
        pid,
        pid_start,
        relay_pid,
    })
}

/// The start time of the restored init, or an error: a start time of 0 would match any
/// process.
fn restored_start_time(pid: i32) -> Result<u64> {
    match crate::proc::start_time(pid) {
        Some(s) if s > 0 => Ok(s),
        _ => Err(Error::io(format!(
            "reading the start time of the restored process {pid}"
        ))(std::io::Error::other(
            "no start time (the process is gone or /proc/<pid>/stat is unreadable)",
        ))),
    }
}

/// External mounts at restore: image name → new host source.
fn restore_ext_mounts(
    mounts: &[Mount],
    cgroups: &BTreeMap<String, PathBuf>,
    spec: &Spec,
) -> Vec<ExtMount> {
    let mut out: Vec<ExtMount> = Vec::new();
    let mut add = |k: String, v: String| {
        if !out.iter().any(|m| m.key == k) {
            out.push(ExtMount { key: k, value: v });
        }
    };
    for m in mounts {
        let opts = m.options().clone().unwrap_or_default();
        let ty = m.typ().clone().unwrap_or_default();
        let dest = m.destination().display().to_string();
        if ty == "bind" || opts.iter().any(|o| o == "bind" || o == "rbind") {
            if let Some(src) = m.source() {
                add(dest, src.display().to_string());
            }
        } else if ty == "cgroup" {
            // Each v1 hierarchy was bind-mounted at <dest>/<name>; point it at the new cgroup.
            for (ctrls, dir) in cgroups {
                if ctrls.is_empty() {
                    continue;
                }
                let name = ctrls.strip_prefix("name=").unwrap_or(ctrls);
                add(format!("{dest}/{name}"), dir.display().to_string());
            }
        }
    }
    let masked = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    if !masked.is_empty() {
        add("/dev/null".into(), "/dev/null".into());
    }
    let mut devices: Vec<String> = RUNC_DEFAULT_DEVICES.iter().map(|d| d.to_string()).collect();
    if let Some(devs) = spec.linux().as_ref().and_then(|l| l.devices().clone()) {
        devices.extend(devs.iter().map(|d| d.path().display().to_string()));
    }
    for d in devices {
        add(d.clone(), d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 15: a start time that cannot be read fails the restore (it used to
    /// be stored as 0, which matches any process).
    #[test]
    fn restored_start_time_is_never_zero() {
        let me = std::process::id() as i32;
        assert!(restored_start_time(me).unwrap() > 0);
        // Beyond any pid_max: no such process.
        let e = restored_start_time(i32::MAX).unwrap_err();
        assert!(e.to_string().contains("start time"), "{e}");
    }
}
