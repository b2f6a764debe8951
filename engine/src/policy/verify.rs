//! Checks an extracted checkpoint's CRIU images against a [`RestorePolicy`] before CRIU runs.
//!
//! What is read, and what is refused (each refusal a [`PolicyViolation`] naming image and
//! field):
//!
//! - `core-<tid>.img`, every one in the directory: the thread's credentials. Each of the five
//!   capability sets must be within the policy's set; `no_new_privs` must be 1 when the policy
//!   requires it; the uid and gid quartets must be the request's when it fixes them; with
//!   seccomp required, the thread must be in filter (or strict) mode with its filter present
//!   in `seccomp.img`. Securebits are not refused: every bit only narrows what capabilities do.
//!   Supplementary groups must be among the request's (or its gid) when it fixes them; the LSM
//!   labels (`lsm_profile`, `lsm_sockcreate`) the request's, or empty/`unconfined` without
//!   one; `oom_score_adj` not below [`RestorePolicy::min_oom_score_adj`]; hard rlimits not
//!   above [`RestorePolicy::max_hard_rlimits`].
//! - `inventory.img`, `pstree.img` and each task's `core-<pid>.img` (its `ids`): a task whose
//!   net, ipc, uts, pid or mount namespace is the one CRIU itself ran in when it dumped
//!   (`inventory.root_ids`, the host's) is refused unless the policy allows that host
//!   namespace. The decision comes from these ids, never from file names. Ids compare as
//!   CRIU compares them (a missing field is 0): the root ids must name every one of those five
//!   namespaces non-zero, a task's must too, a task's user namespace must be CRIU's own (a new
//!   one would get the image's uid maps), and cgroup/time ids, when present, are non-zero.
//! - `mountpoints-*.img`: a mount the restore supplies (`ext_key`, or `ext_mount` keyed by its
//!   mountpoint) must be one the restore planned ([`VerifyPlan::ext_keys`]); any other mount
//!   is made by CRIU from the image with the image's flags and options, so its file system
//!   must be in [`ALLOWED_FS`] (never devtmpfs, a block-device file system or overlay), no
//!   `lowerdir=`/`upperdir=`/`workdir=` options, sysfs and cgroup mounts read-only, proc
//!   whole only once at `/proc` (parts of it only read-only). Unless privileged, every
//!   namespace must have the runtime's [`READONLY_PATHS`] read-only and [`MASKED_PATHS`]
//!   covered (`/dev/null` or tmpfs), each one the node's kernel has: from these defaults,
//!   never from `spec.dump`. Only the root task's namespace root comes from `--root`; other
//!   namespaces' roots are checked like any mount. Mountpoints and roots may not contain `..`.
//! - `tmpfs-*.tar.gz.img` (the contents CRIU untars as root into tmpfs mounts): only the
//!   standard character devices, no block devices, no set-id files, no `..` or absolute
//!   names or hard-link targets, at most [`RestorePolicy::max_tmpfs_bytes`] together. Every
//!   gzip member is decoded (as `tar --gzip` does), the file must end with the last member,
//!   and nothing but zeros may follow the tar terminator.
//! - `files.img` (and the older `reg-files.img`/`unixsk.img`): file and socket paths with a
//!   `..` component, and files on a mount the mount images do not have, are refused.
//! - `cgroup.img`: CRIU rewrites to the restore's cgroups only paths under a dumped
//!   directory and uses the others as written, so every set's paths must be at or below the
//!   root task's set, whose paths must be dumped directories (never a hierarchy's root); no
//!   `.`/`..` in paths or directory names, `cgns_prefix` on a component boundary, and
//!   property names from [`ALLOWED_CGROUP_PROPS`] (none with `/`).
//! - `spec.dump`'s `linux.devices` (the restore maps each to the host's node): only the
//!   standard set and the request's `--device`s (any `/dev` node when privileged).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use criu_proto::image::{Header, ImageReader, magic};
use criu_proto::images::{
    CgroupDirEntry, CgroupEntry, CoreEntry, CredsEntry, FileEntry, Fstype, InventoryEntry,
    MntEntry, PstreeEntry, RegFileEntry, SeccompEntry, SeccompMode, TaskKobjIdsEntry, UnixSkEntry,
};

use super::{CapSet, Namespace, RestorePolicy, SeccompRequirement};

/// File systems CRIU may mount from the images (everything else must be an external mount
/// the restore planned).
pub const ALLOWED_FS: &[Fstype] = &[
    Fstype::Proc,
    Fstype::Sysfs,
    Fstype::Tmpfs,
    Fstype::Devpts,
    Fstype::Mqueue,
    Fstype::Cgroup,
    Fstype::Cgroup2,
];

/// Paths a runtime makes read-only in every unprivileged container (each one that exists on
/// the node must be a read-only mount in every mount namespace of the checkpoint).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Paths a runtime masks in every unprivileged container (each one that exists on the node
/// must be covered by `/dev/null` or a tmpfs).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

const MS_RDONLY: u32 = 1;

/// The character devices a container's `/dev` has: name, major, minor.
pub const STANDARD_CHAR_DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
    ("console", 5, 1),
    ("ptmx", 5, 2),
];

/// Cap on the entries of one image read here (threads, mounts, files).
const MAX_ENTRIES: usize = 1 << 20;

/// A refused restore: the image (or `spec.dump`), the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("restore refused by policy: {image}: {field} {detail}")]
pub struct PolicyViolation {
    pub image: String,
    pub field: String,
    pub detail: String,
}

fn refuse(image: &str, field: impl Into<String>, detail: impl Into<String>) -> PolicyViolation {
    PolicyViolation {
        image: image.to_string(),
        field: field.into(),
        detail: detail.into(),
    }
}

/// What the restore itself will supply, known before the images are read.
#[derive(Debug, Clone, Default)]
pub struct VerifyPlan {
    /// Keys of the external mounts the restore maps (bind destinations, cgroup hierarchies,
    /// the standard devices and the request's).
    pub ext_keys: BTreeSet<String>,
}

impl VerifyPlan {
    /// The external mounts a container restore of `spec` plans: its bind destinations (their
    /// sources were decided by the bind plan), the cgroup hierarchies under its cgroup
    /// mounts, `/dev/null` for masked paths, the standard devices and the policy's.
    pub fn for_container(spec: &serde_json::Value, policy: &RestorePolicy) -> Self {
        let mut keys = BTreeSet::new();
        for m in spec["mounts"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let dest = m["destination"].as_str().unwrap_or_default();
            if crate::container::binds::is_bind(m) {
                keys.insert(dest.to_string());
            } else if m["type"].as_str() == Some("cgroup") {
                // One key per v1 hierarchy: `<dest>/<controllers>`, checked by prefix below.
                keys.insert(format!("{}/", dest.trim_end_matches('/')));
            }
        }
        keys.insert("/dev/null".into());
        for d in crate::container::RUNC_DEFAULT_DEVICES {
            keys.insert(d.to_string());
        }
        for d in &policy.devices {
            keys.insert(d.display().to_string());
        }
        Self { ext_keys: keys }
    }

    fn planned(&self, key: &str) -> bool {
        self.ext_keys.contains(key)
            || self
                .ext_keys
                .iter()
                .any(|k| k.ends_with('/') && key.starts_with(k.as_str()) && key.len() > k.len())
    }
}

/// What was checked (for the report).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Verification was skipped: the caller trusts the archive.
    pub trusted_unverified: bool,
    pub threads: usize,
    pub tasks: usize,
    pub mounts: usize,
    pub tmpfs_entries: usize,
    pub files: usize,
    pub cgroup_sets: usize,
}

/// Verifies `images_dir` (and the checkpoint's `spec`) against `policy`.
pub fn verify(
    images_dir: &Path,
    spec: &serde_json::Value,
    policy: &RestorePolicy,
    plan: &VerifyPlan,
) -> Result<Verdict, PolicyViolation> {
    if policy.trust_archive {
        return Ok(Verdict {
            trusted_unverified: true,
            ..Default::default()
        });
    }
    let mut v = Verdict::default();
    check_spec_devices(spec, policy)?;
    let names = list(images_dir)?;
    let filters = read_seccomp(images_dir, &names)?;
    for name in names.iter().filter(|n| is_numbered(n, "core-")) {
        let core: CoreEntry = read_one(images_dir, name, magic::CORE)?;
        check_thread(name, &core, policy, filters)?;
        v.threads += 1;
    }
    v.tasks = check_namespaces(images_dir, &names, policy)?;
    let mnt_ids = check_mounts(images_dir, &names, policy, plan, &mut v)?;
    v.tmpfs_entries = check_tmpfs(images_dir, &names, policy)?;
    v.files = check_files(images_dir, &names, &mnt_ids)?;
    v.cgroup_sets = check_cgroups(images_dir, &names)?;
    Ok(v)
}

fn list(dir: &Path) -> Result<Vec<String>, PolicyViolation> {
    let rd = std::fs::read_dir(dir).map_err(|e| {
        refuse(
            &dir.display().to_string(),
            "directory",
            format!("unreadable: {e}"),
        )
    })?;
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(|e| refuse(&dir.display().to_string(), "directory", e.to_string()))?;
        out.push(e.file_name().to_string_lossy().into_owned());
        if out.len() > MAX_ENTRIES {
            return Err(refuse(
                &dir.display().to_string(),
                "directory",
                "holds too many files",
            ));
        }
    }
    out.sort();
    Ok(out)
}

fn is_numbered(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .and_then(|r| r.strip_suffix(".img"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn open(dir: &Path, name: &str) -> Result<BufReader<File>, PolicyViolation> {
    // Opened without following a symlink: the images are the archive's.
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(name))
        .map(BufReader::new)
        .map_err(|e| refuse(name, "file", format!("cannot be opened: {e}")))
}

fn reader(
    dir: &Path,
    name: &str,
    header: Header,
) -> Result<ImageReader<BufReader<File>>, PolicyViolation> {
    ImageReader::new(open(dir, name)?, header)
        .map_err(|e| refuse(name, "header", format!("is not a CRIU image: {e}")))
}

fn read_all<M: criu_proto::prost::Message + Default>(
    dir: &Path,
    name: &str,
    header: Header,
) -> Result<Vec<M>, PolicyViolation> {
    let mut r = reader(dir, name, header)?;
    let mut out = Vec::new();
    loop {
        match r.next_entry::<M>() {
            Ok(Some(m)) => out.push(m),
            Ok(None) => return Ok(out),
            Err(e) => {
                return Err(refuse(
                    name,
                    format!("entry {}", out.len()),
                    format!("undecodable: {e}"),
                ));
            }
        }
        if out.len() > MAX_ENTRIES {
            return Err(refuse(name, "entries", "too many"));
        }
    }
}

fn read_one<M: criu_proto::prost::Message + Default>(
    dir: &Path,
    name: &str,
    m: u32,
) -> Result<M, PolicyViolation> {
    read_all::<M>(dir, name, Header::Common(m))?
        .into_iter()
        .next()
        .ok_or_else(|| refuse(name, "entry", "missing"))
}

/// Number of seccomp filters in `seccomp.img` (0 without one).
fn read_seccomp(dir: &Path, names: &[String]) -> Result<usize, PolicyViolation> {
    if !names.iter().any(|n| n == "seccomp.img") {
        return Ok(0);
    }
    Ok(
        read_all::<SeccompEntry>(dir, "seccomp.img", Header::Common(magic::SECCOMP))?
            .iter()
            .map(|e| e.seccomp_filters.len())
            .sum(),
    )
}

/// A capability set from CRIU's 32-bit words.
fn cap_bits(words: &[u32]) -> u64 {
    words
        .iter()
        .take(2)
        .enumerate()
        .fold(0, |m, (i, w)| m | (u64::from(*w) << (32 * i)))
        | if words.iter().skip(2).any(|w| *w != 0) {
            u64::MAX
        } else {
            0
        }
}

fn check_thread(
    image: &str,
    core: &CoreEntry,
    policy: &RestorePolicy,
    filters: usize,
) -> Result<(), PolicyViolation> {
    let tid = image
        .trim_start_matches("core-")
        .trim_end_matches(".img")
        .to_string();
    let thread = core
        .thread_core
        .as_ref()
        .ok_or_else(|| refuse(image, format!("thread {tid} thread_core"), "missing"))?;
    let creds = thread
        .creds
        .as_ref()
        .ok_or_else(|| refuse(image, format!("thread {tid} creds"), "missing"))?;
    check_creds(image, &tid, creds, policy)?;
    if let Some(tc) = &core.tc {
        if let Some(o) = tc.oom_score_adj
            && o < policy.min_oom_score_adj
        {
            return Err(refuse(
                image,
                format!("task {tid} tc.oom_score_adj"),
                format!(
                    "is {o}, below the request's {} (the node would kill others first)",
                    policy.min_oom_score_adj
                ),
            ));
        }
        if let Some(r) = &tc.rlimits {
            for (i, l) in r.rlimits.iter().enumerate() {
                let cap = policy.max_hard_rlimits.get(i).copied().unwrap_or(0);
                if l.max > cap || l.cur > l.max {
                    return Err(refuse(
                        image,
                        format!("task {tid} tc.rlimits[{i}]"),
                        format!(
                            "hard limit {} (soft {}) is above the node's {cap}",
                            l.max, l.cur
                        ),
                    ));
                }
            }
        }
    }
    if policy.seccomp == SeccompRequirement::Required {
        let mode = thread
            .seccomp_mode
            .or(core.tc.as_ref().and_then(|t| t.old_seccomp_mode));
        let filter = thread
            .seccomp_filter
            .or(core.tc.as_ref().and_then(|t| t.old_seccomp_filter))
            .unwrap_or(0);
        match mode.and_then(|m| SeccompMode::try_from(m).ok()) {
            Some(SeccompMode::Strict) => {}
            Some(SeccompMode::Filter) if filter >= 1 && (filter as usize) <= filters => {}
            Some(SeccompMode::Filter) => {
                return Err(refuse(
                    image,
                    format!("thread {tid} seccomp_filter"),
                    format!("names filter {filter}, seccomp.img has {filters}"),
                ));
            }
            _ => {
                return Err(refuse(
                    image,
                    format!("thread {tid} seccomp_mode"),
                    "is not filter mode, and the policy requires a seccomp filter",
                ));
            }
        }
    }
    Ok(())
}

fn check_creds(
    image: &str,
    tid: &str,
    c: &CredsEntry,
    policy: &RestorePolicy,
) -> Result<(), PolicyViolation> {
    let allowed: CapSet = policy.capabilities;
    for (set, words) in [
        ("cap_inh", &c.cap_inh),
        ("cap_prm", &c.cap_prm),
        ("cap_eff", &c.cap_eff),
        ("cap_bnd", &c.cap_bnd),
        ("cap_amb", &c.cap_amb),
    ] {
        let excess = allowed.excess(cap_bits(words));
        if !excess.is_empty() {
            return Err(refuse(
                image,
                format!("thread {tid} creds.{set}"),
                format!(
                    "has {}, outside the policy's capabilities",
                    excess.join(", ")
                ),
            ));
        }
    }
    if policy.no_new_privs && c.no_new_privs != Some(1) {
        return Err(refuse(
            image,
            format!("thread {tid} creds.no_new_privs"),
            format!(
                "is {}, the policy requires 1",
                c.no_new_privs.map_or("unset".into(), |n| n.to_string())
            ),
        ));
    }
    if let Some(u) = policy.uid {
        for (f, v) in [
            ("uid", c.uid),
            ("euid", c.euid),
            ("suid", c.suid),
            ("fsuid", c.fsuid),
        ] {
            if v != u {
                return Err(refuse(
                    image,
                    format!("thread {tid} creds.{f}"),
                    format!("is {v}, the request runs as user {u}"),
                ));
            }
        }
    }
    if policy.gid.is_some() || policy.supplementary_groups.is_some() {
        let allowed = policy.supplementary_groups.clone().unwrap_or_default();
        if let Some(g) = c
            .groups
            .iter()
            .find(|g| !allowed.contains(g) && Some(**g) != policy.gid)
        {
            return Err(refuse(
                image,
                format!("thread {tid} creds.groups"),
                format!("has {g}, not a group the request gives"),
            ));
        }
    }
    for (f, v) in [
        ("lsm_profile", c.lsm_profile.as_deref()),
        ("lsm_sockcreate", c.lsm_sockcreate.as_deref()),
    ] {
        let v = v.unwrap_or("").trim_end_matches('\n');
        let ok = match policy.lsm_profile.as_deref() {
            Some(want) => v.is_empty() || v == want,
            None => v.is_empty() || v == "unconfined",
        };
        if !ok {
            return Err(refuse(
                image,
                format!("thread {tid} creds.{f}"),
                format!(
                    "is {v:?}, and the request gives {}",
                    policy
                        .lsm_profile
                        .as_deref()
                        .map_or("no LSM profile".to_string(), |p| format!("{p:?}"))
                ),
            ));
        }
    }
    if let Some(g) = policy.gid {
        for (f, v) in [
            ("gid", c.gid),
            ("egid", c.egid),
            ("sgid", c.sgid),
            ("fsgid", c.fsgid),
        ] {
            if v != g {
                return Err(refuse(
                    image,
                    format!("thread {tid} creds.{f}"),
                    format!("is {v}, the request runs as group {g}"),
                ));
            }
        }
    }
    Ok(())
}

fn ns_ids(ids: &TaskKobjIdsEntry) -> [(Namespace, Option<u32>); 5] {
    [
        (Namespace::Net, ids.net_ns_id),
        (Namespace::Ipc, ids.ipc_ns_id),
        (Namespace::Uts, ids.uts_ns_id),
        (Namespace::Pid, ids.pid_ns_id),
        (Namespace::Mnt, ids.mnt_ns_id),
    ]
}

/// Every task of `pstree.img`, by its core's ids, against the namespaces CRIU ran in.
fn check_namespaces(
    dir: &Path,
    names: &[String],
    policy: &RestorePolicy,
) -> Result<usize, PolicyViolation> {
    let inv: InventoryEntry = read_all(dir, "inventory.img", Header::Single(magic::INVENTORY))?
        .into_iter()
        .next()
        .ok_or_else(|| refuse("inventory.img", "entry", "missing"))?;
    let root = inv
        .root_ids
        .ok_or_else(|| refuse("inventory.img", "root_ids", "missing"))?;
    let tasks: Vec<PstreeEntry> = read_all(dir, "pstree.img", Header::Common(magic::PSTREE))?;
    if tasks.is_empty() {
        return Err(refuse("pstree.img", "entries", "none"));
    }
    // CRIU compares the raw values, a missing field reading 0 (a task whose id differs from
    // the root's gets a new namespace, one equal to it stays in CRIU's own): every root id
    // must be there and non-zero, or "equal to the host's" cannot be decided.
    let root_ns = ns_ids(&root);
    for (ns, id) in root_ns {
        if id.unwrap_or(0) == 0 {
            return Err(refuse(
                "inventory.img",
                format!("root_ids.{}_ns_id", ns.name()),
                "is missing or 0: the host's namespaces cannot be told apart",
            ));
        }
    }
    for t in &tasks {
        // CRIU takes the namespaces from ids-<pid>.img and the rest from the core's copy:
        // both are checked, and at least one must be there.
        let core_name = format!("core-{}.img", t.pid);
        let legacy = format!("ids-{}.img", t.pid);
        let mut sources = Vec::new();
        if names.contains(&legacy) {
            sources.push((
                legacy.clone(),
                read_one::<TaskKobjIdsEntry>(dir, &legacy, magic::IDS)?,
            ));
        }
        if names.contains(&core_name)
            && let Some(ids) = read_one::<CoreEntry>(dir, &core_name, magic::CORE)?.ids
        {
            sources.push((core_name.clone(), ids));
        }
        if sources.is_empty() {
            return Err(refuse(&legacy, format!("task {} ids", t.pid), "missing"));
        }
        for (image, ids) in sources {
            for ((ns, id), (_, host)) in ns_ids(&ids).into_iter().zip(root_ns) {
                let field = format!("task {} ids.{}_ns_id", t.pid, ns.name());
                let id = id.unwrap_or(0);
                if id == 0 {
                    return Err(refuse(
                        &image,
                        field,
                        "is missing or 0 (CRIU would take it for a namespace of its own)",
                    ));
                }
                if id == host.unwrap_or(0) && !policy.host_namespaces.contains(&ns) {
                    return Err(refuse(
                        &image,
                        field,
                        format!(
                            "is the host's {} namespace (inventory.img root_ids), and the request does not ask for it",
                            ns.name()
                        ),
                    ));
                }
            }
            // A user namespace other than CRIU's own would be created with the image's uid
            // and gid maps, written as root: never from an image.
            if ids.user_ns_id.unwrap_or(0) != root.user_ns_id.unwrap_or(0) {
                return Err(refuse(
                    &image,
                    format!("task {} ids.user_ns_id", t.pid),
                    format!(
                        "is {}, not the node's user namespace ({}): a user namespace is not restored from an image",
                        ids.user_ns_id.unwrap_or(0),
                        root.user_ns_id.unwrap_or(0)
                    ),
                ));
            }
            // Cgroup and time namespaces: the host's grants nothing beyond what the mount
            // and cgroup checks allow; a new one is confinement. When present, an id of 0
            // is malformed.
            for (f, v) in [
                ("cgroup_ns_id", ids.cgroup_ns_id),
                ("time_ns_id", ids.time_ns_id),
            ] {
                if v == Some(0) {
                    return Err(refuse(&image, format!("task {} ids.{f}", t.pid), "is 0"));
                }
            }
        }
    }
    Ok(tasks.len())
}

fn has_parent_dir(p: &str) -> bool {
    Path::new(p)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
}

/// Every mount of every mount namespace; returns the mount ids seen.
fn check_mounts(
    dir: &Path,
    names: &[String],
    policy: &RestorePolicy,
    plan: &VerifyPlan,
    v: &mut Verdict,
) -> Result<BTreeSet<i64>, PolicyViolation> {
    // The root task's mount namespace is the one whose root the restore supplies (--root);
    // every other namespace's root is mounted from its image and checked like any mount.
    let root_mnt_ns = root_task_mnt_ns(dir, names)?;
    // The runtime's defaults come from the node, never from the checkpoint's spec: a path
    // the node's kernel does not have is skipped, as runc skips it.
    let readonly: Vec<&str> = READONLY_PATHS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    let masked: Vec<&str> = MASKED_PATHS
        .iter()
        .copied()
        .filter(|p| Path::new(p).exists())
        .collect();
    let mut ids = BTreeSet::new();
    for name in names.iter().filter(|n| is_numbered(n, "mountpoints-")) {
        let ns_id: Option<u32> = name
            .trim_start_matches("mountpoints-")
            .trim_end_matches(".img")
            .parse()
            .ok();
        let is_root_ns = ns_id.is_some() && ns_id == root_mnt_ns;
        let mounts: Vec<MntEntry> = read_all(dir, name, Header::Common(magic::MNTS))?;
        let own: BTreeSet<u32> = mounts.iter().map(|m| m.mnt_id).collect();
        let mut root_seen = false;
        let mut proc_seen = false;
        for m in &mounts {
            v.mounts += 1;
            ids.insert(i64::from(m.mnt_id));
            let field = |f: &str| format!("mount {} ({}) {f}", m.mnt_id, m.mountpoint);
            if has_parent_dir(&m.mountpoint) || has_parent_dir(&m.root) {
                return Err(refuse(name, field("mountpoint/root"), "contains .."));
            }
            let point = mount_point(&m.mountpoint);
            let ro = (m.flags | m.sb_flags.unwrap_or(0)) & MS_RDONLY != 0;
            let key = m
                .ext_key
                .clone()
                .or_else(|| (m.ext_mount == Some(true)).then(|| m.mountpoint.clone()));
            if !policy.privileged
                && let Some(p) = readonly.iter().find(|p| path_under(&point, p))
                && !ro
            {
                return Err(refuse(
                    name,
                    field("flags"),
                    format!("is not read-only, and {p} is read-only in a container"),
                ));
            }
            if !policy.privileged
                && let Some(p) = masked.iter().find(|p| path_under(&point, p))
            {
                let fs = Fstype::try_from(m.fstype as i32).unwrap_or(Fstype::Unsupported);
                let mask = key.as_deref() == Some("/dev/null") || fs == Fstype::Tmpfs;
                if !mask {
                    return Err(refuse(
                        name,
                        field("fstype"),
                        format!("is {}, and {p} is masked in a container", fs.as_str_name()),
                    ));
                }
            }
            if let Some(key) = key {
                if !plan.planned(&key) {
                    return Err(refuse(
                        name,
                        field("ext_key"),
                        format!(
                            "{key} is not an external mount the restore planned (a host mount)"
                        ),
                    ));
                }
                continue;
            }
            // The root of the root task's namespace comes from the restore's own root
            // (--root): exactly one mount, at /, whose parent is outside the namespace. Any
            // other mount with a parent outside it is refused, not taken for a second root.
            if !own.contains(&m.parent_mnt_id) {
                if point != "/" || root_seen {
                    return Err(refuse(
                        name,
                        field("parent_mnt_id"),
                        format!("{} is not a mount of the namespace", m.parent_mnt_id),
                    ));
                }
                root_seen = true;
                if is_root_ns {
                    continue;
                }
            }
            let fs = Fstype::try_from(m.fstype as i32).unwrap_or(Fstype::Unsupported);
            let fsname = m.fsname.clone().unwrap_or_default();
            if !ALLOWED_FS.contains(&fs) {
                return Err(refuse(
                    name,
                    field("fstype"),
                    format!(
                        "is {}{} (source {}): not a file system a restore may mount",
                        fs.as_str_name(),
                        if fsname.is_empty() {
                            String::new()
                        } else {
                            format!("/{fsname}")
                        },
                        m.source
                    ),
                ));
            }
            if ["lowerdir=", "upperdir=", "workdir=", "datadir="]
                .iter()
                .any(|o| m.options.contains(o))
            {
                return Err(refuse(
                    name,
                    field("options"),
                    "name overlay layers (host directories)",
                ));
            }
            if !policy.privileged {
                if matches!(fs, Fstype::Sysfs | Fstype::Cgroup | Fstype::Cgroup2) && !ro {
                    return Err(refuse(
                        name,
                        field("flags"),
                        format!("{} is not read-only", fs.as_str_name()),
                    ));
                }
                // proc whole only at /proc (another one would show /proc/sys writable);
                // parts of it only as the read-only binds above.
                if fs == Fstype::Proc {
                    let whole = m.root == "/" || m.root.is_empty();
                    if whole && (point != "/proc" || proc_seen) {
                        return Err(refuse(
                            name,
                            field("mountpoint"),
                            "is a second proc mount (only /proc, once)",
                        ));
                    }
                    if whole {
                        proc_seen = true;
                    } else if !ro {
                        return Err(refuse(name, field("flags"), "binds part of proc writable"));
                    }
                }
            }
        }
        if !policy.privileged {
            // Every default read-only and masked path is there, as the runtime set it.
            for p in readonly.iter().chain(&masked) {
                if !mounts.iter().any(|m| mount_point(&m.mountpoint) == *p) {
                    return Err(refuse(
                        name,
                        format!("mount {p}"),
                        "missing: the runtime masks or makes it read-only in every container",
                    ));
                }
            }
        }
    }
    Ok(ids)
}

/// A mountpoint as an absolute path (CRIU may write `./x` or `x` for `/x`).
fn mount_point(p: &str) -> String {
    let t = p.trim_start_matches('.').trim_start_matches('/');
    format!("/{}", t.trim_end_matches('/'))
}

fn path_under(p: &str, root: &str) -> bool {
    p == root || p.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

/// The mount namespace id of the first task of `pstree.img` (its ids image, else its core).
fn root_task_mnt_ns(dir: &Path, names: &[String]) -> Result<Option<u32>, PolicyViolation> {
    if !names.iter().any(|n| n == "pstree.img") {
        return Ok(None);
    }
    let Some(t) = read_all::<PstreeEntry>(dir, "pstree.img", Header::Common(magic::PSTREE))?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let legacy = format!("ids-{}.img", t.pid);
    if names.contains(&legacy) {
        return Ok(read_one::<TaskKobjIdsEntry>(dir, &legacy, magic::IDS)?.mnt_ns_id);
    }
    let core = format!("core-{}.img", t.pid);
    if names.contains(&core) {
        return Ok(read_one::<CoreEntry>(dir, &core, magic::CORE)?
            .ids
            .and_then(|i| i.mnt_ns_id));
    }
    Ok(None)
}

/// Property files CRIU may write back into the cgroups it recreates (the resource knobs
/// CRIU itself dumps; each is bounded by the parent cgroup the restore created).
pub const ALLOWED_CGROUP_PROPS: &[&str] = &[
    "cgroup.clone_children",
    "notify_on_release",
    "cgroup.procs",
    "tasks",
    "cgroup.subtree_control",
    "cgroup.max.descendants",
    "cgroup.max.depth",
    "cgroup.freeze",
    "cgroup.type",
    "cpu.shares",
    "cpu.cfs_period_us",
    "cpu.cfs_quota_us",
    "cpu.rt_period_us",
    "cpu.rt_runtime_us",
    "cpu.max",
    "cpu.weight",
    "cpu.weight.nice",
    "memory.limit_in_bytes",
    "memory.memsw.limit_in_bytes",
    "memory.swappiness",
    "memory.soft_limit_in_bytes",
    "memory.move_charge_at_immigrate",
    "memory.oom_control",
    "memory.use_hierarchy",
    "memory.kmem.limit_in_bytes",
    "memory.kmem.tcp.limit_in_bytes",
    "memory.high",
    "memory.max",
    "memory.low",
    "memory.min",
    "memory.swap.max",
    "memory.oom.group",
    "cpuset.cpus",
    "cpuset.mems",
    "cpuset.memory_migrate",
    "cpuset.cpu_exclusive",
    "cpuset.mem_exclusive",
    "cpuset.mem_hardwall",
    "cpuset.memory_spread_page",
    "cpuset.memory_spread_slab",
    "cpuset.sched_load_balance",
    "cpuset.sched_relax_domain_level",
    "blkio.weight",
    "io.weight",
    "freezer.state",
    "devices.list",
    "net_cls.classid",
    "net_prio.ifpriomap",
    "pids.max",
];

/// Whether `path` is `root` or below it, as cgroup paths (components, not bytes).
fn cg_under(path: &str, root: &str) -> bool {
    let root = root.trim_end_matches('/');
    path == root || path.strip_prefix(root).is_some_and(|r| r.starts_with('/'))
}

fn cg_bad_component(p: &str) -> bool {
    p.split('/').any(|c| c == ".." || c == ".")
}

/// `cgroup.img`: CRIU moves tasks into the paths of their sets, rewriting to the restore's
/// cgroup only the paths under a dumped directory (the dump's root cgroup), and writes the
/// properties of every directory it recreates. Every set's paths must be below the root
/// task's set (itself a dumped directory, never a hierarchy's root), with no `.`/`..`
/// anywhere, and property names from [`ALLOWED_CGROUP_PROPS`].
fn check_cgroups(dir: &Path, names: &[String]) -> Result<usize, PolicyViolation> {
    const IMG: &str = "cgroup.img";
    if !names.iter().any(|n| n == IMG) {
        return Ok(0);
    }
    let cg: CgroupEntry = read_one(dir, IMG, magic::CGROUP)?;
    // Directories: names and properties, at every depth.
    fn walk(
        d: &CgroupDirEntry,
        at: &str,
        depth: usize,
        top: &mut Vec<String>,
    ) -> Result<(), PolicyViolation> {
        let path = if at.is_empty() {
            d.dir_name.clone()
        } else {
            format!("{at}/{}", d.dir_name)
        };
        if depth > 64 {
            return Err(refuse(IMG, format!("dir {path}"), "is nested too deep"));
        }
        if cg_bad_component(&d.dir_name) || d.dir_name.starts_with('/') || d.dir_name.contains('\0')
        {
            return Err(refuse(
                IMG,
                format!("dir {path} dir_name"),
                "has a . or .. component or is absolute",
            ));
        }
        if depth == 0 {
            top.push(d.dir_name.clone());
        } else if d.dir_name.contains('/') {
            return Err(refuse(IMG, format!("dir {path} dir_name"), "contains /"));
        }
        for p in &d.properties {
            if p.name.contains('/') || !ALLOWED_CGROUP_PROPS.contains(&p.name.as_str()) {
                return Err(refuse(
                    IMG,
                    format!("dir {path} property {}", p.name),
                    "is not a cgroup property a restore may write",
                ));
            }
        }
        for c in &d.children {
            walk(c, &path, depth + 1, top)?;
        }
        Ok(())
    }
    // Per controller name, the dumped top directories.
    let mut tops: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in &cg.controllers {
        let mut top = Vec::new();
        for d in &c.dirs {
            walk(d, "", 0, &mut top)?;
        }
        for n in &c.cnames {
            tops.entry(n.clone())
                .or_default()
                .extend(top.iter().cloned());
        }
    }
    if cg.sets.is_empty() {
        return Ok(0);
    }
    // The root task's set: the dump's root cgroup.
    let inv: InventoryEntry = read_all(dir, "inventory.img", Header::Single(magic::INVENTORY))?
        .into_iter()
        .next()
        .ok_or_else(|| refuse("inventory.img", "entry", "missing"))?;
    let root_pid = read_all::<PstreeEntry>(dir, "pstree.img", Header::Common(magic::PSTREE))?
        .first()
        .map(|t| t.pid)
        .ok_or_else(|| refuse("pstree.img", "entries", "none"))?;
    let core_name = format!("core-{root_pid}.img");
    // As CRIU reads it: the thread core's set, else the task core's.
    let core: CoreEntry = read_one(dir, &core_name, magic::CORE)?;
    let root_set = core
        .thread_core
        .as_ref()
        .and_then(|t| t.cg_set)
        .or(core.tc.as_ref().and_then(|t| t.cg_set))
        .unwrap_or(0);
    if root_set == 0 || Some(root_set) == inv.root_cg_set {
        return Err(refuse(
            &core_name,
            "thread_core.cg_set",
            "names no cgroup set of the dump, yet cgroup.img has sets",
        ));
    }
    let root = cg
        .sets
        .iter()
        .find(|s| s.id == root_set)
        .ok_or_else(|| refuse(IMG, format!("set {root_set}"), "missing (the root task's)"))?;
    for m in &root.ctls {
        let field = format!("set {} {} path", root.id, m.name);
        let rel = m.path.strip_prefix('/').unwrap_or(&m.path);
        let dumped = tops.get(&m.name).is_some_and(|t| {
            t.iter()
                .any(|d| !d.is_empty() && !cg_bad_component(d) && cg_under(rel, d))
        });
        if rel.is_empty() || !m.path.starts_with('/') || !dumped {
            return Err(refuse(
                IMG,
                field,
                format!(
                    "{} is not a cgroup the dump recorded (the restore would use it as written)",
                    m.path
                ),
            ));
        }
    }
    for s in &cg.sets {
        for m in &s.ctls {
            let field = format!("set {} {} path", s.id, m.name);
            if cg_bad_component(&m.path) || m.path.contains('\0') {
                return Err(refuse(
                    IMG,
                    field,
                    format!("{} has a . or .. component", m.path),
                ));
            }
            if let Some(p) = m.cgns_prefix {
                let p = p as usize;
                if p > m.path.len()
                    || !m.path.is_char_boundary(p)
                    || !(p == m.path.len() || m.path[p..].starts_with('/'))
                {
                    return Err(refuse(
                        IMG,
                        format!("set {} {} cgns_prefix", s.id, m.name),
                        format!("{p} does not end a component of {}", m.path),
                    ));
                }
            }
            let under = root
                .ctls
                .iter()
                .find(|r| r.name == m.name)
                .is_some_and(|r| cg_under(&m.path, &r.path));
            if !under {
                return Err(refuse(
                    IMG,
                    field,
                    format!(
                        "{} is outside the dump's root cgroup (the root task's set {})",
                        m.path, root.id
                    ),
                ));
            }
        }
    }
    Ok(cg.sets.len())
}

/// A counting reader that fails once more than `left` bytes were read.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self
            .left
            .checked_sub(n as u64)
            .ok_or_else(|| std::io::Error::other("over the tmpfs size cap"))?;
        Ok(n)
    }
}

/// The tarballs CRIU untars into tmpfs mounts.
fn check_tmpfs(
    dir: &Path,
    names: &[String],
    policy: &RestorePolicy,
) -> Result<usize, PolicyViolation> {
    let mut budget = policy.max_tmpfs_bytes;
    let mut count = 0;
    for name in names
        .iter()
        .filter(|n| n.starts_with("tmpfs-") && n.ends_with(".tar.gz.img"))
    {
        // Every gzip member, as CRIU's `tar --gzip` decodes them (a second member is more
        // of the same tar stream), and the compressed file must end where the last does.
        let gz = flate2::read::MultiGzDecoder::new(open(dir, name)?);
        let mut capped = Capped {
            inner: gz,
            left: budget,
        };
        {
            let mut ar = tar::Archive::new(&mut capped);
            let entries = ar
                .entries()
                .map_err(|e| refuse(name, "tar", format!("unreadable: {e}")))?;
            for e in entries {
                let e = e.map_err(|e| refuse(name, "tar", format!("unreadable: {e}")))?;
                count += 1;
                check_tmpfs_entry(name, &e, policy)?;
            }
        }
        // The rest of the stream (the terminator, padding) counts too, must decode to its
        // end, and may hold nothing but zeros: data after the terminator is refused, not
        // left for another reader of the stream to find.
        let mut buf = [0u8; 8192];
        loop {
            let n = capped.read(&mut buf).map_err(|e| {
                refuse(
                    name,
                    "size",
                    format!("{e} ({} bytes)", policy.max_tmpfs_bytes),
                )
            })?;
            if n == 0 {
                break;
            }
            if buf[..n].iter().any(|b| *b != 0) {
                return Err(refuse(
                    name,
                    "tar",
                    "has data after the end-of-archive blocks",
                ));
            }
        }
        budget = capped.left;
    }
    Ok(count)
}

fn check_tmpfs_entry<R: Read>(
    image: &str,
    e: &tar::Entry<'_, R>,
    policy: &RestorePolicy,
) -> Result<(), PolicyViolation> {
    let path = e.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&path).into_owned();
    let p = PathBuf::from(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&path));
    if p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse(
            image,
            format!("entry {shown}"),
            "has an absolute or .. path",
        ));
    }
    let h = e.header();
    if h.entry_type().is_hard_link()
        && let Ok(Some(target)) = e.link_name()
        && (target.is_absolute()
            || target
                .components()
                .any(|c| matches!(c, Component::ParentDir)))
    {
        return Err(refuse(
            image,
            format!("entry {shown} link"),
            format!("{} is outside the tmpfs", target.display()),
        ));
    }
    let mode = h.mode().unwrap_or(0);
    let ty = h.entry_type();
    if ty.is_file() && mode & 0o6000 != 0 && !policy.privileged {
        return Err(refuse(
            image,
            format!("entry {shown} mode"),
            format!("{mode:#o} is set-id"),
        ));
    }
    if ty.is_block_special() || ty.is_character_special() {
        let rel = p
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect::<PathBuf>();
        let major = h.device_major().ok().flatten().unwrap_or(u32::MAX) as u64;
        let minor = h.device_minor().ok().flatten().unwrap_or(u32::MAX) as u64;
        let standard = ty.is_character_special()
            && rel.components().count() == 1
            && STANDARD_CHAR_DEVICES
                .iter()
                .any(|(n, ma, mi)| rel.as_os_str() == *n && major == *ma && minor == *mi);
        let requested = policy
            .devices
            .iter()
            .any(|d| d.strip_prefix("/dev").is_ok_and(|r| r == rel));
        if !standard && !requested && !policy.privileged {
            return Err(refuse(
                image,
                format!("entry {shown}"),
                format!(
                    "is a {} device {major}:{minor}, not a standard device the request allows",
                    if ty.is_block_special() {
                        "block"
                    } else {
                        "character"
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// Paths of regular files and unix sockets.
fn check_files(
    dir: &Path,
    names: &[String],
    mnt_ids: &BTreeSet<i64>,
) -> Result<usize, PolicyViolation> {
    let mut n = 0;
    let mut regs: Vec<(String, RegFileEntry)> = Vec::new();
    let mut socks: Vec<(String, UnixSkEntry)> = Vec::new();
    if names.iter().any(|n| n == "files.img") {
        for f in read_all::<FileEntry>(dir, "files.img", Header::Common(magic::FILES))? {
            if let Some(r) = f.reg {
                regs.push(("files.img".into(), r));
            }
            if let Some(u) = f.usk {
                socks.push(("files.img".into(), u));
            }
        }
    }
    if names.iter().any(|n| n == "reg-files.img") {
        for r in read_all::<RegFileEntry>(dir, "reg-files.img", Header::Common(magic::REG_FILES))? {
            regs.push(("reg-files.img".into(), r));
        }
    }
    if names.iter().any(|n| n == "unixsk.img") {
        for u in read_all::<UnixSkEntry>(dir, "unixsk.img", Header::Common(magic::UNIXSK))? {
            socks.push(("unixsk.img".into(), u));
        }
    }
    for (image, r) in &regs {
        n += 1;
        if has_parent_dir(&r.name) {
            return Err(refuse(
                image,
                format!("file {} name", r.id),
                format!("{} resolves outside the container's root", r.name),
            ));
        }
        let m = i64::from(r.mnt_id.unwrap_or(-1));
        if m >= 0 && !mnt_ids.is_empty() && !mnt_ids.contains(&m) {
            return Err(refuse(
                image,
                format!("file {} mnt_id", r.id),
                format!("{m} ({}) is not a mount of the checkpoint", r.name),
            ));
        }
    }
    for (image, u) in &socks {
        n += 1;
        let name = String::from_utf8_lossy(&u.name);
        let abstract_ns = u.name.first() == Some(&0);
        let dir_part = u.name_dir.clone().unwrap_or_default();
        if !abstract_ns && (has_parent_dir(&name) || has_parent_dir(&dir_part)) {
            return Err(refuse(
                image,
                format!("unix socket {} name", u.id),
                format!("{name} resolves outside the container's root"),
            ));
        }
    }
    Ok(n)
}

fn check_spec_devices(
    spec: &serde_json::Value,
    policy: &RestorePolicy,
) -> Result<(), PolicyViolation> {
    let standard: BTreeMap<&str, ()> = crate::container::RUNC_DEFAULT_DEVICES
        .iter()
        .map(|d| (*d, ()))
        .collect();
    for (i, d) in spec["linux"]["devices"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        let path = d["path"].as_str().unwrap_or_default();
        let ok = standard.contains_key(path)
            || policy.devices.iter().any(|p| p == Path::new(path))
            || (policy.privileged && path.starts_with("/dev/") && !has_parent_dir(path));
        if !ok {
            return Err(refuse(
                "spec.dump",
                format!("linux.devices[{i}].path"),
                format!("{path} is not a device the request allows (--device)"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
// Tests start from the default policy and change the one field each case is about.
#[allow(clippy::field_reassign_with_default)]
mod tests {
    use super::*;
    use criu_proto::image::ImageWriter;
    use criu_proto::images::{SeccompFilter, ThreadCoreEntry};

    fn write<M: criu_proto::prost::Message>(dir: &Path, name: &str, header: Header, e: &[M]) {
        let mut w = ImageWriter::new(Vec::new(), header).unwrap();
        for m in e {
            w.write(m).unwrap();
        }
        std::fs::write(dir.join(name), w.into_inner()).unwrap();
    }

    fn ids(ns: u32) -> TaskKobjIdsEntry {
        TaskKobjIdsEntry {
            pid_ns_id: Some(ns),
            net_ns_id: Some(ns + 1),
            ipc_ns_id: Some(ns + 2),
            uts_ns_id: Some(ns + 3),
            mnt_ns_id: Some(ns + 4),
            ..Default::default()
        }
    }

    fn creds() -> CredsEntry {
        CredsEntry {
            cap_bnd: vec![0x2000_0420, 0],
            cap_eff: vec![0x2000_0420, 0],
            no_new_privs: Some(1),
            ..Default::default()
        }
    }

    /// A minimal image set of one task within the default policy.
    fn images(creds: CredsEntry) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        write(
            p,
            "inventory.img",
            Header::Single(magic::INVENTORY),
            &[InventoryEntry {
                img_version: 2,
                root_ids: Some(ids(100)),
                ..Default::default()
            }],
        );
        write(
            p,
            "pstree.img",
            Header::Common(magic::PSTREE),
            &[PstreeEntry {
                pid: 1,
                threads: vec![1],
                ..Default::default()
            }],
        );
        write(p, "ids-1.img", Header::Common(magic::IDS), &[ids(10)]);
        write(
            p,
            "core-1.img",
            Header::Common(magic::CORE),
            &[CoreEntry {
                mtype: 1,
                thread_core: Some(ThreadCoreEntry {
                    creds: Some(creds),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        );
        d
    }

    fn check(d: &Path, p: &RestorePolicy) -> Result<Verdict, PolicyViolation> {
        let spec = serde_json::json!({});
        verify(d, &spec, p, &VerifyPlan::for_container(&spec, p))
    }

    #[test]
    fn within_the_default_policy() {
        let d = images(creds());
        let v = check(d.path(), &RestorePolicy::default()).unwrap();
        assert_eq!((v.threads, v.tasks), (1, 1));
    }

    #[test]
    fn each_capability_set_is_checked() {
        for set in 0..5 {
            let mut c = creds();
            let words = vec![1 << 21, 0];
            match set {
                0 => c.cap_inh = words,
                1 => c.cap_prm = words,
                2 => c.cap_eff = words,
                3 => c.cap_bnd = words,
                _ => c.cap_amb = words,
            }
            let d = images(c);
            let e = check(d.path(), &RestorePolicy::default()).unwrap_err();
            assert!(e.detail.contains("CAP_SYS_ADMIN"), "{e}");
            assert!(e.field.starts_with("thread 1 creds.cap_"), "{e}");
            // --cap-add SYS_ADMIN allows it.
            let mut p = RestorePolicy::default();
            p.capabilities.insert(caps::Capability::CAP_SYS_ADMIN);
            check(d.path(), &p).unwrap();
        }
        // A third word (capabilities 64 and up) is never within a policy.
        let mut c = creds();
        c.cap_eff = vec![0, 0, 1];
        let d = images(c);
        assert!(check(d.path(), &RestorePolicy::default().privileged()).is_err());
    }

    #[test]
    fn uid_gid_and_no_new_privs() {
        let mut c = creds();
        c.no_new_privs = None;
        let d = images(c);
        let e = check(d.path(), &RestorePolicy::default()).unwrap_err();
        assert_eq!(e.field, "thread 1 creds.no_new_privs");
        let mut c = creds();
        c.uid = 1000;
        c.euid = 0;
        let d = images(c);
        let mut p = RestorePolicy::default();
        p.uid = Some(1000);
        let e = check(d.path(), &p).unwrap_err();
        assert_eq!(e.field, "thread 1 creds.euid");
        p.uid = None;
        p.gid = Some(5);
        assert_eq!(check(d.path(), &p).unwrap_err().field, "thread 1 creds.gid");
    }

    #[test]
    fn seccomp_required_needs_a_filter_that_exists() {
        let d = images(creds());
        let mut p = RestorePolicy::default();
        p.seccomp = SeccompRequirement::Required;
        assert_eq!(
            check(d.path(), &p).unwrap_err().field,
            "thread 1 seccomp_mode"
        );
        let core = CoreEntry {
            mtype: 1,
            thread_core: Some(ThreadCoreEntry {
                creds: Some(creds()),
                seccomp_mode: Some(SeccompMode::Filter as i32),
                seccomp_filter: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        write(d.path(), "core-1.img", Header::Common(magic::CORE), &[core]);
        let one = SeccompEntry {
            seccomp_filters: vec![SeccompFilter {
                filter: vec![0; 8],
                ..Default::default()
            }],
        };
        write(
            d.path(),
            "seccomp.img",
            Header::Common(magic::SECCOMP),
            &[one],
        );
        assert_eq!(
            check(d.path(), &p).unwrap_err().field,
            "thread 1 seccomp_filter"
        );
        let two = SeccompEntry {
            seccomp_filters: vec![SeccompFilter::default(), SeccompFilter::default()],
        };
        write(
            d.path(),
            "seccomp.img",
            Header::Common(magic::SECCOMP),
            &[two],
        );
        check(d.path(), &p).unwrap();
    }

    #[test]
    fn host_namespaces_only_when_requested() {
        let d = images(creds());
        let mut host = ids(100);
        host.pid_ns_id = Some(11);
        write(d.path(), "ids-1.img", Header::Common(magic::IDS), &[host]);
        let e = check(d.path(), &RestorePolicy::default()).unwrap_err();
        assert_eq!(
            (e.image.as_str(), e.field.as_str()),
            ("ids-1.img", "task 1 ids.net_ns_id")
        );
        let mut p = RestorePolicy::default();
        p.host_namespaces = Namespace::ALL.into_iter().collect();
        check(d.path(), &p).unwrap();
        // No inventory root ids: nothing to decide from, refused.
        write(
            d.path(),
            "inventory.img",
            Header::Single(magic::INVENTORY),
            &[InventoryEntry::default()],
        );
        assert_eq!(check(d.path(), &p).unwrap_err().field, "root_ids");
    }

    /// Review finding 1: CRIU reads a missing id as 0 and compares raw values, so root ids
    /// without namespace fields and task ids of 0 would restore into the host's namespaces.
    #[test]
    fn namespace_ids_compare_as_criu_does() {
        let d = images(creds());
        let p = RestorePolicy::default();
        // Root ids lacking a namespace field, or with 0.
        for ns in Namespace::ALL {
            for val in [None, Some(0)] {
                let mut root = ids(100);
                match ns {
                    Namespace::Pid => root.pid_ns_id = val,
                    Namespace::Net => root.net_ns_id = val,
                    Namespace::Ipc => root.ipc_ns_id = val,
                    Namespace::Uts => root.uts_ns_id = val,
                    Namespace::Mnt => root.mnt_ns_id = val,
                }
                write(
                    d.path(),
                    "inventory.img",
                    Header::Single(magic::INVENTORY),
                    &[InventoryEntry {
                        img_version: 2,
                        root_ids: Some(root),
                        ..Default::default()
                    }],
                );
                let e = check(d.path(), &p).unwrap_err();
                assert_eq!(e.field, format!("root_ids.{}_ns_id", ns.name()), "{e}");
            }
        }
        // The attack: root ids with no namespace fields and a task whose ids are all 0.
        let bare = TaskKobjIdsEntry::default();
        write(
            d.path(),
            "inventory.img",
            Header::Single(magic::INVENTORY),
            &[InventoryEntry {
                img_version: 2,
                root_ids: Some(bare),
                ..Default::default()
            }],
        );
        let zero = TaskKobjIdsEntry {
            pid_ns_id: Some(0),
            net_ns_id: Some(0),
            ipc_ns_id: Some(0),
            uts_ns_id: Some(0),
            mnt_ns_id: Some(0),
            ..bare
        };
        write(d.path(), "ids-1.img", Header::Common(magic::IDS), &[zero]);
        let mut all = RestorePolicy::default();
        all.host_namespaces = Namespace::ALL.into_iter().collect();
        assert!(
            check(d.path(), &all)
                .unwrap_err()
                .field
                .starts_with("root_ids.")
        );
        // Good root ids, a task id of 0: refused even when host namespaces are allowed.
        write(
            d.path(),
            "inventory.img",
            Header::Single(magic::INVENTORY),
            &[InventoryEntry {
                img_version: 2,
                root_ids: Some(ids(100)),
                ..Default::default()
            }],
        );
        // Then, one task id edited at a time: a mount namespace id of 0 (with all host
        // namespaces allowed), a user namespace of its own (its maps would be written from the
        // image), a time namespace id of 0.
        type Edit = fn(&mut TaskKobjIdsEntry);
        let cases: [(Edit, &RestorePolicy, &str); 3] = [
            (|t| t.mnt_ns_id = Some(0), &all, "task 1 ids.mnt_ns_id"),
            (|t| t.user_ns_id = Some(7), &p, "task 1 ids.user_ns_id"),
            (|t| t.time_ns_id = Some(0), &p, "task 1 ids.time_ns_id"),
        ];
        for (edit, policy, field) in cases {
            let mut t = ids(10);
            edit(&mut t);
            write(d.path(), "ids-1.img", Header::Common(magic::IDS), &[t]);
            assert_eq!(check(d.path(), policy).unwrap_err().field, field);
        }
        write(
            d.path(),
            "ids-1.img",
            Header::Common(magic::IDS),
            &[ids(10)],
        );
        check(d.path(), &p).unwrap();
    }

    fn mnt(id: u32, parent: u32, point: &str, fs: Fstype) -> MntEntry {
        MntEntry {
            fstype: fs as u32,
            mnt_id: id,
            parent_mnt_id: parent,
            root: "/".into(),
            mountpoint: point.into(),
            ..Default::default()
        }
    }

    /// The runtime's default read-only and masked mounts (all of them, whatever the node's
    /// kernel has), ids from 50.
    fn runtime_defaults() -> Vec<MntEntry> {
        let mut out = Vec::new();
        for (i, p) in READONLY_PATHS.iter().enumerate() {
            out.push(MntEntry {
                root: p.trim_start_matches("/proc").into(),
                flags: MS_RDONLY,
                ..mnt(50 + i as u32, 2, p, Fstype::Proc)
            });
        }
        for (i, p) in MASKED_PATHS.iter().enumerate() {
            out.push(MntEntry {
                flags: MS_RDONLY,
                ..mnt(70 + i as u32, 2, p, Fstype::Tmpfs)
            });
        }
        out
    }

    type MountEdit = Box<dyn Fn(&mut Vec<MntEntry>)>;
    type CgroupEdit = Box<dyn Fn(&mut CgroupEntry)>;

    /// The root task's mount namespace (ids(10): mnt 14).
    const ROOT_NS: &str = "mountpoints-14.img";

    fn good_mounts() -> Vec<MntEntry> {
        let mut good = vec![
            mnt(1, 0, "/", Fstype::Overlayfs),
            mnt(2, 1, "/proc", Fstype::Proc),
            MntEntry {
                ext_key: Some("/dev/null".into()),
                ..mnt(3, 1, "/dev/null", Fstype::Devtmpfs)
            },
            MntEntry {
                flags: MS_RDONLY,
                ..mnt(4, 1, "/sys", Fstype::Sysfs)
            },
        ];
        good.extend(runtime_defaults());
        good
    }

    #[test]
    fn mounts() {
        let d = images(creds());
        let good = good_mounts();
        write(d.path(), ROOT_NS, Header::Common(magic::MNTS), &good);
        assert_eq!(
            check(d.path(), &RestorePolicy::default()).unwrap().mounts,
            good.len()
        );
        for (bad, field) in [
            (mnt(5, 1, "/x", Fstype::Devtmpfs), "mount 5 (/x) fstype"),
            (mnt(5, 1, "/x", Fstype::Auto), "mount 5 (/x) fstype"),
            (
                mnt(5, 777, "/", Fstype::Devtmpfs),
                "mount 5 (/) parent_mnt_id",
            ),
            (
                mnt(5, 1, "/a/../../x", Fstype::Tmpfs),
                "mount 5 (/a/../../x) mountpoint/root",
            ),
            (
                MntEntry {
                    ext_key: Some("/etc".into()),
                    ..mnt(5, 1, "/x", Fstype::Tmpfs)
                },
                "mount 5 (/x) ext_key",
            ),
        ] {
            let mut m = good.clone();
            m.push(bad);
            write(d.path(), ROOT_NS, Header::Common(magic::MNTS), &m);
            let e = check(d.path(), &RestorePolicy::default()).unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    /// Review finding 2: mount flags and options, the runtime's read-only and masked paths,
    /// and the root mounts of namespaces other than the restored root's.
    #[test]
    fn mount_flags_defaults_and_every_namespace_root() {
        let d = images(creds());
        let p = RestorePolicy::default();
        let good = good_mounts();
        let ro = |m: MntEntry| MntEntry {
            flags: MS_RDONLY,
            ..m
        };
        // A masked path of /proc this node's kernel has (the requirement follows the node).
        let node_masked: &'static str = MASKED_PATHS
            .iter()
            .copied()
            .find(|p| p.starts_with("/proc/") && Path::new(p).exists())
            .expect("the node has none of the masked /proc paths");
        let missing_mask = format!("mount {node_masked}");
        let proc_over_mask = format!("mount 5 ({node_masked}) fstype");
        let cases: Vec<(MountEdit, &str)> = vec![
            // Overlay over host directories.
            (
                Box::new(|m| {
                    m.push(MntEntry {
                        options: "lowerdir=/,upperdir=/tmp/u,workdir=/tmp/w".into(),
                        ..mnt(5, 1, "/host", Fstype::Overlayfs)
                    })
                }),
                "mount 5 (/host) fstype",
            ),
            // sysfs and cgroup writable.
            (Box::new(|m| m[3].flags = 0), "mount 4 (/sys) flags"),
            (
                Box::new(|m| m.push(mnt(5, 4, "/sys/fs/cgroup", Fstype::Cgroup2))),
                "mount 5 (/sys/fs/cgroup) flags",
            ),
            (
                Box::new(|m| m.push(mnt(5, 4, "/sys/fs/cgroup/cpu", Fstype::Cgroup))),
                "mount 5 (/sys/fs/cgroup/cpu) flags",
            ),
            // /proc/sys writable, or dropped.
            (
                Box::new(|m| m[4].flags = 0),
                "mount 50 (/proc/sys/../bus) flags",
            ),
            (
                Box::new(|m| m.retain(|x| x.mountpoint != "/proc/sys")),
                "mount /proc/sys",
            ),
            (
                Box::new(move |m| m.retain(|x| x.mountpoint != node_masked)),
                missing_mask.as_str(),
            ),
            // A writable mount stacked on /proc/sys, a second proc, proc over a mask.
            (
                Box::new(|m| m.push(mnt(5, 53, "/proc/sys", Fstype::Tmpfs))),
                "mount 5 (/proc/sys) flags",
            ),
            (
                Box::new(|m| m.push(mnt(5, 1, "/mnt/proc", Fstype::Proc))),
                "mount 5 (/mnt/proc) mountpoint",
            ),
            (
                Box::new(move |m| {
                    m.push(MntEntry {
                        root: node_masked.trim_start_matches("/proc").into(),
                        flags: MS_RDONLY,
                        ..mnt(5, 2, node_masked, Fstype::Proc)
                    })
                }),
                proc_over_mask.as_str(),
            ),
        ];
        for (edit, field) in cases {
            let mut m = good.clone();
            edit(&mut m);
            write(d.path(), ROOT_NS, Header::Common(magic::MNTS), &m);
            let e = check(d.path(), &p).unwrap_err();
            let field = field.replace("/proc/sys/../bus", "/proc/bus");
            assert_eq!(e.field, field, "{e}");
        }
        write(d.path(), ROOT_NS, Header::Common(magic::MNTS), &good);
        check(d.path(), &p).unwrap();
        // A privileged request: no read-only or masked requirement.
        let mut m = good.clone();
        m.retain(|x| x.mnt_id < 50);
        m[3].flags = 0;
        write(d.path(), ROOT_NS, Header::Common(magic::MNTS), &m);
        assert!(check(d.path(), &p).is_err());
        check(d.path(), &RestorePolicy::default().privileged()).unwrap();
        // Another namespace: its root mount is checked like any other (overlay refused).
        write(d.path(), ROOT_NS, Header::Common(magic::MNTS), &good);
        let mut other = good.clone();
        for x in &mut other {
            x.mnt_id += 1000;
            x.parent_mnt_id += 1000;
        }
        write(
            d.path(),
            "mountpoints-99.img",
            Header::Common(magic::MNTS),
            &other,
        );
        let e = check(d.path(), &p).unwrap_err();
        assert_eq!(
            (e.image.as_str(), e.field.as_str()),
            ("mountpoints-99.img", "mount 1001 (/) fstype")
        );
        other[0] = ro(mnt(1001, 0, "/", Fstype::Tmpfs));
        write(
            d.path(),
            "mountpoints-99.img",
            Header::Common(magic::MNTS),
            &other,
        );
        check(d.path(), &p).unwrap();
    }

    /// Path, kind, mode, device numbers, size.
    type TarEntry<'a> = (&'a str, tar::EntryType, u32, (u32, u32), usize);

    fn tmpfs(d: &Path, entries: &[TarEntry<'_>]) {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, kind, mode, dev, size) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(*size as u64);
            h.set_device_major(dev.0).unwrap();
            h.set_device_minor(dev.1).unwrap();
            h.set_cksum();
            b.append(&h, vec![0u8; *size].as_slice()).unwrap();
        }
        let bytes = b.into_inner().unwrap().finish().unwrap();
        std::fs::write(d.join("tmpfs-dev-5.tar.gz.img"), bytes).unwrap();
    }

    #[test]
    fn tmpfs_contents() {
        use tar::EntryType as T;
        let d = images(creds());
        tmpfs(
            d.path(),
            &[
                ("null", T::Char, 0o666, (1, 3), 0),
                ("ptmx", T::Char, 0o666, (5, 2), 0),
                ("shm", T::Directory, 0o1777, (0, 0), 0),
                ("f", T::Regular, 0o755, (0, 0), 10),
            ],
        );
        assert_eq!(
            check(d.path(), &RestorePolicy::default())
                .unwrap()
                .tmpfs_entries,
            4
        );
        for (entry, want) in [
            (("sda", T::Block, 0o660, (8, 0), 0), "block device 8:0"),
            (("null", T::Char, 0o666, (1, 1), 0), "character device 1:1"),
            (
                ("sub/null", T::Char, 0o666, (1, 3), 0),
                "character device 1:3",
            ),
            (("su", T::Regular, 0o2755, (0, 0), 0), "set-id"),
        ] {
            tmpfs(d.path(), &[entry]);
            let e = check(d.path(), &RestorePolicy::default()).unwrap_err();
            assert!(e.detail.contains(want), "{e}");
        }
        // A hard link out of the tmpfs.
        {
            let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            let mut b = tar::Builder::new(gz);
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(T::Link);
            h.set_size(0);
            h.set_mode(0o644);
            b.append_link(&mut h, "shadow", "../../etc/shadow").unwrap();
            let bytes = b.into_inner().unwrap().finish().unwrap();
            std::fs::write(d.path().join("tmpfs-dev-5.tar.gz.img"), bytes).unwrap();
            let e = check(d.path(), &RestorePolicy::default()).unwrap_err();
            assert_eq!(e.field, "entry shadow link", "{e}");
        }
        // A requested device is allowed.
        tmpfs(d.path(), &[("sda", T::Block, 0o660, (8, 0), 0)]);
        let mut p = RestorePolicy::default();
        p.devices = vec!["/dev/sda".into()];
        check(d.path(), &p).unwrap();
        // The size cap counts the uncompressed stream.
        tmpfs(d.path(), &[("big", T::Regular, 0o644, (0, 0), 1 << 20)]);
        let mut p = RestorePolicy::default();
        p.max_tmpfs_bytes = 1 << 19;
        assert_eq!(check(d.path(), &p).unwrap_err().field, "tar");
        p.max_tmpfs_bytes = 2 << 20;
        check(d.path(), &p).unwrap();
    }

    /// Review finding 4: a second gzip member (decoded by CRIU's `tar --gzip`) and data
    /// after the tar terminator are checked or refused, not skipped.
    #[test]
    fn tmpfs_every_gzip_member_and_nothing_after_the_end() {
        use tar::EntryType as T;
        let d = images(creds());
        let p = RestorePolicy::default();
        let path = d.path().join("tmpfs-dev-5.tar.gz.img");
        tmpfs(d.path(), &[("null", T::Char, 0o666, (1, 3), 0)]);
        let first = std::fs::read(&path).unwrap();
        // A tar stream without its terminator in a second member: a block device.
        let mut h = tar::Header::new_gnu();
        h.set_path("sda").unwrap();
        h.set_entry_type(T::Block);
        h.set_mode(0o660);
        h.set_size(0);
        h.set_device_major(8).unwrap();
        h.set_device_minor(0).unwrap();
        h.set_cksum();
        let gz = |bytes: &[u8]| {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        // The first member ends with the tar terminator; the device comes after it.
        std::fs::write(&path, [first.clone(), gz(h.as_bytes())].concat()).unwrap();
        let e = check(d.path(), &p).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.image.as_str()),
            ("tar", "tmpfs-dev-5.tar.gz.img"),
            "{e}"
        );
        // The first member without a terminator: the second member's device is an entry.
        let mut bare = Vec::new();
        let mut h0 = tar::Header::new_gnu();
        h0.set_path("null").unwrap();
        h0.set_entry_type(T::Char);
        h0.set_mode(0o666);
        h0.set_size(0);
        h0.set_device_major(1).unwrap();
        h0.set_device_minor(3).unwrap();
        h0.set_cksum();
        bare.extend_from_slice(h0.as_bytes());
        let mut tail = h.as_bytes().to_vec();
        tail.extend_from_slice(&[0; 1024]);
        std::fs::write(&path, [gz(&bare), gz(&tail)].concat()).unwrap();
        let e = check(d.path(), &p).unwrap_err();
        assert!(e.detail.contains("block device 8:0"), "{e}");
        // Trailing bytes that are not gzip.
        std::fs::write(&path, [first.clone(), b"junk".to_vec()].concat()).unwrap();
        assert!(check(d.path(), &p).is_err());
        // The size cap counts every member.
        let mut p2 = RestorePolicy::default();
        p2.max_tmpfs_bytes = 4096;
        std::fs::write(&path, [first.clone(), gz(&[0; 8192])].concat()).unwrap();
        assert_eq!(check(d.path(), &p2).unwrap_err().field, "size");
        std::fs::write(&path, &first).unwrap();
        check(d.path(), &p).unwrap();
    }

    /// Review finding 3: cgroup.img paths outside the dump's root cgroup (used by CRIU as
    /// written), `..` in directory names and property names outside the allowlist.
    #[test]
    fn cgroup_sets_stay_under_the_dump_root() {
        use criu_proto::images::{CgControllerEntry, CgMemberEntry, CgSetEntry, CgroupPropEntry};
        let d = images(creds());
        let p = RestorePolicy::default();
        let core = CoreEntry {
            mtype: 1,
            thread_core: Some(ThreadCoreEntry {
                creds: Some(creds()),
                cg_set: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        write(d.path(), "core-1.img", Header::Common(magic::CORE), &[core]);
        let member = |name: &str, path: &str| CgMemberEntry {
            name: name.into(),
            path: path.into(),
            cgns_prefix: None,
        };
        let dir = |name: &str, prop: &str, children: Vec<CgroupDirEntry>| CgroupDirEntry {
            dir_name: name.into(),
            children,
            properties: vec![CgroupPropEntry {
                name: prop.into(),
                value: "max".into(),
                perms: None,
            }],
            dir_perms: None,
        };
        let good = || CgroupEntry {
            sets: vec![
                CgSetEntry {
                    id: 2,
                    ctls: vec![member("pids", "/k/ctr"), member("", "/k/ctr")],
                },
                CgSetEntry {
                    id: 3,
                    ctls: vec![member("pids", "/k/ctr/sub"), member("", "/k/ctr")],
                },
            ],
            controllers: vec![
                CgControllerEntry {
                    cnames: vec!["pids".into()],
                    dirs: vec![dir(
                        "k/ctr",
                        "pids.max",
                        vec![dir("sub", "pids.max", vec![])],
                    )],
                    is_threaded: None,
                },
                CgControllerEntry {
                    cnames: vec!["".into()],
                    dirs: vec![dir("k/ctr", "memory.max", vec![])],
                    is_threaded: None,
                },
            ],
        };
        let put = |cg: &CgroupEntry| {
            write(
                d.path(),
                "cgroup.img",
                Header::Common(magic::CGROUP),
                std::slice::from_ref(cg),
            );
        };
        put(&good());
        assert_eq!(check(d.path(), &p).unwrap().cgroup_sets, 2);
        let cases: Vec<(CgroupEdit, &str)> = vec![
            // A member in the host's root cgroup.
            (
                Box::new(|c| c.sets[1].ctls[0].path = "/".into()),
                "set 3 pids path",
            ),
            // A sibling of the container's cgroup (a byte prefix, not a path prefix).
            (
                Box::new(|c| c.sets[1].ctls[0].path = "/k/ctrx".into()),
                "set 3 pids path",
            ),
            (
                Box::new(|c| c.sets[1].ctls[0].path = "/k/ctr/../../x".into()),
                "set 3 pids path",
            ),
            // The root set itself at the hierarchy's root, or not a dumped directory.
            (
                Box::new(|c| c.sets[0].ctls[0].path = "/".into()),
                "set 2 pids path",
            ),
            (
                Box::new(|c| c.sets[0].ctls[0].path = "/other".into()),
                "set 2 pids path",
            ),
            (
                Box::new(|c| c.controllers[0].dirs[0].children[0].dir_name = "../x".into()),
                "dir k/ctr/../x dir_name",
            ),
            (
                Box::new(|c| {
                    c.controllers[0].dirs[0].children[0].properties[0].name = "devices.allow".into()
                }),
                "dir k/ctr/sub property devices.allow",
            ),
            (
                Box::new(|c| {
                    c.controllers[0].dirs[0].properties[0].name = "../../x/memory.max".into()
                }),
                "dir k/ctr property ../../x/memory.max",
            ),
            (
                Box::new(|c| c.sets[1].ctls[0].cgns_prefix = Some(3)),
                "set 3 pids cgns_prefix",
            ),
        ];
        for (edit, field) in cases {
            let mut cg = good();
            edit(&mut cg);
            put(&cg);
            let e = check(d.path(), &p).unwrap_err();
            assert_eq!(
                (e.image.as_str(), e.field.as_str()),
                ("cgroup.img", field),
                "{e}"
            );
        }
        // The root task in CRIU's own set while the image has sets: refused.
        put(&good());
        write(
            d.path(),
            "core-1.img",
            Header::Common(magic::CORE),
            &[CoreEntry {
                mtype: 1,
                thread_core: Some(ThreadCoreEntry {
                    creds: Some(creds()),
                    ..Default::default()
                }),
                ..Default::default()
            }],
        );
        assert_eq!(check(d.path(), &p).unwrap_err().field, "thread_core.cg_set");
    }

    /// Review finding 12: oom_score_adj below the request's and hard rlimits above the
    /// node's are refused.
    #[test]
    fn oom_score_adj_and_rlimits() {
        use criu_proto::images::{RlimitEntry, TaskCoreEntry, TaskRlimitsEntry};
        let d = images(creds());
        let p = RestorePolicy::default();
        let put = |tc: TaskCoreEntry| {
            let core = CoreEntry {
                mtype: 1,
                tc: Some(tc),
                thread_core: Some(ThreadCoreEntry {
                    creds: Some(creds()),
                    ..Default::default()
                }),
                ..Default::default()
            };
            write(d.path(), "core-1.img", Header::Common(magic::CORE), &[core]);
        };
        put(TaskCoreEntry {
            oom_score_adj: Some(-1000),
            ..Default::default()
        });
        assert_eq!(
            check(d.path(), &p).unwrap_err().field,
            "task 1 tc.oom_score_adj"
        );
        let mut low = RestorePolicy::default();
        low.min_oom_score_adj = -1000;
        check(d.path(), &low).unwrap();
        // RLIMIT_NOFILE (7) one above the node's hard limit.
        let node = p.max_hard_rlimits[7];
        assert!(node < u64::MAX, "the node has no RLIMIT_NOFILE hard limit");
        let mut limits = vec![RlimitEntry { cur: 0, max: 0 }; 16];
        limits[7] = RlimitEntry {
            cur: 1024,
            max: node + 1,
        };
        put(TaskCoreEntry {
            oom_score_adj: Some(0),
            rlimits: Some(TaskRlimitsEntry {
                rlimits: limits.clone(),
            }),
            ..Default::default()
        });
        assert_eq!(
            check(d.path(), &p).unwrap_err().field,
            "task 1 tc.rlimits[7]"
        );
        limits[7].max = node;
        put(TaskCoreEntry {
            oom_score_adj: Some(0),
            rlimits: Some(TaskRlimitsEntry { rlimits: limits }),
            ..Default::default()
        });
        check(d.path(), &p).unwrap();
    }

    /// Review finding 11: supplementary groups within the request's, and no LSM label the
    /// request did not give.
    #[test]
    fn groups_and_lsm_labels() {
        let p = RestorePolicy::default();
        let mut c = creds();
        c.groups = vec![0, 10];
        let d = images(c);
        // The request fixes nothing: unchecked.
        check(d.path(), &p).unwrap();
        let mut fixed = RestorePolicy::default();
        fixed.gid = Some(0);
        fixed.supplementary_groups = Some(vec![5]);
        assert_eq!(
            check(d.path(), &fixed).unwrap_err().field,
            "thread 1 creds.groups"
        );
        fixed.supplementary_groups = Some(vec![10]);
        check(d.path(), &fixed).unwrap();
        for f in ["lsm_profile", "lsm_sockcreate"] {
            let mut c = creds();
            if f == "lsm_profile" {
                c.lsm_profile = Some("unconfined_t:s0".into());
            } else {
                c.lsm_sockcreate = Some("unconfined_t:s0".into());
            }
            let d = images(c);
            assert_eq!(
                check(d.path(), &p).unwrap_err().field,
                format!("thread 1 creds.{f}")
            );
            let mut with = RestorePolicy::default();
            with.lsm_profile = Some("unconfined_t:s0".into());
            check(d.path(), &with).unwrap();
        }
        let mut c = creds();
        c.lsm_profile = Some("unconfined".into());
        check(images(c).path(), &p).unwrap();
    }

    #[test]
    fn spec_devices_and_trust() {
        let d = images(creds());
        let spec =
            serde_json::json!({"linux": {"devices": [{"path": "/dev/null"}, {"path": "/etc"}]}});
        let p = RestorePolicy::default();
        let e = verify(d.path(), &spec, &p, &VerifyPlan::for_container(&spec, &p)).unwrap_err();
        assert_eq!(
            (e.image.as_str(), e.field.as_str()),
            ("spec.dump", "linux.devices[1].path")
        );
        let mut p = RestorePolicy::default();
        p.trust_archive = true;
        let v = verify(d.path(), &spec, &p, &VerifyPlan::default()).unwrap();
        assert!(v.trusted_unverified);
    }
}
