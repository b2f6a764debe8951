//! Provenance: a real runc container checkpointed with `cpengine checkpoint` (signed with the
//! node key of its state root), restored on "another node" (another state root) with
//! `cpengine restore --require-signed --trusted-key <the first node's exported key>`. The same
//! archive with one byte of one member flipped, or with its signature member stripped, or
//! trusted by nobody, is refused with the typed error naming the member, before anything is
//! created: no container state, no mount, no cgroup, no process. Without `--require-signed`
//! the unsigned archive restores.
//!
//! Run under the global lock (see the helper brief):
//! `flock -o /tmp/cpengine-realcriu.lock cargo test -p cpengine-integration --test provenance -- --test-threads=1`

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cpengine::container::state::StateRoot;
use cpengine_integration::faults::mounts_under;
use cpengine_integration::leftovers::{
    CliRestored, assert_refused_restore_left_nothing, cli_restore,
};
use cpengine_integration::runc::*;
use cpengine_integration::*;

const SIGNATURE: &str = "cpengine-signature.json";

/// Deletes a restored container when dropped (also when an assertion fails first).
fn cli(state: &Path, args: &[&str]) -> (bool, String, String) {
    let (st, out, err) = run(Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state)
        .args(args));
    (st.success(), out, err)
}

/// Copies the plain tar `from` to `to` member by member: `edit` may change a member's data
/// (in place, same size) or drop it (returns false). Headers are kept (checksum redone).
fn rewrite(from: &Path, to: &Path, mut edit: impl FnMut(&str, &mut Vec<u8>) -> bool) {
    let mut ar = tar::Archive::new(std::fs::File::open(from).unwrap());
    let mut out = tar::Builder::new(std::fs::File::create(to).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        if !edit(name.trim_end_matches('/'), &mut data) {
            continue;
        }
        let mut h = e.header().clone();
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.append(&h, &data[..]).unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
}

fn member_names(archive: &Path) -> Vec<String> {
    let mut ar = tar::Archive::new(std::fs::File::open(archive).unwrap());
    ar.entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_archives_signed_by_a_trusted_key_restore_and_tampering_is_refused() {
    require_root();
    // Node A: a counting container, checkpointed with the CLI.
    let node_a = scratch("cpe-prov-a-");
    let bundle = Bundle::busybox(COUNTER_SCRIPT);
    let id = unique_id("cpe-pv");
    let c = RuncContainer::run(&bundle, &id);
    assert!(wait_until(Duration::from_secs(10), || counter_in(
        &bundle.rootfs
    ) >= 3));
    let out = scratch("cpe-prov-out-");
    let archive = out.path().join("checkpoint.tar");
    let root = c.root.display().to_string();
    // A node key others may read is refused before the container is touched.
    let (ok, _, stderr) = cli(node_a.path(), &["key", "show"]);
    assert!(ok, "{stderr}");
    let key_file = node_a.path().join("lib/keys/node.ed25519");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(&key_file).unwrap().mode() & 0o777, 0o600);
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (ok, _, stderr) = cli(
        node_a.path(),
        &[
            "checkpoint",
            &id,
            "--runc-root",
            &root,
            "-o",
            &archive.display().to_string(),
        ],
    );
    assert!(!ok, "checkpointed with a group-readable key");
    assert!(stderr.contains("has mode 0640"), "{stderr}");
    assert!(!archive.exists());
    let n = counter_in(&bundle.rootfs);
    assert!(
        wait_until(Duration::from_secs(10), || counter_in(&bundle.rootfs) > n),
        "the container does not run on after the refused checkpoint"
    );
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, stdout, stderr) = cli(
        node_a.path(),
        &[
            "checkpoint",
            &id,
            "--runc-root",
            &root,
            "-o",
            &archive.display().to_string(),
        ],
    );
    assert!(ok, "checkpoint failed: {stderr}");
    drop(c);
    // Signed with node A's key, created 0600 on first use; the signature is the last member.
    let (ok, key_line, stderr) = cli(node_a.path(), &["key", "show"]);
    assert!(ok, "{stderr}");
    let key_a = key_line.lines().next().unwrap().to_owned();
    let key_id = key_line
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_owned();
    assert!(stdout.contains(&format!("node key {key_id}")), "{stdout}");
    let names = member_names(&archive);
    assert_eq!(
        names.last().map(String::as_str),
        Some(SIGNATURE),
        "{names:?}"
    );
    let pubkey = out.path().join("node-a.pub");
    let (ok, _, stderr) = cli(
        node_a.path(),
        &["key", "export", "-o", &pubkey.display().to_string()],
    );
    assert!(ok, "{stderr}");
    assert!(std::fs::read_to_string(&pubkey).unwrap().contains(&key_a));
    let trusted = [
        "--require-signed",
        "--trusted-key",
        pubkey.to_str().unwrap(),
    ];

    // The checkpoint's members, each with data, to tamper with.
    let pages = names
        .iter()
        .find(|n| n.starts_with("checkpoint/pages-"))
        .expect("a pages image")
        .clone();

    // Node B trusts node A's key: the signed archive restores (and is still verified).
    let node_b = scratch("cpe-prov-b-");
    let rid = unique_id("cpe-pvr");
    let (ok, stdout, stderr) = cli_restore(&archive, &rid, &bundle.base, node_b.path(), &trusted);
    let guard = CliRestored::new(node_b.path(), &rid);
    assert!(ok, "signed restore failed: {stderr}");
    assert!(stdout.contains("signature verified"), "{stdout}");
    assert!(stdout.contains("verified 2 threads"), "{stdout}");
    let (ok, _, stderr) = cli(node_b.path(), &["delete", "--force", &rid]);
    assert!(ok, "{stderr}");
    drop(guard);

    // Node B trusting only its own key refuses node A's archive, naming the key.
    let refused = |archive: &Path, flags: &[&str], expect: &str| {
        let rid = unique_id("cpe-pvr");
        let (ok, _, stderr) = cli_restore(archive, &rid, &bundle.base, node_b.path(), flags);
        let _guard = CliRestored::new(node_b.path(), &rid);
        assert!(!ok, "{} restored", archive.display());
        assert!(stderr.contains(expect), "wanted {expect:?}: {stderr}");
        assert_refused_restore_left_nothing(node_b.path(), &rid);
    };
    refused(
        &archive,
        &["--require-signed"],
        &format!("signed by key {key_id}, which is not a trusted key"),
    );

    // One byte of the pages image flipped: refused, naming the member and the digest.
    let flipped = out.path().join("flipped.tar");
    let mut hit = false;
    rewrite(&archive, &flipped, |n, d| {
        if n == pages && !d.is_empty() {
            let at = d.len() / 2;
            d[at] ^= 0x01;
            hit = true;
        }
        true
    });
    assert!(hit);
    refused(
        &flipped,
        &trusted,
        &format!("member {pages}: its sha256 differs from the signed manifest"),
    );

    // A JSON member edited (same size): refused as well.
    let edited = out.path().join("edited-config.tar");
    rewrite(&archive, &edited, |n, d| {
        if n == "config.dump" {
            let i = d.iter().position(|b| *b == b'"').unwrap();
            d[i + 1] ^= 0x20;
        }
        true
    });
    refused(&edited, &trusted, "member config.dump: its sha256 differs");

    // The signature stripped: refused with --require-signed, restored without it.
    let unsigned = out.path().join("unsigned.tar");
    rewrite(&archive, &unsigned, |n, _| n != SIGNATURE);
    assert!(!member_names(&unsigned).iter().any(|n| n == SIGNATURE));
    refused(&unsigned, &trusted, "the archive is not signed");
    let rid = unique_id("cpe-pvs");
    let (ok, stdout, stderr) = cli_restore(&unsigned, &rid, &bundle.base, node_b.path(), &[]);
    let _guard = CliRestored::new(node_b.path(), &rid);
    assert!(
        ok,
        "unsigned restore without --require-signed failed: {stderr}"
    );
    assert!(!stdout.contains("signature verified"), "{stdout}");
    let rec = cpengine::container::state::ContainerRecord::load(
        &StateRoot::at(node_b.path()).container_record(&rid),
    )
    .unwrap();
    let before = counter_in(&rec.rootfs);
    assert!(
        wait_until(Duration::from_secs(10), || counter_in(&rec.rootfs) > before),
        "the restored counter (pid {}) does not advance",
        rec.pid
    );
    let (ok, _, stderr) = cli(node_b.path(), &["delete", "--force", &rid]);
    assert!(ok, "{stderr}");
}

#[test]
fn a_world_readable_node_key_is_refused() {
    require_root();
    let node = scratch("cpe-prov-k-");
    let (ok, line, stderr) = cli(node.path(), &["key", "show"]);
    assert!(ok, "{stderr}");
    assert!(line.starts_with("ed25519 "), "{line}");
    let key = node.path().join("lib/keys/node.ed25519");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, _, stderr) = cli(node.path(), &["key", "show"]);
    assert!(!ok);
    assert!(
        stderr.contains("has mode 0644: group or others may access it"),
        "{stderr}"
    );
    // A restore requiring signatures (which trusts the node key) refuses it as well, before
    // it reads the archive.
    let (ok, _, stderr) = cli(
        node.path(),
        &[
            "restore",
            "/nonexistent.tar",
            "--id",
            "x",
            "--require-signed",
        ],
    );
    assert!(!ok);
    assert!(stderr.contains("has mode 0644"), "{stderr}");
}

/// The shim with `--require-signed`: its CheckpointContainer archive (signed with the node key
/// of its state root) restores at CreateContainer; the same archive without its signature is
/// refused at CreateContainer with PERMISSION_DENIED, nothing of it created or mounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_requiring_signatures_restores_its_own_archives_only() {
    use cpengine_integration::cri::*;
    use k8s_cri::v1 as pb;
    let dir = scratch("cpe-shim-").keep();
    let shim = Shim::start_in(&dir, &["--require-signed"]);
    import_busybox(&shim.state(), "docker.io/library/busybox:latest");
    let (mut rt, _) = shim.clients();
    let logs = scratch("cpe-podlogs-");
    let pod_cfg = pod_config("signed", logs.path(), pb::NamespaceMode::Pod);
    let pod = run_pod(&mut rt, pod_cfg.clone()).await;
    let script = QUIET_COUNTER;
    let ctr = create_start(
        &mut rt,
        &pod,
        &pod_cfg,
        container_config("counter", "busybox", script),
    )
    .await;
    let dest = scratch("cpe-kubelet-checkpoints-");
    let loc = kubelet_location(dest.path(), "signed", "default", "counter");
    rt.checkpoint_container(pb::CheckpointContainerRequest {
        container_id: ctr.clone(),
        location: loc.display().to_string(),
        timeout: 60,
    })
    .await
    .expect("CheckpointContainer");
    rt.stop_container(pb::StopContainerRequest {
        container_id: ctr.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    assert_eq!(
        member_names(&loc).last().map(String::as_str),
        Some(SIGNATURE)
    );

    let unsigned = dest.path().join("unsigned.tar");
    rewrite(&loc, &unsigned, |n, _| n != SIGNATURE);
    let pod2_cfg = pod_config("signed-restored", logs.path(), pb::NamespaceMode::Pod);
    let pod2 = run_pod(&mut rt, pod2_cfg.clone()).await;
    let create = |image: &Path| {
        let mut cfg = container_config("counter", &image.display().to_string(), "unused");
        cfg.command.clear();
        pb::CreateContainerRequest {
            pod_sandbox_id: pod2.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod2_cfg.clone()),
        }
    };
    // Refused at CreateContainer (the archive is extracted there), before anything exists.
    let e = rt
        .create_container(create(&unsigned))
        .await
        .expect_err("an unsigned archive must not be created");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("the archive is not signed"), "{e:?}");
    let listed = rt
        .list_containers(pb::ListContainersRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(
        listed.len(),
        1,
        "only the checkpointed container: {listed:?}"
    );
    let state = shim.state();
    assert_eq!(
        state.container_ids(),
        Vec::<String>::new(),
        "engine records left"
    );
    assert_eq!(
        mounts_under(&state.run.join("containers")),
        Vec::<PathBuf>::new()
    );

    // The signed original restores and runs.
    let id = rt
        .create_container(create(&loc))
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(pb::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("the signed archive starts");
    let s = status_of(&mut rt, &id).await;
    assert_eq!(
        s.state,
        pb::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
}
