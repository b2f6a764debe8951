//! Editing real CRIU images inside a real checkpoint archive, to make archives that a given
//! host cannot restore (e.g. tasks whose credentials ask for a capability the host lacks).
//!
//! The edit works on the protobuf wire format rather than on decoded messages: the project's
//! `criu-proto` carries only the fields the engine reads, and decoding then re-encoding a
//! `core` entry would drop every other field (registers among them). Here unknown fields are
//! kept byte for byte; only the path of fields named is rewritten, lengths recomputed.

use std::io::Read;
use std::path::Path;

use criu_proto::image::{Header, header_for};

/// One field of a protobuf message on the wire.
#[derive(Debug, Clone)]
enum Field {
    Varint(u32, u64),
    Fixed64(u32, [u8; 8]),
    Bytes(u32, Vec<u8>),
    Fixed32(u32, [u8; 4]),
}

fn read_varint(b: &[u8], at: &mut usize) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = b[*at];
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            break;
        }
    }
    v
}

fn write_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn parse(b: &[u8]) -> Vec<Field> {
    let mut at = 0;
    let mut out = Vec::new();
    while at < b.len() {
        let key = read_varint(b, &mut at);
        let num = (key >> 3) as u32;
        match key & 7 {
            0 => out.push(Field::Varint(num, read_varint(b, &mut at))),
            1 => {
                out.push(Field::Fixed64(num, b[at..at + 8].try_into().unwrap()));
                at += 8;
            }
            2 => {
                let len = read_varint(b, &mut at) as usize;
                out.push(Field::Bytes(num, b[at..at + len].to_vec()));
                at += len;
            }
            5 => {
                out.push(Field::Fixed32(num, b[at..at + 4].try_into().unwrap()));
                at += 4;
            }
            w => panic!("protobuf wire type {w} in a CRIU image"),
        }
    }
    out
}

fn serialize(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in fields {
        match f {
            Field::Varint(n, v) => {
                write_varint(&mut out, u64::from(*n) << 3);
                write_varint(&mut out, *v);
            }
            Field::Fixed64(n, v) => {
                write_varint(&mut out, (u64::from(*n) << 3) | 1);
                out.extend_from_slice(v);
            }
            Field::Bytes(n, v) => {
                write_varint(&mut out, (u64::from(*n) << 3) | 2);
                write_varint(&mut out, v.len() as u64);
                out.extend_from_slice(v);
            }
            Field::Fixed32(n, v) => {
                write_varint(&mut out, (u64::from(*n) << 3) | 5);
                out.extend_from_slice(v);
            }
        }
    }
    out
}

/// Field numbers in CRIU's `images/core.proto` and `images/creds.proto`.
const CORE_THREAD_CORE: u32 = 5;
const THREAD_CORE_CREDS: u32 = 10;
const CREDS_CAP_PRM: u32 = 10;
const CREDS_CAP_EFF: u32 = 11;

/// Adds capability `cap` to the permitted and effective sets of the credentials in one
/// `core_entry`. Returns the new entry and whether credentials were found.
fn add_cap_to_core(entry: &[u8], cap: u32) -> (Vec<u8>, bool) {
    let (word, bit) = ((cap / 32) as usize, 1u64 << (cap % 32));
    let mut found = false;
    let mut core = parse(entry);
    for f in &mut core {
        let Field::Bytes(CORE_THREAD_CORE, tc) = f else {
            continue;
        };
        let mut thread = parse(tc);
        for g in &mut thread {
            let Field::Bytes(THREAD_CORE_CREDS, creds) = g else {
                continue;
            };
            let mut fields = parse(creds);
            for set in [CREDS_CAP_PRM, CREDS_CAP_EFF] {
                // `repeated uint32` in proto2: one varint field per 32-bit word, in order
                // (CRIU writes them unpacked).
                let mut i = 0;
                for h in &mut fields {
                    if let Field::Varint(n, v) = h
                        && *n == set
                    {
                        if i == word {
                            *v |= bit;
                            found = true;
                        }
                        i += 1;
                    }
                }
                assert!(i > word, "creds_entry field {set} has no word {word}");
            }
            *creds = serialize(&fields);
        }
        *tc = serialize(&thread);
    }
    (serialize(&core), found)
}

/// Rewrites one `core-<pid>.img`: every entry gets capability `cap` in its permitted and
/// effective sets.
pub fn add_cap_to_core_image(image: &[u8], cap: u32) -> Vec<u8> {
    let header = header_for("core-1.img").expect("core images have a known header");
    let magic_len = match header {
        Header::Raw => 0,
        Header::Single(_) => 4,
        Header::Common(_) | Header::Service(_) => 8,
    };
    let mut out = image[..magic_len].to_vec();
    let mut at = magic_len;
    let mut found = false;
    while at < image.len() {
        let len = u32::from_le_bytes(image[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        let (entry, f) = add_cap_to_core(&image[at..at + len], cap);
        found |= f;
        at += len;
        out.extend_from_slice(&(entry.len() as u32).to_le_bytes());
        out.extend_from_slice(&entry);
    }
    assert!(found, "no credentials in the core image");
    out
}

/// Copies the (uncompressed tar) checkpoint archive `from` to `to`, giving every task of the
/// checkpoint capability `cap` in its permitted and effective sets. Returns how many core
/// images were edited.
pub fn archive_with_cap(from: &Path, to: &Path, cap: u32) -> usize {
    let mut input = tar::Archive::new(std::fs::File::open(from).expect("open archive"));
    let mut out = tar::Builder::new(std::fs::File::create(to).expect("create archive"));
    let mut edited = 0;
    for e in input.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let path = e.path().expect("entry path").into_owned();
        let mut header = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.starts_with("checkpoint") && name.starts_with("core-") && name.ends_with(".img") {
            data = add_cap_to_core_image(&data, cap);
            header.set_size(data.len() as u64);
            header.set_cksum();
            edited += 1;
        }
        out.append_data(&mut header, &path, data.as_slice())
            .expect("append entry");
    }
    out.finish().expect("finish archive");
    edited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_and_only_the_cap_word_changes() {
        // creds: uid 0, cap_prm [0x1, 0x2], cap_eff [0x1, 0x2], secbits 0, an unknown field.
        let creds = serialize(&[
            Field::Varint(1, 0),
            Field::Varint(CREDS_CAP_PRM, 1),
            Field::Varint(CREDS_CAP_PRM, 2),
            Field::Varint(CREDS_CAP_EFF, 1),
            Field::Varint(CREDS_CAP_EFF, 2),
            Field::Varint(13, 0),
            Field::Bytes(99, b"keep".to_vec()),
        ]);
        let tc = serialize(&[Field::Varint(1, 7), Field::Bytes(THREAD_CORE_CREDS, creds)]);
        let core = serialize(&[
            Field::Varint(1, 1),
            Field::Bytes(2, b"registers".to_vec()),
            Field::Bytes(CORE_THREAD_CORE, tc),
        ]);
        let (edited, found) = add_cap_to_core(&core, 24);
        assert!(found);
        let expect = serialize(&[
            Field::Varint(1, 0),
            Field::Varint(CREDS_CAP_PRM, 1 | 1 << 24),
            Field::Varint(CREDS_CAP_PRM, 2),
            Field::Varint(CREDS_CAP_EFF, 1 | 1 << 24),
            Field::Varint(CREDS_CAP_EFF, 2),
            Field::Varint(13, 0),
            Field::Bytes(99, b"keep".to_vec()),
        ]);
        let expect = serialize(&[
            Field::Varint(1, 1),
            Field::Bytes(2, b"registers".to_vec()),
            Field::Bytes(
                CORE_THREAD_CORE,
                serialize(&[Field::Varint(1, 7), Field::Bytes(THREAD_CORE_CREDS, expect)]),
            ),
        ]);
        assert_eq!(edited, expect);
    }
}
