//! Tar headers written by hand, so that the size of every member is known before a byte of it
//! is written.
//!
//! cpengine writes POSIX.1-2001 (pax) tar: a 512-byte ustar header per member, preceded by a
//! pax extended header (`x`) only when a value does not fit the ustar fields (long names or
//! link targets, sizes of 8 GiB and more, large ids, timestamps before 1970) or when the member
//! carries extended attributes (`SCHILY.xattr.<name>`, the key GNU tar, Go's archive/tar and
//! the Rust `tar` crate all read) or a GNU sparse map (`GNU.sparse.*`, format 1.0).
//! Writing the headers ourselves keeps [`encode`] a pure function of the member's metadata, so
//! the planner and the streaming writer agree byte for byte on the length of every header, and
//! the exact size of a nested tar can be written into the outer tar's header up front.

/// The tar block size.
pub(crate) const BLOCK: u64 = 512;

/// Two zero blocks end a tar stream.
pub(crate) const END_LEN: u64 = 2 * BLOCK;

/// `n` rounded up to whole blocks.
pub(crate) fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

/// Zero bytes that follow `n` bytes of data to fill its last block.
/// Never overflows, whatever `n` a hostile header declared.
pub(crate) fn pad_len(n: u64) -> usize {
    ((BLOCK - n % BLOCK) % BLOCK) as usize
}

/// A block of zeros, for padding.
pub(crate) const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// The ustar type flags cpengine writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeFlag {
    File,
    Hardlink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
}

impl TypeFlag {
    fn byte(self) -> u8 {
        match self {
            Self::File => b'0',
            Self::Hardlink => b'1',
            Self::Symlink => b'2',
            Self::Char => b'3',
            Self::Block => b'4',
            Self::Dir => b'5',
            Self::Fifo => b'6',
        }
    }
}

/// The metadata of one member.
#[derive(Debug, Clone)]
pub(crate) struct Meta<'a> {
    /// Relative name; directories end in `/`.
    pub name: &'a [u8],
    pub flag: TypeFlag,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data stored after the header (0 for everything but regular files).
    pub size: u64,
    pub mtime: i64,
    pub link: &'a [u8],
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extra pax records (xattrs, sparse map keys), written in this order.
    pub pax: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Meta<'a> {
    /// A member with no link, device numbers or pax records.
    pub fn new(name: &'a [u8], flag: TypeFlag, mode: u32, size: u64, mtime: i64) -> Self {
        Self {
            name,
            flag,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime,
            link: b"",
            dev_major: 0,
            dev_minor: 0,
            pax: Vec::new(),
        }
    }
}

// Largest values of the octal ustar fields (7 digits for ids, 11 for size and mtime).
const MAX_ID: u64 = 0o7777777;
const MAX_SIZE: u64 = 0o77777777777;

/// The bytes of the header(s) of `m`: an optional pax header with its records, then the ustar
/// header. Always a whole number of blocks.
pub(crate) fn encode(m: &Meta<'_>) -> Vec<u8> {
    let mut records: Vec<u8> = Vec::new();
    let split = split_name(m.name);
    if split.is_none() {
        pax_record(&mut records, b"path", m.name);
    }
    if m.link.len() > 100 {
        pax_record(&mut records, b"linkpath", m.link);
    }
    if m.size > MAX_SIZE {
        pax_record(&mut records, b"size", m.size.to_string().as_bytes());
    }
    if m.uid > MAX_ID {
        pax_record(&mut records, b"uid", m.uid.to_string().as_bytes());
    }
    if m.gid > MAX_ID {
        pax_record(&mut records, b"gid", m.gid.to_string().as_bytes());
    }
    if m.mtime < 0 || m.mtime as u64 > MAX_SIZE {
        pax_record(&mut records, b"mtime", m.mtime.to_string().as_bytes());
    }
    for (k, v) in &m.pax {
        pax_record(&mut records, k, v);
    }

    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if !records.is_empty() {
        // The pax header's own name only matters to readers without pax support, which
        // would extract it as a file: keep it short, relative and recognisable.
        let base = m
            .name
            .trim_ascii_end()
            .strip_suffix(b"/")
            .unwrap_or(m.name)
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or(b"");
        let mut xname = b"PaxHeaders/".to_vec();
        xname.extend_from_slice(&base[..base.len().min(80)]);
        let x = Meta::new(&xname, TypeFlag::File, 0o644, records.len() as u64, 0);
        let mut h = ustar(&x, (&xname, b""));
        h[156] = b'x';
        checksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&records);
        out.resize(out.len() + pad_len(records.len() as u64), 0);
    }
    let (prefix, name) = split.unwrap_or((b"", truncated(m.name, 100)));
    let mut h = ustar(m, (name, prefix));
    checksum(&mut h);
    out.extend_from_slice(&h);
    out
}

/// The single 512-byte ustar header of a regular file whose size is only known after its data
/// was written (a streamed member: the block is reserved first and patched at the end).
///
/// Always exactly one block, whatever the size: a size over the 11 octal digits of ustar is
/// written as a GNU base-256 number (which GNU tar, Go's archive/tar, the Rust `tar` crate and
/// cpengine's reader accept) instead of a pax record, which would need more blocks. `None` if
/// the name does not fit the ustar name field (100 bytes; streamed members have short names).
pub(crate) fn encode_fixed(name: &[u8], mode: u32, size: u64, mtime: i64) -> Option<[u8; 512]> {
    if name.len() > 100 || name.is_empty() {
        return None;
    }
    let m = Meta::new(name, TypeFlag::File, mode, size.min(MAX_SIZE), mtime.max(0));
    let mut h = ustar(&m, (name, b""));
    if size > MAX_SIZE {
        // Base-256: high bit of the first byte set, the value big-endian in the rest.
        let f = &mut h[124..136];
        f.fill(0);
        f[4..].copy_from_slice(&size.to_be_bytes());
        f[0] = 0x80;
    }
    checksum(&mut h);
    Some(h)
}

fn truncated(b: &[u8], n: usize) -> &[u8] {
    &b[..b.len().min(n)]
}

/// Splits a name into ustar (prefix, name) if it fits, else `None` (a pax `path` is needed).
fn split_name(name: &[u8]) -> Option<(&[u8], &[u8])> {
    if name.len() <= 100 {
        return Some((b"", name));
    }
    if name.len() > 256 {
        return None;
    }
    // The prefix holds at most 155 bytes and the rest at most 100; split at a '/' (which is
    // dropped), keeping a trailing '/' of a directory in the name part.
    let body = name.strip_suffix(b"/").unwrap_or(name);
    (1..body.len())
        .rev()
        .filter(|&i| body[i] == b'/')
        .find(|&i| i <= 155 && name.len() - i - 1 <= 100)
        .map(|i| (&name[..i], &name[i + 1..]))
}

fn ustar(m: &Meta<'_>, (name, prefix): (&[u8], &[u8])) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], u64::from(m.mode & 0o7777));
    octal(&mut h[108..116], m.uid.min(MAX_ID));
    octal(&mut h[116..124], m.gid.min(MAX_ID));
    octal(&mut h[124..136], if m.size > MAX_SIZE { 0 } else { m.size });
    let mtime = if m.mtime < 0 || m.mtime as u64 > MAX_SIZE {
        0
    } else {
        m.mtime as u64
    };
    octal(&mut h[136..148], mtime);
    h[156] = m.flag.byte();
    let link = truncated(m.link, 100);
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    if matches!(m.flag, TypeFlag::Char | TypeFlag::Block) {
        octal(&mut h[329..337], u64::from(m.dev_major).min(MAX_ID));
        octal(&mut h[337..345], u64::from(m.dev_minor).min(MAX_ID));
    }
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    h
}

/// Zero-padded octal digits filling all but the last byte of `field`, then a NUL.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    h[148..154].copy_from_slice(s.as_bytes());
    h[154] = 0;
    h[155] = b' ';
}

/// Appends one pax record `"<len> <key>=<value>\n"`, where `<len>` counts the whole record
/// including its own digits.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3;
    let mut len = base + 1;
    while base + len.to_string().len() != len {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The data area that precedes the data of a GNU sparse 1.0 member: the number of segments and
/// each segment's offset and length, one decimal number per line, padded to whole blocks.
pub(crate) fn sparse_map_block(segments: &[(u64, u64)]) -> Vec<u8> {
    let mut s = format!("{}\n", segments.len());
    for (off, len) in segments {
        s.push_str(&format!("{off}\n{len}\n"));
    }
    let mut b = s.into_bytes();
    b.resize(padded(b.len() as u64) as usize, 0);
    b
}

/// Where tar bytes go. Besides plain writes it can copy a range of a file, which lets an
/// uncompressed destination use `copy_file_range`.
pub(crate) trait TarSink {
    fn put(&mut self, buf: &[u8]) -> std::io::Result<()>;

    /// Appends exactly `len` bytes: those of `file` from `offset`, zero-filled if the file
    /// ends early. Returns how many came from the file.
    fn put_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<u64>;

    fn put_zeros(&mut self, mut n: u64) -> std::io::Result<()> {
        while n > 0 {
            let k = n.min(BLOCK);
            self.put(&ZEROS[..k as usize])?;
            n -= k;
        }
        Ok(())
    }
}

/// Copies `len` bytes of `file` from `offset` into `put` through `buf` with `pread`,
/// zero-filling past the file's end; returns the bytes that came from the file.
pub(crate) fn copy_range_via(
    file: &std::fs::File,
    offset: u64,
    len: u64,
    buf: &mut [u8],
    put: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut done = 0u64;
    while done < len {
        let want = buf.len().min((len - done) as usize);
        let n = match file.read_at(&mut buf[..want], offset + done) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        put(&buf[..n])?;
        done += n as u64;
    }
    let copied = done;
    while done < len {
        let k = buf.len().min((len - done) as usize);
        buf[..k].fill(0);
        put(&buf[..k])?;
        done += k as u64;
    }
    Ok(copied)
}

/// A [`TarSink`] over any writer.
pub(crate) struct WriteSink<W> {
    pub w: W,
    pub written: u64,
    buf: Vec<u8>,
}

impl<W: std::io::Write> WriteSink<W> {
    pub fn new(w: W) -> Self {
        Self {
            w,
            written: 0,
            buf: vec![0; 256 << 10],
        }
    }
}

impl<W: std::io::Write> TarSink for WriteSink<W> {
    fn put(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.w.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn put_file(&mut self, file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<u64> {
        let mut buf = std::mem::take(&mut self.buf);
        let w = &mut self.w;
        let written = &mut self.written;
        let r = copy_range_via(file, offset, len, &mut buf, &mut |b| {
            w.write_all(b)?;
            *written += b.len() as u64;
            Ok(())
        });
        self.buf = buf;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn read_back(bytes: &[u8]) -> Vec<(String, u64, Vec<u8>)> {
        let mut ar = tar::Archive::new(bytes);
        let mut out = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let size = e.size();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.push((name, size, data));
        }
        out
    }

    #[test]
    fn pax_record_length_counts_itself() {
        for vlen in [0usize, 1, 5, 6, 7, 90, 94, 95, 96, 995, 996, 997] {
            let mut out = Vec::new();
            let v = vec![b'a'; vlen];
            pax_record(&mut out, b"path", &v);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let n: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(n, out.len(), "value length {vlen}");
        }
    }

    #[test]
    fn long_names_links_and_xattrs_round_trip_through_the_tar_crate() {
        let long = format!("{}/file", "d".repeat(300));
        let mid = format!("{}/{}", "p".repeat(120), "n".repeat(90));
        let link = "t".repeat(150);
        let mut bytes = Vec::new();
        let mut m = Meta::new(long.as_bytes(), TypeFlag::File, 0o600, 3, 1_700_000_000);
        m.pax
            .push((b"SCHILY.xattr.user.k".to_vec(), b"v\0w".to_vec()));
        bytes.extend(encode(&m));
        bytes.extend(b"abc");
        bytes.resize(padded(bytes.len() as u64) as usize, 0);
        bytes.extend(encode(&Meta::new(
            mid.as_bytes(),
            TypeFlag::File,
            0o644,
            0,
            0,
        )));
        let mut l = Meta::new(b"lnk", TypeFlag::Symlink, 0o777, 0, 0);
        l.link = link.as_bytes();
        bytes.extend(encode(&l));
        bytes.extend([0u8; 1024]);
        let got = read_back(&bytes);
        assert_eq!(got[0].0, long);
        assert_eq!(got[0].2, b"abc");
        assert_eq!(got[1].0, mid);
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut es = ar.entries().unwrap();
        let mut first = es.next().unwrap().unwrap();
        let x: Vec<_> = first
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|r| r.unwrap())
            .filter(|r| r.key() == Ok("SCHILY.xattr.user.k"))
            .map(|r| r.value_bytes().to_vec())
            .collect();
        assert_eq!(x, vec![b"v\0w".to_vec()]);
        let third = es.nth(1).unwrap().unwrap();
        assert_eq!(third.link_name_bytes().unwrap().as_ref(), link.as_bytes());
    }

    #[test]
    fn ustar_name_split_keeps_short_names_in_the_name_field() {
        assert_eq!(split_name(b"a/b"), Some((&b""[..], &b"a/b"[..])));
        assert!(split_name(&[b'x'; 150]).is_none());
        let n = format!("{}/{}/", "a".repeat(100), "b".repeat(50));
        let (p, rest) = split_name(n.as_bytes()).unwrap();
        assert_eq!(p.len(), 100);
        assert_eq!(rest, format!("{}/", "b".repeat(50)).as_bytes());
    }

    #[test]
    fn fixed_headers_are_one_block_and_read_back() {
        let h = encode_fixed(b"checkpoint/pages-1.img", 0o600, 12345, 1_700_000_000).unwrap();
        let hdr = tar::Header::from_byte_slice(&h);
        assert_eq!(hdr.size().unwrap(), 12345);
        assert_eq!(hdr.path_bytes().as_ref(), b"checkpoint/pages-1.img");
        // Same bytes as the planned encoder for sizes that fit ustar.
        assert_eq!(
            h.to_vec(),
            encode(&Meta::new(
                b"checkpoint/pages-1.img",
                TypeFlag::File,
                0o600,
                12345,
                1_700_000_000
            ))
        );
        let big = 20u64 << 30;
        let h = encode_fixed(b"big", 0o600, big, 0).unwrap();
        let hdr = tar::Header::from_byte_slice(&h);
        assert_eq!(hdr.size().unwrap(), big);
        assert!(hdr.cksum().is_ok());
        assert!(encode_fixed(&[b'x'; 101], 0o600, 1, 0).is_none());
    }

    #[test]
    fn header_checksum_is_accepted() {
        let h = encode(&Meta::new(b"checkpoint/", TypeFlag::Dir, 0o700, 0, 5));
        assert_eq!(h.len(), 512);
        let hdr = tar::Header::from_byte_slice(&h);
        assert_eq!(hdr.cksum().unwrap(), {
            let mut c = h.clone();
            c[148..156].fill(b' ');
            c.iter().map(|&b| u32::from(b)).sum::<u32>()
        });
        assert_eq!(hdr.entry_type(), tar::EntryType::Directory);
        assert_eq!(hdr.mode().unwrap(), 0o700);
    }
}
