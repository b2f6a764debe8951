//! The OCI runtime spec (runc's `config.json`) of a CRI container.
//!
//! * Process: arguments resolved Docker-style against the image config (the CRI `command`
//!   replaces the entrypoint, `args` the cmd; a `command` without `args` drops the image's cmd),
//!   environment = image env overridden by the CRI envs, working directory, user (CRI
//!   `run_as_user`/`run_as_group`, else the image's user looked up in the rootfs'
//!   `/etc/passwd`), Docker's default capability set with the CRI additions and removals,
//!   `RLIMIT_NOFILE` 1024 (this kind of host refuses more without `CAP_SYS_RESOURCE`).
//! * Namespaces: a private mount namespace; a private pid namespace unless the pod asks for the
//!   host's; network, IPC and UTS joined from the pod's holder by path, or the host's.
//! * Mounts: the usual `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`, `/sys`,
//!   `/sys/fs/cgroup`; the pod's `/etc/resolv.conf` and `/etc/hostname`; the CRI bind mounts
//!   (which replace a default at the same destination).
//! * Annotations: the CRI annotations, plus the keys checkpoint tools read to name the pod and
//!   image (`io.kubernetes.cri.*` as containerd writes them, and CRI-O's JSON-encoded
//!   `io.kubernetes.cri-o.Annotations`/`Labels` so CRI-O can restore our archives).

use std::path::Path;

use serde_json::{Value, json};

use crate::domain::{ContainerSpec, ImageConfig, Map, NsMode, Propagation};
use crate::error::{Result, ShimError};

use super::store::PodRecord;

/// Every capability this kernel generation knows (for privileged containers).
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The process arguments: entrypoint and cmd, overridden by the CRI command and args.
pub fn resolve_args(c: &ContainerSpec, img: &ImageConfig) -> Result<Vec<String>> {
    let (entry, cmd) = if !c.command.is_empty() {
        (c.command.clone(), c.args.clone())
    } else if !c.args.is_empty() {
        (img.entrypoint.clone(), c.args.clone())
    } else {
        (img.entrypoint.clone(), img.cmd.clone())
    };
    let args: Vec<String> = entry.into_iter().chain(cmd).collect();
    if args.is_empty() {
        return Err(ShimError::InvalidArgument(format!(
            "container {} has no command: the image sets neither entrypoint nor cmd and the request none",
            c.name
        )));
    }
    Ok(args)
}

/// The environment: the image's, overridden key by key by the CRI envs; a PATH if none.
pub fn resolve_env(c: &ContainerSpec, img: &ImageConfig, hostname: &str) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| match env.iter_mut().find(|(ek, _)| ek == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    };
    if !hostname.is_empty() {
        set("HOSTNAME", hostname);
    }
    for e in &img.env {
        let (k, v) = e.split_once('=').unwrap_or((e.as_str(), ""));
        set(k, v);
    }
    for (k, v) in &c.envs {
        set(k, v);
    }
    let mut out: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(0, DEFAULT_PATH.to_string());
    }
    out
}

/// The user: uid, gid and additional gids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional: Vec<u32>,
}

/// Resolves the container's user from the CRI security context, else the image's `user`
/// (`uid`, `name`, `uid:gid`, `name:group`), looking names up in the rootfs.
pub fn resolve_user(c: &ContainerSpec, img: &ImageConfig, rootfs: &Path) -> Result<User> {
    let s = &c.security;
    let (user_part, group_part) = if let Some(uid) = s.run_as_user {
        (uid.to_string(), s.run_as_group.map(|g| g.to_string()))
    } else if !s.run_as_username.is_empty() {
        (
            s.run_as_username.clone(),
            s.run_as_group.map(|g| g.to_string()),
        )
    } else if !img.user.is_empty() {
        let (u, g) = match img.user.split_once(':') {
            Some((u, g)) => (u.to_string(), Some(g.to_string())),
            None => (img.user.clone(), None),
        };
        (u, s.run_as_group.map(|g| g.to_string()).or(g))
    } else {
        ("0".to_string(), s.run_as_group.map(|g| g.to_string()))
    };
    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
    let group = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
    let (uid, pw_gid) = match user_part.parse::<u32>() {
        Ok(uid) => (
            uid,
            lookup(&passwd, |f| f[2] == user_part).and_then(|f| f[3].parse().ok()),
        ),
        Err(_) => {
            let f = lookup(&passwd, |f| f[0] == user_part).ok_or_else(|| {
                ShimError::InvalidArgument(format!(
                    "user {user_part:?} is not in the image's /etc/passwd"
                ))
            })?;
            (
                f[2].parse().map_err(|_| {
                    ShimError::InvalidArgument(format!("bad uid for {user_part} in /etc/passwd"))
                })?,
                f[3].parse().ok(),
            )
        }
    };
    let gid = match group_part {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&group, |f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    ShimError::InvalidArgument(format!(
                        "group {g:?} is not in the image's /etc/group"
                    ))
                })?,
        },
        None => pw_gid.unwrap_or(0),
    };
    let additional = s
        .supplemental_groups
        .iter()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    Ok(User {
        uid,
        gid,
        additional,
    })
}

/// The first colon-separated line of a passwd/group file (with at least 4 fields) that
/// matches.
fn lookup(text: &str, pred: impl Fn(&[&str]) -> bool) -> Option<Vec<&str>> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .find(|f| pred(f))
}

/// Everything [`build`] needs.
#[derive(Debug)]
pub struct SpecInput<'a> {
    pub id: &'a str,
    pub pod: &'a PodRecord,
    pub ctr: &'a ContainerSpec,
    pub image_name: &'a str,
    pub rootfs: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: User,
}

/// The container's pid namespace mode (its own setting, else the pod's).
pub fn pid_mode(c: &ContainerSpec, pod: &PodRecord) -> Result<NsMode> {
    let mode = c.security.pid_mode.unwrap_or(pod.spec.namespaces.pid);
    match mode {
        NsMode::Pod => Err(ShimError::Unimplemented(
            "a pid namespace shared by the pod",
        )),
        NsMode::Target => Err(ShimError::Unimplemented(
            "targeting another container's pid namespace",
        )),
        m => Ok(m),
    }
}

/// The OCI spec.
pub fn build(i: &SpecInput<'_>) -> Result<Value> {
    let c = i.ctr;
    let sec = &c.security;
    let caps: Vec<String> = if sec.privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        // The runtime default set: the same list the restore policy allows.
        let mut caps: Vec<String> = cpengine::policy::DEFAULT_CAPABILITIES
            .iter()
            .map(|c| c.to_string())
            .collect();
        let norm = |s: &String| {
            let u = s.to_ascii_uppercase();
            if u.starts_with("CAP_") {
                u
            } else {
                format!("CAP_{u}")
            }
        };
        if sec
            .drop_capabilities
            .iter()
            .any(|d| d.eq_ignore_ascii_case("ALL"))
        {
            caps.clear();
        }
        for d in &sec.drop_capabilities {
            let d = norm(d);
            caps.retain(|c| *c != d);
        }
        if sec
            .add_capabilities
            .iter()
            .any(|a| a.eq_ignore_ascii_case("ALL"))
        {
            caps = ALL_CAPS.iter().map(|s| s.to_string()).collect();
        } else {
            for a in &sec.add_capabilities {
                let a = norm(a);
                if !caps.contains(&a) {
                    caps.push(a);
                }
            }
        }
        caps
    };

    let mut namespaces = vec![json!({"type": "mount"})];
    if pid_mode(c, i.pod)? == NsMode::Container {
        namespaces.push(json!({"type": "pid"}));
    }
    if let Some(h) = &i.pod.holder {
        let holder = h.holder();
        for (on, kind, oci) in [
            (h.net, "net", "network"),
            (h.ipc, "ipc", "ipc"),
            (h.uts, "uts", "uts"),
        ] {
            if on {
                namespaces.push(json!({"type": oci, "path": holder.ns_path(kind)}));
            }
        }
    }

    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if sec.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", if sec.privileged { "rw" } else { "ro" }]}),
    ];
    let file_rw = if sec.readonly_rootfs { "ro" } else { "rw" };
    for (dest, src) in [
        ("/etc/resolv.conf", &i.pod.resolv_conf),
        ("/etc/hostname", &i.pod.hostname_file),
    ] {
        if let Some(src) = src {
            mounts.push(json!({"destination": dest, "type": "bind", "source": src, "options": ["rbind", "rprivate", file_rw]}));
        }
    }
    for m in &c.mounts {
        if !m.container_path.starts_with('/') || !m.host_path.starts_with('/') {
            return Err(ShimError::InvalidArgument(format!(
                "mount {} -> {} must use absolute paths",
                m.host_path, m.container_path
            )));
        }
        if std::fs::symlink_metadata(&m.host_path).is_err() {
            return Err(ShimError::InvalidArgument(format!(
                "mount source {} does not exist",
                m.host_path
            )));
        }
        let dest = m.container_path.trim_end_matches('/');
        mounts.retain(|x| x["destination"].as_str().map(|d| d.trim_end_matches('/')) != Some(dest));
        let prop = match m.propagation {
            Propagation::Private => "rprivate",
            Propagation::HostToContainer => "rslave",
            Propagation::Bidirectional => "rshared",
        };
        mounts.push(json!({
            "destination": m.container_path, "type": "bind", "source": m.host_path,
            "options": ["rbind", prop, if m.readonly { "ro" } else { "rw" }]
        }));
    }

    let r = &c.resources;
    let mut cpu = serde_json::Map::new();
    if r.cpu_shares > 0 {
        cpu.insert("shares".into(), json!(r.cpu_shares));
    }
    if r.cpu_quota > 0 {
        cpu.insert("quota".into(), json!(r.cpu_quota));
    }
    if r.cpu_period > 0 {
        cpu.insert("period".into(), json!(r.cpu_period));
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.insert("cpus".into(), json!(r.cpuset_cpus));
    }
    if !r.cpuset_mems.is_empty() {
        cpu.insert("mems".into(), json!(r.cpuset_mems));
    }
    let mut resources = json!({
        "devices": [{"allow": sec.privileged, "access": "rwm"}],
    });
    if !cpu.is_empty() {
        resources["cpu"] = Value::Object(cpu);
    }
    if r.memory_limit_in_bytes > 0 {
        resources["memory"] = json!({"limit": r.memory_limit_in_bytes});
    }
    let parent = if i.pod.spec.cgroup_parent.is_empty() {
        "/cpengine-shim".to_string()
    } else {
        i.pod.spec.cgroup_parent.trim_end_matches('/').to_string()
    };

    let mut linux = json!({
        "namespaces": namespaces,
        "resources": resources,
        "cgroupsPath": format!("{parent}/{}", i.id),
    });
    if !sec.privileged {
        // The paths the restore verifier requires masked and read-only: one list for both.
        linux["maskedPaths"] = json!(cpengine::policy::verify::MASKED_PATHS);
        linux["readonlyPaths"] = json!(cpengine::policy::verify::READONLY_PATHS);
    }

    let mut spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": i.user.uid, "gid": i.user.gid, "additionalGids": i.user.additional},
            "args": i.args,
            "env": i.env,
            "cwd": i.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": sec.no_new_privs,
        },
        "root": {"path": i.rootfs, "readonly": sec.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations(i),
        "linux": linux,
    });
    if r.oom_score_adj != 0 {
        spec["process"]["oomScoreAdj"] = json!(container_oom_score_adj(
            r.oom_score_adj,
            own_oom_score_adj(),
            may_lower_oom_scores()
        ));
    }
    Ok(spec)
}

/// The `oom_score_adj` runc gives the container: the kubelet's, within [-1000, 1000], and not
/// below ours where we may not lower scores (no CAP_SYS_RESOURCE: runc's write would fail and
/// the container with it; the kubelet's value is a ranking, not a requirement).
fn container_oom_score_adj(requested: i64, own: i64, may_lower: bool) -> i64 {
    let v = requested.clamp(-1000, 1000);
    if may_lower { v } else { v.max(own) }
}

fn own_oom_score_adj() -> i64 {
    std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Whether this process has CAP_SYS_RESOURCE in its effective set.
fn may_lower_oom_scores() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    cpengine::container::exec::confinement_of(std::process::id() as i32)
        .is_ok_and(|c| c.cap_eff & (1 << CAP_SYS_RESOURCE) != 0)
}

fn annotations(i: &SpecInput<'_>) -> Map {
    let md = &i.pod.spec.metadata;
    let mut a = i.ctr.annotations.clone();
    let json_map = |m: &Map| serde_json::to_string(m).unwrap_or_else(|_| "{}".into());
    for (k, v) in [
        ("io.kubernetes.cri.container-type", "container".to_string()),
        ("io.kubernetes.cri.container-name", i.ctr.name.clone()),
        ("io.kubernetes.cri.sandbox-id", i.pod.id.clone()),
        ("io.kubernetes.cri.sandbox-name", md.name.clone()),
        ("io.kubernetes.cri.sandbox-namespace", md.namespace.clone()),
        ("io.kubernetes.cri.sandbox-uid", md.uid.clone()),
        ("io.kubernetes.cri.image-name", i.image_name.to_string()),
        (
            "io.kubernetes.cri-o.Annotations",
            json_map(&i.ctr.annotations),
        ),
        ("io.kubernetes.cri-o.Labels", json_map(&i.ctr.labels)),
    ] {
        a.insert(k.to_string(), v);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MountSpec, PodSpec, PodState};

    fn img(entry: &[&str], cmd: &[&str]) -> ImageConfig {
        ImageConfig {
            entrypoint: entry.iter().map(|s| s.to_string()).collect(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ctr(command: &[&str], args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_the_docker_rules() {
        let i = img(&["/entry"], &["default"]);
        assert_eq!(
            resolve_args(&ctr(&[], &[]), &i).unwrap(),
            ["/entry", "default"]
        );
        assert_eq!(
            resolve_args(&ctr(&[], &["x"]), &i).unwrap(),
            ["/entry", "x"]
        );
        assert_eq!(resolve_args(&ctr(&["sh"], &[]), &i).unwrap(), ["sh"]);
        assert_eq!(
            resolve_args(&ctr(&["sh"], &["-c", "y"]), &i).unwrap(),
            ["sh", "-c", "y"]
        );
        assert!(matches!(
            resolve_args(&ctr(&[], &[]), &img(&[], &[])),
            Err(ShimError::InvalidArgument(_))
        ));
    }

    #[test]
    fn env_overrides_by_key_and_gets_a_path() {
        let mut c = ctr(&["sh"], &[]);
        c.envs = vec![("A".into(), "2".into())];
        let i = ImageConfig {
            env: vec!["A=1".into(), "B=x=y".into()],
            ..Default::default()
        };
        let env = resolve_env(&c, &i, "web");
        assert!(env[0].starts_with("PATH="));
        assert!(env.contains(&"A=2".to_string()));
        assert!(env.contains(&"B=x=y".to_string()));
        assert!(env.contains(&"HOSTNAME=web".to_string()));
    }

    #[test]
    fn users_resolve_through_passwd() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\nweb:x:100:101::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let mut c = ctr(&["sh"], &[]);
        let i = ImageConfig {
            user: "web".into(),
            ..Default::default()
        };
        assert_eq!(
            resolve_user(&c, &i, dir.path()).unwrap(),
            User {
                uid: 100,
                gid: 101,
                additional: vec![]
            }
        );
        let i2 = ImageConfig {
            user: "web:staff".into(),
            ..Default::default()
        };
        assert_eq!(resolve_user(&c, &i2, dir.path()).unwrap().gid, 50);
        c.security.run_as_user = Some(1000);
        assert_eq!(
            resolve_user(&c, &i, dir.path()).unwrap(),
            User {
                uid: 1000,
                gid: 0,
                additional: vec![]
            }
        );
        let i3 = ImageConfig {
            user: "nobody".into(),
            ..Default::default()
        };
        c.security.run_as_user = None;
        assert!(resolve_user(&c, &i3, dir.path()).is_err());
    }

    #[test]
    fn spec_joins_the_pod_and_replaces_default_mounts() {
        let pod = PodRecord {
            id: "pod1".into(),
            spec: PodSpec::default(),
            created_at: 0,
            state: PodState::Ready,
            holder: Some(super::super::store::HolderRecord {
                pid: 42,
                start: 1,
                net: false,
                ipc: true,
                uts: true,
            }),
            resolv_conf: Some("/p/resolv.conf".into()),
            hostname_file: None,
        };
        let mut c = ctr(&["sh"], &[]);
        c.mounts.push(MountSpec {
            container_path: "/dev/shm".into(),
            host_path: "/tmp".into(),
            readonly: true,
            ..Default::default()
        });
        c.security.pid_mode = Some(NsMode::Container);
        c.resources.oom_score_adj = 500;
        let input = SpecInput {
            id: "c1",
            pod: &pod,
            ctr: &c,
            image_name: "busybox:latest",
            rootfs: Path::new("/r"),
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/".into(),
            user: User {
                uid: 0,
                gid: 0,
                additional: vec![],
            },
        };
        let s = build(&input).unwrap();
        let ns = s["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.contains(&json!({"type": "ipc", "path": "/proc/42/ns/ipc"})));
        assert!(ns.contains(&json!({"type": "uts", "path": "/proc/42/ns/uts"})));
        assert!(ns.contains(&json!({"type": "pid"})));
        assert!(!ns.iter().any(|n| n["type"] == "network"), "host network");
        let shm: Vec<_> = s["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["destination"] == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1);
        assert_eq!(shm[0]["type"], "bind");
        assert_eq!(s["process"]["rlimits"][0]["hard"], 1024);
        assert_eq!(s["process"]["oomScoreAdj"], 500);
        // A Guaranteed pod's -997 where the shim may not lower scores: its own score instead.
        assert_eq!(container_oom_score_adj(-997, 0, true), -997);
        assert_eq!(container_oom_score_adj(-997, 0, false), 0);
        assert_eq!(container_oom_score_adj(-997, -500, false), -500);
        assert_eq!(container_oom_score_adj(5000, 0, false), 1000);
        assert_eq!(s["linux"]["cgroupsPath"], "/cpengine-shim/c1");
        assert_eq!(s["annotations"]["io.kubernetes.cri.sandbox-id"], "pod1");
        // The result is a valid OCI spec.
        let _: oci_spec::runtime::Spec = serde_json::from_value(s).unwrap();
    }
}
