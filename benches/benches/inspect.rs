//! Inspection of a real dump: a full search of 256 MiB of dumped pages (a pattern that is not
//! there, so every byte is scanned) and the memory view. Real CRIU, root.
//!
//! Needs `cargo build --release --workspace --bins` first (for the workload binary).

use cpengine::CheckpointOptions;
use cpengine::inspect::{ImageSet, PsOptions, SearchOptions};
use cpengine_integration::{Workload, engine, scratch};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn inspect_real_dump(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(engine());
    let w = Workload::start(&["--mem", "256"]);
    let dir = scratch("cpe-bench-");
    let mut o = CheckpointOptions::new(w.pid, dir.path());
    o.flags.leave_running = true;
    let report = rt.block_on(engine.dump(&o)).expect("dump");
    let bytes = report.pages_bytes();
    let set = ImageSet::open(dir.path()).expect("open images");

    let mut g = c.benchmark_group("inspect");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes));
    let absent = SearchOptions::new(b"cpe-bench-pattern-that-is-nowhere".to_vec());
    g.bench_function("search 256 MiB of pages, no match", |b| {
        b.iter(|| {
            let r = set.search(&absent).expect("search");
            assert_eq!(r.bytes_scanned, bytes);
            r
        })
    });
    g.throughput(Throughput::Elements(set.pids().len() as u64));
    g.bench_function("memory view", |b| b.iter(|| set.memory().expect("memory")));
    g.bench_function("process tree with cmdline and environment", |b| {
        b.iter(|| {
            set.process_tree(&PsOptions {
                cmdline: true,
                env: true,
            })
            .expect("tree")
        })
    });
    g.finish();
}

criterion_group!(benches, inspect_real_dump);
criterion_main!(benches);
