//! The CRI shim against real runc, CRIU and containers: a CRI client drives `cpengine-shim`
//! (a subprocess on a temporary socket and state root) the way the kubelet does.

use std::time::Duration;

use cpengine_integration::cri::*;
use cpengine_integration::*;
use k8s_cri::v1 as pb;

const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo tick $i; sleep 0.1; done";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_lifecycle_logs_exec_and_shim_restart() {
    // A pod with its own network, IPC and UTS namespaces.
    let mut f = ShimPod::start("web", pb::NamespaceMode::Pod).await;
    let (mut rt, mut img) = f.shim.clients();

    let v = rt
        .version(pb::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "cpengine");
    assert_eq!(v.runtime_api_version, "v1");
    let st = rt
        .status(pb::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conds = st.status.unwrap().conditions;
    assert!(conds.iter().any(|c| c.r#type == "RuntimeReady" && c.status));
    assert!(conds.iter().any(|c| c.r#type == "NetworkReady" && c.status));
    let images = img
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.iter().any(|i| {
        i.repo_tags
            .contains(&"docker.io/library/busybox:latest".to_string())
    }));

    let (logs, pod, pod_cfg) = (&f.logs, f.pod.id.clone(), f.pod.config.clone());
    assert_eq!(
        pod_state(&mut rt, &pod).await,
        pb::PodSandboxState::SandboxReady as i32
    );
    // The same pod twice is refused.
    let dup = rt
        .run_pod_sandbox(pb::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);

    let ctr = rt
        .create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("counter", "busybox", COUNTER)),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerCreated as i32
    );
    rt.start_container(pb::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("StartContainer");
    let s = status_of(&mut rt, &ctr).await;
    assert_eq!(s.state, pb::ContainerState::ContainerRunning as i32);
    assert!(s.started_at > 0 && s.created_at > 0);
    let log_path = logs.path().join("counter/0.log");
    assert_eq!(s.log_path, log_path.display().to_string());
    assert_eq!(s.image.unwrap().image, "busybox");

    // Logs: CRI format at log_path, written by the relay from the container's pipes.
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    cpengine::container::relay::parse_record(l).is_some_and(|(s, t, m)| {
                        s == "stdout" && t == 'F' && m.starts_with("tick ")
                    })
                })
                .count()
                >= 3
        }),
        "no CRI log records at {}",
        log_path.display()
    );

    // ExecSync: output, exit codes, the pod's hostname, and a timeout.
    let n = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
    assert!(n >= 1, "counter {n}");
    // Both image layers, the upper one winning.
    let motd = exec(
        &mut rt,
        &ctr,
        &["cat", "/etc/motd", "/etc/app.conf", "/etc/to-delete"],
    )
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&motd.stdout),
        "motd of the second layer\nfrom the second layer\nthis file is deleted in the container\n"
    );
    let h = exec(&mut rt, &ctr, &["busybox", "hostname"]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&h.stdout).trim(), "web");
    let e = exec(&mut rt, &ctr, &["sh", "-c", "echo oops >&2; exit 3"])
        .await
        .unwrap();
    assert_eq!(e.exit_code, 3);
    assert_eq!(e.stderr, b"oops\n");
    let t = rt
        .exec_sync(pb::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(t.code(), tonic::Code::DeadlineExceeded);
    let list = rt
        .list_containers(pb::ListContainersRequest {
            filter: Some(pb::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    let stats = rt
        .container_stats(pb::ContainerStatsRequest {
            container_id: ctr.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        stats
            .stats
            .unwrap()
            .memory
            .unwrap()
            .working_set_bytes
            .is_some()
    );

    // The shim dies (SIGKILL) and comes back: the container kept running and is found again.
    let before = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
    f.shim.restart();
    let (mut rt, _img) = f.shim.clients();
    let list = rt
        .list_containers(pb::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, ctr);
    assert_eq!(list[0].state, pb::ContainerState::ContainerRunning as i32);
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerRunning as i32
    );
    assert!(
        counter_reaches(&rt, &ctr, before + 3, Duration::from_secs(10)).await,
        "the container stopped counting across the shim restart"
    );
    let pods = rt
        .list_pod_sandbox(pb::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, pb::PodSandboxState::SandboxReady as i32);

    // Log rotation as the kubelet does it (after the shim restart, so the relay's pid comes from
    // the shim's state): rename the log, ReopenContainerLog, and new records go to a new file.
    let rotated = log_path.with_extension("log.20261122-000000");
    std::fs::rename(&log_path, &rotated).unwrap();
    rt.reopen_container_log(pb::ReopenContainerLogRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("ReopenContainerLog");
    assert!(
        log_path.exists(),
        "no new log file after ReopenContainerLog"
    );
    let ticks = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                cpengine::container::relay::parse_record(l)
                    .is_some_and(|(s, t, m)| s == "stdout" && t == 'F' && m.starts_with("tick "))
            })
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || ticks(&log_path) >= 3),
        "no records in the reopened log"
    );
    let old = ticks(&rotated);
    assert!(old >= 3, "the rotated log lost its records");
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(ticks(&rotated), old, "records still go to the rotated log");
    let nf = rt
        .reopen_container_log(pb::ReopenContainerLogRequest {
            container_id: "no-such-container".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);

    // A container created by this shim instance reports its exit code.
    // (With the client made after the restart: the pod's own predates it.)
    let short = create_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("short", "busybox", "echo bye; exit 7"),
    )
    .await;
    let rt2 = rt.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (mut r, c) = (rt2.clone(), short.clone());
            async move {
                status_of(&mut r, &c).await.state == pb::ContainerState::ContainerExited as i32
            }
        })
        .await
    );
    let s = status_of(&mut rt, &short).await;
    assert_eq!(s.exit_code, 7);
    assert_eq!(s.reason, "Error");
    assert!(s.finished_at >= s.started_at);
    let short_log = std::fs::read_to_string(logs.path().join("short/0.log")).unwrap();
    assert!(short_log.contains(" stdout F bye"), "{short_log}");
    // An exited container gets no new log file.
    std::fs::remove_file(logs.path().join("short/0.log")).unwrap();
    let e = rt
        .reopen_container_log(pb::ReopenContainerLogRequest {
            container_id: short.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(!logs.path().join("short/0.log").exists());

    // Stop (TERM is ignored by sh as pid 1, so KILL after the timeout), remove, pod down.
    stop(&mut rt, &ctr, 1).await;
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerExited as i32
    );
    for id in [&ctr, &short] {
        rt.remove_container(pb::RemoveContainerRequest {
            container_id: id.to_string(),
        })
        .await
        .expect("RemoveContainer");
    }
    // Removing again is fine (idempotent); the status of a removed container is NotFound.
    rt.remove_container(pb::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("RemoveContainer again");
    let nf = rt
        .container_status(pb::ContainerStatusRequest {
            container_id: ctr.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);
    rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    assert_eq!(
        pod_state(&mut rt, &pod).await,
        pb::PodSandboxState::SandboxNotready as i32
    );
    rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");
    assert!(
        rt.list_pod_sandbox(pb::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&ctr), "a mount of {ctr} is left");
    assert!(
        !f.shim
            .state()
            .run
            .join("shim/containers")
            .join(&ctr)
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_the_lifecycle_to_containerd() {
    let ctrd = cpengine_integration::containerd::Containerd::start();
    let shim = Shim::proxy(&ctrd);
    let (mut rt, mut img) = shim.clients();
    let v = rt
        .version(pb::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_name, "containerd", "Version comes from upstream");
    let images = img
        .list_images(pb::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(
        images.iter().any(|i| i
            .repo_tags
            .iter()
            .any(|t| t == cpengine_integration::containerd::BUSYBOX_IMAGE)),
        "{images:?}"
    );

    let logs = scratch("cpe-podlogs-");
    let pod = Pod::run(
        &rt,
        pod_config("proxied", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    let ctr = pod
        .start(container_config(
            "counter",
            cpengine_integration::containerd::BUSYBOX_IMAGE,
            COUNTER,
        ))
        .await;
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerRunning as i32
    );
    // The container is containerd's: its runc state is in containerd's runc root.
    assert!(ctrd.runc_root.join(&ctr).join("state.json").is_file());
    assert!(counter_reaches(&rt, &ctr, 3, Duration::from_secs(10)).await);
    // Errors pass through with their codes.
    let nf = rt
        .container_status(pb::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);

    stop(&mut rt, &ctr, 1).await;
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerExited as i32
    );
    remove_container(&mut rt, &ctr).await;
    pod.stop().await;
    pod.remove().await;
    drop(shim);
}

/// Frozen or not, through the container's freezer cgroup.
fn frozen(state: &cpengine::container::state::StateRoot, id: &str) -> bool {
    let c = cpengine::container::Container::find(id, &[state.run.join("runc")], state)
        .expect("find container");
    c.status() == cpengine::container::Status::Paused
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_checkpoint_refuses_bad_requests_and_leaves_the_workload_running() {
    let f = ShimPod::start("guarded", pb::NamespaceMode::Node).await;
    let mut rt = f.rt.clone();
    let ctr = f
        .pod
        .start(container_config("counter", "busybox", COUNTER))
        .await;
    let dest = scratch("cpe-ckpt-");
    let ok_loc = kubelet_location(dest.path(), "guarded", "default", "counter");
    let ckpt = |id: &str, location: String, timeout: i64| pb::CheckpointContainerRequest {
        container_id: id.to_string(),
        location,
        timeout,
    };

    let e = rt
        .checkpoint_container(ckpt("0000nope", ok_loc.display().to_string(), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = rt
        .checkpoint_container(ckpt(&ctr, "relative/ckpt.tar".into(), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let e = rt
        .checkpoint_container(ckpt(&ctr, String::new(), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let missing = dest.path().join("no-such-dir/ckpt.tar");
    let e = rt
        .checkpoint_container(ckpt(&ctr, missing.display().to_string(), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let target = dest.path().join("symlink-target.tar");
    let link = dest.path().join("link.tar");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let e = rt
        .checkpoint_container(ckpt(&ctr, link.display().to_string(), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(
        !target.exists(),
        "the checkpoint was written through a symlink"
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Deadlines no checkpoint of this container can meet, however fast the machine: it writes
    // the 200 MiB of new files into the archive, and starting CRIU alone takes tens of
    // milliseconds. DEADLINE_EXCEEDED, and the jobs, which go on in the background, discard
    // their archives (checked below, once a checkpoint without a deadline has waited for
    // them). The client enforces the same deadline itself (tonic's channel), so the answer is
    // the server's DEADLINE_EXCEEDED or the client's own expiry, whichever comes first (the
    // server side alone is proven in the shim's unit test of `race`). How soon the answer
    // comes is not asserted: that is a measure, for the benches.
    let e = exec(
        &mut rt,
        &ctr,
        &[
            "dd",
            "if=/dev/urandom",
            "of=/root/big",
            "bs=1M",
            "count=200",
        ],
    )
    .await
    .unwrap();
    assert_eq!(e.exit_code, 0, "{}", String::from_utf8_lossy(&e.stderr));
    for ms in [10u64, 30, 60] {
        let mut req = tonic::Request::new(ckpt(&ctr, ok_loc.display().to_string(), 0));
        req.set_timeout(Duration::from_millis(ms));
        let e = rt.checkpoint_container(req).await.unwrap_err();
        let client_expiry = e.code() == tonic::Code::Cancelled && e.message() == "Timeout expired";
        assert!(
            e.code() == tonic::Code::DeadlineExceeded || client_expiry,
            "deadline {ms} ms: {e:?}"
        );
    }
    // A checkpoint without a deadline waits for the abandoned ones (same container) and
    // succeeds; by then they are over, and none of them left anything.
    let last = dest.path().join("last.tar");
    rt.checkpoint_container(ckpt(&ctr, last.display().to_string(), 0))
        .await
        .expect("checkpoint without deadline");
    let mut leftovers: Vec<String> = std::fs::read_dir(dest.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["last.tar", "link.tar"],
        "files left in the checkpoint directory"
    );
    assert!(!ok_loc.exists());
    assert!(
        !frozen(&f.shim.state(), &ctr),
        "the container was left frozen"
    );
    let before = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
    assert!(
        counter_reaches(&rt, &ctr, before + 3, Duration::from_secs(5)).await,
        "the workload stopped counting"
    );

    // A stopped container cannot be checkpointed.
    stop(&mut rt, &ctr, 0).await;
    let e = rt
        .checkpoint_container(ckpt(&ctr, ok_loc.display().to_string(), 0))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(!ok_loc.exists());
    f.pod.remove().await;
}

/// Reads an archive's members and its config.dump / spec.dump.
fn archive_facts(path: &std::path::Path) -> (Vec<String>, serde_json::Value, serde_json::Value) {
    let mut members = Vec::new();
    let (mut config, mut spec) = (serde_json::Value::Null, serde_json::Value::Null);
    let mut a = tar::Archive::new(std::fs::File::open(path).expect("open archive"));
    for e in a.entries().expect("a tar") {
        let mut e = e.expect("a tar entry");
        let name = e.path().unwrap().display().to_string();
        if name == "config.dump" || name == "spec.dump" {
            let v: serde_json::Value = serde_json::from_reader(&mut e).expect("JSON member");
            if name == "config.dump" {
                config = v;
            } else {
                spec = v;
            }
        }
        members.push(name);
    }
    (members, config, spec)
}

/// An archive's config.dump and spec.dump, asserting it has each of `members`.
fn archive_with(
    path: &std::path::Path,
    members: &[&str],
) -> (serde_json::Value, serde_json::Value) {
    let (have, config, spec) = archive_facts(path);
    for m in members {
        assert!(have.iter().any(|x| x == m), "member {m} missing: {have:?}");
    }
    (config, spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_checkpoint_then_restore_from_the_archive_and_from_a_checkpoint_image() {
    let f = ShimPod::start("web", pb::NamespaceMode::Pod).await;
    let mut rt = f.rt.clone();
    let ctr = f
        .pod
        .start(container_config("counter", "busybox", COUNTER))
        .await;
    let e = exec(
        &mut rt,
        &ctr,
        &[
            "sh",
            "-c",
            "echo kept > /root/note.txt && rm /etc/to-delete",
        ],
    )
    .await
    .unwrap();
    assert_eq!(e.exit_code, 0, "{}", String::from_utf8_lossy(&e.stderr));
    assert!(counter_reaches(&rt, &ctr, 5, Duration::from_secs(10)).await);

    // The kubelet's call: a location in its checkpoints directory, a timeout in seconds.
    let dest = scratch("cpe-kubelet-checkpoints-");
    let loc = kubelet_location(dest.path(), "web", "default", "counter");
    let t = std::time::Instant::now();
    checkpoint_to(&mut rt, &ctr, &loc, 60)
        .await
        .expect("CheckpointContainer");
    eprintln!(
        "CheckpointContainer through the standalone shim: {:?}",
        t.elapsed()
    );
    let at_checkpoint = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&loc).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<String> = std::fs::read_dir(dest.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 1, "only the archive is left: {names:?}");
    let (config, spec) = archive_with(
        &loc,
        &[
            "checkpoint/",
            "checkpoint/inventory.img",
            "checkpoint/descriptors.json",
            "config.dump",
            "spec.dump",
            "rootfs-diff.tar",
            "deleted.files",
        ],
    );
    assert_eq!(config["id"], ctr.as_str());
    assert_eq!(
        config["rootfsImageName"],
        "docker.io/library/busybox:latest"
    );
    assert_eq!(spec["annotations"]["io.kubernetes.cri.sandbox-name"], "web");
    // Leave-running: the workload did not stop.
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerRunning as i32
    );
    assert!(counter_reaches(&rt, &ctr, at_checkpoint + 3, Duration::from_secs(5)).await);
    stop(&mut rt, &ctr, 0).await;
    remove_container(&mut rt, &ctr).await;

    // Restore as CRI-O does: a new pod, CreateContainer whose image is the archive.
    let pod2 = f.another_pod("web-restored", pb::NamespaceMode::Pod).await;
    let restored = pod2
        .start(restore_config("counter", &loc.display().to_string()))
        .await;
    let s = status_of(&mut rt, &restored).await;
    assert_eq!(
        s.state,
        pb::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    let first = counter_via_exec(&mut rt, &restored, "/tmp/counter").await;
    assert!(
        first >= at_checkpoint.saturating_sub(1),
        "counter restarted: {first} < {at_checkpoint}"
    );
    assert!(
        counter_reaches(&rt, &restored, first + 3, Duration::from_secs(5)).await,
        "the restored container does not count"
    );
    let note = exec(&mut rt, &restored, &["cat", "/root/note.txt"])
        .await
        .unwrap();
    assert_eq!(note.stdout, b"kept\n");
    let gone = exec(&mut rt, &restored, &["ls", "/etc/to-delete"])
        .await
        .unwrap();
    assert_ne!(gone.exit_code, 0, "a deleted file came back");
    let new_log = f.logs.path().join("counter/0.log");
    let n = first + 2;
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(
            &new_log
        )
        .unwrap_or_default()
        .contains(&format!(" stdout F tick {n}"))),
        "the restored container's output does not reach its log"
    );

    // And from a checkpoint image built from the same archive (`cpengine image build`).
    let root = f.shim.state().lib.parent().unwrap().to_path_buf();
    let (st, _, err) = run(std::process::Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(&root)
        .args(["image", "build"])
        .arg(&loc)
        .args(["--tag", "localhost/checkpoints/counter:1"]));
    assert!(st.success(), "cpengine image build: {err}");
    let pod3 = f
        .another_pod("web-from-image", pb::NamespaceMode::Pod)
        .await;
    let mut cfg = restore_config("counter", "localhost/checkpoints/counter:1");
    cfg.log_path = "from-image/0.log".into();
    let from_image = pod3.start(cfg).await;
    let v = counter_via_exec(&mut rt, &from_image, "/tmp/counter").await;
    assert!(
        v >= at_checkpoint.saturating_sub(1),
        "counter restarted: {v} < {at_checkpoint}"
    );
    let note = exec(&mut rt, &from_image, &["cat", "/root/note.txt"])
        .await
        .unwrap();
    assert_eq!(note.stdout, b"kept\n");

    for p in [pod2, pod3, f.pod] {
        p.remove().await;
    }
    assert!(
        rt.list_containers(pb::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers
            .is_empty()
    );
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_checkpoint_is_served_by_the_engine_and_restores_in_the_standalone_shim() {
    use cpengine_integration::containerd::{BUSYBOX_IMAGE, Containerd};
    let ctrd = Containerd::start();
    let proxy = Shim::proxy(&ctrd);
    let (mut rt, _) = proxy.clients();
    let (mut direct, _) = clients(&ctrd.socket);
    let logs = scratch("cpe-podlogs-");
    let pod = Pod::run(
        &rt,
        pod_config("counter-pod", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    let ctr = pod
        .start(container_config("counter", BUSYBOX_IMAGE, COUNTER))
        .await;
    let e = exec(&mut rt, &ctr, &["sh", "-c", "echo kept > /root/note.txt"])
        .await
        .unwrap();
    assert_eq!(e.exit_code, 0);
    assert!(counter_reaches(&rt, &ctr, 5, Duration::from_secs(10)).await);

    // The same container, checkpointed alternately by the engine (through the shim) and by
    // containerd itself; both leave it running. Printed, not asserted: timing is a
    // benchmark's business.
    let dest = scratch("cpe-kubelet-checkpoints-");
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut archive = None;
    for round in 0..3 {
        let loc = dest.path().join(format!(
            "checkpoint-counter-pod_default-counter-engine-{round}.tar"
        ));
        // The counter just before the first checkpoint: its archive holds at least this.
        let before = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
        let t = std::time::Instant::now();
        checkpoint_to(&mut rt, &ctr, &loc, 60)
            .await
            .expect("CheckpointContainer through the shim");
        ours.push(t.elapsed());
        let loc2 = dest.path().join(format!(
            "checkpoint-counter-pod_default-counter-containerd-{round}.tar"
        ));
        let t = std::time::Instant::now();
        checkpoint_to(&mut direct, &ctr, &loc2, 60)
            .await
            .expect("containerd's own CheckpointContainer");
        theirs.push(t.elapsed());
        assert_eq!(
            status_of(&mut rt, &ctr).await.state,
            pb::ContainerState::ContainerRunning as i32
        );
        if archive.is_none() {
            archive = Some((loc, before));
        }
    }
    let at_end = counter_via_exec(&mut rt, &ctr, "/tmp/counter").await;
    let (archive, at_checkpoint) = archive.unwrap();
    let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "CheckpointContainer of a busybox container, 3 rounds: engine via cpengine-shim {ours:?} (median {:?}, archive {} bytes); containerd 2.1.9 {theirs:?} (median {:?}, archive {} bytes)",
        median(ours.clone()),
        size(&archive),
        median(theirs.clone()),
        size(
            &dest
                .path()
                .join("checkpoint-counter-pod_default-counter-containerd-0.tar")
        ),
    );
    let (config, spec) = archive_with(
        &archive,
        &[
            "checkpoint/",
            "checkpoint/inventory.img",
            "config.dump",
            "spec.dump",
            "rootfs-diff.tar",
        ],
    );
    assert_eq!(config["id"], ctr.as_str());
    assert_eq!(config["name"], "counter");
    assert_eq!(config["runtime"], "io.containerd.runc.v2");
    assert_eq!(config["rootfsImageName"], BUSYBOX_IMAGE, "{config}");
    assert_eq!(
        spec["annotations"]["io.kubernetes.cri.sandbox-name"], "counter-pod",
        "{spec}"
    );

    // The same comparison for a container holding 256 MiB of non-zero memory.
    let big_script = "x=$(busybox head -c 268435456 /dev/zero | busybox tr '\\0' a); echo ready > /tmp/ready; while true; do sleep 1; done";
    let big = pod
        .start(container_config("big", BUSYBOX_IMAGE, big_script))
        .await;
    let rt3 = rt.clone();
    let b2 = big.clone();
    assert!(
        eventually(Duration::from_secs(60), || {
            let (mut r, c) = (rt3.clone(), b2.clone());
            async move {
                exec(&mut r, &c, &["cat", "/tmp/ready"])
                    .await
                    .is_ok_and(|o| o.exit_code == 0)
            }
        })
        .await,
        "the big container did not fill its memory"
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..3 {
        for (client, times, who) in [
            (&mut rt, &mut ours, "engine"),
            (&mut direct, &mut theirs, "containerd"),
        ] {
            let loc = dest.path().join(format!("big-{who}-{round}.tar"));
            let t = std::time::Instant::now();
            checkpoint_to(client, &big, &loc, 120)
                .await
                .unwrap_or_else(|e| panic!("{who} checkpoint of the big container: {e:?}"));
            times.push(t.elapsed());
            if round > 0 {
                let _ = std::fs::remove_file(&loc);
            }
        }
    }
    eprintln!(
        "CheckpointContainer of a container with 256 MiB of memory, 3 rounds: engine via cpengine-shim {ours:?} (median {:?}, archive {} bytes); containerd 2.1.9 {theirs:?} (median {:?}, archive {} bytes)",
        median(ours.clone()),
        size(&dest.path().join("big-engine-0.tar")),
        median(theirs.clone()),
        size(&dest.path().join("big-containerd-0.tar")),
    );
    assert_eq!(
        status_of(&mut rt, &big).await.state,
        pb::ContainerState::ContainerRunning as i32
    );

    // The container goes away in containerd; the archive comes back in a standalone shim whose
    // image store has the same base image.
    pod.stop().await;
    pod.remove().await;
    let standalone = Shim::with_image_of(&ctrd);
    let (mut srt, _) = standalone.clients();
    let pod2 = Pod::run(
        &srt,
        pod_config("restored-pod", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    // containerd gave the container an /etc/hosts bind mount: runtime-managed in the engine's
    // one list, so the restore needs no declaration of it and gets a fresh file (loopback
    // entries), never the checkpoint's host path.
    let mut cfg = restore_config("counter", &archive.display().to_string());
    cfg.log_path = "restored/0.log".into();
    let restored = pod2.start(cfg).await;
    assert_eq!(
        status_of(&mut srt, &restored).await.state,
        pb::ContainerState::ContainerRunning as i32
    );
    let first = counter_via_exec(&mut srt, &restored, "/tmp/counter").await;
    // The first archive's state: not restarted, and not the state the original reached later.
    // (Read after the checkpoint, as it once was, the lower bound could be passed by the
    // counting done meanwhile, during containerd's own checkpoint.)
    assert!(
        first >= at_checkpoint && first < at_end,
        "restored counter {first}; counter {at_checkpoint} just before the checkpoint, original later at {at_end}"
    );
    assert!(
        counter_reaches(&srt, &restored, first + 3, Duration::from_secs(5)).await,
        "the restored container does not count"
    );
    let hosts = exec(&mut srt, &restored, &["cat", "/etc/hosts"])
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&hosts.stdout).contains("localhost"),
        "{:?}",
        String::from_utf8_lossy(&hosts.stdout)
    );
    let note = exec(&mut srt, &restored, &["cat", "/root/note.txt"])
        .await
        .unwrap();
    assert_eq!(note.stdout, b"kept\n");
    // The restored container's log relay (started by the engine's restore) rotates too.
    let rlog = logs.path().join("restored/0.log");
    std::fs::rename(&rlog, logs.path().join("restored/0.log.1")).unwrap();
    srt.reopen_container_log(pb::ReopenContainerLogRequest {
        container_id: restored.clone(),
    })
    .await
    .expect("ReopenContainerLog of the restored container");
    assert!(
        wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&rlog)
                .unwrap_or_default()
                .lines()
                .any(|l| cpengine::container::relay::parse_record(l).is_some())
        }),
        "no records in the restored container's reopened log"
    );
    pod2.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checkpoints_of_one_container_queue_and_of_two_containers_all_succeed() {
    let f = ShimPod::start("pair", pb::NamespaceMode::Pod).await;
    let mut rt = f.rt.clone();
    let a = f.pod.start(container_config("a", "busybox", COUNTER)).await;
    let b = f.pod.start(container_config("b", "busybox", COUNTER)).await;
    let dest = scratch("cpe-ckpt-");
    // Two checkpoints of `a` at once (they must take turns: CRIU cannot dump a tree that is
    // being dumped), and one of `b` alongside.
    let calls = [(&a, "a-1"), (&a, "a-2"), (&b, "b-1")].map(|(id, name)| {
        let mut c = rt.clone();
        let req = pb::CheckpointContainerRequest {
            container_id: id.clone(),
            location: dest
                .path()
                .join(format!("{name}.tar"))
                .display()
                .to_string(),
            timeout: 120,
        };
        tokio::spawn(async move { c.checkpoint_container(req).await })
    });
    for (call, name) in calls.into_iter().zip(["a-1", "a-2", "b-1"]) {
        call.await
            .unwrap()
            .unwrap_or_else(|e| panic!("checkpoint {name}: {e:?}"));
        let (members, config, _) = archive_facts(&dest.path().join(format!("{name}.tar")));
        assert!(
            members.iter().any(|m| m == "checkpoint/inventory.img"),
            "{name}: {members:?}"
        );
        let want = if name.starts_with('a') { &a } else { &b };
        assert_eq!(config["id"], want.as_str());
    }
    for id in [&a, &b] {
        assert_eq!(
            status_of(&mut rt, id).await.state,
            pb::ContainerState::ContainerRunning as i32
        );
        assert!(!frozen(&f.shim.state(), id));
    }
    f.pod.remove().await;
}

/// StopContainer sends the image's `StopSignal` first (here SIGUSR1, which the container's shell
/// traps to exit 42; SIGTERM is ignored by a shell that is pid 1, so only a KILL after the
/// timeout would stop it otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_container_sends_the_image_stop_signal_first() {
    let shim = Shim::start();
    cpengine_integration::cri::import_busybox_with(
        &shim.state(),
        "docker.io/library/stopper:latest",
        Some("SIGUSR1"),
    );
    let (mut rt, _) = shim.clients();
    let logs = scratch("cpe-podlogs-");
    let pod = Pod::run(
        &rt,
        pod_config("stopper", logs.path(), pb::NamespaceMode::Node),
    )
    .await;
    let ctr = pod
        .start(container_config(
            "stopper",
            "stopper",
            "trap 'echo got usr1; exit 42' USR1; echo ready; while true; do sleep 0.1; done",
        ))
        .await;
    let log = logs.path().join("stopper/0.log");
    assert!(
        wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("ready")),
        "the container never started"
    );
    let t = std::time::Instant::now();
    stop(&mut rt, &ctr, 20).await;
    let took = t.elapsed();
    let s = status_of(&mut rt, &ctr).await;
    assert_eq!(s.state, pb::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 42, "stopped by something else than SIGUSR1");
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("got usr1"));
    pod.remove().await;
}

/// grpc-core clients (Python grpcio, C++, Ruby) send the percent-encoded socket path as
/// `:authority`; Go clients send `localhost`; grpc-java sends the raw path. All are served, on
/// fresh connections and on one connection carrying several calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_the_socket_path_as_authority_are_served() {
    use cpengine_integration::grpc_core;
    let shim = Shim::start();
    let encoded = grpc_core::authority_of(&shim.socket);
    assert!(encoded.contains("%2F"), "{encoded}");
    for authority in [encoded.as_str(), "localhost", "/a/raw/path.sock"] {
        let v: pb::VersionResponse = grpc_core::unary(
            &shim.socket,
            authority,
            "/runtime.v1.RuntimeService/Version",
            &pb::VersionRequest::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("Version with :authority {authority:?}: {e}"));
        assert_eq!(v.runtime_name, "cpengine");
        assert_eq!(v.runtime_api_version, "v1");
        let s: pb::StatusResponse = grpc_core::unary(
            &shim.socket,
            authority,
            "/runtime.v1.RuntimeService/Status",
            &pb::StatusRequest::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("Status with :authority {authority:?}: {e}"));
        assert!(
            s.status
                .is_some_and(|st| st.conditions.iter().any(|c| c.r#type == "RuntimeReady")),
            "no RuntimeReady condition"
        );
    }
    // Several calls on one connection, as a grpc-core channel makes them: from the second on
    // the authority travels as an index into the header table.
    let vs: Vec<pb::VersionResponse> = grpc_core::unary_calls(
        &shim.socket,
        &encoded,
        "/runtime.v1.RuntimeService/Version",
        &pb::VersionRequest::default(),
        5,
    )
    .await
    .unwrap_or_else(|e| panic!("5 Version calls on one connection: {e}"));
    assert_eq!(vs.len(), 5);
    assert!(vs.iter().all(|v| v.runtime_name == "cpengine"), "{vs:?}");
    // An unknown method still gets gRPC's answer, not a reset.
    let e = grpc_core::unary::<_, pb::VersionResponse>(
        &shim.socket,
        &encoded,
        "/runtime.v1.RuntimeService/NoSuchMethod",
        &pb::VersionRequest::default(),
    )
    .await
    .unwrap_err();
    assert!(e.starts_with("grpc-status 12"), "{e}");
}

/// `--listen unix:///…` (the kubelet's and crictl's endpoint form) serves that path, not a
/// directory named `unix:` under the working directory; other schemes are refused before
/// anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_takes_unix_endpoints_and_refuses_other_schemes() {
    let dir = scratch("cpe-listen-");
    let cwd = dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let sock = dir.path().join("run/x.sock");
    let state = dir.path().join("state");
    let log = std::fs::File::create(dir.path().join("shim.log")).unwrap();
    let mut child = std::process::Command::new(shim_bin())
        .arg("--listen")
        .arg(format!("unix://{}", sock.display()))
        .arg("--state-root")
        .arg(&state)
        .current_dir(&cwd)
        .env("PATH", criu_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });
    let served = if up {
        let (mut rt, _) = clients(&sock);
        rt.version(pb::VersionRequest::default())
            .await
            .map(|v| v.into_inner().runtime_name)
    } else {
        Err(tonic::Status::unavailable("no socket"))
    };
    let _ = child.kill();
    let _ = child.wait();
    teardown_state(&state);
    let shim_log = std::fs::read_to_string(dir.path().join("shim.log")).unwrap_or_default();
    assert!(
        up,
        "nothing listens on {}; log:\n{shim_log}",
        sock.display()
    );
    assert_eq!(served.unwrap(), "cpengine");
    let in_cwd: Vec<_> = std::fs::read_dir(&cwd).unwrap().flatten().collect();
    assert!(
        in_cwd.is_empty(),
        "created in the working directory: {in_cwd:?}"
    );
    // The log names the path served (colour codes may sit between `socket=` and the value).
    assert!(
        shim_log.contains(&sock.display().to_string()) && !shim_log.contains("unix://"),
        "{shim_log}"
    );

    for bad in ["tcp://127.0.0.1:10250", "unix://relative.sock"] {
        let state2 = dir.path().join("state-refused");
        let out = std::process::Command::new(shim_bin())
            .args(["--listen", bad])
            .arg("--state-root")
            .arg(&state2)
            .current_dir(&cwd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} accepted");
        assert!(err.contains("--listen"), "{bad}: {err}");
        assert!(!state2.exists(), "{bad}: state created");
        assert_eq!(std::fs::read_dir(&cwd).unwrap().count(), 0, "{bad}");
    }
}

/// The standalone runtime's `Status` reports what it checked: ready on this machine; not ready,
/// with the kubelet-visible reason and a message per failed check, when CRIU is not CRIU, runc
/// is not in PATH, the state root cannot be written, or pod network namespaces cannot be made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_real_runtime_and_network_conditions() {
    async fn conditions(shim: &Shim) -> Vec<pb::RuntimeCondition> {
        let (mut rt, _) = shim.clients();
        rt.status(pb::StatusRequest { verbose: false })
            .await
            .expect("Status")
            .into_inner()
            .status
            .expect("a status")
            .conditions
    }
    fn get<'a>(cs: &'a [pb::RuntimeCondition], kind: &str) -> &'a pb::RuntimeCondition {
        cs.iter()
            .find(|c| c.r#type == kind)
            .unwrap_or_else(|| panic!("no {kind} in {cs:?}"))
    }

    let ready = Shim::start();
    let cs = conditions(&ready).await;
    let (rt, net) = (get(&cs, "RuntimeReady"), get(&cs, "NetworkReady"));
    assert!(rt.status && rt.reason.is_empty(), "{rt:?}");
    assert!(net.status && net.reason.is_empty(), "{net:?}");
    assert!(net.message.contains("loopback"), "{net:?}");
    drop(ready);

    // /bin/true is found but does not answer CRIU's VERSION request; runc is not in PATH.
    let dir = scratch("cpe-shim-notready-").keep();
    let broken = Shim::start_with_env(
        &dir,
        &[],
        &[("CPENGINE_CRIU", "/bin/true"), ("PATH", "/nonexistent-bin")],
    );
    let cs = conditions(&broken).await;
    let rt = get(&cs, "RuntimeReady");
    assert!(!rt.status, "{rt:?}");
    assert_eq!(rt.reason, "CRIUNotUsable", "{rt:?}");
    assert!(rt.message.contains("/bin/true"), "{rt:?}");
    assert!(
        rt.message
            .contains("runc not found in PATH (/nonexistent-bin)"),
        "{rt:?}"
    );
    assert!(!rt.message.contains("not writable"), "{rt:?}");
    assert!(get(&cs, "NetworkReady").status, "{cs:?}");

    // The state root made read-only under the running shim.
    let state = dir.join("state");
    let ro = |args: &[&str]| {
        let (st, _, err) = run(std::process::Command::new("mount")
            .args(args)
            .arg(&state)
            .arg(&state));
        assert!(st.success(), "mount {args:?}: {err}");
    };
    ro(&["--bind"]);
    ro(&["-o", "remount,bind,ro"]);
    let cs = conditions(&broken).await;
    let (st, _, err) = run(std::process::Command::new("umount").arg(&state));
    assert!(st.success(), "umount: {err}");
    let rt = get(&cs, "RuntimeReady");
    assert!(!rt.status, "{rt:?}");
    assert!(
        rt.message.contains(&format!(
            "state directory {} is not writable",
            state.join("lib").display()
        )),
        "{rt:?}"
    );
    assert!(rt.message.contains("Read-only file system"), "{rt:?}");
    // Writable again: only CRIU and runc remain.
    let cs = conditions(&broken).await;
    assert!(
        !get(&cs, "RuntimeReady").message.contains("not writable"),
        "{cs:?}"
    );
    drop(broken);

    // A shim that cannot make network namespaces (CAP_SYS_ADMIN dropped from every set it
    // could regain it from) reports the pod network unavailable, with the failed step.
    let dir = scratch("cpe-shim-nonet-").keep();
    let nonet = Shim::start_wrapped(
        &dir,
        &[
            "setpriv",
            "--inh-caps=-sys_admin",
            "--ambient-caps=-sys_admin",
            "--bounding-set=-sys_admin",
            "--",
        ],
        &[],
        &[],
    );
    let cs = conditions(&nonet).await;
    let net = get(&cs, "NetworkReady");
    assert!(!net.status, "{net:?}");
    assert_eq!(net.reason, "PodNetworkUnavailable", "{net:?}");
    assert!(
        net.message
            .contains("cannot create a pod network namespace"),
        "{net:?}"
    );
    assert!(net.message.contains("Operation not permitted"), "{net:?}");
}
