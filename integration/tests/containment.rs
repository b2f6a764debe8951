//! Containment a restored container keeps (issue 13 item 3), with a real runc container
//! checkpointed by cpengine and restored by `cpengine restore` with real CRIU:
//! - its v1 device cgroup allows only the standard character devices: a fully privileged
//!   host process put into that cgroup cannot mknod or open a block device of the host (the
//!   same process outside it can), and `devices.list` is exactly the allowed set;
//! - the request's memory and pids limits are in its cgroups;
//! - `cpengine exec` runs with exactly the init's capability sets, no_new_privs, seccomp mode
//!   and cgroups (read by the exec'd process from /proc inside the container).
//!
//! Run under the global lock (see the helper brief):
//! `flock -o /tmp/cpengine-realcriu.lock cargo test -p cpengine-integration --test containment -- --test-threads=1`

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cpengine::container::manage;
use cpengine::container::state::{ContainerRecord, StateRoot};
use cpengine_integration::leftovers::CliRestored;
use cpengine_integration::runc::*;
use cpengine_integration::*;

/// A block device of this host with data on it (not a loop device), as "major:minor".
fn host_block_device() -> String {
    let mut devs: Vec<String> = std::fs::read_dir("/sys/dev/block")
        .expect("/sys/dev/block")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("7:"))
        .filter(|n| {
            std::fs::read_to_string(format!("/sys/dev/block/{n}/size"))
                .is_ok_and(|s| s.trim() != "0")
        })
        .collect();
    devs.sort();
    devs.into_iter()
        .next()
        .expect("this host has no block device")
}

fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .trim()
        .to_string()
}

/// The /proc status fields of an exec'd process that must equal its container init's.
const CONFINEMENT: [&str; 9] = [
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Uid",
    "Gid",
];

/// The cgroup directory of a restored container's `controller` hierarchy, from its record.
fn cgroup_of(rec: &ContainerRecord, controller: &str) -> PathBuf {
    rec.cgroup_paths
        .iter()
        .find(|(k, _)| k.split(',').any(|c| c == controller))
        .map(|(_, p)| p.clone())
        .unwrap_or_else(|| panic!("no {controller} cgroup in {:?}", rec.cgroup_paths))
}

/// A v1 device cgroup's `devices.list`, sorted.
fn devices_list(devices_cgroup: &Path) -> Vec<String> {
    let mut list: Vec<String> = std::fs::read_to_string(devices_cgroup.join("devices.list"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    list.sort();
    list
}

/// The standard character devices a container may use, sorted as [`devices_list`] is.
fn allowed_devices() -> Vec<String> {
    let mut want: Vec<String> = [
        "c 1:3 rwm",
        "c 1:5 rwm",
        "c 1:7 rwm",
        "c 1:8 rwm",
        "c 1:9 rwm",
        "c 5:0 rwm",
        "c 5:1 rwm",
        "c 5:2 rwm",
        "c 136:* rwm",
    ]
    .map(String::from)
    .to_vec();
    want.sort();
    want
}

fn cpengine(state: &Path, args: &[&str]) -> (bool, String, String) {
    let (st, out, err) = run(Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state)
        .args(args));
    (st.success(), out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_restored_container_is_contained_and_exec_is_confined() {
    // A real runc container, checkpointed by cpengine into an archive.
    let engine = engine().await;
    let ck_state = scratch("cpe-cnstate-");
    let (bundle, _dir, archive) =
        checkpointed_counter(&engine, &StateRoot::at(ck_state.path()), "cpe-cn").await;

    // Restored by the CLI with limits from its flags.
    let state = scratch("cpe-cnstate-");
    let id = unique_id("cpe-cnr");
    let (ok, _, err) = cpengine(
        state.path(),
        &[
            "restore",
            archive.to_str().unwrap(),
            "--id",
            &id,
            "--rootfs-base",
            bundle.base.to_str().unwrap(),
            "--memory",
            "256m",
            "--pids-limit",
            "64",
        ],
    );
    let _guard = CliRestored::new(state.path(), &id);
    assert!(ok, "restore failed: {err}");
    let root = StateRoot::at(state.path());
    let rec = ContainerRecord::load(&root.container_record(&id)).unwrap();
    let cg = |key: &str| cgroup_of(&rec, key);
    let devices = cg("devices");
    // The init is in the cgroups the limits were written to.
    let init_cg = std::fs::read_to_string(format!("/proc/{}/cgroup", rec.pid)).unwrap();
    let rel = devices.strip_prefix("/sys/fs/cgroup/devices").unwrap();
    assert!(
        init_cg
            .lines()
            .any(|l| l.ends_with(&format!(":devices:/{}", rel.display()))),
        "{init_cg}"
    );

    // (a) devices.list is exactly the allowed set.
    assert_eq!(devices_list(&devices), allowed_devices());
    // A fully privileged process in the container's mount namespace: outside the device
    // cgroup it may make a host block device node, inside it not; a node made outside
    // (as an archive's /dev could carry one) cannot be opened inside.
    let blk = host_block_device();
    let (maj, min) = blk.split_once(':').unwrap();
    let pid = rec.pid;
    let join = format!("echo $$ > {}/cgroup.procs", devices.display());
    let sh = |script: String| run(Command::new("sh").arg("-c").arg(script));
    let in_ns = |cmd: &str| format!("nsenter -t {pid} -m -- sh -c '{cmd}'");
    let mk = format!("rm -f /dev/cpe-blk && mknod /dev/cpe-blk b {maj} {min}");
    let (st, _, err) = sh(in_ns(&mk));
    assert!(
        st.success(),
        "control mknod outside the device cgroup: {err}"
    );
    let mk_in = format!("mknod /dev/cpe-blk-in b {maj} {min}");
    let (st, _, err) = sh(format!("{join} && exec {}", in_ns(&mk_in)));
    assert!(
        !st.success() && err.contains("Operation not permitted"),
        "mknod in the device cgroup: {st} {err}"
    );
    let (st, _, err) = sh(format!(
        "{join} && exec {}",
        in_ns("head -c 1 /dev/cpe-blk")
    ));
    assert!(
        !st.success() && err.contains("Operation not permitted"),
        "opening the block node in the device cgroup: {st} {err}"
    );
    // A character device outside the allowed set (kmsg, 1:11): opened outside (its read then
    // wants a bigger buffer), refused at open inside.
    let (st, _, err) = sh(in_ns("rm -f /dev/cpe-chr && mknod /dev/cpe-chr c 1 11"));
    assert!(st.success(), "{err}");
    let (_, _, err) = sh(in_ns("head -c 1 /dev/cpe-chr"));
    assert!(
        !err.contains("Operation not permitted"),
        "control open outside: {err}"
    );
    let (st, _, err) = sh(format!(
        "{join} && exec {}",
        in_ns("head -c 1 /dev/cpe-chr")
    ));
    assert!(
        !st.success() && err.contains("Operation not permitted"),
        "opening 1:11 in the device cgroup: {st} {err}"
    );
    let _ = sh(in_ns("rm -f /dev/cpe-blk /dev/cpe-blk-in /dev/cpe-chr"));

    // (b) the limits of the request.
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap().trim().to_string();
    assert_eq!(
        read(cg("memory").join("memory.limit_in_bytes")),
        (256u64 << 20).to_string()
    );
    assert_eq!(read(cg("pids").join("pids.max")), "64");

    // (c) cpengine exec: the init's confinement exactly, and its cgroups.
    let (ok, out, err) = cpengine(
        state.path(),
        &[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "cat /proc/self/status; echo ===; cat /proc/1/status; echo ===; cat /proc/self/cgroup; echo ===; cat /proc/1/cgroup",
        ],
    );
    assert!(ok, "exec failed: {err}");
    let parts: Vec<&str> = out.split("===\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    let (mine, init) = (parts[0], parts[1]);
    // The exec'd shell is in the container's pid namespace (it sees the init as pid 1).
    assert_eq!(
        status_field(init, "Pid"),
        "1",
        "the exec'd process is not in the container's pid namespace: {init}"
    );
    for k in CONFINEMENT {
        assert_eq!(status_field(mine, k), status_field(init, k), "{k}");
    }
    // Not the host's root: runc's default set, with no_new_privs.
    assert_eq!(status_field(mine, "CapEff"), "0000000020000420");
    assert_eq!(status_field(mine, "NoNewPrivs"), "1");
    assert_eq!(parts[2], parts[3], "cgroups differ");
    assert!(parts[2].contains(&format!(":devices:/{}", rel.display())));
    // The host view agrees: the init's cgroups are the ones cpengine made.
    assert_eq!(
        init_cg,
        std::fs::read_to_string(format!("/proc/{}/cgroup", rec.pid)).unwrap()
    );
    // The exit status is the command's.
    let (ok, _, _) = cpengine(state.path(), &["exec", &id, "--", "sh", "-c", "exit 7"]);
    assert!(!ok);
    let st = Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state.path())
        .args(["exec", &id, "--", "sh", "-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));
    manage::delete(&root, &id, true).await.unwrap();
}

/// The same through the shim: a container checkpointed over CRI and restored by
/// CreateContainer/StartContainer keeps the device cgroup and the request's memory and cpu
/// limits, and ExecSync into it has the init's confinement and cgroups, with the
/// environment of the restore request (not the checkpoint's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shim_restored_container_is_contained_and_exec_sync_is_confined() {
    use cpengine_integration::cri::*;
    use k8s_cri::v1 as pb;
    let f = ShimPod::start("contain", pb::NamespaceMode::Pod).await;
    let mut rt = f.rt.clone();
    let script = QUIET_COUNTER;
    let ctr = f
        .pod
        .start(container_config("counter", "busybox", script))
        .await;
    // ExecSync into the runc container (runc exec) has its init's confinement too.
    let r = rt
        .exec_sync(pb::ExecSyncRequest {
            container_id: ctr.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /proc/self/status; echo ===; cat /proc/1/status".into(),
            ],
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    let (mine, init) = out.split_once("===\n").expect("two statuses");
    for k in ["CapPrm", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp"] {
        assert_eq!(
            status_field(mine, k),
            status_field(init, k),
            "runc exec {k}"
        );
    }
    let dest = scratch("cpe-kubelet-checkpoints-");
    let loc = kubelet_location(dest.path(), "contain", "default", "counter");
    checkpoint_to(&mut rt, &ctr, &loc, 60)
        .await
        .expect("CheckpointContainer");
    stop(&mut rt, &ctr, 0).await;

    let pod2 = f
        .another_pod("contain-restored", pb::NamespaceMode::Pod)
        .await;
    let mut cfg = restore_config("counter", &loc.display().to_string());
    cfg.envs = vec![pb::KeyValue {
        key: "CPE_LIVE".into(),
        value: "from-the-request".into(),
    }];
    cfg.linux.as_mut().unwrap().resources = Some(pb::LinuxContainerResources {
        memory_limit_in_bytes: 200 << 20,
        cpu_shares: 512,
        ..Default::default()
    });
    let id = pod2.start(cfg).await;
    let state = f.shim.state();
    let rec = ContainerRecord::load(&state.container_record(&id)).expect("engine record");
    let cg = |key: &str| cgroup_of(&rec, key);
    let read = |p: PathBuf| std::fs::read_to_string(&p).unwrap();
    // (a) only the standard devices.
    assert_eq!(devices_list(&cg("devices")), allowed_devices());
    // (b) the request's limits.
    assert_eq!(
        read(cg("memory").join("memory.limit_in_bytes")).trim(),
        (200u64 << 20).to_string()
    );
    assert_eq!(read(cg("cpu").join("cpu.shares")).trim(), "512");
    // (c) ExecSync: the init's confinement and cgroups, the request's environment.
    let r = rt
        .exec_sync(pb::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /proc/self/status; echo ===; cat /proc/self/cgroup; echo ===; env; echo ===; for n in pid mnt net ipc uts; do readlink /proc/self/ns/$n; done".into(),
            ],
            timeout: 30,
        })
        .await
        .expect("ExecSync")
        .into_inner();
    let out = String::from_utf8_lossy(&r.stdout).into_owned();
    assert_eq!(
        r.exit_code,
        0,
        "{out} {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let parts: Vec<&str> = out.split("===\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    let init_status = read(PathBuf::from(format!("/proc/{}/status", rec.pid)));
    for k in CONFINEMENT {
        assert_eq!(
            status_field(parts[0], k),
            status_field(&init_status, k),
            "{k}"
        );
    }
    // Not the host's root.
    assert_ne!(status_field(parts[0], "CapEff"), "000001fffeffffff");
    assert_eq!(
        parts[1],
        read(PathBuf::from(format!("/proc/{}/cgroup", rec.pid))),
        "cgroups differ from the init's"
    );
    assert!(
        parts[2].contains("CPE_LIVE=from-the-request"),
        "{}",
        parts[2]
    );
    // Its namespaces are the init's.
    let init_ns: String = ["pid", "mnt", "net", "ipc", "uts"]
        .iter()
        .map(|n| {
            let l = std::fs::read_link(format!("/proc/{}/ns/{n}", rec.pid)).unwrap();
            format!("{}\n", l.display())
        })
        .collect();
    assert_eq!(parts[3], init_ns);
    // A timed-out exec is killed (through its pid file), not left in the container.
    let t = rt
        .exec_sync(pb::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "31".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(t.code(), tonic::Code::DeadlineExceeded, "{t:?}");
    let procs = |d: PathBuf| read(d.join("cgroup.procs"));
    assert!(
        wait_until(Duration::from_secs(10), || {
            procs(cg("pids")).lines().all(|p| {
                std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                    .map(|c| !c.contains("31"))
                    .unwrap_or(true)
            })
        }),
        "the timed-out exec is still running: {}",
        procs(cg("pids"))
    );
    stop(&mut rt, &id, 0).await;
}
