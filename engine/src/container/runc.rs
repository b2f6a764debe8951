//! The parts of runc's container state (`<root>/<id>/state.json`, written by runc's
//! libcontainer) that checkpointing needs. Decoded leniently: unknown fields are ignored and
//! every list defaults to empty, so state written by other runc versions still loads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct RuncState {
    pub id: String,
    pub init_process_pid: i32,
    /// Start time of the init process (field 22 of /proc/PID/stat), to detect pid reuse.
    #[serde(default)]
    pub init_process_start: u64,
    #[serde(default)]
    pub created: String,
    pub config: RuncConfig,
    /// Controller ("" for the unified hierarchy) → cgroup directory.
    #[serde(default)]
    pub cgroup_paths: BTreeMap<String, PathBuf>,
    /// `NEWNET`, `NEWPID`, … → /proc/PID/ns/… path.
    #[serde(default)]
    pub namespace_paths: BTreeMap<String, PathBuf>,
    /// What fds 0, 1, 2 of the init process were when it started (`pipe:[123]`, `/dev/null`).
    #[serde(default)]
    pub external_descriptors: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuncConfig {
    pub rootfs: PathBuf,
    #[serde(default)]
    pub mounts: Vec<RuncMount>,
    #[serde(default)]
    pub devices: Vec<RuncDevice>,
    #[serde(default)]
    pub namespaces: Vec<RuncNamespace>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub mask_paths: Vec<String>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub labels: Vec<String>,
}

impl RuncConfig {
    /// The bundle directory runc recorded (`bundle=` label).
    pub fn bundle(&self) -> Option<PathBuf> {
        self.labels
            .iter()
            .find_map(|l| l.strip_prefix("bundle="))
            .map(PathBuf::from)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuncMount {
    #[serde(default)]
    pub source: String,
    pub destination: String,
    /// Filesystem type (`bind`, `proc`, `cgroup`, …).
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub flags: u64,
}

impl RuncMount {
    /// MS_BIND.
    pub fn is_bind(&self) -> bool {
        self.device == "bind" || self.flags & libc::MS_BIND != 0
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuncDevice {
    pub path: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RuncNamespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: String,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(Option::<Vec<String>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_fields_checkpointing_needs() {
        let json = r#"{
          "id": "ctr1", "init_process_pid": 31933, "init_process_start": 145533,
          "created": "2026-11-22T11:02:31.307748622Z",
          "config": {
            "rootfs": "/b/rootfs", "no_pivot_root": false,
            "mounts": [{"source": "proc", "destination": "/proc", "device": "proc", "flags": 0},
                       {"source": "/data", "destination": "/data", "device": "bind", "flags": 20480}],
            "devices": [{"type": 99, "major": 1, "minor": 3, "path": "/dev/null"}],
            "namespaces": [{"type": "NEWNET", "path": "/var/run/netns/x"}, {"type": "NEWPID", "path": ""}],
            "mask_paths": null, "labels": ["bundle=/b"]
          },
          "cgroup_paths": {"": "/sys/fs/cgroup/unified/ctr1", "freezer": "/sys/fs/cgroup/freezer/ctr1"},
          "namespace_paths": {"NEWNET": "/proc/31933/ns/net"},
          "external_descriptors": ["/dev/null", "pipe:[60006]", "pipe:[60006]"]
        }"#;
        let s: RuncState = serde_json::from_str(json).unwrap();
        assert_eq!(s.init_process_pid, 31933);
        assert_eq!(s.config.bundle(), Some(PathBuf::from("/b")));
        assert!(!s.config.mounts[0].is_bind());
        assert!(s.config.mounts[1].is_bind());
        assert!(s.config.mask_paths.is_empty());
        assert_eq!(s.config.namespaces[0].path, "/var/run/netns/x");
        assert_eq!(
            s.cgroup_paths["freezer"],
            PathBuf::from("/sys/fs/cgroup/freezer/ctr1")
        );
        assert_eq!(s.external_descriptors[1], "pipe:[60006]");
    }
}
