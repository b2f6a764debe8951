//! Environmental failures of a container checkpoint and of a restore, against real CRIU and
//! runc: each is a clear error, the workload is untouched, nothing is left behind, and a
//! failed restore leaves its archive byte for byte as it was. Also least privilege: the modes
//! of what a checkpoint writes, and the capabilities of `cpengine inspect` while it works.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cpengine::Error;
use cpengine::archive::{ArchiveError, Progress};
use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
use cpengine::container::restore::{ContainerRestoreOptions, RootfsBase, restore_archive};
use cpengine::container::state::StateRoot;
use cpengine::container::{Container, ContainerError, Status, manage};
use cpengine_integration::faults::*;
use cpengine_integration::leftovers::assert_restore_left_nothing;
use cpengine_integration::runc::*;
use cpengine_integration::*;

fn state() -> StateRoot {
    StateRoot::at(scratch("cpe-xstate-").keep())
}

fn assert_untouched(ctr: &Container, bundle: &Bundle, what: &str) {
    assert_eq!(ctr.status(), Status::Running, "{what}");
    assert_running_untraced(&cpengine::cgroups::procs(&ctr.freezer().unwrap()), what);
    assert!(
        !cpengine::netlock::is_locked(&PathBuf::from(format!("/proc/{}/ns/net", ctr.init_pid)))
            .unwrap(),
        "{what}: network left locked"
    );
    let c = counter_in(&bundle.rootfs);
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&bundle.rootfs)
            > c + 1),
        "{what}: workload stuck"
    );
}

/// Removes a directory when the archive writer first reports progress (the CRIU dump is
/// over, the archive is being written into that directory).
struct RemoveDirOnProgress(PathBuf, std::sync::atomic::AtomicBool);

impl Progress for RemoveDirOnProgress {
    fn update(&self, _done: u64, _total: u64) {
        if !self.1.swap(true, std::sync::atomic::Ordering::SeqCst) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Records the mode of the staging directory while the archive is written.
struct StagingMode(PathBuf, std::sync::Mutex<Option<u32>>);

impl Progress for StagingMode {
    fn update(&self, _done: u64, _total: u64) {
        let mut m = self.1.lock().unwrap();
        if m.is_none() {
            *m = std::fs::read_dir(&self.0)
                .into_iter()
                .flatten()
                .flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(".cpengine-"))
                .and_then(|e| e.metadata().ok())
                .map(|md| md.permissions().mode() & 0o7777);
        }
    }
}

fn cli(state: &StateRoot) -> Command {
    let mut c = Command::new(cpengine_bin());
    c.arg("--state-root").arg(state.run.parent().unwrap());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_failures_are_clear_errors_and_leave_the_workload_untouched() {
    let engine = engine().await;
    let (bundle, id, c) = counting_container("cpe-x", "");
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();

    // Least privilege of what a checkpoint writes: the staging directory 0700 while it exists,
    // the archive 0600.
    let out = scratch("cpe-xout-");
    let output = out.path().join("c.tar");
    let mut o = ContainerCheckpointOptions::new(&output);
    o.state = Some(state.clone());
    let seen = std::sync::Arc::new(StagingMode(out.path().to_path_buf(), Default::default()));
    o.progress = Some(seen.clone() as cpengine::container::checkpoint::SharedProgress);
    checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
    assert_eq!(*seen.1.lock().unwrap(), Some(0o700), "staging mode");
    assert_eq!(
        std::fs::metadata(&output).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_file(&output).unwrap();

    // The destination directory removed while the archive is written.
    let doomed = out.path().join("doomed");
    std::fs::create_dir(&doomed).unwrap();
    let staging = scratch("cpe-xstg-");
    let mut o = ContainerCheckpointOptions::new(doomed.join("c.tar"));
    o.state = Some(state.clone());
    o.staging_dir = Some(staging.path().to_path_buf());
    o.progress = Some(std::sync::Arc::new(RemoveDirOnProgress(
        doomed.clone(),
        Default::default(),
    )));
    let e = checkpoint(&engine, &ctr, &o).await.unwrap_err();
    eprintln!("destination removed: {e}");
    assert!(
        matches!(
            e,
            Error::Archive(ArchiveError::Rename { .. } | ArchiveError::Sync { .. })
        ),
        "{e:?}"
    );
    assert!(!doomed.exists(), "the removed directory came back");
    assert!(names_in(staging.path()).is_empty(), "staging left");
    assert_untouched(&ctr, &bundle, "destination removed");

    // A timeout CRIU cannot meet, whatever the machine's load: it expires the first time the
    // request is waited on, and a dump cannot finish before then, since CRIU stops at its
    // first hook (`pre-dump`) until the engine answers it. CRIU is told to stop, the
    // container resumed.
    let mut o = ContainerCheckpointOptions::new(&output);
    o.state = Some(state.clone());
    o.flags.timeout = Duration::from_nanos(1);
    let e = checkpoint(&engine, &ctr, &o).await.unwrap_err();
    eprintln!("timeout: {e}");
    assert!(
        matches!(e.criu(), Some(cpengine::criu::CriuError::Timeout { .. })),
        "{e:?}"
    );
    assert!(
        names_in(out.path()).is_empty(),
        "{:?}",
        names_in(out.path())
    );
    assert_untouched(&ctr, &bundle, "timeout");

    // CRIU missing, CRIU too old: refused before the container is touched.
    let fake = scratch("cpe-xfake-");
    let old = fake.path().join("criu");
    std::fs::write(
        &old,
        "#!/usr/bin/env python3\n\
         import socket\n\
         s = socket.socket(fileno=3)\n\
         s.recv(4096)\n\
         s.send(bytes([0x08, 0x0a, 0x10, 0x01, 0x52, 0x04, 0x08, 0x03, 0x10, 0x11]))\n",
    )
    .unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (criu, needle) in [
        (PathBuf::from("/nonexistent/criu"), "criu not found"),
        (old.clone(), "3.17"),
    ] {
        let (st, _, err) = run(cli(&state)
            .env("CPENGINE_CRIU", &criu)
            .args(["checkpoint", &id, "--runc-root"])
            .arg(&c.root)
            .arg("-o")
            .arg(&output));
        assert!(!st.success());
        assert!(
            err.contains(needle) && err.contains("scripts/setup.sh"),
            "{err}"
        );
        assert!(!output.exists());
        assert_untouched(&ctr, &bundle, needle);
    }

    // A runc root that is not readable as a directory: a file, and a path through a file.
    let file_root = fake.path().join("not-a-dir");
    std::fs::write(&file_root, b"").unwrap();
    for root in [file_root.clone(), file_root.join("runc")] {
        let e = Container::find(&id, std::slice::from_ref(&root), &state).unwrap_err();
        assert!(
            matches!(e, ContainerError::RootUnreadable { .. }),
            "{}: {e:?}",
            root.display()
        );
        let (st, _, err) = run(cli(&state)
            .args(["checkpoint", &id, "--runc-root"])
            .arg(&root)
            .arg("-o")
            .arg(&output));
        assert!(!st.success());
        assert!(err.contains("not readable"), "{err}");
    }
    assert_untouched(&ctr, &bundle, "runc root unreadable");
    assert!(names_in(&state.run.join("journal")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_restores_clean_up_and_never_modify_the_archive() {
    let engine = engine().await;
    let data = scratch("cpe-xbind-");
    std::fs::write(data.path().join("f"), b"data").unwrap();
    let mut bundle = Bundle::busybox(COUNTER_SCRIPT);
    bundle.add_bind(data.path(), "/data");
    let id = unique_id("cpe-xr");
    let mut c = RuncContainer::run(&bundle, &id);
    assert!(wait_until(Duration::from_secs(10), || counter_in(
        &bundle.rootfs
    ) >= 3));
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-xrout-");
    let archive = out.path().join("c.tar");
    checkpoint(&engine, &ctr, &ContainerCheckpointOptions::new(&archive))
        .await
        .expect("checkpoint");
    c.destroy();
    let sum = fingerprint(&archive);
    // The restore binds another host directory at /data (the archive's own source is not used
    // unless trusted).
    let data2 = scratch("cpe-xbind2-");
    std::fs::write(data2.path().join("f"), b"mapped").unwrap();
    let opts = |new_id: &str, base: Option<&Path>| {
        let mut o = ContainerRestoreOptions::new(new_id, state.clone());
        o.base = base.map(|b| RootfsBase::Dir(b.to_path_buf()));
        o.relay_exe = Some(cpengine_bin());
        o.binds
            .map
            .insert("/data".into(), data2.path().to_path_buf());
        o
    };
    let left_nothing = |new_id: &str, what: &str| {
        assert_restore_left_nothing(&state, new_id, what);
        assert_eq!(fingerprint(&archive), sum, "{what}: archive modified");
    };
    let src = archive.display().to_string();

    // No base: the checkpoint's image is not in the store.
    let new_id = unique_id("cpe-xr1");
    let e = restore_archive(&engine, &src, &opts(&new_id, None), false)
        .await
        .unwrap_err();
    eprintln!("missing base: {e}");
    assert!(e.to_string().contains("--rootfs-base"), "{e}");
    left_nothing(&new_id, "missing base");
    // A base directory that does not exist.
    let e = restore_archive(
        &engine,
        &src,
        &opts(&new_id, Some(Path::new("/nonexistent/base"))),
        false,
    )
    .await
    .unwrap_err();
    eprintln!("base missing on disk: {e:?}");
    // The engine has no variant of its own for this yet: the most specific thing it says is
    // an I/O error of the overlay mount, not found.
    assert!(
        matches!(&e, Error::Io { what, source }
            if what.starts_with("mounting overlay at ")
                && source.kind() == std::io::ErrorKind::NotFound),
        "{e:?}"
    );
    left_nothing(&new_id, "base missing on disk");

    // A bind mount nobody named a source for: refused (the archive decides nothing of the
    // host), naming the destination and the archive's source.
    let mut unmapped = opts(&new_id, Some(&bundle.base));
    unmapped.binds.map.clear();
    let e = restore_archive(&engine, &src, &unmapped, false)
        .await
        .unwrap_err();
    eprintln!("unmapped bind: {e}");
    assert!(
        e.to_string()
            .contains(&format!("/data (from {})", data.path().display())),
        "{e}"
    );
    left_nothing(&new_id, "unmapped bind");

    // The archive trusted, its bind mount's source removed: CRIU cannot restore the mount.
    std::fs::rename(data.path(), data.path().with_extension("moved")).unwrap();
    let mut trusted = unmapped.clone();
    trusted.binds.trust_archive = true;
    let e = restore_archive(&engine, &src, &trusted, false)
        .await
        .unwrap_err();
    eprintln!("bind source removed: {e}");
    assert!(matches!(e, Error::Restore { .. }), "{e:?}");
    left_nothing(&new_id, "bind source removed");
    std::fs::rename(data.path().with_extension("moved"), data.path()).unwrap();

    // A corrupted image in a copy of the archive (the copy is what is corrupted).
    let bad = out.path().join("corrupt.tar");
    let mut bytes = std::fs::read(&archive).unwrap();
    let at = find(&bytes, b"checkpoint/pstree.img").expect("pstree.img member") + 512;
    for b in &mut bytes[at + 8..at + 24] {
        *b ^= 0xa5;
    }
    std::fs::write(&bad, &bytes).unwrap();
    let e = restore_archive(
        &engine,
        bad.to_str().unwrap(),
        &opts(&new_id, Some(&bundle.base)),
        false,
    )
    .await
    .unwrap_err();
    eprintln!("corrupted image: {e:?}");
    // The bytes hit are pstree.img's first entry length: the verifier decodes pstree.img
    // before CRIU runs and refuses it, naming the image.
    assert!(
        matches!(&e, Error::PolicyViolation(v) if v.image == "pstree.img"),
        "{e:?}"
    );
    left_nothing(&new_id, "corrupted image");

    // The archive itself still restores; a second restore under the same id is refused with a
    // typed error before anything is done, and the running one is untouched.
    let r = restore_archive(&engine, &src, &opts(&new_id, Some(&bundle.base)), false)
        .await
        .expect("restore");
    let e = restore_archive(&engine, &src, &opts(&new_id, Some(&bundle.base)), false)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::Container(ContainerError::AlreadyExists { .. })),
        "{e:?}"
    );
    let first = counter_in(&r.rootfs);
    assert!(wait_until(Duration::from_secs(5), || counter_in(&r.rootfs) > first + 1));
    // The container sees the directory the restore named, not the checkpointed one.
    assert_eq!(
        std::fs::read(format!("/proc/{}/root/data/f", r.pid)).unwrap(),
        b"mapped"
    );
    assert_eq!(fingerprint(&archive), sum);
    manage::delete(&state, &new_id, true).await.unwrap();
    kill_relays_under(state.run.parent().unwrap());
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `cpengine inspect` keeps only CAP_DAC_READ_SEARCH in every thread while it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_runs_with_least_privilege() {
    let engine = engine().await;
    // A workload with enough memory that the search takes a while.
    let w = Workload::start(&["--mem", "256"]);
    let images = scratch("cpe-ximg-");
    let mut o = cpengine::CheckpointOptions::new(w.pid, images.path());
    o.flags.leave_running = true;
    engine.dump(&o).await.expect("dump");
    let mut child = Command::new(cpengine_bin())
        .arg("inspect")
        .arg(images.path())
        .args(["--search", "cpe-not-in-there", "--memory", "--json"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let cap = |task: &Path, key: &str| -> Option<u64> {
        let s = std::fs::read_to_string(task.join("status")).ok()?;
        let v = s.lines().find_map(|l| l.strip_prefix(key))?.trim();
        u64::from_str_radix(v, 16).ok()
    };
    let mut samples = 0;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        // Once the async runtime's threads exist, the drop has happened (it precedes them).
        if tasks.len() > 1 {
            for t in &tasks {
                for key in ["CapEff:", "CapPrm:", "CapBnd:"] {
                    if let Some(v) = cap(t, key) {
                        // CAP_DAC_READ_SEARCH is capability 2.
                        assert_eq!(v, 1 << 2, "{}: {key} {v:#x}", t.display());
                        samples += 1;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.wait().unwrap().success());
    assert!(
        samples >= 6,
        "inspect finished before its capabilities were sampled"
    );
    eprintln!("inspect: {samples} capability samples, all CAP_DAC_READ_SEARCH only");
}
