//! The shim under test: `cpengine-shim` started as a subprocess on a temporary socket with a
//! temporary state root, CRI clients for it, request builders, and a guard that tears down
//! everything the shim started (containers, relays, pod holders, mounts) even when a test
//! fails half-way.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_cri::v1 as pb;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

use crate::{require_program, wait_until, workspace_bin};

pub use cpengine_shim;
pub use k8s_cri;

/// The `cpengine-shim` binary built from this workspace.
pub fn shim_bin() -> PathBuf {
    workspace_bin("cpengine-shim")
}

/// A PATH with CRIU 4.2.1 first (runc and containerd look `criu` up in PATH).
pub fn criu_path() -> String {
    format!(
        "/usr/local/sbin:{}",
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    )
}

/// A running `cpengine-shim` and its state directory.
#[derive(Debug)]
pub struct Shim {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
}

impl Shim {
    /// Starts a standalone shim in a new scratch directory (state root `<dir>/state`).
    pub fn start() -> Self {
        let dir = crate::scratch("cpe-shim-").keep();
        Self::start_in(&dir, &[])
    }

    /// Starts a shim with state under `dir` and extra arguments (e.g. `--upstream …`).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        crate::init();
        require_program("runc");
        let mut s = Self {
            dir: dir.to_path_buf(),
            socket: dir.join("cri.sock"),
            log: dir.join("shim.log"),
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// The state root the shim uses.
    pub fn state(&self) -> cpengine::container::state::StateRoot {
        cpengine::container::state::StateRoot::at(self.dir.join("state"))
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("shim log");
        let child = Command::new(shim_bin())
            .arg("--listen")
            .arg(&self.socket)
            .arg("--state-root")
            .arg(self.dir.join("state"))
            .args(&self.extra_args)
            .env("PATH", criu_path())
            .env("RUST_LOG", "info,cpengine_shim=debug,cpengine=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn cpengine-shim");
        self.child = Some(child);
        let sock = self.socket.clone();
        let up = wait_until(Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
        });
        assert!(
            up,
            "cpengine-shim did not listen on {}; log:\n{}",
            self.socket.display(),
            self.log_text()
        );
    }

    /// The shim's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the shim with SIGKILL (its containers keep running) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kills the shim and starts it again on the same state and socket.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Clients for the runtime and image services.
    pub fn clients(&self) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
        clients(&self.socket)
    }
}

/// CRI clients over a unix socket.
pub fn clients(socket: &Path) -> (RuntimeServiceClient<Channel>, ImageServiceClient<Channel>) {
    let ch = cpengine_shim::proxy::channel(socket.to_path_buf()).expect("channel");
    (
        RuntimeServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20),
        ImageServiceClient::new(ch),
    )
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.kill();
        teardown_state(&self.dir.join("state"));
        if std::thread::panicking() {
            eprintln!("--- cpengine-shim log ---\n{}", self.log_text());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Stops everything a shim state root describes: runc containers, restored containers, pod
/// holders, relays (they end with their pipes), and every mount under the directory.
pub fn teardown_state(state: &Path) {
    let runc_root = state.join("run/runc");
    for e in std::fs::read_dir(&runc_root)
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", &id])
            .stderr(Stdio::null())
            .status();
    }
    for e in std::fs::read_dir(state.join("run/containers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let id = e.file_name().to_string_lossy().into_owned();
        let _ = Command::new(crate::cpengine_bin())
            .arg("--state-root")
            .arg(state)
            .args(["delete", "--force", &id])
            .stderr(Stdio::null())
            .status();
    }
    for e in std::fs::read_dir(state.join("run/shim/pods"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Some(rec) = std::fs::read(e.path().join("pod.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        else {
            continue;
        };
        if let (Some(pid), Some(start)) = (
            rec["holder"]["pid"].as_i64(),
            rec["holder"]["start"].as_u64(),
        ) && cpengine::proc::start_time(pid as i32) == Some(start)
        {
            crate::kill_and_reap(&[pid as i32]);
        }
    }
    unmount_under(state);
}

/// Unmounts (lazily, deepest first) every mount point under `dir`.
pub fn unmount_under(dir: &Path) {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Imports a busybox root file system as image `name` into a standalone shim's image store.
pub fn import_busybox(state: &cpengine::container::state::StateRoot, name: &str) -> pb::Image {
    let tmp = crate::scratch("cpe-bb-");
    crate::runc::make_busybox_base(tmp.path());
    let store = cpengine_shim::images::dir::DirImages::new(state);
    let cfg = cpengine_shim::domain::ImageConfig {
        cmd: vec!["sh".into()],
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        ..Default::default()
    };
    let info = store
        .import_dir(name, tmp.path(), cfg, Default::default())
        .expect("import busybox");
    pb::Image {
        id: info.id,
        repo_tags: info.repo_tags,
        ..Default::default()
    }
}

/// A pod config: `network` is `Node` (host network) or `Pod` (a private namespace).
pub fn pod_config(name: &str, log_dir: &Path, network: pb::NamespaceMode) -> pb::PodSandboxConfig {
    pb::PodSandboxConfig {
        metadata: Some(pb::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: if network == pb::NamespaceMode::Node {
            String::new()
        } else {
            name.into()
        },
        log_directory: log_dir.display().to_string(),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(pb::LinuxPodSandboxConfig {
            security_context: Some(pb::LinuxSandboxSecurityContext {
                namespace_options: Some(pb::NamespaceOption {
                    network: network as i32,
                    pid: pb::NamespaceMode::Container as i32,
                    ipc: pb::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container config running `sh -c script` from `image`, logging to `<name>/0.log`.
pub fn container_config(name: &str, image: &str, script: &str) -> pb::ContainerConfig {
    pb::ContainerConfig {
        metadata: Some(pb::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(pb::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}/0.log"),
        labels: HashMap::from([("io.kubernetes.container.name".to_string(), name.to_string())]),
        linux: Some(pb::LinuxContainerConfig {
            security_context: Some(pb::LinuxContainerSecurityContext {
                namespace_options: Some(pb::NamespaceOption {
                    pid: pb::NamespaceMode::Container as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The kubelet's checkpoint file name: `checkpoint-<pod>_<ns>-<ctr>-<RFC3339 local time>.tar`.
pub fn kubelet_location(dir: &Path, pod: &str, ns: &str, ctr: &str) -> PathBuf {
    let ts = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    dir.join(format!("checkpoint-{pod}_{ns}-{ctr}-{ts}.tar"))
}

/// The status of a container.
pub async fn status_of(rt: &mut RuntimeServiceClient<Channel>, id: &str) -> pb::ContainerStatus {
    rt.container_status(pb::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("a status")
}

/// Runs a command in a container with ExecSync.
pub async fn exec(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
) -> Result<pb::ExecSyncResponse, tonic::Status> {
    rt.exec_sync(pb::ExecSyncRequest {
        container_id: id.into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        timeout: 10,
    })
    .await
    .map(|r| r.into_inner())
}

/// Reads a counter file inside a container through ExecSync.
pub async fn counter_via_exec(rt: &mut RuntimeServiceClient<Channel>, id: &str, file: &str) -> u64 {
    let r = exec(rt, id, &["cat", file]).await.expect("exec cat");
    String::from_utf8_lossy(&r.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = std::time::Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
