//! Reading the CRIU image files the engine needs (size-capped, typed errors).

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use criu_proto::image::{self, ImageError, ImageReader};
use criu_proto::images::{InventoryEntry, PstreeEntry};

/// Most entries cpengine accepts in `pstree.img` (one per process).
const MAX_TASKS: usize = 1 << 16;

/// The process tree of an image set.
pub fn read_pstree(images_dir: &Path) -> Result<Vec<PstreeEntry>, ImageError> {
    let f = File::open(images_dir.join("pstree.img"))?;
    let mut r = ImageReader::new(
        BufReader::new(f),
        image::Header::Common(image::magic::PSTREE),
    )?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry::<PstreeEntry>()? {
        if out.len() == MAX_TASKS {
            return Err(ImageError::Oversized {
                offset: r.offset(),
                size: MAX_TASKS as u64 + 1,
                limit: MAX_TASKS as u64,
            });
        }
        out.push(e);
    }
    Ok(out)
}

/// The inventory (header) of an image set.
pub fn read_inventory(images_dir: &Path) -> Result<InventoryEntry, ImageError> {
    let f = File::open(images_dir.join("inventory.img"))?;
    ImageReader::new(
        BufReader::new(f),
        image::Header::Single(image::magic::INVENTORY),
    )?
    .one()
}

/// The mode CRIU recorded for the root directory of the tree's root task (CRIU refuses to
/// restore when the new root's mode differs; container runtimes differ in the mode they give
/// a rootfs root, e.g. Podman 0555, an overlay upper dir 0755).
pub fn root_dir_mode(images_dir: &Path) -> Result<Option<u32>, ImageError> {
    use criu_proto::images::{FileEntry, FsEntry};
    let Some(root) = read_pstree(images_dir)?.into_iter().next() else {
        return Ok(None);
    };
    let f = File::open(images_dir.join(format!("fs-{}.img", root.pid)))?;
    let fs: FsEntry =
        ImageReader::new(BufReader::new(f), image::Header::Common(image::magic::FS))?.one()?;
    let f = File::open(images_dir.join("files.img"))?;
    let mut r = ImageReader::new(
        BufReader::new(f),
        image::Header::Common(image::magic::FILES),
    )?;
    while let Some(e) = r.next_entry::<FileEntry>()? {
        if e.id == fs.root_id {
            return Ok(e.reg.and_then(|reg| reg.mode).map(|m| m & 0o7777));
        }
    }
    Ok(None)
}
