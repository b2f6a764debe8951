//! The performance data paths, proven correct against real CRIU and runc: page images streamed
//! through FIFOs into the archive (same content as the staging path; a full disk fails the
//! checkpoint cleanly with the workload running), the fast freeze, lazy restores (memory
//! verified page by page), and pre-dump gated on soft-dirty tracking.

use std::path::Path;
use std::time::Duration;

use cpengine::archive::{self, Compression};
use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
use cpengine::container::restore::{ContainerRestoreOptions, RootfsBase, restore_archive};
use cpengine::container::state::StateRoot;
use cpengine::container::{Container, Status, manage};
use cpengine::{CheckpointOptions, Error, RestoreOptions};
use cpengine_integration::runc::*;
use cpengine_integration::*;

fn state() -> StateRoot {
    StateRoot::at(scratch("cpe-state-").keep())
}

/// A runc container running the memory workload: `--mem` MiB of verifiable memory, `children`
/// extra processes (one page image each), a loop every `interval_ms`.
fn workload_container(mem: u32, children: u32, interval_ms: u32) -> (Bundle, RuncContainer) {
    cpengine_integration::runc::workload_container(
        "cpe-p",
        &format!("--mem {mem} --children {children} --interval-ms {interval_ms}"),
        Duration::from_secs(60),
    )
}

/// Asks the workload in a container (rootfs at `rootfs`) to check its memory pattern.
fn verify_in(rootfs: &Path) -> String {
    let dir = rootfs.join("tmp/wl");
    let result = dir.join("verify-result");
    let _ = std::fs::remove_file(&result);
    std::fs::write(dir.join("verify-request"), b"").unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || result.exists()),
        "no verify-result"
    );
    std::thread::sleep(Duration::from_millis(20));
    std::fs::read_to_string(result).unwrap()
}

/// Every member of an archive, by name.
fn members(path: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            (name, data)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_pages_give_the_same_archive_as_staging() {
    let engine = engine().await;
    // Three processes (three page images) that sleep for the whole test, so their memory is
    // the same in both checkpoints except for the page of each stack that the interrupted
    // sleep touches. (Stopping them instead would hang CRIU: a stopped task in a frozen
    // cgroup cannot be seized.)
    let (bundle, c) = workload_container(48, 2, 600_000);
    let state = state();
    let ctr = Container::find(&c.id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    let streamed = out.path().join("streamed.tar");
    let staged = out.path().join("staged.tar");

    let mut o = ContainerCheckpointOptions::new(&streamed);
    o.state = Some(state.clone());
    let r = checkpoint(&engine, &ctr, &o)
        .await
        .expect("streamed checkpoint");
    let s = r.streamed.as_ref().expect("pages were streamed");
    assert_eq!(s.streamed.len(), 3, "{s:?}");
    assert!(s.spilled.is_empty(), "{s:?}");
    assert!(s.bytes >= 48 << 20, "{s:?}");
    let mut o = ContainerCheckpointOptions::new(&staged);
    o.state = Some(state.clone());
    o.stream_pages = false;
    let r2 = checkpoint(&engine, &ctr, &o)
        .await
        .expect("staged checkpoint");
    assert!(r2.streamed.is_none());
    assert_eq!(ctr.status(), Status::Running);

    let a = members(&streamed);
    let b = members(&staged);
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same members"
    );
    assert!(a.contains_key("checkpoint/"), "directory entry");
    let mut compared = 0;
    for (name, data) in &a {
        let file = name.rsplit('/').next().unwrap();
        if file.starts_with("pages-") || file.starts_with("pagemap-") {
            let other = &b[name];
            let diff: Vec<usize> = data
                .chunks(4096)
                .zip(other.chunks(4096))
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .map(|(i, _)| i)
                .collect();
            let allowed = if file.starts_with("pages-") { 2 } else { 0 };
            assert!(
                data.len() == other.len() && diff.len() <= allowed,
                "{name} differs between streamed and staged: {} vs {} bytes, pages {:?}",
                data.len(),
                other.len(),
                &diff[..diff.len().min(20)]
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 6, "three pagemaps and three page images");
    // No FIFO, temp or staging file is left beside the archives.
    let left: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(archive::read_info(&streamed).unwrap().config.id, c.id);

    // (Restoring a streamed archive with its memory verified: see the fast-freeze test.)
    drop((bundle, c));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_while_streaming_fails_cleanly_with_the_workload_running() {
    let engine = engine().await;
    let (bundle, c) = workload_container(96, 0, 20);
    let state = state();
    let ctr = Container::find(&c.id, std::slice::from_ref(&c.root), &state).unwrap();
    // A 32 MiB filesystem for a checkpoint of more than 96 MiB.
    let small = scratch("cpe-full-");
    let (st, _, err) = run(std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs"])
        .arg(small.path()));
    assert!(st.success(), "mounting a small tmpfs: {err}");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _u = Unmount(small.path());
    let mut o = ContainerCheckpointOptions::new(small.path().join("c.tar"));
    o.state = Some(state.clone());
    let before = std::time::Instant::now();
    let err = checkpoint(&engine, &ctr, &o)
        .await
        .expect_err("the checkpoint cannot fit");
    eprintln!("error: {err:#}");
    assert!(
        before.elapsed() < Duration::from_secs(60),
        "the failure must not wait for a timeout"
    );
    match &err {
        Error::Archive(archive::ArchiveError::Write { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err:?}")
        }
        other => panic!("expected the archive's write error, got {other:?}"),
    }
    // Running and not frozen: the counter moves.
    assert_eq!(ctr.status(), Status::Running);
    let counter = |r: &Path| {
        std::fs::read_to_string(r.join("tmp/wl/counter"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let now = counter(&bundle.rootfs);
    assert!(
        wait_until(Duration::from_secs(5), || counter(&bundle.rootfs) > now + 3),
        "the workload does not run after the failed checkpoint"
    );
    assert_eq!(verify_in(&bundle.rootfs), "ok 96");
    // Nothing left: no archive, no temp file, no staging directory, no FIFO.
    let left: Vec<_> = std::fs::read_dir(small.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    drop(c);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_process_restore_has_all_its_memory() {
    let engine = engine().await;
    let mut w = Workload::start(&["--mem", "256"]);
    let images = scratch("cpe-lazy-");
    let o = CheckpointOptions::new(w.pid, images.path());
    engine.dump(&o).await.expect("dump");
    w.kill();
    let mut ro = RestoreOptions::new(images.path());
    ro.lazy_pages = true;
    let r = engine.restore(ro).await.expect("lazy restore");
    let daemon = r
        .lazy_pages_pid
        .expect("a lazy-pages daemon serves the pages");
    assert!(daemon > 0);
    w.adopt(r.pid);
    let left: Vec<_> = std::fs::read_dir(images.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".cpengine"))
        .collect();
    assert!(left.is_empty(), "the restore's view is left: {left:?}");
    assert!(w.advances_past("counter", w.counter()), "not running");
    assert_eq!(w.verify_memory(), "ok 256");
    // The daemon finishes once every page is in.
    assert!(
        wait_until(Duration::from_secs(30), || !cpengine::proc::exists(daemon)
            || cpengine::proc::task_state(daemon)
                .is_some_and(|s| s.state == 'Z')),
        "lazy-pages daemon still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_container_restore_has_all_its_memory() {
    let engine = engine().await;
    let (bundle, c) = workload_container(128, 1, 20);
    let state = state();
    let ctr = Container::find(&c.id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    let archive = out.path().join("c.tar");
    let mut o = ContainerCheckpointOptions::new(&archive);
    o.state = Some(state.clone());
    checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
    let base = bundle.base.clone();
    drop(c);
    let mut ro = ContainerRestoreOptions::new(unique_id("cpe-pl"), state.clone());
    ro.base = Some(RootfsBase::Dir(base));
    ro.relay_exe = Some(cpengine_bin());
    ro.lazy_pages = true;
    let r = restore_archive(&engine, archive.to_str().unwrap(), &ro, false)
        .await
        .expect("lazy restore");
    assert!(r.criu.lazy_pages_pid.is_some());
    assert_eq!(verify_in(&r.rootfs), "ok 128");
    manage::delete(&state, &ro.id, true).await.unwrap();
    assert!(
        !state.container_lib_dir(&ro.id).exists(),
        "the lazily used images go with the container"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_freeze_and_criu_freeze_give_working_checkpoints() {
    let engine = engine().await;
    let (bundle, c) = workload_container(16, 2, 20);
    let state = state();
    let ctr = Container::find(&c.id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    for (fast, name) in [(true, "fast.tar"), (false, "criu.tar")] {
        let mut o = ContainerCheckpointOptions::new(out.path().join(name));
        o.state = Some(state.clone());
        o.fast_freeze = fast;
        o.compression = if fast {
            Compression::None
        } else {
            Compression::Zstd
        };
        let r = checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
        eprintln!("fast freeze {fast}: frozen {:?}", r.frozen);
        assert!(r.frozen > Duration::ZERO && r.frozen < r.total);
        assert_eq!(ctr.status(), Status::Running, "thawed after the checkpoint");
    }
    let base = bundle.base.clone();
    drop(c);
    for name in ["fast.tar", "criu.tar"] {
        let mut ro = ContainerRestoreOptions::new(unique_id("cpe-pf"), state.clone());
        ro.base = Some(RootfsBase::Dir(base.clone()));
        ro.relay_exe = Some(cpengine_bin());
        let p = out.path().join(name);
        let r = restore_archive(&engine, p.to_str().unwrap(), &ro, false)
            .await
            .expect("restore");
        assert_eq!(verify_in(&r.rootfs), "ok 16", "{name}");
        // All three processes came back.
        assert_eq!(cpengine::proc::tree(r.pid).len(), 3, "{name}");
        manage::delete(&state, &ro.id, true).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_dump_needs_soft_dirty_tracking() {
    let engine = engine().await;
    let features = engine.features().await.expect("feature check");
    let w = Workload::start(&["--mem", "8"]);
    let dir = scratch("cpe-pre-");
    let mut o = CheckpointOptions::new(w.pid, dir.path().join("pre"));
    o.flags.leave_running = true;
    let r = engine.pre_dump(&o).await;
    if features.mem_track {
        // Where the kernel tracks dirty pages: pre-dump, then an incremental dump on top.
        r.expect("pre-dump");
        let mut d = CheckpointOptions::new(w.pid, dir.path().join("final"));
        d.flags.leave_running = true;
        d.parent_images = Some("../pre".into());
        d.track_mem = true;
        engine.dump(&d).await.expect("incremental dump");
    } else {
        // This machine's kernel: a clear error, and the workload untouched.
        match r {
            Err(Error::Unsupported { feature, .. }) => assert_eq!(feature, "mem_track"),
            other => panic!("expected the unsupported error, got {other:?}"),
        }
        let msg = engine.pre_dump(&o).await.unwrap_err().to_string();
        assert!(
            msg.contains("not supported") && msg.contains("mem_track"),
            "{msg}"
        );
        let mut d = CheckpointOptions::new(w.pid, dir.path().join("final"));
        d.parent_images = Some("../pre".into());
        assert!(matches!(
            engine.dump(&d).await,
            Err(Error::Unsupported { .. })
        ));
        assert!(w.advances_past("counter", w.counter()), "workload stopped");
        assert!(!dir.path().join("final/inventory.img").exists());
    }
}
