//! Dump benches against real CRIU (root): dump latency of a small process, and page-dump
//! throughput for 64, 256 and 1024 MiB of dirty anonymous memory.
//!
//! Throughput is reported by criterion from the bytes of page images written per dump; after
//! each size the bench also prints the rate from CRIU's own statistics (pages written over
//! memdump + memwrite time), which leaves out CRIU's start-up and the tree walk.
//!
//! Needs the release binaries first (the workload): `scripts/bench.sh` builds them.

use std::time::Duration;

use cpengine::CheckpointOptions;
use cpengine_integration::{Workload, engine, scratch};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn dump_small_process(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(engine());
    let w = Workload::start(&[]);
    let mut g = c.benchmark_group("dump");
    g.sample_size(20);
    g.bench_function("small process, leave running", |b| {
        b.iter_batched(
            || scratch("cpe-bench-"),
            |dir| {
                let mut o = CheckpointOptions::new(w.pid, dir.path());
                o.flags.leave_running = true;
                rt.block_on(engine.dump(&o)).expect("dump");
                dir
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn page_dump_throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(engine());
    let mut g = c.benchmark_group("page dump");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for mib in [64u64, 256, 1024] {
        let w = Workload::start(&["--mem", &mib.to_string()]);
        // One dump to learn how many bytes of pages a dump writes.
        let probe = scratch("cpe-bench-");
        let mut o = CheckpointOptions::new(w.pid, probe.path());
        o.flags.leave_running = true;
        let r = rt.block_on(engine.dump(&o)).expect("dump");
        g.throughput(Throughput::Bytes(r.pages_bytes()));
        drop(probe);
        let mut criu_rates = Vec::new();
        g.bench_function(format!("{mib} MiB dirty anonymous memory"), |b| {
            b.iter_batched(
                || scratch("cpe-bench-"),
                |dir| {
                    let mut o = CheckpointOptions::new(w.pid, dir.path());
                    o.flags.leave_running = true;
                    let r = rt.block_on(engine.dump(&o)).expect("dump");
                    if let Some(s) = &r.criu {
                        let t = (s.memdump + s.memwrite).as_secs_f64();
                        if t > 0.0 {
                            criu_rates.push(r.pages_bytes() as f64 / t / 1e6);
                        }
                    }
                    dir
                },
                BatchSize::PerIteration,
            )
        });
        criu_rates.sort_by(f64::total_cmp);
        if let Some(m) = criu_rates.get(criu_rates.len() / 2) {
            eprintln!(
                "page dump {mib} MiB: CRIU memdump + memwrite rate (median of {}): {m:.0} MB/s",
                criu_rates.len()
            );
        }
    }
    g.finish();
}

criterion_group!(benches, dump_small_process, page_dump_throughput);
criterion_main!(benches);
