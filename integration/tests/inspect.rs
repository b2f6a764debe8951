//! Inspection of real CRIU dumps: the views must agree with what the running (left running)
//! processes show in /proc and with CRIU's own statistics.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use cpengine::CheckpointOptions;
use cpengine::inspect::{ImageSet, PsOptions, SearchOptions};
use cpengine_integration::*;

/// A string that exists nowhere before this call (time, pid and a tag).
fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cpe-{tag}-{:x}-{:x}", std::process::id(), nanos)
}

/// What /proc says fd `fd` of `pid` is.
fn proc_fd(pid: u32, fd: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap_or_else(|e| panic!("readlink /proc/{pid}/fd/{fd}: {e}"))
        .to_string_lossy()
        .into_owned()
}

struct Dumped {
    w: Workload,
    _wdir: tempfile::TempDir,
    images: tempfile::TempDir,
    secret: String,
    marker: String,
    port: u16,
    sock: PathBuf,
    pages_written: u64,
}

/// Starts a root with one counting child and one pipe-writing child, a TCP listener, a
/// listening unix socket, a secret in the root's heap and a marker in every environment,
/// then dumps it with --leave-running.
async fn dump_workload() -> Dumped {
    let engine = engine().await;
    let wdir = scratch("cpe-wl-");
    let secret = unique("secret");
    std::fs::write(wdir.path().join("secret"), &secret).unwrap();
    let marker = unique("marker");
    let sock = wdir.path().join("ctl.sock");
    let w = Workload::start_in_with_env(
        wdir.path(),
        &[
            "--children",
            "1",
            "--pipe",
            "--listen",
            "0",
            "--unix-listen",
            sock.to_str().unwrap(),
            "--secret-file",
            wdir.path().join("secret").to_str().unwrap(),
        ],
        &[("CPE_INSPECT_MARKER", &marker)],
    );
    let port: u16 = std::fs::read_to_string(wdir.path().join("port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(w.advances_past("pipe", 0), "pipe traffic before the dump");
    let images = scratch("cpe-img-");
    let mut opts = CheckpointOptions::new(w.pid, images.path());
    opts.flags.leave_running = true;
    let report = engine.dump(&opts).await.expect("dump");
    let pages_written = report.criu.expect("criu stats").pages_written;
    Dumped {
        w,
        _wdir: wdir,
        images,
        secret,
        marker,
        port,
        sock,
        pages_written,
    }
}

fn workload_cmdline(d: &Dumped) -> String {
    let dir = d.w.dir.display();
    format!(
        "{} --dir {dir} --children 1 --pipe --listen 0 --unix-listen {} --secret-file {dir}/secret",
        workload_bin().display(),
        d.sock.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_of_a_real_dump_match_the_running_tree() {
    let d = dump_workload().await;
    let set = ImageSet::open(d.images.path()).expect("open images");
    let root_pid = d.w.pid as u32;
    let live: BTreeSet<u32> = d.w.tree().into_iter().map(|p| p as u32).collect();
    assert_eq!(live.len(), 3, "root and two children: {live:?}");

    // Process tree: the known pids, parents and exact command line; the environment marker.
    let tree = set
        .process_tree(&PsOptions {
            cmdline: true,
            env: true,
        })
        .unwrap();
    assert_eq!(tree.pid, root_pid);
    let in_images: BTreeSet<u32> = tree.iter().map(|n| n.pid).collect();
    assert_eq!(in_images, live);
    for child in &tree.children {
        assert_eq!(child.ppid, root_pid);
        assert_eq!(
            cpengine::proc::ppid(child.pid as i32),
            Some(d.w.pid),
            "pid {} is the root's child in /proc too",
            child.pid
        );
    }
    let want = workload_cmdline(&d);
    for n in tree.iter() {
        assert_eq!(n.comm, "cpe-workload");
        assert_eq!(n.cmdline.as_deref(), Some(want.as_str()), "pid {}", n.pid);
        // The same bytes the kernel shows for the running process.
        let proc_cmdline = std::fs::read(format!("/proc/{}/cmdline", n.pid)).unwrap();
        assert_eq!(
            n.argv.as_ref().unwrap().join("\0") + "\0",
            String::from_utf8(proc_cmdline).unwrap()
        );
        let env = n.environment_variables.as_ref().expect("environment read");
        assert_eq!(
            env.get("CPE_INSPECT_MARKER"),
            Some(&d.marker),
            "pid {}",
            n.pid
        );
        assert!(n.notes.is_empty(), "{:?}", n.notes);
        assert_eq!(n.threads, vec![n.pid]);
    }

    // Open files: every descriptor's path agrees with /proc/<pid>/fd of the running process;
    // the counter file is open read-write; the pipe connects the root and the pipe child.
    let files = set.file_descriptors().unwrap();
    assert_eq!(files.iter().map(|p| p.pid).collect::<BTreeSet<_>>(), live);
    let mut pipe_holders = Vec::new();
    let root_files = files.iter().find(|p| p.pid == root_pid).unwrap();
    for p in &files {
        for f in p.open_files.iter().filter(|f| f.fd.parse::<u32>().is_ok()) {
            let actual = proc_fd(p.pid, &f.fd);
            match f.kind.as_str() {
                "REG" | "PIPE" => assert_eq!(f.path, actual, "pid {} fd {}", p.pid, f.fd),
                "UNIXSK" | "INETSK" => assert!(actual.starts_with("socket:["), "{actual}"),
                other => panic!("unexpected fd type {other} at pid {} fd {}", p.pid, f.fd),
            }
            if f.kind == "PIPE" {
                pipe_holders.push((p.pid, f.path.clone(), f.flags.clone()));
            }
        }
        let cwd = p.open_files.iter().find(|f| f.fd == "cwd").unwrap();
        assert_eq!(
            Path::new(&cwd.path),
            std::fs::read_link(format!("/proc/{}/cwd", p.pid)).unwrap()
        );
        let exe = p.open_files.iter().find(|f| f.fd == "exe").unwrap();
        assert_eq!(Path::new(&exe.path), workload_bin());
    }
    let counter = root_files
        .open_files
        .iter()
        .find(|f| Path::new(&f.path) == d.w.dir.join("counter"))
        .expect("the counter file is open in the root");
    assert_eq!(counter.kind, "REG");
    assert!(counter.flags.as_deref().unwrap().starts_with("O_RDWR"));
    // The workload's own pipe: read end in the root, write end in exactly one child.
    let root_read = pipe_holders
        .iter()
        .find(|(pid, _, flags)| {
            *pid == root_pid && flags.as_deref().unwrap().starts_with("O_RDONLY")
        })
        .expect("the root holds a pipe read end");
    let writers: Vec<u32> = pipe_holders
        .iter()
        .filter(|(pid, path, _)| *pid != root_pid && *path == root_read.1)
        .map(|(pid, ..)| *pid)
        .collect();
    assert_eq!(writers.len(), 1, "{pipe_holders:?}");

    // Sockets: the TCP listener on 127.0.0.1:<port> and the unix listener, with the inodes
    // /proc shows for the running root.
    let socks = set.sockets().unwrap();
    assert_eq!(socks.len(), 1, "only the root has sockets: {socks:?}");
    assert_eq!(socks[0].pid, root_pid);
    let tcp = socks[0]
        .open_sockets
        .iter()
        .find(|s| s.protocol == "TCP")
        .expect("tcp listener");
    assert_eq!(tcp.data.state.as_deref(), Some("LISTEN"));
    assert_eq!(tcp.data.src_addr, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(tcp.data.src_port, Some(u32::from(d.port)));
    assert_eq!(
        proc_fd(root_pid, &tcp.fd.to_string()),
        format!("socket:[{}]", tcp.data.ino.unwrap())
    );
    let unix = socks[0]
        .open_sockets
        .iter()
        .find(|s| s.protocol == "UNIX")
        .expect("unix listener");
    assert_eq!(unix.data.state.as_deref(), Some("LISTEN"));
    assert_eq!(unix.data.sock_type, "STREAM");
    assert_eq!(unix.data.address.as_deref(), Some(d.sock.to_str().unwrap()));

    // Memory: the pages present in the pagemaps are exactly the pages CRIU says it wrote, and
    // exactly what the pages files hold.
    let mem = set.memory().unwrap();
    assert_eq!(mem.processes.len(), 3);
    assert_eq!(mem.total_pages.present, d.pages_written);
    let pages_files: u64 = std::fs::read_dir(d.images.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(mem.total_dumped_size, pages_files);
    for p in &mem.processes {
        assert!(
            p.vmas
                .iter()
                .any(|v| v.mapping.as_deref() == Some("[stack]"))
        );
        let exe_mapped = p
            .vmas
            .iter()
            .any(|v| v.mapping.as_deref().map(Path::new) == Some(workload_bin().as_path()));
        assert!(exe_mapped, "pid {} maps its executable", p.pid);
        let per_vma: u64 = p.vmas.iter().map(|v| v.pages.total).sum();
        assert_eq!(
            per_vma, p.pages.total,
            "every dumped page lies in a mapping"
        );
    }

    // Search: the secret is in the root's heap only; a string that was never there is not.
    let hits = set
        .search(&SearchOptions::new(d.secret.as_bytes()))
        .unwrap();
    assert!(!hits.hits.is_empty(), "secret not found");
    for h in &hits.hits {
        assert_eq!(h.pid, root_pid);
        assert_eq!(h.process_name, "cpe-workload");
        assert!(h.context.contains(&d.secret), "{}", h.context);
        // The address really holds the secret in the running process's heap: check via the
        // same images (independent of the search loop).
        let bytes = set
            .process_pages(h.pid)
            .unwrap()
            .read(h.vaddr, d.secret.len() as u64)
            .unwrap();
        assert_eq!(bytes, d.secret.as_bytes());
    }
    assert_eq!(hits.processes_searched, 3);
    let absent = unique("absent");
    let none = set.search(&SearchOptions::new(absent.as_bytes())).unwrap();
    assert!(none.hits.is_empty(), "{:?}", none.hits);
    assert_eq!(none.bytes_scanned, pages_files);
    // The environment marker is in every process's memory (inherited environment).
    let marker_pids: BTreeSet<u32> = set
        .search(&SearchOptions::new(d.marker.as_bytes()))
        .unwrap()
        .hits
        .iter()
        .map(|h| h.pid)
        .collect();
    assert_eq!(marker_pids, live);
}

#[test]
fn inspect_images_cli_prints_every_view_as_json_and_tables() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let d = rt.block_on(dump_workload());
    let spec = d.images.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"ociVersion":"1.0.2","mounts":[{"destination":"/proc","type":"proc","source":"proc","options":["nosuid"]}]}"#,
    )
    .unwrap();
    let (status, out, err) = run(Command::new(cpengine_bin())
        .arg("inspect")
        .arg(d.images.path())
        .args(["--all", "--json", "--spec"])
        .arg(&spec)
        .args(["--search", &d.secret]));
    assert!(status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    for key in [
        "process_tree",
        "file_descriptors",
        "sockets",
        "mounts",
        "statistics",
        "memory",
        "search",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {out}");
    }
    let tree = &v["process_tree"];
    assert_eq!(tree["pid"], d.w.pid);
    assert_eq!(tree["command"], "cpe-workload");
    assert_eq!(tree["cmdline"], workload_cmdline(&d));
    assert_eq!(
        tree["environment_variables"]["CPE_INSPECT_MARKER"],
        d.marker.as_str()
    );
    assert_eq!(tree["children"].as_array().unwrap().len(), 2);
    assert_eq!(v["file_descriptors"].as_array().unwrap().len(), 3);
    let fd0 = &v["file_descriptors"][0]["open_files"][0];
    for key in ["fd", "type", "path"] {
        assert!(fd0.get(key).is_some(), "open file without {key}: {fd0}");
    }
    let sock = &v["sockets"][0]["open_sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["protocol"] == "TCP")
        .expect("tcp socket in json")["data"];
    assert_eq!(sock["src"], "127.0.0.1");
    assert_eq!(sock["src_port"], d.port);
    assert_eq!(sock["state"], "LISTEN");
    assert_eq!(v["mounts"][0]["destination"], "/proc");
    assert_eq!(v["mounts"][0]["type"], "proc");
    assert_eq!(v["statistics"]["pages_written"], d.pages_written);
    assert!(v["statistics"]["frozen_time"].as_u64().unwrap() > 0);
    assert_eq!(
        v["memory"]["total_pages"]["present"],
        v["statistics"]["pages_written"]
    );
    let hits = v["search"]["hits"].as_array().unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h["pid"] == d.w.pid));
    assert!(hits[0]["address"].as_str().unwrap().starts_with("0x"));

    // Tables for humans.
    let (status, out, err) = run(Command::new(cpengine_bin())
        .arg("inspect")
        .arg(d.images.path())
        .args(["--memory", "--sockets", "--ps-tree"]));
    assert!(status.success(), "{err}");
    assert!(
        out.lines().any(|l| l.starts_with("PID ")
            && l.contains("   PROCESS NAME   MEMORY SIZE   SHARED MEMORY SIZE")),
        "{out}"
    );
    assert!(out.contains(&format!("127.0.0.1:{}", d.port)), "{out}");
    assert!(
        out.contains(&format!("{} cpe-workload: ", d.w.pid)),
        "{out}"
    );

    // A directory without images is a clear error naming the missing image.
    let empty = scratch("cpe-empty-");
    let (status, _, err) = run(Command::new(cpengine_bin())
        .arg("inspect")
        .arg(empty.path()));
    assert!(!status.success());
    assert!(err.contains("pstree.img"), "{err}");
}
