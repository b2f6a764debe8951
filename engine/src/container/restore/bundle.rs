//! Step 2 of a restore: the bundle. The checkpoint's spec, its bind mounts given their new
//! host sources ([`crate::container::binds`]) and its root pointing at the new rootfs, written
//! as the bundle's `config.json`; every mount point the spec needs created in the rootfs
//! (except under tmpfs mounts, whose content CRIU restores).

use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::container::binds::Source;
use crate::error::{Error, Result};

use super::options::CheckpointDir;

/// The written bundle and what the rest of the restore reads from its spec.
pub(crate) struct Bundle {
    /// The bundle directory (`config.json`).
    pub(crate) dir: PathBuf,
    pub(crate) spec: Spec,
    pub(crate) mounts: Vec<Mount>,
    /// The container has its own pid namespace (its ids are its own).
    pub(crate) has_pidns: bool,
    /// The spec's namespaces, named as runc records them (`NEWNET`, …).
    pub(crate) namespaces: Vec<String>,
}

/// Writes the bundle at `<run_dir>/bundle` for the rootfs at `rootfs`, bind sources from
/// `bind_plan` (file binds copied under `<lib_dir>/binds`).
pub(crate) fn write(
    ckpt: &CheckpointDir,
    bind_plan: &[(usize, Source)],
    run_dir: &Path,
    lib_dir: &Path,
    rootfs: &Path,
) -> Result<Bundle> {
    let bundle = run_dir.join("bundle");
    std::fs::create_dir_all(&bundle).map_err(Error::io("creating the bundle"))?;
    // The spec must be a valid OCI runtime spec before anything is derived from it (a hostile
    // spec.dump of the wrong shape is an error, never a panic).
    let mut spec_in = ckpt.spec.clone();
    crate::container::binds::apply(&mut spec_in, bind_plan, &lib_dir.join("binds"))?;
    let (spec, spec_json) = spec_with_root(&spec_in, rootfs)?;
    crate::container::state::write_atomic(
        &bundle.join("config.json"),
        &serde_json::to_vec_pretty(&spec_json).unwrap_or_default(),
        0o600,
    )
    .map_err(Error::io("writing the bundle's config.json"))?;
    let mounts = spec.mounts().clone().unwrap_or_default();
    prepare_mount_points(rootfs, &mounts)?;
    let spec_ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let has_pidns = spec_ns.iter().any(|n| n.typ() == LinuxNamespaceType::Pid);
    let namespaces = spec_ns
        .iter()
        .map(|n| runc_ns_name(n.typ()).to_string())
        .collect();
    Ok(Bundle {
        dir: bundle,
        spec,
        mounts,
        has_pidns,
        namespaces,
    })
}

/// The checkpoint's spec with its root pointing at the new rootfs: typed, and verbatim (every
/// field kept, for the bundle and the next checkpoint's `spec.dump`). The typed parse comes
/// first, so a spec of the wrong shape is an error before the JSON is edited.
pub fn spec_with_root(
    spec: &serde_json::Value,
    rootfs: &Path,
) -> Result<(Spec, serde_json::Value)> {
    let not_spec = |source| Error::SpecNotOci { source };
    serde_json::from_value::<oci_spec::runtime::Spec>(spec.clone()).map_err(not_spec)?;
    let mut json = spec.clone();
    let path = serde_json::Value::String(rootfs.display().to_string());
    match json.as_object_mut().map(|o| o.entry("root")) {
        Some(serde_json::map::Entry::Occupied(mut e)) => match e.get_mut() {
            serde_json::Value::Object(root) => {
                root.insert("path".into(), path);
            }
            other => *other = serde_json::json!({ "path": path }),
        },
        Some(serde_json::map::Entry::Vacant(e)) => {
            e.insert(serde_json::json!({ "path": path }));
        }
        None => {
            return Err(Error::SpecNotObject);
        }
    }
    let typed = serde_json::from_value(json.clone()).map_err(not_spec)?;
    Ok((typed, json))
}

fn runc_ns_name(t: LinuxNamespaceType) -> &'static str {
    use LinuxNamespaceType as T;
    match t {
        T::Mount => "NEWNS",
        T::Cgroup => "NEWCGROUP",
        T::Uts => "NEWUTS",
        T::Ipc => "NEWIPC",
        T::User => "NEWUSER",
        T::Pid => "NEWPID",
        T::Network => "NEWNET",
        T::Time => "NEWTIME",
    }
}

/// Creates the mount points the spec needs in the rootfs, except under tmpfs mounts (CRIU
/// restores their content, mount points included). Every path is resolved inside the rootfs
/// as its root (`openat2(RESOLVE_IN_ROOT)`): the rootfs comes from the archive's diff, and a
/// symlink planted there (`/evil -> /etc`) must not make a mount point appear on the host.
fn prepare_mount_points(rootfs: &Path, mounts: &[Mount]) -> Result<()> {
    use crate::beneath::{Resolve, Tree};
    let tmpfs: Vec<PathBuf> = mounts
        .iter()
        .filter(|m| m.typ().as_deref() == Some("tmpfs"))
        .map(|m| m.destination().clone())
        .collect();
    let tree = Tree::open(rootfs, Resolve::InRoot)
        .map_err(Error::io(format!("opening rootfs {}", rootfs.display())))?;
    for m in mounts {
        let dest = m.destination();
        if tmpfs.iter().any(|t| dest.starts_with(t) && dest != t) {
            continue;
        }
        let rel = dest.strip_prefix("/").unwrap_or(dest);
        if rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(Error::MountEscapes {
                destination: dest.to_path_buf(),
            });
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        let fail = Error::io(format!("creating mount point {}", dest.display()));
        let is_file_bind = m
            .source()
            .as_ref()
            .is_some_and(|s| std::fs::metadata(s).is_ok_and(|md| !md.is_dir()));
        let (parent, leaf) = tree.parent(rel, Some(0o755)).map_err(fail)?;
        let fail = Error::io(format!("creating mount point {}", dest.display()));
        if crate::beneath::lstat_at(std::os::fd::AsFd::as_fd(&parent), leaf)
            .map_err(fail)?
            .is_some()
        {
            continue;
        }
        let fail = Error::io(format!("creating mount point {}", dest.display()));
        if is_file_bind {
            nix::fcntl::openat(
                &parent,
                leaf,
                nix::fcntl::OFlag::O_CREAT
                    | nix::fcntl::OFlag::O_EXCL
                    | nix::fcntl::OFlag::O_WRONLY
                    | nix::fcntl::OFlag::O_NOFOLLOW
                    | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::from_bits_truncate(0o644),
            )
            .map(drop)
            .map_err(|e| fail(e.into()))?;
        } else {
            match nix::sys::stat::mkdirat(
                &parent,
                leaf,
                nix::sys::stat::Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(fail(e.into())),
            }
        }
    }
    Ok(())
}
