//! The `cpengine` command line against real CRIU.

use std::process::Command;

use cpengine_integration::*;

#[test]
fn check_reports_the_binary_version_and_features() {
    init();
    let (status, out, err) = run(Command::new(cpengine_bin()).arg("check"));
    assert!(status.success(), "{out}\n{err}");
    assert!(out.contains("/usr/local/sbin/criu"), "{out}");
    assert!(out.contains("4.2.1"), "{out}");
    assert!(
        out.contains("lazy_pages") && out.contains("mem_track") && out.contains("pidfd_store"),
        "{out}"
    );

    let (status, out, _) = run(Command::new(cpengine_bin()).args(["check", "--json"]));
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "4.2.1");
    assert_eq!(v["supported"], true);
    assert!(v["features"]["lazy_pages"].is_boolean());
}

#[test]
fn check_fails_with_a_hint_when_criu_is_missing() {
    init();
    let (status, out, err) = run(Command::new(cpengine_bin())
        .arg("check")
        .env("CPENGINE_CRIU", "/nonexistent/criu"));
    assert!(!status.success());
    let all = format!("{out}{err}");
    assert!(all.contains("/nonexistent/criu"), "{all}");
    assert!(all.contains("scripts/setup.sh"), "{all}");
}

/// A fake CRIU that answers VERSION with 3.17 (Debian bookworm's): too old.
#[test]
fn check_fails_with_a_hint_when_criu_is_too_old() {
    init();
    let dir = scratch("cpe-fake-");
    let fake = dir.path().join("criu");
    std::fs::write(
        &fake,
        "#!/usr/bin/env python3\n\
         import socket\n\
         s = socket.socket(fileno=3)\n\
         s.recv(4096)\n\
         # criu_resp{type=VERSION, success=true, version{major 3, minor 17}}\n\
         s.send(bytes([0x08, 0x0a, 0x10, 0x01, 0x52, 0x04, 0x08, 0x03, 0x10, 0x11]))\n",
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&fake).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (status, out, err) = run(Command::new(cpengine_bin())
        .arg("check")
        .env("CPENGINE_CRIU", &fake));
    assert!(!status.success(), "{out}");
    let all = format!("{out}{err}");
    assert!(all.contains("3.17"), "{all}");
    assert!(all.contains("too old"), "{all}");
    assert!(all.contains("scripts/setup.sh"), "{all}");
}

#[test]
fn dump_of_a_missing_pid_fails_naming_it() {
    init();
    let dir = scratch("cpe-img-");
    let (status, _, err) = run(Command::new(cpengine_bin())
        .args(["dump", "4194305", "--images-dir"])
        .arg(dir.path()));
    assert!(!status.success());
    assert!(err.contains("no process with pid 4194305"), "{err}");
}

#[test]
fn pre_dump_through_the_cli_follows_the_kernel_feature() {
    init();
    let (_, check, _) = run(Command::new(cpengine_bin()).args(["check", "--json"]));
    let check: serde_json::Value = serde_json::from_str(&check).expect("check --json");
    let mem_track = check["features"]["mem_track"]
        .as_bool()
        .expect("features.mem_track in check --json");
    let w = Workload::start(&["--mem", "4"]);
    let dir = scratch("cpe-pre-");
    let (status, _, err) = run(Command::new(cpengine_bin())
        .args(["dump", &w.pid.to_string(), "--pre-dump", "--images-dir"])
        .arg(dir.path().join("pre")));
    if mem_track {
        assert!(status.success(), "{err}");
    } else {
        // This machine: no soft-dirty bit, so a clear refusal and an untouched workload.
        assert!(!status.success());
        assert!(
            err.contains("mem_track") && err.contains("not supported"),
            "{err}"
        );
        assert!(w.advances_past("counter", w.counter()), "workload stopped");
    }
}

#[test]
fn dump_and_restore_through_the_cli() {
    init();
    let mut w = Workload::start(&[]);
    let images = scratch("cpe-img-");
    let (status, out, err) = run(Command::new(cpengine_bin())
        .args([
            "dump",
            &w.pid.to_string(),
            "--leave-running",
            "--json",
            "--images-dir",
        ])
        .arg(images.path()));
    assert!(status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["criu"]["pages_written"].as_u64().unwrap() > 0);
    assert!(report["criu"]["frozen_ms"].as_f64().unwrap() > 0.0);
    let at_dump = w.counter();
    w.kill();

    let (status, out, err) = run(Command::new(cpengine_bin())
        .args(["restore", "--images-dir"])
        .arg(images.path()));
    assert!(status.success(), "{err}");
    let pid: i32 = out
        .lines()
        .find_map(|l| {
            l.strip_prefix("restored ")
                .and_then(|r| r.rsplit(' ').next())
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {out}"));
    // The CLI exited; the restored tree lives on (re-parented to us, the subreaper).
    w.adopt(pid);
    assert!(
        w.advances_past("counter", at_dump),
        "restored workload does not count"
    );
}

#[test]
fn restore_refuses_an_archive_that_binds_host_paths_naming_the_way_out() {
    init();
    let archive =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/bind-host-root.tar");
    let (base, state) = (scratch("cpe-base-"), scratch("cpe-state-"));
    let (status, _, err) = run(Command::new(cpengine_bin())
        .arg("restore")
        .arg(&archive)
        .args(["--id", "cpe-bind-refused", "--rootfs-base"])
        .arg(base.path())
        .arg("--state-root")
        .arg(state.path()));
    assert!(!status.success());
    assert!(
        err.contains("/host (from /)") && err.contains("--mount SRC:DEST"),
        "{err}"
    );
    // Refused before anything was created.
    assert!(
        !state
            .path()
            .join("lib/containers/cpe-bind-refused")
            .exists()
    );
    assert!(
        !state
            .path()
            .join("run/containers/cpe-bind-refused")
            .exists()
    );
}

#[test]
fn list_shows_the_archives_of_a_directory_and_skips_what_is_not_one() {
    init();
    let dir = scratch("cpe-list-");
    let spec = br#"{"ociVersion":"1.0.2","root":{"path":"rootfs"},"annotations":{"io.container.manager":"cri-o","io.kubernetes.cri-o.Metadata":"{\"name\":\"web\",\"attempt\":0}","io.kubernetes.pod.name":"shop","io.kubernetes.pod.namespace":"prod"}}"#;
    let config = br#"{"id":"0123456789abcdef","name":"k8s_web","createdTime":"2026-11-22T10:00:00Z","checkpointedTime":"2026-11-22T10:05:00Z"}"#;
    let good = dir
        .path()
        .join("checkpoint-shop_prod-web-2026-11-22T10:05:00Z.tar");
    std::fs::write(
        &good,
        cpengine_integration::corpus::archive_with(Vec::new(), spec, config),
    )
    .unwrap();
    std::fs::write(dir.path().join("junk.tar"), b"not a tar at all").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();

    let (status, out, err) = run(Command::new(cpengine_bin()).arg("list").arg(dir.path()));
    assert!(status.success(), "{err}");
    let row = out
        .lines()
        .find(|l| l.contains("checkpoint-shop_prod-web"))
        .unwrap_or_else(|| panic!("archive not listed: {out}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..5],
        ["prod", "shop", "web", "cri-o", "2026-11-22T10:05:00Z"],
        "{row}"
    );
    assert!(
        out.lines().next().unwrap().starts_with("NAMESPACE"),
        "{out}"
    );
    assert!(err.contains("skipped") && err.contains("junk.tar"), "{err}");
    assert!(!out.contains("notes.txt"), "{out}");

    let (status, out, _) = run(Command::new(cpengine_bin())
        .args(["list", "--json"])
        .arg(dir.path()));
    assert!(status.success());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["container"], "web");
    assert_eq!(rows[0]["pod"], "shop");
    assert_eq!(
        rows[0]["archive_bytes"].as_u64().unwrap(),
        std::fs::metadata(&good).unwrap().len()
    );

    let (status, _, err) =
        run(Command::new(cpengine_bin()).args(["list", "/nonexistent/checkpoints"]));
    assert!(!status.success());
    assert!(err.contains("/nonexistent/checkpoints"), "{err}");
}
