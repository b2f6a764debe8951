//! Container lifecycle: create (rootfs, spec, relay, `runc create`), start, stop, remove,
//! status, and the checkpoint entry point.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cpengine::container::Container;
use cpengine::{ImageInfo, PodInfo};

use crate::checkpoint::kubelet_options;
use crate::domain::*;
use crate::error::{Result, ShimError};

use super::pod::log_path;
use super::store::{CtrKind, CtrRecord, Phase, PodRecord, new_id};
use super::{ImageBackend, Standalone, create_private_dir, restore, spec};

/// How long a killed container may take to disappear.
const KILL_WAIT: Duration = Duration::from_secs(10);

pub(super) fn rec_alive(rec: &CtrRecord) -> bool {
    rec.pid
        .is_some_and(|p| cpengine::proc::is_same_process(p, rec.pid_start))
}

/// Unmounts a path if it is a mount point (detached, so busy mounts go too).
pub(super) fn unmount(p: &Path) {
    match nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => tracing::warn!(path = %p.display(), error = %e, "unmount failed"),
    }
}

/// Two pipes for a container's stdout and stderr: (read ends, write ends).
pub(super) fn stdio_pipes() -> Result<((OwnedFd, OwnedFd), (OwnedFd, OwnedFd))> {
    let err = |e: nix::errno::Errno| ShimError::Spawn {
        what: "the container's stdio pipes",
        source: e.into(),
    };
    let (or, ow) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err)?;
    let (er, ew) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err)?;
    Ok(((or, er), (ow, ew)))
}

/// Undo list of a container creation in progress.
#[derive(Default)]
struct Undo {
    mounts: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    armed: bool,
}

impl Drop for Undo {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for m in self.mounts.iter().rev() {
            unmount(m);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl<I: ImageBackend> Standalone<I> {
    /// The pod a container is created in: it must exist and be ready.
    pub(super) fn ready_pod(&self, pod_id: &str) -> Result<PodRecord> {
        let pod_id = self.store.pod_id(pod_id)?;
        let pod = self
            .store
            .pod(&pod_id)
            .ok_or_else(|| ShimError::not_found("pod sandbox", &pod_id))?;
        if super::pod::to_pod(&pod).state != PodState::Ready {
            return Err(ShimError::FailedPrecondition(format!(
                "pod sandbox {pod_id} is not ready"
            )));
        }
        Ok(pod)
    }

    pub(super) async fn create_container_impl(
        &self,
        pod_id: &str,
        spec: ContainerSpec,
    ) -> Result<String> {
        let pod = self.ready_pod(pod_id)?;
        self.store
            .check_name_free(&pod.id, &spec.name, spec.attempt)?;
        if spec.tty {
            tracing::warn!(container = %spec.name, "tty requested; the container gets pipes (no terminal)");
        }
        if let Some(source) = restore::detect(
            &spec.image.image,
            self.images.as_ref(),
            self.checkpointer.allowed(),
        )
        .await?
        {
            let mode = self.checkpointer.mode();
            if !mode.allows_restore() {
                return Err(ShimError::FailedPrecondition(format!(
                    "image {} is a checkpoint, and restoring checkpoints is switched off on this node (--restore-mode {})",
                    spec.image.image,
                    mode.name()
                )));
            }
            return self.create_restored(pod, spec, source).await;
        }
        let image = self.images.resolve(&spec.image.image).await?;
        spec::pid_mode(&spec, &pod)?;

        let id = new_id();
        let run_dir = self.store.ctr_run_dir(&id);
        let lib_dir = self.store.ctr_lib_dir(&id);
        let mut undo = Undo::default();
        undo.armed = true;
        for d in [&run_dir, &lib_dir] {
            create_private_dir(d)?;
            undo.dirs.push(d.clone());
        }
        let (rootfs, upper, work) = (
            run_dir.join("rootfs"),
            lib_dir.join("upper"),
            lib_dir.join("work"),
        );
        for d in [&rootfs, &upper, &work] {
            std::fs::create_dir_all(d).map_err(ShimError::fs("creating", d))?;
        }
        let lowers: Vec<PathBuf> = image.layers.iter().rev().cloned().collect();
        cpengine::container::restore::mount_overlay(&lowers, &upper, &work, &rootfs)
            .map_err(ShimError::engine("mounting the container's rootfs"))?;
        undo.mounts.push(rootfs.clone());

        let user = spec::resolve_user(&spec, &image.config, &rootfs)?;
        let args = spec::resolve_args(&spec, &image.config)?;
        let env = spec::resolve_env(&spec, &image.config, &pod.spec.hostname);
        let cwd = [spec.working_dir.as_str(), image.config.working_dir.as_str()]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or("/")
            .to_string();
        let image_name = image
            .info
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| spec.image.image.clone());
        let oci = spec::build(&spec::SpecInput {
            id: &id,
            pod: &pod,
            ctr: &spec,
            image_name: &image_name,
            rootfs: &rootfs,
            args,
            env,
            cwd,
            user,
        })?;
        let config = run_dir.join("config.json");
        cpengine::host::fs::write_atomic(
            &config,
            &serde_json::to_vec_pretty(&oci).unwrap_or_default(),
            0o600,
        )
        .map_err(ShimError::state("writing", &config))?;

        let log = log_path(&pod, &spec, &lib_dir)?;
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent).map_err(ShimError::fs("creating", parent))?;
        }
        let ((out_r, err_r), (out_w, err_w)) = stdio_pipes()?;
        let relay_pid = cpengine::container::relay::spawn(&self.cfg.exe, &log, out_r, err_r)
            .map_err(|source| ShimError::Spawn {
                what: "the log relay",
                source,
            })?;
        // If runc fails, its copies of the pipes close and the relay ends by itself.
        let pid = self
            .runc
            .create(&id, &run_dir, out_w, err_w, &run_dir.join("runc.log"))
            .await?;
        self.reaper.track(pid);
        let rec = CtrRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            kind: CtrKind::Runc,
            phase: Phase::Created,
            image_ref: image.image_ref.clone(),
            image_id: image.info.id.clone(),
            image_name,
            log_path: log,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: None,
            reason: String::new(),
            message: String::new(),
            pid: Some(pid),
            pid_start: cpengine::proc::start_time(pid).unwrap_or(0),
            bundle: run_dir.clone(),
            rootfs,
            upper,
            work,
            lowers,
            relay_pid: Some(relay_pid),
            stop_signal: Some(image.config.stop_signal.clone()).filter(|s| !s.is_empty()),
            restore: None,
            spec,
        };
        if let Err(e) = self.store.save_ctr(&rec) {
            let _ = self.runc.delete(&id, true).await;
            return Err(e);
        }
        undo.armed = false;
        Ok(id)
    }

    pub(super) async fn start_container_impl(&self, id: &str) -> Result<()> {
        let id = self.store.ctr_id(id)?;
        let _lock = self.locks.lock(&id).await;
        let rec = self.refresh(&id)?;
        if rec.phase != Phase::Created {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not in the created state"
            )));
        }
        match (rec.kind, &rec.restore) {
            (CtrKind::Restored, Some(_)) => self.start_restored(rec).await,
            (CtrKind::Runc, _) => {
                if !rec_alive(&rec) {
                    return Err(ShimError::FailedPrecondition(format!(
                        "container {id} exited before it was started"
                    )));
                }
                // The process runs from the moment runc lets it go, before runc returns.
                let started = now_ns();
                self.runc.start(&id).await?;
                self.store.update_ctr(&id, |c| {
                    c.phase = Phase::Started;
                    c.started_at = started;
                })?;
                Ok(())
            }
            (CtrKind::Restored, None) => Err(ShimError::FailedPrecondition(format!(
                "container {id} was restored already"
            ))),
        }
    }

    /// Sends `signal` to the container: runc's kill for runc containers (`--all` when it shares
    /// the host's pid namespace), a plain kill for restored ones.
    async fn signal(&self, rec: &CtrRecord, signal: nix::sys::signal::Signal) {
        match rec.kind {
            CtrKind::Runc => {
                let all = matches!(rec.spec.security.pid_mode, Some(NsMode::Node));
                let name = signal.as_str().trim_start_matches("SIG");
                if let Err(e) = self.runc.kill(&rec.id, name, all).await {
                    tracing::debug!(container = %rec.id, error = %e, "runc kill");
                }
            }
            CtrKind::Restored => {
                if let Some(pid) = rec.pid.filter(|_| rec_alive(rec)) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
                }
            }
        }
    }

    async fn wait_gone(&self, rec: &CtrRecord, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            self.reaper.reap();
            if !rec_alive(rec) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops a container (its lock held): TERM, up to `timeout`, then KILL.
    pub(super) async fn stop_locked(&self, id: &str, timeout: Duration) -> Result<()> {
        let rec = self.refresh(id)?;
        if !rec_alive(&rec) {
            return Ok(());
        }
        use nix::sys::signal::Signal;
        if !timeout.is_zero() {
            let first = match rec.stop_signal.as_deref().map(parse_signal) {
                Some(Ok(sig)) => sig,
                Some(Err(e)) => {
                    tracing::warn!(container = %id, error = %e, "using SIGTERM");
                    Signal::SIGTERM
                }
                None => Signal::SIGTERM,
            };
            self.signal(&rec, first).await;
            self.wait_gone(&rec, timeout).await;
        }
        if rec_alive(&rec) {
            self.signal(&rec, Signal::SIGKILL).await;
            if !self.wait_gone(&rec, KILL_WAIT).await {
                return Err(ShimError::Internal(format!(
                    "container {id} is still running {KILL_WAIT:?} after SIGKILL"
                )));
            }
        }
        self.refresh(id)?;
        tracing::info!(container = %id, "container stopped");
        Ok(())
    }

    /// Removes a container (its lock held), killing it first if it runs.
    pub(super) async fn remove_locked(&self, id: &str) -> Result<()> {
        let Some(rec) = self.store.ctr(id) else {
            return Ok(());
        };
        if rec_alive(&rec) {
            self.stop_locked(id, Duration::ZERO).await?;
        }
        match rec.kind {
            CtrKind::Runc => {
                if self.runc.exists(id) {
                    self.runc.delete(id, true).await?;
                }
                unmount(&rec.rootfs);
            }
            CtrKind::Restored => {
                if self.cfg.state.container_record(id).is_file() {
                    cpengine::Engine::delete_container(&self.cfg.state, id, true)
                        .await
                        .map_err(|source| ShimError::Container {
                            step: "deleting the restored container",
                            source,
                        })?;
                }
                unmount(&rec.rootfs);
            }
        }
        if let Some(pid) = rec.pid {
            self.reaper.forget(pid);
        }
        self.store.forget_ctr(id);
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    /// The record with its live state folded in: an init that is gone makes the container
    /// exited (with the exit code when the reaper saw it).
    pub(super) fn refresh(&self, id: &str) -> Result<CtrRecord> {
        let rec = self
            .store
            .ctr(id)
            .ok_or_else(|| ShimError::not_found("container", id))?;
        if rec.phase == Phase::Exited {
            return Ok(rec);
        }
        let Some(pid) = rec.pid else {
            return Ok(rec);
        };
        if cpengine::proc::is_same_process(pid, rec.pid_start) {
            return Ok(rec);
        }
        let exit = self.reaper.exit_of(pid);
        self.store.update_ctr(id, |c| {
            c.phase = Phase::Exited;
            c.finished_at = exit.map(|e| e.at).unwrap_or_else(now_ns).max(c.started_at);
            c.exit_code = exit.map(|e| e.code);
            match c.exit_code {
                Some(0) => c.reason = "Completed".into(),
                Some(_) => c.reason = "Error".into(),
                None => {
                    c.reason = "Unknown".into();
                    c.message = "the exit status is unknown (the container's init was not a child of this shim)".into();
                }
            }
        })
    }

    pub(super) fn info(&self, rec: &CtrRecord) -> ContainerInfo {
        let state = match rec.phase {
            Phase::Created => ContainerState::Created,
            Phase::Started => ContainerState::Running,
            Phase::Exited => ContainerState::Exited,
        };
        ContainerInfo {
            id: rec.id.clone(),
            pod_id: rec.pod_id.clone(),
            name: rec.spec.name.clone(),
            attempt: rec.spec.attempt,
            image: rec.spec.image.clone(),
            image_ref: rec.image_ref.clone(),
            image_id: rec.image_id.clone(),
            state,
            created_at: rec.created_at,
            started_at: rec.started_at,
            finished_at: rec.finished_at,
            exit_code: match (state, rec.exit_code) {
                (ContainerState::Exited, None) => 255,
                (_, c) => c.unwrap_or(0),
            },
            reason: rec.reason.clone(),
            message: rec.message.clone(),
            labels: rec.spec.labels.clone(),
            annotations: rec.spec.annotations.clone(),
            mounts: rec.spec.mounts.clone(),
            log_path: rec.log_path.display().to_string(),
            pid: rec.pid.filter(|_| state != ContainerState::Exited),
        }
    }

    /// The engine's view of a container of ours.
    pub(super) fn engine_container(&self, rec: &CtrRecord) -> Result<Container> {
        let roots = match rec.kind {
            CtrKind::Runc => vec![self.store.runc_root()],
            CtrKind::Restored => vec![],
        };
        Container::find(&rec.id, &roots, &self.cfg.state).map_err(|source| ShimError::Container {
            step: "reading the container's runtime state",
            source,
        })
    }

    pub(super) async fn checkpoint_impl(&self, req: CheckpointRequest) -> Result<()> {
        let id = self.store.ctr_id(&req.container_id)?;
        let rec = self.refresh(&id)?;
        if rec.phase != Phase::Started {
            return Err(ShimError::FailedPrecondition(format!(
                "container {id} is not running"
            )));
        }
        let output = self.checkpointer.location(&req.location)?;
        let lock = match req.deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.locks.lock(&id))
                .await
                .map_err(|_| {
                    ShimError::DeadlineExceeded(format!(
                        "container {id} is busy (another checkpoint or stop) past the deadline"
                    ))
                })?,
            None => self.locks.lock(&id).await,
        };
        let ctr = self.engine_container(&rec)?;
        let pod = self.store.pod(&rec.pod_id);
        let mut opts = kubelet_options(output);
        if let Some(p) = &pod {
            opts.pod = Some(PodInfo {
                container_name: rec.spec.name.clone(),
                pod_name: p.spec.metadata.name.clone(),
                pod_namespace: p.spec.metadata.namespace.clone(),
                pod_uid: p.spec.metadata.uid.clone(),
            });
        }
        opts.image = Some(ImageInfo {
            image: rec.spec.image.image.clone(),
            image_ref: rec.image_ref.clone(),
            image_name: rec.image_name.clone(),
        });
        opts.runtime = Some("runc".into());
        self.checkpointer.run(lock, ctr, opts, req.deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_resolve_against_the_pod_directory() {
        let pod = PodRecord {
            id: "p".into(),
            spec: PodSpec {
                log_directory: "/var/log/pods/ns_p_uid".into(),
                ..Default::default()
            },
            created_at: 0,
            state: PodState::Ready,
            holder: None,
            resolv_conf: None,
            hostname_file: None,
        };
        let mut c = ContainerSpec {
            log_path: "app/0.log".into(),
            ..Default::default()
        };
        let lib = Path::new("/lib/c");
        assert_eq!(
            log_path(&pod, &c, lib).unwrap(),
            PathBuf::from("/var/log/pods/ns_p_uid/app/0.log")
        );
        c.log_path = "/abs/x.log".into();
        assert_eq!(
            log_path(&pod, &c, lib).unwrap(),
            PathBuf::from("/abs/x.log")
        );
        c.log_path = String::new();
        assert_eq!(
            log_path(&pod, &c, lib).unwrap(),
            PathBuf::from("/lib/c/container.log")
        );
        c.log_path = "../../etc/x".into();
        assert!(log_path(&pod, &c, lib).is_err());
    }
}

/// A signal as an image config's `StopSignal` names it: `SIGQUIT`, `QUIT` or `3`.
pub fn parse_signal(s: &str) -> std::result::Result<nix::sys::signal::Signal, String> {
    use nix::sys::signal::Signal;
    let t = s.trim();
    let sig = match t.parse::<i32>() {
        Ok(n) => Signal::try_from(n).ok(),
        Err(_) => {
            let up = t.to_ascii_uppercase();
            let name = if up.starts_with("SIG") {
                up
            } else {
                format!("SIG{up}")
            };
            name.parse::<Signal>().ok()
        }
    };
    sig.ok_or_else(|| format!("unknown stop signal {s:?}"))
}

#[cfg(test)]
mod stop_signal_tests {
    use nix::sys::signal::Signal;

    #[test]
    fn stop_signals_parse_by_name_short_name_and_number() {
        assert_eq!(super::parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(super::parse_signal("usr1"), Ok(Signal::SIGUSR1));
        assert_eq!(super::parse_signal("15"), Ok(Signal::SIGTERM));
        assert!(super::parse_signal("SIGNOPE").is_err());
        assert!(super::parse_signal("99").is_err());
    }
}

#[cfg(test)]
mod pid_tests {
    /// A record whose start time was stored as 0 does not make any live pid "the container".
    #[test]
    fn a_stored_start_of_zero_matches_no_process() {
        let me = std::process::id() as i32;
        let start = cpengine::proc::start_time(me).unwrap();
        assert!(cpengine::proc::is_same_process(me, start));
        assert!(!cpengine::proc::is_same_process(me, 0));
    }
}
