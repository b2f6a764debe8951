//! Load and least privilege through the CRI shim: eight containers checkpointed in parallel,
//! twice each at the same time (the two checkpoints of one container take turns), every
//! workload still counting afterwards, every archive valid and restorable; the CRI socket is
//! root's alone, and archives land only where the shim allows, never over an existing file.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use cpengine_integration::cri::*;
use cpengine_integration::*;
use k8s_cri::v1 as pb;

const COUNTER: &str = cpengine_integration::cri::QUIET_COUNTER;
/// Containers checkpointed at once.
const CONTAINERS: usize = 8;

/// Whether the container's counter goes above `above` within 10 s.
async fn counting(
    rt: &pb::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
    id: &str,
    above: u64,
) -> bool {
    counter_reaches(rt, id, above + 1, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_containers_checkpointed_twice_at_once_keep_running_and_restore() {
    let f = ShimPod::start("load", pb::NamespaceMode::Pod).await;
    // The CRI socket is root's alone (connecting needs write permission on it). Its default
    // directory, /run/cpengine, is created 0700 (the shim's unit tests check that).
    let md = std::fs::metadata(&f.shim.socket).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600, "socket mode");
    assert_eq!(md.uid(), 0, "socket owner");

    let mut rt = f.rt.clone();
    let mut ids = Vec::new();
    for i in 0..CONTAINERS {
        ids.push(
            f.pod
                .start(container_config(&format!("c{i}"), "busybox", COUNTER))
                .await,
        );
    }
    for id in &ids {
        assert!(counting(&rt, id, 2).await, "{id} does not count");
    }

    // Every container twice, all sixteen calls at once.
    let dest = scratch("cpe-load-");
    let started = std::time::Instant::now();
    let calls: Vec<_> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| [(i, id.clone(), 1), (i, id.clone(), 2)])
        .map(|(i, id, round)| {
            let mut c = rt.clone();
            let loc = dest.path().join(format!("c{i}-{round}.tar"));
            let req = pb::CheckpointContainerRequest {
                container_id: id,
                location: loc.display().to_string(),
                timeout: 300,
            };
            tokio::spawn(async move { (loc, c.checkpoint_container(req).await) })
        })
        .collect();
    let mut archives = Vec::new();
    for call in calls {
        let (loc, r) = call.await.unwrap();
        r.unwrap_or_else(|e| panic!("checkpoint to {}: {e:?}", loc.display()));
        archives.push(loc);
    }
    eprintln!(
        "{} checkpoints of {CONTAINERS} containers at once: {:?}",
        archives.len(),
        started.elapsed()
    );
    for (i, id) in ids.iter().enumerate() {
        for round in [1, 2] {
            let loc = dest.path().join(format!("c{i}-{round}.tar"));
            let md = std::fs::metadata(&loc).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, 0o600, "{loc:?}");
            let info = cpengine::archive::read_info(&loc)
                .unwrap_or_else(|e| panic!("{}: {e}", loc.display()));
            assert_eq!(info.config.id, *id);
            assert!(
                info.members
                    .iter()
                    .any(|m| m.name == "checkpoint/inventory.img")
            );
        }
    }
    // Nothing else in the directory: no pending archive, no staging.
    let mut names: Vec<String> = std::fs::read_dir(dest.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2 * CONTAINERS, "{names:?}");
    // Every workload runs on, unfrozen.
    for id in &ids {
        assert_eq!(
            status_of(&mut rt, id).await.state,
            pb::ContainerState::ContainerRunning as i32
        );
        let now = counter_via_exec(&mut rt, id, "/tmp/counter").await;
        assert!(
            counting(&rt, id, now + 2).await,
            "{id} stuck after the checkpoints"
        );
    }

    // Archive locations: only in an allowed directory, never over an existing file.
    let outside = scratch_in("/tmp", "cpe-outside-");
    let e = checkpoint_to(&mut rt, &ids[0], &outside.path().join("x.tar"), 60)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(!outside.path().join("x.tar").exists());
    let taken = dest.path().join("c0-1.tar");
    let before = std::fs::read(&taken).unwrap();
    let e = checkpoint_to(&mut rt, &ids[0], &taken, 60)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    assert_eq!(
        std::fs::read(&taken).unwrap(),
        before,
        "existing file changed"
    );

    // Every container's second archive restores into a new pod and counts on from where it was.
    for id in &ids {
        stop(&mut rt, id, 0).await;
    }
    let pod2 = f.another_pod("load-restored", pb::NamespaceMode::Pod).await;
    for i in 0..CONTAINERS {
        let loc = dest.path().join(format!("c{i}-2.tar"));
        let restored = pod2
            .start(restore_config(&format!("c{i}"), &loc.display().to_string()))
            .await;
        let first = counter_via_exec(&mut rt, &restored, "/tmp/counter").await;
        assert!(first > 2, "c{i}: counter restarted ({first})");
        assert!(
            counting(&rt, &restored, first + 2).await,
            "c{i}: the restored container does not count"
        );
    }
    for p in [f.pod, pod2] {
        p.remove().await;
    }
}

fn scratch_in(dir: &str, prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .expect("tempdir")
}
