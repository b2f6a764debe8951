//! Checkpointing a container: the CRIU request runc would send, answered natively.
//!
//! Options (mirroring runc's `criu_linux.go`, which is what the ecosystem's archives contain):
//! * `root` = the container's rootfs, `pid` = its init, `freeze_cgroup` = its freezer cgroup (so
//!   CRIU freezes the whole cgroup rather than ptrace-stopping task by task), cgroups managed
//!   (`soft`), `orphan_pts_master` (terminals), `empty_ns` = net (the runtime, not CRIU, owns
//!   network devices), `notify_scripts` (our hooks).
//! * External bind mounts, named by their destination; cgroup v1 hierarchies bind-mounted into
//!   the container (each `/sys/fs/cgroup/<ctrl>`); masked paths that are files (runc binds
//!   /dev/null over them) named `/dev/null`; device nodes by path.
//! * Joined namespaces (a pod's network or pid namespace, given by path) are external:
//!   `net[<inode>]:extRootNetNS`, `pid[<inode>]:extRootPidNS`.
//! * `descriptors.json` (the init's stdio at start) goes into the images for restore.
//!
//! The rootfs diff is *planned* in the `post-dump` hook, while the container is still frozen
//! (a stat walk, no data), so its file list and sizes match the memory image; data is read
//! after the container resumes.

use std::path::{Path, PathBuf};

use crate::criu::{Ack, Notification};
use crate::options::{CgroupMode, CheckpointOptions, CriuFlags, ExtMount};

use super::{Container, ContainerError};

pub use super::descriptors::{DESCRIPTORS_JSON, read_descriptors, write_descriptors};

/// The CRIU options for dumping `ctr` into `images_dir`, with log and stats in `work_dir`.
/// A container takes no network lock (`network_lock: None`) unless established TCP
/// connections are checkpointed (see [`CriuFlags::network_lock`]).
pub fn dump_options(
    ctr: &Container,
    images_dir: &Path,
    work_dir: &Path,
    flags: &CriuFlags,
) -> Result<CheckpointOptions, ContainerError> {
    let mut o = CheckpointOptions::new(ctr.init_pid, images_dir);
    o.work_dir = Some(work_dir.to_path_buf());
    o.root = Some(ctr.rootfs.clone());
    o.flags = flags.clone();
    o.flags.network_lock = flags
        .network_lock
        .or_else(|| (!flags.tcp_established).then_some(crate::options::NetworkLock::Skip));
    o.freeze_cgroup = ctr.freezer();
    o.cgroups = Some(CgroupMode::Soft);
    o.orphan_pts_master = true;
    o.empty_net_ns = true;
    o.ext_mounts = external_mounts(ctr)?;
    for ns in &ctr.namespaces {
        let (Some(_), Some(name), Some(key)) =
            (&ns.path, ns_proc_name(&ns.kind), external_ns_key(&ns.kind))
        else {
            continue;
        };
        if let Some(ino) = ctr.namespace_inode(name) {
            o.external.push(format!("{name}[{ino}]:{key}"));
        }
    }
    Ok(o)
}

/// External mounts of a container at dump time: (mount point in the container → name).
pub fn external_mounts(ctr: &Container) -> Result<Vec<ExtMount>, ContainerError> {
    let mut out: Vec<ExtMount> = Vec::new();
    let mut add = |key: &str, val: &str| {
        if !out.iter().any(|m| m.key == key) {
            out.push(ExtMount::new(key, val));
        }
    };
    let mounts = ctr.mounts()?;
    for m in &ctr.spec_mounts {
        if m.bind {
            add(&m.destination, &m.destination);
        } else if m.fs_type == "cgroup" {
            // cgroup v1 without a cgroup namespace: the runtime bind-mounts each host hierarchy
            // under the destination; each is external.
            let dest = Path::new(&m.destination);
            for mi in mounts
                .iter()
                .filter(|mi| mi.mount_point.starts_with(dest) && mi.mount_point != dest)
            {
                if mi.fs_type == "cgroup" || mi.fs_type == "cgroup2" {
                    let p = mi.mount_point.display().to_string();
                    add(&p, &p);
                }
            }
        }
    }
    for masked in &ctr.masked_paths {
        let in_ctr = PathBuf::from(format!("/proc/{}/root{}", ctr.init_pid, masked));
        let is_mount = mounts.iter().any(|mi| mi.mount_point == Path::new(masked));
        if is_mount && std::fs::metadata(&in_ctr).is_ok_and(|md| !md.is_dir()) {
            add(masked, "/dev/null");
        }
    }
    for d in &ctr.devices {
        add(d, d);
    }
    Ok(out)
}

fn ns_proc_name(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "NEWNET" => "net",
        "NEWPID" => "pid",
        _ => return None,
    })
}

fn external_ns_key(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "NEWNET" => "extRootNetNS",
        "NEWPID" => "extRootPidNS",
        _ => return None,
    })
}

/// Kubernetes identity of a container, recorded in the archive's metadata when known (the shim
/// knows it; a bare runc container has none).
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    /// Container name in the pod spec.
    pub container_name: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
}

/// Image identity recorded in `config.dump` (`rootfsImage`, `rootfsImageRef`,
/// `rootfsImageName`).
#[derive(Debug, Clone, Default)]
pub struct ImageInfo {
    /// The image as the user asked for it.
    pub image: String,
    /// A resolvable reference (`repo@sha256:…` or an image id).
    pub image_ref: String,
    /// The normalised image name.
    pub image_name: String,
}

/// Receives archive-writing progress (bytes done / total).
pub type SharedProgress = std::sync::Arc<dyn crate::archive::Progress + Send>;

/// A container checkpoint to an archive.
#[derive(Clone)]
pub struct ContainerCheckpointOptions {
    /// The archive to write (atomically; its parent must exist).
    pub output: PathBuf,
    /// The CRIU knobs; [`ContainerCheckpointOptions::new`] leaves the container running.
    pub flags: CriuFlags,
    /// For a plain-directory rootfs: the base to diff against.
    pub rootfs_base: Option<crate::rootfs::Base>,
    /// Where CRIU's images are staged (default: beside `output`, same filesystem).
    pub staging_dir: Option<PathBuf>,
    pub pod: Option<PodInfo>,
    pub image: Option<ImageInfo>,
    /// Runtime name written to `config.dump` (default `runc`).
    pub runtime: Option<String>,
    /// Archive compression (default none: what the kubelet and containerd expect).
    pub compression: crate::archive::Compression,
    /// Leave the rootfs out of the checkpoint (no `rootfs-diff.tar`, no `deleted.files`).
    pub skip_rootfs: bool,
    /// Extra top-level members (e.g. `status.dump` from a CRI runtime).
    pub extra_members: Vec<(String, Vec<u8>)>,
    /// Where the in-flight journal lives; none → no journal.
    pub state: Option<super::state::StateRoot>,
    /// Progress of the archive write.
    pub progress: Option<SharedProgress>,
    /// Stream CRIU's page images straight into the archive while CRIU dumps (one copy of the
    /// pages; see [`StreamStats`](super::StreamStats)). Only for uncompressed archives;
    /// compressed ones always stage the images first. Default on.
    pub stream_pages: bool,
    /// Freeze the container's cgroup ourselves, polling quickly, before CRIU seizes it (see
    /// [`crate::cgroups::freeze_fast`]), instead of letting CRIU freeze it with its 100 ms
    /// polling. Default on.
    pub fast_freeze: bool,
}

impl std::fmt::Debug for ContainerCheckpointOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerCheckpointOptions")
            .field("output", &self.output)
            .field("flags", &self.flags)
            .field("rootfs_base", &self.rootfs_base)
            .field("staging_dir", &self.staging_dir)
            .field("compression", &self.compression)
            .field("skip_rootfs", &self.skip_rootfs)
            .field("stream_pages", &self.stream_pages)
            .field("fast_freeze", &self.fast_freeze)
            .finish_non_exhaustive()
    }
}

impl ContainerCheckpointOptions {
    pub fn new(output: impl Into<PathBuf>) -> Self {
        Self {
            output: output.into(),
            flags: CriuFlags {
                leave_running: true,
                ..CriuFlags::default()
            },
            rootfs_base: None,
            staging_dir: None,
            pod: None,
            image: None,
            runtime: None,
            compression: crate::archive::Compression::None,
            skip_rootfs: false,
            extra_members: Vec::new(),
            state: None,
            progress: None,
            stream_pages: true,
            fast_freeze: true,
        }
    }
}

/// What a container checkpoint did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ContainerCheckpointReport {
    pub container: String,
    pub output: PathBuf,
    pub leave_running: bool,
    /// The workload's downtime: from the moment its cgroup was frozen until it ran again.
    /// Measured by the engine when it froze the cgroup itself, else CRIU's freezing plus
    /// frozen time.
    #[serde(
        rename = "frozen_ms",
        serialize_with = "crate::report::ser_duration_ms"
    )]
    pub frozen: std::time::Duration,
    #[serde(rename = "total_ms", serialize_with = "crate::report::ser_duration_ms")]
    pub total: std::time::Duration,
    pub phases: Vec<crate::report::Phase>,
    /// The CRIU dump (its phases, statistics, image sizes).
    pub dump: crate::report::DumpReport,
    pub archive: crate::archive::WriteReport,
    /// Files and deletions captured from the rootfs.
    pub rootfs_files: usize,
    pub rootfs_deleted: usize,
    /// Page images streamed straight into the archive (`None`: staged first).
    pub streamed: Option<super::stream::StreamStats>,
}

impl std::fmt::Display for ContainerCheckpointReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::report::{human_bytes, ms};
        writeln!(
            f,
            "checkpointed container {} to {}{}",
            self.container,
            self.output.display(),
            if self.leave_running {
                " (left running)"
            } else {
                ""
            }
        )?;
        let mut rows = crate::report::phase_rows(&self.phases, self.total);
        rows.push(("workload frozen".into(), ms(self.frozen)));
        writeln!(f, "phases")?;
        crate::report::table(f, &rows)?;
        if let Some(s) = &self.dump.criu {
            writeln!(f, "criu dump statistics")?;
            crate::report::table(f, &s.rows(self.dump.page_size))?;
        }
        writeln!(f, "archive")?;
        crate::report::table(
            f,
            &[
                ("size".into(), human_bytes(self.archive.bytes)),
                ("compression".into(), self.archive.compression.to_string()),
                (
                    "checkpoint images".into(),
                    human_bytes(self.archive.images_bytes),
                ),
                (
                    "pages".into(),
                    match &self.streamed {
                        Some(s) => format!(
                            "streamed into the archive ({} images, {})",
                            s.streamed.len(),
                            human_bytes(s.bytes)
                        ),
                        None => "staged, then copied".into(),
                    },
                ),
                (
                    "rootfs diff".into(),
                    format!(
                        "{} ({} entries, {} deleted)",
                        human_bytes(self.archive.rootfs_diff_bytes),
                        self.rootfs_files,
                        self.rootfs_deleted
                    ),
                ),
                (
                    "signed by".into(),
                    match &self.archive.signed_by {
                        Some(k) => format!("node key {k}"),
                        None => "unsigned".into(),
                    },
                ),
            ],
        )
    }
}

/// Removes the staging directory when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Checkpoints a running container into an archive at `opts.output`.
///
/// The workload is frozen only while CRIU dumps it (and the rootfs diff is planned, a stat walk):
/// it resumes before the archive is written. The archive appears at `output` only when
/// complete. On failure the workload is left running and unfrozen, and nothing is left at
/// `output` or in the staging area.
pub async fn checkpoint(
    engine: &crate::Engine,
    ctr: &Container,
    opts: &ContainerCheckpointOptions,
) -> crate::Result<ContainerCheckpointReport> {
    use crate::archive::{self, ArchiveBuilder, ArchiveInput};
    use crate::error::Error;
    use crate::report::Phase;
    use std::time::Instant;

    let started = Instant::now();
    ctr.ensure_running()?;
    // One checkpoint of a container at a time, across processes: a second one waits.
    let lock_root = opts.state.clone().unwrap_or_default();
    let _lock = super::lock::lock(&lock_root, &ctr.id, opts.flags.timeout).await?;
    // The one we waited for may have stopped it (a checkpoint without leave-running).
    ctr.ensure_running()?;
    let (output, parent) = destination(&opts.output)?;

    // Plan what of the rootfs goes into the archive.
    let rootfs_kind = ctr.rootfs_kind()?;
    let mut excludes = crate::rootfs::default_excludes();
    excludes.extend(ctr.spec_mounts.iter().map(|m| m.destination.clone()));
    let base = rootfs_base(ctr, opts, &rootfs_kind)?;
    // With a state root the archive is signed by its node key (created on first use), loaded
    // now so that a missing or unsafe key fails before the workload is frozen.
    let signer = node_signer(opts)?;

    // Staging beside the destination: same filesystem, page cache (measured faster than tmpfs
    // here: 464 vs 694 ms for 1 GiB, see the design notes).
    let t = Instant::now();
    let staging_root = opts.staging_dir.clone().unwrap_or_else(|| parent.clone());
    let staging_dir = staging_root.join(format!(
        ".cpengine-{}-{:08x}",
        ctr.id,
        rand::random::<u32>()
    ));
    let images_dir = staging_dir.join("checkpoint");
    // The journal entry first: an engine killed from here on is repaired at the next start.
    let mut journal = begin_journal(ctr, opts, &staging_dir, &output)?;
    create_staging_dir(&staging_root, &staging_dir)?;
    let staging = Staging(staging_dir.clone());
    create_private_dir(&images_dir)?;
    let dump_opts = dump_options(ctr, &images_dir, &staging_dir, &opts.flags)?;
    write_descriptors(ctr, &images_dir).map_err(Error::io("writing descriptors.json"))?;

    // Single copy: page images flow through FIFOs straight into the archive while CRIU dumps.
    let stream = opts.stream_pages && opts.compression == archive::Compression::None;
    let mut pages = if stream {
        let mut b = ArchiveBuilder::create(&output)?;
        if let Some(k) = &signer {
            b.set_signer(k.clone())?;
        }
        b.append_dir(archive::names::CHECKPOINT_DIR, unix_now())?;
        let fifos = task_count(ctr) + super::stream::SPARE_FIFOS;
        Some(
            super::stream::PageStream::start(b, &images_dir, fifos)
                .map_err(Error::io("creating the page image FIFOs"))?,
        )
    } else {
        None
    };
    let prepare = t.elapsed();

    // Dump. Hooks: at pre-dump, freeze the cgroup ourselves (quickly); at post-dump (images
    // written, container still frozen), wait for the streamed pages to be in the archive and
    // plan the rootfs diff (a stat walk, so its file list matches the memory image).
    let mut hooks = DumpHooks {
        freezer: if opts.fast_freeze {
            ctr.freezer()
        } else {
            None
        },
        timeout: opts.flags.timeout,
        pages: &mut pages,
        kind: &rootfs_kind,
        rootfs: &ctr.rootfs,
        base: base.as_ref(),
        excludes: &excludes,
        skip: opts.skip_rootfs,
        froze_at: None,
        pages_failed: false,
        plan: None,
        plan_time: std::time::Duration::ZERO,
    };
    let report = match journal.as_mut() {
        Some(entry) => {
            let mut journaled = super::journal::Journaled {
                entry,
                inner: &mut hooks,
            };
            engine.dump_with(&dump_opts, &mut journaled).await
        }
        None => engine.dump_with(&dump_opts, &mut hooks).await,
    };
    let DumpHooks {
        froze_at,
        pages_failed,
        mut plan,
        plan_time,
        ..
    } = hooks;
    // The first failure is the cause: the archive side (it makes CRIU fail), then the plan
    // (its failed hook made CRIU abort), then CRIU itself.
    let report = match (report, plan) {
        (Err(e), p) => {
            let archive_err = pages.take().and_then(super::stream::PageStream::abort);
            if let Some(ae) = archive_err {
                return Err(ae.into());
            }
            if let Some(Err(pe)) = p {
                return Err(pe.into());
            }
            if pages_failed {
                return Err(Error::PageStream);
            }
            return Err(e);
        }
        (Ok(_), Some(Err(e))) => return Err(e.into()),
        (Ok(r), p) => {
            plan = p;
            r
        }
    };
    let rootfs_plan = plan.and_then(Result::ok).filter(|d| !d.is_empty());
    let frozen = match (froze_at, report.resumed_at) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => report
            .criu
            .as_ref()
            .map(|s| s.freezing + s.frozen)
            .unwrap_or_default(),
    };

    // The container runs again; now build the archive.
    let t = Instant::now();
    let (config, spec) = metadata(engine, ctr, opts)?;
    let rootfs_files = rootfs_plan.as_ref().map_or(0, |d| d.entries.len());
    let rootfs_deleted = rootfs_plan.as_ref().map_or(0, |d| d.deleted.len());
    let input = ArchiveInput {
        images_dir: images_dir.clone(),
        config,
        spec,
        stats_dump: Some(staging_dir.join("stats-dump")).filter(|p| p.is_file()),
        dump_log: Some(staging_dir.join(crate::criu::convert::DUMP_LOG)).filter(|p| p.is_file()),
        rootfs: rootfs_plan,
        extra: opts.extra_members.clone(),
    };
    let (archive, streamed) = write_archive(pages.take(), input, &output, opts, signer).await?;
    let archive_time = t.elapsed();
    drop(staging);
    drop(journal);

    if !opts.flags.leave_running {
        destroy_after_checkpoint(ctr, opts).await;
    }
    let mut phases = vec![Phase::new("prepare staging", prepare)];
    phases.extend(
        report
            .phases
            .iter()
            .filter(|p| p.name.starts_with("criu"))
            .cloned(),
    );
    phases.push(Phase::new("rootfs diff plan (while frozen)", plan_time));
    phases.push(Phase::new("archive (workload running)", archive_time).with_bytes(archive.bytes));
    Ok(ContainerCheckpointReport {
        container: ctr.id.clone(),
        output,
        leave_running: opts.flags.leave_running,
        frozen,
        total: started.elapsed(),
        phases,
        dump: report,
        archive,
        rootfs_files,
        rootfs_deleted,
        streamed,
    })
}

/// The archive's absolute path and its directory, which must exist; a directory is refused.
fn destination(output: &Path) -> crate::Result<(PathBuf, PathBuf)> {
    use crate::error::Error;
    let output = if output.is_absolute() {
        output.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(Error::io("reading the current directory"))?
            .join(output)
    };
    let parent = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    if !parent.is_dir() {
        return Err(Error::NoDestinationDir { path: parent });
    }
    if output.is_dir() {
        return Err(Error::DestinationIsDir { path: output });
    }
    Ok((output, parent))
}

/// What a plain-directory rootfs is diffed against (an overlay's changes are its upper
/// directory): the caller's base, required.
fn rootfs_base(
    ctr: &Container,
    opts: &ContainerCheckpointOptions,
    kind: &super::RootfsKind,
) -> crate::Result<Option<crate::rootfs::Base>> {
    match (kind, &opts.rootfs_base, opts.skip_rootfs) {
        (_, _, true) => Ok(None),
        (super::RootfsKind::Overlay { .. }, _, _) => Ok(None),
        (super::RootfsKind::Dir, Some(b), _) => Ok(Some(b.clone())),
        (super::RootfsKind::Dir, None, _) => Err(crate::error::Error::DirRootfsNeedsBase {
            id: ctr.id.clone(),
            rootfs: ctr.rootfs.clone(),
        }),
    }
}

/// The journal entry, written first: an engine killed from here on is repaired at the next
/// start. None without a state root.
fn begin_journal(
    ctr: &Container,
    opts: &ContainerCheckpointOptions,
    staging_dir: &Path,
    output: &Path,
) -> crate::Result<Option<super::journal::Entry>> {
    let Some(state) = &opts.state else {
        return Ok(None);
    };
    super::journal::begin(
        state,
        super::journal::InFlight {
            container: ctr.id.clone(),
            freezer: ctr.freezer(),
            staging: Some(staging_dir.to_path_buf()),
            output: Some(output.to_path_buf()),
            started: crate::archive::GoTime::now().to_string(),
            init_pid: ctr.init_pid,
            init_start: crate::proc::start_time(ctr.init_pid).unwrap_or(0),
            ..Default::default()
        },
    )
    .map(Some)
    .map_err(crate::error::Error::io("writing the checkpoint journal"))
}

/// Creates the staging directory. The staging root may be shared (the destination's
/// directory); the staging directory itself is private: it holds every memory page of the
/// workload.
fn create_staging_dir(root: &Path, dir: &Path) -> crate::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(crate::error::Error::io(format!(
            "creating staging directory {}",
            dir.display()
        )))?;
    create_private_dir(dir)
}

/// Creates `dir` (mode 0700), which must not exist yet.
fn create_private_dir(dir: &Path) -> crate::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(crate::error::Error::io(format!(
            "creating staging directory {}",
            dir.display()
        )))
}

/// CRIU's hooks during a container dump. At pre-dump the cgroup is frozen here (quickly); at
/// post-dump (images written, container still frozen) the streamed pages must be in the
/// archive and the rootfs diff is planned (a stat walk, so its file list matches the memory
/// image).
struct DumpHooks<'a> {
    freezer: Option<PathBuf>,
    timeout: std::time::Duration,
    pages: &'a mut Option<super::stream::PageStream>,
    kind: &'a super::RootfsKind,
    rootfs: &'a Path,
    base: Option<&'a crate::rootfs::Base>,
    excludes: &'a [String],
    skip: bool,
    froze_at: Option<std::time::Instant>,
    pages_failed: bool,
    plan: Option<Result<crate::rootfs::RootfsDiff, crate::rootfs::RootfsError>>,
    plan_time: std::time::Duration,
}

impl DumpHooks<'_> {
    fn pre_dump(&mut self) -> Ack {
        if let Some(fz) = self.freezer.as_deref() {
            let at = std::time::Instant::now();
            match crate::cgroups::freeze_fast(fz, self.timeout) {
                Ok(Some(_)) => self.froze_at = Some(at),
                // Not frozen in time (thawed again): CRIU freezes it its own way.
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(cgroup = %fz.display(), error = %e, "freezing the container failed; leaving it to CRIU");
                    crate::cgroups::thaw(fz);
                }
            }
        }
        Ack::ok()
    }

    fn post_dump(&mut self) -> Ack {
        if let Some(p) = self.pages.as_ref()
            && !p.finish_pages()
        {
            // The archive side failed: CRIU must resume the container.
            self.pages_failed = true;
            return Ack::fail();
        }
        if self.skip {
            return Ack::ok();
        }
        let t = std::time::Instant::now();
        let r = match (self.kind, self.base) {
            (super::RootfsKind::Overlay { lowers, upper, .. }, _) => {
                crate::rootfs::plan_overlay(upper, lowers, self.excludes)
            }
            (super::RootfsKind::Dir, Some(b)) => {
                crate::rootfs::plan_dir(self.rootfs, b, self.excludes)
            }
            (super::RootfsKind::Dir, None) => Ok(crate::rootfs::RootfsDiff::default()),
        };
        self.plan_time = t.elapsed();
        let ok = r.is_ok();
        self.plan = Some(r);
        // A failed plan fails the hook: CRIU then aborts the dump and resumes the container.
        if ok { Ack::ok() } else { Ack::fail() }
    }
}

impl crate::criu::NotifyHandler for DumpHooks<'_> {
    fn on_notify(&mut self, n: Notification) -> Ack {
        match n {
            Notification::PreDump => self.pre_dump(),
            Notification::PostDump => self.post_dump(),
            _ => Ack::ok(),
        }
    }
}

/// The archive's config.dump and annotated spec.dump for `ctr`.
fn metadata(
    engine: &crate::Engine,
    ctr: &Container,
    opts: &ContainerCheckpointOptions,
) -> crate::Result<(crate::archive::ConfigDump, serde_json::Value)> {
    use crate::archive::{self, CheckpointAnnotations, ConfigDump, GoTime};
    use crate::error::Error;
    let annotations = ctr.annotations();
    let container_name = opts
        .pod
        .as_ref()
        .map(|p| p.container_name.clone())
        .or_else(|| annotations.get("io.kubernetes.cri.container-name").cloned())
        .or_else(|| annotations.get("io.kubernetes.container.name").cloned())
        .unwrap_or_else(|| ctr.id.clone());
    let image = opts
        .image
        .clone()
        .unwrap_or_else(|| image_from(ctr, &annotations));
    let config = ConfigDump {
        id: ctr.id.clone(),
        name: container_name.clone(),
        rootfs_image: image.image.clone(),
        rootfs_image_ref: image.image_ref.clone(),
        rootfs_image_name: image.image_name.clone(),
        runtime: opts.runtime.clone().unwrap_or_else(|| "runc".into()),
        created_time: GoTime::parse(&ctr.created).unwrap_or_else(|_| GoTime::zero()),
        checkpointed_time: GoTime::now(),
        restored_time: GoTime::zero(),
        restored: ctr
            .record
            .as_ref()
            .is_some_and(|r| r.restored_from.is_some()),
    };
    let mut spec = ctr.spec_json.clone();
    archive::annotate_spec(
        &mut spec,
        &CheckpointAnnotations {
            container_name,
            sandbox_name: opts
                .pod
                .as_ref()
                .map(|p| p.pod_name.clone())
                .filter(|s| !s.is_empty()),
            sandbox_namespace: opts
                .pod
                .as_ref()
                .map(|p| p.pod_namespace.clone())
                .filter(|s| !s.is_empty()),
            criu_version: Some(engine.criu_version().to_string()),
            checkpointed: config.checkpointed_time,
        },
    )
    .map_err(|source| Error::ContainerSpec { source })?;
    Ok((config, spec))
}

/// Writes the archive once the container runs again: the rest of it after the streamed
/// pages, or all of it.
async fn write_archive(
    pages: Option<super::stream::PageStream>,
    input: crate::archive::ArchiveInput,
    output: &Path,
    opts: &ContainerCheckpointOptions,
    signer: Option<std::sync::Arc<crate::archive::sign::NodeKey>>,
) -> crate::Result<(
    crate::archive::WriteReport,
    Option<super::stream::StreamStats>,
)> {
    use crate::archive::{self, WriteOptions};
    let out = output.to_path_buf();
    let compression = opts.compression;
    let progress = opts.progress.clone();
    let written = match pages {
        Some(p) => {
            crate::blocking(move || {
                let (mut b, stats) = p.join()?;
                // The pages are in and the workload runs again: let the disk start on them
                // while the rest of the archive is appended.
                b.start_writeback_now();
                let progress = progress
                    .as_deref()
                    .map(|p| p as &dyn crate::archive::Progress);
                b.append(&input, progress)?;
                Ok((b.finish()?, Some(stats)))
            })
            .await?
        }
        None => {
            crate::blocking(move || {
                let wo = WriteOptions {
                    compression,
                    progress: progress
                        .as_deref()
                        .map(|p| p as &dyn crate::archive::Progress),
                    signer: signer.as_deref(),
                    ..Default::default()
                };
                Ok((archive::write_archive(&out, &input, &wo)?, None))
            })
            .await?
        }
    };
    Ok(written)
}

/// The node key of `opts.state` (see [`crate::archive::sign`]); none without a state root.
fn node_signer(
    opts: &ContainerCheckpointOptions,
) -> crate::Result<Option<std::sync::Arc<crate::archive::sign::NodeKey>>> {
    let Some(state) = &opts.state else {
        return Ok(None);
    };
    let path = crate::archive::sign::node_key_path(&state.lib);
    let key = crate::archive::sign::NodeKey::load_or_create(&path)
        .map_err(crate::archive::ArchiveError::from)?;
    Ok(Some(std::sync::Arc::new(key)))
}

/// Tasks of the container: its init's tree, or the freezer cgroup's members if more (one
/// page image each).
fn task_count(ctr: &Container) -> u32 {
    let tree = crate::proc::tree(ctr.init_pid).len();
    let in_cgroup = ctr
        .freezer()
        .and_then(|f| std::fs::read_to_string(f.join("cgroup.procs")).ok())
        .map_or(0, |s| s.lines().count());
    tree.max(in_cgroup).max(1) as u32
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Image identity from what the runtime recorded in the spec (containerd and CRI-O
/// annotations) or, for a container cpengine restored, from its checkpoint's config.dump.
fn image_from(ctr: &Container, ann: &std::collections::BTreeMap<String, String>) -> ImageInfo {
    if let Some(cfg) = ctr
        .record
        .as_ref()
        .and_then(|r| r.checkpoint_config.as_ref())
    {
        let get = |k: &str| {
            cfg.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        return ImageInfo {
            image: get("rootfsImage"),
            image_ref: get("rootfsImageRef"),
            image_name: get("rootfsImageName"),
        };
    }
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| ann.get(*k).cloned())
            .unwrap_or_default()
    };
    ImageInfo {
        image: first(&["io.kubernetes.cri.image-name", "io.kubernetes.cri-o.Image"]),
        image_ref: first(&["io.kubernetes.cri-o.ImageRef"]),
        image_name: first(&[
            "io.kubernetes.cri.image-name",
            "io.kubernetes.cri-o.ImageName",
        ]),
    }
}

/// After a checkpoint without leave-running CRIU has killed the container's processes; remove
/// the container like runc does after `checkpoint` (runc delete for runc containers, full
/// cleanup for containers cpengine restored).
async fn destroy_after_checkpoint(ctr: &Container, opts: &ContainerCheckpointOptions) {
    match &ctr.origin {
        super::Origin::Runc { root } => {
            let r = tokio::process::Command::new("runc")
                .arg("--root")
                .arg(root)
                .args(["delete", "--force", &ctr.id])
                .status()
                .await;
            if !r.is_ok_and(|s| s.success()) {
                tracing::warn!(container = %ctr.id, "runc delete after the checkpoint failed");
            }
        }
        super::Origin::Cpengine { .. } => {
            if let Some(state) = &opts.state
                && let Err(e) = super::manage::delete(state, &ctr.id, true).await
            {
                tracing::warn!(container = %ctr.id, error = %e, "removing the checkpointed container failed");
            }
        }
    }
}
