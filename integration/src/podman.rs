//! A private Podman for interop tests: its own config (cgroupfs, file events, runc, modest
//! ulimits, no network, CRIU 4.x first in PATH, as this machine needs) and its own storage, so
//! nothing on the host is touched.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{require_program, require_root, run, scratch};

/// Private Podman configuration (see the peers reference): cgroupfs, file events, runc,
/// modest ulimits, no network, CRIU 4.x first in PATH, own storage.
#[derive(Debug)]
pub struct Podman {
    dir: tempfile::TempDir,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Self {
        require_root();
        require_program("podman");
        require_program("runc");
        require_program("/usr/local/sbin/criu");
        let dir = scratch("cpe-podman-");
        let path = format!(
            "/usr/local/sbin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                r#"[containers]
netns = "none"
log_driver = "k8s-file"
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
conmon_env_vars = ["PATH={path}"]
"#
            ),
        )
        .unwrap();
        Self { dir }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "PATH",
                format!(
                    "/usr/local/sbin:{}",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .arg("--storage-driver")
            .arg("overlay");
        c
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let (st, out, err) = run(self.cmd().args(args));
        assert!(st.success(), "podman {args:?} failed: {err}{out}");
        out
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = run(self.cmd().args(["rm", "-af", "-t", "0"]));
        let _ = run(self.cmd().args(["system", "reset", "-f"]));
    }
}

/// A busybox rootfs tree and its tarball.
pub fn busybox_rootfs(dir: &Path) -> (PathBuf, PathBuf) {
    let bb = require_program("/bin/busybox");
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::copy(&bb, root.join("bin/busybox")).unwrap();
    for l in ["sh", "sleep", "echo", "rm", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(l)).unwrap();
    }
    std::fs::write(root.join("etc/deleteme"), b"x").unwrap();
    std::fs::write(root.join("etc/motd"), b"base\n").unwrap();
    let tarball = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    (root, tarball)
}
