//! Process checkpoint/restore against real CRIU and real processes.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cpengine::criu::{CriuError, Features};
use cpengine::{CheckpointOptions, Error, RestoreOptions};
use cpengine_integration::*;

fn sum_pages_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

fn sum_files(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dump_and_restore_a_tree_continues_its_counters() {
    let engine = engine().await;
    let mut w = Workload::start(&["--children", "1"]);
    let tree = w.tree();
    assert_eq!(tree.len(), 2, "parent and child expected, got {tree:?}");
    assert!(w.advances_past("child-0", 0));

    let images = scratch("cpe-img-");
    let mut opts = CheckpointOptions::new(w.pid, images.path());
    opts.flags.leave_running = true;
    let before = w.counter();
    let report = engine.dump(&opts).await.expect("dump");
    let after = w.counter();
    assert!(report.criu.is_some());

    w.kill();
    let root = report.pid;
    let restored = engine
        .restore(RestoreOptions::new(images.path()))
        .await
        .expect("restore");
    assert_eq!(restored.pid, root, "restored with the original pid");
    w.adopt(restored.pid);

    // The counters resume from their checkpointed values: not restarted, not stuck.
    let resumed_from = w.counter();
    assert!(w.advances_past("counter", resumed_from));
    let c = w.counter();
    assert!(
        c > before,
        "parent counter restarted or stuck: {c} after restore, {before} before dump"
    );
    assert!(
        resumed_from <= after + 5,
        "counter {resumed_from} ran ahead of the dump ({after})"
    );
    let child_now = w.file_counter("child-0");
    assert!(
        w.advances_past("child-0", child_now),
        "restored child does not run"
    );
    let new_tree = w.tree();
    assert_eq!(new_tree, tree, "same pids after restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_file_and_pipe_survive_restore() {
    let engine = engine().await;
    let mut w = Workload::start(&["--pipe"]);
    let root_pid = w.pid;
    assert!(w.advances_past("pipe", 2), "pipe traffic before dump");

    let images = scratch("cpe-img-");
    let mut opts = CheckpointOptions::new(w.pid, images.path());
    opts.flags.leave_running = true;
    engine.dump(&opts).await.expect("dump");
    let piped_at_dump = w.file_counter("pipe");
    w.kill();

    let restored = engine
        .restore(RestoreOptions::new(images.path()))
        .await
        .expect("restore");
    w.adopt(restored.pid);
    // Both the open counter file and the pipe between the two processes keep working.
    let c = w.counter();
    assert!(
        w.advances_past("counter", c),
        "counter file no longer written"
    );
    let p = w.file_counter("pipe");
    assert!(
        w.advances_past("pipe", p.max(piped_at_dump)),
        "pipe no longer carries data"
    );
    // The images hold both: the root's counter file open for writing and one pipe shared by
    // the root and its writer child (not merely some fdinfo image, which every dump has).
    let set = cpengine::inspect::ImageSet::open(images.path()).expect("open images");
    let procs = set.file_descriptors().expect("fd tables");
    let root = procs
        .iter()
        .find(|p| p.pid == root_pid as u32)
        .unwrap_or_else(|| panic!("root {root_pid} not in the images: {procs:?}"));
    assert!(
        root.open_files.iter().any(|f| f.kind == "REG"
            && f.path == w.dir.join("counter").display().to_string()
            && f.flags.as_deref().is_some_and(|fl| fl.contains("O_RDWR"))),
        "the counter file is not among the root's open files: {:?}",
        root.open_files
    );
    let pipe = root
        .open_files
        .iter()
        .find(|f| f.kind == "PIPE")
        .unwrap_or_else(|| panic!("no pipe among the root's files: {:?}", root.open_files));
    assert!(
        procs.iter().any(|p| p.pid != root.pid
            && p.open_files
                .iter()
                .any(|f| f.kind == "PIPE" && f.path == pipe.path)),
        "no other task holds the root's pipe {}: {procs:?}",
        pipe.path
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_running_leaves_the_tree_running_and_untraced() {
    let engine = engine().await;
    let w = Workload::start(&["--children", "1"]);
    let images = scratch("cpe-img-");
    let mut opts = CheckpointOptions::new(w.pid, images.path());
    opts.flags.leave_running = true;
    engine.dump(&opts).await.expect("dump");
    for pid in w.tree() {
        let (state, tracer) = state_of(pid);
        assert!(
            !matches!(state, 'T' | 't'),
            "pid {pid} left stopped ({state})"
        );
        assert_eq!(tracer, 0, "pid {pid} left traced");
    }
    let c = w.counter();
    assert!(w.advances_past("counter", c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_stats_match_the_images_on_disk() {
    let engine = engine().await;
    let w = Workload::start(&["--mem", "32"]);
    let images = scratch("cpe-img-");
    let mut opts = CheckpointOptions::new(w.pid, images.path());
    opts.flags.leave_running = true;
    let r = engine.dump(&opts).await.expect("dump");
    let s = r.criu.clone().expect("criu stats");
    assert!(s.frozen > Duration::ZERO && s.memdump > Duration::ZERO);
    assert!(s.pages_scanned >= s.pages_written);
    // At least the 32 MiB the workload dirtied.
    assert!(
        s.pages_written * r.page_size >= 32 << 20,
        "{} pages written",
        s.pages_written
    );
    assert_eq!(
        s.pages_written * r.page_size,
        sum_pages_files(images.path()),
        "pages written vs pages-*.img"
    );
    assert_eq!(r.images_bytes, sum_files(images.path()));
    assert!(r.phases.iter().any(|p| p.name.starts_with("criu")));
    let json = serde_json::to_value(&r).unwrap();
    assert!(json["criu"]["frozen_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(w.verify_memory(), "ok 32");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dumping_a_missing_pid_names_the_pid() {
    let engine = engine().await;
    let images = scratch("cpe-img-");
    // pid_max here is at most 4194304; this pid cannot exist.
    let err = engine
        .dump(&CheckpointOptions::new(4_194_305, images.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::NoSuchProcess { pid: 4_194_305 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("4194305"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwritable_images_dir_is_a_clear_error_and_the_workload_keeps_running() {
    let engine = engine().await;
    let w = Workload::start(&[]);
    let mnt = scratch("cpe-ro-");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(mnt.path())
        .status()
        .unwrap();
    assert!(status.success(), "mounting a read-only tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());

    let mut opts = CheckpointOptions::new(w.pid, mnt.path().join("images"));
    opts.flags.leave_running = true;
    let err = engine.dump(&opts).await.unwrap_err();
    assert!(matches!(err, Error::ImagesDirNotWritable { .. }), "{err:?}");
    let mut opts = CheckpointOptions::new(w.pid, mnt.path());
    opts.flags.leave_running = true;
    let err = engine.dump(&opts).await.unwrap_err();
    assert!(matches!(err, Error::ImagesDirNotWritable { .. }), "{err:?}");
    assert!(err.to_string().contains("not writable"));
    let (state, _) = state_of(w.pid);
    assert!(!matches!(state, 'T' | 't'));
    let c = w.counter();
    assert!(w.advances_past("counter", c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_killed_mid_dump_leaves_the_workload_running_and_the_next_dump_works() {
    let engine = engine().await;
    let w = Workload::start(&["--mem", "768"]);
    let images = scratch("cpe-img-");
    let mut opts = CheckpointOptions::new(w.pid, images.path());
    opts.flags.leave_running = true;
    let dump = {
        let engine = engine.clone();
        let opts = opts.clone();
        tokio::spawn(async move { engine.dump(&opts).await })
    };
    // Wait until CRIU has seized the workload and started writing pages, then kill it.
    let pid = w.pid;
    let dir = images.path().to_path_buf();
    let mut tracer = 0;
    let seized = wait_until(Duration::from_secs(20), || {
        tracer = cpengine::proc::task_state(pid).map_or(0, |s| s.tracer);
        tracer != 0 && sum_pages_files(&dir) > 0
    });
    assert!(seized, "CRIU never started writing pages");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tracer),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let err = dump.await.unwrap().unwrap_err();
    assert!(
        matches!(err.criu(), Some(CriuError::Closed { .. })),
        "{err:?}"
    );

    // The workload runs, is not stopped and not traced, and its memory is intact.
    let (state, tr) = state_of(w.pid);
    assert!(!matches!(state, 'T' | 't'), "left stopped: {state}");
    assert_eq!(tr, 0, "left traced");
    let c = w.counter();
    assert!(
        w.advances_past("counter", c),
        "counter stuck after the failed dump"
    );
    assert_eq!(w.verify_memory(), "ok 768");
    // The partial images are gone; the log stays for diagnosis.
    assert_eq!(sum_pages_files(images.path()), 0);
    assert!(images.path().join("dump.log").exists());

    // And the next checkpoint succeeds (same directory).
    let r = engine.dump(&opts).await.expect("dump after a killed one");
    assert!(r.criu.unwrap().pages_written * r.page_size >= 768 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_and_features_agree_with_the_criu_binary() {
    let engine = engine().await;
    let v = engine.criu_version();
    let (status, out, _) = run(Command::new(engine.criu().binary()).arg("--version"));
    assert!(status.success());
    // `criu --version` prints "Version: 4.2.1".
    let cli_version = out
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .expect("version line")
        .trim()
        .to_string();
    assert_eq!(v.to_string(), cli_version);
    assert!(v.number() >= 40000);

    let f = engine.features().await.expect("FEATURE_CHECK");
    let cli_has = |feature: &str| {
        Command::new(engine.criu().binary())
            .args(["check", "--feature", feature])
            .output()
            .unwrap()
            .status
            .success()
    };
    assert_eq!(f.mem_track, cli_has("mem_dirty_track"), "mem_track");
    assert_eq!(f.lazy_pages, cli_has("uffd-noncoop"), "lazy_pages");
    assert_eq!(f.pidfd_store, cli_has("pidfd_store"), "pidfd_store");
    // Asking for nothing reports nothing.
    let none = engine.criu().features(Features::default()).await.unwrap();
    assert_eq!(none, Features::default());
}
