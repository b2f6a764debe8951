//! Step 6 of a restore: the container's record in cpengine's state, so `ps`, `kill`, `delete`
//! and the next checkpoint find it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::container::state::ContainerRecord;
use crate::error::{Error, Result};

use super::bundle::Bundle;
use super::options::CheckpointDir;
use super::rootfs::Rootfs;
use super::runtime::Restored;

/// What the record of a restored container is made of.
pub(crate) struct Parts<'a> {
    pub(crate) id: &'a str,
    pub(crate) ckpt: &'a CheckpointDir,
    pub(crate) restored: &'a Restored,
    pub(crate) bundle: &'a Bundle,
    pub(crate) rootfs: &'a Rootfs,
    pub(crate) cgroups: &'a BTreeMap<String, PathBuf>,
    pub(crate) log_path: &'a Path,
}

/// Writes the record of the restored container at `path`.
pub(crate) fn save(path: &Path, p: Parts<'_>) -> Result<()> {
    let pid = p.restored.pid;
    let stdio = (0..3)
        .map(|fd| {
            std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        })
        .collect();
    let record = ContainerRecord {
        id: p.id.to_string(),
        pid,
        pid_start: p.restored.pid_start,
        created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        bundle: p.bundle.dir.clone(),
        rootfs: p.rootfs.path.clone(),
        lowers: p.rootfs.lowers.clone(),
        upper: Some(p.rootfs.upper.clone()),
        work: Some(p.rootfs.work.clone()),
        cgroup_paths: p
            .cgroups
            .iter()
            .map(|(c, dir)| (runc_cgroup_key(c), dir.clone()))
            .collect(),
        namespaces: p.bundle.namespaces.clone(),
        stdio,
        log_path: Some(p.log_path.to_path_buf()),
        relay_pid: Some(p.restored.relay_pid),
        restored_from: p.ckpt.source.clone(),
        checkpoint_config: p.ckpt.config.clone(),
    };
    record
        .save(path)
        .map_err(Error::io(format!("writing {}", path.display())))
}

/// runc's key for a cgroup hierarchy in `cgroup_paths` ("" for unified, the first controller
/// otherwise, e.g. `cpu` for `cpu,cpuacct`, `name=systemd` kept whole).
fn runc_cgroup_key(controllers: &str) -> String {
    if controllers.starts_with("name=") {
        return controllers.to_string();
    }
    controllers.split(',').next().unwrap_or("").to_string()
}
