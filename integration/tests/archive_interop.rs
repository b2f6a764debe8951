//! Reading other engines' archives: a real Podman checkpoint made on this machine, and
//! containerd- and CRI-O-layout archives built here to their documented layouts.

use std::io::Write;

use std::process::Command;

use cpengine::archive::{self, Compression, EngineKind, Limits};
use cpengine::rootfs;
use cpengine_integration::podman::{Podman, busybox_rootfs};
use cpengine_integration::{cpengine_bin, run, scratch};

#[test]
fn reads_a_real_podman_checkpoint() {
    let p = Podman::new();
    let work = scratch("cpe-podman-work-");
    let (base, tarball) = busybox_rootfs(work.path());
    let image = "localhost/cpe-busybox:latest";
    p.ok(&[
        "import",
        "--change",
        r#"CMD ["/bin/sh"]"#,
        tarball.to_str().unwrap(),
        image,
    ]);
    let name = format!("cpe-arch-{}", std::process::id());
    p.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        image,
        "sh",
        "-c",
        "echo new > /newfile; rm /etc/deleteme; echo changed > /etc/motd; while sleep 1; do :; done",
    ]);
    // Let the shell make its changes before the checkpoint.
    assert!(cpengine_integration::wait_until(
        std::time::Duration::from_secs(20),
        || {
            let (st, out, _) = run(p.cmd().args(["exec", &name, "cat", "/newfile"]));
            st.success() && out.trim() == "new"
        }
    ));
    let export = work.path().join("podman-ckpt.tar.zst");
    p.ok(&[
        "container",
        "checkpoint",
        "--export",
        export.to_str().unwrap(),
        &name,
    ]);

    let info = archive::read_info(&export).unwrap();
    assert_eq!(info.compression, Compression::Zstd, "podman's default");
    assert_eq!(info.engine, EngineKind::Podman);
    assert_eq!(info.config.name, name);
    assert_eq!(info.identity.container_name, name);
    assert_eq!(info.config.runtime, "runc");
    assert_eq!(info.config.id.len(), 64);
    assert!(
        !info.config.rootfs_image_ref.is_empty(),
        "rootfsImageID accepted"
    );
    assert!(info.checkpoint_size > 0 && info.memory_pages_size > 0);
    assert!(info.has_stats_dump);
    assert!(info.has_rootfs_diff && info.rootfs_diff_size > 0);
    assert_eq!(info.log_member.as_deref(), Some("ctr.log"));
    let stats = info.dump_stats().unwrap().expect("dump statistics");
    assert!(stats.pages_written > 0);

    let x = archive::extract(&export, &work.path().join("x"), &Limits::default()).unwrap();
    assert!(x.images_dir.join("inventory.img").is_file());
    assert!(x.images_dir.join("descriptors.json").is_file());
    assert_eq!(x.deleted, ["/etc/deleteme"]);
    assert!(x.log.as_ref().unwrap().ends_with("ctr.log"));
    assert!(x.members.iter().any(|m| m == "network.status"));

    // Podman's diff applies onto the base like a CRI-O/Podman restore would.
    let target = work.path().join("restored-rootfs");
    assert!(
        Command::new("cp")
            .arg("-a")
            .arg(&base)
            .arg(&target)
            .status()
            .unwrap()
            .success()
    );
    rootfs::apply(
        &target,
        std::fs::File::open(x.rootfs_diff.as_ref().unwrap()).unwrap(),
        &x.deleted,
    )
    .unwrap();
    assert_eq!(std::fs::read(target.join("newfile")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read(target.join("etc/motd")).unwrap(),
        b"changed\n"
    );
    assert!(!target.join("etc/deleteme").exists());

    // The CLI view.
    let (st, out, err) =
        run(Command::new(cpengine_bin()).args(["inspect", export.to_str().unwrap(), "--json"]));
    assert!(st.success(), "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["container_name"], name);
    assert_eq!(v["engine"], "podman");
    assert_eq!(v["id"].as_str().unwrap().len(), 12);
    assert!(v["statistics"]["pages_written"].as_u64().unwrap() > 0);
    let (st, out, _) =
        run(Command::new(cpengine_bin()).args(["inspect", export.to_str().unwrap()]));
    assert!(st.success());
    assert!(out.contains(&name) && out.contains("podman"), "{out}");
}

/// A tar member for hand-built peer archives.
fn member(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, data).unwrap();
}

fn dir(b: &mut tar::Builder<Vec<u8>>, name: &str, mode: u32) {
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::Directory);
    b.append_data(&mut h, name, &b""[..]).unwrap();
}

#[test]
fn reads_a_containerd_layout_archive() {
    let t = tempfile::tempdir().unwrap();
    // The nested diff: a gzip OCI layer with a whiteout and an opaque marker.
    let mut layer = tar::Builder::new(Vec::new());
    dir(&mut layer, "etc/", 0o755);
    member(&mut layer, "etc/.wh.deleteme", b"");
    dir(&mut layer, "data/", 0o755);
    member(&mut layer, "data/.wh..wh..opq", b"");
    member(&mut layer, "data/new", b"fresh");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer.into_inner().unwrap()).unwrap();
    let diff = gz.finish().unwrap();

    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "checkpoint/", 0o600); // checkpointctl#153: no x bit
    member(&mut b, "checkpoint/inventory.img", b"inv");
    member(&mut b, "checkpoint/pages-1.img", &[1u8; 8192]);
    member(
        &mut b,
        "config.dump",
        br#"{"id":"0123456789abcdef0123","name":"ctr_pod_ns_uid_0","rootfsImage":"docker.io/library/busybox:latest","rootfsImageRef":"docker.io/library/busybox@sha256:00","rootfsImageName":"docker.io/library/busybox:latest","runtime":"io.containerd.runc.v2","createdTime":"2026-08-01T00:00:00.123Z","checkpointedTime":"2026-08-01T00:01:00Z","restoredTime":"0001-01-01T00:00:00Z","restored":false}"#,
    );
    member(
        &mut b,
        "spec.dump",
        br#"{"ociVersion":"1.2.0","annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.container-name":"ctr","io.kubernetes.cri.sandbox-name":"pod","io.kubernetes.cri.sandbox-namespace":"ns"}}"#,
    );
    member(
        &mut b,
        "status.dump",
        br#"{"id":"0123","metadata":{"name":"ctr","attempt":0},"state":1,"image":{"image":"docker.io/library/busybox:latest"},"image_ref":"docker.io/library/busybox@sha256:00","labels":null,"annotations":{"a":"b"}}"#,
    );
    member(&mut b, "status", br#"{"Pid":12,"ExitCode":0}"#);
    member(&mut b, "container.log", b"log line\n");
    member(&mut b, "dump.log", b"criu\n");
    member(&mut b, "stats-dump", b"");
    member(&mut b, "rootfs-diff.tar", &diff);
    let path = t.path().join("containerd.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();

    let info = archive::read_info(&path).unwrap();
    assert_eq!(info.engine, EngineKind::Containerd);
    assert_eq!(info.identity.container_name, "ctr");
    assert_eq!(info.identity.namespace.as_deref(), Some("ns"));
    assert_eq!(info.rootfs_diff_size, diff.len() as u64);
    assert_eq!(info.memory_pages_size, 8192);
    assert_eq!(
        info.status
            .as_ref()
            .unwrap()
            .metadata
            .as_ref()
            .unwrap()
            .name,
        "ctr"
    );
    assert_eq!(info.log_member.as_deref(), Some("container.log"));

    let x = archive::extract(&path, &t.path().join("x"), &Limits::default()).unwrap();
    assert!(x.deleted.is_empty());
    assert!(x.log.unwrap().ends_with("container.log"));
    assert!(
        x.images_dir.join("inventory.img").is_file(),
        "dir forced u+rwx"
    );

    let root = t.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("data")).unwrap();
    std::fs::write(root.join("etc/deleteme"), b"x").unwrap();
    std::fs::write(root.join("data/old"), b"x").unwrap();
    let rep = rootfs::apply(
        &root,
        std::fs::File::open(x.rootfs_diff.unwrap()).unwrap(),
        &x.deleted,
    )
    .unwrap();
    assert_eq!(rep.compression, Compression::Gzip);
    assert!(!root.join("etc/deleteme").exists());
    assert!(!root.join("etc/.wh.deleteme").exists());
    assert!(!root.join("data/old").exists());
    assert_eq!(std::fs::read(root.join("data/new")).unwrap(), b"fresh");
}

#[test]
fn reads_a_crio_layout_archive() {
    let t = tempfile::tempdir().unwrap();
    let mut layer = tar::Builder::new(Vec::new());
    member(&mut layer, "etc/added", b"added");
    let diff = layer.into_inner().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    dir(&mut b, "checkpoint", 0o700);
    member(&mut b, "checkpoint/inventory.img", b"inv");
    member(&mut b, "checkpoint/amdgpu-pages-1.img", &[0u8; 100]);
    member(
        &mut b,
        "config.dump",
        b"{\n  \"id\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\",\n  \"name\": \"k8s_ctr_pod_ns_uid_0\",\n  \"rootfsImageRef\": \"bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\",\n  \"runtime\": \"crun\",\n  \"createdTime\": \"2026-01-01T10:00:00.5+01:00\",\n  \"checkpointedTime\": \"2026-01-01T10:05:00Z\",\n  \"restoredTime\": \"0001-01-01T00:00:00Z\",\n  \"restored\": false\n}",
    );
    member(
        &mut b,
        "spec.dump",
        br#"{"annotations":{"io.container.manager":"cri-o","io.kubernetes.cri-o.Metadata":"{\"name\":\"ctr\",\"attempt\":0}","io.kubernetes.cri-o.Created":"2026-01-01T10:00:00.5+01:00","io.kubernetes.pod.name":"pod","io.kubernetes.pod.namespace":"ns"}}"#,
    );
    member(&mut b, "rootfs-diff.tar", &diff);
    member(&mut b, "deleted.files", br#"["/etc/old","/var/cache"]"#);
    member(&mut b, "io.kubernetes.cri-o.LogPath", b"log\n");
    member(&mut b, "bind.mounts", b"[]");
    let path = t.path().join("crio.tar");
    std::fs::write(&path, b.into_inner().unwrap()).unwrap();

    let info = archive::read_info(&path).unwrap();
    assert_eq!(info.engine, EngineKind::CriO);
    assert_eq!(info.identity.container_name, "ctr");
    assert_eq!(info.identity.pod.as_deref(), Some("pod"));
    assert_eq!(info.amd_gpu_memory_pages_size, 100);
    assert_eq!(
        info.log_member.as_deref(),
        Some("io.kubernetes.cri-o.LogPath")
    );
    let x = archive::extract(&path, &t.path().join("x"), &Limits::default()).unwrap();
    assert_eq!(x.deleted, ["/etc/old", "/var/cache"]);
    let root = t.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("var/cache/x")).unwrap();
    std::fs::write(root.join("etc/old"), b"x").unwrap();
    let rep = rootfs::apply(
        &root,
        std::fs::File::open(x.rootfs_diff.unwrap()).unwrap(),
        &x.deleted,
    )
    .unwrap();
    assert_eq!(rep.deleted, 2);
    assert!(root.join("etc/added").exists());
    assert!(!root.join("var/cache").exists());
}
