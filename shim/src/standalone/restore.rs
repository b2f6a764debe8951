//! Restore at `CreateContainer`, the way CRI-O does it.
//!
//! The image a container names may be a checkpoint:
//! * an existing file at an absolute path: a checkpoint archive (what `crictl create` with an
//!   archive path sends), extracted safely into the container's directory;
//! * an image in the store carrying a checkpoint annotation
//!   (`io.kubernetes.cri-o.annotations.checkpoint.name` or
//!   `org.criu.checkpoint.container.name`): its layer holds the archive's members.
//!
//! `CreateContainer` then prepares: it reads `spec.dump` and `config.dump`, checks that
//! `checkpoint/inventory.img` is there, resolves the base image named in `config.dump`
//! (`rootfsImageRef`, `rootfsImageName`, `rootfsImage`) in the image store, requires every bind
//! mount of the checkpointed container to be declared again in the request (as CRI-O does;
//! the new sources replace the old), points the pod-managed files and the shared namespaces at
//! the new pod, and records the plan. `StartContainer` runs the engine's restore with it.

use std::path::{Path, PathBuf};

pub use cpengine::container::DumpedNamespaces;
use cpengine::{CheckpointDir, ContainerRestoreOptions};
use serde_json::Value;

use crate::domain::*;
use crate::error::{Result, ShimError};

use super::store::{CtrKind, CtrRecord, Phase, PodRecord, RestorePlan, new_id};
use super::{ImageBackend, Standalone, create_private_dir};

/// Annotation keys that mark an image as a checkpoint.
pub const CHECKPOINT_ANNOTATIONS: &[&str] = &[
    cpengine::oci::annotations::CRIO_CHECKPOINT_NAME,
    cpengine::oci::annotations::CRIU_CONTAINER_NAME,
    cpengine::oci::annotations::PODMAN_CHECKPOINT_NAME,
];

/// Where a checkpoint comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointSource {
    Archive(PathBuf),
    Image(String),
}

/// Whether `image` names a checkpoint. An archive path is accepted only in one of the
/// `allowed` checkpoint directories (the shim's `--checkpoint-dir`s) and only as a regular
/// file (not a symlink): the request's author names a file, the node admin decides which
/// files may be restored. A checkpoint image is named exactly (a whole reference or id, never
/// an id prefix, which could pick another tenant's checkpoint).
pub async fn detect<I: ImageBackend>(
    image: &str,
    images: &I,
    allowed: &[PathBuf],
) -> Result<Option<CheckpointSource>> {
    let p = Path::new(image);
    if p.is_absolute() && p.is_file() {
        crate::checkpoint::check_allowed(p, allowed)?;
        let md = std::fs::symlink_metadata(p).map_err(ShimError::fs("reading", p))?;
        if !md.file_type().is_file() {
            return Err(ShimError::InvalidArgument(format!(
                "checkpoint archive {image} is not a regular file"
            )));
        }
        return Ok(Some(CheckpointSource::Archive(p.to_path_buf())));
    }
    if p.is_absolute() {
        // An absolute path that is not a file cannot be an image reference either.
        return Err(ShimError::InvalidArgument(format!(
            "image {image:?} is an absolute path but not an existing checkpoint archive"
        )));
    }
    match images.status(image).await? {
        Some(info)
            if CHECKPOINT_ANNOTATIONS
                .iter()
                .any(|k| info.annotations.contains_key(*k)) =>
        {
            if !cpengine::oci::is_exact_name(image) {
                return Err(ShimError::InvalidArgument(format!(
                    "image {image:?} names a checkpoint image by an id prefix; name checkpoint images by their whole reference or id"
                )));
            }
            Ok(Some(CheckpointSource::Image(image.to_string())))
        }
        _ => Ok(None),
    }
}

/// Re-points the checkpoint spec's mounts at the new pod and the request's declared mounts,
/// and returns what it pointed where (destination → host source). Fails, naming them, if bind
/// mounts of the checkpoint are not declared.
pub fn repoint_mounts(
    spec: &mut Value,
    req: &ContainerSpec,
    pod: &PodRecord,
) -> Result<std::collections::BTreeMap<PathBuf, PathBuf>> {
    let mut missing = Vec::new();
    let mut given = std::collections::BTreeMap::new();
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for m in mounts.iter_mut() {
            let Some(dest) = m["destination"]
                .as_str()
                .map(|d| d.trim_end_matches('/').to_string())
            else {
                continue;
            };
            if !cpengine::container::binds::is_bind(m) {
                continue;
            }
            let pod_file = match dest.as_str() {
                "/etc/resolv.conf" => pod.resolv_conf.clone(),
                "/etc/hostname" => pod.hostname_file.clone(),
                // A runtime that bind-mounts a pod-wide /dev/shm (containerd does): the new
                // pod's shm directory takes its place.
                "/dev/shm" => pod_shm_dir(pod)?,
                _ => None,
            };
            if let Some(f) = pod_file {
                m["source"] = Value::String(f.display().to_string());
                given.insert(PathBuf::from(&dest), f);
                continue;
            }
            match req
                .mounts
                .iter()
                .find(|r| r.container_path.trim_end_matches('/') == dest)
            {
                Some(r) => {
                    m["source"] = Value::String(r.host_path.clone());
                    given.insert(PathBuf::from(&dest), PathBuf::from(&r.host_path));
                }
                None if cpengine::container::binds::is_runtime_managed(&dest) => {}
                None => missing.push(dest),
            }
        }
    }
    if !missing.is_empty() {
        return Err(ShimError::FailedPrecondition(format!(
            "restoring this checkpoint expects these bind mounts to be declared: {}",
            missing.join(", ")
        )));
    }
    Ok(given)
}

/// The pod's shared /dev/shm directory (beside its resolv.conf), created on first use.
fn pod_shm_dir(pod: &PodRecord) -> Result<Option<PathBuf>> {
    let Some(dir) = pod.resolv_conf.as_ref().and_then(|r| r.parent()) else {
        return Ok(None);
    };
    let shm = dir.join("shm");
    std::fs::create_dir_all(&shm).map_err(ShimError::fs("creating", &shm))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777))
        .map_err(ShimError::fs("setting the mode of", &shm))?;
    Ok(Some(shm))
}

/// Points the spec's shared namespaces at the new pod's holder. The network must match: a
/// container checkpointed in its own network namespace needs a pod with one, a host-network
/// container a host-network pod. IPC and UTS namespaces the pod shares are joined; others are
/// recreated by CRIU (dumped ones) or the host's (the rest).
pub fn repoint_namespaces(
    spec: &mut Value,
    pod: &PodRecord,
    dumped: DumpedNamespaces,
) -> Result<()> {
    let h = pod.holder;
    let (pnet, pipc, puts) = h.map(|h| (h.net, h.ipc, h.uts)).unwrap_or_default();
    if dumped.net != pnet {
        return Err(ShimError::FailedPrecondition(format!(
            "the checkpoint was taken in {} but pod {} uses {}",
            if dumped.net {
                "its own network namespace"
            } else {
                "the host network"
            },
            pod.id,
            if pnet {
                "a pod network namespace"
            } else {
                "the host network"
            }
        )));
    }
    let Some(list) = spec["linux"]["namespaces"].as_array_mut() else {
        return Ok(());
    };
    list.retain_mut(|n| {
        let (kind, shared, was_own) = match n["type"].as_str() {
            Some("network") => ("net", pnet, dumped.net),
            Some("ipc") => ("ipc", pipc, dumped.ipc),
            Some("uts") => ("uts", puts, dumped.uts),
            _ => return true,
        };
        match (shared, h) {
            (true, Some(h)) => {
                n["path"] = Value::String(h.holder().ns_path(kind).display().to_string());
                true
            }
            _ if was_own => {
                if let Some(o) = n.as_object_mut() {
                    o.remove("path");
                }
                true
            }
            // It was the host's namespace, named by path: the host's it stays.
            _ => false,
        }
    });
    Ok(())
}

/// Sets the annotations that name the pod and container to the new ones.
fn reannotate(spec: &mut Value, req: &ContainerSpec, pod: &PodRecord) {
    if !spec["annotations"].is_object() {
        spec["annotations"] = Value::Object(Default::default());
    }
    let md = &pod.spec.metadata;
    let a = &mut spec["annotations"];
    for (k, v) in &req.annotations {
        a[k.as_str()] = Value::String(v.clone());
    }
    for (k, v) in [
        ("io.kubernetes.cri.container-name", req.name.as_str()),
        ("io.kubernetes.cri.sandbox-id", pod.id.as_str()),
        ("io.kubernetes.cri.sandbox-name", md.name.as_str()),
        ("io.kubernetes.cri.sandbox-namespace", md.namespace.as_str()),
        ("io.kubernetes.cri.sandbox-uid", md.uid.as_str()),
    ] {
        a[k] = Value::String(v.to_string());
    }
}

impl<I: ImageBackend> Standalone<I> {
    pub(super) async fn create_restored(
        &self,
        pod: PodRecord,
        req: ContainerSpec,
        source: CheckpointSource,
    ) -> Result<String> {
        let id = new_id();
        let run_dir = self.store.ctr_run_dir(&id);
        let lib_dir = self.store.ctr_lib_dir(&id);
        let result = self
            .prepare_restore(&id, &pod, &req, &source, &run_dir, &lib_dir)
            .await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&run_dir);
            let _ = std::fs::remove_dir_all(&lib_dir);
        }
        result
    }

    /// `CreateContainer` of a checkpoint: extracts it, finds its base image, points its spec
    /// at the new pod and records the plan `StartContainer` restores from.
    async fn prepare_restore(
        &self,
        id: &str,
        pod: &PodRecord,
        req: &ContainerSpec,
        source: &CheckpointSource,
        run_dir: &Path,
        lib_dir: &Path,
    ) -> Result<String> {
        create_private_dir(run_dir)?;
        create_private_dir(lib_dir)?;
        let source_name = match source {
            CheckpointSource::Archive(a) => std::path::absolute(a)
                .map_err(|e| ShimError::Internal(format!("{}: {e}", a.display())))?
                .display()
                .to_string(),
            CheckpointSource::Image(r) => r.clone(),
        };
        let (ckpt, extracted) = self.open_checkpoint(&source_name, lib_dir).await?;
        let mut spec = ckpt.spec.clone();
        let refs = archive_base_refs(&extracted.config);
        let base = self.base_image(&refs, &source_name).await?;
        let binds = repoint_mounts(&mut spec, req, pod)?;
        repoint_namespaces(&mut spec, pod, dumped_namespaces(&ckpt)?)?;
        reannotate(&mut spec, req, pod);
        let log = new_log(pod, req, lib_dir, &extracted)?;
        let plan = RestorePlan {
            dir: extracted.root.clone(),
            source: source_name,
            spec,
            config: ckpt.config.clone(),
            base_layers: base.layers.clone(),
            binds,
            signed_by: extracted.signed_by.map(|k| k.to_line()),
        };
        let image_name = base
            .info
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| refs.first().cloned().unwrap_or_default());
        let rec = CtrRecord {
            id: id.to_string(),
            pod_id: pod.id.clone(),
            spec: req.clone(),
            kind: CtrKind::Restored,
            phase: Phase::Created,
            image_ref: base.image_ref.clone(),
            image_id: base.info.id.clone(),
            image_name,
            log_path: log,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: None,
            reason: String::new(),
            message: String::new(),
            pid: None,
            pid_start: 0,
            bundle: self.cfg.state.container_run_dir(id).join("bundle"),
            rootfs: self.cfg.state.container_run_dir(id).join("rootfs"),
            upper: self.cfg.state.container_lib_dir(id).join("upper"),
            work: self.cfg.state.container_lib_dir(id).join("work"),
            lowers: vec![],
            relay_pid: None,
            stop_signal: Some(base.config.stop_signal.clone()).filter(|s| !s.is_empty()),
            restore: Some(plan),
        };
        self.store.save_ctr(&rec)?;
        tracing::info!(container = %id, from = %rec.restore.as_ref().map(|r| r.source.as_str()).unwrap_or(""), "container prepared for restore");
        Ok(id.to_string())
    }

    /// The archive, or the checkpoint image's layer, through the engine's safe extractor into
    /// `<lib_dir>/checkpoint`; refused unless it holds CRIU images and an OCI spec.
    async fn open_checkpoint(
        &self,
        source_name: &str,
        lib_dir: &Path,
    ) -> Result<(CheckpointDir, cpengine::archive::Extracted)> {
        let dir = lib_dir.join("checkpoint");
        let trust = self.checkpointer.require_signed();
        let (ckpt, extracted) =
            cpengine::Engine::open_checkpoint(source_name, &self.cfg.state, &dir, false, trust)
                .await
                .map_err(|source| match source {
                    cpengine::Error::Archive(source) => ShimError::Archive {
                        step: "extracting the checkpoint",
                        source,
                    },
                    source => ShimError::Engine {
                        step: "opening the checkpoint",
                        source,
                    },
                })?;
        if !ckpt.has_images() {
            return Err(ShimError::InvalidArgument(format!(
                "{source_name} is not a checkpoint: checkpoint/inventory.img is missing"
            )));
        }
        serde_json::from_value::<oci_spec::runtime::Spec>(ckpt.spec.clone()).map_err(|e| {
            ShimError::InvalidArgument(format!(
                "spec.dump of {source_name} is not an OCI spec: {e}"
            ))
        })?;
        Ok((ckpt, extracted))
    }

    /// The first of the checkpoint's base image names (`refs`) the image store has.
    async fn base_image(&self, refs: &[String], source_name: &str) -> Result<ResolvedImage> {
        for r in refs {
            if let Ok(img) = self.images.resolve(r).await {
                return Ok(img);
            }
        }
        Err(ShimError::FailedPrecondition(format!(
            "the base image of checkpoint {source_name} ({}) is not in the image store; pull it first",
            if refs.is_empty() {
                "not named in config.dump".to_string()
            } else {
                refs.join(" / ")
            }
        )))
    }

    /// `StartContainer` of a container prepared for restore: the engine's restore with the
    /// recorded plan, held to the live request.
    pub(super) async fn start_restored(&self, rec: CtrRecord) -> Result<()> {
        let plan = rec
            .restore
            .clone()
            .ok_or_else(|| ShimError::Internal("restore plan missing".into()))?;
        check_provenance(&plan, self.checkpointer.require_signed())?;
        let pod = self.ready_pod(&rec.pod_id)?;
        let ckpt = CheckpointDir::reopen(
            &plan.dir,
            plan.spec.clone(),
            plan.config.clone(),
            Some(plan.source.clone()),
        )
        .map_err(ShimError::engine("reopening the extracted checkpoint"))?;
        let opts = self.restore_options(&rec, &plan, &pod, &ckpt)?;
        let engine = self.checkpointer.engine().await?;
        let report = engine
            .restore_container(&ckpt, &opts)
            .await
            .map_err(ShimError::engine("restoring the container"))?;
        self.reaper.track(report.pid);
        let start = cpengine::proc::start_time(report.pid).unwrap_or(0);
        tracing::info!(container = %rec.id, pid = report.pid, total_ms = report.total.as_millis() as u64, "container restored");
        self.store.update_ctr(&rec.id, |c| {
            c.phase = Phase::Started;
            c.started_at = now_ns();
            c.pid = Some(report.pid);
            c.pid_start = start;
            c.rootfs = report.rootfs.clone();
            c.relay_pid = Some(report.relay_pid);
        })?;
        if !cpengine::proc::is_same_process(report.pid, start) {
            tracing::warn!(container = %rec.id, "restored container exited right away");
        }
        Ok(())
    }

    /// The engine's options for restoring `rec` from `plan`: the base image's layers, the
    /// new log and binds, the policy and limits of the live request, the pod's namespaces.
    fn restore_options(
        &self,
        rec: &CtrRecord,
        plan: &RestorePlan,
        pod: &PodRecord,
        ckpt: &CheckpointDir,
    ) -> Result<ContainerRestoreOptions> {
        let mut opts = ContainerRestoreOptions::new(&rec.id, self.cfg.state.clone());
        // The base image's layers, top first (overlay order).
        opts.base_layers = plan.base_layers.iter().rev().cloned().collect();
        opts.log_path = Some(rec.log_path.clone());
        opts.relay_exe = Some(self.cfg.exe.clone());
        opts.binds.map = plan.binds.clone();
        // What the restored container may have comes from the live request, never the archive.
        opts.policy = restore_policy(&rec.spec.security, rec.spec.resources.oom_score_adj, pod);
        // Its cgroup limits come from the request too (the devices from the policy).
        let r = &rec.spec.resources;
        let pos = |v: i64| Some(v).filter(|v| *v > 0);
        opts.containment.resources = cpengine::container::containment::Resources {
            memory_limit: pos(r.memory_limit_in_bytes),
            cpu_shares: pos(r.cpu_shares).map(|v| v as u64),
            cpu_quota: pos(r.cpu_quota),
            cpu_period: pos(r.cpu_period).map(|v| v as u64),
            pids_limit: None,
        };
        let dumped = dumped_namespaces(ckpt)?;
        if let Some(h) = &pod.holder {
            let holder = h.holder();
            if dumped.net && h.net {
                opts.netns = Some(holder.ns_path("net"));
            }
            for (on, kind) in [(dumped.ipc && h.ipc, "ipc"), (dumped.uts && h.uts, "uts")] {
                if on {
                    opts.join_ns.push(cpengine::options::JoinNamespace {
                        ns: kind.into(),
                        path: holder.ns_path(kind),
                    });
                }
            }
        }
        Ok(opts)
    }
}

/// The new container's log (made with its directory); the checkpointed container's log, if
/// the archive has one, carries on in it.
fn new_log(
    pod: &PodRecord,
    req: &ContainerSpec,
    lib_dir: &Path,
    extracted: &cpengine::archive::Extracted,
) -> Result<PathBuf> {
    let log = super::pod::log_path(pod, req, lib_dir)?;
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).map_err(ShimError::fs("creating", parent))?;
    }
    if let Some(saved) = &extracted.log {
        let _ = carry_log(saved, &log);
    }
    Ok(log)
}

/// The engine's reading of the checkpoint's namespaces, as a shim error.
fn dumped_namespaces(ckpt: &CheckpointDir) -> Result<DumpedNamespaces> {
    ckpt.dumped_namespaces()
        .map_err(ShimError::engine("reading the checkpoint's namespaces"))
}

/// The base image names a checkpoint's `config.dump` gives, in the order they are tried. The
/// archive's word: a whole reference or id only, never an id prefix that could pick another
/// tenant's image from the store.
fn archive_base_refs(config: &cpengine::archive::ConfigDump) -> Vec<String> {
    config
        .base_image_refs()
        .into_iter()
        .filter(|s| cpengine::oci::is_exact_name(s))
        .collect()
}

/// Copies the checkpointed container's log `saved` into the new container log `log`, if
/// nothing is there yet (not even a symlink, dangling or not: `O_CREAT | O_EXCL | O_NOFOLLOW`
/// never follows one). The new log is the runtime's own file, mode 0640 (set with `fchmod`,
/// whatever the umask), never the archive's mode. Returns whether it copied.
fn carry_log(saved: &Path, log: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut src = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(saved)?;
    if !src.metadata()?.is_file() {
        return Ok(false);
    }
    let mut dst = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(e),
    };
    dst.set_permissions(std::fs::Permissions::from_mode(0o640))?;
    std::io::copy(&mut src, &mut dst)?;
    Ok(true)
}

/// A checkpoint extracted at CreateContainer restores at StartContainer only if it was verified
/// then by a key trusted now (the shim may have been restarted with `--require-signed`, or
/// with other keys, in between).
fn check_provenance(
    plan: &RestorePlan,
    trust: Option<&cpengine::archive::sign::TrustedKeys>,
) -> Result<()> {
    use cpengine::archive::sign::{ProvenanceError, PublicKey};
    let Some(trust) = trust else {
        return Ok(());
    };
    let refusal = match plan.signed_by.as_deref().map(PublicKey::parse) {
        None => ProvenanceError::Unsigned,
        Some(Ok(k)) if trust.contains(&k) => return Ok(()),
        Some(Ok(k)) => ProvenanceError::UntrustedKey { key_id: k.key_id() },
        Some(Err(detail)) => ProvenanceError::BadSignatureMember {
            field: "signed_by (the restore plan)",
            detail,
        },
    };
    Err(ShimError::Archive {
        step: "starting a restored container",
        source: cpengine::archive::ArchiveError::Provenance(refusal),
    })
}

/// The restore policy of a CRI request: its container security context and its pod's
/// namespace options, decided by [`cpengine::policy::RestorePolicy::from_security`]. Seccomp
/// is not required: the standalone runtime does not apply seccomp profiles to the containers
/// it creates either.
pub fn restore_policy(
    sec: &Security,
    oom_score_adj: i64,
    pod: &PodRecord,
) -> cpengine::policy::RestorePolicy {
    use cpengine::policy::Namespace;
    let mut host = std::collections::BTreeSet::new();
    if pod.spec.namespaces.network == NsMode::Node {
        // A pod on the host's network has the host's UTS namespace too.
        host.extend([Namespace::Net, Namespace::Uts]);
    }
    if pod.spec.namespaces.ipc == NsMode::Node {
        host.insert(Namespace::Ipc);
    }
    if sec.pid_mode.unwrap_or(pod.spec.namespaces.pid) == NsMode::Node {
        host.insert(Namespace::Pid);
    }
    cpengine::policy::RestorePolicy::from_security(&cpengine::policy::SecurityRequest {
        privileged: sec.privileged,
        add_capabilities: sec.add_capabilities.clone(),
        drop_capabilities: sec.drop_capabilities.clone(),
        no_new_privs: sec.no_new_privs,
        run_as_user: sec.run_as_user.and_then(|u| u32::try_from(u).ok()),
        run_as_group: sec.run_as_group.and_then(|g| u32::try_from(g).ok()),
        seccomp_confined: false,
        host_namespaces: host,
        oom_score_adj: (oom_score_adj != 0)
            .then(|| i32::try_from(oom_score_adj.clamp(-1000, 1000)).unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 7: CreateContainer may name only archives in the shim's
    /// --checkpoint-dir, as regular files (not another tenant's file, not a symlink out).
    #[tokio::test]
    async fn archives_only_from_the_checkpoint_dirs() {
        let state_dir = tempfile::tempdir().unwrap();
        let state = cpengine::container::StateRoot::at(state_dir.path());
        let images = crate::images::oci::OciImages::open(&state).await.unwrap();
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let inside = allowed.path().join("mine.tar");
        let outside = elsewhere.path().join("victim.tar");
        std::fs::write(&inside, b"x").unwrap();
        std::fs::write(&outside, b"x").unwrap();
        let link = allowed.path().join("link.tar");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        let dirs = vec![allowed.path().to_path_buf()];
        let name = |p: &Path| p.display().to_string();
        assert_eq!(
            detect(&name(&inside), &images, &dirs).await.unwrap(),
            Some(CheckpointSource::Archive(inside.clone()))
        );
        for bad in [&outside, &link] {
            let e = detect(&name(bad), &images, &dirs).await.unwrap_err();
            assert!(matches!(e, ShimError::InvalidArgument(_)), "{bad:?}: {e}");
        }
        // No --checkpoint-dir at all: no archive.
        assert!(detect(&name(&inside), &images, &[]).await.is_err());
    }

    /// An id prefix in config.dump is not a name the shim looks up; whole names and ids are.
    #[test]
    fn archive_base_names_are_exact_only() {
        let id = "a".repeat(64);
        let c = cpengine::archive::ConfigDump {
            rootfs_image_ref: "4b6f3953b87c".into(),
            rootfs_image_name: "sha256:4b6f".into(),
            rootfs_image: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        };
        assert_eq!(archive_base_refs(&c), ["docker.io/library/busybox:latest"]);
        let c = cpengine::archive::ConfigDump {
            rootfs_image_ref: format!("sha256:{id}"),
            ..Default::default()
        };
        assert_eq!(archive_base_refs(&c), [format!("sha256:{id}")]);
    }

    /// The archive's log comes with mode 0777 and the new log's path is a dangling symlink
    /// to a host file: the log is created 0640 without the archive's mode, and nothing is
    /// written through the symlink.
    #[test]
    fn the_carried_log_has_its_own_mode_and_never_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let saved = t.path().join("saved.log");
        std::fs::write(&saved, b"old lines\n").unwrap();
        std::fs::set_permissions(&saved, std::fs::Permissions::from_mode(0o777)).unwrap();
        let log = t.path().join("new.log");
        assert!(carry_log(&saved, &log).unwrap());
        assert_eq!(std::fs::read(&log).unwrap(), b"old lines\n");
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);

        let host = t.path().join("host-file");
        let link = t.path().join("link.log");
        std::os::unix::fs::symlink(&host, &link).unwrap();
        assert!(!carry_log(&saved, &link).unwrap_or(false));
        assert!(
            !host.exists(),
            "the log was written through a dangling symlink"
        );
    }
    use crate::domain::MountSpec;
    use crate::standalone::store::HolderRecord;
    use serde_json::json;

    fn pod(holder: Option<HolderRecord>) -> PodRecord {
        PodRecord {
            id: "newpod".into(),
            spec: PodSpec::default(),
            created_at: 0,
            state: PodState::Ready,
            holder,
            resolv_conf: Some("/new/resolv.conf".into()),
            hostname_file: Some("/new/hostname".into()),
        }
    }

    #[test]
    fn undeclared_bind_mounts_are_named_and_declared_ones_repointed() {
        let mut spec = json!({"mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/old/resolv.conf", "options": ["rbind"]},
            {"destination": "/data", "type": "bind", "source": "/old/data", "options": ["rbind", "rw"]},
            {"destination": "/cache", "type": "none", "source": "/old/cache", "options": ["bind"]},
        ]});
        let mut req = ContainerSpec::default();
        let err = repoint_mounts(&mut spec.clone(), &req, &pod(None)).unwrap_err();
        assert!(
            matches!(&err, ShimError::FailedPrecondition(m) if m.contains("/data, /cache")),
            "{err}"
        );
        req.mounts = vec![
            MountSpec {
                container_path: "/data".into(),
                host_path: "/new/data".into(),
                ..Default::default()
            },
            MountSpec {
                container_path: "/cache/".into(),
                host_path: "/new/cache".into(),
                ..Default::default()
            },
        ];
        repoint_mounts(&mut spec, &req, &pod(None)).unwrap();
        assert_eq!(spec["mounts"][1]["source"], "/new/resolv.conf");
        assert_eq!(spec["mounts"][2]["source"], "/new/data");
        assert_eq!(spec["mounts"][3]["source"], "/new/cache");
    }

    #[test]
    fn namespaces_follow_the_new_pod_and_must_match_its_kinds() {
        let h = HolderRecord {
            pid: 77,
            start: 1,
            net: true,
            ipc: true,
            uts: true,
        };
        let spec = json!({"linux": {"namespaces": [
            {"type": "pid"}, {"type": "network", "path": "/proc/5/ns/net"},
            {"type": "ipc", "path": "/proc/5/ns/ipc"}, {"type": "uts", "path": "/proc/5/ns/uts"},
        ]}});
        let all = DumpedNamespaces {
            net: true,
            ipc: true,
            uts: true,
        };
        let mut s1 = spec.clone();
        repoint_namespaces(&mut s1, &pod(Some(h)), all).unwrap();
        assert_eq!(s1["linux"]["namespaces"][1]["path"], "/proc/77/ns/net");
        assert_eq!(s1["linux"]["namespaces"][3]["path"], "/proc/77/ns/uts");
        // A host-network pod cannot take a container checkpointed in its own network.
        let host = HolderRecord {
            net: false,
            uts: false,
            ..h
        };
        assert!(matches!(
            repoint_namespaces(&mut spec.clone(), &pod(Some(host)), all),
            Err(ShimError::FailedPrecondition(_))
        ));
        // containerd names the host's network and UTS namespaces by path (its pause's) for a
        // host-network pod: those entries go, the shared IPC is joined.
        let mut s2 = spec.clone();
        let dumped = DumpedNamespaces {
            net: false,
            ipc: true,
            uts: false,
        };
        repoint_namespaces(&mut s2, &pod(Some(host)), dumped).unwrap();
        assert_eq!(
            s2["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "ipc", "path": "/proc/77/ns/ipc"}])
        );
    }

    #[test]
    fn dumped_namespaces_come_from_image_names() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "inventory.img",
            "netns-ct-10.img",
            "ipcns-var-11.img",
            "utsns-12.img",
        ] {
            std::fs::write(dir.path().join(f), b"").unwrap();
        }
        let d = DumpedNamespaces::read(dir.path()).unwrap();
        assert_eq!(
            d,
            DumpedNamespaces {
                net: false,
                ipc: true,
                uts: true
            }
        );
        std::fs::write(dir.path().join("netns-10.img"), b"").unwrap();
        assert!(DumpedNamespaces::read(dir.path()).unwrap().net);
    }

    /// Review of the signing change: a checkpoint extracted while signatures were not required
    /// (or verified by a key no longer trusted) is refused at StartContainer once they are.
    #[test]
    fn start_rechecks_the_extraction_against_the_keys_trusted_now() {
        use cpengine::archive::sign::{PublicKey, TrustedKeys};
        // Two valid points: [1, 1, …] and the base point's encoding.
        let mut base = [0x66; 32];
        base[0] = 0x58;
        let (ours, theirs) = (PublicKey([1; 32]), PublicKey(base));
        let plan = |signed_by: Option<&PublicKey>| RestorePlan {
            dir: PathBuf::from("/nonexistent"),
            source: "a.tar".into(),
            spec: serde_json::Value::Null,
            config: None,
            base_layers: vec![],
            binds: Default::default(),
            signed_by: signed_by.map(PublicKey::to_line),
        };
        let trust = TrustedKeys::new([ours]);
        assert!(check_provenance(&plan(None), None).is_ok());
        assert!(check_provenance(&plan(Some(&ours)), Some(&trust)).is_ok());
        for (p, want) in [
            (plan(None), "is not signed"),
            (plan(Some(&theirs)), "not a trusted key"),
        ] {
            let st = tonic::Status::from(check_provenance(&p, Some(&trust)).unwrap_err());
            assert!(st.message().contains(want), "{st:?}");
            assert_eq!(st.code(), tonic::Code::PermissionDenied, "{st:?}");
        }
    }

    #[test]
    fn the_policy_comes_from_the_request() {
        let mut p = pod(None);
        let sec = Security {
            add_capabilities: vec!["CAP_SYS_PTRACE".into()],
            drop_capabilities: vec!["NET_RAW".into()],
            run_as_user: Some(1000),
            no_new_privs: true,
            ..Default::default()
        };
        let pol = restore_policy(&sec, 0, &p);
        assert!(
            pol.capabilities
                .contains(cpengine::policy::Cap::CAP_SYS_PTRACE)
        );
        assert!(
            !pol.capabilities
                .contains(cpengine::policy::Cap::CAP_NET_RAW)
        );
        assert!(
            !pol.capabilities
                .contains(cpengine::policy::Cap::CAP_SYS_ADMIN)
        );
        assert_eq!(pol.uid, Some(1000));
        assert!(pol.no_new_privs && pol.host_namespaces.is_empty() && !pol.trust_archive);
        p.spec.namespaces.network = NsMode::Node;
        let pol = restore_policy(&Security::default(), 0, &p);
        assert!(
            pol.host_namespaces
                .contains(&cpengine::policy::Namespace::Net)
        );
        assert!(
            !pol.host_namespaces
                .contains(&cpengine::policy::Namespace::Pid)
        );
        // The kubelet's oom_score_adj: a Guaranteed pod's -997 is allowed in the images, a
        // Burstable pod's positive value does not refuse images from a node of another size.
        assert_eq!(pol.min_oom_score_adj, 0);
        let guaranteed = restore_policy(&Security::default(), -997, &p);
        assert_eq!(guaranteed.min_oom_score_adj, -997);
        let burstable = restore_policy(&Security::default(), 500, &p);
        assert_eq!(burstable.min_oom_score_adj, 0);
    }
}
