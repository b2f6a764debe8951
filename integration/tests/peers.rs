//! Interop with the real peers on this machine: archives written by containerd's own
//! `CheckpointContainer` restored by cpengine (CLI and standalone shim), a Podman-managed
//! container checkpointed by `cpengine checkpoint`, and the proxy in front of Debian bookworm's
//! containerd 1.6 (which has no `CheckpointContainer` of its own).

use std::path::Path;
use std::time::Duration;

use cpengine_integration::cri::*;
use cpengine_integration::*;
use k8s_cri::v1 as pb;

const COUNTER: &str = "echo kept > /root/note.txt; i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done";

/// The counter of a process tree's `/tmp/counter`, read through `/proc/<pid>/root`.
fn counter_of(pid: i32) -> u64 {
    read_counter(Path::new(&format!("/proc/{pid}/root/tmp/counter"))).unwrap_or(0)
}

/// Restores `archive` with `cpengine restore` into a fresh state root and checks the workload
/// continues from the archived state: at least `at_least`, the counter read before the
/// checkpoint (a restarted workload would start again at 1), then counting on. No upper bound:
/// the original is gone, and how far the restored one has counted when it is first read
/// depends on the machine's load. Deletes the container afterwards.
/// `host_namespaces`: the host namespaces the checkpointed container ran in (a host-network
/// pod: net and uts), which the restore must be allowed to keep (`--host-namespace`).
fn restore_with_the_cli(
    archive: &Path,
    base: &Path,
    at_least: u64,
    who: &str,
    host_namespaces: &[&str],
) {
    let state = scratch("cpe-peer-cli-");
    let hosts = state.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let id = format!("cli-{who}-{}", std::process::id());
    let (st, out, err) = run(std::process::Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state.path())
        .arg("restore")
        .arg(archive)
        .args(["--id", &id, "--json"])
        // Neither Podman's nor containerd's containers set no_new_privs (the CLI's restore
        // policy requires it unless the admin allows otherwise).
        .arg("--allow-new-privs")
        .args(
            host_namespaces
                .iter()
                .flat_map(|n| ["--host-namespace", *n]),
        )
        .arg("--rootfs-base")
        .arg(base)
        .arg("--log")
        .arg(state.path().join("ctr.log")));
    assert!(
        st.success(),
        "cpengine restore of the {who} archive:\n{err}\n{out}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("restore --json output ({e}): {out}"));
    let pid = report["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no pid in {report}")) as i32;
    let first = counter_of(pid);
    let note = std::fs::read_to_string(format!("/proc/{pid}/root/root/note.txt"));
    let counts = wait_until(Duration::from_secs(10), || counter_of(pid) > first + 2);
    let (st, _, derr) = run(std::process::Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state.path())
        .args(["delete", "--force", &id]));
    assert!(
        first >= at_least,
        "{who} archive restored by the CLI: counter {first}, archived at {at_least} or later"
    );
    assert!(
        counts,
        "the {who} container restored by the CLI does not count on"
    );
    assert_eq!(
        note.unwrap(),
        "kept\n",
        "rootfs change of the {who} archive"
    );
    assert!(st.success(), "cpengine delete: {derr}");
}

/// containerd 2.1.9's own CheckpointContainer writes the archive; cpengine restores it, with
/// the CLI and through the standalone shim's CRI, and the workload counts on from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_written_archives_restore_through_the_cli_and_the_shim() {
    use cpengine_integration::containerd::{BUSYBOX_IMAGE, Containerd};
    let ctrd = Containerd::start();
    let (mut c, _) = clients(&ctrd.socket);
    let logs = scratch("cpe-peer-logs-");
    let pod = Pod::run(
        &c,
        pod_config("ctrd-pod", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    let ctr = pod
        .start(container_config("counter", BUSYBOX_IMAGE, COUNTER))
        .await;
    assert!(
        counter_reaches(&c, &ctr, 5, Duration::from_secs(20)).await,
        "the container does not count"
    );
    let dest = scratch("cpe-peer-ckpt-");
    let archive = dest.path().join("checkpoint-ctrd-pod_default-counter.tar");
    let before = counter_via_exec(&mut c, &ctr, "/tmp/counter").await;
    checkpoint_to(&mut c, &ctr, &archive, 60)
        .await
        .expect("containerd's own CheckpointContainer");
    // It is containerd's archive (its members and its reduced config.dump), read by cpengine.
    let info = cpengine::archive::read_info(&archive).expect("cpengine reads the archive");
    assert_eq!(info.engine, cpengine::archive::EngineKind::Containerd);
    assert_eq!(info.config.id, ctr);
    assert_eq!(info.config.runtime, "io.containerd.runc.v2");
    assert!(info.has_rootfs_diff);
    // The original goes away (its pids must be free for the restore).
    pod.stop().await;
    pod.remove().await;

    // 1. The CLI, on the busybox tree the image was made from.
    restore_with_the_cli(
        &archive,
        &ctrd.busybox_rootfs(),
        before,
        "containerd",
        &["net", "uts"],
    );

    // 2. The standalone shim: CreateContainer with the archive as the image.
    let shim = Shim::with_image_of(&ctrd);
    let (mut s, _) = shim.clients();
    let pod2 = Pod::run(
        &s,
        pod_config("restored-pod", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    let hosts = logs.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let mut cfg = restore_config("counter", &archive.display().to_string());
    cfg.log_path = "restored/0.log".into();
    for dest in [
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/hostname",
        "/dev/termination-log",
    ] {
        cfg.mounts.push(pb::Mount {
            container_path: dest.into(),
            host_path: hosts.display().to_string(),
            ..Default::default()
        });
    }
    let restored = pod2.start(cfg).await;
    assert_eq!(
        status_of(&mut s, &restored).await.state,
        pb::ContainerState::ContainerRunning as i32
    );
    let first = counter_via_exec(&mut s, &restored, "/tmp/counter").await;
    // Not restarted (it would start again at 1); no upper bound, as for the CLI.
    assert!(
        first >= before,
        "restored counter {first}; archived at {before} or later"
    );
    assert!(
        counter_reaches(&s, &restored, first + 3, Duration::from_secs(10)).await,
        "the container restored by the shim does not count on"
    );
    let note = exec(&mut s, &restored, &["cat", "/root/note.txt"])
        .await
        .unwrap();
    assert_eq!(note.stdout, b"kept\n");
    pod2.remove().await;
}

/// The proxy in front of Debian bookworm's containerd 1.6.20: the pod and container lifecycle
/// passes through, `CheckpointContainer` (which 1.6 answers `Unimplemented`) is served by the
/// engine on containerd's runc container, and the archive restores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_adds_checkpoint_to_containerd_1_6() {
    use cpengine_integration::containerd::{BUSYBOX_IMAGE, Containerd, Version};
    let ctrd = Containerd::start_version(Version::V1_6_20);
    let (mut direct, _) = clients(&ctrd.socket);
    let proxy = Shim::proxy(&ctrd);
    let (mut rt, mut img) = proxy.clients();
    let v = rt
        .version(pb::VersionRequest::default())
        .await
        .expect("Version through the proxy")
        .into_inner();
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    assert!(v.runtime_version.contains("1.6.20"), "{v:?}");
    let images = img
        .list_images(pb::ListImagesRequest::default())
        .await
        .expect("ListImages through the proxy")
        .into_inner()
        .images;
    assert!(
        images
            .iter()
            .any(|i| i.repo_tags.iter().any(|t| t == BUSYBOX_IMAGE)),
        "{images:?}"
    );

    let logs = scratch("cpe-proxy16-logs-");
    let pod = Pod::run(
        &rt,
        pod_config("old-ctrd-pod", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    let ctr = pod
        .start(container_config("counter", BUSYBOX_IMAGE, COUNTER))
        .await;
    let listed = rt
        .list_containers(pb::ListContainersRequest::default())
        .await
        .expect("ListContainers through the proxy")
        .into_inner()
        .containers;
    assert!(
        listed.iter().any(|c| c.id == ctr),
        "containerd does not list {ctr}"
    );
    let pods = rt
        .list_pod_sandbox(pb::ListPodSandboxRequest::default())
        .await
        .expect("ListPodSandbox through the proxy")
        .into_inner()
        .items;
    assert!(
        pods.iter().any(|p| p.id == pod.id),
        "containerd does not list {}",
        pod.id
    );
    assert!(
        counter_reaches(&rt, &ctr, 5, Duration::from_secs(20)).await,
        "the container does not count"
    );

    let dest = scratch("cpe-proxy16-ckpt-");
    let theirs = checkpoint_to(
        &mut direct,
        &ctr,
        &dest.path().join("by-containerd.tar"),
        60,
    )
    .await
    .unwrap_err();
    assert_eq!(theirs.code(), tonic::Code::Unimplemented, "{theirs:?}");

    let archive = dest
        .path()
        .join("checkpoint-old-ctrd-pod_default-counter.tar");
    let before = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
    checkpoint_to(&mut rt, &ctr, &archive, 60)
        .await
        .expect("CheckpointContainer through the proxy");
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerRunning as i32,
        "the checkpoint leaves the container running"
    );
    let info = cpengine::archive::read_info(&archive).expect("the archive reads back");
    assert_eq!(info.config.id, ctr);
    assert_eq!(info.config.name, "counter");
    assert_eq!(info.config.runtime, "io.containerd.runc.v2");
    assert_eq!(info.config.rootfs_image_name, BUSYBOX_IMAGE);

    // The rest of the lifecycle, through the proxy.
    stop(&mut rt, &ctr, 2).await;
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerExited as i32
    );
    remove_container(&mut rt, &ctr).await;
    pod.stop().await;
    pod.remove().await;
    let pods = direct
        .list_pod_sandbox(pb::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");

    restore_with_the_cli(
        &archive,
        &ctrd.busybox_rootfs(),
        before,
        "proxy-1.6",
        &["net", "uts"],
    );
}

/// A container run by Podman 4.3 (its conmon, its runc under /run/runc) checkpointed with
/// `cpengine checkpoint`, left running, and restored with `cpengine restore` once Podman's copy
/// is gone: it counts on from the archived state.
#[test]
fn a_podman_managed_container_is_checkpointed_and_restored_by_cpengine() {
    use cpengine_integration::podman::Podman;
    let p = Podman::new();
    let cache = cpengine_integration::containerd::prepare();
    let base = cache.join("busybox-rootfs");
    let work = scratch("cpe-peer-podman-");
    let tarball = work.path().join("busybox.tar");
    let (st, _, err) = run(std::process::Command::new("tar")
        .arg("-C")
        .arg(&base)
        .arg("-cf")
        .arg(&tarball)
        .arg("."));
    assert!(st.success(), "tar: {err}");
    let image = "localhost/cpe-peer-busybox:latest";
    p.ok(&[
        "import",
        "--change",
        r#"CMD ["/bin/sh"]"#,
        tarball.to_str().unwrap(),
        image,
    ]);
    let name = format!("cpe-peer-{}", std::process::id());
    p.ok(&["run", "-d", "--name", &name, image, "sh", "-c", COUNTER]);
    let inspect = p.ok(&["inspect", &name, "--format", "{{.Id}} {{.State.Pid}}"]);
    let mut f = inspect.split_whitespace();
    let (id, pid) = (
        f.next().expect("id").to_string(),
        f.next().expect("pid").parse::<i32>().expect("pid"),
    );
    assert!(
        wait_until(Duration::from_secs(20), || counter_of(pid) >= 5),
        "the podman container does not count"
    );
    let state = scratch("cpe-peer-podman-state-");
    let archive = work.path().join("podman-by-cpengine.tar");
    let before = counter_of(pid);
    let (st, out, err) = run(std::process::Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state.path())
        .args(["checkpoint", "--runc-root", "/run/runc", "-o"])
        .arg(&archive)
        .arg(&id));
    assert!(
        st.success(),
        "cpengine checkpoint of the podman container:\n{err}\n{out}"
    );
    let after = counter_of(pid);
    let info = cpengine::archive::read_info(&archive).expect("the archive reads back");
    assert_eq!(info.config.id, id);
    assert!(info.has_rootfs_diff && info.checkpoint_size > 0);
    // Left running, still Podman's.
    assert!(
        wait_until(Duration::from_secs(10), || counter_of(pid) > after + 2),
        "the podman container stopped counting after the checkpoint"
    );
    let (_, status, _) = run(p
        .cmd()
        .args(["inspect", &name, "--format", "{{.State.Status}}"]));
    assert_eq!(status.trim(), "running");
    p.ok(&["rm", "-f", "-t", "0", &name]);
    restore_with_the_cli(&archive, &base, before, "podman", &[]);
}
