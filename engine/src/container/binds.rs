//! Where the bind mounts of a restored container come from.
//!
//! A checkpoint's `spec.dump` names host paths as the sources of the container's bind mounts,
//! and a restore bind-mounts whatever it names, as root. From an archive of unknown origin
//! that is a way into the host (`{"destination": "/data", "source": "/", "type": "bind"}`), so
//! a restore decides every source itself, before anything is created:
//!
//! - a destination the caller maps (`--mount SRC:DEST`, or the CRI request's mounts in the
//!   shim) gets the caller's source;
//! - a file or directory a container runtime manages itself (`/etc/hostname`,
//!   `/etc/resolv.conf`, `/etc/hosts`, `/run/.containerenv`, `/dev/shm`, …) gets a fresh one
//!   made in the container's state (see [`Placeholder`]);
//! - the checkpoint's own source is used only when the caller trusts the archive;
//! - anything else fails the restore, naming the destinations to map.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// The caller's decisions about bind mounts.
#[derive(Debug, Clone, Default)]
pub struct BindMounts {
    /// Container destination → host source to bind there.
    pub map: BTreeMap<PathBuf, PathBuf>,
    /// Keep the sources the checkpoint names for destinations not in `map`.
    pub trust_archive: bool,
}

/// What a runtime-managed destination gets when nobody maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    /// A copy of the host's file (DNS configuration).
    HostCopy(&'static str),
    /// The spec's hostname and a newline.
    Hostname,
    /// Loopback entries and the hostname.
    Hosts,
    EmptyFile,
    EmptyDir,
}

/// Destinations a container runtime fills in itself, and what they get here.
const RUNTIME_MANAGED: &[(&str, Placeholder)] = &[
    (
        "/etc/resolv.conf",
        Placeholder::HostCopy("/etc/resolv.conf"),
    ),
    ("/etc/hostname", Placeholder::Hostname),
    ("/etc/hosts", Placeholder::Hosts),
    ("/run/.containerenv", Placeholder::EmptyFile),
    ("/dev/termination-log", Placeholder::EmptyFile),
    ("/run/secrets", Placeholder::EmptyDir),
    ("/dev/shm", Placeholder::EmptyDir),
];

/// Whether a container runtime manages the bind mount at `dest` itself (the one list: a
/// restore makes a fresh source for it when nobody maps it, and the shim needs no
/// declaration of it in the CRI request).
pub fn is_runtime_managed(dest: &str) -> bool {
    managed(&normalize(dest)).is_some()
}

fn managed(dest: &str) -> Option<Placeholder> {
    RUNTIME_MANAGED
        .iter()
        .find(|(d, _)| *d == dest)
        .map(|(_, p)| *p)
}

/// One bind mount's new source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Mapped(PathBuf),
    Kept,
    Made(Placeholder),
}

/// The decision for every bind mount of `spec`, by its index in `spec.mounts`. Fails before
/// anything is created when a destination is neither mapped, nor runtime-managed, nor
/// trusted, or when the caller maps a destination the checkpoint has no bind mount at.
pub fn plan(spec: &Value, binds: &BindMounts) -> Result<Vec<(usize, Source)>> {
    let mut out = Vec::new();
    let mut unmapped = Vec::new();
    let mut used = Vec::new();
    for (i, m) in spec["mounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        if !is_bind(m) {
            continue;
        }
        let Some(dest) = m["destination"].as_str().map(normalize) else {
            continue;
        };
        if let Some(src) = binds.map.get(Path::new(&dest)) {
            used.push(dest);
            out.push((i, Source::Mapped(src.clone())));
        } else if binds.trust_archive {
            out.push((i, Source::Kept));
        } else if let Some(p) = managed(&dest) {
            out.push((i, Source::Made(p)));
        } else {
            let from = m["source"].as_str().unwrap_or("?");
            unmapped.push(format!("{dest} (from {from})"));
        }
    }
    if !unmapped.is_empty() {
        return Err(Error::UnmappedBinds { mounts: unmapped });
    }
    let unknown: Vec<String> = binds
        .map
        .keys()
        .map(|d| normalize(&d.to_string_lossy()))
        .filter(|d| !used.contains(d))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::UnknownBindDestination {
            destinations: unknown,
        });
    }
    for src in binds.map.values() {
        if !src.is_absolute() || !src.exists() {
            return Err(Error::BindSource { path: src.clone() });
        }
    }
    Ok(out)
}

/// Carries out `plan` on `spec`: mapped sources are set, placeholders are made under `dir`
/// (the container's own state) and set.
pub fn apply(spec: &mut Value, plan: &[(usize, Source)], dir: &Path) -> Result<()> {
    let hostname = spec["hostname"].as_str().unwrap_or("").to_string();
    for (i, s) in plan {
        let m = &mut spec["mounts"][*i];
        let new = match s {
            Source::Kept => continue,
            Source::Mapped(p) => p.clone(),
            Source::Made(p) => {
                let dest = m["destination"].as_str().map(normalize).unwrap_or_default();
                make(dir, &dest, *p, &hostname)?
            }
        };
        m["source"] = Value::String(new.display().to_string());
    }
    Ok(())
}

fn make(dir: &Path, dest: &str, p: Placeholder, hostname: &str) -> Result<PathBuf> {
    let name = dest.trim_start_matches('/').replace('/', "_");
    let path = dir.join(name);
    let fail = Error::io(format!("making {} for {dest}", path.display()));
    std::fs::create_dir_all(dir).map_err(Error::io(format!("creating {}", dir.display())))?;
    let content = match p {
        Placeholder::EmptyDir => {
            std::fs::create_dir_all(&path).map_err(fail)?;
            return Ok(path);
        }
        Placeholder::EmptyFile => String::new(),
        Placeholder::Hostname => format!("{hostname}\n"),
        Placeholder::Hosts => {
            let mut h = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n");
            if !hostname.is_empty() {
                h.push_str(&format!("127.0.1.1\t{hostname}\n"));
            }
            h
        }
        Placeholder::HostCopy(from) => std::fs::read_to_string(from).unwrap_or_default(),
    };
    std::fs::write(&path, content).map_err(fail)?;
    Ok(path)
}

/// Whether a `spec.mounts` entry is a bind mount (by type or by option).
pub fn is_bind(m: &Value) -> bool {
    m["type"] == "bind"
        || m["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

fn normalize(dest: &str) -> String {
    let t = dest.trim_end_matches('/');
    if t.is_empty() { "/".into() } else { t.into() }
}

/// Parses `SRC:DEST` (as `--mount` takes it).
pub fn parse_mount(s: &str) -> std::result::Result<(PathBuf, PathBuf), String> {
    match s.split_once(':') {
        Some((src, dest)) if !src.is_empty() && dest.starts_with('/') => {
            Ok((PathBuf::from(dest), PathBuf::from(src)))
        }
        _ => Err(format!(
            "expected SRC:DEST with an absolute DEST, got {s:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({"hostname": "web", "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts", "options": ["rbind"]},
            {"destination": "/data/", "source": "/srv/data", "options": ["bind", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/pod/shm"},
        ]})
    }

    #[test]
    fn an_unmapped_host_bind_is_refused_naming_it() {
        let e = plan(&spec(), &BindMounts::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/data (from /srv/data)") && e.contains("--mount"),
            "{e}"
        );
        assert!(!e.contains("/etc/hosts") && !e.contains("/dev/shm"), "{e}");
    }

    #[test]
    fn mapped_managed_and_trusted_binds_get_their_sources() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = BindMounts::default();
        b.map.insert("/data".into(), dir.path().to_path_buf());
        let p = plan(&spec(), &b).unwrap();
        assert_eq!(
            p,
            vec![
                (1, Source::Made(Placeholder::Hosts)),
                (2, Source::Mapped(dir.path().to_path_buf())),
                (3, Source::Made(Placeholder::EmptyDir)),
            ]
        );
        let mut s = spec();
        let state = dir.path().join("binds");
        apply(&mut s, &p, &state).unwrap();
        assert_eq!(s["mounts"][2]["source"], dir.path().display().to_string());
        let hosts = s["mounts"][1]["source"].as_str().unwrap();
        assert!(hosts.starts_with(&state.display().to_string()));
        assert!(
            std::fs::read_to_string(hosts)
                .unwrap()
                .contains("127.0.1.1\tweb")
        );
        assert!(Path::new(s["mounts"][3]["source"].as_str().unwrap()).is_dir());
        assert_eq!(s["mounts"][0]["source"], "proc");

        let trusted = BindMounts {
            trust_archive: true,
            ..Default::default()
        };
        assert!(
            plan(&spec(), &trusted)
                .unwrap()
                .iter()
                .all(|(_, s)| *s == Source::Kept)
        );
    }

    #[test]
    fn a_mapping_for_a_destination_without_a_bind_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = BindMounts {
            trust_archive: true,
            ..Default::default()
        };
        b.map.insert("/elsewhere".into(), dir.path().to_path_buf());
        let e = plan(&spec(), &b).unwrap_err().to_string();
        assert!(e.contains("no bind mount at /elsewhere"), "{e}");
    }

    #[test]
    fn runtime_managed_destinations_are_one_list() {
        for d in [
            "/etc/hosts",
            "/etc/hosts/",
            "/etc/resolv.conf",
            "/dev/shm",
            "/run/secrets",
        ] {
            assert!(is_runtime_managed(d), "{d}");
        }
        for d in ["/data", "/etc", "/", "/proc"] {
            assert!(!is_runtime_managed(d), "{d}");
        }
    }

    #[test]
    fn mount_arguments_parse() {
        assert_eq!(
            parse_mount("/srv/d:/data").unwrap(),
            (PathBuf::from("/data"), PathBuf::from("/srv/d"))
        );
        assert!(parse_mount("/srv/d").is_err());
        assert!(parse_mount("/srv/d:data").is_err());
    }
}
