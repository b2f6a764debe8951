//! Open files per process: each descriptor of `fdinfo-<files_id>.img` resolved through
//! `files.img`, plus the cwd and root from `fs-<pid>.img` and the executable from the mm image.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use criu_proto::image::magic;
use criu_proto::images::{FdTypes, FdinfoEntry, FileEntry, FsEntry, TtyInfoEntry, TtyType};
use serde::Serialize;

use super::sockets::describe_socket;
use super::{ImageSet, Result, read};

/// One open file of a process.
#[derive(Debug, Clone, Serialize)]
pub struct OpenFile {
    /// The descriptor number, or `cwd`, `root`, `exe`.
    pub fd: String,
    /// CRIU's kind of file: `REG`, `PIPE`, `UNIXSK`, `INETSK`, `EVENTFD`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The path, or what the file is (`pipe:[<inode>]`, a socket's addresses, an anonymous
    /// inode's kind).
    pub path: String,
    /// Id of the open file description in `files.img`; equal ids are one shared description.
    pub id: u32,
    /// open(2) status flags as names (`O_RDWR|O_APPEND`), when the image has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// Close-on-exec descriptor flag.
    pub cloexec: bool,
    /// File offset at dump time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos: Option<u64>,
    /// File size at dump time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Other processes holding the same open file description (same `id`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_with: Vec<u32>,
}

/// The open files of one process (checkpointctl's `file_descriptors` element).
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFiles {
    pub pid: u32,
    pub command: String,
    /// The fd table's id; processes with equal ids share one table (CLONE_FILES).
    pub files_id: u32,
    pub open_files: Vec<OpenFile>,
}

impl ImageSet {
    /// Open files of every live process, in pstree order; within a process the descriptors
    /// ascending, then `cwd`, `root` and `exe`.
    pub fn file_descriptors(&self) -> Result<Vec<ProcessFiles>> {
        let files = self.files()?;
        let ttys = self.tty_infos()?;
        let mut tables: HashMap<u32, Vec<FdinfoEntry>> = HashMap::new();
        let mut out = Vec::new();
        for task in self.tasks() {
            if !task.state().has_memory() {
                continue;
            }
            let pid = task.pid();
            let ids = self.ids(pid)?;
            let table = match tables.entry(ids.files_id) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => e.insert(self.fd_table(ids.files_id)?),
            };
            let mut open_files: Vec<OpenFile> = table
                .iter()
                .map(|fd| {
                    let mut f = describe(files, &ttys, fd.id, fd.r#type);
                    f.fd = fd.fd.to_string();
                    f.cloexec = fd.flags & 1 != 0;
                    f
                })
                .collect();
            let fs_path = self.dir().join(format!("fs-{pid}.img"));
            if fs_path.exists() {
                let fs: FsEntry = read::one(&fs_path, magic::FS, self.limits())?;
                for (name, id) in [("cwd", fs.cwd_id), ("root", fs.root_id)] {
                    let mut f = describe(files, &ttys, id, FdTypes::Reg as i32);
                    f.fd = name.into();
                    f.flags = None;
                    f.pos = None;
                    open_files.push(f);
                }
            }
            if let Some(mm) = self.mm(pid)? {
                let mut f = describe(files, &ttys, mm.exe_file_id, FdTypes::Reg as i32);
                f.fd = "exe".into();
                f.flags = None;
                f.pos = None;
                open_files.push(f);
            }
            out.push(ProcessFiles {
                pid,
                command: task.comm().to_string(),
                files_id: ids.files_id,
                open_files,
            });
        }
        mark_shared(&mut out);
        Ok(out)
    }

    /// The descriptors of fd table `files_id`, ascending.
    pub(crate) fn fd_table(&self, files_id: u32) -> Result<Vec<FdinfoEntry>> {
        let path = self.dir().join(format!("fdinfo-{files_id}.img"));
        let mut fds: Vec<FdinfoEntry> = read::all(
            &path,
            magic::FDINFO,
            self.limits(),
            self.limits().max_fds,
            "fds",
        )?;
        fds.sort_by_key(|f| f.fd);
        Ok(fds)
    }

    /// `tty-info.img` by id (empty if the image set has no terminals).
    fn tty_infos(&self) -> Result<HashMap<u32, TtyInfoEntry>> {
        let path = self.dir().join("tty-info.img");
        if !path.exists() {
            return Ok(HashMap::new());
        }
        let infos: Vec<TtyInfoEntry> = read::all(
            &path,
            magic::TTY_INFO,
            self.limits(),
            self.limits().max_files,
            "terminals",
        )?;
        Ok(infos.into_iter().map(|t| (t.id, t)).collect())
    }
}

/// Fills `shared_with` for descriptors (not cwd/root/exe) whose description another process
/// also holds. Processes sharing a whole fd table share every description; that is reported
/// too, since the kernel object is the same.
fn mark_shared(procs: &mut [ProcessFiles]) {
    let mut holders: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for p in procs.iter() {
        for f in p.open_files.iter().filter(|f| is_fd(&f.fd)) {
            let h = holders.entry(f.id).or_default();
            if !h.contains(&p.pid) {
                h.push(p.pid);
            }
        }
    }
    for p in procs.iter_mut() {
        let pid = p.pid;
        for f in p.open_files.iter_mut().filter(|f| is_fd(&f.fd)) {
            f.shared_with = holders[&f.id]
                .iter()
                .copied()
                .filter(|&o| o != pid)
                .collect();
        }
    }
}

fn is_fd(fd: &str) -> bool {
    fd.bytes().all(|b| b.is_ascii_digit())
}

/// The name of an `fd_types` value as CRIU spells it.
pub(crate) fn type_name(t: i32) -> String {
    match FdTypes::try_from(t) {
        Ok(t) => t.as_str_name().to_string(),
        Err(_) => format!("UNKNOWN({t})"),
    }
}

fn describe(
    files: &HashMap<u32, FileEntry>,
    ttys: &HashMap<u32, TtyInfoEntry>,
    id: u32,
    fd_type: i32,
) -> OpenFile {
    let mut f = OpenFile {
        fd: String::new(),
        kind: type_name(fd_type),
        path: String::new(),
        id,
        flags: None,
        cloexec: false,
        pos: None,
        size: None,
        shared_with: Vec::new(),
    };
    let Some(e) = files.get(&id) else {
        f.path = format!("(file {id} missing from files.img)");
        return f;
    };
    f.kind = type_name(e.r#type);
    let reg_path = |regf: Option<u32>| {
        regf.and_then(|r| files.get(&r))
            .and_then(|r| r.reg.as_ref())
            .map(|r| r.name.clone())
    };
    if let Some(r) = &e.reg {
        f.path = r.name.clone();
        f.flags = Some(open_flags(r.flags));
        f.pos = Some(r.pos);
        f.size = r.size;
    } else if let Some(p) = &e.pipe {
        f.path = format!("pipe:[{}]", p.pipe_id);
        f.flags = Some(open_flags(p.flags));
    } else if let Some(p) = &e.fifo {
        f.path = reg_path(p.regf_id).unwrap_or_else(|| format!("fifo:[{}]", p.pipe_id));
    } else if let Some(t) = &e.tty {
        f.flags = Some(open_flags(t.flags));
        f.path = reg_path(t.regf_id).unwrap_or_else(|| match ttys.get(&t.tty_info_id) {
            Some(info) => match (TtyType::try_from(info.r#type), &info.pty) {
                (Ok(TtyType::Pty), Some(pty)) => format!("pty {}", pty.index),
                (Ok(ty), _) => format!("tty ({})", ty.as_str_name().to_lowercase()),
                (Err(_), _) => "tty".into(),
            },
            None => "tty".into(),
        });
    } else if let Some(desc) = describe_socket(e) {
        f.path = desc.summary();
    } else if let Some(m) = &e.memfd {
        f.path = format!("memfd:(inode {})", m.inode_id);
        f.flags = Some(open_flags(m.flags));
        f.pos = Some(m.pos);
    } else if let Some(x) = &e.efd {
        f.path = "anon_inode:[eventfd]".into();
        f.flags = Some(open_flags(x.flags));
    } else if let Some(x) = &e.epfd {
        f.path = "anon_inode:[eventpoll]".into();
        f.flags = Some(open_flags(x.flags));
    } else if let Some(x) = &e.sgfd {
        f.path = "anon_inode:[signalfd]".into();
        f.flags = Some(open_flags(x.flags));
    } else if let Some(x) = &e.ify {
        f.path = "anon_inode:inotify".into();
        f.flags = Some(open_flags(x.flags));
    } else if let Some(x) = &e.tfd {
        f.path = "anon_inode:[timerfd]".into();
        f.flags = Some(open_flags(x.flags));
    } else if let Some(x) = &e.pidfd {
        f.path = format!("anon_inode:[pidfd] (pid {})", x.nspid);
        f.flags = Some(open_flags(x.flags));
    } else if let Some(x) = &e.nsf {
        f.path = format!("ns:[{}]", x.ns_id);
    } else if e.ext.is_some() {
        f.path = "(external, handled by a plugin)".into();
    } else {
        f.path = format!("({})", f.kind.to_lowercase());
    }
    f
}

/// open(2) status flags as `O_*` names (x86-64 / generic Linux values).
pub(crate) fn open_flags(flags: u32) -> String {
    // Multi-bit flags first: O_SYNC contains O_DSYNC's bit, O_TMPFILE contains O_DIRECTORY's.
    const NAMES: &[(u32, &str)] = &[
        (0o4010000, "O_SYNC"),
        (0o20200000, "O_TMPFILE"),
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o400, "O_NOCTTY"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o10000, "O_DSYNC"),
        (0o20000, "O_ASYNC"),
        (0o40000, "O_DIRECT"),
        (0o100000, "O_LARGEFILE"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o1000000, "O_NOATIME"),
        (0o2000000, "O_CLOEXEC"),
        (0o10000000, "O_PATH"),
    ];
    let mut parts = vec![match flags & 0o3 {
        0 => "O_RDONLY".to_string(),
        1 => "O_WRONLY".to_string(),
        2 => "O_RDWR".to_string(),
        _ => "O_ACCMODE".to_string(),
    }];
    let mut rest = flags & !0o3;
    for &(bits, name) in NAMES {
        if rest & bits == bits {
            parts.push(name.to_string());
            rest &= !bits;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#o}"));
    }
    parts.join("|")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_by_name() {
        assert_eq!(open_flags(0), "O_RDONLY");
        assert_eq!(open_flags(0o2 | 0o100000), "O_RDWR|O_LARGEFILE");
        assert_eq!(
            open_flags(0o1 | 0o2000 | 0o4000),
            "O_WRONLY|O_APPEND|O_NONBLOCK"
        );
        assert_eq!(open_flags(0o4010000), "O_RDONLY|O_SYNC");
        assert_eq!(open_flags(0o20200002), "O_RDWR|O_TMPFILE");
        assert_eq!(open_flags(0o1 | 0o1000000000), "O_WRONLY|0o1000000000");
    }

    #[test]
    fn unknown_fd_type_is_named_by_number() {
        assert_eq!(type_name(FdTypes::Unixsk as i32), "UNIXSK");
        assert_eq!(type_name(4242), "UNKNOWN(4242)");
    }
}
