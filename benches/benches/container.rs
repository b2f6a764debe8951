//! Container checkpoints to a finished archive against real runc and CRIU (root): the
//! default single-copy path (pages streamed into an uncompressed archive), the staged path,
//! and gzip and zstd archives, for a runc container holding 256 MiB of incompressible memory.
//!
//! Needs the release binaries first (the workload): `scripts/bench.sh` builds them.

use std::time::Duration;

use cpengine::archive::Compression;
use cpengine::container::Container;
use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
use cpengine::container::state::StateRoot;
use cpengine_integration::runc::workload_container;
use cpengine_integration::{engine, scratch};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MIB: u64 = 256;

fn container_checkpoint(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let engine = rt.block_on(engine());
    let (_bundle, rc) = workload_container(
        "cpe-bench",
        &format!("--mem {MIB}"),
        Duration::from_secs(60),
    );
    let state = StateRoot::at(scratch("cpe-bench-state-").keep());
    let ctr = Container::find(&rc.id, std::slice::from_ref(&rc.root), &state).expect("find");

    let mut g = c.benchmark_group("container checkpoint to a finished archive");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Bytes(MIB << 20));
    let variants: [(&str, Compression, bool); 4] = [
        ("none, pages streamed (default)", Compression::None, true),
        ("none, pages staged", Compression::None, false),
        ("zstd", Compression::Zstd, false),
        ("gzip", Compression::Gzip, false),
    ];
    for (name, compression, stream) in variants {
        g.bench_function(format!("{MIB} MiB, {name}"), |b| {
            b.iter_batched(
                || scratch("cpe-bench-out-"),
                |dir| {
                    let mut o = ContainerCheckpointOptions::new(dir.path().join("c.tar"));
                    o.compression = compression;
                    o.stream_pages = stream;
                    o.state = Some(state.clone());
                    let r = rt
                        .block_on(checkpoint(&engine, &ctr, &o))
                        .expect("checkpoint");
                    assert!(r.streamed.is_some() == (stream && compression == Compression::None));
                    dir
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
    drop(rc);
}

criterion_group!(benches, container_checkpoint);
criterion_main!(benches);
