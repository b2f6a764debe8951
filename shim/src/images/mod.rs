//! Image stores behind the ImageService.
//!
//! [`dir::DirImages`] is the first backend: an image is a directory tree (imported from a
//! rootfs) with a small JSON config, kept under `<lib>/shim/images`. It cannot pull from a
//! registry; it exists so the runtime has images to run until the engine's OCI image store is
//! wired in.

pub mod dir;

/// Normalises an image reference the way the kubelet and the registries do:
/// `busybox` → `docker.io/library/busybox:latest`, `repo/x` → `docker.io/repo/x:latest`,
/// `host:5000/x` → `host:5000/x:latest`; digests are kept.
pub fn normalize(reference: &str) -> String {
    let r = reference.trim();
    let (name, suffix) = match r.split_once('@') {
        Some((n, d)) => (n, format!("@{d}")),
        None => (r, String::new()),
    };
    let first = name.split('/').next().unwrap_or("");
    let has_domain =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let mut full = if has_domain {
        name.to_string()
    } else if name.contains('/') {
        format!("docker.io/{name}")
    } else {
        format!("docker.io/library/{name}")
    };
    let last = full.rsplit('/').next().unwrap_or("");
    if suffix.is_empty() && !last.contains(':') {
        full.push_str(":latest");
    }
    full + &suffix
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_normalise() {
        assert_eq!(normalize("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalize("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalize("me/app"), "docker.io/me/app:latest");
        assert_eq!(normalize("localhost/x"), "localhost/x:latest");
        assert_eq!(normalize("127.0.0.1:5000/x:v1"), "127.0.0.1:5000/x:v1");
        assert_eq!(
            normalize("quay.io/a/b@sha256:abc"),
            "quay.io/a/b@sha256:abc"
        );
    }
}
