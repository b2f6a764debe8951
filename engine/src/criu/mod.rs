//! Talking to CRIU natively over its RPC protocol (`criu swrk`).
//!
//! [`Criu`] is a located, version-checked CRIU binary. Every operation starts a fresh worker
//! ([`Session`]), sends one request and answers CRIU's hooks ([`NotifyHandler`]) until the
//! final reply — the same shape as runc's `criu_linux.go`, without shelling out to the CLI.

mod channel;
pub mod convert;
mod error;
pub mod lazy;
mod notify;
mod session;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_proto::rpc::{CriuFeatures, CriuReq, CriuReqType};

pub use channel::{Channel, ChannelError, MAX_PACKET, Packet};
pub use error::{CriuError, LogExcerpt};
pub use notify::{Ack, AckAll, Notification, NotifyHandler};
pub use session::{ABORT_GRACE, Exchange, HookTiming, Session, SpawnSpec, WORKER_OOM_SCORE_ADJ};

/// Where CRIU is looked for, in order, after `$CPENGINE_CRIU`. `/usr/local/sbin` first: that is
/// where the project's setup installs a CRIU that works on current kernels, while distribution
/// packages (e.g. Debian bookworm's 3.17 in /usr/sbin) may be too old.
const SEARCH: &[&str] = &[
    "/usr/local/sbin/criu",
    "/usr/local/bin/criu",
    "/usr/sbin/criu",
    "/usr/bin/criu",
    "/sbin/criu",
];

/// Oldest CRIU the engine drives (4.0: the option set and hooks it relies on).
pub const MIN_VERSION: CriuVersion = CriuVersion {
    major: 4,
    minor: 0,
    sublevel: 0,
    gitid: None,
    name: None,
};

/// Bound on the small control requests (VERSION, FEATURE_CHECK, CHECK).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(30);

/// CRIU's version as reported by the VERSION request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CriuVersion {
    pub major: u32,
    pub minor: u32,
    pub sublevel: u32,
    /// Set for non-release builds.
    pub gitid: Option<String>,
    pub name: Option<String>,
}

impl CriuVersion {
    /// `major*10000 + minor*100 + sublevel`, rounding a git build up to the next minor (the
    /// convention runc and go-criu use, so comparisons agree with theirs).
    pub fn number(&self) -> u32 {
        let base = self.major * 10000 + self.minor * 100 + self.sublevel;
        if self.gitid.is_some() {
            (self.major * 10000 + (self.minor + 1) * 100).max(base)
        } else {
            base
        }
    }
}

impl fmt::Display for CriuVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if self.sublevel != 0 {
            write!(f, ".{}", self.sublevel)?;
        }
        if let Some(g) = &self.gitid {
            write!(f, " ({g})")?;
        }
        Ok(())
    }
}

/// Kernel/CRIU features that FEATURE_CHECK can probe.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Features {
    /// Soft-dirty memory tracking (needed for pre-dump / incremental dumps).
    pub mem_track: bool,
    /// userfaultfd with non-cooperative events (needed for lazy-pages restore).
    pub lazy_pages: bool,
    /// pidfd_open + pidfd_getfd (pidfd store for pid reuse detection).
    pub pidfd_store: bool,
}

impl Features {
    /// Every feature cpengine knows how to ask about.
    pub const ALL: Features = Features {
        mem_track: true,
        lazy_pages: true,
        pidfd_store: true,
    };
}

/// What went wrong finding or vetting CRIU.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("criu not found (looked at $CPENGINE_CRIU, {}, and $PATH); run scripts/setup.sh to install CRIU 4.2.1", SEARCH.join(", "))]
    NotFound,
    #[error("criu not found at {} (from $CPENGINE_CRIU); run scripts/setup.sh to install CRIU 4.2.1", path.display())]
    Missing { path: PathBuf },
    #[error("{} is CRIU {found}, but cpengine needs CRIU >= {MIN_VERSION}; run scripts/setup.sh to install CRIU 4.2.1", binary.display())]
    TooOld { binary: PathBuf, found: CriuVersion },
    #[error("{} did not answer a VERSION request ({source}); is it CRIU >= {MIN_VERSION}? run scripts/setup.sh to install CRIU 4.2.1", binary.display())]
    Version { binary: PathBuf, source: CriuError },
}

/// A CRIU binary the engine has located.
#[derive(Debug, Clone)]
pub struct Criu {
    binary: PathBuf,
    timeout: Duration,
}

impl Criu {
    /// Finds CRIU: `$CPENGINE_CRIU`, then the well-known locations, then `$PATH`. Does not run it.
    pub fn locate() -> Result<Self, LocateError> {
        if let Some(p) = std::env::var_os("CPENGINE_CRIU") {
            let p = PathBuf::from(p);
            if !is_executable(&p) {
                return Err(LocateError::Missing { path: p });
            }
            return Ok(Self::at(p));
        }
        let path_dirs = std::env::var_os("PATH").unwrap_or_default();
        SEARCH
            .iter()
            .map(PathBuf::from)
            .chain(std::env::split_paths(&path_dirs).map(|d| d.join("criu")))
            .find(|p| is_executable(p))
            .map(Self::at)
            .ok_or(LocateError::NotFound)
    }

    /// Uses the binary at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            binary: path.into(),
            timeout: CONTROL_TIMEOUT,
        }
    }

    /// Locates CRIU and checks its version is one the engine supports.
    ///
    /// The version is remembered in [`VERSION_CACHE`], keyed by the binary's identity (path,
    /// device, inode, size, modification and change times), so that only the first command
    /// after CRIU is installed or replaced pays for a VERSION request. That request is a whole
    /// CRIU start-up: ~25 ms here, where CRIU cannot keep its own kernel-feature cache
    /// because /run is not a tmpfs — as much as the dump of a small process itself.
    pub async fn detect() -> Result<(Self, CriuVersion), LocateError> {
        let criu = Self::locate()?;
        let key = version_cache_key(&criu.binary);
        let cache = Path::new(VERSION_CACHE);
        let cached = key.as_deref().and_then(|k| read_version_cache(cache, k));
        let version = match cached {
            Some(v) => v,
            None => {
                let v = criu
                    .version()
                    .await
                    .map_err(|source| LocateError::Version {
                        binary: criu.binary.clone(),
                        source,
                    })?;
                if let Some(k) = &key {
                    write_version_cache(cache, k, &v);
                }
                v
            }
        };
        if version.number() < MIN_VERSION.number() {
            return Err(LocateError::TooOld {
                binary: criu.binary.clone(),
                found: version,
            });
        }
        Ok((criu, version))
    }

    /// The binary's path.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Starts a worker.
    pub fn session(&self, spec: SpawnSpec) -> Result<Session, CriuError> {
        Session::spawn(&self.binary, spec)
    }

    /// VERSION request.
    pub async fn version(&self) -> Result<CriuVersion, CriuError> {
        let mut s = self.session(SpawnSpec::default())?;
        let ex = s
            .request(request(CriuReqType::Version), &mut AckAll, self.timeout)
            .await?;
        s.finish().await;
        version_from_reply(ex.resp.version)
    }

    /// FEATURE_CHECK request for the features set in `query`.
    pub async fn features(&self, query: Features) -> Result<Features, CriuError> {
        let mut s = self.session(SpawnSpec::default())?;
        let mut req = request(CriuReqType::FeatureCheck);
        // CRIU dereferences `features` unconditionally: it must be present.
        req.features = Some(CriuFeatures {
            mem_track: Some(query.mem_track),
            lazy_pages: Some(query.lazy_pages),
            pidfd_store: Some(query.pidfd_store),
        });
        let ex = s.request(req, &mut AckAll, self.timeout).await?;
        s.finish().await;
        let f = ex.resp.features.unwrap_or_default();
        Ok(Features {
            mem_track: query.mem_track && f.mem_track.unwrap_or(false),
            lazy_pages: query.lazy_pages && f.lazy_pages.unwrap_or(false),
            pidfd_store: query.pidfd_store && f.pidfd_store.unwrap_or(false),
        })
    }

    /// CHECK request: CRIU's own check that the kernel supports what it needs.
    pub async fn check(&self) -> Result<(), CriuError> {
        let mut s = self.session(SpawnSpec::default())?;
        let mut req = request(CriuReqType::Check);
        req.opts = Some(criu_proto::rpc::CriuOpts {
            images_dir_fd: -1,
            ..Default::default()
        });
        s.request(req, &mut AckAll, self.timeout).await?;
        s.finish().await;
        Ok(())
    }
}

/// Where [`Criu::detect`] remembers CRIU's version (root-only; ignored when not writable).
pub const VERSION_CACHE: &str = "/run/cpengine/criu-version";

/// The identity of a CRIU binary: any reinstall, replacement or touch changes it.
fn version_cache_key(binary: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(binary).ok()?;
    Some(format!(
        "{} {} {} {} {}.{} {}.{}",
        binary.display(),
        md.dev(),
        md.ino(),
        md.size(),
        md.mtime(),
        md.mtime_nsec(),
        md.ctime(),
        md.ctime_nsec()
    ))
}

/// The cached version if the cache is for exactly this binary. Format: the key line, then
/// `major minor sublevel`, then the git id (possibly empty), then the name.
fn read_version_cache(path: &Path, key: &str) -> Option<CriuVersion> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).ok()?;
    // Only trust a regular file that root wrote and nobody else can write.
    if !md.is_file() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    if lines.next()? != key {
        return None;
    }
    let mut nums = lines.next()?.split(' ').map(|n| n.parse::<u32>().ok());
    let (major, minor, sublevel) = (nums.next()??, nums.next()??, nums.next()??);
    let gitid = lines.next().filter(|g| !g.is_empty()).map(str::to_owned);
    let name = lines.next().filter(|n| !n.is_empty()).map(str::to_owned);
    Some(CriuVersion {
        major,
        minor,
        sublevel,
        gitid,
        name,
    })
}

fn write_version_cache(path: &Path, key: &str, v: &CriuVersion) {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let Some(dir) = path.parent() else { return };
    if std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .is_err()
    {
        return;
    }
    let tmp = dir.join(format!(".criu-version.{}", std::process::id()));
    let text = format!(
        "{key}\n{} {} {}\n{}\n{}\n",
        v.major,
        v.minor,
        v.sublevel,
        v.gitid.as_deref().unwrap_or(""),
        v.name.as_deref().unwrap_or("")
    );
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

fn request(t: CriuReqType) -> CriuReq {
    CriuReq {
        r#type: t as i32,
        ..Default::default()
    }
}

/// Interprets the `version` field of a VERSION reply.
pub fn version_from_reply(
    v: Option<criu_proto::rpc::CriuVersion>,
) -> Result<CriuVersion, CriuError> {
    let v = v.ok_or(CriuError::BadReply {
        req_type: CriuReqType::Version,
        reason: "VERSION reply without a version".into(),
    })?;
    let num = |n: i32| u32::try_from(n).unwrap_or(0);
    Ok(CriuVersion {
        major: num(v.major_number),
        minor: num(v.minor_number),
        sublevel: num(v.sublevel.unwrap_or(0)),
        gitid: v.gitid.filter(|g| !g.is_empty()),
        name: v.name.filter(|n| !n.is_empty()),
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_cache_is_keyed_by_the_binary() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("criu");
        std::fs::write(&bin, b"x").unwrap();
        let cache = dir.path().join("cache/criu-version");
        let key = version_cache_key(&bin).unwrap();
        assert!(read_version_cache(&cache, &key).is_none());
        let v = CriuVersion {
            major: 4,
            minor: 2,
            sublevel: 1,
            gitid: None,
            name: Some("x".into()),
        };
        write_version_cache(&cache, &key, &v);
        if nix::unistd::geteuid().is_root() {
            assert_eq!(read_version_cache(&cache, &key), Some(v));
        }
        // Another binary (or the same one replaced) does not match.
        std::fs::write(&bin, b"xy").unwrap();
        let key2 = version_cache_key(&bin).unwrap();
        assert_ne!(key, key2);
        assert!(read_version_cache(&cache, &key2).is_none());
    }
}
