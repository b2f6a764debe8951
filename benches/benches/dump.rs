//! Dump latency of a small process through the engine (real CRIU, root). The full suite —
//! page-dump throughput, container archives, restore — and the peer comparison live beside it.
//!
//! Needs `cargo build --release --workspace --bins` first (for the workload binary);
//! `scripts/bench.sh` does that.

use cpengine::CheckpointOptions;
use cpengine_integration::{Workload, engine, scratch};
use criterion::{Criterion, criterion_group, criterion_main};

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
                o.leave_running = true;
                rt.block_on(engine.dump(&o)).expect("dump");
                dir
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, dump_small_process);
criterion_main!(benches);
