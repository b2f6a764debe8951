//! Human renderings: aligned tables (upper-case headers over a dashed rule, columns three
//! spaces apart, like checkpointctl's tables) and a process tree drawn with box characters.

use std::fmt::{self, Write as _};
use std::time::Duration;

use super::{
    Inspection, MemoryView, Mount, ProcessFiles, ProcessMemory, ProcessSockets, PsNode,
    SearchResult, Statistics,
};
use crate::report::{human_bytes, ms};

/// A table of text cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I, S>(headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            headers: headers
                .into_iter()
                .map(|h| h.into().to_uppercase())
                .collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut r: Vec<String> = cells.into_iter().map(Into::into).collect();
        r.resize(self.headers.len(), String::new());
        self.rows.push(r);
        self
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String]| -> fmt::Result {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == n {
                    s.push_str(c);
                } else {
                    let pad = widths[i] - c.chars().count() + 3;
                    s.push_str(c);
                    s.extend(std::iter::repeat_n(' ', pad));
                }
            }
            writeln!(f, "{}", s.trim_end())
        };
        line(f, &self.headers)?;
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        line(f, &rule)?;
        for r in &self.rows {
            line(f, r)?;
        }
        Ok(())
    }
}

/// `0x` and 12 hex digits: user-space addresses on x86-64 fit in 48 bits.
fn addr(v: u64) -> String {
    format!("{v:#014x}")
}

impl fmt::Display for PsNode {
    /// The tree, one process per line: `pid comm: cmdline`, environment and notes below it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn node(
            f: &mut fmt::Formatter<'_>,
            n: &PsNode,
            prefix: &str,
            last: bool,
            root: bool,
        ) -> fmt::Result {
            let (branch, cont) = match (root, last) {
                (true, _) => ("", ""),
                (false, true) => ("└── ", "    "),
                (false, false) => ("├── ", "│   "),
            };
            let mut line = format!("{} {}", n.pid, n.comm);
            if n.task_state != super::TaskState::Alive {
                let _ = write!(line, " ({})", n.task_state);
            }
            if let Some(c) = &n.cmdline {
                let _ = write!(line, ": {c}");
            }
            writeln!(f, "{prefix}{branch}{line}")?;
            let inner = format!("{prefix}{cont}");
            let mut details: Vec<String> = n.notes.iter().map(|s| format!("! {s}")).collect();
            if let Some(env) = &n.environment_variables {
                details.push("environment:".into());
                details.extend(env.iter().map(|(k, v)| format!("  {k}={v}")));
            }
            let bar = if n.children.is_empty() {
                "    "
            } else {
                "│   "
            };
            for d in details {
                writeln!(f, "{inner}{bar}{d}")?;
            }
            for (i, c) in n.children.iter().enumerate() {
                node(f, c, &inner, i + 1 == n.children.len(), false)?;
            }
            Ok(())
        }
        node(f, self, "", true, true)
    }
}

/// Open files, one row per descriptor.
pub fn files_table(procs: &[ProcessFiles]) -> Table {
    let mut t = Table::new(["pid", "fd", "type", "path", "flags", "pos", "shared with"]);
    for p in procs {
        for o in &p.open_files {
            t.row([
                p.pid.to_string(),
                o.fd.clone(),
                o.kind.clone(),
                o.path.clone(),
                o.flags.clone().unwrap_or_default(),
                o.pos.map(|v| v.to_string()).unwrap_or_default(),
                o.shared_with
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]);
        }
    }
    t
}

/// Sockets, one row per descriptor.
pub fn sockets_table(procs: &[ProcessSockets]) -> Table {
    let mut t = Table::new([
        "pid", "fd", "protocol", "type", "state", "local", "remote", "send buf", "recv buf",
    ]);
    for p in procs {
        for s in &p.open_sockets {
            let d = &s.data;
            let local = match (&d.src_addr, d.src_port) {
                (Some(a), Some(port)) => super::sockets::endpoint(a, port),
                _ => d.address.clone().unwrap_or_default(),
            };
            let remote = match (&d.dst_addr, d.dst_port, d.peer) {
                (Some(a), Some(port), _) => super::sockets::endpoint(a, port),
                (_, _, Some(peer)) => format!("peer {peer}"),
                _ => String::new(),
            };
            t.row([
                p.pid.to_string(),
                s.fd.to_string(),
                s.protocol.clone(),
                d.sock_type.clone(),
                d.state.clone().unwrap_or_default(),
                local,
                remote,
                human_bytes(d.send_buf.into()),
                human_bytes(d.recv_buf.into()),
            ]);
        }
    }
    t
}

/// Mounts in spec order.
pub fn mounts_table(mounts: &[Mount]) -> Table {
    let mut t = Table::new(["destination", "type", "source", "options"]);
    for m in mounts {
        t.row([
            m.destination.clone(),
            m.fs_type.clone(),
            m.source.clone(),
            m.options.join(","),
        ]);
    }
    t
}

/// checkpointctl memparse's summary: one row per process.
pub fn memory_summary_table(view: &MemoryView) -> Table {
    let mut t = Table::new([
        "pid",
        "process name",
        "memory size",
        "shared memory size",
        "dumped size",
        "mappings",
    ]);
    for p in &view.processes {
        t.row([
            p.pid.to_string(),
            p.process_name.clone(),
            human_bytes(p.memory_size),
            human_bytes(p.shared_memory_size),
            human_bytes(p.dumped_size),
            p.vmas.len().to_string(),
        ]);
    }
    t
}

/// The mappings of one process with their page counts.
pub fn vma_table(p: &ProcessMemory) -> Table {
    let mut t = Table::new([
        "start", "end", "size", "prot", "sharing", "present", "lazy", "parent", "mapping",
    ]);
    for v in &p.vmas {
        t.row([
            addr(v.start),
            addr(v.end),
            human_bytes(v.size),
            v.prot.clone(),
            format!("{}{}", v.sharing, if v.anonymous { " anon" } else { "" }),
            v.pages.present.to_string(),
            v.pages.lazy.to_string(),
            v.pages.parent.to_string(),
            v.mapping.clone().unwrap_or_default(),
        ]);
    }
    t
}

impl fmt::Display for MemoryView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", memory_summary_table(self))?;
        writeln!(
            f,
            "total: {} in pagemaps, {} dumped ({} pages present, {} lazy, {} in parent)",
            human_bytes(self.total_memory_size),
            human_bytes(self.total_dumped_size),
            self.total_pages.present,
            self.total_pages.lazy,
            self.total_pages.parent
        )?;
        for p in &self.processes {
            writeln!(f, "\nmappings of pid {} ({})", p.pid, p.process_name)?;
            write!(f, "{}", vma_table(p))?;
        }
        Ok(())
    }
}

impl fmt::Display for SearchResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hits.is_empty() {
            writeln!(
                f,
                "no matches for {:?} in the memory of {} processes ({} scanned)",
                self.pattern,
                self.processes_searched,
                human_bytes(self.bytes_scanned)
            )?;
        } else {
            let mut t = Table::new(["pid", "process name", "address", "context"]);
            for h in &self.hits {
                t.row([
                    h.pid.to_string(),
                    h.process_name.clone(),
                    addr(h.vaddr),
                    h.context.clone(),
                ]);
            }
            write!(f, "{t}")?;
            writeln!(
                f,
                "{} matches for {:?} ({} scanned)",
                self.hits.len(),
                self.pattern,
                human_bytes(self.bytes_scanned)
            )?;
        }
        if self.truncated {
            writeln!(f, "search stopped early: limit reached")?;
        }
        Ok(())
    }
}

impl fmt::Display for Statistics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = |v: u32| ms(Duration::from_micros(v.into()));
        let rows = [
            ("freezing time", us(self.freezing_time)),
            ("frozen time", us(self.frozen_time)),
            ("memdump time", us(self.memdump_time)),
            ("memwrite time", us(self.memwrite_time)),
            ("pages scanned", self.pages_scanned.to_string()),
            (
                "pages skipped (parent)",
                self.pages_skipped_parent.to_string(),
            ),
            ("pages written", self.pages_written.to_string()),
            ("pages lazy", self.pages_lazy.to_string()),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            writeln!(f, "{k:<w$}   {v}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut section = |f: &mut fmt::Formatter<'_>, title: &str| -> fmt::Result {
            if !first {
                writeln!(f)?;
            }
            first = false;
            writeln!(f, "{title}")?;
            writeln!(f, "{}", "=".repeat(title.chars().count()))
        };
        if let Some(s) = &self.statistics {
            section(f, "CRIU dump statistics")?;
            write!(f, "{s}")?;
        }
        if let Some(t) = &self.process_tree {
            section(f, "Process tree")?;
            write!(f, "{t}")?;
        }
        if let Some(fds) = &self.file_descriptors {
            section(f, "Open files")?;
            write!(f, "{}", files_table(fds))?;
        }
        if let Some(s) = &self.sockets {
            section(f, "Sockets")?;
            if s.is_empty() {
                writeln!(f, "no sockets")?;
            } else {
                write!(f, "{}", sockets_table(s))?;
            }
        }
        if let Some(m) = &self.mounts {
            section(f, "Mounts")?;
            write!(f, "{}", mounts_table(m))?;
        }
        if let Some(m) = &self.memory {
            section(f, "Memory")?;
            write!(f, "{m}")?;
        }
        if let Some(s) = &self.search {
            section(f, &format!("Search for {:?}", s.pattern))?;
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let mut t = Table::new(["pid", "name"]);
        t.row(["1", "init"]).row(["12345", "x"]);
        let s = t.to_string();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "PID     NAME");
        assert_eq!(lines[1], "-----   ----");
        assert_eq!(lines[2], "1       init");
        assert_eq!(lines[3], "12345   x");
    }

    #[test]
    fn tree_draws_branches() {
        let leaf = |pid: u32| PsNode {
            pid,
            ppid: 1,
            pgid: 1,
            sid: 1,
            comm: format!("c{pid}"),
            task_state: super::super::TaskState::Alive,
            threads: vec![pid],
            uid: None,
            gid: None,
            cmdline: None,
            argv: None,
            environment_variables: None,
            notes: Vec::new(),
            children: Vec::new(),
        };
        let mut root = leaf(1);
        root.cmdline = Some("init --x".into());
        let mut mid = leaf(2);
        mid.children.push(leaf(4));
        root.children = vec![mid, leaf(3)];
        assert_eq!(
            root.to_string(),
            "1 c1: init --x\n├── 2 c2\n│   └── 4 c4\n└── 3 c3\n"
        );
    }
}
