//! The bottom layer of the archive format: the ustar/PAX header codec ([`format`]) and the
//! hardened streaming reader ([`reader`]) every reader of untrusted tar input goes through.
//! Nothing here knows what a checkpoint is (checked by `scripts/layers.sh`).

pub(crate) mod format;
pub(crate) mod reader;
