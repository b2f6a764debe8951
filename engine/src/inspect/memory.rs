//! Memory per process: every mapping with its protection, sharing and backing file, and how
//! many of its pages were dumped into this image set, left lazy, or live in the parent set.
//! The summary columns match checkpointctl's `memparse`: MEMORY SIZE is every pagemap page
//! (whatever its flags), SHARED MEMORY SIZE the size of the MAP_SHARED mappings.

use std::collections::HashMap;

use criu_proto::images::{FileEntry, VmaEntry};
use serde::Serialize;

use super::pages::{PageRun, ser_addr};
use super::{ImageSet, Result};

const MAP_SHARED: u32 = 0x01;
const MAP_ANONYMOUS: u32 = 0x20;
const MAP_GROWSDOWN: u32 = 0x100;

// CRIU's VMA_* status bits (criu/include/image.h).
const VMA_AREA_STACK: u32 = 1 << 1;
const VMA_AREA_VSYSCALL: u32 = 1 << 2;
const VMA_AREA_VDSO: u32 = 1 << 3;
const VMA_AREA_HEAP: u32 = 1 << 5;
const VMA_FILE_PRIVATE: u32 = 1 << 6;
const VMA_FILE_SHARED: u32 = 1 << 7;
const VMA_ANON_SHARED: u32 = 1 << 8;
const VMA_AREA_SYSVIPC: u32 = 1 << 10;
const VMA_AREA_SOCKET: u32 = 1 << 11;
const VMA_AREA_VVAR: u32 = 1 << 12;
const VMA_AREA_AIORING: u32 = 1 << 13;
const VMA_AREA_MEMFD: u32 = 1 << 14;

/// Page counts by where the contents are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PageCounts {
    /// In this image set's pages file.
    pub present: u64,
    /// Left for lazy restore (not in any file).
    pub lazy: u64,
    /// In the parent image set.
    pub parent: u64,
    /// Every page the pagemap lists.
    pub total: u64,
}

impl PageCounts {
    fn add_run(&mut self, run: &PageRun, pages: u64) {
        self.total += pages;
        if run.is_present() {
            self.present += pages;
        } else if run.is_parent() {
            self.parent += pages;
        } else if run.is_lazy() {
            self.lazy += pages;
        }
    }

    fn add(&mut self, o: &PageCounts) {
        self.present += o.present;
        self.lazy += o.lazy;
        self.parent += o.parent;
        self.total += o.total;
    }
}

/// One mapping.
#[derive(Debug, Clone, Serialize)]
pub struct Vma {
    #[serde(serialize_with = "ser_addr")]
    pub start: u64,
    #[serde(serialize_with = "ser_addr")]
    pub end: u64,
    pub size: u64,
    /// `rwx` with `-` for missing rights.
    pub prot: String,
    /// `shared` or `private`.
    pub sharing: &'static str,
    pub anonymous: bool,
    /// Backing file path, or `[stack]`, `[heap]`, `[vdso]`, `[vvar]`, `[vsyscall]`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    /// Offset into the backing file.
    pub pgoff: u64,
    pub pages: PageCounts,
}

/// The memory of one process.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessMemory {
    pub pid: u32,
    pub process_name: String,
    /// Bytes of every page in the pagemap (checkpointctl's MEMORY SIZE).
    pub memory_size: u64,
    /// Bytes of MAP_SHARED mappings (checkpointctl's SHARED MEMORY SIZE).
    pub shared_memory_size: u64,
    /// Bytes of pages stored in this image set.
    pub dumped_size: u64,
    /// Bytes of address space mapped.
    pub mapped_size: u64,
    pub pages: PageCounts,
    /// The `pages-<id>.img` holding this process's pages.
    pub pages_id: u32,
    pub vmas: Vec<Vma>,
}

/// Memory of every process with an address space.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryView {
    pub page_size: u64,
    pub processes: Vec<ProcessMemory>,
    /// Sums over all processes.
    pub total_pages: PageCounts,
    pub total_memory_size: u64,
    pub total_dumped_size: u64,
}

impl ImageSet {
    /// Mappings and dumped pages of every live process, in pstree order.
    pub fn memory(&self) -> Result<MemoryView> {
        let files = self.files()?;
        let ps = self.page_size();
        let mut processes = Vec::new();
        let mut total_pages = PageCounts::default();
        for task in self.tasks() {
            let Some(mm) = self.mm(task.pid())? else {
                continue;
            };
            let pages = self.process_pages(task.pid())?;
            let mut counts = PageCounts::default();
            for run in pages.runs() {
                counts.add_run(run, run.pages);
            }
            let mut raw = mm.vmas;
            raw.sort_by_key(|v| v.start);
            let vmas: Vec<Vma> = raw
                .iter()
                .map(|v| vma(v, pages.runs(), ps, files))
                .collect();
            let shared_memory_size = vmas
                .iter()
                .filter(|v| v.sharing == "shared")
                .map(|v| v.size)
                .sum();
            total_pages.add(&counts);
            processes.push(ProcessMemory {
                pid: task.pid(),
                process_name: task.comm().to_string(),
                memory_size: counts.total * ps,
                shared_memory_size,
                dumped_size: counts.present * ps,
                mapped_size: vmas.iter().map(|v| v.size).sum(),
                pages: counts,
                pages_id: pages.pages_id(),
                vmas,
            });
        }
        Ok(MemoryView {
            page_size: ps,
            total_memory_size: total_pages.total * ps,
            total_dumped_size: total_pages.present * ps,
            total_pages,
            processes,
        })
    }
}

fn vma(v: &VmaEntry, runs: &[PageRun], ps: u64, files: &HashMap<u32, FileEntry>) -> Vma {
    let size = v.end.saturating_sub(v.start);
    let mut pages = PageCounts::default();
    // Runs are sorted and disjoint: start at the first one ending after the mapping starts.
    let first = runs.partition_point(|r| r.vaddr + r.pages * ps <= v.start);
    // A mapping ending before it starts (corrupt image) holds no pages.
    let within = if v.end > v.start { &runs[first..] } else { &[] };
    for run in within {
        if run.vaddr >= v.end {
            break;
        }
        let lo = run.vaddr.max(v.start);
        let hi = (run.vaddr + run.pages * ps).min(v.end);
        pages.add_run(run, (hi - lo) / ps);
    }
    let prot = format!(
        "{}{}{}",
        if v.prot & 1 != 0 { 'r' } else { '-' },
        if v.prot & 2 != 0 { 'w' } else { '-' },
        if v.prot & 4 != 0 { 'x' } else { '-' },
    );
    Vma {
        start: v.start,
        end: v.end,
        size,
        prot,
        sharing: if v.flags & MAP_SHARED != 0 {
            "shared"
        } else {
            "private"
        },
        anonymous: v.flags & MAP_ANONYMOUS != 0,
        mapping: mapping_name(v, files),
        pgoff: v.pgoff,
        pages,
    }
}

fn mapping_name(v: &VmaEntry, files: &HashMap<u32, FileEntry>) -> Option<String> {
    let s = v.status;
    if s & (VMA_FILE_PRIVATE | VMA_FILE_SHARED | VMA_AREA_MEMFD) != 0 {
        let file = u32::try_from(v.shmid).ok().and_then(|id| files.get(&id));
        return Some(match file {
            Some(f) => match (&f.reg, &f.memfd) {
                (Some(r), _) => r.name.clone(),
                (None, Some(m)) => format!("memfd:(inode {})", m.inode_id),
                (None, None) => format!("(file {})", v.shmid),
            },
            None => format!("(file {} missing from files.img)", v.shmid),
        });
    }
    let named = [
        (VMA_AREA_STACK, "[stack]"),
        (VMA_AREA_HEAP, "[heap]"),
        (VMA_AREA_VDSO, "[vdso]"),
        (VMA_AREA_VVAR, "[vvar]"),
        (VMA_AREA_VSYSCALL, "[vsyscall]"),
        (VMA_AREA_AIORING, "[aio]"),
    ];
    if let Some((_, n)) = named.iter().find(|(bit, _)| s & bit != 0) {
        return Some((*n).to_string());
    }
    // CRIU marks the main stack by its grows-down flag rather than a status bit.
    if v.flags & MAP_GROWSDOWN != 0 {
        return Some("[stack]".into());
    }
    if s & VMA_AREA_SYSVIPC != 0 {
        return Some(format!("[sysvipc shm {}]", v.shmid));
    }
    if s & VMA_AREA_SOCKET != 0 {
        return Some("[packet ring]".into());
    }
    if s & VMA_ANON_SHARED != 0 {
        return Some(format!("[shmem {}]", v.shmid));
    }
    None
}
