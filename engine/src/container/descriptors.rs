//! `descriptors.json`: the container init's stdio as runc records it beside CRIU's images. A
//! checkpoint writes it, a restore reads it to re-open the same stdio.

use std::path::Path;

use super::Container;

/// Name of the stdio description runc keeps in the images directory.
pub const DESCRIPTORS_JSON: &str = "descriptors.json";

/// Writes `descriptors.json` (the init's stdio as recorded at start) into the images dir.
pub fn write_descriptors(ctr: &Container, images_dir: &Path) -> std::io::Result<()> {
    let mut stdio = ctr.stdio.clone();
    stdio.resize(3, String::new());
    let json = serde_json::to_vec(&stdio).map_err(std::io::Error::other)?;
    std::fs::write(images_dir.join(DESCRIPTORS_JSON), json)
}

/// Reads `descriptors.json` from an images dir (missing → three empty entries).
pub fn read_descriptors(images_dir: &Path) -> Vec<String> {
    std::fs::read(images_dir.join(DESCRIPTORS_JSON))
        .ok()
        .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
        .unwrap_or_else(|| vec![String::new(); 3])
}
