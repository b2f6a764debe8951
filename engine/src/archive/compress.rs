//! Compression detection and decoding. Readers never trust a file name: the first bytes tell
//! gzip (`1f 8b`) and zstd (`28 b5 2f fd`) from a plain tar.

use std::io::{self, BufRead, Read};

use super::Compression;

pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// What the leading bytes of a stream say about its compression.
pub(crate) fn sniff(head: &[u8]) -> Compression {
    if head.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else if head.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// Peeks at `r` and wraps it in the matching decoder.
pub(crate) fn decoder<'a, R: BufRead + 'a>(
    mut r: R,
) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut head = r.fill_buf()?;
    // A short first read cannot hide a magic: fill_buf returns at least what one read gives,
    // and BufReader's first read of a file returns its whole buffer.
    if head.len() < ZSTD_MAGIC.len() && !head.is_empty() {
        head = r.fill_buf()?;
    }
    let c = sniff(head);
    let boxed: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(r),
        // Several concatenated gzip members form one stream (pigz and friends write them).
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    };
    Ok((c, boxed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn sniffs_and_decodes_each_kind() {
        let data = b"hello tar".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        for (bytes, want) in [
            (data.clone(), Compression::None),
            (gz, Compression::Gzip),
            (zs, Compression::Zstd),
        ] {
            let (c, mut r) = decoder(io::BufReader::new(&bytes[..])).unwrap();
            assert_eq!(c, want);
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, data);
        }
        assert_eq!(sniff(b""), Compression::None);
    }
}
