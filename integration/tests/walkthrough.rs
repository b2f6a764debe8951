//! The playground walkthrough (`vagrant/walkthrough.sh`, CRI sequence in `vagrant/README.md`)
//! done by a kubelet-like client against the standalone shim on this machine: the same CRI
//! calls, in the same order, with the same cpengine commands between them, and a real
//! registry on loopback standing in for the node's local registry.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cpengine_integration::cri::k8s_cri::v1 as pb;
use cpengine_integration::cri::*;
use cpengine_integration::registry::Registry;
use cpengine_integration::*;

fn cpe(state_root: &Path) -> Command {
    let mut c = Command::new(cpengine_bin());
    c.arg("--state-root").arg(state_root);
    c
}

fn ok(cmd: &mut Command) -> String {
    let (st, out, err) = run(cmd);
    assert!(st.success(), "{cmd:?} failed:\n{out}\n{err}");
    out
}

async fn state_line(
    rt: &mut pb::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
) -> (String, u64) {
    // The container rewrites /tmp/state with `>` (truncate, then write): a read can fall in
    // between. Read until a whole line is there; a state without both fields is a failure,
    // never an empty value that would compare equal to another empty one.
    let mut last = String::new();
    for _ in 0..100 {
        let r = exec(rt, id, &["cat", "/tmp/state"]).await.expect("exec");
        let text = String::from_utf8_lossy(&r.stdout).trim().to_string();
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        if let (Some(started), Some(count)) = (
            field("started="),
            field("count=").and_then(|c| c.parse().ok()),
        ) {
            return (started, count);
        }
        last = text;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no complete state line in /tmp/state of {id}: last read {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walkthrough_cri_steps_against_the_standalone_shim() {
    init();
    let registry = Registry::start();
    let shim = Shim::start();
    let state = shim.state();
    let state_root = state.lib.parent().unwrap().to_path_buf();
    let (mut rt, mut img) = shim.clients();
    let reg = registry.host();
    let counter_image = format!("{reg}/cpengine-playground/counter:1");
    let checkpoint_image = format!("{reg}/cpengine-playground/counter-checkpoint:latest");

    // 1. Preflight: Version, ListImages.
    let v = rt
        .version(pb::VersionRequest::default())
        .await
        .expect("Version")
        .into_inner();
    assert_eq!(v.runtime_api_version, "v1");
    img.list_images(pb::ListImagesRequest::default())
        .await
        .expect("ListImages");

    // 2. The app image is in the node's registry (the walkthrough pushes a busybox image).
    import_busybox(&state, "localhost/counter-src:1");
    ok(cpe(&state_root).args([
        "image",
        "push",
        "localhost/counter-src:1",
        &counter_image,
        "--insecure",
    ]));
    ok(cpe(&state_root).args(["image", "rm", "localhost/counter-src:1"]));

    // 3. Run pod `counter`: RunPodSandbox, PodSandboxStatus, ImageStatus/PullImage,
    //    CreateContainer, StartContainer, ContainerStatus.
    let logs = scratch("cpe-walk-logs-");
    let pod = rt
        .run_pod_sandbox(pb::RunPodSandboxRequest {
            config: Some(pod_config("counter", logs.path(), pb::NamespaceMode::Pod)),
            ..Default::default()
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    rt.pod_sandbox_status(pb::PodSandboxStatusRequest {
        pod_sandbox_id: pod.clone(),
        verbose: false,
    })
    .await
    .expect("PodSandboxStatus");
    let present = img
        .image_status(pb::ImageStatusRequest {
            image: Some(pb::ImageSpec {
                image: counter_image.clone(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .expect("ImageStatus")
        .into_inner()
        .image;
    assert!(present.is_none(), "the image must come from the registry");
    img.pull_image(pb::PullImageRequest {
        image: Some(pb::ImageSpec {
            image: counter_image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("PullImage from the registry");
    let script = "started=$(cat /proc/sys/kernel/random/uuid); i=0; while :; do i=$((i+1)); echo \"started=$started count=$i\" > /tmp/state; sleep 0.2; done";
    let ctr = rt
        .create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("counter", &counter_image, script)),
            sandbox_config: Some(pod_config("counter", logs.path(), pb::NamespaceMode::Pod)),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(pb::StartContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("StartContainer");
    assert!(
        eventually(Duration::from_secs(10), || {
            let (mut rt, ctr) = (rt.clone(), ctr.clone());
            async move { state_line(&mut rt, &ctr).await.1 >= 3 }
        })
        .await
    );

    // 4. Checkpoint through CRI, as the kubelet's POST /checkpoint/default/counter/counter does.
    let ckpt_dir = scratch("cpe-walk-ckpt-");
    let location = kubelet_location(ckpt_dir.path(), "counter", "default", "counter");
    let (started, before) = state_line(&mut rt, &ctr).await;
    rt.checkpoint_container(pb::CheckpointContainerRequest {
        container_id: ctr.clone(),
        location: location.display().to_string(),
        timeout: 60,
    })
    .await
    .expect("CheckpointContainer");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&location).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Left running.
    let (_, after) = state_line(&mut rt, &ctr).await;
    assert!(
        eventually(Duration::from_secs(5), || {
            let (mut rt, ctr) = (rt.clone(), ctr.clone());
            async move { state_line(&mut rt, &ctr).await.1 > after }
        })
        .await
    );

    // 5-6. The archive, inspected.
    let show = ok(Command::new(cpengine_bin()).arg("inspect").arg(&location));
    assert!(show.contains("counter"), "{show}");
    let tree = ok(Command::new(cpengine_bin())
        .arg("inspect")
        .arg(&location)
        .arg("--ps-tree"));
    assert!(tree.contains("sh -c"), "{tree}");

    // 7-8. Checkpoint image built and pushed; the local copy removed so the restore pulls it.
    ok(cpe(&state_root)
        .args(["image", "build"])
        .arg(&location)
        .args(["--tag", "localhost/counter-checkpoint:latest"]));
    ok(cpe(&state_root).args([
        "image",
        "push",
        "localhost/counter-checkpoint:latest",
        &checkpoint_image,
        "--insecure",
    ]));
    ok(cpe(&state_root).args(["image", "rm", "localhost/counter-checkpoint:latest"]));

    // 9. Delete pod `counter`.
    rt.stop_container(pb::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 2,
    })
    .await
    .expect("StopContainer");
    rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("StopPodSandbox");
    rt.remove_container(pb::RemoveContainerRequest {
        container_id: ctr.clone(),
    })
    .await
    .expect("RemoveContainer");
    rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .expect("RemovePodSandbox");

    // 10. Pod `counter-restored` from the checkpoint image: PullImage, then CreateContainer with
    //     no command — the image's checkpoint annotation makes it a restore — and StartContainer.
    let pod2 = rt
        .run_pod_sandbox(pb::RunPodSandboxRequest {
            config: Some(pod_config(
                "counter-restored",
                logs.path(),
                pb::NamespaceMode::Pod,
            )),
            ..Default::default()
        })
        .await
        .expect("RunPodSandbox 2")
        .into_inner()
        .pod_sandbox_id;
    img.pull_image(pb::PullImageRequest {
        image: Some(pb::ImageSpec {
            image: checkpoint_image.clone(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await
    .expect("PullImage of the checkpoint image");
    let mut cfg = container_config("counter", &checkpoint_image, "");
    cfg.command.clear();
    let ctr2 = rt
        .create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod2.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_config(
                "counter-restored",
                logs.path(),
                pb::NamespaceMode::Pod,
            )),
        })
        .await
        .expect("CreateContainer from the checkpoint image")
        .into_inner()
        .container_id;
    rt.start_container(pb::StartContainerRequest {
        container_id: ctr2.clone(),
    })
    .await
    .expect("StartContainer (restore)");
    assert_eq!(
        status_of(&mut rt, &ctr2).await.state,
        pb::ContainerState::ContainerRunning as i32
    );

    // The state came back: same `started` (memory, not a fresh start), count continuing.
    let (started2, count2) = state_line(&mut rt, &ctr2).await;
    assert_eq!(started2, started, "the restored container started afresh");
    assert!(
        count2 >= before,
        "count went backwards: {count2} < {before}"
    );
    assert!(
        eventually(Duration::from_secs(5), || {
            let (mut rt, ctr2) = (rt.clone(), ctr2.clone());
            async move { state_line(&mut rt, &ctr2).await.1 > count2 }
        })
        .await,
        "the restored container does not count"
    );

    rt.stop_container(pb::StopContainerRequest {
        container_id: ctr2.clone(),
        timeout: 2,
    })
    .await
    .expect("stop");
    rt.remove_container(pb::RemoveContainerRequest { container_id: ctr2 })
        .await
        .expect("remove");
    rt.stop_pod_sandbox(pb::StopPodSandboxRequest {
        pod_sandbox_id: pod2.clone(),
    })
    .await
    .expect("stop pod");
    rt.remove_pod_sandbox(pb::RemovePodSandboxRequest {
        pod_sandbox_id: pod2,
    })
    .await
    .expect("remove pod");
}
