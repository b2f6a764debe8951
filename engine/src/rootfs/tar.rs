//! Streaming a [`RootfsDiff`] as a tar whose size is known in advance.
//!
//! The header bytes of each entry are a pure function of its planned metadata
//! ([`crate::archive::tarfmt::encode`]), and each regular file contributes exactly its planned
//! number of bytes: if the file grew since planning only the planned prefix is copied, if it
//! shrank or vanished the rest is zero-filled. The stream is therefore always a valid tar of
//! exactly [`RootfsDiff::tar_size`] bytes. For files that only ever grow (logs, journals) this
//! yields exactly the content at planning time, which is what CRIU checks when it restores an
//! open file (it compares the file's size with the size it recorded at dump time). Changed
//! files are counted and logged.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use crate::archive::tarfmt::{
    END_LEN, Meta, TarSink, TypeFlag, WriteSink, encode, pad_len, padded, sparse_map_block,
};

use super::{DiffEntry, EntryKind, RootfsDiff, path_bytes};

/// What happened while the diff was streamed.
#[derive(Debug, Clone, Default)]
pub(crate) struct DiffWriteStats {
    pub bytes: u64,
    /// Files whose size or existence changed after planning.
    pub changed: Vec<PathBuf>,
}

/// The pax/ustar header bytes of an entry and the length of the data stored after them.
fn header(e: &DiffEntry) -> (Vec<u8>, u64) {
    let mut name = path_bytes(&e.path).to_vec();
    let (flag, link): (TypeFlag, Vec<u8>) = match &e.kind {
        EntryKind::File => (TypeFlag::File, Vec::new()),
        EntryKind::Dir => {
            name.push(b'/');
            (TypeFlag::Dir, Vec::new())
        }
        EntryKind::Symlink { target } => {
            (TypeFlag::Symlink, target.as_os_str().as_bytes().to_vec())
        }
        EntryKind::Hardlink { target } => (TypeFlag::Hardlink, path_bytes(target).to_vec()),
        EntryKind::CharDevice { .. } => (TypeFlag::Char, Vec::new()),
        EntryKind::BlockDevice { .. } => (TypeFlag::Block, Vec::new()),
        EntryKind::Fifo => (TypeFlag::Fifo, Vec::new()),
    };
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = e
        .xattrs
        .iter()
        .map(|(k, v)| (format!("SCHILY.xattr.{k}").into_bytes(), v.clone()))
        .collect();
    let mut stored = if e.kind == EntryKind::File { e.size } else { 0 };
    let mut header_name = name.clone();
    if let (EntryKind::File, Some(segs)) = (&e.kind, &e.sparse) {
        // GNU sparse 1.0: the real name and size are pax records, the data area starts with
        // the segment map, and the ustar name is the conventional placeholder that readers
        // without sparse support extract the packed data under.
        pax.push((b"GNU.sparse.major".to_vec(), b"1".to_vec()));
        pax.push((b"GNU.sparse.minor".to_vec(), b"0".to_vec()));
        pax.push((b"GNU.sparse.name".to_vec(), name.clone()));
        pax.push((
            b"GNU.sparse.realsize".to_vec(),
            e.size.to_string().into_bytes(),
        ));
        let (dir, base) = match name.iter().rposition(|&b| b == b'/') {
            Some(i) => (&name[..=i], &name[i + 1..]),
            None => (&b""[..], &name[..]),
        };
        header_name = [dir, b"GNUSparseFile.0/", base].concat();
        stored = sparse_map_block(segs).len() as u64 + segs.iter().map(|(_, l)| l).sum::<u64>();
    }
    let (major, minor) = match e.kind {
        EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
            (major, minor)
        }
        _ => (0, 0),
    };
    let m = Meta {
        name: &header_name,
        flag,
        mode: e.mode,
        uid: e.uid.into(),
        gid: e.gid.into(),
        size: stored,
        mtime: e.mtime,
        link: &link,
        dev_major: major,
        dev_minor: minor,
        pax,
    };
    (encode(&m), stored)
}

pub(crate) fn tar_size(diff: &RootfsDiff) -> u64 {
    diff.entries
        .iter()
        .map(|e| {
            let (h, stored) = header(e);
            h.len() as u64 + padded(stored)
        })
        .sum::<u64>()
        + END_LEN
}

/// Streams the diff tar into `out`; returns the bytes written and the files that changed.
pub(crate) fn write_diff(diff: &RootfsDiff, out: &mut dyn TarSink) -> io::Result<DiffWriteStats> {
    let mut st = DiffWriteStats::default();
    for e in &diff.entries {
        let (h, stored) = header(e);
        out.put(&h)?;
        st.bytes += h.len() as u64;
        if e.kind == EntryKind::File {
            let changed = write_file_data(e, out)?;
            if changed {
                tracing::warn!(path = %e.source.display(), "file changed after the rootfs diff was planned; archived its planned size");
                st.changed.push(e.path.clone());
            }
            out.put_zeros(pad_len(stored) as u64)?;
            st.bytes += padded(stored);
        }
    }
    out.put_zeros(END_LEN)?;
    st.bytes += END_LEN;
    Ok(st)
}

/// Writes the data of a regular file; returns whether it differed from the plan.
fn write_file_data(e: &DiffEntry, out: &mut dyn TarSink) -> io::Result<bool> {
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&e.source);
    let planned: u64 = match &e.sparse {
        Some(s) => sparse_map_block(s).len() as u64 + s.iter().map(|(_, l)| l).sum::<u64>(),
        None => e.size,
    };
    let file = match file {
        Ok(f) if f.metadata().map(|m| m.is_file()).unwrap_or(false) => f,
        _ => {
            // Gone or replaced by something else: keep the tar valid.
            out.put_zeros(planned)?;
            return Ok(true);
        }
    };
    let now = file.metadata()?.len();
    let mut short = false;
    match &e.sparse {
        None => {
            let got = out.put_file(&file, 0, e.size)?;
            short |= got < e.size;
        }
        Some(segs) => {
            out.put(&sparse_map_block(segs))?;
            for &(off, len) in segs {
                let got = out.put_file(&file, off, len)?;
                short |= got < len;
            }
        }
    }
    Ok(short || now != e.size)
}

/// Writes the diff tar to any writer (e.g. a standalone `rootfs-diff.tar`); returns its size,
/// which always equals [`RootfsDiff::tar_size`].
pub fn write_tar(diff: &RootfsDiff, w: impl Write) -> io::Result<u64> {
    let mut sink = WriteSink::new(w);
    let st = write_diff(diff, &mut sink)?;
    sink.w.flush()?;
    Ok(st.bytes)
}
