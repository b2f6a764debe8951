//! What verifying a checkpoint against the restore policy costs (`cpengine::policy::verify`,
//! issue 13: at most 3% of a container restore), for a runc container holding 1 GiB of
//! incompressible memory: the verification of its extracted images alone, and the whole
//! container restore from its archive (verification included). After the restores the bench
//! prints the mean share of the "verify images" phase in the restores' own reports.
//!
//! Needs the workload binary next to the bench binary (`scripts/bench.sh` builds them).

use std::process::Command;
use std::time::{Duration, Instant};

use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
use cpengine::container::restore::{ContainerRestoreOptions, RootfsBase, restore_archive};
use cpengine::container::state::StateRoot;
use cpengine::container::{Container, manage};
use cpengine::policy::{RestorePolicy, VerifyPlan, verify};
use cpengine_integration::runc::{unique_id, workload_container};
use cpengine_integration::{cpengine_bin, engine, scratch};
use criterion::{Criterion, criterion_group, criterion_main};

const MIB: u64 = 1024;

fn restore_verification(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(engine());
    let (bundle, rc) = workload_container(
        "cpe-vbench",
        &format!("--mem {MIB}"),
        Duration::from_secs(120),
    );
    let state_dir = scratch("cpe-vbench-state-");
    let state = StateRoot::at(state_dir.path());
    let ctr = Container::find(&rc.id, std::slice::from_ref(&rc.root), &state).expect("find");
    let out = scratch("cpe-vbench-out-");
    let archive = out.path().join("c.tar");
    let mut co = ContainerCheckpointOptions::new(&archive);
    co.state = Some(state.clone());
    rt.block_on(checkpoint(&engine, &ctr, &co))
        .expect("checkpoint");
    drop(rc);
    let unpacked = scratch("cpe-vbench-x-");
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .status()
        .expect("tar");
    assert!(st.success());
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(unpacked.path().join("spec.dump")).unwrap()).unwrap();
    let policy = RestorePolicy::runtime_default();
    let plan = VerifyPlan::for_container(&spec, &policy);

    let mut g = c.benchmark_group("restore verification");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function(format!("verify the images of a {MIB} MiB container"), |b| {
        b.iter(|| {
            verify(&unpacked.path().join("checkpoint"), &spec, &policy, &plan).expect("verified")
        })
    });
    let mut shares = Vec::new();
    g.bench_function(
        format!("container restore of {MIB} MiB, verification included"),
        |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut o = ContainerRestoreOptions::new(unique_id("cpe-vb"), state.clone());
                    o.base = Some(RootfsBase::Dir(bundle.base.clone()));
                    o.relay_exe = Some(cpengine_bin());
                    let t = Instant::now();
                    let r = rt
                        .block_on(restore_archive(
                            &engine,
                            archive.to_str().unwrap(),
                            &o,
                            false,
                        ))
                        .expect("restore");
                    total += t.elapsed();
                    let v = r
                        .phases
                        .iter()
                        .find(|p| p.name == "verify images")
                        .expect("verify phase");
                    shares.push(v.duration.as_secs_f64() / r.total.as_secs_f64());
                    rt.block_on(manage::delete(&state, &o.id, true))
                        .expect("delete");
                }
                total
            })
        },
    );
    g.finish();
    let mean = shares.iter().sum::<f64>() / shares.len().max(1) as f64;
    let max = shares.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "verification share of a {MIB} MiB container restore: mean {:.3}%, max {:.3}% over {} restores",
        mean * 100.0,
        max * 100.0,
        shares.len()
    );
}

criterion_group!(benches, restore_verification);
criterion_main!(benches);
