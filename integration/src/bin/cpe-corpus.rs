//! Writes the malicious-archive corpus (`cpengine_integration::corpus`) into a directory:
//! `cargo run -p cpengine-integration --bin cpe-corpus -- integration/corpus`.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "integration/corpus".into()),
    );
    std::fs::create_dir_all(&dir).expect("creating the corpus directory");
    for case in cpengine_integration::corpus::cases() {
        let path = dir.join(case.file);
        std::fs::write(&path, &case.bytes)
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        println!("{:>8}  {}", case.bytes.len(), path.display());
    }
}
