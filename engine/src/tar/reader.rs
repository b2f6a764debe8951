//! A small streaming tar reader with hard caps.
//!
//! Every archive cpengine reads passes through here: the outer checkpoint archive and the
//! nested `rootfs-diff.tar`. It understands what the ecosystem writes (POSIX ustar and pax,
//! GNU long names and links, old v7 headers, base-256 numbers) and bounds every allocation:
//! extension headers (pax records, GNU long names) larger than `max_ext` are refused before
//! they are read, and data is only ever streamed. A stream that ends inside a header or inside
//! a member's data is [`TarError::Truncated`].

use std::io::{self, Read};

use super::format::{BLOCK, pad_len};

/// A raw member as stored: name and link exactly as written (after pax/GNU overrides).
#[derive(Debug, Clone, Default)]
pub(crate) struct RawEntry {
    pub name: Vec<u8>,
    pub link: Vec<u8>,
    /// The ustar type flag (`0`, `5`, …; NUL is read as `0`).
    pub flag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Bytes of data that follow the header.
    pub size: u64,
    pub mtime: i64,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// All pax records of the member, in order.
    pub pax: Vec<(String, Vec<u8>)>,
}

impl RawEntry {
    pub fn pax_value(&self, key: &str) -> Option<&[u8]> {
        self.pax
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TarError {
    #[error("reading the tar stream")]
    Io(#[from] io::Error),
    #[error("tar stream ends early")]
    Truncated,
    #[error("invalid tar header: {0}")]
    BadHeader(&'static str),
    #[error("tar extension header of {size} bytes exceeds the limit of {limit}")]
    ExtensionTooLarge { size: u64, limit: u64 },
}

/// The largest member size accepted (what a signed 64-bit offset can address).
const MAX_SIZE: u64 = i64::MAX as u64;

pub(crate) struct TarReader<R> {
    r: R,
    /// Data bytes of the current member not yet consumed.
    remaining: u64,
    /// Padding after the current member's data.
    pad: u64,
    done: bool,
    /// Cap on one extension header and on all the extension headers of one member together.
    max_ext: u64,
    /// Cap on the extension headers of the whole stream (header blocks included).
    max_ext_stream: u64,
    ext_stream: u64,
}

/// Default cap on the extension headers (pax, GNU long names, global headers) of a stream.
pub(crate) const MAX_EXT_STREAM: u64 = 1 << 30;

impl<R: Read> TarReader<R> {
    pub fn new(r: R, max_ext: u64) -> Self {
        Self {
            r,
            remaining: 0,
            pad: 0,
            done: false,
            max_ext,
            max_ext_stream: MAX_EXT_STREAM,
            ext_stream: 0,
        }
    }

    /// Overrides the stream-wide cap on extension headers.
    #[cfg(test)]
    pub fn with_ext_stream_cap(mut self, cap: u64) -> Self {
        self.max_ext_stream = cap;
        self
    }

    /// The next member, skipping whatever is left of the current one's data.
    pub fn next_entry(&mut self) -> Result<Option<RawEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        self.skip(self.remaining.saturating_add(self.pad))?;
        self.remaining = 0;
        self.pad = 0;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut entry_ext = 0u64;
        loop {
            let mut h = [0u8; BLOCK as usize];
            if !self.read_block(&mut h)? {
                // A stream that stops at a member boundary without end blocks is accepted,
                // as every tar reader of the ecosystem does.
                self.done = true;
                return Ok(None);
            }
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&h)?;
            let flag = if h[156] == 0 { b'0' } else { h[156] };
            let size = number(&h[124..136])?;
            if size > MAX_SIZE {
                return Err(TarError::BadHeader("size beyond 2^63-1"));
            }
            match flag {
                b'x' | b'g' | b'L' | b'K' => {
                    // Each header, all of one member's together (a chain of headers before one
                    // member, kept in memory until it comes), and all of the stream's (header
                    // blocks counted, so a chain of empty ones is bounded too).
                    entry_ext = entry_ext.saturating_add(size);
                    if size > self.max_ext || entry_ext > self.max_ext {
                        return Err(TarError::ExtensionTooLarge {
                            size: entry_ext,
                            limit: self.max_ext,
                        });
                    }
                    self.ext_stream = self.ext_stream.saturating_add(BLOCK + size);
                    if self.ext_stream > self.max_ext_stream {
                        return Err(TarError::ExtensionTooLarge {
                            size: self.ext_stream,
                            limit: self.max_ext_stream,
                        });
                    }
                    let mut data = vec![0u8; size as usize];
                    self.read_exact(&mut data)?;
                    self.skip(pad_len(size) as u64)?;
                    match flag {
                        b'x' => pax.extend(parse_pax(&data)?),
                        b'L' => long_name = Some(cstr(&data).to_vec()),
                        b'K' => long_link = Some(cstr(&data).to_vec()),
                        // Global headers carry nothing cpengine needs.
                        _ => {}
                    }
                    continue;
                }
                _ => {}
            }
            let posix = &h[257..263] == b"ustar\0";
            let mut name = Vec::new();
            if posix && h[345] != 0 {
                name.extend_from_slice(cstr(&h[345..500]));
                name.push(b'/');
            }
            name.extend_from_slice(cstr(&h[..100]));
            let mut e = RawEntry {
                name,
                link: cstr(&h[157..257]).to_vec(),
                flag,
                mode: number(&h[100..108])? as u32,
                uid: number(&h[108..116])?,
                gid: number(&h[116..124])?,
                size,
                mtime: number(&h[136..148])? as i64,
                dev_major: 0,
                dev_minor: 0,
                pax: Vec::new(),
            };
            if matches!(flag, b'3' | b'4') {
                e.dev_major = number(&h[329..337])? as u32;
                e.dev_minor = number(&h[337..345])? as u32;
            }
            if let Some(n) = long_name {
                e.name = n;
            }
            if let Some(l) = long_link {
                e.link = l;
            }
            for (k, v) in &pax {
                let num = || -> Result<u64, TarError> {
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.split('.').next())
                        .and_then(|s| s.parse::<i64>().ok())
                        .map(|n| n as u64)
                        .ok_or(TarError::BadHeader("bad numeric pax record"))
                };
                match k.as_str() {
                    "path" => e.name = v.clone(),
                    "linkpath" => e.link = v.clone(),
                    "size" => {
                        e.size = std::str::from_utf8(v)
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                            .filter(|&n| n <= MAX_SIZE)
                            .ok_or(TarError::BadHeader("bad pax size"))?
                    }
                    "uid" => e.uid = num()?,
                    "gid" => e.gid = num()?,
                    "mtime" => e.mtime = num()? as i64,
                    _ => {}
                }
            }
            e.pax = pax;
            // Links, directories and devices carry no data whatever their size field says
            // (old writers put the target's size in hard links).
            self.remaining = match flag {
                b'1' | b'2' | b'3' | b'4' | b'5' | b'6' => 0,
                _ => e.size,
            };
            self.pad = pad_len(self.remaining) as u64;
            e.size = self.remaining;
            return Ok(Some(e));
        }
    }

    /// Reads the current member's data; `Ok(0)` at its end, [`TarError::Truncated`] (as an
    /// `UnexpectedEof` io error) if the stream ends first.
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tar stream ends inside a member",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// A `Read` over the current member's data.
    pub fn data(&mut self) -> Data<'_, R> {
        Data(self)
    }

    fn read_block(&mut self, h: &mut [u8; BLOCK as usize]) -> Result<bool, TarError> {
        let mut got = 0;
        while got < h.len() {
            match self.r.read(&mut h[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(TarError::Truncated),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                TarError::Truncated
            } else {
                e.into()
            }
        })
    }

    fn skip(&mut self, n: u64) -> Result<(), TarError> {
        let copied = io::copy(&mut (&mut self.r).take(n), &mut io::sink())?;
        if copied < n {
            return Err(TarError::Truncated);
        }
        Ok(())
    }
}

pub(crate) struct Data<'a, R>(&'a mut TarReader<R>);

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

fn cstr(b: &[u8]) -> &[u8] {
    b.iter().position(|&c| c == 0).map_or(b, |i| &b[..i])
}

/// An octal field (spaces and NULs around it ignored) or a GNU base-256 number.
fn number(f: &[u8]) -> Result<u64, TarError> {
    if f[0] & 0x80 != 0 {
        if f[0] == 0xff {
            return Err(TarError::BadHeader("negative base-256 number"));
        }
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or(TarError::BadHeader("number overflows"))?;
        }
        return Ok(v);
    }
    let s = std::str::from_utf8(f).map_err(|_| TarError::BadHeader("non-ascii number"))?;
    let s = s.trim_matches(|c: char| c == ' ' || c == '\0');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| TarError::BadHeader("bad octal number"))
}

fn verify_checksum(h: &[u8; BLOCK as usize]) -> Result<(), TarError> {
    let stored = number(&h[148..156])?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in h.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || stored as i64 == signed {
        Ok(())
    } else {
        Err(TarError::BadHeader("checksum mismatch"))
    }
}

fn parse_pax(mut data: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        if data.iter().all(|&b| b == 0) {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or(TarError::BadHeader("malformed pax record"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(TarError::BadHeader("malformed pax record"))?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(TarError::BadHeader("malformed pax record"));
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&b| b == b'=')
            .ok_or(TarError::BadHeader("malformed pax record"))?;
        let key = String::from_utf8(rec[..eq].to_vec())
            .map_err(|_| TarError::BadHeader("non-utf8 pax key"))?;
        out.push((key, rec[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::format::{Meta, TypeFlag, encode, padded};
    use super::*;

    #[test]
    fn reads_what_the_tar_crate_writes_including_gnu_long_names() {
        let mut b = tar::Builder::new(Vec::new());
        let long = format!("{}/x", "a".repeat(200));
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o640);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, &long, &b"data"[..]).unwrap();
        let mut l = tar::Header::new_gnu();
        l.set_entry_type(tar::EntryType::Symlink);
        l.set_size(0);
        b.append_link(&mut l, "lnk", "t".repeat(180)).unwrap();
        let bytes = b.into_inner().unwrap();
        let mut r = TarReader::new(&bytes[..], 1 << 20);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.name, long.as_bytes());
        assert_eq!(e.mode, 0o640);
        let mut d = Vec::new();
        r.data().read_to_end(&mut d).unwrap();
        assert_eq!(d, b"data");
        let l = r.next_entry().unwrap().unwrap();
        assert_eq!(l.flag, b'2');
        assert_eq!(l.link, "t".repeat(180).as_bytes());
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn truncated_data_and_headers_are_reported() {
        let mut bytes = encode(&Meta::new(b"f", TypeFlag::File, 0o600, 1000, 0));
        bytes.extend(vec![7u8; 100]);
        let mut r = TarReader::new(&bytes[..], 1 << 20);
        r.next_entry().unwrap().unwrap();
        let err = io::copy(&mut r.data(), &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let half = &encode(&Meta::new(b"f", TypeFlag::File, 0o600, 0, 0))[..300];
        assert!(matches!(
            TarReader::new(half, 1 << 20).next_entry(),
            Err(TarError::Truncated)
        ));
    }

    #[test]
    fn oversized_extension_headers_are_refused_before_reading() {
        let long = "n".repeat(5000);
        let mut bytes = encode(&Meta::new(long.as_bytes(), TypeFlag::File, 0o600, 0, 0));
        bytes.resize(padded(bytes.len() as u64) as usize + 1024, 0);
        assert!(matches!(
            TarReader::new(&bytes[..], 1024).next_entry(),
            Err(TarError::ExtensionTooLarge { .. })
        ));
        let e = TarReader::new(&bytes[..], 1 << 20)
            .next_entry()
            .unwrap()
            .unwrap();
        assert_eq!(e.name, long.as_bytes());
    }

    #[test]
    fn bad_checksum_is_an_error() {
        let mut h = encode(&Meta::new(b"f", TypeFlag::File, 0o600, 0, 0));
        h[0] = b'g';
        assert!(matches!(
            TarReader::new(&h[..], 1024).next_entry(),
            Err(TarError::BadHeader(_))
        ));
    }

    fn recheck(h: &mut [u8]) {
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h[..512].iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }

    /// A pax `size=-1` and a base-256 size of 2^64-1 are header errors, not an overflow.
    #[test]
    fn negative_and_huge_sizes_are_refused() {
        let rec = b"12 size=-1\n";
        let mut bytes = encode(&Meta::new(b"p", TypeFlag::File, 0o600, rec.len() as u64, 0));
        bytes[156] = b'x';
        recheck(&mut bytes);
        bytes.extend(rec);
        bytes.resize(padded(bytes.len() as u64) as usize, 0);
        bytes.extend(encode(&Meta::new(b"f", TypeFlag::File, 0o600, 0, 0)));
        bytes.extend([0u8; 1024]);
        assert!(matches!(
            TarReader::new(&bytes[..], 1 << 20).next_entry(),
            Err(TarError::BadHeader(_))
        ));
        let mut h = encode(&Meta::new(b"f", TypeFlag::File, 0o600, 0, 0));
        h[124..136].copy_from_slice(&[
            0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ]);
        recheck(&mut h);
        assert!(matches!(
            TarReader::new(&h[..], 1 << 20).next_entry(),
            Err(TarError::BadHeader(_))
        ));
        assert_eq!(pad_len(u64::MAX), 1);
    }

    fn ext_header(flag: u8, data: &[u8]) -> Vec<u8> {
        let mut h = encode(&Meta::new(
            b"x",
            TypeFlag::File,
            0o600,
            data.len() as u64,
            0,
        ));
        h[156] = flag;
        recheck(&mut h);
        h.extend(data);
        h.resize(padded(h.len() as u64) as usize, 0);
        h
    }

    /// Many extension headers, each under the per-header cap, before one member: their sum
    /// is capped per member; spread over many members, the stream's total is capped.
    #[test]
    fn extension_headers_are_capped_per_member_and_per_stream() {
        let rec = format!("{} SCHILY.xattr.user.a={}\n", 100, "v".repeat(75));
        assert_eq!(rec.len(), 100);
        let mut one = Vec::new();
        for _ in 0..200 {
            one.extend(ext_header(b'x', rec.as_bytes()));
        }
        one.extend(encode(&Meta::new(b"f", TypeFlag::File, 0o600, 0, 0)));
        assert!(matches!(
            TarReader::new(&one[..], 4096).next_entry(),
            Err(TarError::ExtensionTooLarge { limit: 4096, .. })
        ));
        let mut many = Vec::new();
        for i in 0..200 {
            many.extend(ext_header(b'x', rec.as_bytes()));
            many.extend(encode(&Meta::new(
                format!("f{i}").as_bytes(),
                TypeFlag::File,
                0o600,
                0,
                0,
            )));
        }
        many.extend([0u8; 1024]);
        let mut r = TarReader::new(&many[..], 4096).with_ext_stream_cap(64 << 10);
        let mut n = 0;
        let err = loop {
            match r.next_entry() {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("200 members read under a 64 KiB stream cap"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, TarError::ExtensionTooLarge { limit: 65536, .. }),
            "{err:?}"
        );
        assert!(n > 0 && n < 200);
        // Empty global headers in a chain count their blocks.
        let mut g = Vec::new();
        for _ in 0..200 {
            g.extend(ext_header(b'g', b""));
        }
        assert!(matches!(
            TarReader::new(&g[..], 4096)
                .with_ext_stream_cap(64 << 10)
                .next_entry(),
            Err(TarError::ExtensionTooLarge { .. })
        ));
    }
}
