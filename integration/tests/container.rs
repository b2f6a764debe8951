//! Container checkpoint/restore against real runc containers and real CRIU.

use std::time::Duration;

use cpengine::CriuFlags;
use cpengine::container::checkpoint::{dump_options, write_descriptors};
use cpengine::container::restore::{CheckpointDir, ContainerRestoreOptions, RootfsBase, restore};
use cpengine::container::state::StateRoot;
use cpengine::container::{Container, Status};
use cpengine::criu::{Ack, Notification};
use cpengine_integration::runc::*;
use cpengine_integration::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_dump_then_restore_continues_the_counter() {
    let engine = engine().await;
    let (bundle, id, mut c) = counting_container("cpe-c", "");
    std::fs::write(
        bundle.rootfs.join("root/note.txt"),
        "written before the checkpoint\n",
    )
    .unwrap();

    let state = StateRoot::at(scratch("cpe-state-").keep());
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), &state).expect("find");
    assert_eq!(ctr.status(), Status::Running);
    let staging = scratch("cpe-stage-");
    let images = staging.path().join("checkpoint");
    std::fs::create_dir_all(&images).unwrap();
    let flags = CriuFlags {
        leave_running: true,
        ..CriuFlags::default()
    };
    let opts = dump_options(&ctr, &images, staging.path(), &flags).unwrap();
    write_descriptors(&ctr, &images).unwrap();
    let mut post_dump = false;
    let mut hook = |n: Notification| {
        if let Notification::PostDump = n {
            post_dump = true;
        }
        Ack::ok()
    };
    let report = engine
        .dump_with(&opts, &mut hook)
        .await
        .expect("container dump");
    assert!(post_dump);
    let at_dump = counter_in(&bundle.rootfs);
    eprintln!("{report}");
    // Leave-running: the container keeps counting and is not frozen.
    assert!(wait_until(Duration::from_secs(5), || counter_in(
        &bundle.rootfs
    ) > at_dump + 2));
    assert_eq!(ctr.status(), Status::Running);

    // The rootfs diff for now: the overlay upper dir as a tar.
    let diff = staging.path().join("rootfs-diff.tar");
    {
        let f = std::fs::File::create(&diff).unwrap();
        let mut b = tar::Builder::new(f);
        b.follow_symlinks(false);
        b.append_dir_all(".", &bundle.upper).unwrap();
        b.finish().unwrap();
    }
    c.destroy();

    let ckpt = CheckpointDir {
        images_dir: images.clone(),
        spec: ctr.spec_json.clone(),
        config: None,
        rootfs_diff: Some(diff),
        deleted: vec![],
        source: None,
    };
    let new_id = unique_id("cpe-r");
    let mut ro = ContainerRestoreOptions::new(&new_id, state.clone());
    ro.base = Some(RootfsBase::Dir(bundle.base.clone()));
    ro.relay_exe = Some(cpengine_bin());
    let r = restore(&engine, &ckpt, &ro)
        .await
        .expect("container restore");
    eprintln!("restored pid {} rootfs {}", r.pid, r.rootfs.display());
    let first = counter_in(&r.rootfs);
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&r.rootfs) > first + 2),
        "restored container does not count"
    );
    assert!(
        first >= at_dump.saturating_sub(1),
        "counter restarted: {first} < {at_dump}"
    );
    assert_eq!(
        std::fs::read_to_string(r.rootfs.join("root/note.txt")).unwrap(),
        "written before the checkpoint\n"
    );
    let restored = Container::find(&new_id, &[], &state).expect("find restored");
    assert_eq!(restored.status(), Status::Running);
    // The relay writes the container's output to its log in CRI format.
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&r.log_path)
            .unwrap_or_default()
            .contains(" stdout F tick ")
    }));

    // Delete cleans everything: the rootfs mount, cgroups and state.
    cpengine::container::manage::delete(&state, &new_id, true)
        .await
        .expect("delete");
    assert!(!r.rootfs.exists(), "rootfs mount point left behind");
    assert!(!state.container_record(&new_id).exists());
    for dir in restored.cgroup_paths.values() {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounted.contains(&new_id), "a mount of {new_id} is left");
}
