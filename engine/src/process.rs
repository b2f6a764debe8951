//! Checkpoint and restore of plain process trees over swrk.
//!
//! Dump: check the target and the images directory before CRIU starts (clear errors, nothing
//! touched), snapshot the tree's state, send DUMP, and whatever happens make sure the tree is
//! running and not stopped afterwards unless CRIU was asked to kill it. Restore: send RESTORE
//! with `rst_sibling`, so the restored root is our child.

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::criu::convert::{self, DUMP_LOG, RESTORE_LOG};
use crate::criu::{Criu, CriuVersion, Exchange, NotifyHandler, SpawnSpec};
use crate::error::{Error, Result};
use crate::options::{CheckpointOptions, RestoreOptions};
use crate::proc::{self, TaskState};
use crate::report::{self, DumpReport, DumpStats, Phase, RestoreReport, RestoreStats};
use crate::sys;
use criu_proto::rpc::CriuReqType;

/// Dumps the process tree described by `opts`.
pub async fn dump(
    criu: &Criu,
    version: Option<&CriuVersion>,
    opts: &CheckpointOptions,
    handler: &mut dyn NotifyHandler,
) -> Result<DumpReport> {
    if opts.track_mem || opts.parent_images.is_some() {
        require_mem_track(criu, "an incremental dump (track_mem, parent images)").await?;
    }
    dump_as(criu, version, opts, handler, CriuReqType::Dump).await
}

/// Pre-dumps the tree (its memory only, tree left running, memory changes tracked from now
/// on) into `opts.images_dir`; a later [`dump`] with `parent_images` pointing there writes
/// only the pages changed since. Needs soft-dirty memory tracking (FEATURE_CHECK
/// `mem_track`); without it this fails with [`Error::Unsupported`] before touching the tree.
pub async fn pre_dump(
    criu: &Criu,
    version: Option<&CriuVersion>,
    opts: &CheckpointOptions,
    handler: &mut dyn NotifyHandler,
) -> Result<DumpReport> {
    require_mem_track(criu, "a pre-dump").await?;
    let mut o = opts.clone();
    o.track_mem = true;
    o.flags.leave_running = true;
    dump_as(criu, version, &o, handler, CriuReqType::SinglePreDump).await
}

async fn require_mem_track(criu: &Criu, what: &'static str) -> Result<()> {
    let f = criu
        .features(crate::criu::Features {
            mem_track: true,
            ..Default::default()
        })
        .await?;
    if !f.mem_track {
        return Err(Error::Unsupported {
            what,
            feature: "mem_track",
            hint: "the kernel lacks soft-dirty page tracking (CONFIG_MEM_SOFT_DIRTY)",
        });
    }
    Ok(())
}

async fn dump_as(
    criu: &Criu,
    version: Option<&CriuVersion>,
    opts: &CheckpointOptions,
    handler: &mut dyn NotifyHandler,
    kind: CriuReqType,
) -> Result<DumpReport> {
    let started = Instant::now();
    let pid = opts.pid;
    if pid <= 0 || !proc::exists(pid) {
        return Err(Error::NoSuchProcess { pid });
    }
    let images = prepare_images_dir(&opts.images_dir)?;
    let work = open_work_dir(opts.work_dir.as_deref())?;
    let work_path = opts.effective_work_dir().to_path_buf();
    // A stale stats file must not be mistaken for this dump's.
    let _ = fs::remove_file(work_path.join("stats-dump"));
    let before = snapshot(pid);
    let existing = dir_names(&opts.images_dir);

    let mut req = convert::dump_request(
        opts,
        images.as_raw_fd(),
        work.as_ref().map(AsRawFd::as_raw_fd),
    );
    // A tree with its own network namespace gets CRIU's network lock during the dump.
    let netns = crate::netlock::foreign_netns_of(pid);
    req.r#type = kind as i32;
    let mut session = criu.session(SpawnSpec::default())?;
    session.set_log(work_path.join(DUMP_LOG));
    session.set_fault(opts.flags.fault.clone());
    let prepared = started.elapsed();
    let result = session.request(req, handler, opts.flags.timeout).await;
    let exchange = match result {
        Ok(ex) => ex,
        Err(source) => {
            // Gently (see Session::abort): CRIU may still be inside the tasks.
            session.abort().await;
            resume_tree(&before, opts.freeze_cgroup.as_deref());
            unmount_leftovers(&work_path);
            if let Some(ns) = &netns
                && proc::exists(pid)
                && let Err(e) = crate::netlock::unlock(ns)
            {
                tracing::error!(pid, error = %e, "removing criu's network lock failed");
            }
            remove_partial_images(&opts.images_dir, &existing);
            return Err(Error::Dump { pid, source });
        }
    };
    // Resume first, then wait for CRIU to exit: a freezer cgroup CRIU found frozen is frozen
    // again when CRIU lets go of the tasks, and every moment until the thaw is downtime.
    let resumed_at = opts.flags.leave_running.then(|| {
        resume_tree(&before, opts.freeze_cgroup.as_deref());
        Instant::now()
    });
    session.finish().await;
    drop(images);
    drop(work);
    let stats_path = work_path.join("stats-dump");
    let criu_stats = match report::read_stats(&stats_path) {
        Ok(s) => s.dump.map(DumpStats::from),
        Err(e) => {
            tracing::warn!(path = %stats_path.display(), error = %e, "no dump statistics");
            None
        }
    };
    let (images_bytes, images_files) = dir_usage(&opts.images_dir);
    let mut phases = vec![Phase::new("prepare", prepared)];
    phases.extend(criu_phases(
        &exchange,
        "post-dump",
        "criu: freeze + dump",
        "criu: resume + exit",
    ));
    Ok(DumpReport {
        pid,
        images_dir: opts.images_dir.clone(),
        leave_running: opts.flags.leave_running,
        criu_version: version.cloned(),
        phases,
        total: started.elapsed(),
        hooks: exchange.hooks,
        criu: criu_stats,
        images_bytes,
        images_files,
        page_size: sys::page_size(),
        resumed_at,
    })
}

/// Restores the process tree in `opts.images_dir`. The restored root is our child.
pub async fn restore(
    criu: &Criu,
    opts: RestoreOptions,
    handler: &mut dyn NotifyHandler,
) -> Result<RestoreReport> {
    let started = Instant::now();
    // rst_sibling makes the restored root our child; as a subreaper we also inherit its orphans,
    // so whoever restores can reap the whole tree and free its pids.
    ensure_subreaper();
    let images_dir = opts.images_dir.clone();
    if !images_dir.join("inventory.img").is_file() {
        return Err(Error::NoImages { path: images_dir });
    }
    let images = sys::open_dir(&images_dir).map_err(|source| Error::ImagesDir {
        path: images_dir.clone(),
        source,
    })?;
    let mut phases = Vec::new();
    if opts.check_pids {
        let t = Instant::now();
        wait_for_free_ids(&images_dir).await?;
        phases.push(Phase::new("wait for free pids", t.elapsed()));
    }
    let prepare_start = Instant::now();
    let work = open_work_dir(opts.work_dir.as_deref())?;
    let work_path = opts.effective_work_dir().to_path_buf();
    let _ = fs::remove_file(work_path.join("stats-restore"));

    let mut inherit_keys = Vec::with_capacity(opts.inherit_fds.len());
    let mut inherit_fds: Vec<OwnedFd> = Vec::with_capacity(opts.inherit_fds.len());
    let mut req = {
        for (i, f) in opts.inherit_fds.iter().enumerate() {
            inherit_keys.push((f.key.clone(), SpawnSpec::inherited_fd_number(i)));
        }
        convert::restore_request(
            &opts,
            images.as_raw_fd(),
            work.as_ref().map(AsRawFd::as_raw_fd),
            &inherit_keys,
        )
    };
    let shell_job = opts.flags.shell_job;
    let RestoreOptions {
        inherit_fds: inherit,
        stdio,
        join_cgroups,
        flags,
        ..
    } = opts;
    let crate::options::CriuFlags {
        timeout,
        fault,
        log_level,
        ..
    } = flags;
    inherit_fds.extend(inherit.into_iter().map(|f| f.fd));
    // Lazy: the daemon that serves the pages starts now and the restore at once; the restore
    // reads the images through a gate that opens when the daemon listens (see
    // `criu::lazy::Gate`), so the two CRIU start-ups overlap.
    let mut view_fd = None;
    let mut gate = None;
    let mut lazy_ready = None;
    if req.opts.as_ref().and_then(|o| o.lazy_pages) == Some(true) {
        let t = Instant::now();
        let pending =
            crate::criu::lazy::LazyPages::spawn(criu.binary(), &images_dir, &work_path, log_level)?;
        match crate::criu::lazy::View::new(&images_dir) {
            Ok(view) => {
                let g = crate::criu::lazy::Gate::start(view, pending)
                    .map_err(Error::io("starting the lazy restore's gate"))?;
                let fd = sys::open_dir(g.view())
                    .map_err(Error::io("opening the lazy restore's view"))?;
                // The work dir (log, stats, the daemon's socket) stays the real one.
                let wfd = sys::open_dir(&work_path).map_err(|source| Error::WorkDir {
                    path: work_path.clone(),
                    source,
                })?;
                if let Some(o) = req.opts.as_mut() {
                    o.images_dir_fd = fd.as_raw_fd();
                    o.work_dir_fd = Some(wfd.as_raw_fd());
                }
                view_fd = Some((fd, wfd));
                gate = Some(g);
            }
            Err(e) => {
                // No view (read-only images): start the daemon first, then restore.
                tracing::debug!(error = %e, "no lazy view; waiting for the daemon first");
                let d =
                    crate::blocking(move || Ok(pending.wait(std::time::Duration::from_secs(30))?))
                        .await;
                match d {
                    Ok(d) => lazy_ready = Some(d),
                    Err(e) => {
                        return Err(lazy_error(criu, e).await);
                    }
                }
            }
        }
        phases.push(Phase::new("start lazy-pages daemon", t.elapsed()));
    }
    let mut session = match criu.session(SpawnSpec {
        inherit: inherit_fds,
        stdio,
        // A shell job joins CRIU's process group: it must stay the caller's.
        share_process_group: shell_job,
        // The restored tasks inherit the worker's score where their images give none.
        keep_oom_score: true,
    }) {
        Ok(s) => s,
        Err(e) => {
            lazy_failed(criu, gate.take(), lazy_ready.as_ref()).await;
            return Err(e.into());
        }
    };
    session.set_log(work_path.join(RESTORE_LOG));
    session.set_fault(fault);
    if !join_cgroups.is_empty()
        && let Err(e) = add_worker_cgroups(&session, &join_cgroups, &mut req)
    {
        session.kill().await;
        lazy_failed(criu, gate.take(), lazy_ready.as_ref()).await;
        return Err(e);
    }
    phases.push(Phase::new("prepare", prepare_start.elapsed()));
    let mut watch = RestoredRoot {
        inner: handler,
        pid: None,
    };
    let exchange = match session.request(req, &mut watch, timeout).await {
        Ok(ex) => ex,
        Err(source) => {
            session.abort().await;
            kill_restored(watch.pid, &images_dir);
            unmount_leftovers(&work_path);
            // A daemon that never listened is the cause (the restore found no tree).
            if let Some(e) = lazy_failed(criu, gate.take(), lazy_ready.as_ref()).await {
                return Err(e);
            }
            return Err(Error::Restore { images_dir, source });
        }
    };
    session.finish().await;
    let lazy = match gate.take() {
        Some(g) => Some(g.finish()?),
        None => lazy_ready,
    };
    drop(view_fd);
    let pid = exchange.resp.restore.as_ref().map_or(-1, |r| r.pid);

    let stats_path = work_path.join("stats-restore");
    let criu_stats = match report::read_stats(&stats_path) {
        Ok(s) => s.restore.map(RestoreStats::from),
        Err(e) => {
            tracing::warn!(path = %stats_path.display(), error = %e, "no restore statistics");
            None
        }
    };
    phases.extend(criu_phases(
        &exchange,
        "post-restore",
        "criu: restore",
        "criu: resume + exit",
    ));
    Ok(RestoreReport {
        pid,
        images_dir,
        phases,
        total: started.elapsed(),
        hooks: exchange.hooks,
        criu: criu_stats,
        lazy_pages_pid: lazy.as_ref().map(crate::criu::lazy::LazyPages::pid),
    })
}

/// Passes hooks on to the caller's handler and remembers the restored root's host pid.
struct RestoredRoot<'a> {
    inner: &'a mut dyn NotifyHandler,
    pid: Option<i32>,
}

impl NotifyHandler for RestoredRoot<'_> {
    fn on_worker(&mut self, pid: u32) {
        self.inner.on_worker(pid);
    }

    fn on_notify(&mut self, n: crate::criu::Notification) -> crate::criu::Ack {
        use crate::criu::Notification as N;
        if let N::SetupNamespaces { pid } | N::PostRestore { pid } = n
            && pid > 0
        {
            self.pid = Some(pid);
        }
        self.inner.on_notify(n)
    }
}

/// After a failed restore nothing of the restored tree may survive: a CRIU that died (or was
/// killed on timeout) can leave tasks half-restored, stopped, or — past `pre-resume` —
/// running, and none of them is what the caller asked for. Kills the tree of the root CRIU
/// reported and of every root task in the images that is our child (`rst_sibling` makes the
/// restored root our child; with its original pid outside a pid namespace), and reaps it.
fn kill_restored(reported: Option<i32>, images_dir: &Path) {
    let me = std::process::id() as i32;
    let mut roots: Vec<i32> = reported.into_iter().collect();
    if let Ok(tree) = crate::images::read_pstree(images_dir) {
        roots.extend(
            tree.iter()
                .filter(|t| t.ppid == 0)
                .map(|t| t.pid as i32)
                .filter(|&p| proc::ppid(p) == Some(me)),
        );
    }
    roots.sort_unstable();
    roots.dedup();
    for root in roots {
        if proc::ppid(root) != Some(me) {
            continue;
        }
        let tree = proc::tree(root);
        for p in &tree {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        reap(root, Duration::from_secs(5));
        tracing::warn!(
            root,
            tasks = tree.len(),
            "killed the tree of a failed restore"
        );
    }
}

/// CRIU mounts a "cgroup yard" (a tmpfs with every cgroup hierarchy mounted in it) in its work
/// directory, `.criu.cgyard.XXXXXX`, in the caller's mount namespace, and unmounts it when it
/// finishes. A CRIU that was killed leaves those mounts behind. Detaches every mount under
/// `work` (deepest first) and removes the emptied yard directories.
pub(crate) fn unmount_leftovers(work: &Path) {
    let Ok(mounts) = crate::container::mountinfo::of_pid(std::process::id() as i32) else {
        return;
    };
    let work = fs::canonicalize(work).unwrap_or_else(|_| work.to_path_buf());
    let mut points: Vec<std::path::PathBuf> = mounts
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(&work) && *m != work)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in &points {
        if let Err(e) = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %p.display(), error = %e, "unmounting what criu left failed");
        }
    }
    if !points.is_empty() {
        tracing::warn!(count = points.len(), work = %work.display(), "unmounted what a killed criu left mounted");
    }
    for e in fs::read_dir(&work).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".criu.cgyard.") {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Waits (at most `within`) for our child `pid` to exit and reaps it.
fn reap(pid: i32, within: Duration) {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    let deadline = Instant::now() + within;
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return,
        }
    }
}

/// After a failed lazy restore: stops the daemon (started through the gate, or already
/// listening: `ready`), or returns why it never listened (saying so plainly when the kernel
/// cannot do lazy pages at all).
async fn lazy_failed(
    criu: &Criu,
    gate: Option<crate::criu::lazy::Gate>,
    ready: Option<&crate::criu::lazy::LazyPages>,
) -> Option<Error> {
    if let Some(d) = ready {
        d.kill();
    }
    let gate = gate?;
    match crate::blocking(move || Ok(gate.finish())).await {
        Ok(Ok(d)) => {
            d.kill();
            None
        }
        Ok(Err(e)) => Some(lazy_error(criu, e.into()).await),
        Err(e) => Some(e),
    }
}

/// The error of a lazy-pages daemon that never listened, or the plain "unsupported" one when
/// the kernel cannot do lazy pages at all.
async fn lazy_error(criu: &Criu, e: Error) -> Error {
    let f = criu
        .features(crate::criu::Features {
            lazy_pages: true,
            ..Default::default()
        })
        .await;
    if f.is_ok_and(|f| !f.lazy_pages) {
        return Error::Unsupported {
            what: "a lazy restore",
            feature: "lazy_pages",
            hint: "the kernel lacks userfaultfd with non-cooperative events",
        };
    }
    e
}

/// Moves the CRIU worker into the container's cgroups and turns its resulting cgroups into
/// `cg_root` entries of the request (runc does the same before sending RESTORE).
fn add_worker_cgroups(
    session: &crate::criu::Session,
    dirs: &std::collections::BTreeMap<String, std::path::PathBuf>,
    req: &mut criu_proto::rpc::CriuReq,
) -> Result<()> {
    let worker = session.worker_pid().unwrap_or(0);
    crate::cgroups::join(dirs, worker).map_err(|source| Error::Cgroups { source })?;
    let roots = crate::cgroups::cgroups_of(worker).map_err(|source| Error::Cgroups { source })?;
    if let Some(o) = req.opts.as_mut() {
        o.cg_root
            .extend(
                roots
                    .into_iter()
                    .filter(|(c, _)| dirs.contains_key(c))
                    .map(|(ctrl, path)| criu_proto::rpc::CgroupRoot {
                        ctrl: Some(ctrl),
                        path,
                    }),
            );
    }
    Ok(())
}

/// How long a restore waits for the ids it needs to be released. Killed trees leave orphans
/// and zombies that keep their pid, process group or session id until someone reaps them; a
/// lazy init can take a second or more.
const ID_RELEASE_WAIT: Duration = Duration::from_secs(3);

/// Waits until no process holds a pid, process-group or session id of the tree in the images
/// (CRIU restores with the original ids), or fails naming the holder.
async fn wait_for_free_ids(images_dir: &Path) -> Result<()> {
    let tree = crate::images::read_pstree(images_dir).map_err(|source| Error::Images {
        path: images_dir.join("pstree.img"),
        source,
    })?;
    let mut ids: Vec<i32> = Vec::new();
    for t in &tree {
        ids.push(t.pid as i32);
        ids.extend(t.threads.iter().map(|&x| x as i32));
    }
    let in_tree = |id: u32| tree.iter().any(|t| t.pid == id);
    for t in &tree {
        // Group and session ids of the tree's own tasks must be free; ids of outside leaders
        // (a shell job) are inherited, not created.
        ids.extend(
            [t.pgid, t.sid]
                .into_iter()
                .filter(|&x| in_tree(x))
                .map(|x| x as i32),
        );
    }
    let deadline = Instant::now() + ID_RELEASE_WAIT;
    loop {
        let held = proc::ids_in_use(&ids);
        let Some(h) = held.into_iter().next() else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            return Err(Error::IdInUse { holder: h });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Makes this process a child subreaper once (process-wide, idempotent).
fn ensure_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = sys::set_child_subreaper() {
            tracing::warn!(error = %e, "cannot become a child subreaper; orphans of restored trees go to init");
        }
    });
}

/// Splits CRIU's part of the time at the hook `split` (if CRIU reached it).
fn criu_phases(ex: &Exchange, split: &str, before: &str, after: &str) -> Vec<Phase> {
    match ex.hook_at(split) {
        Some(at) => vec![
            Phase::new(before, at),
            Phase::new(after, ex.elapsed.saturating_sub(at)),
        ],
        None => vec![Phase::new("criu", ex.elapsed)],
    }
}

/// Creates (0700) and vets the images directory, returning an fd for CRIU.
fn prepare_images_dir(path: &Path) -> Result<OwnedFd> {
    let dir_err = |source| Error::ImagesDir {
        path: path.to_path_buf(),
        source,
    };
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
    {
        Ok(()) => {}
        Err(e)
            if e.kind() == std::io::ErrorKind::PermissionDenied
                || e.raw_os_error() == Some(libc::EROFS) =>
        {
            return Err(Error::ImagesDirNotWritable {
                path: path.to_path_buf(),
                source: e,
            });
        }
        Err(e) => return Err(dir_err(e)),
    }
    if path.join("inventory.img").exists() {
        return Err(Error::ImagesDirNotEmpty {
            path: path.to_path_buf(),
        });
    }
    // Writability is checked by writing: root ignores mode bits, but not a read-only mount.
    let probe = path.join(format!(".cpengine-probe-{}", std::process::id()));
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
        }
        Err(source) => {
            return Err(Error::ImagesDirNotWritable {
                path: path.to_path_buf(),
                source,
            });
        }
    }
    sys::open_dir(path).map_err(dir_err)
}

fn open_work_dir(path: Option<&Path>) -> Result<Option<OwnedFd>> {
    let Some(path) = path else { return Ok(None) };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .and_then(|()| sys::open_dir(path))
        .map(Some)
        .map_err(|source| Error::WorkDir {
            path: path.to_path_buf(),
            source,
        })
}

fn dir_names(dir: &Path) -> std::collections::BTreeSet<std::ffi::OsString> {
    fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// After a failed dump, removes the images CRIU wrote (they cannot be restored) and keeps the
/// log, so that the directory can be reused and the failure still diagnosed.
fn remove_partial_images(dir: &Path, existing: &std::collections::BTreeSet<std::ffi::OsString>) {
    for name in dir_names(dir) {
        if existing.contains(&name) || name == DUMP_LOG {
            continue;
        }
        let p = dir.join(&name);
        if p.symlink_metadata()
            .is_ok_and(|m| m.is_file() || m.file_type().is_symlink())
        {
            let _ = fs::remove_file(&p);
        }
    }
}

/// Total size and number of regular files directly in `dir`.
pub(crate) fn dir_usage(dir: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if let Ok(m) = e.metadata()
                && m.is_file()
            {
                bytes += m.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

/// The tree's tasks and their state before CRIU touched them.
pub(crate) struct TreeSnapshot {
    tasks: Vec<(i32, TaskState)>,
}

pub(crate) fn snapshot(pid: i32) -> TreeSnapshot {
    TreeSnapshot {
        tasks: proc::tree(pid)
            .into_iter()
            .filter_map(|p| proc::task_state(p).map(|s| (p, s)))
            .collect(),
    }
}

/// Makes sure a tree CRIU has let go of runs: thaws its freezer cgroup (CRIU leaves it frozen if
/// it dies mid-dump) and continues tasks that were running before but are stopped now.
pub(crate) fn resume_tree(before: &TreeSnapshot, freeze_cgroup: Option<&Path>) {
    if let Some(cg) = freeze_cgroup {
        crate::cgroups::thaw(cg);
    }
    // Give the kernel a moment to finish detaching tracees of a dead tracer.
    for _ in 0..50 {
        let stuck: Vec<i32> = before
            .tasks
            .iter()
            .filter(|(pid, was)| {
                !was.is_stopped() && proc::task_state(*pid).is_some_and(|now| now.is_stopped())
            })
            .map(|(pid, _)| *pid)
            .collect();
        if stuck.is_empty() {
            return;
        }
        for pid in &stuck {
            if proc::task_state(*pid).is_some_and(|s| s.state == 'T' && s.tracer == 0) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGCONT,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    tracing::warn!("some tasks are still stopped after the checkpoint");
}
