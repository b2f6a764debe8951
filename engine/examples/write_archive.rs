//! Writes a checkpoint archive from an images directory and prints the report as JSON; used to
//! measure archive write throughput:
//!
//! ```text
//! cargo run --release -p cpengine --example write_archive -- IMAGES_DIR DEST none|gzip|zstd [no-cfr]
//! ```

use std::path::PathBuf;

use cpengine::archive::{self, ArchiveInput, ConfigDump, WriteOptions};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let images = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("images dir"))?);
    let dest = PathBuf::from(args.next().ok_or_else(|| anyhow::anyhow!("destination"))?);
    let compression = args
        .next()
        .unwrap_or_else(|| "none".into())
        .parse()
        .map_err(anyhow::Error::msg)?;
    let input = ArchiveInput {
        images_dir: images,
        config: ConfigDump::default(),
        spec: serde_json::json!({}),
        stats_dump: None,
        dump_log: None,
        rootfs: None,
        extra: vec![],
    };
    let rep = archive::write_archive(
        &dest,
        &input,
        &WriteOptions {
            compression,
            ..Default::default()
        },
    )?;
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}
