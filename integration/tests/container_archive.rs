//! Container checkpoints to archives and restores from them, against real runc, CRIU and
//! Podman: the whole path a user takes with `cpengine checkpoint` / `cpengine restore`.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cpengine::Error;
use cpengine::archive::{self, Compression};
use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
use cpengine::container::restore::{ContainerRestoreOptions, RootfsBase, restore_archive};
use cpengine::container::state::StateRoot;
use cpengine::container::{Container, ContainerError, Status, manage};
use cpengine_integration::runc::*;
use cpengine_integration::*;

/// Changes the container makes to its rootfs before the checkpoint.
const CHANGES: &str = "echo changed > /etc/motd; rm /etc/to-delete; mkdir -p /root/dir; echo new > /root/dir/new.txt; ";

fn state() -> StateRoot {
    StateRoot::at(scratch("cpe-state-").keep())
}

fn restore_opts(id: &str, state: &StateRoot, base: &Path) -> ContainerRestoreOptions {
    let mut o = ContainerRestoreOptions::new(id, state.clone());
    o.base = Some(RootfsBase::Dir(base.to_path_buf()));
    o.relay_exe = Some(cpengine_bin());
    o
}

fn tar_listing(path: &Path) -> Vec<(String, u32, char)> {
    let (st, out, err) = run(Command::new("tar").arg("-tvf").arg(path));
    assert!(st.success(), "{err}");
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let mode = f[0];
            let kind = mode.chars().next().unwrap();
            let perm = mode[1..]
                .chars()
                .fold(0u32, |acc, c| (acc << 1) | u32::from(c != '-'));
            (f.last().unwrap().to_string(), perm, kind)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_to_an_archive_and_restore_from_it() {
    let engine = engine().await;
    let bundle = Bundle::busybox(&format!("{CHANGES}{COUNTER_SCRIPT}"));
    let id = unique_id("cpe-a");
    let c = RuncContainer::run(&bundle, &id);
    assert!(wait_until(Duration::from_secs(10), || counter_in(
        &bundle.rootfs
    ) >= 5));
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let out_dir = scratch("cpe-out-");
    let output = out_dir.path().join("checkpoint.tar");
    let mut o = ContainerCheckpointOptions::new(&output);
    o.state = Some(state.clone());
    let report = checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
    eprintln!("{report}");
    let at_checkpoint = counter_in(&bundle.rootfs);

    // Leave-running: still counting, not frozen; staging gone; only the archive in the dir.
    assert!(wait_until(Duration::from_secs(5), || counter_in(
        &bundle.rootfs
    ) > at_checkpoint + 2));
    assert_eq!(ctr.status(), Status::Running);
    let left: Vec<_> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("checkpoint.tar")],
        "staging or temp files left"
    );
    assert!(report.frozen > Duration::ZERO && report.frozen < report.total);
    assert!(
        report.rootfs_files >= 3 && report.rootfs_deleted == 1,
        "{report:?}"
    );

    // The archive's layout is what the ecosystem reads.
    let listing = tar_listing(&output);
    assert_eq!(
        listing[0].0, "checkpoint/",
        "explicit checkpoint dir entry first"
    );
    assert_eq!(listing[0].2, 'd');
    for (name, perm, kind) in &listing {
        assert!(!name.starts_with("./") && !name.starts_with('/'), "{name}");
        assert!(matches!(kind, '-' | 'd'), "{name} is not a file or dir");
        if *kind == '-' {
            assert_eq!(*perm, 0o600, "{name} mode {perm:o}");
        }
    }
    for m in [
        "config.dump",
        "spec.dump",
        "stats-dump",
        "dump.log",
        "rootfs-diff.tar",
        "deleted.files",
        "checkpoint/inventory.img",
        "checkpoint/descriptors.json",
    ] {
        assert!(
            listing.iter().any(|(n, _, _)| n == m),
            "{m} missing from {listing:?}"
        );
    }
    let info = archive::read_info(&output).unwrap();
    assert_eq!(info.config.id, id);
    assert_eq!(info.config.runtime, "runc");
    assert!(!info.config.checkpointed_time.is_zero());
    assert_eq!(
        info.deleted_files.as_deref(),
        Some(&["/etc/to-delete".to_string()][..])
    );
    let ann = archive::annotations(&info.spec).expect("spec.dump has annotations");
    assert_eq!(
        ann.get("io.container.manager").and_then(|v| v.as_str()),
        Some("cpengine")
    );
    assert_eq!(
        ann.get("io.kubernetes.cri.container-name")
            .and_then(|v| v.as_str()),
        Some(id.as_str())
    );
    assert!(ann.contains_key("io.cpengine.criu.version"));
    let config: serde_json::Value = {
        let (st, out, _) = run(Command::new("tar")
            .arg("-xOf")
            .arg(&output)
            .arg("config.dump"));
        assert!(st.success());
        serde_json::from_str(&out).unwrap()
    };
    for k in [
        "id",
        "name",
        "createdTime",
        "checkpointedTime",
        "restoredTime",
        "restored",
    ] {
        assert!(config.get(k).is_some(), "config.dump lacks {k}: {config}");
    }
    assert!(config["restored"].is_boolean());

    // The original goes away; the checkpoint brings it back with memory and files intact.
    drop(c);
    let new_id = unique_id("cpe-b");
    let r = restore_archive(
        &engine,
        output.to_str().unwrap(),
        &restore_opts(&new_id, &state, &bundle.base),
        false,
    )
    .await
    .expect("restore");
    let first = counter_in(&r.rootfs);
    assert!(
        first >= at_checkpoint.saturating_sub(1) && first <= at_checkpoint + 1,
        "resumed at {first}, checkpoint at {at_checkpoint}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&r.rootfs) > first + 2),
        "not counting"
    );
    assert_eq!(
        std::fs::read_to_string(r.rootfs.join("etc/motd")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        std::fs::read_to_string(r.rootfs.join("root/dir/new.txt")).unwrap(),
        "new\n"
    );
    assert!(
        !r.rootfs.join("etc/to-delete").exists(),
        "deleted file came back"
    );
    manage::delete(&state, &new_id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_archives_restore_too() {
    let engine = engine().await;
    let (bundle, id, c) = counting_container("cpe-z", "");
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    for comp in [Compression::Zstd, Compression::Gzip] {
        let output = out.path().join(format!("ckpt-{comp}.tar"));
        let mut o = ContainerCheckpointOptions::new(&output);
        o.compression = comp;
        checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
        assert_eq!(archive::read_info(&output).unwrap().compression, comp);
    }
    drop(c);
    let new_id = unique_id("cpe-zr");
    let path = out.path().join("ckpt-zstd.tar");
    let r = restore_archive(
        &engine,
        path.to_str().unwrap(),
        &restore_opts(&new_id, &state, &bundle.base),
        false,
    )
    .await
    .expect("restore zstd");
    let first = counter_in(&r.rootfs);
    assert!(wait_until(Duration::from_secs(5), || counter_in(&r.rootfs) > first + 2));
    manage::delete(&state, &new_id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leave_running_the_container_is_gone_after_the_checkpoint() {
    let engine = engine().await;
    let (_bundle, id, c) = counting_container("cpe-k", "");
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    let mut o = ContainerCheckpointOptions::new(out.path().join("c.tar"));
    o.flags.leave_running = false;
    checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
    // Its init was re-parented to us (the test is a subreaper): reap it.
    let pid = c.pid;
    assert!(
        wait_until(Duration::from_secs(5), || {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            !cpengine::proc::exists(pid)
        }),
        "container still running"
    );
    assert!(!c.root.join(&id).exists(), "runc state not deleted");
}

/// Whether `e` says a disk was full: an ENOSPC anywhere in its chain of causes, or CRIU's
/// failure whose log says so.
fn out_of_space(e: &cpengine::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
        {
            return true;
        }
        cause = c.source();
    }
    e.criu()
        .and_then(|c| c.log())
        .is_some_and(|l| format!("{l:?}").contains("No space left on device"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_paths_leave_the_workload_running_and_nothing_behind() {
    let engine = engine().await;
    let state = state();
    // Unknown container id.
    let err = Container::find("no-such-ctr", &[], &state).unwrap_err();
    assert!(matches!(err, ContainerError::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-ctr"));

    let (bundle, id, c) = counting_container("cpe-f", "");
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();

    // Destination directory missing: refused before anything is frozen.
    let err = checkpoint(
        &engine,
        &ctr,
        &ContainerCheckpointOptions::new("/nonexistent-dir/x.tar"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");

    // Disk full: a tmpfs for staging and destination, then one for the destination only, with
    // staging elsewhere (the archive does not fit, after the container was already resumed).
    // Each is filled up first, so that nothing fits whatever the archive's size (a 200 KiB
    // tmpfs once held this whole archive).
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let mut mounts = Vec::new();
    for (size, separate_staging) in [("64k", false), ("200k", true)] {
        let full = scratch("cpe-full-").keep();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&full)
            .status()
            .unwrap();
        assert!(st.success());
        mounts.push(Umount(full.clone()));
        {
            use std::io::Write;
            let mut filler = std::fs::File::create(full.join("filler")).unwrap();
            let block = [0u8; 4096];
            let e = loop {
                if let Err(e) = filler.write_all(&block).and_then(|()| filler.sync_all()) {
                    break e;
                }
            };
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
        }
        let staging = scratch("cpe-stg-");
        let mut o = ContainerCheckpointOptions::new(full.join("c.tar"));
        o.state = Some(state.clone());
        if separate_staging {
            o.staging_dir = Some(staging.path().to_path_buf());
        }
        let err = checkpoint(&engine, &ctr, &o).await.unwrap_err();
        eprintln!("disk full ({size}, separate staging {separate_staging}): {err:?}");
        assert!(
            out_of_space(&err),
            "the error does not say the disk is full: {err:?}"
        );
        if separate_staging {
            // Only the archive's own write can fail.
            assert!(
                matches!(err, Error::Archive(archive::ArchiveError::Write { .. })),
                "{err:?}"
            );
        } else {
            // The staging directory's first file fails (the engine names only what it wrote).
            assert!(
                matches!(&err, Error::Io { what, .. } if what.starts_with("writing ")),
                "{err:?}"
            );
        }
        assert_eq!(
            cpengine_integration::faults::names_in(&full),
            ["filler"],
            "something was left on the full disk"
        );
        assert!(
            std::fs::read_dir(staging.path()).unwrap().next().is_none(),
            "staging left behind"
        );
    }
    // The workload runs, unfrozen, untraced.
    let before = counter_in(&bundle.rootfs);
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&bundle.rootfs)
            > before + 2),
        "workload stuck"
    );
    assert_eq!(ctr.status(), Status::Running);
    assert_eq!(state_of(c.pid).1, 0, "left traced");
    // No journal entry is left behind either.
    assert!(
        std::fs::read_dir(state.run.join("journal"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );

    // Not running: the container is stopped but not deleted.
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&c.root)
        .args(["kill", &id, "KILL"])
        .status();
    assert!(wait_until(Duration::from_secs(5), || Container::find(
        &id,
        std::slice::from_ref(&c.root),
        &state
    )
    .unwrap()
    .status()
        == Status::Stopped));
    let stopped = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let err = checkpoint(
        &engine,
        &stopped,
        &ContainerCheckpointOptions::new(scratch("cpe-o-").path().join("x.tar")),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::Container(ContainerError::NotRunning { .. })),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_directory_rootfs_is_diffed_against_its_base() {
    let engine = engine().await;
    let bundle = Bundle::busybox(&format!("{CHANGES}{COUNTER_SCRIPT}"));
    // Replace the overlay by a plain copy of the base.
    let plain = scratch("cpe-plain-");
    let root = plain.path().join("rootfs");
    let st = Command::new("cp")
        .args(["-a"])
        .arg(&bundle.base)
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    let r = root.display().to_string();
    let mut b = bundle;
    b.edit_spec(|s| s["root"]["path"] = r.into());
    let id = unique_id("cpe-p");
    let c = RuncContainer::run(&b, &id);
    assert!(wait_until(Duration::from_secs(10), || counter_in(&root) >= 3));
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    let output = out.path().join("c.tar");
    // Without a base the plain rootfs cannot be diffed: a clear error.
    let err = checkpoint(&engine, &ctr, &ContainerCheckpointOptions::new(&output))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--rootfs-base"), "{err}");
    assert!(!output.exists());
    let mut o = ContainerCheckpointOptions::new(&output);
    o.rootfs_base = Some(RootfsBase::Dir(b.base.clone()));
    let report = checkpoint(&engine, &ctr, &o).await.expect("checkpoint");
    assert!(
        report.rootfs_deleted == 1 && report.rootfs_files >= 3,
        "{report:?}"
    );
    drop(c);
    let new_id = unique_id("cpe-pr");
    let r = restore_archive(
        &engine,
        output.to_str().unwrap(),
        &restore_opts(&new_id, &state, &b.base),
        false,
    )
    .await
    .expect("restore");
    assert_eq!(
        std::fs::read_to_string(r.rootfs.join("etc/motd")).unwrap(),
        "changed\n"
    );
    assert!(!r.rootfs.join("etc/to-delete").exists());
    let first = counter_in(&r.rootfs);
    assert!(wait_until(Duration::from_secs(5), || counter_in(&r.rootfs) > first + 2));
    manage::delete(&state, &new_id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_podman_checkpoint_restores_with_cpengine() {
    let engine = engine().await;
    let p = cpengine_integration::podman::Podman::new();
    let work = scratch("cpe-podman-r-");
    let (base, tarball) = cpengine_integration::podman::busybox_rootfs(work.path());
    let image = "localhost/cpe-busybox-r:latest";
    p.ok(&[
        "import",
        "--change",
        r#"CMD ["/bin/sh"]"#,
        tarball.to_str().unwrap(),
        image,
    ]);
    let name = format!("cpe-pod-{}", std::process::id());
    p.ok(&["run", "-d", "--name", &name, image, "sh", "-c",
        "echo new > /newfile; rm /etc/deleteme; i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done"]);
    assert!(wait_until(Duration::from_secs(20), || {
        let (st, out, _) = run(p.cmd().args(["exec", &name, "cat", "/tmp/counter"]));
        st.success() && out.trim().parse::<u64>().unwrap_or(0) >= 5
    }));
    let export = work.path().join("podman.tar.zst");
    // Podman stops the container after the checkpoint; its files stay (bind sources for /etc/hosts…).
    p.ok(&[
        "container",
        "checkpoint",
        "--export",
        export.to_str().unwrap(),
        &name,
    ]);
    let info = archive::read_info(&export).unwrap();
    assert_eq!(info.engine, archive::EngineKind::Podman);

    let state = state();
    let id = unique_id("cpe-fromp");
    let r = restore_archive(
        &engine,
        export.to_str().unwrap(),
        &{
            // Podman runs containers without no_new_privs: the request (here the test, on the
            // CLI --allow-new-privs) must allow that, or the restore policy refuses them.
            let mut o = restore_opts(&id, &state, &base);
            o.policy.no_new_privs = false;
            o
        },
        false,
    )
    .await
    .expect("restoring a podman checkpoint");
    let first = counter_in(&r.rootfs);
    assert!(first >= 5, "counter restarted: {first}");
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&r.rootfs) > first + 2),
        "restored podman container does not run"
    );
    assert_eq!(
        std::fs::read_to_string(r.rootfs.join("newfile")).unwrap(),
        "new\n"
    );
    assert!(!r.rootfs.join("etc/deleteme").exists());
    manage::delete(&state, &id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_shows_the_summary_and_deep_views_of_a_container_archive() {
    let engine = engine().await;
    // A secret kept only in the shell's memory (a variable), never written anywhere.
    let (_bundle, id, c) = counting_container("cpe-i", "secret=cpe-needle-$((6*7))-x; ");
    let state = state();
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).unwrap();
    let out = scratch("cpe-out-");
    let output = out.path().join("c.tar");
    checkpoint(&engine, &ctr, &ContainerCheckpointOptions::new(&output))
        .await
        .expect("checkpoint");

    // The show view.
    let (st, text, err) = run(Command::new(cpengine_bin()).arg("inspect").arg(&output));
    assert!(st.success(), "{err}");
    for needle in [
        id.as_str(),
        "cpengine",
        "runc",
        "checkpoint size",
        "root fs diff size",
        "freezing time",
    ] {
        assert!(
            text.to_lowercase().contains(&needle.to_lowercase()),
            "{needle} not in:\n{text}"
        );
    }
    // Deep views through the archive: the shell with its command line, its files, the mounts
    // from spec.dump, and the secret found in its memory.
    let (st, json, err) = run(Command::new(cpengine_bin())
        .arg("inspect")
        .arg(&output)
        .args([
            "--ps-tree",
            "--files",
            "--mounts",
            "--search",
            "cpe-needle-42-x",
            "--json",
        ]));
    assert!(st.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["id"].as_str().map(|s| s.len()),
        Some(12.min(id.len())),
        "{v}"
    );
    let tree = v["process_tree"].to_string();
    assert!(
        tree.contains("sh -c") && tree.contains("secret=cpe-needle"),
        "{tree}"
    );
    // The shell's own descriptors, read from the images: its stdout and stderr are the one
    // pipe runc was given (RuncContainer::run), and its root is the container's "/".
    let fds = &v["file_descriptors"];
    let shell = fds
        .as_array()
        .and_then(|a| {
            a.iter().find(|p| {
                p["command"]
                    .as_str()
                    .is_some_and(|c| c == "sh" || c.starts_with("sh "))
            })
        })
        .unwrap_or_else(|| panic!("no sh among the processes' files: {fds}"));
    let fd = |n: &str| {
        shell["open_files"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["fd"] == n))
            .unwrap_or_else(|| panic!("fd {n} missing: {shell}"))
            .clone()
    };
    let (out1, out2) = (fd("1"), fd("2"));
    assert_eq!(out1["type"], "PIPE", "{shell}");
    assert!(
        out1["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("pipe:[")),
        "{shell}"
    );
    assert_eq!(
        out1["path"], out2["path"],
        "stdout and stderr are one pipe: {shell}"
    );
    assert_eq!(fd("root")["path"], "/", "{shell}");
    assert!(v["mounts"].to_string().contains("/proc"), "{}", v["mounts"]);
    let hits = v["search"]["hits"].as_array().map_or(0, Vec::len);
    assert!(hits >= 1, "secret not found in memory: {}", v["search"]);
    let (st, json, err) = run(Command::new(cpengine_bin())
        .arg("inspect")
        .arg(&output)
        .args(["--search", "cpe-not-there-9", "--json"]));
    assert!(st.success(), "{err}");
    // A search that found nothing did search: the shell's memory was read, and no hit.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let search = &v["search"];
    assert_eq!(search["pattern"], "cpe-not-there-9", "{search}");
    assert_eq!(search["hits"].as_array().map(Vec::len), Some(0), "{search}");
    assert!(
        search["processes_searched"].as_u64().unwrap_or(0) >= 1
            && search["bytes_scanned"].as_u64().unwrap_or(0) > 0,
        "nothing was searched: {search}"
    );
}
