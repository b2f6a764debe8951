//! Image references: `[domain/]path[:tag][@digest]`, normalised the way container tools agree on.
//!
//! Normalisation rules:
//! - The first path component is a registry domain when it contains a `.` or a `:`, is exactly
//!   `localhost`, or has upper-case letters (repository paths are lower case). Otherwise the
//!   domain is `docker.io`.
//! - `index.docker.io` is spelled `docker.io`, and a one-component path on `docker.io` gets the
//!   `library/` prefix (`busybox` = `docker.io/library/busybox`).
//! - Without a tag and without a digest the tag is `latest`; with a digest and no tag there is
//!   no tag.
//! - A bare 64-character hex string is refused: it is an image id, not a name.

use std::fmt;

/// The registry assumed when a reference names none.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Where the API of [`DEFAULT_DOMAIN`] is served.
pub const DEFAULT_REGISTRY_HOST: &str = "registry-1.docker.io";
/// The tag assumed when a reference has neither tag nor digest.
pub const DEFAULT_TAG: &str = "latest";
const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// Why a reference string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses and normalises `s`.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let err = |reason| ReferenceError {
            reference: s.to_owned(),
            reason,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err("a 64-character hex string is an image id, not a name"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                if !is_valid_digest(d) {
                    return Err(err(
                        "digest must be sha256: followed by 64 lower-case hex digits",
                    ));
                }
                (n, Some(d.to_owned()))
            }
            None => (s, None),
        };
        let last_slash = name_tag.rfind('/');
        let (name, tag) = match name_tag.rfind(':') {
            Some(c) if last_slash.is_none_or(|sl| c > sl) => {
                (&name_tag[..c], Some(name_tag[c + 1..].to_owned()))
            }
            _ => (name_tag, None),
        };
        if name.is_empty() {
            return Err(err("empty name"));
        }
        if name.len() > NAME_MAX {
            return Err(err("name longer than 255 characters"));
        }
        if let Some(t) = &tag
            && !is_valid_tag(t)
        {
            return Err(err(
                "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        let (mut domain, mut path) = match name.split_once('/') {
            Some((first, rest)) if looks_like_domain(first) => (first.to_owned(), rest.to_owned()),
            _ => (DEFAULT_DOMAIN.to_owned(), name.to_owned()),
        };
        if domain == LEGACY_DEFAULT_DOMAIN {
            domain = DEFAULT_DOMAIN.to_owned();
        }
        if domain == DEFAULT_DOMAIN && !path.contains('/') {
            path = format!("library/{path}");
        }
        if !is_valid_domain(&domain) {
            return Err(err("invalid registry domain"));
        }
        if !path.split('/').all(is_valid_path_component) {
            return Err(err(
                "repository path components must be lower-case letters and digits separated by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (t, _) => t,
        };
        Ok(Self {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry domain, e.g. `docker.io` or `localhost:5000`.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The repository path inside the registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, `sha256:<hex>`.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `domain/path`, without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The host (and port) to speak the distribution API to.
    pub fn registry_host(&self) -> &str {
        if self.domain == DEFAULT_DOMAIN {
            DEFAULT_REGISTRY_HOST
        } else {
            &self.domain
        }
    }

    /// What a registry's manifest endpoint is asked for: the digest if there is one, else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    /// The same repository with `digest` and no tag.
    pub fn with_digest(&self, digest: &str) -> Self {
        Self {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_owned()),
        }
    }

    /// The short form people type: `docker.io/library/` dropped.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        full.strip_prefix("docker.io/library/")
            .or_else(|| full.strip_prefix("docker.io/"))
            .map(str::to_owned)
            .unwrap_or(full)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn looks_like_domain(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.bytes().any(|b| b.is_ascii_uppercase())
}

/// `host[:port]` with host made of DNS labels, or a bracketed IPv6 address.
fn is_valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return false;
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("ipv6", Some(port)),
                None => return false,
            },
        }
    } else {
        match d.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err())
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn is_valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn is_valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || x == b'_' || x == b'.' || x == b'-')
}

/// `sha256:` + 64 lower-case hex digits (the only algorithm cpengine stores).
pub(crate) fn is_valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalisation_table() {
        let d = format!("busybox@{D}");
        let d2 = format!("localhost:5000/a/b:t@{D}");
        let cases: &[(&str, &str)] = &[
            ("busybox", "docker.io/library/busybox:latest"),
            ("busybox:1.36", "docker.io/library/busybox:1.36"),
            ("library/busybox", "docker.io/library/busybox:latest"),
            ("docker.io/busybox", "docker.io/library/busybox:latest"),
            (
                "index.docker.io/busybox",
                "docker.io/library/busybox:latest",
            ),
            ("user/app:v1", "docker.io/user/app:v1"),
            ("localhost:5000/a/b:t", "localhost:5000/a/b:t"),
            ("localhost/a", "localhost/a:latest"),
            ("localhost", "docker.io/library/localhost:latest"),
            ("localhost:5000", "docker.io/library/localhost:5000"),
            ("quay.io/x/y", "quay.io/x/y:latest"),
            ("127.0.0.1:5000/ckpt", "127.0.0.1:5000/ckpt:latest"),
            ("Registry/foo", "Registry/foo:latest"),
            ("a-b/c__d.e/f---g", "docker.io/a-b/c__d.e/f---g:latest"),
            ("[::1]:5000/x:y", "[::1]:5000/x:y"),
            (&d, &format!("docker.io/library/busybox@{D}")),
            (&d2, &format!("localhost:5000/a/b:t@{D}")),
        ];
        for (input, want) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *want, "input {input}");
            // Normalising twice changes nothing.
            assert_eq!(Reference::parse(want).unwrap(), r, "re-parse of {want}");
        }
    }

    #[test]
    fn parts_and_host() {
        let r = Reference::parse("localhost:5000/a/b:t").unwrap();
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            ("localhost:5000", "a/b", Some("t"))
        );
        assert_eq!(r.registry_host(), "localhost:5000");
        assert_eq!(r.manifest_reference(), "t");
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.registry_host(), DEFAULT_REGISTRY_HOST);
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.repository(), "docker.io/library/busybox");
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.manifest_reference(), D);
    }

    #[test]
    fn invalid_references() {
        for bad in [
            "",
            "UPPER",
            "Busybox/",
            "foo//bar",
            "foo/",
            "-foo",
            "foo:",
            "foo:-bad",
            "foo:.bad",
            "foo@sha256:abc",
            "foo@md5:0123",
            "a/b:t@sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "foo_-bar",
            "foo...bar",
            "host:99999/x",
            "ho_st:5000/x",
            "foo bar",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        let long = format!("a/{}", "b".repeat(300));
        assert!(Reference::parse(&long).is_err());
        let long_tag = format!("a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
    }
}
