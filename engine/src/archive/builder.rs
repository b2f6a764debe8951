//! An archive built member by member, for data that is not on disk before the archive is
//! written: CRIU's page images arrive through pipes while CRIU dumps, and go straight to their
//! final place in the archive.
//!
//! [`ArchiveBuilder::create`] opens a temp file beside the destination; members are appended
//! in order. A *streamed* member ([`ArchiveBuilder::begin_stream`]) reserves its one-block
//! header, receives its data with `splice(2)` (pipe → archive file at its offset: the kernel
//! copies the pipe's pages into the archive's page cache once, nothing passes through user
//! space) and gets its header written once its size is known
//! ([`ArchiveBuilder::end_stream`]). [`ArchiveBuilder::append`] then writes every other member
//! of an [`ArchiveInput`] exactly as [`super::write_archive`] would. [`ArchiveBuilder::finish`]
//! ends the tar, fsyncs, renames over the destination and fsyncs the directory; dropping an
//! unfinished builder removes the temp file, so a failed checkpoint leaves nothing behind.
//!
//! Uncompressed only: the headers of streamed members are patched in place, which a
//! compressed stream cannot do (compressed checkpoints stage their images instead).

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::sign::{DigestKind, MemberDigest, NodeKey, SIGNATURE_MEMBER};
use super::tarfmt::{self, BLOCK, END_LEN, Meta, TypeFlag, pad_len, padded};
use super::write::{MemberStats, Out, plan_with, write_members};
use super::{ArchiveError, ArchiveInput, Compression, Progress, WriteReport};
use sha2::{Digest, Sha256};

/// With [`ArchiveBuilder::set_early_writeback`], start writeback of the archive's dirty pages
/// every this many bytes while data streams in.
const WRITEBACK_STEP: u64 = 32 << 20;

/// The writeback helper: ranges to start writing back, and the thread doing it.
type Writeback = (
    std::sync::mpsc::Sender<(u64, u64)>,
    std::thread::JoinHandle<()>,
);

/// One streamed member being written (see [`ArchiveBuilder::begin_stream`]).
#[derive(Debug)]
pub struct StreamMember {
    name: String,
    header_at: u64,
    len: u64,
}

impl StreamMember {
    /// Bytes of data received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An uncompressed checkpoint archive under construction (see the module docs).
#[derive(Debug)]
pub struct ArchiveBuilder {
    dest: PathBuf,
    parent: PathBuf,
    tmp: tempfile::NamedTempFile,
    file: File,
    /// End of what was written (the next member's header goes here).
    pos: u64,
    /// Names of the members written so far (directories without their trailing `/`).
    written: Vec<String>,
    /// A streamed member is open: nothing else may be appended.
    streaming: bool,
    images_bytes: u64,
    stats: MemberStats,
    deleted_files: u64,
    writeback_from: u64,
    early_writeback: bool,
    /// The helper thread that starts writeback (see [`Self::start_writeback`]).
    writeback: Option<Writeback>,
    started: Instant,
    /// The key the archive is signed with ([`Self::set_signer`]), and the members recorded for
    /// the signature in archive order.
    signer: Option<std::sync::Arc<NodeKey>>,
    digests: Vec<Pending>,
}

/// A member recorded for the signature: its digest, or (for a streamed member, whose data the
/// kernel moved) where its data is, hashed by [`ArchiveBuilder::finish`].
#[derive(Debug)]
enum Pending {
    Done(MemberDigest),
    Stream { name: String, at: u64, len: u64 },
}

impl ArchiveBuilder {
    /// Creates the temp file (`O_EXCL`, mode 0600) in `dest`'s directory, which must exist.
    pub fn create(dest: &Path) -> Result<Self, ArchiveError> {
        let started = Instant::now();
        let parent = match dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::metadata(&parent) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(ArchiveError::DestinationParent {
                    path: parent,
                    source: io::Error::from_raw_os_error(libc::ENOTDIR),
                });
            }
            Err(source) => {
                return Err(ArchiveError::DestinationParent {
                    path: parent,
                    source,
                });
            }
        }
        // The journal recognises a partial archive by this prefix (and removes it after a
        // crash).
        let tmp = tempfile::Builder::new()
            .prefix(&crate::archive::temp_prefix(dest))
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(&parent)
            .map_err(|source| ArchiveError::CreateTemp {
                dir: parent.clone(),
                source,
            })?;
        let file = tmp
            .as_file()
            .try_clone()
            .map_err(|source| ArchiveError::Write {
                path: dest.to_path_buf(),
                source,
            })?;
        Ok(Self {
            dest: dest.to_path_buf(),
            parent,
            tmp,
            file,
            pos: 0,
            written: Vec::new(),
            streaming: false,
            images_bytes: 0,
            stats: MemberStats::default(),
            deleted_files: 0,
            writeback_from: 0,
            early_writeback: false,
            writeback: None,
            started,
            signer: None,
            digests: Vec::new(),
        })
    }

    /// Whether to start writeback while data streams in (every `WRITEBACK_STEP`), so that
    /// [`Self::finish`] has little left to sync. Off by default: it makes the streaming slower
    /// while the workload is frozen. Measured with a 1 GiB runc container (`cpengine
    /// checkpoint` 3× each way, load average ~3.5 on 2 cores): with writeback during the dump
    /// the workload was frozen 900–967 ms and the archive finished 3 ms after CRIU (total
    /// 960–1037 ms); without, frozen 586–779 ms and the final fsync took 390–510 ms (total
    /// 1156–1315 ms). Downtime matters more, so writeback starts when the pages are in
    /// ([`Self::start_writeback_now`]).
    pub fn set_early_writeback(&mut self, on: bool) {
        self.early_writeback = on;
    }

    /// Starts writeback of everything written so far, in the background (the workload runs
    /// again by now; the rest of the archive is appended meanwhile).
    pub fn start_writeback_now(&mut self) {
        if self.pos > self.writeback_from {
            self.start_writeback();
        }
    }

    /// Signs the archive with `key` (see [`super::sign`]): a digest of every member is
    /// recorded, and [`Self::finish`] appends the signature as the last member. Only before
    /// anything is written.
    pub fn set_signer(&mut self, key: std::sync::Arc<NodeKey>) -> Result<(), ArchiveError> {
        if self.pos != 0 {
            return Err((self.werr())(io::Error::other(
                "the signer is set before the first member",
            )));
        }
        self.signer = Some(key);
        Ok(())
    }

    /// The archive's final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Bytes of tar written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Names of the members written so far.
    pub fn members(&self) -> &[String] {
        &self.written
    }

    fn werr(&self) -> impl Fn(io::Error) -> ArchiveError + 'static {
        let path = self.dest.clone();
        move |source| ArchiveError::Write {
            path: path.clone(),
            source,
        }
    }

    fn check_idle(&self) -> Result<(), ArchiveError> {
        if self.streaming {
            return Err((self.werr())(io::Error::other(
                "a streamed member is still open",
            )));
        }
        Ok(())
    }

    fn put_at_end(&mut self, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.file
            .write_all_at(bytes, self.pos)
            .map_err(self.werr())?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Appends a directory entry (`name` without the trailing `/`, mode 0700).
    pub fn append_dir(&mut self, name: &str, mtime: i64) -> Result<(), ArchiveError> {
        self.check_idle()?;
        let n = format!("{name}/");
        let h = tarfmt::encode(&Meta::new(n.as_bytes(), TypeFlag::Dir, 0o700, 0, mtime));
        self.put_at_end(&h)?;
        if self.signer.is_some() {
            self.digests.push(Pending::Done(MemberDigest::dir(name)));
        }
        self.written.push(name.to_owned());
        Ok(())
    }

    /// Starts a regular-file member (mode 0600) whose data will be streamed in; its header
    /// block is reserved now and written by [`Self::end_stream`]. The name must fit the ustar
    /// name field (100 bytes).
    pub fn begin_stream(&mut self, name: &str) -> Result<StreamMember, ArchiveError> {
        self.check_idle()?;
        if tarfmt::encode_fixed(name.as_bytes(), 0o600, 0, 0).is_none() {
            return Err((self.werr())(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("streamed member name {name:?} does not fit a ustar header"),
            )));
        }
        let m = StreamMember {
            name: name.to_owned(),
            header_at: self.pos,
            len: 0,
        };
        self.pos += BLOCK;
        self.streaming = true;
        Ok(m)
    }

    /// Moves up to `max` bytes from the pipe `from` into `m` at its place in the archive with
    /// `splice(2)`. Returns the bytes moved: 0 when the pipe has no writer left and is empty;
    /// an error of kind `WouldBlock` when a non-blocking pipe is empty but still has a writer.
    pub fn splice_from(
        &mut self,
        m: &mut StreamMember,
        from: BorrowedFd<'_>,
        max: usize,
    ) -> io::Result<usize> {
        let mut off = (m.header_at + BLOCK + m.len) as libc::loff_t;
        let n = loop {
            match nix::fcntl::splice(
                from,
                None,
                self.file.as_fd(),
                Some(&mut off),
                max,
                nix::fcntl::SpliceFFlags::SPLICE_F_MOVE
                    | nix::fcntl::SpliceFFlags::SPLICE_F_NONBLOCK,
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        };
        m.len += n as u64;
        self.pos = m.header_at + BLOCK + m.len;
        if self.early_writeback && self.pos - self.writeback_from >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(n)
    }

    /// Appends `buf` to `m` (for data that does not come from a pipe).
    pub fn write_into(&mut self, m: &mut StreamMember, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, m.header_at + BLOCK + m.len)?;
        m.len += buf.len() as u64;
        self.pos = m.header_at + BLOCK + m.len;
        Ok(())
    }

    /// Asks the kernel to start writing back what was written since the last call. The
    /// request goes to a helper thread: submitting writeback can block on a busy device, and
    /// the streaming thread must keep draining CRIU's pipes meanwhile.
    fn start_writeback(&mut self) {
        let (from, len) = (self.writeback_from, self.pos - self.writeback_from);
        self.writeback_from = self.pos;
        if self.writeback.is_none() {
            let Ok(file) = self.file.try_clone() else {
                return;
            };
            let (tx, rx) = std::sync::mpsc::channel::<(u64, u64)>();
            let spawned = std::thread::Builder::new()
                .name("cpengine-writeback".into())
                .spawn(move || {
                    for (from, len) in rx {
                        // SAFETY: sync_file_range only reads its integer arguments; the fd is
                        // open (owned by `file`) for the whole loop.
                        let r = unsafe {
                            libc::sync_file_range(
                                file.as_raw_fd(),
                                from as libc::off64_t,
                                len as libc::off64_t,
                                libc::SYNC_FILE_RANGE_WRITE,
                            )
                        };
                        // Only an optimisation: the final fsync makes everything durable.
                        if r != 0 {
                            break;
                        }
                    }
                });
            match spawned {
                Ok(h) => self.writeback = Some((tx, h)),
                Err(_) => return,
            }
        }
        if let Some((tx, _)) = &self.writeback
            && tx.send((from, len)).is_err()
        {
            self.early_writeback = false;
        }
    }

    /// Waits for the writeback helper to have submitted everything it was asked to.
    fn stop_writeback(&mut self) {
        if let Some((tx, h)) = self.writeback.take() {
            drop(tx);
            let _ = h.join();
        }
    }

    /// Ends `m`: pads its data to whole blocks and writes its header with the final size.
    /// Returns the member's size.
    pub fn end_stream(&mut self, m: StreamMember) -> Result<u64, ArchiveError> {
        let werr = self.werr();
        let mtime = super::write::now_secs();
        let h = tarfmt::encode_fixed(m.name.as_bytes(), 0o600, m.len, mtime)
            .ok_or_else(|| werr(io::Error::other("streamed member name too long")))?;
        let end = m.header_at + BLOCK + m.len;
        let pad = pad_len(m.len);
        if pad > 0 {
            self.file
                .write_all_at(&tarfmt::ZEROS[..pad], end)
                .map_err(&werr)?;
        }
        self.file.write_all_at(&h, m.header_at).map_err(&werr)?;
        self.pos = m.header_at + BLOCK + padded(m.len);
        self.streaming = false;
        if m.name.starts_with("checkpoint/") {
            self.images_bytes += m.len;
        }
        if self.signer.is_some() {
            self.digests.push(Pending::Stream {
                name: m.name.clone(),
                at: m.header_at + BLOCK,
                len: m.len,
            });
        }
        self.written.push(m.name);
        Ok(m.len)
    }

    /// Appends every member of `input` not written yet (the images not streamed, the JSON
    /// members, stats, log, rootfs diff, extras), in the order and form of
    /// [`super::write_archive`].
    pub fn append(
        &mut self,
        input: &ArchiveInput,
        progress: Option<&dyn Progress>,
    ) -> Result<(), ArchiveError> {
        self.check_idle()?;
        let werr = self.werr();
        let members = plan_with(input, &self.written)?;
        let total = self.pos
            + members
                .iter()
                .map(|m| m.header().len() as u64 + padded(m.size()))
                .sum::<u64>()
            + END_LEN;
        let mut file = self.file.try_clone().map_err(&werr)?;
        file.seek(SeekFrom::Start(self.pos)).map_err(&werr)?;
        let mut out = Out::plain(file, self.pos, total, progress);
        if self.signer.is_some() {
            out.record_digests();
        }
        let st = write_members(&mut out, &members, &werr)?;
        self.digests
            .extend(out.take_digests().into_iter().map(Pending::Done));
        let end = out.done();
        out.finish().map_err(&werr)?;
        if end + END_LEN != total {
            return Err(ArchiveError::SizeMismatch {
                member: "archive",
                planned: total - END_LEN,
                written: end,
            });
        }
        self.pos = end;
        self.images_bytes += st.images_bytes;
        self.stats.rootfs_diff_bytes += st.rootfs_diff_bytes;
        self.stats.changed.extend(st.changed);
        self.deleted_files += input.rootfs.as_ref().map_or(0, |d| d.deleted.len() as u64);
        self.written
            .extend(members.iter().map(|m| m.name_str().to_owned()));
        Ok(())
    }

    /// Ends the tar, makes it durable and renames it over the destination (then syncs the
    /// directory).
    pub fn finish(mut self) -> Result<WriteReport, ArchiveError> {
        self.check_idle()?;
        self.stop_writeback();
        let werr = self.werr();
        let mut signed_by = None;
        if let Some(key) = self.signer.take() {
            // The streamed members' data went pipe → archive in the kernel: hash it from the
            // archive file now (the workload runs again).
            let mut buf = vec![0u8; 1 << 20];
            let mut digests = Vec::with_capacity(self.digests.len());
            for p in std::mem::take(&mut self.digests) {
                digests.push(match p {
                    Pending::Done(d) => d,
                    Pending::Stream { name, at, len } => {
                        let mut h = Sha256::new();
                        super::sign::hash_range(&self.file, at, len, &mut buf, &mut h)
                            .map_err(&werr)?;
                        MemberDigest {
                            name,
                            kind: DigestKind::File,
                            size: len,
                            sha256: h.finalize().into(),
                        }
                    }
                });
            }
            let doc = key.signature_member(&digests);
            let h = tarfmt::encode(&Meta::new(
                SIGNATURE_MEMBER.as_bytes(),
                TypeFlag::File,
                0o600,
                doc.len() as u64,
                super::write::now_secs(),
            ));
            self.put_at_end(&h)?;
            self.put_at_end(&doc)?;
            self.put_at_end(&tarfmt::ZEROS[..pad_len(doc.len() as u64)])?;
            self.written.push(SIGNATURE_MEMBER.to_owned());
            signed_by = Some(key.public().key_id());
        }
        let end = [0u8; END_LEN as usize];
        self.put_at_end(&end)?;
        self.file.set_len(self.pos).map_err(&werr)?;
        self.file.sync_all().map_err(|source| ArchiveError::Sync {
            path: self.tmp.path().to_path_buf(),
            source,
        })?;
        let bytes = self.pos;
        let Self {
            dest,
            parent,
            tmp,
            file,
            written,
            images_bytes,
            stats,
            deleted_files,
            started,
            ..
        } = self;
        drop(file);
        tmp.persist(&dest).map_err(|e| ArchiveError::Rename {
            path: dest.clone(),
            source: e.error,
        })?;
        let dir = File::open(&parent).map_err(|source| ArchiveError::Sync {
            path: parent.clone(),
            source,
        })?;
        dir.sync_all().map_err(|source| ArchiveError::Sync {
            path: parent.clone(),
            source,
        })?;
        Ok(WriteReport {
            path: dest,
            bytes,
            tar_bytes: bytes,
            members: written.len() as u64,
            images_bytes,
            rootfs_diff_bytes: stats.rootfs_diff_bytes,
            deleted_files,
            changed_files: stats.changed,
            duration: started.elapsed(),
            compression: Compression::None,
            signed_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn input(images: &Path) -> ArchiveInput {
        ArchiveInput {
            images_dir: images.to_path_buf(),
            config: super::super::ConfigDump {
                id: "x".into(),
                runtime: "runc".into(),
                ..Default::default()
            },
            spec: serde_json::json!({"ociVersion": "1.0.2"}),
            stats_dump: None,
            dump_log: None,
            rootfs: None,
            extra: vec![("status.dump".into(), b"{}".to_vec())],
        }
    }

    fn members(path: &Path) -> Vec<(String, Vec<u8>)> {
        let mut ar = tar::Archive::new(File::open(path).unwrap());
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
                let mut data = Vec::new();
                io::Read::read_to_end(&mut e, &mut data).unwrap();
                (name, data)
            })
            .collect()
    }

    #[test]
    fn streamed_members_match_the_planned_writer() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("checkpoint");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("inventory.img"), b"inv").unwrap();
        let pages: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(images.join("pages-1.img"), &pages).unwrap();

        let planned = dir.path().join("planned.tar");
        super::super::write_archive(&planned, &input(&images), &Default::default()).unwrap();

        // The same pages, streamed through a pipe; pages-1.img is not in the images dir.
        let streamed_images = dir.path().join("s/checkpoint");
        std::fs::create_dir_all(&streamed_images).unwrap();
        std::fs::write(streamed_images.join("inventory.img"), b"inv").unwrap();
        let out = dir.path().join("streamed.tar");
        let mut b = ArchiveBuilder::create(&out).unwrap();
        b.append_dir("checkpoint", 0).unwrap();
        let mut m = b.begin_stream("checkpoint/pages-1.img").unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let data = pages.clone();
        let writer = std::thread::spawn(move || {
            let mut w = File::from(w);
            w.write_all(&data).unwrap();
        });
        loop {
            match b.splice_from(&mut m, r.as_fd(), 1 << 20) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("{e}"),
            }
        }
        writer.join().unwrap();
        assert_eq!(b.end_stream(m).unwrap(), pages.len() as u64);
        b.append(&input(&streamed_images), None).unwrap();
        let report = b.finish().unwrap();
        assert_eq!(report.bytes, std::fs::metadata(&out).unwrap().len());
        assert_eq!(report.images_bytes, pages.len() as u64 + 3);

        let mut a = members(&planned);
        let mut s = members(&out);
        a.sort();
        s.sort();
        assert_eq!(a.len(), s.len());
        for (x, y) in a.iter().zip(&s) {
            assert_eq!(x.0, y.0);
            if x.0 != "config.dump" && x.0 != "spec.dump" {
                assert_eq!(x.1, y.1, "{}", x.0);
            }
        }
        // cpengine's own reader accepts it too.
        let info = super::super::read_info(&out).unwrap();
        assert_eq!(info.config.id, "x");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("cpengine-tmp"))
            .collect();
        assert!(names.is_empty(), "temp files left: {names:?}");
    }

    #[test]
    fn a_dropped_builder_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("a.tar");
        let mut b = ArchiveBuilder::create(&out).unwrap();
        b.append_dir("checkpoint", 0).unwrap();
        let mut m = b.begin_stream("checkpoint/pages-1.img").unwrap();
        b.write_into(&mut m, b"abc").unwrap();
        assert!(b.append_dir("x", 0).is_err(), "append while streaming");
        drop(b);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
