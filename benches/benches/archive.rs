//! Archive throughput without CRIU: writing a checkpoint archive from an images directory of
//! 256 MiB of pages (none, zstd, gzip; incompressible and half-compressible pages), reading
//! its summary, and extracting it.

use std::path::Path;
use std::time::Duration;

use cpengine::archive::{self, ArchiveInput, Compression, ConfigDump, Limits, WriteOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const MIB: usize = 256;

/// An images dir with one page image of `MIB` MiB: xorshift pages (incompressible) or, with
/// `half`, every other page zero-filled but for a counter (what real memory often looks like).
fn images(dir: &Path, half: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("inventory.img"), b"inventory").unwrap();
    let mut buf = vec![0u8; MIB << 20];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for (i, page) in buf.chunks_exact_mut(4096).enumerate() {
        if half && i % 2 == 1 {
            page[..8].copy_from_slice(&(i as u64).to_le_bytes());
            continue;
        }
        for c in page.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
    }
    std::fs::write(dir.join("pages-1.img"), buf).unwrap();
}

fn input(images_dir: &Path) -> ArchiveInput {
    ArchiveInput {
        images_dir: images_dir.to_path_buf(),
        config: ConfigDump::default(),
        spec: serde_json::json!({"ociVersion": "1.0.2"}),
        stats_dump: None,
        dump_log: None,
        rootfs: None,
        extra: Vec::new(),
    }
}

fn archive_throughput(c: &mut Criterion) {
    let tmp = tempfile::Builder::new()
        .prefix("cpe-bench-archive-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let random = tmp.path().join("random/checkpoint");
    let half = tmp.path().join("half/checkpoint");
    images(&random, false);
    images(&half, true);

    let mut g = c.benchmark_group("archive write");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes((MIB as u64) << 20));
    let cases: [(&str, &Path, Compression, Option<i32>); 8] = [
        ("none", &random, Compression::None, None),
        (
            "zstd default (1), incompressible",
            &random,
            Compression::Zstd,
            None,
        ),
        (
            "zstd default (1), half compressible",
            &half,
            Compression::Zstd,
            None,
        ),
        (
            "zstd level 3, half compressible",
            &half,
            Compression::Zstd,
            Some(3),
        ),
        (
            "zstd level -1, half compressible",
            &half,
            Compression::Zstd,
            Some(-1),
        ),
        (
            "zstd level -1, incompressible",
            &random,
            Compression::Zstd,
            Some(-1),
        ),
        (
            "gzip default (1), incompressible",
            &random,
            Compression::Gzip,
            None,
        ),
        (
            "gzip default (1), half compressible",
            &half,
            Compression::Gzip,
            None,
        ),
    ];
    for (name, dir, compression, level) in cases {
        let inp = input(dir);
        g.bench_function(name, |b| {
            b.iter_batched(
                || tmp.path().join("out.tar"),
                |out| {
                    let o = WriteOptions {
                        compression,
                        level,
                        ..Default::default()
                    };
                    archive::write_archive(&out, &inp, &o).expect("write");
                    out
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();

    let plain = tmp.path().join("plain.tar");
    let zstd = tmp.path().join("zstd.tar");
    archive::write_archive(&plain, &input(&half), &WriteOptions::default()).unwrap();
    archive::write_archive(
        &zstd,
        &input(&half),
        &WriteOptions {
            compression: Compression::Zstd,
            ..Default::default()
        },
    )
    .unwrap();
    let mut g = c.benchmark_group("archive read");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Bytes((MIB as u64) << 20));
    for (name, path) in [("none", &plain), ("zstd", &zstd)] {
        g.bench_function(format!("summary (read_info), {name}"), |b| {
            b.iter(|| archive::read_info(path).expect("info"))
        });
        g.bench_function(format!("extract, {name}"), |b| {
            b.iter_batched(
                || tmp.path().join("x"),
                |target| {
                    let _ = std::fs::remove_dir_all(&target);
                    archive::extract(path, &target, &Limits::default()).expect("extract");
                    target
                },
                BatchSize::PerIteration,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, archive_throughput);
criterion_main!(benches);
