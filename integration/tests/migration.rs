//! The migration walkthrough our users do with buildah and a registry, done by cpengine alone:
//! checkpoint a running container → build a checkpoint image → push it to a registry → (on
//! the "other node", here a second state root) restore straight from the registry reference.

use std::process::Command;
use std::time::Duration;

use cpengine_integration::registry::Registry;
use cpengine_integration::runc::*;
use cpengine_integration::*;

fn cpe(state: &std::path::Path) -> Command {
    let mut c = Command::new(cpengine_bin());
    c.arg("--state-root")
        .arg(state)
        .env("CPENGINE_RELAY_EXE", cpengine_bin());
    c
}

fn ok(cmd: &mut Command) -> String {
    let (st, out, err) = run(cmd);
    assert!(st.success(), "{cmd:?} failed:\n{out}\n{err}");
    out
}

#[test]
fn checkpoint_image_build_push_pull_restore() {
    init();
    let registry = Registry::start();
    let bundle = Bundle::busybox(&format!(
        "echo migrated > /root/state.txt; {COUNTER_SCRIPT}"
    ));
    let id = unique_id("cpe-m");
    let c = RuncContainer::run(&bundle, &id);
    assert!(wait_until(Duration::from_secs(10), || counter_in(
        &bundle.rootfs
    ) >= 5));

    // Node A: checkpoint, build the checkpoint image, push it.
    let node_a = scratch("cpe-node-a-");
    let archive = node_a.path().join("checkpoint.tar");
    ok(cpe(node_a.path())
        .args(["checkpoint", &id, "--runc-root"])
        .arg(&c.root)
        .arg("--output")
        .arg(&archive));
    let at_checkpoint = counter_in(&bundle.rootfs);
    let tag = format!("localhost/ckpt/{id}:1");
    let built: serde_json::Value = serde_json::from_str(&ok(cpe(node_a.path())
        .args(["image", "build"])
        .arg(&archive)
        .args(["--tag", &tag, "--json"])))
    .unwrap();
    let ann = built.to_string();
    assert!(
        ann.contains("io.kubernetes.cri-o.annotations.checkpoint.name")
            && ann.contains("org.criu.checkpoint.container.name"),
        "{ann}"
    );
    let remote = format!("{}/checkpoints/{id}:1", registry.host());
    ok(cpe(node_a.path()).args(["image", "push", &tag, &remote, "--insecure"]));
    drop(c); // the original container is gone

    // Node B: nothing local; restore pulls the image from the registry.
    let node_b = scratch("cpe-node-b-");
    let new_id = unique_id("cpe-mr");
    let out = ok(cpe(node_b.path())
        .args([
            "restore",
            &remote,
            "--id",
            &new_id,
            "--insecure",
            "--rootfs-base",
        ])
        .arg(&bundle.base));
    assert!(out.contains(&new_id), "{out}");
    let listed = ok(cpe(node_b.path()).args(["image", "ls", "--json"]));
    assert!(
        listed.contains(&format!("checkpoints/{id}")),
        "pulled image not in node B's store: {listed}"
    );
    let rootfs = node_b
        .path()
        .join("run/containers")
        .join(&new_id)
        .join("rootfs");
    let first = counter_in(&rootfs);
    assert!(
        first >= at_checkpoint.saturating_sub(1),
        "counter restarted: {first} < {at_checkpoint}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&rootfs) > first + 2),
        "restored container does not run"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("root/state.txt")).unwrap(),
        "migrated\n"
    );
    ok(cpe(node_b.path()).args(["delete", "--force", &new_id]));
    assert!(!rootfs.exists());
}
