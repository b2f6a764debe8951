//! The CRI shim against real runc, CRIU and containers: a CRI client drives `cpengine-shim`
//! (a subprocess on a temporary socket and state root) the way the kubelet does.

use std::time::Duration;

use cpengine_integration::cri::*;
use cpengine_integration::*;
use k8s_cri::v1 as pb;

const COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo tick $i; sleep 0.1; done";

async fn run_pod(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    cfg: pb::PodSandboxConfig,
) -> String {
    rt.run_pod_sandbox(pb::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

async fn create_start(
    rt: &mut k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    pod_id: &str,
    pod_cfg: &pb::PodSandboxConfig,
    cfg: pb::ContainerConfig,
) -> String {
    let id = rt
        .create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(pb::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_lifecycle_logs_exec_and_shim_restart() {
    let mut shim = Shim::start();
    import_busybox(&shim.state(), "docker.io/library/busybox:latest");
    let (mut rt, mut img) = shim.clients();

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

    // A pod with its own network, IPC and UTS namespaces.
    let logs = scratch("cpe-podlogs-");
    let pod_cfg = pod_config("web", logs.path(), pb::NamespaceMode::Pod);
    let pod = run_pod(&mut rt, pod_cfg.clone()).await;
    let ps = rt
        .pod_sandbox_status(pb::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ps.status.unwrap().state,
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
    shim.restart();
    let (mut rt, _img) = shim.clients();
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
    let rt2 = rt.clone();
    let c2 = ctr.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (mut r, c) = (rt2.clone(), c2.clone());
            async move { counter_via_exec(&mut r, &c, "/tmp/counter").await > before + 2 }
        })
        .await,
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

    // A container created by this shim instance reports its exit code.
    let short = create_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("short", "busybox", "echo bye; exit 7"),
    )
    .await;
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

    // Stop (TERM is ignored by sh as pid 1, so KILL after the timeout), remove, pod down.
    rt.stop_container(pb::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
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
    let ps = rt
        .pod_sandbox_status(pb::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ps.status.unwrap().state,
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
    assert!(!shim.state().run.join("shim/containers").join(&ctr).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_forwards_the_lifecycle_to_containerd() {
    let ctrd = cpengine_integration::containerd::Containerd::start();
    let dir = scratch("cpe-shimproxy-").keep();
    let shim = Shim::start_in(
        &dir,
        &[
            "--upstream",
            &format!("unix://{}", ctrd.socket.display()),
            "--upstream-runc-root",
            &ctrd.runc_root.display().to_string(),
        ],
    );
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
    let pod_cfg = pod_config("proxied", logs.path(), pb::NamespaceMode::Node);
    let pod = run_pod(&mut rt, pod_cfg.clone()).await;
    let ctr = create_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config(
            "counter",
            cpengine_integration::containerd::BUSYBOX_IMAGE,
            COUNTER,
        ),
    )
    .await;
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerRunning as i32
    );
    // The container is containerd's: its runc state is in containerd's runc root.
    assert!(ctrd.runc_root.join(&ctr).join("state.json").is_file());
    let rt2 = rt.clone();
    let c2 = ctr.clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let (mut r, c) = (rt2.clone(), c2.clone());
            async move { counter_via_exec(&mut r, &c, "/tmp/counter").await >= 3 }
        })
        .await
    );
    // Errors pass through with their codes.
    let nf = rt
        .container_status(pb::ContainerStatusRequest {
            container_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(nf.code(), tonic::Code::NotFound);

    rt.stop_container(pb::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 1,
    })
    .await
    .expect("StopContainer");
    assert_eq!(
        status_of(&mut rt, &ctr).await.state,
        pb::ContainerState::ContainerExited as i32
    );
    rt.remove_container(pb::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("RemoveContainer");
    rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
        pod_sandbox_id: pod,
    })
    .await
    .expect("RemovePodSandbox");
    drop(shim);
}
