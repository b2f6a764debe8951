//! Forensic inspection of a CRIU images directory: what was running, what it had open, what
//! it was connected to, and what was in its memory, read from the images alone.
//!
//! Everything here is a pure function of an images directory (what `cpengine dump` writes,
//! or the `checkpoint/` directory of an extracted checkpoint archive) plus, for the mounts
//! view, the container's OCI spec. Nothing runs CRIU, nothing writes.
//!
//! How the images tie together (all ids are CRIU's own, not kernel numbers):
//!
//! * `pstree.img` lists the processes (pid, ppid, pgid, sid, thread ids); `core-<pid>.img`
//!   holds each one's name and state.
//! * `ids-<pid>.img` names the kernel objects a process uses: its fd table (`files_id`), its
//!   filesystem context (`fs_id`), its address space (`vm_id`). Processes sharing an fd table
//!   share `fdinfo-<files_id>.img`.
//! * `fdinfo-<files_id>.img` maps fd numbers to ids of entries in `files.img`, which says what
//!   each open file is: a path, a pipe, a socket, an eventfd... Two fds pointing at the same
//!   id are one open file description (shared offset and flags), possibly across processes.
//! * `fs-<pid>.img` gives the cwd and root as ids of `files.img` entries.
//! * `mm-<pid>.img` has the mappings (VMAs) and where argv and the environment live;
//!   `pagemap-<pid>.img` lists the dumped page runs and `pages-<id>.img` their contents, back
//!   to back for the runs flagged present. Command lines, environments and the memory search
//!   read process memory through [`ProcessPages`].
//!
//! Hostile images are expected: every entry is size-capped before allocation
//! ([`Limits::max_entry`]), counts of tasks, VMAs, fds, files and page runs are capped, every
//! memory read is bounded, and inconsistencies (overlapping page runs, a pages file shorter
//! than its pagemap) are typed errors ([`InspectError`]), never panics.
//!
//! The JSON shapes follow checkpointctl's `inspect --format json` keys where it has them
//! (`process_tree`, `file_descriptors`, `sockets`, `mounts`, `statistics`), so tools written
//! against one read the other.

mod error;
mod files;
mod memory;
mod mounts;
mod pages;
mod ps;
mod read;
mod render;
mod sockets;
mod stats;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use criu_proto::images::{CoreEntry, FileEntry, MmEntry, PstreeEntry, TaskKobjIdsEntry};
use serde::Serialize;

pub use error::{InspectError, PageAbsence};
pub use files::{OpenFile, ProcessFiles};
pub use memory::{MemoryView, PageCounts, ProcessMemory, Vma};
pub use mounts::{Mount, mounts_from_spec, mounts_from_spec_file};
pub use pages::{
    PE_LAZY, PE_PARENT, PE_PRESENT, PageRun, ProcessPages, SearchHit, SearchOptions, SearchResult,
    printable,
};
pub use ps::{PsNode, PsOptions, TaskState};
pub use render::{
    Table, files_table, memory_summary_table, mounts_table, sockets_table, vma_table,
};
pub use sockets::{ProcessSockets, Socket, SocketData};
pub use stats::{Statistics, statistics};

/// Result alias for inspection.
pub type Result<T, E = InspectError> = std::result::Result<T, E>;

/// Caps that keep a hostile or corrupt image from exhausting memory or time.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest single protobuf entry, in bytes.
    pub max_entry: u32,
    /// Most processes in `pstree.img`.
    pub max_tasks: usize,
    /// Most VMAs of one process.
    pub max_vmas: usize,
    /// Most descriptors in one fd table.
    pub max_fds: usize,
    /// Most entries in `files.img` (and `tty-info.img`).
    pub max_files: usize,
    /// Most page runs in one pagemap.
    pub max_page_runs: usize,
    /// Largest memory range read in one piece (argv, environment, search context).
    pub max_read: u64,
    /// Most bytes of page contents one search scans in total.
    pub max_scan: u64,
    /// Longest search pattern.
    pub max_pattern: usize,
    /// Most hits one search returns, whatever the caller asks for.
    pub max_hits: usize,
    /// Deepest chain of parent image sets followed for pages flagged "in parent".
    pub max_parent_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entry: criu_proto::image::DEFAULT_MAX_ENTRY,
            max_tasks: 1 << 16,
            // The kernel's default vm.max_map_count is 65530.
            max_vmas: 1 << 20,
            max_fds: 1 << 20,
            max_files: 1 << 22,
            max_page_runs: 1 << 24,
            // argv + envp are limited by the kernel to a quarter of the stack rlimit; 16 MiB
            // covers any realistic command line.
            max_read: 16 << 20,
            max_scan: 1 << 40,
            max_pattern: 4096,
            max_hits: 100_000,
            max_parent_depth: 16,
        }
    }
}

/// Which views to build.
#[derive(Debug, Clone, Default)]
pub struct ViewRequest {
    /// The process tree (`process_tree`).
    pub ps_tree: bool,
    /// With the tree: each process's command line read from its memory.
    pub cmdline: bool,
    /// With the tree: each process's environment read from its memory.
    pub env: bool,
    /// Open files per process (`file_descriptors`).
    pub files: bool,
    /// Sockets per process (`sockets`).
    pub sockets: bool,
    /// Mappings and dumped pages per process (`memory`).
    pub memory: bool,
    /// CRIU's dump statistics from this file (`statistics`).
    pub stats: Option<PathBuf>,
    /// Mounts from this OCI spec (`mounts`).
    pub mounts: Option<PathBuf>,
    /// A search of process memory (`search`).
    pub search: Option<SearchOptions>,
}

/// The views asked for, over one images directory.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    pub images_dir: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statistics: Option<Statistics>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_tree: Option<PsNode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_descriptors: Option<Vec<ProcessFiles>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<ProcessSockets>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<SearchResult>,
}

/// Builds the requested views of `images_dir` (blocking file reads).
pub fn inspect_dir(images_dir: &Path, req: &ViewRequest, limits: &Limits) -> Result<Inspection> {
    let mut out = Inspection {
        images_dir: images_dir.to_path_buf(),
        statistics: None,
        process_tree: None,
        file_descriptors: None,
        sockets: None,
        mounts: None,
        memory: None,
        search: None,
    };
    if let Some(path) = &req.stats {
        out.statistics = Some(statistics(path)?);
    }
    if let Some(spec) = &req.mounts {
        out.mounts = Some(mounts_from_spec_file(spec)?);
    }
    let needs_images =
        req.ps_tree || req.files || req.sockets || req.memory || req.search.is_some();
    if needs_images {
        let set = ImageSet::open_with(images_dir, limits.clone())?;
        if req.ps_tree {
            out.process_tree = Some(set.process_tree(&PsOptions {
                cmdline: req.cmdline,
                env: req.env,
            })?);
        }
        if req.files {
            out.file_descriptors = Some(set.file_descriptors()?);
        }
        if req.sockets {
            out.sockets = Some(set.sockets()?);
        }
        if req.memory {
            out.memory = Some(set.memory()?);
        }
        if let Some(search) = &req.search {
            out.search = Some(set.search(search)?);
        }
    }
    Ok(out)
}

/// [`inspect_dir`] on the blocking thread pool.
pub async fn inspect(images_dir: PathBuf, req: ViewRequest, limits: Limits) -> Result<Inspection> {
    tokio::task::spawn_blocking(move || inspect_dir(&images_dir, &req, &limits)).await?
}

/// One process of the image set: its pstree entry and its main thread's core.
#[derive(Debug, Clone)]
pub(crate) struct Task {
    pub entry: PstreeEntry,
    pub core: CoreEntry,
}

impl Task {
    pub fn pid(&self) -> u32 {
        self.entry.pid
    }

    /// The kernel's name of the process (`comm`).
    pub fn comm(&self) -> &str {
        self.core.tc.as_ref().map_or("", |tc| tc.comm.as_str())
    }

    pub fn state(&self) -> TaskState {
        TaskState::from_raw(self.core.tc.as_ref().map_or(0, |tc| tc.task_state))
    }
}

/// An opened images directory: the process list is read eagerly, everything else on demand.
#[derive(Debug)]
pub struct ImageSet {
    dir: PathBuf,
    limits: Limits,
    page_size: u64,
    tasks: Vec<Task>,
    files: OnceLock<HashMap<u32, FileEntry>>,
}

impl ImageSet {
    /// Opens `dir` with the default [`Limits`].
    pub fn open(dir: &Path) -> Result<Self> {
        Self::open_with(dir, Limits::default())
    }

    /// Opens `dir`: reads `pstree.img` and the core of every process.
    pub fn open_with(dir: &Path, limits: Limits) -> Result<Self> {
        let pstree_path = dir.join("pstree.img");
        let entries: Vec<PstreeEntry> = read::all(
            &pstree_path,
            criu_proto::image::magic::PSTREE,
            &limits,
            limits.max_tasks,
            "processes",
        )?;
        let mut tasks = Vec::with_capacity(entries.len());
        for entry in entries {
            let core: CoreEntry = read::one(
                &dir.join(format!("core-{}.img", entry.pid)),
                criu_proto::image::magic::CORE,
                &limits,
            )?;
            tasks.push(Task { entry, core });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            limits,
            page_size: crate::sys::page_size(),
            tasks,
            files: OnceLock::new(),
        })
    }

    /// The images directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Page size used to interpret pagemaps (the host's: CRIU images are not portable
    /// across page sizes).
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// Overrides the page size (for images made on a host with another page size).
    pub fn set_page_size(&mut self, page_size: u64) {
        self.page_size = page_size;
    }

    /// The pids in `pstree.img` order (the root first).
    pub fn pids(&self) -> Vec<u32> {
        self.tasks.iter().map(Task::pid).collect()
    }

    pub(crate) fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    pub(crate) fn task(&self, pid: u32) -> Result<&Task> {
        self.tasks
            .iter()
            .find(|t| t.pid() == pid)
            .ok_or(InspectError::NoSuchPid { pid })
    }

    /// The kernel-object ids of a process (`ids-<pid>.img`, or the copy in its core).
    pub(crate) fn ids(&self, pid: u32) -> Result<TaskKobjIdsEntry> {
        let path = self.dir.join(format!("ids-{pid}.img"));
        if !path.exists()
            && let Some(ids) = self.task(pid)?.core.ids
        {
            return Ok(ids);
        }
        read::one(&path, criu_proto::image::magic::IDS, &self.limits)
    }

    /// `mm-<pid>.img`, or `None` for a process without an address space (zombie, dead).
    pub(crate) fn mm(&self, pid: u32) -> Result<Option<MmEntry>> {
        let task = self.task(pid)?;
        if !task.state().has_memory() {
            return Ok(None);
        }
        let path = self.dir.join(format!("mm-{pid}.img"));
        let mm: MmEntry = read::one(&path, criu_proto::image::magic::MM, &self.limits)?;
        if mm.vmas.len() > self.limits.max_vmas {
            return Err(InspectError::TooMany {
                path,
                what: "mappings",
                limit: self.limits.max_vmas,
            });
        }
        Ok(Some(mm))
    }

    /// Every entry of `files.img`, by id (read once).
    pub(crate) fn files(&self) -> Result<&HashMap<u32, FileEntry>> {
        if let Some(f) = self.files.get() {
            return Ok(f);
        }
        let path = self.dir.join("files.img");
        let entries: Vec<FileEntry> = if path.exists() {
            read::all(
                &path,
                criu_proto::image::magic::FILES,
                &self.limits,
                self.limits.max_files,
                "files",
            )?
        } else {
            Vec::new()
        };
        let map = entries.into_iter().map(|e| (e.id, e)).collect();
        Ok(self.files.get_or_init(|| map))
    }

    /// The dumped memory of a process, for reads and searches.
    pub fn process_pages(&self, pid: u32) -> Result<ProcessPages> {
        self.task(pid)?;
        ProcessPages::open(&self.dir, pid, self.page_size, &self.limits)
    }
}
#[cfg(test)]
mod tests;
