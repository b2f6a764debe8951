//! The process tree: who was running, under whom, as what, with which command line and
//! environment (read back from the dumped memory between `mm_arg_start..mm_arg_end` and
//! `mm_env_start..mm_env_end`).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{ImageSet, InspectError, Result};

/// CRIU's state of a task at dump time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Alive,
    Dead,
    Stopped,
    Zombie,
    Unknown(u32),
}

impl TaskState {
    /// From `task_core_entry.task_state` (CRIU's TASK_* numbers).
    pub fn from_raw(v: u32) -> Self {
        match v {
            1 => Self::Alive,
            2 => Self::Dead,
            3 => Self::Stopped,
            6 => Self::Zombie,
            n => Self::Unknown(n),
        }
    }

    /// Whether the task had an address space and files that CRIU dumped.
    pub fn has_memory(self) -> bool {
        matches!(self, Self::Alive | Self::Stopped)
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Alive => f.write_str("alive"),
            Self::Dead => f.write_str("dead"),
            Self::Stopped => f.write_str("stopped"),
            Self::Zombie => f.write_str("zombie"),
            Self::Unknown(n) => write!(f, "unknown ({n})"),
        }
    }
}

impl Serialize for TaskState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What to read from memory for each process of the tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct PsOptions {
    pub cmdline: bool,
    pub env: bool,
}

/// One process and its children.
#[derive(Debug, Clone, Serialize)]
pub struct PsNode {
    pub pid: u32,
    pub ppid: u32,
    pub pgid: u32,
    pub sid: u32,
    /// The kernel's name of the process (`comm`), as checkpointctl's `command`.
    #[serde(rename = "command")]
    pub comm: String,
    pub task_state: TaskState,
    /// Thread ids, the main thread first.
    pub threads: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// argv joined with spaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment_variables: Option<BTreeMap<String, String>>,
    /// Why the command line or environment could not be read, if so.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<PsNode>,
}

impl PsNode {
    /// This node and its descendants, depth first.
    pub fn iter(&self) -> impl Iterator<Item = &PsNode> {
        let mut stack = vec![self];
        std::iter::from_fn(move || {
            let n = stack.pop()?;
            stack.extend(n.children.iter().rev());
            Some(n)
        })
    }

    /// The node of `pid` in this subtree.
    pub fn find(&self, pid: u32) -> Option<&PsNode> {
        self.iter().find(|n| n.pid == pid)
    }
}

impl ImageSet {
    /// The process tree rooted at the first process of `pstree.img`. Processes whose parent is
    /// not in the images (never the case in CRIU's own images) hang under the root.
    pub fn process_tree(&self, opts: &PsOptions) -> Result<PsNode> {
        let Some(root) = self.tasks().first() else {
            return Err(InspectError::Inconsistent {
                path: self.dir().join("pstree.img"),
                reason: "no processes".into(),
            });
        };
        let root_pid = root.pid();
        let mut nodes: HashMap<u32, PsNode> = HashMap::new();
        let mut order = Vec::new();
        for task in self.tasks() {
            let pid = task.pid();
            if nodes.contains_key(&pid) {
                return Err(InspectError::Inconsistent {
                    path: self.dir().join("pstree.img"),
                    reason: format!("pid {pid} listed twice"),
                });
            }
            let creds = task
                .core
                .thread_core
                .as_ref()
                .and_then(|t| t.creds.as_ref());
            let mut node = PsNode {
                pid,
                ppid: task.entry.ppid,
                pgid: task.entry.pgid,
                sid: task.entry.sid,
                comm: task.comm().to_string(),
                task_state: task.state(),
                threads: task.entry.threads.clone(),
                uid: creds.map(|c| c.uid),
                gid: creds.map(|c| c.gid),
                cmdline: None,
                argv: None,
                environment_variables: None,
                notes: Vec::new(),
                children: Vec::new(),
            };
            if (opts.cmdline || opts.env) && task.state().has_memory() {
                self.fill_from_memory(&mut node, opts)?;
            }
            order.push(pid);
            nodes.insert(pid, node);
        }
        // Attach children to parents, deepest first, so each node is complete when moved.
        // A process whose parent chain does not reach the root (a loop or a missing parent:
        // corrupt images) hangs under the root.
        let mut depth: HashMap<u32, Option<usize>> = HashMap::new();
        for &pid in &order {
            let mut path = Vec::new();
            let mut on_path = HashSet::new();
            let mut cur = pid;
            let mut base = loop {
                if cur == root_pid {
                    break Some(0);
                }
                if let Some(d) = depth.get(&cur) {
                    break *d;
                }
                if !on_path.insert(cur) {
                    break None;
                }
                path.push(cur);
                match nodes.get(&cur) {
                    Some(n) if nodes.contains_key(&n.ppid) => cur = n.ppid,
                    _ => break None,
                }
            };
            for &p in path.iter().rev() {
                base = base.map(|b| b + 1);
                depth.insert(p, base);
            }
        }
        let mut rest: Vec<(usize, u32, u32)> = order
            .iter()
            .filter(|&&p| p != root_pid)
            .map(|&p| match depth[&p] {
                Some(d) => (d, p, nodes[&p].ppid),
                None => (1, p, root_pid),
            })
            .collect();
        rest.sort_by_key(|&(d, ..)| std::cmp::Reverse(d));
        for (_, pid, parent) in rest {
            let node = nodes.remove(&pid).expect("each pid is moved once");
            nodes
                .get_mut(&parent)
                .expect("parents are shallower, so still present")
                .children
                .push(node);
        }
        let mut root = nodes.remove(&root_pid).expect("root present");
        sort_children(&mut root);
        Ok(root)
    }

    fn fill_from_memory(&self, node: &mut PsNode, opts: &PsOptions) -> Result<()> {
        let Some(mm) = self.mm(node.pid)? else {
            return Ok(());
        };
        let pages = self.process_pages(node.pid)?;
        if opts.cmdline {
            match pages.read_strings(mm.mm_arg_start, mm.mm_arg_end) {
                Ok(argv) => {
                    node.cmdline = Some(argv.join(" "));
                    node.argv = Some(argv);
                }
                Err(
                    e @ (InspectError::PageNotDumped { .. } | InspectError::RangeTooLarge { .. }),
                ) => {
                    node.notes.push(format!("command line: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        if opts.env {
            match pages.read_strings(mm.mm_env_start, mm.mm_env_end) {
                Ok(vars) => {
                    node.environment_variables = Some(
                        vars.into_iter()
                            .filter(|v| !v.is_empty())
                            .map(|v| match v.split_once('=') {
                                Some((k, val)) => (k.to_string(), val.to_string()),
                                None => (v, String::new()),
                            })
                            .collect(),
                    );
                }
                Err(
                    e @ (InspectError::PageNotDumped { .. } | InspectError::RangeTooLarge { .. }),
                ) => {
                    node.notes.push(format!("environment: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn sort_children(node: &mut PsNode) {
    let mut stack = vec![node];
    while let Some(n) = stack.pop() {
        n.children.sort_by_key(|c| c.pid);
        stack.extend(n.children.iter_mut());
    }
}
