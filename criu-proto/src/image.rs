//! Framing of CRIU image files.
//!
//! An image file starts with a header that identifies it, then holds a sequence of entries,
//! each a `u32` (host-endian; little-endian on every platform cpengine supports) byte count
//! followed by that many bytes of protobuf. End of file at an entry boundary ends the list.
//!
//! | kind | header |
//! |---|---|
//! | `inventory.img` | the inventory magic alone |
//! | other protobuf images | [`IMG_COMMON_MAGIC`], then the image's own magic |
//! | service files (`stats-*`, `irmap-cache`) | [`IMG_SERVICE_MAGIC`], then the image's magic |
//! | raw images (`pages-*.img`, tmpfs tarballs, netfilter dumps) | none at all |
//!
//! Readers never allocate more than their entry cap ([`DEFAULT_MAX_ENTRY`] unless set): an
//! oversized length is a typed error, not an allocation.

use std::io::{self, Read, Write};

use prost::Message;

/// First word of every protobuf image except `inventory.img`.
pub const IMG_COMMON_MAGIC: u32 = 0x5456_4319;
/// First word of service files such as `stats-dump`.
pub const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;

/// Largest entry a reader accepts unless told otherwise. CRIU's largest routine entries
/// (`core` with many threads, `mm` with many VMAs) are far below this.
pub const DEFAULT_MAX_ENTRY: u32 = 16 << 20;

/// How an image file's header looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A single magic word (only `inventory.img`).
    Single(u32),
    /// [`IMG_COMMON_MAGIC`] followed by the image's magic.
    Common(u32),
    /// [`IMG_SERVICE_MAGIC`] followed by the image's magic.
    Service(u32),
    /// No header: raw data (page contents, tarballs).
    Raw,
}

/// Image magics (CRIU `criu/include/magic.h`), by the name of the image they head.
pub mod magic {
    pub const INVENTORY: u32 = 0x5831_3116;
    pub const PSTREE: u32 = 0x5027_3030;
    pub const FDINFO: u32 = 0x5621_3732;
    pub const PAGEMAP: u32 = 0x5608_4025;
    pub const CORE: u32 = 0x5505_3847;
    pub const IDS: u32 = 0x5443_2030;
    pub const VMAS: u32 = 0x5412_3737;
    pub const PIPES: u32 = 0x5651_3555;
    pub const PIPES_DATA: u32 = 0x5645_3709;
    pub const FIFO: u32 = 0x5836_4939;
    pub const FIFO_DATA: u32 = 0x5933_3054;
    pub const SIGACT: u32 = 0x5534_4201;
    pub const UNIXSK: u32 = 0x5437_3943;
    pub const INETSK: u32 = 0x5644_3851;
    pub const PACKETSK: u32 = 0x6045_4618;
    pub const ITIMERS: u32 = 0x5746_4056;
    pub const POSIX_TIMERS: u32 = 0x5260_3957;
    pub const SK_QUEUES: u32 = 0x5626_4026;
    pub const UTSNS: u32 = 0x5447_3203;
    pub const CREDS: u32 = 0x5402_3547;
    pub const IPC_VAR: u32 = 0x5311_5007;
    pub const IPCNS_SHM: u32 = 0x4628_3044;
    pub const IPCNS_MSG: u32 = 0x5545_3737;
    pub const IPCNS_SEM: u32 = 0x5957_3019;
    pub const REG_FILES: u32 = 0x5036_3636;
    pub const EXT_FILES: u32 = 0x5925_5641;
    pub const FS: u32 = 0x5140_3912;
    pub const MM: u32 = 0x5749_2820;
    pub const REMAP_FPATH: u32 = 0x5913_3954;
    pub const GHOST_FILE: u32 = 0x5258_3605;
    pub const TCP_STREAM: u32 = 0x5146_5506;
    pub const EVENTFD_FILE: u32 = 0x4452_3722;
    pub const EVENTPOLL_FILE: u32 = 0x4502_3858;
    pub const EVENTPOLL_TFD: u32 = 0x4443_3746;
    pub const SIGNALFD: u32 = 0x5732_3820;
    pub const INOTIFY_FILE: u32 = 0x4842_4431;
    pub const INOTIFY_WD: u32 = 0x5456_2009;
    pub const MNTS: u32 = 0x5556_3928;
    pub const NETDEV: u32 = 0x5737_3951;
    pub const NETNS: u32 = 0x5593_3752;
    pub const TTY_FILES: u32 = 0x5943_3025;
    pub const TTY_INFO: u32 = 0x5945_3036;
    pub const TTY_DATA: u32 = 0x5941_3026;
    pub const FILE_LOCKS: u32 = 0x5432_3616;
    pub const RLIMIT: u32 = 0x5711_3925;
    pub const FANOTIFY_FILE: u32 = 0x5509_6122;
    pub const FANOTIFY_MARK: u32 = 0x5650_6035;
    pub const SIGNAL: u32 = 0x5925_5647;
    pub const NETLINK_SK: u32 = 0x5800_5614;
    pub const NS_FILES: u32 = 0x6139_4011;
    pub const TUNFILE: u32 = 0x5714_3751;
    pub const CGROUP: u32 = 0x5938_3330;
    pub const TIMERFD: u32 = 0x5049_3712;
    pub const CPUINFO: u32 = 0x6140_4013;
    pub const USERNS: u32 = 0x5547_4906;
    pub const SECCOMP: u32 = 0x6441_3049;
    pub const BINFMT_MISC: u32 = 0x6734_3323;
    pub const AUTOFS: u32 = 0x4935_3943;
    pub const FILES: u32 = 0x5630_3138;
    pub const MEMFD_INODE: u32 = 0x4845_3499;
    pub const TIMENS: u32 = 0x4311_4433;
    pub const PIDNS: u32 = 0x6115_7326;
    pub const BPFMAP_FILE: u32 = 0x5750_6142;
    pub const BPFMAP_DATA: u32 = 0x6432_4033;
    pub const APPARMOR: u32 = 0x5942_3047;
    pub const PIDFD: u32 = 0x5443_5556;
    pub const STATS: u32 = 0x5709_3306;
    pub const IRMAP_CACHE: u32 = 0x5700_4059;
}

/// File-name patterns of CRIU images and their headers. A pattern ending in `-` matches
/// `<pattern><id>.img`; anything else must match the whole name.
const NAMED_HEADERS: &[(&str, Header)] = &[
    ("inventory.img", Header::Single(magic::INVENTORY)),
    ("stats-dump", Header::Service(magic::STATS)),
    ("stats-restore", Header::Service(magic::STATS)),
    ("irmap-cache", Header::Service(magic::IRMAP_CACHE)),
    ("pstree.img", Header::Common(magic::PSTREE)),
    ("files.img", Header::Common(magic::FILES)),
    ("reg-files.img", Header::Common(magic::REG_FILES)),
    ("ext-files.img", Header::Common(magic::EXT_FILES)),
    ("remap-fpath.img", Header::Common(magic::REMAP_FPATH)),
    ("pipes.img", Header::Common(magic::PIPES)),
    ("pipes-data.img", Header::Common(magic::PIPES_DATA)),
    ("fifo.img", Header::Common(magic::FIFO)),
    ("fifo-data.img", Header::Common(magic::FIFO_DATA)),
    ("unixsk.img", Header::Common(magic::UNIXSK)),
    ("inetsk.img", Header::Common(magic::INETSK)),
    ("packetsk.img", Header::Common(magic::PACKETSK)),
    ("netlinksk.img", Header::Common(magic::NETLINK_SK)),
    ("sk-queues.img", Header::Common(magic::SK_QUEUES)),
    ("tty.img", Header::Common(magic::TTY_FILES)),
    ("tty-info.img", Header::Common(magic::TTY_INFO)),
    ("tty-data.img", Header::Common(magic::TTY_DATA)),
    ("file-locks.img", Header::Common(magic::FILE_LOCKS)),
    ("eventfd.img", Header::Common(magic::EVENTFD_FILE)),
    ("eventpoll.img", Header::Common(magic::EVENTPOLL_FILE)),
    ("eventpoll-tfd.img", Header::Common(magic::EVENTPOLL_TFD)),
    ("signalfd.img", Header::Common(magic::SIGNALFD)),
    ("inotify.img", Header::Common(magic::INOTIFY_FILE)),
    ("inotify-wd.img", Header::Common(magic::INOTIFY_WD)),
    ("fanotify.img", Header::Common(magic::FANOTIFY_FILE)),
    ("fanotify-mark.img", Header::Common(magic::FANOTIFY_MARK)),
    ("timerfd.img", Header::Common(magic::TIMERFD)),
    ("tunfile.img", Header::Common(magic::TUNFILE)),
    ("ns-files.img", Header::Common(magic::NS_FILES)),
    ("cgroup.img", Header::Common(magic::CGROUP)),
    ("seccomp.img", Header::Common(magic::SECCOMP)),
    ("memfd.img", Header::Common(magic::MEMFD_INODE)),
    ("pidfd.img", Header::Common(magic::PIDFD)),
    ("apparmor.img", Header::Common(magic::APPARMOR)),
    ("cpuinfo.img", Header::Common(magic::CPUINFO)),
    ("bpfmap-file.img", Header::Common(magic::BPFMAP_FILE)),
    ("bpfmap-data.img", Header::Common(magic::BPFMAP_DATA)),
    ("core-", Header::Common(magic::CORE)),
    ("mm-", Header::Common(magic::MM)),
    ("pagemap-shmem-", Header::Common(magic::PAGEMAP)),
    ("pagemap-", Header::Common(magic::PAGEMAP)),
    ("pages-", Header::Raw),
    ("fdinfo-", Header::Common(magic::FDINFO)),
    ("fs-", Header::Common(magic::FS)),
    ("ids-", Header::Common(magic::IDS)),
    ("sigacts-", Header::Common(magic::SIGACT)),
    ("creds-", Header::Common(magic::CREDS)),
    ("rlimit-", Header::Common(magic::RLIMIT)),
    ("itimers-", Header::Common(magic::ITIMERS)),
    ("posix-timers-", Header::Common(magic::POSIX_TIMERS)),
    ("signal-s-", Header::Common(magic::SIGNAL)),
    ("signal-p-", Header::Common(magic::SIGNAL)),
    ("mountpoints-", Header::Common(magic::MNTS)),
    ("netns-", Header::Common(magic::NETNS)),
    ("netdev-", Header::Common(magic::NETDEV)),
    ("utsns-", Header::Common(magic::UTSNS)),
    ("ipcns-var-", Header::Common(magic::IPC_VAR)),
    ("ipcns-shm-", Header::Common(magic::IPCNS_SHM)),
    ("ipcns-msg-", Header::Common(magic::IPCNS_MSG)),
    ("ipcns-sem-", Header::Common(magic::IPCNS_SEM)),
    ("timens-", Header::Common(magic::TIMENS)),
    ("pidns-", Header::Common(magic::PIDNS)),
    ("userns-", Header::Common(magic::USERNS)),
    ("tcp-stream-", Header::Common(magic::TCP_STREAM)),
    ("binfmt-misc-", Header::Common(magic::BINFMT_MISC)),
    ("autofs-", Header::Common(magic::AUTOFS)),
    ("ghost-file-", Header::Common(magic::GHOST_FILE)),
    ("vmas-", Header::Common(magic::VMAS)),
];

/// The header of the CRIU image with this file name, if cpengine knows the name.
pub fn header_for(file_name: &str) -> Option<Header> {
    NAMED_HEADERS.iter().find_map(|(pattern, header)| {
        let matched = if let Some(prefix) = pattern.strip_suffix('-') {
            file_name
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('-'))
                .and_then(|id| id.strip_suffix(".img"))
                .is_some_and(|id| !id.is_empty())
        } else {
            file_name == *pattern
        };
        matched.then_some(*header)
    })
}

/// What can go wrong reading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading image")]
    Io(#[from] io::Error),
    #[error("bad magic at offset {offset}: expected {expected:#010x}, found {found:#010x}")]
    BadMagic {
        offset: u64,
        expected: u32,
        found: u32,
    },
    #[error("truncated image at offset {offset}: needed {needed} bytes, got {got}")]
    Truncated { offset: u64, needed: u64, got: u64 },
    #[error("entry at offset {offset} declares {size} bytes, over the limit of {limit}")]
    Oversized { offset: u64, size: u64, limit: u64 },
    #[error("entry at offset {offset} is not a valid protobuf message")]
    Decode {
        offset: u64,
        source: prost::DecodeError,
    },
    #[error("expected one entry, found none")]
    Empty,
}

/// Reads entries of one image file.
#[derive(Debug)]
pub struct ImageReader<R> {
    inner: R,
    offset: u64,
    max_entry: u32,
}

impl<R: Read> ImageReader<R> {
    /// Checks the header and positions the reader at the first entry.
    pub fn new(inner: R, header: Header) -> Result<Self, ImageError> {
        Self::with_limit(inner, header, DEFAULT_MAX_ENTRY)
    }

    /// Like [`ImageReader::new`] with an explicit cap on the size of one entry.
    pub fn with_limit(inner: R, header: Header, max_entry: u32) -> Result<Self, ImageError> {
        let mut reader = Self {
            inner,
            offset: 0,
            max_entry,
        };
        match header {
            Header::Raw => {}
            Header::Single(m) => reader.expect_word(m)?,
            Header::Common(m) => {
                reader.expect_word(IMG_COMMON_MAGIC)?;
                reader.expect_word(m)?;
            }
            Header::Service(m) => {
                reader.expect_word(IMG_SERVICE_MAGIC)?;
                reader.expect_word(m)?;
            }
        }
        Ok(reader)
    }

    /// Byte offset of the next read from the start of the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn expect_word(&mut self, expected: u32) -> Result<(), ImageError> {
        let offset = self.offset;
        let found = self.read_u32()?.ok_or(ImageError::Truncated {
            offset,
            needed: 4,
            got: 0,
        })?;
        if found != expected {
            return Err(ImageError::BadMagic {
                offset,
                expected,
                found,
            });
        }
        Ok(())
    }

    /// Reads a `u32`; `None` at a clean end of file.
    fn read_u32(&mut self) -> Result<Option<u32>, ImageError> {
        let mut buf = [0u8; 4];
        let got = read_full(&mut self.inner, &mut buf)?;
        match got {
            0 => Ok(None),
            4 => {
                self.offset += 4;
                Ok(Some(u32::from_le_bytes(buf)))
            }
            n => Err(ImageError::Truncated {
                offset: self.offset,
                needed: 4,
                got: n as u64,
            }),
        }
    }

    /// The next entry's raw bytes; `None` at the end of the image.
    pub fn next_raw(&mut self) -> Result<Option<Vec<u8>>, ImageError> {
        let offset = self.offset;
        let Some(size) = self.read_u32()? else {
            return Ok(None);
        };
        if size > self.max_entry {
            return Err(ImageError::Oversized {
                offset,
                size: size.into(),
                limit: self.max_entry.into(),
            });
        }
        self.read_payload(size.into(), self.max_entry.into())
            .map(Some)
    }

    /// The next entry decoded as `M`; `None` at the end of the image.
    pub fn next_entry<M: Message + Default>(&mut self) -> Result<Option<M>, ImageError> {
        let offset = self.offset;
        match self.next_raw()? {
            None => Ok(None),
            Some(bytes) => {
                M::decode(bytes.as_slice())
                    .map(Some)
                    .map_err(|source| ImageError::Decode {
                        offset: offset + 4,
                        source,
                    })
            }
        }
    }

    /// Exactly one entry (e.g. `stats-dump`, `inventory.img`).
    pub fn one<M: Message + Default>(&mut self) -> Result<M, ImageError> {
        self.next_entry()?.ok_or(ImageError::Empty)
    }

    /// Every remaining entry.
    pub fn all<M: Message + Default>(&mut self) -> Result<Vec<M>, ImageError> {
        let mut out = Vec::new();
        while let Some(m) = self.next_entry()? {
            out.push(m);
        }
        Ok(out)
    }

    /// Reads `len` bytes of raw payload that some images interleave after an entry
    /// (pipe data, ghost file contents). `limit` caps `len` before anything is allocated.
    pub fn read_payload(&mut self, len: u64, limit: u64) -> Result<Vec<u8>, ImageError> {
        if len > limit {
            return Err(ImageError::Oversized {
                offset: self.offset,
                size: len,
                limit,
            });
        }
        let mut buf = vec![0u8; len as usize];
        let got = read_full(&mut self.inner, &mut buf)?;
        if got as u64 != len {
            return Err(ImageError::Truncated {
                offset: self.offset,
                needed: len,
                got: got as u64,
            });
        }
        self.offset += len;
        Ok(buf)
    }

    /// The underlying reader, positioned after the last entry read.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes images in CRIU's framing (tests, fixtures and tools; CRIU writes the real ones).
#[derive(Debug)]
pub struct ImageWriter<W> {
    inner: W,
}

impl<W: Write> ImageWriter<W> {
    /// Writes the header.
    pub fn new(mut inner: W, header: Header) -> io::Result<Self> {
        match header {
            Header::Raw => {}
            Header::Single(m) => inner.write_all(&m.to_le_bytes())?,
            Header::Common(m) => {
                inner.write_all(&IMG_COMMON_MAGIC.to_le_bytes())?;
                inner.write_all(&m.to_le_bytes())?;
            }
            Header::Service(m) => {
                inner.write_all(&IMG_SERVICE_MAGIC.to_le_bytes())?;
                inner.write_all(&m.to_le_bytes())?;
            }
        }
        Ok(Self { inner })
    }

    /// Appends one length-prefixed entry.
    pub fn write<M: Message>(&mut self, m: &M) -> io::Result<()> {
        let len = u32::try_from(m.encoded_len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "entry over 4 GiB"))?;
        self.inner.write_all(&len.to_le_bytes())?;
        self.inner.write_all(&m.encode_to_vec())
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::{DumpStatsEntry, PstreeEntry, StatsEntry};

    fn stats_image() -> Vec<u8> {
        let mut w = ImageWriter::new(Vec::new(), Header::Service(magic::STATS)).unwrap();
        w.write(&StatsEntry {
            dump: Some(DumpStatsEntry {
                frozen_time: 1234,
                pages_written: 7,
                ..Default::default()
            }),
            restore: None,
        })
        .unwrap();
        w.into_inner()
    }

    #[test]
    fn round_trip_service_image() {
        let bytes = stats_image();
        let mut r = ImageReader::new(bytes.as_slice(), Header::Service(magic::STATS)).unwrap();
        let s: StatsEntry = r.one().unwrap();
        assert_eq!(s.dump.unwrap().frozen_time, 1234);
        assert!(r.next_entry::<StatsEntry>().unwrap().is_none());
    }

    #[test]
    fn bad_magic_is_typed() {
        let bytes = stats_image();
        let err = ImageReader::new(bytes.as_slice(), Header::Common(magic::STATS)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::BadMagic {
                offset: 0,
                expected: IMG_COMMON_MAGIC,
                found: IMG_SERVICE_MAGIC
            }
        ));
        let err = ImageReader::new(bytes.as_slice(), Header::Service(magic::PSTREE)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::BadMagic {
                offset: 4,
                expected: magic::PSTREE,
                ..
            }
        ));
    }

    #[test]
    fn truncated_header_length_and_payload() {
        let bytes = stats_image();
        let err = ImageReader::new(&bytes[..6], Header::Service(magic::STATS)).unwrap_err();
        assert!(matches!(
            err,
            ImageError::Truncated {
                offset: 4,
                needed: 4,
                got: 2
            }
        ));

        let mut r = ImageReader::new(&bytes[..10], Header::Service(magic::STATS)).unwrap();
        assert!(matches!(
            r.next_raw(),
            Err(ImageError::Truncated {
                offset: 8,
                needed: 4,
                got: 2
            })
        ));

        let cut = bytes.len() - 1;
        let mut r = ImageReader::new(&bytes[..cut], Header::Service(magic::STATS)).unwrap();
        assert!(matches!(
            r.next_raw(),
            Err(ImageError::Truncated { offset: 12, .. })
        ));
    }

    #[test]
    fn oversized_entry_rejected_before_allocation() {
        let mut bytes = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        bytes.extend(magic::PSTREE.to_le_bytes());
        bytes.extend(u32::MAX.to_le_bytes());
        let mut r = ImageReader::new(bytes.as_slice(), Header::Common(magic::PSTREE)).unwrap();
        let err = r.next_entry::<PstreeEntry>().unwrap_err();
        assert!(
            matches!(err, ImageError::Oversized { offset: 8, size, .. } if size == u64::from(u32::MAX))
        );

        let mut r = ImageReader::with_limit(&bytes[..8], Header::Common(magic::PSTREE), 8).unwrap();
        assert!(matches!(
            r.read_payload(9, 8),
            Err(ImageError::Oversized { .. })
        ));
    }

    #[test]
    fn undecodable_entry_is_typed() {
        let mut bytes = IMG_COMMON_MAGIC.to_le_bytes().to_vec();
        bytes.extend(magic::PSTREE.to_le_bytes());
        bytes.extend(2u32.to_le_bytes());
        bytes.extend([0xff, 0xff]);
        let mut r = ImageReader::new(bytes.as_slice(), Header::Common(magic::PSTREE)).unwrap();
        assert!(matches!(
            r.next_entry::<PstreeEntry>(),
            Err(ImageError::Decode { offset: 12, .. })
        ));
    }

    #[test]
    fn empty_image_has_no_entries() {
        let mut r = ImageReader::new(&[][..], Header::Raw).unwrap();
        assert!(matches!(r.one::<PstreeEntry>(), Err(ImageError::Empty)));
    }

    #[test]
    fn headers_by_file_name() {
        assert_eq!(
            header_for("inventory.img"),
            Some(Header::Single(magic::INVENTORY))
        );
        assert_eq!(header_for("core-1.img"), Some(Header::Common(magic::CORE)));
        assert_eq!(
            header_for("pagemap-shmem-123.img"),
            Some(Header::Common(magic::PAGEMAP))
        );
        assert_eq!(
            header_for("pagemap-42.img"),
            Some(Header::Common(magic::PAGEMAP))
        );
        assert_eq!(header_for("pages-1.img"), Some(Header::Raw));
        assert_eq!(
            header_for("stats-dump"),
            Some(Header::Service(magic::STATS))
        );
        assert_eq!(header_for("core-.img"), None);
        assert_eq!(header_for("corefile"), None);
        assert_eq!(header_for("descriptors.json"), None);
    }
}
