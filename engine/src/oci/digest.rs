//! sha256 digests of content, and readers/writers that compute them in passing.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use super::error::{OciError, OciResult};
use super::reference::is_valid_digest;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_of(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// The hex part of a valid `sha256:` digest, or [`OciError::InvalidDigest`]. Anything used to
/// build a file name goes through here: only 64 lower-case hex digits pass.
pub fn sha256_hex(digest: &str) -> OciResult<&str> {
    if is_valid_digest(digest) {
        Ok(&digest[7..])
    } else {
        Err(OciError::InvalidDigest {
            digest: digest.to_owned(),
        })
    }
}

/// Checks that content of `actual_size` bytes hashing to `actual` is what a descriptor
/// (`expected`, `expected_size`) announced.
/// The size is checked first: content cut short or running long is reported as such.
pub fn verify(expected: &str, expected_size: u64, actual: &str, actual_size: u64) -> OciResult<()> {
    if actual_size != expected_size {
        return Err(OciError::SizeMismatch {
            digest: expected.to_owned(),
            expected: expected_size,
            actual: actual_size,
        });
    }
    if actual != expected {
        return Err(OciError::DigestMismatch {
            expected: expected.to_owned(),
            actual: actual.to_owned(),
        });
    }
    Ok(())
}

/// A writer that hashes and counts everything written through it.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// The digest and length so far, and the inner writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            format!("sha256:{:x}", self.hasher.finalize()),
            self.len,
            self.inner,
        )
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts everything read through it.
#[derive(Debug)]
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    pub fn finish(self) -> (String, u64) {
        (format!("sha256:{:x}", self.hasher.finalize()), self.len)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Incremental hashing for content that arrives in pieces (HTTP bodies).
#[derive(Debug, Default)]
pub struct Hasher {
    hasher: Sha256,
    len: u64,
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
    }

    pub fn finish(self) -> (String, u64) {
        (format!("sha256:{:x}", self.hasher.finalize()), self.len)
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_of(b"{}"),
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"{").unwrap();
        w.write_all(b"}").unwrap();
        let (d, n, v) = w.finish();
        assert_eq!(
            (d.as_str(), n, v.as_slice()),
            (sha256_of(b"{}").as_str(), 2, &b"{}"[..])
        );
    }

    #[test]
    fn verify_is_typed() {
        let d = sha256_of(b"a");
        assert!(verify(&d, 1, &d, 1).is_ok());
        assert!(matches!(
            verify(&d, 1, &sha256_of(b"b"), 1),
            Err(OciError::DigestMismatch { .. })
        ));
        assert!(matches!(
            verify(&d, 2, &d, 1),
            Err(OciError::SizeMismatch {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        assert!(matches!(
            sha256_hex("sha256:../../etc"),
            Err(OciError::InvalidDigest { .. })
        ));
    }
}
