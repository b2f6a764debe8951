//! Restore latency against real CRIU (root): a process with 256 MiB of incompressible memory
//! restored eagerly (every page read back before it runs) and lazily (it runs at once; a
//! lazy-pages daemon copies the memory in on demand and in the background). The time is until
//! the restored tree runs; killing it between iterations is not measured. After the lazy runs
//! the bench checks, page by page, that a lazily restored tree has all its memory.
//!
//! Needs the release binaries first (the workload): `scripts/bench.sh` builds them.

use std::time::{Duration, Instant};

use cpengine::{CheckpointOptions, RestoreOptions};
use cpengine_integration::{Workload, engine, scratch};
use criterion::{Criterion, criterion_group, criterion_main};

const MIB: u32 = 256;

fn restore_latency(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(engine());
    let mut w = Workload::start(&["--mem", &MIB.to_string()]);
    let images = scratch("cpe-bench-");
    rt.block_on(engine.dump(&CheckpointOptions::new(w.pid, images.path())))
        .expect("dump");
    w.kill();

    let mut g = c.benchmark_group("restore");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for lazy in [false, true] {
        let name = format!("{MIB} MiB, {}", if lazy { "lazy" } else { "eager" });
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut o = RestoreOptions::new(images.path());
                    o.lazy_pages = lazy;
                    let t = Instant::now();
                    let r = rt.block_on(engine.restore(o)).expect("restore");
                    total += t.elapsed();
                    w.adopt(r.pid);
                    w.kill();
                }
                total
            })
        });
    }
    g.finish();

    // The lazy path is only worth its speed if the memory is all there.
    let mut o = RestoreOptions::new(images.path());
    o.lazy_pages = true;
    let r = rt.block_on(engine.restore(o)).expect("lazy restore");
    w.adopt(r.pid);
    assert_eq!(w.verify_memory(), format!("ok {MIB}"));
}

criterion_group!(benches, restore_latency);
criterion_main!(benches);
