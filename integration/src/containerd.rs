//! A private containerd for tests — 2.1.9 (Debian forky's package) or Debian bookworm's own
//! 1.6.20, which has no `CheckpointContainer` — unpacked by `scripts/containerd.sh` (never installed),
//! run with its own root, state, socket and runc root, the runc v2 shim with cgroupfs, CDI and
//! NRI off, `restrict_oom_score_adj` (this host refuses negative OOM adjustments), and the
//! locally built sandbox and busybox images imported. Everything it started is torn down on
//! drop: pods through its own CRI, then containerd, stray shims and mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cri::{criu_path, unmount_under};
use crate::{require_program, run, scratch, wait_until};

/// The sandbox image the private containerd pins.
pub const PAUSE_IMAGE: &str = "localhost/cpengine-pause:1";
/// The workload image imported into the private containerd.
pub const BUSYBOX_IMAGE: &str = "localhost/busybox:latest";

/// Which containerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// 2.1.9 (Debian forky), config version 3.
    V2_1_9,
    /// 1.6.20 (Debian bookworm), config version 2; answers `Unimplemented` to
    /// `CheckpointContainer`.
    V1_6_20,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V2_1_9 => "2.1.9",
            Version::V1_6_20 => "1.6.20",
        }
    }
}

/// Runs `scripts/containerd.sh` and returns its cache directory (containerd 2.1.9, images).
pub fn prepare() -> PathBuf {
    prepare_version(Version::V2_1_9)
}

/// Runs `scripts/containerd.sh VERSION` and returns its cache directory.
pub fn prepare_version(v: Version) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/containerd.sh");
    let (st, out, err) = run(Command::new("bash").arg(&script).arg(v.as_str()));
    assert!(
        st.success(),
        "scripts/containerd.sh {} failed:\n{err}",
        v.as_str()
    );
    PathBuf::from(out.trim())
}

/// The private configuration of each version (same settings, two config formats).
fn config(v: Version, dir: &Path, socket: &Path, runc: &Path) -> String {
    let (root, state, sock, runc) = (
        dir.join("root").display().to_string(),
        dir.join("state").display().to_string(),
        socket.display().to_string(),
        runc.display().to_string(),
    );
    match v {
        Version::V2_1_9 => format!(
            r#"version = 3
root = '{root}'
state = '{state}'
disabled_plugins = ['io.containerd.nri.v1.nri']

[grpc]
  address = '{sock}'

[ttrpc]
  address = '{sock}.ttrpc'

[plugins]
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = '{PAUSE_IMAGE}'

  [plugins.'io.containerd.cri.v1.runtime']
    restrict_oom_score_adj = true
    enable_cdi = false
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = 'runc'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = '{runc}'

  [plugins.'io.containerd.grpc.v1.cri']
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"#
        ),
        Version::V1_6_20 => format!(
            r#"version = 2
root = '{root}'
state = '{state}'

[grpc]
  address = '{sock}'

[ttrpc]
  address = '{sock}.ttrpc'

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = '{PAUSE_IMAGE}'
    restrict_oom_score_adj = true
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = 'overlayfs'
      default_runtime_name = 'runc'
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = 'io.containerd.runc.v2'
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = '{runc}'
"#
        ),
    }
}

/// A running private containerd.
#[derive(Debug)]
pub struct Containerd {
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub socket: PathBuf,
    /// Where its runc keeps the CRI containers' state (`<Root>/k8s.io`).
    pub runc_root: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd 2.1.9.
    pub fn start() -> Self {
        Self::start_version(Version::V2_1_9)
    }

    /// Starts containerd `v`.
    pub fn start_version(v: Version) -> Self {
        crate::init();
        require_program("runc");
        let cache = prepare_version(v);
        let dir = scratch("cpe-ctrd-").keep();
        let socket = dir.join("containerd.sock");
        let runc = dir.join("runc");
        let config = config(v, &dir, &socket, &runc);
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new(cache.join("usr/bin/containerd"))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .env(
                "PATH",
                format!("{}:{}", cache.join("usr/bin").display(), criu_path()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn containerd");
        let c = Self {
            dir,
            cache,
            socket: socket.clone(),
            runc_root: runc.join("k8s.io"),
            child: Some(child),
        };
        let up = wait_until(Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        assert!(up, "containerd did not come up; log:\n{}", c.log_text());
        for tar in ["pause.oci.tar", "busybox.oci.tar"] {
            let (st, _, err) = c.ctr(
                &[
                    "-n",
                    "k8s.io",
                    "images",
                    "import",
                    "--platform",
                    "linux/amd64",
                ],
                Some(&c.cache.join(tar)),
            );
            assert!(st.success(), "ctr import {tar}: {err}");
        }
        c
    }

    /// Runs `ctr` against this containerd.
    pub fn ctr(
        &self,
        args: &[&str],
        file: Option<&Path>,
    ) -> (std::process::ExitStatus, String, String) {
        let mut cmd = Command::new(self.cache.join("usr/bin/ctr"));
        cmd.arg("--address").arg(&self.socket).args(args);
        if let Some(f) = file {
            cmd.arg(f);
        }
        run(&mut cmd)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The busybox tree the images were made from (for stores that import a directory).
    pub fn busybox_rootfs(&self) -> PathBuf {
        self.cache.join("busybox-rootfs")
    }

    /// Stops and removes every pod through containerd's own CRI.
    fn remove_pods(&self) {
        let socket = self.socket.clone();
        // A thread with its own runtime: this runs from Drop, possibly inside a tokio test.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use k8s_cri::v1 as pb;
                let (mut c, _) = crate::cri::clients(&socket);
                let Ok(pods) = c
                    .list_pod_sandbox(pb::ListPodSandboxRequest::default())
                    .await
                else {
                    return;
                };
                for p in pods.into_inner().items {
                    let _ = c
                        .stop_pod_sandbox(pb::StopPodSandboxRequest {
                            pod_sandbox_id: p.id.clone(),
                        })
                        .await;
                    let _ = c
                        .remove_pod_sandbox(pb::RemovePodSandboxRequest {
                            pod_sandbox_id: p.id,
                        })
                        .await;
                }
            });
        })
        .join();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_pods();
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let pid = c.id() as i32;
            if !wait_until(Duration::from_secs(10), || {
                matches!(c.try_wait(), Ok(Some(_)))
            }) {
                crate::kill_and_reap(&[pid]);
            }
        }
        // Shims of this containerd that outlived it (their command line names our socket).
        let sock = self.socket.display().to_string();
        let shims: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|b| String::from_utf8_lossy(&b).contains(&sock))
                    .unwrap_or(false)
            })
            .collect();
        if !shims.is_empty() {
            crate::kill_and_reap(&shims);
        }
        unmount_under(&self.dir);
        if std::thread::panicking() {
            eprintln!("--- containerd log (tail) ---");
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            for l in &lines[lines.len().saturating_sub(60)..] {
                eprintln!("{l}");
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
