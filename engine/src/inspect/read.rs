//! Reading protobuf images with the inspection caps applied.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use criu_proto::image::{Header, ImageReader};
use criu_proto::prost::Message;

use super::{InspectError, Limits, Result};

/// Opens a `[common magic][magic]` image.
pub(crate) fn open(
    path: &Path,
    magic: u32,
    limits: &Limits,
) -> Result<ImageReader<BufReader<File>>> {
    let f = File::open(path).map_err(|source| InspectError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    ImageReader::with_limit(BufReader::new(f), Header::Common(magic), limits.max_entry).map_err(
        |source| InspectError::Image {
            path: path.to_path_buf(),
            source,
        },
    )
}

/// The single entry of an image such as `core-<pid>.img` or `mm-<pid>.img`.
pub(crate) fn one<M: Message + Default>(path: &Path, magic: u32, limits: &Limits) -> Result<M> {
    open(path, magic, limits)?
        .one()
        .map_err(|source| InspectError::Image {
            path: path.to_path_buf(),
            source,
        })
}

/// Every entry of an image, at most `max` of them.
pub(crate) fn all<M: Message + Default>(
    path: &Path,
    magic: u32,
    limits: &Limits,
    max: usize,
    what: &'static str,
) -> Result<Vec<M>> {
    let mut r = open(path, magic, limits)?;
    let mut out = Vec::new();
    while let Some(m) = r.next_entry::<M>().map_err(|source| InspectError::Image {
        path: path.to_path_buf(),
        source,
    })? {
        if out.len() == max {
            return Err(InspectError::TooMany {
                path: path.to_path_buf(),
                what,
                limit: max,
            });
        }
        out.push(m);
    }
    Ok(out)
}
