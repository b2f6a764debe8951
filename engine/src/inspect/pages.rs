//! A process's dumped memory: `pagemap-<pid>.img` says which page runs were dumped and how,
//! `pages-<pages_id>.img` holds the contents of the runs flagged present, concatenated in
//! pagemap order with no index of its own. So the byte offset of a present run in the pages
//! file is the sum of the sizes of the present runs before it, and everything else (reads of
//! argv/environment, searches) is arithmetic over the sorted run list plus `pread`.
//!
//! Runs flagged "in parent" live in the image set the `parent` link points at (a pre-dump
//! chain); reads follow that link, a bounded number of times. Runs flagged lazy without
//! "present" were left for lazy restore and are not in any file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use criu_proto::image::magic;
use criu_proto::images::{PagemapEntry, PagemapHead};
use memchr::memmem;
use serde::{Serialize, Serializer};

use super::{ImageSet, InspectError, Limits, PageAbsence, Result, read};

/// The run's pages are in the parent image set.
pub const PE_PARENT: u32 = 1;
/// The run's pages may be restored lazily.
pub const PE_LAZY: u32 = 2;
/// The run's pages are in this image set's pages file.
pub const PE_PRESENT: u32 = 4;

/// How much of a pages file one search read covers.
const SCAN_CHUNK: usize = 1 << 20;

/// Serializes an address as `0x` and 16 hex digits (JSON numbers lose precision above 2^53).
pub(crate) fn ser_addr<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:#018x}"))
}

/// A run of consecutive pages from a pagemap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRun {
    /// First address (page aligned).
    pub vaddr: u64,
    /// Number of pages.
    pub pages: u64,
    /// `PE_*` flags.
    pub flags: u32,
    /// Byte offset of the run's contents in the pages file (present runs only).
    pub offset: Option<u64>,
}

impl PageRun {
    pub fn is_present(&self) -> bool {
        self.flags & PE_PRESENT != 0
    }
    pub fn is_lazy(&self) -> bool {
        self.flags & PE_LAZY != 0
    }
    pub fn is_parent(&self) -> bool {
        self.flags & PE_PARENT != 0
    }
}

/// A contiguous stretch of present memory: consecutive addresses stored consecutively.
#[derive(Debug, Clone, Copy)]
struct PresentRange {
    vaddr: u64,
    len: u64,
    offset: u64,
}

/// The dumped memory of one process.
#[derive(Debug)]
pub struct ProcessPages {
    pid: u32,
    dir: PathBuf,
    page_size: u64,
    limits: Limits,
    depth: usize,
    pages_id: u32,
    pages_path: PathBuf,
    runs: Vec<PageRun>,
    /// Run end addresses, for binary search (`runs[i].vaddr + pages * page_size`).
    ends: Vec<u64>,
    file: OnceLock<(File, u64)>,
    parent: OnceLock<Option<Box<ProcessPages>>>,
}

impl ProcessPages {
    /// Reads `pagemap-<pid>.img` of `dir`; the pages file is opened on the first read.
    pub fn open(dir: &Path, pid: u32, page_size: u64, limits: &Limits) -> Result<Self> {
        Self::open_at_depth(dir, pid, page_size, limits, 0)
    }

    fn open_at_depth(
        dir: &Path,
        pid: u32,
        page_size: u64,
        limits: &Limits,
        depth: usize,
    ) -> Result<Self> {
        let path = dir.join(format!("pagemap-{pid}.img"));
        let inconsistent = |reason: String| InspectError::Inconsistent {
            path: path.clone(),
            reason,
        };
        if !page_size.is_power_of_two() {
            return Err(inconsistent(format!(
                "page size {page_size} is not a power of two"
            )));
        }
        let mut r = read::open(&path, magic::PAGEMAP, limits)?;
        let image_err = |source| InspectError::Image {
            path: path.clone(),
            source,
        };
        let head: PagemapHead = r.one().map_err(image_err)?;
        let mut runs = Vec::new();
        let mut ends = Vec::new();
        let mut prev_end = 0u64;
        let mut file_offset = 0u64;
        while let Some(e) = r.next_entry::<PagemapEntry>().map_err(image_err)? {
            if runs.len() == limits.max_page_runs {
                return Err(InspectError::TooMany {
                    path,
                    what: "page runs",
                    limit: limits.max_page_runs,
                });
            }
            let pages = match e.nr_pages {
                Some(n) if n > 0 => n,
                _ => u64::from(e.compat_nr_pages),
            };
            // Images older than the flags field say "in parent" or nothing (present).
            let flags = e.flags.unwrap_or(if e.in_parent == Some(true) {
                PE_PARENT
            } else {
                PE_PRESENT
            });
            if e.vaddr % page_size != 0 {
                return Err(inconsistent(format!(
                    "page run at {:#x} is not page aligned",
                    e.vaddr
                )));
            }
            let end = pages
                .checked_mul(page_size)
                .and_then(|len| e.vaddr.checked_add(len))
                .ok_or_else(|| {
                    inconsistent(format!(
                        "page run at {:#x} of {pages} pages overflows",
                        e.vaddr
                    ))
                })?;
            if e.vaddr < prev_end {
                return Err(inconsistent(format!(
                    "page run at {:#x} overlaps or precedes the run ending at {prev_end:#x}",
                    e.vaddr
                )));
            }
            if pages == 0 {
                continue;
            }
            prev_end = end;
            let offset = if flags & PE_PRESENT != 0 {
                let at = file_offset;
                file_offset = file_offset
                    .checked_add(end - e.vaddr)
                    .ok_or_else(|| inconsistent("pages file offsets overflow".into()))?;
                Some(at)
            } else {
                None
            };
            runs.push(PageRun {
                vaddr: e.vaddr,
                pages,
                flags,
                offset,
            });
            ends.push(end);
        }
        Ok(Self {
            pid,
            dir: dir.to_path_buf(),
            page_size,
            limits: limits.clone(),
            depth,
            pages_id: head.pages_id,
            pages_path: dir.join(format!("pages-{}.img", head.pages_id)),
            runs,
            ends,
            file: OnceLock::new(),
            parent: OnceLock::new(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Id of the pages file (`pages-<id>.img`).
    pub fn pages_id(&self) -> u32 {
        self.pages_id
    }

    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The page runs, sorted by address, none overlapping.
    pub fn runs(&self) -> &[PageRun] {
        &self.runs
    }

    /// Pages of this set's pages file that belong to the process.
    pub fn present_pages(&self) -> u64 {
        self.runs
            .iter()
            .filter(|r| r.is_present())
            .map(|r| r.pages)
            .sum()
    }

    fn pages_file(&self) -> Result<&(File, u64)> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        let open_err = |source| InspectError::Open {
            path: self.pages_path.clone(),
            source,
        };
        let f = File::open(&self.pages_path).map_err(open_err)?;
        let len = f.metadata().map_err(open_err)?.len();
        Ok(self.file.get_or_init(|| (f, len)))
    }

    /// Reads `buf.len()` bytes at `offset` of the pages file.
    fn read_file_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let (f, len) = self.pages_file()?;
        let needed = buf.len() as u64;
        let truncated = || InspectError::PagesTruncated {
            path: self.pages_path.clone(),
            offset,
            needed,
            len: *len,
        };
        if offset.checked_add(needed).is_none_or(|end| end > *len) {
            return Err(truncated());
        }
        f.read_exact_at(buf, offset).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                truncated()
            } else {
                InspectError::ReadPages {
                    path: self.pages_path.clone(),
                    source: e,
                }
            }
        })
    }

    /// The pages of the same process in the parent image set, if there is one.
    fn parent(&self) -> Result<Option<&ProcessPages>> {
        if let Some(p) = self.parent.get() {
            return Ok(p.as_deref());
        }
        let dir = self.dir.join("parent");
        let parent = if self.depth < self.limits.max_parent_depth && dir.is_dir() {
            Some(Box::new(Self::open_at_depth(
                &dir,
                self.pid,
                self.page_size,
                &self.limits,
                self.depth + 1,
            )?))
        } else {
            None
        };
        Ok(self.parent.get_or_init(|| parent).as_deref())
    }

    /// The index of the run holding `vaddr`, if any.
    fn run_at(&self, vaddr: u64) -> Option<usize> {
        let i = self.ends.partition_point(|&end| end <= vaddr);
        (i < self.runs.len() && self.runs[i].vaddr <= vaddr).then_some(i)
    }

    /// Reads `len` bytes of the process's memory at `vaddr`, across page runs and into the
    /// parent images where needed. Every byte must have been dumped.
    pub fn read(&self, vaddr: u64, len: u64) -> Result<Vec<u8>> {
        let end = vaddr.checked_add(len).ok_or(InspectError::RangeTooLarge {
            pid: self.pid,
            start: vaddr,
            end: u64::MAX,
            limit: self.limits.max_read,
        })?;
        if len > self.limits.max_read {
            return Err(InspectError::RangeTooLarge {
                pid: self.pid,
                start: vaddr,
                end,
                limit: self.limits.max_read,
            });
        }
        let mut out = vec![0u8; len as usize];
        self.read_into(vaddr, &mut out)?;
        Ok(out)
    }

    fn read_into(&self, vaddr: u64, out: &mut [u8]) -> Result<()> {
        let mut done = 0usize;
        while done < out.len() {
            let at = vaddr + done as u64;
            let missing = |reason| InspectError::PageNotDumped {
                pid: self.pid,
                vaddr: at,
                reason,
            };
            let i = self.run_at(at).ok_or(missing(PageAbsence::NotDumped))?;
            let run = self.runs[i];
            let take = ((self.ends[i] - at) as usize).min(out.len() - done);
            let dst = &mut out[done..done + take];
            if let Some(offset) = run.offset {
                self.read_file_at(offset + (at - run.vaddr), dst)?;
            } else if run.is_parent() {
                match self.parent()? {
                    Some(parent) => parent.read_into(at, dst)?,
                    None => return Err(missing(PageAbsence::InParent)),
                }
            } else if run.is_lazy() {
                return Err(missing(PageAbsence::Lazy));
            } else {
                return Err(missing(PageAbsence::NotDumped));
            }
            done += take;
        }
        Ok(())
    }

    /// Reads the NUL-terminated strings in `[start, end)` (argv or the environment block).
    pub fn read_strings(&self, start: u64, end: u64) -> Result<Vec<String>> {
        if end <= start {
            return Ok(Vec::new());
        }
        let bytes = self.read(start, end - start)?;
        Ok(split_nul(&bytes))
    }

    /// Runs of present memory merged where both addresses and file offsets continue.
    fn present_ranges(&self) -> Vec<PresentRange> {
        let mut out: Vec<PresentRange> = Vec::new();
        for (run, end) in self.runs.iter().zip(&self.ends) {
            let Some(offset) = run.offset else { continue };
            let len = end - run.vaddr;
            match out.last_mut() {
                Some(last)
                    if last.vaddr + last.len == run.vaddr && last.offset + last.len == offset =>
                {
                    last.len += len;
                }
                _ => out.push(PresentRange {
                    vaddr: run.vaddr,
                    len,
                    offset,
                }),
            }
        }
        out
    }

    /// Searches the present pages for `finder`'s pattern, appending hits. Matches spanning
    /// page (and run) boundaries inside a contiguous stretch of memory are found; every
    /// occurrence is reported, overlapping ones included. Returns false when a cap stopped
    /// the search early.
    fn search_into(
        &self,
        finder: &memmem::Finder<'_>,
        opts: &SearchOptions,
        comm: &str,
        budget: &mut SearchBudget,
        hits: &mut Vec<SearchHit>,
    ) -> Result<bool> {
        let plen = finder.needle().len();
        let mut buf: Vec<u8> = Vec::with_capacity(SCAN_CHUNK + plen);
        for range in self.present_ranges() {
            buf.clear();
            let mut buf_vaddr = range.vaddr;
            let mut done = 0u64;
            while done < range.len {
                let left = budget.max_scan - budget.scanned;
                if left == 0 {
                    return Ok(false);
                }
                let n = (range.len - done).min(SCAN_CHUNK as u64).min(left) as usize;
                let old = buf.len();
                buf.resize(old + n, 0);
                self.read_file_at(range.offset + done, &mut buf[old..])?;
                done += n as u64;
                budget.scanned += n as u64;
                let mut pos = 0;
                while let Some(i) = finder.find(&buf[pos..]) {
                    let at = buf_vaddr + (pos + i) as u64;
                    hits.push(self.hit(range, at, plen, opts.context, comm)?);
                    if hits.len() >= opts.max_hits {
                        return Ok(false);
                    }
                    pos += i + 1;
                }
                // Keep the last plen-1 bytes: a match starting there ends in the next chunk.
                let keep = (plen - 1).min(buf.len());
                let drop = buf.len() - keep;
                buf.drain(..drop);
                buf_vaddr += drop as u64;
            }
        }
        Ok(true)
    }

    fn hit(
        &self,
        range: PresentRange,
        at: u64,
        plen: usize,
        context: usize,
        comm: &str,
    ) -> Result<SearchHit> {
        let start = at.saturating_sub(context as u64).max(range.vaddr);
        let end = at
            .saturating_add(plen as u64)
            .saturating_add(context as u64)
            .min(range.vaddr + range.len);
        let mut bytes = vec![0u8; (end - start) as usize];
        self.read_file_at(range.offset + (start - range.vaddr), &mut bytes)?;
        Ok(SearchHit {
            pid: self.pid,
            process_name: comm.to_string(),
            vaddr: at,
            context_vaddr: start,
            match_offset: (at - start) as usize,
            context: printable(&bytes),
        })
    }
}

/// Splits a NUL-separated block into strings (lossy UTF-8), dropping the final terminator.
pub(crate) fn split_nul(bytes: &[u8]) -> Vec<String> {
    let trimmed = bytes.strip_suffix(&[0]).unwrap_or(bytes);
    if trimmed.is_empty() {
        return Vec::new();
    }
    trimmed
        .split(|&b| b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Printable ASCII as is, every other byte as `.` (like a hexdump's text column).
pub fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}

/// What to search for in process memory.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// The bytes to find.
    pub pattern: Vec<u8>,
    /// Bytes of context shown on each side of a hit.
    pub context: usize,
    /// Stop after this many hits.
    pub max_hits: usize,
    /// Only this process.
    pub pid: Option<u32>,
}

impl SearchOptions {
    pub fn new(pattern: impl Into<Vec<u8>>) -> Self {
        Self {
            pattern: pattern.into(),
            context: 32,
            max_hits: 100,
            pid: None,
        }
    }
}

struct SearchBudget {
    scanned: u64,
    max_scan: u64,
}

/// One occurrence of the pattern.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub pid: u32,
    pub process_name: String,
    /// Address of the first byte of the match.
    #[serde(rename = "address", serialize_with = "ser_addr")]
    pub vaddr: u64,
    /// Address of the first byte of `context`.
    #[serde(rename = "context_address", serialize_with = "ser_addr")]
    pub context_vaddr: u64,
    /// Where the match starts within `context`.
    pub match_offset: usize,
    /// The match with its surroundings, non-printable bytes as `.`.
    pub context: String,
}

/// The outcome of a search of every process's dumped memory.
#[derive(Debug, Clone, Serialize)]
pub struct SearchResult {
    /// The pattern (lossy UTF-8).
    pub pattern: String,
    pub hits: Vec<SearchHit>,
    /// A cap (hits or bytes scanned) stopped the search before the end.
    pub truncated: bool,
    pub bytes_scanned: u64,
    pub processes_searched: usize,
}

impl ImageSet {
    /// Finds `opts.pattern` in the dumped pages (present in this image set) of every process,
    /// in pstree order, addresses ascending within a process.
    pub fn search(&self, opts: &SearchOptions) -> Result<SearchResult> {
        if opts.pattern.is_empty() {
            return Err(InspectError::EmptyPattern);
        }
        if opts.pattern.len() > self.limits.max_pattern {
            return Err(InspectError::PatternTooLong {
                len: opts.pattern.len(),
                limit: self.limits.max_pattern,
            });
        }
        let opts = SearchOptions {
            context: opts.context.min(self.limits.max_read as usize / 2),
            max_hits: opts.max_hits.min(self.limits.max_hits),
            ..opts.clone()
        };
        if let Some(pid) = opts.pid {
            self.task(pid)?;
        }
        let finder = memmem::Finder::new(&opts.pattern);
        let mut budget = SearchBudget {
            scanned: 0,
            max_scan: self.limits.max_scan,
        };
        let mut hits = Vec::new();
        let mut complete = opts.max_hits > 0;
        let mut searched = 0;
        for task in self.tasks() {
            if !complete {
                break;
            }
            if opts.pid.is_some_and(|p| p != task.pid()) || !task.state().has_memory() {
                continue;
            }
            let pages = self.process_pages(task.pid())?;
            searched += 1;
            complete = pages.search_into(&finder, &opts, task.comm(), &mut budget, &mut hits)?;
        }
        Ok(SearchResult {
            pattern: String::from_utf8_lossy(&opts.pattern).into_owned(),
            hits,
            truncated: !complete,
            bytes_scanned: budget.scanned,
            processes_searched: searched,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_blocks_split_into_strings() {
        assert_eq!(split_nul(b"a\0bc\0"), vec!["a", "bc"]);
        assert_eq!(split_nul(b"a\0\0b"), vec!["a", "", "b"]);
        assert!(split_nul(b"\0").is_empty());
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn printable_masks_control_and_high_bytes() {
        assert_eq!(printable(b"ab\0\x7f\xffZ "), "ab...Z ");
    }
}
