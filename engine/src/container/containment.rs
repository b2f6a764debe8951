//! What keeps a restored container contained after CRIU resumes it: its device cgroup and the
//! live request's resource limits, written into the container's cgroups before CRIU runs.
//!
//! The restore joins the CRIU worker to the container's fresh cgroups and sends them as
//! `cg_root` with `manage_cgroups` in soft mode. In that mode CRIU writes the properties of
//! `cgroup.img` only into cgroups it creates itself; the container's own cgroups already
//! exist, so the rules set here stay as they are. A sub-cgroup CRIU creates below them can
//! only narrow them: a v1 device cgroup never allows more than its parent (the kernel refuses
//! such a write, which fails the restore).
//!
//! Cgroup v1 only for devices: on a host without the v1 `devices` controller (pure cgroup2)
//! the device rules need an eBPF program attached to the cgroup, which cpengine does not
//! build yet; such a restore is refused with [`ContainmentError::NoDeviceCgroup`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Character devices every container gets (`rwm`): null, zero, full, random, urandom, tty,
/// console, ptmx, and the pseudo-terminals (136:*).
pub const STANDARD_DEVICES: &[DeviceRule] = &[
    DeviceRule::chr(1, Some(3)),
    DeviceRule::chr(1, Some(5)),
    DeviceRule::chr(1, Some(7)),
    DeviceRule::chr(1, Some(8)),
    DeviceRule::chr(1, Some(9)),
    DeviceRule::chr(5, Some(0)),
    DeviceRule::chr(5, Some(1)),
    DeviceRule::chr(5, Some(2)),
    DeviceRule::chr(136, None),
];

/// One `devices.allow` rule with `rwm` access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRule {
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    /// `None` is every minor (`*`).
    pub minor: Option<u64>,
}

impl DeviceRule {
    pub const fn chr(major: u64, minor: Option<u64>) -> Self {
        Self {
            kind: 'c',
            major,
            minor,
        }
    }

    /// The rule for a device node on the host (`--device`, a request's device).
    pub fn of_path(path: &Path) -> Result<Self, ContainmentError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let md = std::fs::metadata(path).map_err(|source| ContainmentError::Device {
            path: path.to_path_buf(),
            source,
        })?;
        let kind = if md.file_type().is_char_device() {
            'c'
        } else if md.file_type().is_block_device() {
            'b'
        } else {
            return Err(ContainmentError::NotADevice {
                path: path.to_path_buf(),
            });
        };
        let rdev = md.rdev();
        Ok(Self {
            kind,
            major: nix::sys::stat::major(rdev),
            minor: Some(nix::sys::stat::minor(rdev)),
        })
    }

    /// The rule as `devices.allow` and `devices.list` write it.
    pub fn line(&self) -> String {
        match self.minor {
            Some(m) => format!("{} {}:{m} rwm", self.kind, self.major),
            None => format!("{} {}:* rwm", self.kind, self.major),
        }
    }
}

/// Resource limits of the live request (unset: the parent cgroup's).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resources {
    pub memory_limit: Option<i64>,
    pub cpu_shares: Option<u64>,
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    pub pids_limit: Option<i64>,
}

/// What the restored container is held to, from the live request only (never `spec.dump`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Containment {
    /// Devices beyond [`STANDARD_DEVICES`].
    pub devices: Vec<DeviceRule>,
    /// Every device allowed (a privileged container).
    pub all_devices: bool,
    pub resources: Resources,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainmentError {
    #[error(
        "this host has no cgroup v1 devices controller: device rules on cgroup2 need an eBPF \
         device program, which cpengine does not install yet, so the container is not restored"
    )]
    NoDeviceCgroup,
    #[error("device {}", path.display())]
    Device {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a device node", path.display())]
    NotADevice { path: PathBuf },
    #[error("writing {value:?} to {}", file.display())]
    Write {
        file: PathBuf,
        value: String,
        source: std::io::Error,
    },
    #[error("{} reads {got:?} after writing the container's device rules", file.display())]
    DevicesNotApplied { file: PathBuf, got: String },
}

fn write(file: PathBuf, value: String) -> Result<(), ContainmentError> {
    std::fs::write(&file, &value).map_err(|source| ContainmentError::Write {
        file,
        value,
        source,
    })
}

/// The directory of the hierarchy whose controller list includes `ctrl`.
fn dir_of<'a>(cgroups: &'a BTreeMap<String, PathBuf>, ctrl: &str) -> Option<&'a PathBuf> {
    cgroups
        .iter()
        .find(|(c, _)| c.split(',').any(|x| x == ctrl))
        .map(|(_, d)| d)
}

/// Writes the device rules and resource limits into the container's cgroups (`controllers
/// → directory`, as [`crate::cgroups::create`] returns them). Call before any task joins.
pub fn apply(cgroups: &BTreeMap<String, PathBuf>, c: &Containment) -> Result<(), ContainmentError> {
    apply_devices(cgroups, c)?;
    apply_resources(cgroups, &c.resources)
}

fn apply_devices(
    cgroups: &BTreeMap<String, PathBuf>,
    c: &Containment,
) -> Result<(), ContainmentError> {
    let Some(dir) = dir_of(cgroups, "devices") else {
        return Err(ContainmentError::NoDeviceCgroup);
    };
    if c.all_devices {
        return write(dir.join("devices.allow"), "a".into());
    }
    write(dir.join("devices.deny"), "a".into())?;
    for r in STANDARD_DEVICES.iter().chain(&c.devices) {
        write(dir.join("devices.allow"), r.line())?;
    }
    // The kernel narrows silently when the parent allows less; check what holds.
    let list = dir.join("devices.list");
    let got = std::fs::read_to_string(&list).map_err(|source| ContainmentError::Write {
        file: list.clone(),
        value: String::new(),
        source,
    })?;
    if got.lines().any(|l| l.trim() == "a *:* rwm") {
        return Err(ContainmentError::DevicesNotApplied { file: list, got });
    }
    Ok(())
}

fn apply_resources(
    cgroups: &BTreeMap<String, PathBuf>,
    r: &Resources,
) -> Result<(), ContainmentError> {
    // The unified hierarchy serves a controller only when it is enabled there (hybrid hosts
    // keep them on v1): the file exists exactly then.
    let unified = cgroups
        .get("")
        .filter(|d| d.join("cgroup.controllers").exists());
    let v2 = |f: &str| unified.map(|d| d.join(f)).filter(|p| p.exists());
    if let Some(m) = r.memory_limit {
        if let Some(d) = dir_of(cgroups, "memory") {
            write(d.join("memory.limit_in_bytes"), m.to_string())?;
        } else if let Some(f) = v2("memory.max") {
            write(f, m.to_string())?;
        }
    }
    if let Some(p) = r.pids_limit {
        let v = if p > 0 { p.to_string() } else { "max".into() };
        if let Some(d) = dir_of(cgroups, "pids") {
            write(d.join("pids.max"), v)?;
        } else if let Some(f) = v2("pids.max") {
            write(f, v)?;
        }
    }
    if let Some(d) = dir_of(cgroups, "cpu") {
        if let Some(s) = r.cpu_shares {
            write(d.join("cpu.shares"), s.to_string())?;
        }
        if let Some(p) = r.cpu_period {
            write(d.join("cpu.cfs_period_us"), p.to_string())?;
        }
        if let Some(q) = r.cpu_quota {
            write(d.join("cpu.cfs_quota_us"), q.to_string())?;
        }
    } else {
        if let (Some(s), Some(f)) = (r.cpu_shares, v2("cpu.weight")) {
            // The shares → weight mapping runtimes use ([2, 262144] onto [1, 10000]).
            let s = s.clamp(2, 262_144);
            write(f, (1 + ((s - 2) * 9999) / 262_142).to_string())?;
        }
        if let (Some(q), Some(f)) = (r.cpu_quota, v2("cpu.max")) {
            let period = r.cpu_period.unwrap_or(100_000);
            let q = if q > 0 { q.to_string() } else { "max".into() };
            write(f, format!("{q} {period}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_written_as_the_kernel_lists_them() {
        assert_eq!(DeviceRule::chr(1, Some(3)).line(), "c 1:3 rwm");
        assert_eq!(DeviceRule::chr(136, None).line(), "c 136:* rwm");
        let null = DeviceRule::of_path(Path::new("/dev/null")).unwrap();
        assert_eq!(null, DeviceRule::chr(1, Some(3)));
        assert!(matches!(
            DeviceRule::of_path(Path::new("/etc")),
            Err(ContainmentError::NotADevice { .. })
        ));
    }

    #[test]
    fn a_host_without_a_device_cgroup_is_refused() {
        let mut cg = BTreeMap::new();
        cg.insert(String::new(), PathBuf::from("/nonexistent"));
        assert!(matches!(
            apply(&cg, &Containment::default()),
            Err(ContainmentError::NoDeviceCgroup)
        ));
    }

    #[test]
    fn rules_and_limits_land_in_their_hierarchies() {
        let t = tempfile::tempdir().unwrap();
        let mut cg = BTreeMap::new();
        for c in ["devices", "memory", "pids", "cpu,cpuacct"] {
            let d = t.path().join(c);
            std::fs::create_dir(&d).unwrap();
            cg.insert(c.to_string(), d);
        }
        // Regular files stand in for the kernel's: each keeps the last write.
        std::fs::write(cg["devices"].join("devices.list"), "c 1:3 rwm\n").unwrap();
        let c = Containment {
            devices: vec![DeviceRule::chr(10, Some(200))],
            all_devices: false,
            resources: Resources {
                memory_limit: Some(1 << 28),
                cpu_shares: Some(512),
                cpu_quota: Some(50_000),
                cpu_period: None,
                pids_limit: Some(0),
            },
        };
        apply(&cg, &c).unwrap();
        let read = |c: &str, f: &str| std::fs::read_to_string(cg[c].join(f)).unwrap();
        assert_eq!(read("devices", "devices.deny"), "a");
        // The last allow is the request's own device.
        assert_eq!(read("devices", "devices.allow"), "c 10:200 rwm");
        assert_eq!(read("memory", "memory.limit_in_bytes"), "268435456");
        assert_eq!(read("pids", "pids.max"), "max");
        assert_eq!(read("cpu,cpuacct", "cpu.shares"), "512");
        assert_eq!(read("cpu,cpuacct", "cpu.cfs_quota_us"), "50000");
        // A device list still allowing everything is refused.
        std::fs::write(cg["devices"].join("devices.list"), "a *:* rwm\n").unwrap();
        assert!(matches!(
            apply(&cg, &c),
            Err(ContainmentError::DevicesNotApplied { .. })
        ));
    }
}
