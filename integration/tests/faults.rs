//! Fault injection against real CRIU: the CRIU worker SIGKILLed at every hook and at random
//! moments of leave-running dumps and of restores (process trees and runc containers), and
//! the engine process itself SIGKILLed mid-checkpoint. After every fault: the workload runs
//! (not frozen, not stopped, not ptrace-attached, its network not locked, its counters
//! advancing), nothing is left at the destination or in staging, a failed restore leaves no
//! task, mount, cgroup or state behind and its input unchanged, and the next operation
//! succeeds.
//!
//! CI runs each hook once and two random delays per scenario; `scripts/fault-long.sh` runs
//! 100 random delays per scenario and every hook ten times (see `cpengine_integration::faults`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
use cpengine::container::restore::{ContainerRestoreOptions, RootfsBase, restore_archive};
use cpengine::container::state::StateRoot;
use cpengine::container::{Container, Status, manage};
use cpengine::fault::{DUMP_HOOKS, FaultPoint, RESTORE_HOOKS};
use cpengine::{CheckpointOptions, RestoreOptions};
use cpengine_integration::faults::*;
use cpengine_integration::leftovers::assert_restore_left_nothing;
use cpengine_integration::runc::*;
use cpengine_integration::*;

/// One fault of a scenario: at a hook, or after a delay.
fn plan(rng: &mut Rng, hooks: &[&str], max_delay: Duration) -> Vec<FaultPoint> {
    let mut v = Vec::new();
    for _ in 0..hook_rounds() {
        v.extend(
            hooks
                .iter()
                .map(|h| FaultPoint::KillCriuAtHook(h.to_string())),
        );
    }
    for _ in 0..trials() {
        v.push(FaultPoint::KillCriuAfter(rng.delay(max_delay)));
    }
    v
}

/// Counts a trial: a fault counts only if it was really injected (CRIU was SIGKILLed); a hook
/// never reached or a kill that came after the operation had finished injected nothing.
fn count(t: &mut Tally, f: &FaultPoint, injected: bool, finished: bool) {
    match f {
        FaultPoint::KillCriuAtHook(_) if injected => t.at_hooks += 1,
        FaultPoint::KillCriuAtHook(_) => t.not_reached += 1,
        FaultPoint::KillCriuAfter(_) if injected => t.random += 1,
        FaultPoint::KillCriuAfter(_) => {
            assert!(
                finished,
                "a random fault neither fired nor let the operation finish"
            );
            t.finished_first += 1;
        }
    }
}

/// Whether the operation's outcome `r` says the fault was injected, checking that a failure is
/// the fault's and nothing else.
fn injected<T: std::fmt::Debug>(r: &cpengine::Result<T>, what: &str) -> bool {
    match r {
        Ok(_) => false,
        Err(e) => {
            assert!(
                criu_was_killed(e),
                "{what}: failed, but not because criu was killed: {e:?}"
            );
            true
        }
    }
}

/// Judges the tasks of the workload that died during a trial: only a death by CRIU's own
/// breakpoint (SIGTRAP) after a random SIGKILL of CRIU that landed in its parasite phase (its
/// log says so) is a casualty of the fault (counted, and bounded by the caller); any other
/// death fails the suite with how each task ended, CRIU's log tail and the kernel log since
/// the trial began.
///
/// `killed_anywhere`: CRIU was SIGKILLed at a moment of the test's choosing rather than at a
/// hook (hooks run outside the parasite phase, so a kill there must never cost a task).
/// `criu_log`: CRIU's log when it is kept (a container checkpoint removes its staging).
fn judge_deaths(
    dead: &[(i32, Death)],
    killed_anywhere: bool,
    criu_log: Option<&Path>,
    klog: &mut KernelLog,
    what: &str,
) {
    let in_parasite = criu_log.is_some_and(killed_in_parasite_phase);
    let excused = killed_anywhere
        && dead.iter().all(|(_, d)| d.is_breakpoint_trap())
        && (criu_log.is_none() || in_parasite);
    if excused {
        eprintln!(
            "{what}: criu was SIGKILLed in its parasite phase and the workload died of its breakpoint: {}",
            dead.iter()
                .map(|(p, d)| format!("{p} {d}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        return;
    }
    let tail = criu_log
        .and_then(|l| std::fs::read_to_string(l).ok())
        .map(|t| {
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        })
        .unwrap_or_default();
    panic!(
        "{what}: the workload died: {}; criu killed by the test outside a hook: {killed_anywhere}, criu log shows its parasite phase: {in_parasite}\nkernel log since the trial began: {:?}\ncriu log tail:\n{tail}",
        dead.iter()
            .map(|(p, d)| format!("task {p} {d}"))
            .collect::<Vec<_>>()
            .join(", "),
        klog.since()
    );
}

// ---- process trees ---------------------------------------------------------------------------

fn assert_tree_unharmed(w: &Workload, tree: &[i32], what: &str) {
    assert_running_untraced(tree, what);
    assert_eq!(w.tree(), tree, "{what}: the tree changed");
    let c = w.counter();
    assert!(w.advances_past("counter", c), "{what}: counter stuck");
    let c = w.file_counter("child-0");
    assert!(w.advances_past("child-0", c), "{what}: child stuck");
}

fn images_in(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| n.ends_with(".img"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_killed_during_a_process_dump_leaves_the_tree_running() {
    let engine = engine().await;
    let start = || Workload::start(&["--children", "1", "--mem", "64"]);
    let mut w = start();
    let mut tree = w.tree();
    let mut rng = Rng::from_env("process dump");
    let base = scratch("cpe-fdump-");
    let dump = |pid: i32, dir: &Path, fault: Option<FaultPoint>| {
        let mut o = CheckpointOptions::new(pid, dir);
        o.flags.leave_running = true;
        o.flags.fault = fault;
        let engine = engine.clone();
        async move { engine.dump(&o).await }
    };
    let t = Instant::now();
    dump(w.pid, &base.path().join("baseline"), None)
        .await
        .expect("baseline dump");
    let typical = t.elapsed();
    let mut tally = Tally::default();
    for (i, fault) in plan(&mut rng, DUMP_HOOKS, typical * 6 / 5)
        .into_iter()
        .enumerate()
    {
        let what = format!("trial {i} ({fault})");
        let dir = base.path().join(format!("t{i}"));
        let mut klog = KernelLog::mark();
        let r = dump(w.pid, &dir, Some(fault.clone())).await;
        let finished = r.is_ok();
        let injected = injected(&r, &what);
        if fault == FaultPoint::KillCriuAtHook("network-lock".into()) {
            // A tree in the host's network namespace never reaches this hook.
            assert!(finished, "{what}: {r:?}");
        } else if let FaultPoint::KillCriuAtHook(_) = fault {
            assert!(injected, "{what}: the hook was not reached: {r:?}");
        }
        count(&mut tally, &fault, injected, finished);
        assert_no_criu_helpers_left(&mut tally, &what);
        // A task CRIU was killed inside of dies as soon as it runs again: wait until every
        // task has made progress, or one has died.
        let progressed = |w: &Workload, c: u64, k: u64| {
            w.file_counter("counter") > c && w.file_counter("child-0") > k
        };
        let (c, k) = (w.counter(), w.file_counter("child-0"));
        wait_until(Duration::from_secs(10), || {
            !deaths(&tree).is_empty() || progressed(&w, c, k)
        });
        let dead = deaths(&tree);
        if !dead.is_empty() {
            let log = dir.join("dump.log");
            let anywhere = injected && matches!(fault, FaultPoint::KillCriuAfter(_));
            judge_deaths(&dead, anywhere, Some(&log), &mut klog, &what);
            tally.parasite_casualties += 1;
            drop(w);
            w = start();
            tree = w.tree();
            let _ = std::fs::remove_dir_all(&dir);
            continue;
        }
        assert_tree_unharmed(&w, &tree, &what);
        if !finished {
            assert!(
                images_in(&dir).is_empty(),
                "{what}: images left: {:?}",
                images_in(&dir)
            );
            // The log is kept for diagnosis (once CRIU got as far as opening it).
            assert!(
                dir.join("dump.log").exists() || matches!(fault, FaultPoint::KillCriuAfter(_)),
                "{what}: the log is kept for diagnosis"
            );
        }
        // The next checkpoint succeeds.
        let next = base.path().join(format!("n{i}"));
        dump(w.pid, &next, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: next dump: {e:?}"));
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir_all(&next);
    }
    assert_eq!(w.verify_memory(), "ok 64");
    tally.report("process dump");
    tally.assert_casualties_bounded("process dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_killed_during_a_process_restore_leaves_nothing_and_the_next_restore_works() {
    let engine = engine().await;
    let mut w = Workload::start(&["--children", "1", "--mem", "16"]);
    let tree = w.tree();
    let images = scratch("cpe-frst-");
    let mut o = CheckpointOptions::new(w.pid, images.path());
    o.flags.leave_running = true;
    engine.dump(&o).await.expect("dump");
    w.kill();
    let sum = fingerprint(images.path());
    let work = scratch("cpe-frst-work-");
    let restore = |fault: Option<FaultPoint>| {
        let mut r = RestoreOptions::new(images.path());
        r.work_dir = Some(work.path().to_path_buf());
        r.flags.fault = fault;
        let engine = engine.clone();
        async move { engine.restore(r).await }
    };
    let t = Instant::now();
    let r = restore(None).await.expect("baseline restore");
    let typical = t.elapsed();
    w.adopt(r.pid);
    assert_eq!(w.tree(), tree);
    w.kill();

    let mut rng = Rng::from_env("process restore");
    let mut tally = Tally::default();
    for (i, fault) in plan(&mut rng, RESTORE_HOOKS, typical * 6 / 5)
        .into_iter()
        .enumerate()
    {
        let what = format!("trial {i} ({fault})");
        let r = restore(Some(fault.clone())).await;
        let finished = r.is_ok();
        let injected = injected(&r, &what);
        count(&mut tally, &fault, injected, finished);
        assert_no_criu_helpers_left(&mut tally, &what);
        match r {
            Ok(rep) => {
                // "setup-namespaces" is not reached without namespaces; a late random kill
                // lets the restore finish.
                assert!(
                    !matches!(&fault, FaultPoint::KillCriuAtHook(h) if h != "setup-namespaces"),
                    "{what}: restore succeeded despite the fault"
                );
                w.adopt(rep.pid);
            }
            Err(e) => {
                assert!(e.criu().is_some(), "{what}: {e:?}");
                // Nothing of the failed restore survives.
                let gone = wait_until(Duration::from_secs(5), || {
                    reap_zombies();
                    tree.iter().all(|&p| !cpengine::proc::exists(p))
                });
                let left: Vec<_> = tree
                    .iter()
                    .filter(|&&p| cpengine::proc::exists(p))
                    .map(|&p| (p, cpengine::proc::task_state(p)))
                    .collect();
                assert!(gone, "{what}: tasks of the failed restore left: {left:?}");
                if matches!(
                    &fault,
                    FaultPoint::KillCriuAtHook(h) if h == "post-restore" || h == "pre-resume"
                ) {
                    tally.repairs += 1;
                }
                assert_eq!(fingerprint(images.path()), sum, "{what}: images modified");
                let rep = restore(None)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: next restore: {e:?}"));
                w.adopt(rep.pid);
            }
        }
        assert_eq!(w.tree(), tree, "{what}");
        assert_tree_unharmed(&w, &tree, &what);
        w.kill();
    }
    assert_eq!(fingerprint(images.path()), sum, "images modified");
    tally.report("process restore");
}

// ---- runc containers -------------------------------------------------------------------------

fn state() -> StateRoot {
    StateRoot::at(scratch("cpe-fstate-").keep())
}

/// The tasks of a container (its freezer cgroup's).
fn tasks_of(ctr: &Container) -> Vec<i32> {
    let f = ctr.freezer().expect("container has a freezer cgroup");
    cpengine::cgroups::procs(&f)
}

/// The container is running as before a failed checkpoint.
fn assert_container_unharmed(ctr: &Container, bundle: &Bundle, what: &str) {
    assert_eq!(
        ctr.status(),
        Status::Running,
        "{what}: freezer {:?}",
        freezer_states(&ctr.cgroup_paths)
    );
    assert_running_untraced(&tasks_of(ctr), what);
    let ns = PathBuf::from(format!("/proc/{}/ns/net", ctr.init_pid));
    assert!(
        !cpengine::netlock::is_locked(&ns).unwrap(),
        "{what}: criu's network lock left in the container's namespace"
    );
    let c = counter_in(&bundle.rootfs);
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(&bundle.rootfs)
            > c + 1),
        "{what}: container counter stuck"
    );
}

/// A running counter container and what the engine knows of it.
async fn counter_container(state: &StateRoot) -> (Bundle, RuncContainer, Container) {
    let (bundle, id, c) = counting_container("cpe-fc", "");
    let ctr = Container::find(&id, std::slice::from_ref(&c.root), state).unwrap();
    assert!(
        cpengine::netlock::foreign_netns_of(ctr.init_pid).is_some(),
        "the container must have its own network namespace (criu locks it)"
    );
    (bundle, c, ctr)
}

/// Whether the container died during a trial, judged by [`judge_deaths`] (which fails on any
/// death but a casualty of CRIU SIGKILLed by the test in its parasite phase). Waits first until
/// the container's counter moves or its init dies: a task CRIU was killed inside of dies as
/// soon as it runs again.
fn parasite_casualty(
    ctr: &Container,
    bundle: &Bundle,
    killed_anywhere: bool,
    klog: &mut KernelLog,
    what: &str,
) -> bool {
    let c = counter_in(&bundle.rootfs);
    wait_until(Duration::from_secs(10), || {
        death_of(ctr.init_pid).is_some() || counter_in(&bundle.rootfs) > c
    });
    let dead = deaths(&[ctr.init_pid]);
    if dead.is_empty() {
        return false;
    }
    judge_deaths(&dead, killed_anywhere, None, klog, what);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_killed_during_a_container_checkpoint_leaves_it_running_and_nothing_behind() {
    let engine = engine().await;
    let state = state();
    let (mut bundle, mut c, mut ctr) = counter_container(&state).await;
    let out = scratch("cpe-fcout-");
    let output = out.path().join("c.tar");
    let ckpt = |ctr: &Container, fault: Option<FaultPoint>| {
        let mut o = ContainerCheckpointOptions::new(&output);
        o.state = Some(state.clone());
        o.flags.fault = fault;
        let (engine, ctr) = (engine.clone(), ctr.clone());
        async move { checkpoint(&engine, &ctr, &o).await }
    };
    let t = Instant::now();
    ckpt(&ctr, None).await.expect("baseline checkpoint");
    let typical = t.elapsed();
    std::fs::remove_file(&output).unwrap();

    let mut rng = Rng::from_env("container checkpoint");
    let mut tally = Tally::default();
    for (i, fault) in plan(&mut rng, DUMP_HOOKS, typical * 6 / 5)
        .into_iter()
        .enumerate()
    {
        let what = format!("trial {i} ({fault})");
        let mut klog = KernelLog::mark();
        let r = ckpt(&ctr, Some(fault.clone())).await;
        let finished = r.is_ok();
        let injected = injected(&r, &what);
        count(&mut tally, &fault, injected, finished);
        assert_no_criu_helpers_left(&mut tally, &what);
        if let FaultPoint::KillCriuAtHook(h) = &fault {
            assert!(!finished, "{what}: checkpoint succeeded despite the fault");
            if h == "query-ext-files" || h == "post-dump" {
                // The network was locked and the cgroup frozen when criu died.
                tally.repairs += 1;
            }
        }
        let anywhere = injected && matches!(fault, FaultPoint::KillCriuAfter(_));
        if parasite_casualty(&ctr, &bundle, anywhere, &mut klog, &what) {
            tally.parasite_casualties += 1;
            let _ = std::fs::remove_file(&output);
            drop(c);
            drop(bundle);
            (bundle, c, ctr) = counter_container(&state).await;
            continue;
        }
        assert_container_unharmed(&ctr, &bundle, &what);
        if finished {
            cpengine::archive::read_info(&output).expect("a finished archive is valid");
            std::fs::remove_file(&output).unwrap();
        }
        assert!(
            names_in(out.path()).is_empty(),
            "{what}: left at the destination: {:?}",
            names_in(out.path())
        );
        assert!(
            names_in(&state.run.join("journal")).is_empty(),
            "{what}: journal entry left"
        );
        // The next checkpoint succeeds and is valid.
        ckpt(&ctr, None)
            .await
            .unwrap_or_else(|e| panic!("{what}: next checkpoint: {e:?}"));
        let info = cpengine::archive::read_info(&output).unwrap();
        assert_eq!(info.config.id, ctr.id);
        std::fs::remove_file(&output).unwrap();
    }
    tally.report("container checkpoint");
    tally.assert_casualties_bounded("container checkpoint");
}

fn restore_opts(id: &str, state: &StateRoot, base: &Path) -> ContainerRestoreOptions {
    let mut o = ContainerRestoreOptions::new(id, state.clone());
    o.base = Some(RootfsBase::Dir(base.to_path_buf()));
    o.relay_exe = Some(cpengine_bin());
    o
}

/// Asserts the container restored as `id` (rootfs at `rootfs`) runs, its counter moving within
/// 5 s, then deletes it and reaps what it left.
async fn counts_then_delete(state: &StateRoot, id: &str, rootfs: &Path, what: &str) {
    let first = counter_in(rootfs);
    assert!(
        wait_until(Duration::from_secs(5), || counter_in(rootfs) > first + 1),
        "{what}: restored container does not run"
    );
    manage::delete(state, id, true).await.unwrap();
    reap_zombies();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn criu_killed_during_a_container_restore_cleans_up_and_the_next_restore_works() {
    let engine = engine().await;
    let state = state();
    let (bundle, _out, archive) = checkpointed_counter(&engine, &state, "cpe-fr").await;
    let sum = fingerprint(&archive);
    let new_id = unique_id("cpe-frn");
    let restore = |fault: Option<FaultPoint>| {
        let mut o = restore_opts(&new_id, &state, &bundle.base);
        o.flags.fault = fault;
        let engine = engine.clone();
        let source = archive.display().to_string();
        async move { restore_archive(&engine, &source, &o, false).await }
    };
    let t = Instant::now();
    let r = restore(None).await.expect("baseline restore");
    let typical = t.elapsed();
    manage::delete(&state, &r.id, true).await.unwrap();

    let mut rng = Rng::from_env("container restore");
    let mut tally = Tally::default();
    for (i, fault) in plan(&mut rng, RESTORE_HOOKS, typical * 6 / 5)
        .into_iter()
        .enumerate()
    {
        let what = format!("trial {i} ({fault})");
        let r = restore(Some(fault.clone())).await;
        let finished = r.is_ok();
        let injected = injected(&r, &what);
        count(&mut tally, &fault, injected, finished);
        assert_no_criu_helpers_left(&mut tally, &what);
        if let FaultPoint::KillCriuAtHook(_) = &fault {
            assert!(!finished, "{what}: restore succeeded despite the fault");
        }
        if let Err(e) = &r {
            eprintln!("{what}: {e}");
            assert_restore_left_nothing(&state, &new_id, &what);
            if matches!(&fault, FaultPoint::KillCriuAtHook(h) if h != "pre-restore") {
                // Tasks existed in the container's cgroups when criu died.
                tally.repairs += 1;
            }
        } else {
            manage::delete(&state, &new_id, true).await.unwrap();
        }
        assert_eq!(fingerprint(&archive), sum, "{what}: archive modified");
        // The next restore, under the same id, succeeds and runs.
        let rep = restore(None)
            .await
            .unwrap_or_else(|e| panic!("{what}: next restore: {e:?}"));
        counts_then_delete(&state, &new_id, &rep.rootfs, &what).await;
    }
    kill_relays_under(state.run.parent().unwrap());
    tally.report("container restore");
}

/// A capability this host does not have (none of its tasks can gain it): the first one missing
/// from the test process's permitted set, which as root is the bounding set.
fn a_capability_the_host_lacks() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let prm = status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (0..=last).find(|c| prm & (1 << c) == 0).unwrap_or_else(|| {
        panic!(
            "this host has every capability (CapPrm {prm:#x}): an archive asking for one it lacks cannot be made here"
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_failing_in_crius_restorer_returns_its_error_promptly_and_leaves_nothing() {
    let engine = engine().await;
    let state = state();
    let (bundle, out, archive) = checkpointed_counter(&engine, &state, "cpe-fcap").await;
    // The tasks' credentials ask for a capability the host lacks: CRIU's restorer fails to set
    // them ("Unable to restore capabilities") once every task exists in its namespaces.
    let cap = a_capability_the_host_lacks();
    let bad = out.path().join("needs-cap.tar");
    let edited = cpengine_integration::imgedit::archive_with_cap(&archive, &bad, cap);
    assert!(edited >= 1, "no core image in {}", archive.display());
    let sum = fingerprint(&bad);
    let id = unique_id("cpe-fcapn");
    let mut o = restore_opts(&id, &state, &bundle.base);
    // The node admin allows that capability (as `--cap-add` would), so the restore policy
    // lets the images through and CRIU's restorer is what fails.
    o.policy.capabilities.0 |= 1u64 << cap;
    assert!(
        o.flags.timeout >= Duration::from_secs(300),
        "{:?}",
        o.flags.timeout
    );
    // Far below the restore's own timeout and far above any honest failure: a restore that
    // waits for its timeout is caught without a tight clock.
    let r = tokio::time::timeout(
        Duration::from_secs(120),
        restore_archive(&engine, bad.to_str().unwrap(), &o, false),
    )
    .await
    .unwrap_or_else(|_| panic!("the failed restore hangs (timeout {:?})", o.flags.timeout));
    let e = match r {
        Ok(rep) => panic!(
            "restoring tasks that need capability {cap}, which this host lacks, succeeded: {rep:?}"
        ),
        Err(e) => e,
    };
    assert!(
        matches!(e, cpengine::Error::Restore { .. }),
        "not a restore error: {e:?}"
    );
    let log = e.criu().and_then(|c| c.log()).map(|l| format!("{l:?}"));
    assert!(
        log.as_deref()
            .is_some_and(|l| l.contains("Unable to restore capabilities")),
        "the error does not carry CRIU's reason: {e:?}"
    );
    reap_zombies();
    assert_restore_left_nothing(&state, &id, "failed restore");
    assert!(
        names_in(&state.run.join("journal")).is_empty(),
        "journal entry left"
    );
    let ours = std::process::id() as i32;
    let left: Vec<(i32, String)> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| cpengine::proc::ppid(p) == Some(ours))
        .map(|p| {
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            (p, comm.trim().to_string())
        })
        .collect();
    assert!(left.is_empty(), "processes left: {left:?}");
    assert_eq!(fingerprint(&bad), sum, "archive modified");
    // The unedited archive restores under the same id: nothing of the failure is in the way.
    let rep = restore_archive(&engine, archive.to_str().unwrap(), &o, false)
        .await
        .expect("restore of the unedited archive");
    let first = counter_in(&rep.rootfs);
    assert!(
        wait_until(Duration::from_secs(10), || counter_in(&rep.rootfs) > first),
        "restored container does not run"
    );
    manage::delete(&state, &id, true).await.unwrap();
    reap_zombies();
    kill_relays_under(state.run.parent().unwrap());
}

// ---- the engine process killed mid-checkpoint ------------------------------------------------

/// A container with 48 MiB of new files, so that the archive phase lasts long enough to be hit.
fn big_bundle() -> Bundle {
    Bundle::busybox(&format!(
        "dd if=/dev/urandom of=/root/big bs=1M count=48 2>/dev/null; {COUNTER_SCRIPT}"
    ))
}

fn cli_checkpoint(state: &StateRoot, c: &RuncContainer, output: &Path) -> Child {
    Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state.run.parent().unwrap())
        .args(["checkpoint", &c.id, "--runc-root"])
        .arg(&c.root)
        .arg("-o")
        .arg(output)
        .args(["--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(output.with_extension("stderr"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .expect("spawn cpengine checkpoint")
}

fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// When the engine is killed.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as the container's freezer reads FROZEN.
    Frozen,
    /// As soon as the partial archive appears beside the destination.
    Writing,
    /// After a random delay.
    After(Duration),
}

/// Who is killed: the engine alone (its criu notices the closed socket), or the engine and its
/// criu workers together.
#[derive(Debug, Clone, Copy)]
enum Victims {
    Engine,
    EngineAndCriu,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_checkpoint_is_repaired_by_the_next_command() {
    init();
    let state = state();
    let start = |state: &StateRoot| {
        let bundle = big_bundle();
        let id = unique_id("cpe-fe");
        let c = RuncContainer::run(&bundle, &id);
        assert!(wait_until(Duration::from_secs(20), || counter_in(
            &bundle.rootfs
        ) >= 3));
        let ctr = Container::find(&id, std::slice::from_ref(&c.root), state).unwrap();
        let freezer = ctr.freezer().unwrap();
        (bundle, c, ctr, freezer)
    };
    let (mut bundle, mut c, mut ctr, mut freezer) = start(&state);
    let out = scratch("cpe-feout-");
    let output = out.path().join("c.tar");

    let t = Instant::now();
    let st = cli_checkpoint(&state, &c, &output).wait().unwrap();
    assert!(st.success(), "baseline cli checkpoint failed");
    let typical = t.elapsed();
    std::fs::remove_file(&output).unwrap();

    let mut rng = Rng::from_env("engine killed");
    let mut moments: Vec<(Moment, Victims)> = Vec::new();
    for _ in 0..hook_rounds() {
        for v in [Victims::Engine, Victims::EngineAndCriu] {
            moments.push((Moment::Frozen, v));
            moments.push((Moment::Writing, v));
        }
    }
    for i in 0..trials() {
        let v = if i % 2 == 0 {
            Victims::EngineAndCriu
        } else {
            Victims::Engine
        };
        moments.push((Moment::After(rng.delay(typical * 6 / 5)), v));
    }
    let mut tally = Tally::default();
    for (i, (moment, victims)) in moments.into_iter().enumerate() {
        let what = format!("trial {i} ({moment:?}, {victims:?})");
        let mut klog = KernelLog::mark();
        let mut cli = cli_checkpoint(&state, &c, &output);
        let pid = cli.id() as i32;
        let exited = |cli: &mut Child| cli.try_wait().ok().flatten().is_some();
        let hit = match moment {
            Moment::Frozen => wait_until(Duration::from_secs(20), || {
                cpengine::cgroups::is_frozen(&freezer) || exited(&mut cli)
            }),
            Moment::Writing => wait_until(Duration::from_secs(20), || {
                names_in(out.path())
                    .iter()
                    .any(|n| n.starts_with(".c.tar.cpengine-tmp-"))
                    || exited(&mut cli)
            }),
            Moment::After(d) => {
                std::thread::sleep(d);
                true
            }
        };
        assert!(
            hit,
            "{what}: neither the moment came nor did cpengine end; {}",
            std::fs::read_to_string(output.with_extension("stderr")).unwrap_or_default()
        );
        // Under load the checkpoint can be over before the moment was seen: then it simply
        // finished first.
        let workers = children_named(pid, "criu");
        sigkill(pid);
        if let Victims::EngineAndCriu = victims {
            for w in &workers {
                sigkill(*w);
            }
        }
        let status = cli.wait().unwrap();
        let finished = status.success();
        if let Moment::After(_) = moment {
            tally.random += 1;
        } else {
            tally.at_hooks += 1;
        }
        if finished {
            tally.finished_first += 1;
        }
        // Orphaned workers (now our children: the suite is a subreaper) run on or die.
        if let Victims::EngineAndCriu = victims {
            assert!(
                wait_until(Duration::from_secs(10), || {
                    reap_zombies();
                    workers.iter().all(|&w| !cpengine::proc::exists(w))
                }),
                "{what}: killed criu workers still exist"
            );
        }
        let journal_before = names_in(&state.run.join("journal"));
        let damage = !journal_before.is_empty()
            && (cpengine::cgroups::is_frozen(&freezer)
                || names_in(out.path()).iter().any(|n| n.starts_with('.')));
        if damage {
            tally.repairs += 1;
        }

        // The next container command repairs whatever was left.
        let (st, _, err) = run(Command::new(cpengine_bin())
            .arg("--state-root")
            .arg(state.run.parent().unwrap())
            .arg("ps"));
        assert!(st.success(), "{what}: cpengine ps: {err}");
        // A criu orphaned by the killed engine (Victims::Engine) stops on its own when it
        // finds its client gone; recovery stopped it if it was still holding the tasks.
        reap_zombies();
        assert!(
            names_in(&state.run.join("journal")).is_empty(),
            "{what}: journal entry left after recovery"
        );
        // Thawed by the recovery, a task criu was killed inside of dies of its breakpoint now.
        // Only a criu this test killed itself can have left one (the engine, and the recovery
        // of a killed engine, let criu abort by itself).
        let anywhere = matches!(victims, Victims::EngineAndCriu) && !workers.is_empty();
        if parasite_casualty(&ctr, &bundle, anywhere, &mut klog, &what) {
            // criu was SIGKILLed (by us) with its parasite inside the container.
            tally.parasite_casualties += 1;
            let _ = std::fs::remove_file(&output);
            drop(c);
            drop(bundle);
            (bundle, c, ctr, freezer) = start(&state);
            continue;
        }
        assert_container_unharmed(&ctr, &bundle, &what);
        let left: Vec<String> = names_in(out.path())
            .into_iter()
            .filter(|n| n != "c.tar" && n != "c.stderr")
            .collect();
        assert!(
            left.is_empty(),
            "{what}: staging or partial archive left: {left:?}"
        );
        // Whatever is at the destination is a complete archive (the engine may have been
        // killed after its rename, before it exited).
        if finished || output.exists() {
            cpengine::archive::read_info(&output)
                .expect("an archive at the destination is complete");
        }
        let _ = std::fs::remove_file(&output);
        // The next checkpoint succeeds.
        let st = cli_checkpoint(&state, &c, &output).wait().unwrap();
        assert!(st.success(), "{what}: next checkpoint failed");
        cpengine::archive::read_info(&output).expect("next archive is valid");
        std::fs::remove_file(&output).unwrap();
    }
    assert!(
        tally.repairs >= 2,
        "the deterministic moments must have left something to repair: {tally:?}"
    );
    tally.report("engine killed mid-checkpoint");
    tally.assert_casualties_bounded("engine killed mid-checkpoint");
}

// ---- the engine process killed mid-restore ---------------------------------------------------

fn cli_restore(state: &StateRoot, archive: &Path, id: &str, base: &Path) -> Child {
    Command::new(cpengine_bin())
        .arg("--state-root")
        .arg(state.run.parent().unwrap())
        .arg("restore")
        .arg(archive)
        .args(["--id", id, "--rootfs-base"])
        .arg(base)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cpengine restore")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_killed_mid_restore_is_repaired_by_the_next_command() {
    init();
    let engine = engine().await;
    let state = state();
    let (bundle, _out, archive) = checkpointed_counter(&engine, &state, "cpe-fk").await;
    let sum = fingerprint(&archive);
    let new_id = unique_id("cpe-fkn");
    let ps = || {
        run(Command::new(cpengine_bin())
            .arg("--state-root")
            .arg(state.run.parent().unwrap())
            .arg("ps"))
    };

    let t = Instant::now();
    let st = cli_restore(&state, &archive, &new_id, &bundle.base)
        .wait()
        .unwrap();
    assert!(st.success(), "baseline cli restore failed");
    let typical = t.elapsed();
    manage::delete(&state, &new_id, true).await.unwrap();

    // While CRIU restores (its worker is the engine's child), and at random moments.
    let mut rng = Rng::from_env("engine killed mid-restore");
    let mut moments: Vec<(Option<Duration>, Victims)> = Vec::new();
    for _ in 0..hook_rounds() {
        moments.push((None, Victims::Engine));
        moments.push((None, Victims::EngineAndCriu));
    }
    for i in 0..trials() {
        let v = if i % 2 == 0 {
            Victims::EngineAndCriu
        } else {
            Victims::Engine
        };
        moments.push((Some(rng.delay(typical * 6 / 5)), v));
    }
    let mut tally = Tally::default();
    for (i, (moment, victims)) in moments.into_iter().enumerate() {
        let what = format!("trial {i} ({moment:?}, {victims:?})");
        let mut cli = cli_restore(&state, &archive, &new_id, &bundle.base);
        let pid = cli.id() as i32;
        let exited = |cli: &mut Child| cli.try_wait().ok().flatten().is_some();
        match moment {
            None => {
                tally.at_hooks += 1;
                assert!(
                    wait_until(Duration::from_secs(20), || {
                        !children_named(pid, "criu").is_empty() || exited(&mut cli)
                    }),
                    "{what}: criu never started"
                );
            }
            Some(d) => {
                tally.random += 1;
                std::thread::sleep(d);
            }
        }
        let workers = children_named(pid, "criu");
        sigkill(pid);
        if let Victims::EngineAndCriu = victims {
            for w in &workers {
                sigkill(*w);
            }
        }
        let finished = cli.wait().unwrap().success();
        if finished {
            tally.finished_first += 1;
        }
        let damage =
            state.container_run_dir(&new_id).exists() && !state.container_record(&new_id).exists();
        if damage {
            tally.repairs += 1;
        }
        // The next container command repairs whatever was left.
        let (st, _, err) = ps();
        assert!(st.success(), "{what}: cpengine ps: {err}");
        reap_zombies();
        assert!(
            names_in(&state.run.join("journal")).is_empty(),
            "{what}: journal entry left after recovery (cpengine ps said: {err}):{}",
            journal_report(&state)
        );
        if state.container_record(&new_id).exists() {
            // The restore had finished before the kill: a container like any other.
            manage::delete(&state, &new_id, true).await.unwrap();
        }
        reap_zombies();
        assert_restore_left_nothing(&state, &new_id, &what);
        assert_eq!(fingerprint(&archive), sum, "{what}: archive modified");
        // The same id restores again, and runs.
        let rep = restore_archive(
            &engine,
            archive.to_str().unwrap(),
            &restore_opts(&new_id, &state, &bundle.base),
            false,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: next restore: {e:?}"));
        counts_then_delete(&state, &new_id, &rep.rootfs, &what).await;
    }
    kill_relays_under(state.run.parent().unwrap());
    assert!(
        tally.repairs >= 1,
        "killing the engine while criu restores must leave something to repair: {tally:?}"
    );
    tally.report("engine killed mid-restore");
}
