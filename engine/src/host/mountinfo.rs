//! `/proc/<pid>/mountinfo` parsing: a container's mount table as its init process sees it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem.
    pub dev: String,
    /// Path within the filesystem that is mounted (bind mounts show a subpath).
    pub root: PathBuf,
    /// Where it is mounted, as seen by the process.
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

impl MountInfo {
    /// A super option's value (`lowerdir`, `upperdir`, …).
    pub fn super_option(&self, key: &str) -> Option<&str> {
        split_options(&self.super_options).find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Splits a mount option string at commas that are not escaped with a backslash.
fn split_options(s: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b',' => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts.into_iter()
}

/// Undoes the octal escapes (`\040` for space, …) the kernel uses in mountinfo fields.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses mountinfo text.
pub fn parse(text: &str) -> Vec<MountInfo> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountInfo> {
    let (pre, post) = line.split_once(" - ")?;
    let f: Vec<&str> = pre.split(' ').collect();
    if f.len() < 6 {
        return None;
    }
    let mut p = post.splitn(3, ' ');
    Some(MountInfo {
        id: f[0].parse().ok()?,
        parent: f[1].parse().ok()?,
        dev: f[2].to_string(),
        root: PathBuf::from(unescape(f[3])),
        mount_point: PathBuf::from(unescape(f[4])),
        options: f[5].to_string(),
        fs_type: p.next()?.to_string(),
        source: unescape(p.next().unwrap_or("")),
        super_options: p.next().unwrap_or("").to_string(),
    })
}

/// The mount table of process `pid`.
pub fn of_pid(pid: i32) -> std::io::Result<Vec<MountInfo>> {
    Ok(parse(&std::fs::read_to_string(format!(
        "/proc/{pid}/mountinfo"
    ))?))
}

/// The top-most mount at exactly `mount_point` (the last one listed wins, as later mounts
/// cover earlier ones).
pub fn find_at<'a>(mounts: &'a [MountInfo], mount_point: &Path) -> Option<&'a MountInfo> {
    mounts.iter().rev().find(|m| m.mount_point == mount_point)
}

/// Mount points by their id (to walk parents).
pub fn by_id(mounts: &[MountInfo]) -> BTreeMap<u32, &MountInfo> {
    mounts.iter().map(|m| (m.id, m)).collect()
}

/// The layers of an overlay mount: (lower dirs top first, upper, work).
pub fn overlay_layers(m: &MountInfo) -> Option<(Vec<PathBuf>, PathBuf, PathBuf)> {
    if m.fs_type != "overlay" {
        return None;
    }
    let lowers = m
        .super_option("lowerdir")?
        .split(':')
        .filter(|l| !l.is_empty())
        .map(|l| PathBuf::from(unescape(&l.replace("\\:", ":"))))
        .collect();
    let upper = PathBuf::from(unescape(m.super_option("upperdir")?));
    let work = PathBuf::from(unescape(m.super_option("workdir")?));
    Some((lowers, upper, work))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
69 46 0:39 / / rw,relatime - overlay overlay rw,lowerdir=/l/a:/l/b,upperdir=/up,workdir=/wk,uuid=on
77 76 0:29 /ctr1 /sys/fs/cgroup/cpu ro,nosuid - cgroup cgroup rw,cpu
52 70 0:43 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
90 69 8:1 /var/data /my\\040data rw - ext4 /dev/vda rw
";

    #[test]
    fn parses_fields_and_escapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].root, PathBuf::from("/ctr1"));
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(m[1].fs_type, "cgroup");
        assert_eq!(m[3].mount_point, PathBuf::from("/my data"));
        assert_eq!(m[2].super_option("size"), Some("65536k"));
    }

    #[test]
    fn overlay_layers_are_split() {
        let m = parse(SAMPLE);
        let (lowers, upper, work) = overlay_layers(&m[0]).unwrap();
        assert_eq!(lowers, vec![PathBuf::from("/l/a"), PathBuf::from("/l/b")]);
        assert_eq!(upper, PathBuf::from("/up"));
        assert_eq!(work, PathBuf::from("/wk"));
        assert!(overlay_layers(&m[1]).is_none());
    }
}
