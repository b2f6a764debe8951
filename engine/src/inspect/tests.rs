//! The views over hand-built images: page walking, corrupt input, files and sockets.

use std::fs::File;
use std::path::Path;

use criu_proto::image::{Header, ImageError, ImageWriter, magic};
use criu_proto::images::*;
use criu_proto::prost::Message;

use super::pages::{PE_LAZY, PE_PARENT, PE_PRESENT};
use super::*;

fn ps() -> u64 {
    crate::sys::page_size()
}

/// A base address for fake mappings.
const BASE: u64 = 0x7f00_0000_0000;

fn write_image<M: Message>(dir: &Path, name: &str, magic: u32, entries: &[M]) {
    let mut w =
        ImageWriter::new(File::create(dir.join(name)).unwrap(), Header::Common(magic)).unwrap();
    for e in entries {
        w.write(e).unwrap();
    }
}

/// A page filled with `fill`, with `text` written at `at`.
fn page(fill: u8, at: usize, text: &[u8]) -> Vec<u8> {
    let mut p = vec![fill; ps() as usize];
    p[at..at + text.len()].copy_from_slice(text);
    p
}

fn run(vaddr: u64, pages: u64, flags: u32) -> PagemapEntry {
    PagemapEntry {
        vaddr,
        compat_nr_pages: 0,
        in_parent: None,
        flags: Some(flags),
        nr_pages: Some(pages),
    }
}

/// Writes `pagemap-<pid>.img` (pages id = pid) and `pages-<pid>.img`.
fn write_memory(dir: &Path, pid: u32, runs: &[PagemapEntry], contents: &[Vec<u8>]) {
    let mut w = ImageWriter::new(
        File::create(dir.join(format!("pagemap-{pid}.img"))).unwrap(),
        Header::Common(magic::PAGEMAP),
    )
    .unwrap();
    w.write(&PagemapHead { pages_id: pid }).unwrap();
    for r in runs {
        w.write(r).unwrap();
    }
    std::fs::write(dir.join(format!("pages-{pid}.img")), contents.concat()).unwrap();
}

fn core(comm: &str) -> CoreEntry {
    CoreEntry {
        mtype: March::X8664 as i32,
        tc: Some(TaskCoreEntry {
            task_state: 1,
            comm: comm.into(),
            ..Default::default()
        }),
        ids: None,
        thread_core: Some(ThreadCoreEntry {
            creds: Some(CredsEntry {
                uid: 1000,
                gid: 100,
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// A process: pstree entry data, core, ids, mm with argv/env ranges and VMAs.
struct Proc {
    pid: u32,
    ppid: u32,
    comm: &'static str,
    files_id: u32,
    args: (u64, u64),
    env: (u64, u64),
    vmas: Vec<VmaEntry>,
}

impl Proc {
    fn new(pid: u32, ppid: u32, comm: &'static str) -> Self {
        Self {
            pid,
            ppid,
            comm,
            files_id: pid,
            args: (0, 0),
            env: (0, 0),
            vmas: vec![anon_vma(BASE, BASE + 16 * ps())],
        }
    }
}

fn anon_vma(start: u64, end: u64) -> VmaEntry {
    VmaEntry {
        start,
        end,
        pgoff: 0,
        shmid: 0,
        prot: 3,
        flags: 0x22,
        status: (1 << 0) | (1 << 9),
        fd: -1,
        madv: None,
        fdflags: None,
    }
}

fn write_tree(dir: &Path, procs: &[Proc]) {
    let entries: Vec<PstreeEntry> = procs
        .iter()
        .map(|p| PstreeEntry {
            pid: p.pid,
            ppid: p.ppid,
            pgid: procs[0].pid,
            sid: procs[0].pid,
            threads: vec![p.pid],
        })
        .collect();
    write_image(dir, "pstree.img", magic::PSTREE, &entries);
    for p in procs {
        write_image(
            dir,
            &format!("core-{}.img", p.pid),
            magic::CORE,
            &[core(p.comm)],
        );
        write_image(
            dir,
            &format!("ids-{}.img", p.pid),
            magic::IDS,
            &[TaskKobjIdsEntry {
                vm_id: p.pid,
                files_id: p.files_id,
                fs_id: p.pid,
                sighand_id: p.pid,
                ..Default::default()
            }],
        );
        write_image(
            dir,
            &format!("mm-{}.img", p.pid),
            magic::MM,
            &[MmEntry {
                mm_arg_start: p.args.0,
                mm_arg_end: p.args.1,
                mm_env_start: p.env.0,
                mm_env_end: p.env.1,
                exe_file_id: 1,
                vmas: p.vmas.clone(),
                ..Default::default()
            }],
        );
    }
}

fn one_proc_with_memory(
    runs: &[PagemapEntry],
    contents: &[Vec<u8>],
    args: (u64, u64),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Proc::new(100, 0, "fake");
    p.args = args;
    write_tree(dir.path(), &[p]);
    write_memory(dir.path(), 100, runs, contents);
    dir
}

fn tree(dir: &Path) -> Result<PsNode> {
    ImageSet::open(dir)?.process_tree(&PsOptions {
        cmdline: true,
        env: true,
    })
}

#[test]
fn args_spanning_two_pages_are_joined() {
    let ps = ps();
    // "prog\0--flag\0" starts 5 bytes before the end of the first page.
    let text = b"prog\0--flag\0";
    let mut both = [page(0xaa, 0, b""), page(0xbb, 0, b"")].concat();
    let start = ps as usize - 5;
    both[start..start + text.len()].copy_from_slice(text);
    let pages = vec![both[..ps as usize].to_vec(), both[ps as usize..].to_vec()];
    let arg_start = BASE + start as u64;
    let dir = one_proc_with_memory(
        &[run(BASE, 2, PE_PRESENT)],
        &pages,
        (arg_start, arg_start + text.len() as u64),
    );
    let root = tree(dir.path()).unwrap();
    assert_eq!(root.cmdline.as_deref(), Some("prog --flag"));
    assert_eq!(root.argv.as_ref().unwrap(), &["prog", "--flag"]);
    assert_eq!(root.comm, "fake");
    assert_eq!(root.uid, Some(1000));
    assert!(root.notes.is_empty(), "{:?}", root.notes);

    // The same bytes split over two pagemap entries (two runs, still contiguous).
    let dir = one_proc_with_memory(
        &[run(BASE, 1, PE_PRESENT), run(BASE + ps, 1, PE_PRESENT)],
        &pages,
        (arg_start, arg_start + text.len() as u64),
    );
    assert_eq!(
        tree(dir.path()).unwrap().cmdline.as_deref(),
        Some("prog --flag")
    );
}

#[test]
fn missing_pages_are_typed_errors() {
    let ps = ps();
    let arg_start = BASE + ps - 4;
    // Only the first page is in the pagemap: the args run into an undumped page.
    let dir = one_proc_with_memory(
        &[run(BASE, 1, PE_PRESENT)],
        &[page(b'a', 0, b"")],
        (arg_start, arg_start + 8),
    );
    let set = ImageSet::open(dir.path()).unwrap();
    let pages = set.process_pages(100).unwrap();
    let err = pages.read(arg_start, 8).unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::PageNotDumped { pid: 100, vaddr, reason: PageAbsence::NotDumped }
                if vaddr == BASE + ps
        ),
        "{err:?}"
    );
    // The tree still builds; the command line is missing with a note saying why.
    let root = set
        .process_tree(&PsOptions {
            cmdline: true,
            env: false,
        })
        .unwrap();
    assert!(root.cmdline.is_none());
    assert!(root.notes[0].contains("not dumped"), "{:?}", root.notes);

    // Lazy runs are not in the pages file; parent runs need the parent image set.
    let dir = one_proc_with_memory(
        &[
            run(BASE, 1, PE_PRESENT),
            run(BASE + ps, 1, PE_LAZY),
            run(BASE + 2 * ps, 1, PE_PARENT),
        ],
        &[page(b'a', 0, b"")],
        (0, 0),
    );
    let pages = ImageSet::open(dir.path())
        .unwrap()
        .process_pages(100)
        .unwrap();
    assert!(matches!(
        pages.read(BASE + ps, 1),
        Err(InspectError::PageNotDumped {
            reason: PageAbsence::Lazy,
            ..
        })
    ));
    assert!(matches!(
        pages.read(BASE + 2 * ps + 7, 1),
        Err(InspectError::PageNotDumped {
            reason: PageAbsence::InParent,
            vaddr,
            ..
        }) if vaddr == BASE + 2 * ps + 7
    ));
    // Nothing mapped below the first run.
    assert!(matches!(
        pages.read(BASE - 1, 1),
        Err(InspectError::PageNotDumped {
            reason: PageAbsence::NotDumped,
            ..
        })
    ));
    // Over the read cap before anything is allocated.
    assert!(matches!(
        pages.read(BASE, u64::MAX / 2),
        Err(InspectError::RangeTooLarge { .. })
    ));
}

#[test]
fn parent_pages_are_read_through_the_parent_link() {
    let ps = ps();
    let parent = tempfile::tempdir().unwrap();
    write_memory(
        parent.path(),
        100,
        &[run(BASE, 2, PE_PRESENT)],
        &[page(b'p', 0, b""), page(b'q', 0, b"")],
    );
    let dir = one_proc_with_memory(
        &[run(BASE, 1, PE_PRESENT), run(BASE + ps, 1, PE_PARENT)],
        &[page(b'c', 0, b"")],
        (0, 0),
    );
    std::os::unix::fs::symlink(parent.path(), dir.path().join("parent")).unwrap();
    let pages = ImageSet::open(dir.path())
        .unwrap()
        .process_pages(100)
        .unwrap();
    let bytes = pages.read(BASE + ps - 2, 4).unwrap();
    // The child's own page for the first half, the parent's second page for the rest.
    assert_eq!(bytes, b"ccqq");
}

#[test]
fn search_finds_matches_across_page_and_chunk_boundaries() {
    let ps = ps();
    let secret = b"s3cr3t-token";
    // Two runs, adjacent in memory: the match straddles the boundary between them.
    let p0 = page(0, ps as usize - 5, &secret[..5]);
    let p1 = page(0, 0, &secret[5..]);
    // A third run after a gap: its start continues the pattern, but a gap is no adjacency.
    let p2 = page(0, 0, &secret[7..]);
    let p3 = page(0, 0, b"");
    let mut p_gap_prev = page(0, 0, b"");
    let n = p_gap_prev.len();
    p_gap_prev[n - 7..].copy_from_slice(&secret[..7]);
    let dir = one_proc_with_memory(
        &[
            run(BASE, 1, PE_PRESENT),
            run(BASE + ps, 1, PE_PRESENT),
            run(BASE + 3 * ps, 1, PE_PRESENT),
            run(BASE + 5 * ps, 2, PE_PRESENT),
        ],
        &[p0, p1, p_gap_prev, p2, p3],
        (0, 0),
    );
    let set = ImageSet::open(dir.path()).unwrap();
    let mut opts = SearchOptions::new(secret.to_vec());
    opts.context = 4;
    let r = set.search(&opts).unwrap();
    assert_eq!(r.hits.len(), 1, "{:?}", r.hits);
    let hit = &r.hits[0];
    assert_eq!(hit.pid, 100);
    assert_eq!(hit.process_name, "fake");
    assert_eq!(hit.vaddr, BASE + ps - 5);
    assert_eq!(hit.context_vaddr, BASE + ps - 9);
    assert_eq!(hit.match_offset, 4);
    assert_eq!(hit.context, "....s3cr3t-token....");
    assert!(!r.truncated);
    assert_eq!(r.bytes_scanned, 5 * ps);
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["hits"][0]["address"],
        format!("{:#018x}", BASE + ps - 5)
    );

    // Not there: no hit.
    let r = set
        .search(&SearchOptions::new(b"s3cr3t-tokeX".to_vec()))
        .unwrap();
    assert!(r.hits.is_empty());

    // Across the 1 MiB read chunk inside one long run, and overlapping occurrences.
    let pages = (2 << 20) / ps;
    let mut mem = vec![0u8; (pages * ps) as usize];
    let at = (1 << 20) - 3;
    mem[at..at + 6].copy_from_slice(b"abcabc");
    mem[100..104].copy_from_slice(b"aaaa");
    let chunks: Vec<Vec<u8>> = mem.chunks(ps as usize).map(<[u8]>::to_vec).collect();
    let dir = one_proc_with_memory(&[run(BASE, pages, PE_PRESENT)], &chunks, (0, 0));
    let set = ImageSet::open(dir.path()).unwrap();
    let r = set.search(&SearchOptions::new(b"abcabc".to_vec())).unwrap();
    let addrs: Vec<u64> = r.hits.iter().map(|h| h.vaddr).collect();
    assert_eq!(addrs, vec![BASE + at as u64]);
    let r = set.search(&SearchOptions::new(b"aaa".to_vec())).unwrap();
    let addrs: Vec<u64> = r.hits.iter().map(|h| h.vaddr).collect();
    assert_eq!(addrs, vec![BASE + 100, BASE + 101]);

    // The hit cap stops the search and says so.
    let mut capped = SearchOptions::new(b"aaa".to_vec());
    capped.max_hits = 1;
    let r = set.search(&capped).unwrap();
    assert_eq!(r.hits.len(), 1);
    assert!(r.truncated);
    // The limit caps what the caller asks for.
    let set_capped = ImageSet::open_with(
        dir.path(),
        Limits {
            max_hits: 1,
            ..Limits::default()
        },
    )
    .unwrap();
    let r = set_capped
        .search(&SearchOptions::new(b"aaa".to_vec()))
        .unwrap();
    assert_eq!(r.hits.len(), 1);
    assert!(r.truncated);
    // And so does the scan cap.
    let limits = Limits {
        max_scan: ps,
        ..Limits::default()
    };
    let set = ImageSet::open_with(dir.path(), limits).unwrap();
    let r = set.search(&SearchOptions::new(b"abcabc".to_vec())).unwrap();
    assert!(r.hits.is_empty() && r.truncated);
    assert_eq!(r.bytes_scanned, ps);

    assert!(matches!(
        set.search(&SearchOptions::new(Vec::new())),
        Err(InspectError::EmptyPattern)
    ));
}

#[test]
fn truncated_pages_file_is_a_typed_error() {
    let ps = ps();
    let dir = one_proc_with_memory(
        &[run(BASE, 2, PE_PRESENT)],
        &[page(b'x', 0, b"")],
        (BASE + ps, BASE + ps + 4),
    );
    let set = ImageSet::open(dir.path()).unwrap();
    let err = set
        .process_pages(100)
        .unwrap()
        .read(BASE + ps, 4)
        .unwrap_err();
    assert!(
        matches!(err, InspectError::PagesTruncated { offset, needed: 4, len, .. }
            if offset == ps && len == ps),
        "{err:?}"
    );
    let err = set.search(&SearchOptions::new(b"zz".to_vec())).unwrap_err();
    assert!(
        matches!(err, InspectError::PagesTruncated { .. }),
        "{err:?}"
    );
    // The command line error is not swallowed into a note: the images are corrupt.
    assert!(matches!(
        tree(dir.path()),
        Err(InspectError::PagesTruncated { .. })
    ));
    // The pagemap-only summary still works.
    assert_eq!(set.memory().unwrap().processes[0].pages.present, 2);
}

#[test]
fn corrupt_images_give_typed_errors() {
    let dir = one_proc_with_memory(&[run(BASE, 1, PE_PRESENT)], &[page(0, 0, b"")], (0, 0));
    let d = dir.path();

    // Wrong magic: a core image where the pstree should be.
    std::fs::copy(d.join("core-100.img"), d.join("pstree.img")).unwrap();
    let err = ImageSet::open(d).unwrap_err();
    assert!(
        matches!(&err, InspectError::Image { path, source: ImageError::BadMagic { offset: 4, expected: magic::PSTREE, found: magic::CORE } }
            if path.ends_with("pstree.img")),
        "{err:?}"
    );

    // An entry declaring more bytes than the cap.
    let mut bytes = criu_proto::image::IMG_COMMON_MAGIC.to_le_bytes().to_vec();
    bytes.extend(magic::PSTREE.to_le_bytes());
    bytes.extend((64u32 << 20).to_le_bytes());
    std::fs::write(d.join("pstree.img"), &bytes).unwrap();
    let err = ImageSet::open(d).unwrap_err();
    assert!(
        matches!(err, InspectError::Image { source: ImageError::Oversized { offset: 8, size, .. }, .. } if size == 64 << 20),
        "{err:?}"
    );

    // Truncated inside an entry.
    write_tree(d, &[Proc::new(100, 0, "fake")]);
    let full = std::fs::read(d.join("core-100.img")).unwrap();
    std::fs::write(d.join("core-100.img"), &full[..full.len() - 3]).unwrap();
    let err = ImageSet::open(d).unwrap_err();
    assert!(
        matches!(
            err,
            InspectError::Image {
                source: ImageError::Truncated { .. },
                ..
            }
        ),
        "{err:?}"
    );

    // A missing image names its path.
    std::fs::remove_file(d.join("core-100.img")).unwrap();
    let err = ImageSet::open(d).unwrap_err();
    assert!(
        matches!(&err, InspectError::Open { path, .. } if path.ends_with("core-100.img")),
        "{err:?}"
    );
    assert!(err.to_string().contains("core-100.img"));

    // Too many processes for the cap.
    write_tree(d, &[Proc::new(100, 0, "a"), Proc::new(101, 100, "b")]);
    let limits = Limits {
        max_tasks: 1,
        ..Limits::default()
    };
    assert!(matches!(
        ImageSet::open_with(d, limits),
        Err(InspectError::TooMany {
            what: "processes",
            limit: 1,
            ..
        })
    ));

    // Overlapping page runs.
    write_memory(
        d,
        100,
        &[run(BASE, 2, PE_PRESENT), run(BASE + ps(), 1, PE_PRESENT)],
        &[],
    );
    let err = ImageSet::open(d).unwrap().process_pages(100).unwrap_err();
    assert!(matches!(err, InspectError::Inconsistent { .. }), "{err:?}");
    // A run whose end overflows the address space.
    write_memory(d, 100, &[run(BASE, u64::MAX / 2, PE_PRESENT)], &[]);
    let err = ImageSet::open(d).unwrap().process_pages(100).unwrap_err();
    assert!(matches!(err, InspectError::Inconsistent { .. }), "{err:?}");
    // A mapping that ends before it starts counts no pages (and does not panic).
    let mut p = Proc::new(100, 0, "a");
    p.vmas = vec![anon_vma(BASE + 4 * ps(), BASE)];
    write_tree(d, &[p]);
    write_memory(d, 100, &[run(BASE, 8, PE_PRESENT)], &[]);
    let m = ImageSet::open(d).unwrap().memory().unwrap();
    assert_eq!(m.processes[0].vmas[0].size, 0);
    assert_eq!(m.processes[0].vmas[0].pages.total, 0);
    // Too many VMAs.
    let mut p = Proc::new(100, 0, "a");
    p.vmas = vec![anon_vma(BASE, BASE + ps()); 3];
    write_tree(d, &[p]);
    let limits = Limits {
        max_vmas: 2,
        ..Limits::default()
    };
    assert!(matches!(
        ImageSet::open_with(d, limits).unwrap().memory(),
        Err(InspectError::TooMany {
            what: "mappings",
            ..
        })
    ));
}

#[test]
fn tree_parents_children_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let env = b"HOME=/root\0SECRET=hunter2\0EMPTY=\0";
    let mut root = Proc::new(10, 0, "init");
    root.env = (BASE, BASE + env.len() as u64);
    let mut a = Proc::new(11, 10, "a");
    a.env = (BASE, BASE);
    // 12's parent 13 and 13's parent 12: a loop, which hangs under the root.
    let b = Proc::new(12, 13, "b");
    let c = Proc::new(13, 12, "c");
    let e = Proc::new(14, 11, "e");
    write_tree(d, &[root, a, b, c, e]);
    for pid in 10..=14 {
        write_memory(d, pid, &[run(BASE, 1, PE_PRESENT)], &[page(0, 0, env)]);
    }
    let t = tree(d).unwrap();
    assert_eq!(t.pid, 10);
    let kids: Vec<u32> = t.children.iter().map(|c| c.pid).collect();
    assert_eq!(kids, vec![11, 12, 13]);
    assert_eq!(t.find(11).unwrap().children[0].pid, 14);
    assert_eq!(t.iter().count(), 5);
    let env = t.environment_variables.as_ref().unwrap();
    assert_eq!(env["SECRET"], "hunter2");
    assert_eq!(env["EMPTY"], "");
    assert_eq!(env.len(), 3);
    assert!(
        t.find(11)
            .unwrap()
            .environment_variables
            .as_ref()
            .unwrap()
            .is_empty()
    );
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["command"], "init");
    assert_eq!(json["task_state"], "alive");
    assert_eq!(json["children"][0]["children"][0]["pid"], 14);
    assert_eq!(json["environment_variables"]["HOME"], "/root");
}

fn reg(id: u32, name: &str, flags: u32, pos: u64) -> FileEntry {
    FileEntry {
        r#type: FdTypes::Reg as i32,
        id,
        reg: Some(RegFileEntry {
            id,
            flags,
            pos,
            name: name.into(),
            size: Some(4096),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn fd(id: u32, fd: u32, t: FdTypes) -> FdinfoEntry {
    FdinfoEntry {
        id,
        flags: 0,
        r#type: t as i32,
        fd,
        xattr_security_selinux: None,
    }
}

#[test]
fn files_and_sockets_resolve_through_files_img() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tree(
        d,
        &[Proc::new(20, 0, "server"), Proc::new(21, 20, "worker")],
    );
    for pid in [20, 21] {
        write_memory(d, pid, &[], &[]);
        write_image(
            d,
            &format!("fs-{pid}.img"),
            magic::FS,
            &[FsEntry {
                cwd_id: 2,
                root_id: 3,
                umask: Some(0o22),
            }],
        );
    }
    let opts = SkOptsEntry {
        so_sndbuf: 1000,
        so_rcvbuf: 2000,
        reuseaddr: None,
    };
    let lo = u32::from_le_bytes([127, 0, 0, 1]);
    let files = vec![
        reg(1, "/usr/bin/server", 0, 0),
        reg(2, "/srv", 0o200000, 0),
        reg(3, "/", 0o200000, 0),
        reg(4, "/var/log/server.log", 0o2 | 0o2000, 77),
        FileEntry {
            r#type: FdTypes::Pipe as i32,
            id: 5,
            pipe: Some(PipeEntry {
                id: 5,
                pipe_id: 4242,
                flags: 0,
            }),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Pipe as i32,
            id: 6,
            pipe: Some(PipeEntry {
                id: 6,
                pipe_id: 4242,
                flags: 1,
            }),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Inetsk as i32,
            id: 7,
            isk: Some(InetSkEntry {
                id: 7,
                ino: 555,
                family: 2,
                r#type: 1,
                proto: 6,
                state: 10,
                src_port: 8080,
                backlog: 128,
                src_addr: vec![lo],
                opts,
                ..Default::default()
            }),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Unixsk as i32,
            id: 8,
            usk: Some(UnixSkEntry {
                id: 8,
                ino: 600,
                r#type: 1,
                state: 1,
                peer: 601,
                name: b"\0ctl".to_vec(),
                opts,
                ..Default::default()
            }),
            ..Default::default()
        },
        FileEntry {
            r#type: FdTypes::Eventfd as i32,
            id: 9,
            efd: Some(EventfdFileEntry {
                id: 9,
                flags: 0o4000,
                counter: 3,
            }),
            ..Default::default()
        },
    ];
    write_image(d, "files.img", magic::FILES, &files);
    write_image(
        d,
        "fdinfo-20.img",
        magic::FDINFO,
        &[
            fd(7, 5, FdTypes::Inetsk),
            fd(4, 3, FdTypes::Reg),
            fd(5, 4, FdTypes::Pipe),
            fd(8, 6, FdTypes::Unixsk),
            fd(9, 7, FdTypes::Eventfd),
        ],
    );
    write_image(
        d,
        "fdinfo-21.img",
        magic::FDINFO,
        &[fd(4, 3, FdTypes::Reg), fd(6, 1, FdTypes::Pipe)],
    );
    let set = ImageSet::open(d).unwrap();

    let procs = set.file_descriptors().unwrap();
    assert_eq!(procs.len(), 2);
    let server = &procs[0];
    let fds: Vec<&str> = server.open_files.iter().map(|f| f.fd.as_str()).collect();
    assert_eq!(fds, vec!["3", "4", "5", "6", "7", "cwd", "root", "exe"]);
    let log = &server.open_files[0];
    assert_eq!(log.path, "/var/log/server.log");
    assert_eq!(log.kind, "REG");
    assert_eq!(log.flags.as_deref(), Some("O_RDWR|O_APPEND"));
    assert_eq!(log.pos, Some(77));
    assert_eq!(log.shared_with, vec![21]);
    assert_eq!(server.open_files[1].path, "pipe:[4242]");
    assert!(server.open_files[1].shared_with.is_empty());
    assert_eq!(server.open_files[2].path, "TCP 127.0.0.1:8080 LISTEN");
    assert_eq!(
        server.open_files[3].path,
        "UNIX STREAM @ctl ESTABLISHED peer 601"
    );
    assert_eq!(server.open_files[4].path, "anon_inode:[eventfd]");
    assert_eq!(server.open_files[5].path, "/srv");
    assert_eq!(server.open_files[6].path, "/");
    assert_eq!(server.open_files[7].path, "/usr/bin/server");
    let worker = &procs[1];
    assert_eq!(worker.open_files[0].path, "pipe:[4242]");
    assert_eq!(worker.open_files[0].flags.as_deref(), Some("O_WRONLY"));
    assert_eq!(worker.open_files[1].shared_with, vec![20]);

    let socks = set.sockets().unwrap();
    assert_eq!(socks.len(), 1, "the worker has no sockets");
    let s = &socks[0].open_sockets;
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].fd, 5);
    assert_eq!(s[0].protocol, "TCP");
    assert_eq!(s[0].data.state.as_deref(), Some("LISTEN"));
    assert_eq!(s[0].data.src_port, Some(8080));
    assert_eq!(s[0].data.backlog, Some(128));
    assert_eq!(s[1].protocol, "UNIX");
    assert_eq!(s[1].data.address.as_deref(), Some("@ctl"));
    assert_eq!(s[1].data.peer, Some(601));
    let json = serde_json::to_value(&socks).unwrap();
    assert_eq!(json[0]["open_sockets"][0]["data"]["src"], "127.0.0.1");
    assert_eq!(json[0]["open_sockets"][0]["data"]["src_port"], 8080);
    assert_eq!(json[0]["open_sockets"][0]["data"]["send_buf"], 1000);
    let json = serde_json::to_value(&procs).unwrap();
    assert_eq!(json[0]["open_files"][0]["type"], "REG");
    assert_eq!(json[0]["open_files"][0]["fd"], "3");

    // Renders as aligned tables.
    let text = files_table(&procs).to_string();
    assert!(text.starts_with("PID   FD     TYPE"), "{text}");
    assert!(sockets_table(&socks).to_string().contains("127.0.0.1:8080"));
}

#[test]
fn memory_view_counts_pages_per_mapping() {
    let ps = ps();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut p = Proc::new(30, 0, "mem");
    let mut shared = anon_vma(BASE + 8 * ps, BASE + 12 * ps);
    shared.flags = 0x21;
    shared.status = (1 << 0) | (1 << 8);
    let mut file = anon_vma(BASE + 16 * ps, BASE + 18 * ps);
    file.flags = 0x02;
    file.status = (1 << 0) | (1 << 6);
    file.shmid = 1;
    file.pgoff = 2 * ps;
    p.vmas = vec![file, anon_vma(BASE, BASE + 8 * ps), shared];
    write_tree(d, &[p]);
    write_image(
        d,
        "files.img",
        magic::FILES,
        &[reg(1, "/lib/libx.so", 0, 0)],
    );
    write_memory(
        d,
        30,
        &[
            run(BASE + ps, 2, PE_PRESENT),
            run(BASE + 3 * ps, 1, PE_LAZY),
            run(BASE + 6 * ps, 3, PE_PARENT),
            run(BASE + 16 * ps, 1, PE_PRESENT | PE_LAZY),
        ],
        &[],
    );
    let view = ImageSet::open(d).unwrap().memory().unwrap();
    let m = &view.processes[0];
    assert_eq!(m.vmas.len(), 3);
    let anon = &m.vmas[0];
    assert_eq!(anon.start, BASE);
    assert_eq!(
        anon.pages,
        PageCounts {
            present: 2,
            lazy: 1,
            parent: 2,
            total: 5
        }
    );
    assert_eq!(anon.prot, "rw-");
    assert!(anon.anonymous);
    // The parent run straddles into the shared mapping.
    assert_eq!(m.vmas[1].pages.parent, 1);
    assert_eq!(m.vmas[1].sharing, "shared");
    assert_eq!(m.vmas[2].mapping.as_deref(), Some("/lib/libx.so"));
    assert_eq!(m.vmas[2].pages.present, 1);
    assert_eq!(
        m.pages,
        PageCounts {
            present: 3,
            lazy: 1,
            parent: 3,
            total: 7
        }
    );
    assert_eq!(m.memory_size, 7 * ps);
    assert_eq!(m.shared_memory_size, 4 * ps);
    assert_eq!(m.dumped_size, 3 * ps);
    assert_eq!(view.total_memory_size, 7 * ps);
    let text = memory_summary_table(&view).to_string();
    assert!(
        text.starts_with("PID   PROCESS NAME   MEMORY SIZE   SHARED MEMORY SIZE"),
        "{text}"
    );
}

#[test]
fn stats_and_inspect_dir_build_the_requested_views() {
    let dir = one_proc_with_memory(&[run(BASE, 1, PE_PRESENT)], &[page(0, 0, b"x")], (0, 0));
    let d = dir.path();
    let mut w = ImageWriter::new(
        File::create(d.join("stats-dump")).unwrap(),
        Header::Service(magic::STATS),
    )
    .unwrap();
    w.write(&StatsEntry {
        dump: Some(DumpStatsEntry {
            frozen_time: 1500,
            pages_written: 1,
            ..Default::default()
        }),
        restore: None,
    })
    .unwrap();
    drop(w);
    let req = ViewRequest {
        ps_tree: true,
        memory: true,
        stats: Some(d.join("stats-dump")),
        ..Default::default()
    };
    let out = inspect_dir(d, &req, &Limits::default()).unwrap();
    let json = serde_json::to_value(&out).unwrap();
    assert_eq!(json["statistics"]["frozen_time"], 1500);
    assert_eq!(json["statistics"]["pages_written"], 1);
    assert_eq!(json["process_tree"]["pid"], 100);
    assert_eq!(json["memory"]["processes"][0]["pages"]["present"], 1);
    assert!(json.get("sockets").is_none());
    let text = out.to_string();
    assert!(
        text.contains("Process tree") && text.contains("frozen time"),
        "{text}"
    );

    let err = statistics(&d.join("nope")).unwrap_err();
    assert!(matches!(err, InspectError::Stats { .. }));
}

#[test]
fn zombies_have_a_tree_node_but_no_memory_or_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tree(d, &[Proc::new(40, 0, "parent"), Proc::new(41, 40, "gone")]);
    let mut zombie = core("gone");
    zombie.tc.as_mut().unwrap().task_state = 6;
    write_image(d, "core-41.img", magic::CORE, &[zombie]);
    // CRIU writes no mm, ids or pagemap for a zombie.
    for f in ["mm-41.img", "ids-41.img"] {
        std::fs::remove_file(d.join(f)).unwrap();
    }
    write_memory(d, 40, &[run(BASE, 1, PE_PRESENT)], &[page(0, 0, b"zz")]);
    write_image(d, "files.img", magic::FILES, &[reg(1, "/bin/parent", 0, 0)]);
    write_image::<FdinfoEntry>(d, "fdinfo-40.img", magic::FDINFO, &[]);
    let set = ImageSet::open(d).unwrap();
    let t = set
        .process_tree(&PsOptions {
            cmdline: true,
            env: true,
        })
        .unwrap();
    let z = t.find(41).unwrap();
    assert_eq!(z.task_state, TaskState::Zombie);
    assert!(z.cmdline.is_none() && z.notes.is_empty());
    assert_eq!(serde_json::to_value(z).unwrap()["task_state"], "zombie");
    assert!(t.to_string().contains("41 gone (zombie)"), "{t}");
    let files = set.file_descriptors().unwrap();
    assert_eq!(files.iter().map(|p| p.pid).collect::<Vec<_>>(), vec![40]);
    assert_eq!(files[0].open_files.last().unwrap().path, "/bin/parent");
    assert_eq!(set.memory().unwrap().processes.len(), 1);
    let r = set.search(&SearchOptions::new(b"zz".to_vec())).unwrap();
    assert_eq!(r.processes_searched, 1);
    assert_eq!(r.hits.len(), 1);
}

/// Every view over every image cut short or with a byte changed: errors, never panics.
#[test]
fn mangled_images_never_panic() {
    let ps = ps();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut p = Proc::new(50, 0, "victim");
    p.args = (BASE + 10, BASE + 20);
    p.env = (BASE + 20, BASE + 40);
    let mut file_vma = anon_vma(BASE + 4 * ps, BASE + 5 * ps);
    file_vma.status = 1 << 6;
    file_vma.shmid = 1;
    p.vmas.push(file_vma);
    write_tree(d, &[p]);
    write_memory(
        d,
        50,
        &[run(BASE, 2, PE_PRESENT), run(BASE + 2 * ps, 1, PE_LAZY)],
        &[
            page(b'a', 10, b"x\0y\0zz\0\0\0\0A=1\0B=2\0"),
            page(0, 0, b""),
        ],
    );
    write_image(
        d,
        "files.img",
        magic::FILES,
        &[
            reg(1, "/bin/victim", 0, 0),
            FileEntry {
                r#type: FdTypes::Unixsk as i32,
                id: 2,
                usk: Some(UnixSkEntry {
                    id: 2,
                    name: b"/tmp/s".to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ],
    );
    write_image(
        d,
        "fdinfo-50.img",
        magic::FDINFO,
        &[fd(1, 0, FdTypes::Reg), fd(2, 1, FdTypes::Unixsk)],
    );
    write_image(
        d,
        "fs-50.img",
        magic::FS,
        &[FsEntry {
            cwd_id: 1,
            root_id: 1,
            umask: None,
        }],
    );
    let views = |d: &Path| {
        let req = ViewRequest {
            ps_tree: true,
            cmdline: true,
            env: true,
            files: true,
            sockets: true,
            memory: true,
            search: Some(SearchOptions::new(b"zz".to_vec())),
            ..Default::default()
        };
        inspect_dir(d, &req, &Limits::default())
    };
    views(d).expect("the intact fixture inspects cleanly");

    let names: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut outcomes = (0, 0);
    for name in &names {
        let path = d.join(name);
        let orig = std::fs::read(&path).unwrap();
        let step = (orig.len() / 16).max(1);
        for at in (0..orig.len()).step_by(step) {
            std::fs::write(&path, &orig[..at]).unwrap();
            match views(d) {
                Ok(_) => outcomes.0 += 1,
                Err(_) => outcomes.1 += 1,
            }
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = orig.clone();
                m[at] ^= flip;
                std::fs::write(&path, &m).unwrap();
                match views(d) {
                    Ok(_) => outcomes.0 += 1,
                    Err(_) => outcomes.1 += 1,
                }
            }
        }
        std::fs::write(&path, &orig).unwrap();
    }
    // Both kinds of outcome occurred: the mangling reached the decoders.
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "{outcomes:?}");
}
