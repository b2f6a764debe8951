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
    env: Vec<(String, String)>,
    /// A command the shim runs under (e.g. `setpriv` dropping a capability); empty: none.
    wrapper: Vec<String>,
}

impl Shim {
    /// Starts a standalone shim in a new scratch directory (state root `<dir>/state`).
    pub fn start() -> Self {
        let dir = crate::scratch("cpe-shim-").keep();
        Self::start_in(&dir, &[])
    }

    /// Starts a shim with state under `dir` and extra arguments (e.g. `--upstream …`).
    pub fn start_in(dir: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(dir, extra, &[])
    }

    /// [`Shim::start_in`] with environment variables set after the default `PATH` (which they
    /// may replace).
    pub fn start_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_wrapped(dir, &[], extra, env)
    }

    /// [`Shim::start_with_env`] with the shim run as the last argument of `wrapper` (a program
    /// that changes how it runs and then execs it, such as `setpriv … --`).
    pub fn start_wrapped(
        dir: &Path,
        wrapper: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        crate::init();
        require_program("runc");
        let mut s = Self {
            dir: dir.to_path_buf(),
            socket: dir.join("cri.sock"),
            log: dir.join("shim.log"),
            child: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Starts a shim in a new scratch directory proxying to `ctrd` (`--upstream` its socket,
    /// `--upstream-runc-root` its runc root).
    pub fn proxy(ctrd: &crate::containerd::Containerd) -> Self {
        let dir = crate::scratch("cpe-shimproxy-").keep();
        Self::start_in(
            &dir,
            &[
                "--upstream",
                &format!("unix://{}", ctrd.socket.display()),
                "--upstream-runc-root",
                &ctrd.runc_root.display().to_string(),
            ],
        )
    }

    /// Starts a standalone shim whose image store has `ctrd`'s busybox image under the same
    /// name ([`crate::containerd::BUSYBOX_IMAGE`]), as a node restoring containerd's archives
    /// would have it.
    pub fn with_image_of(ctrd: &crate::containerd::Containerd) -> Self {
        let shim = Self::start();
        import_image(
            &shim.state(),
            &ctrd.cache.join("busybox.oci.tar"),
            crate::containerd::BUSYBOX_IMAGE,
        );
        shim
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
        let mut cmd = match self.wrapper.split_first() {
            None => Command::new(shim_bin()),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(shim_bin());
                c
            }
        };
        let child = cmd
            .arg("--listen")
            .arg(&self.socket)
            .arg("--state-root")
            .arg(self.dir.join("state"))
            // Tests write their archives in scratch directories under /var/tmp.
            .args(["--checkpoint-dir", "/var/tmp"])
            .args(&self.extra_args)
            .env("PATH", criu_path())
            .env("RUST_LOG", "info,cpengine_shim=debug,cpengine=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
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

/// Writes an OCI image layout at `dir` with one uncompressed layer per tree in `layers`
/// (bottom first), a config running `cmd`, named `ref_name` in its index.
pub fn oci_layout(dir: &Path, ref_name: &str, layers: &[&Path], cmd: &[&str]) {
    oci_layout_with(dir, ref_name, layers, cmd, None)
}

/// [`oci_layout`] with the image config's `StopSignal` set.
pub fn oci_layout_with(
    dir: &Path,
    ref_name: &str,
    layers: &[&Path],
    cmd: &[&str],
    stop_signal: Option<&str>,
) {
    use cpengine::oci::digest::sha256_of;
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    let blob = |bytes: &[u8]| {
        let d = sha256_of(bytes);
        std::fs::write(dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        (d, bytes.len())
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let tar = tar_tree(l);
        let (d, n) = blob(&tar);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": n}));
    }
    let mut image_config = serde_json::json!({
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": cmd,
    });
    if let Some(sig) = stop_signal {
        image_config["StopSignal"] = serde_json::Value::String(sig.into());
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (cd, cn) = blob(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn},
        "layers": descs,
    }))
    .unwrap();
    let (md, mn) = blob(&manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
            "annotations": {"org.opencontainers.image.ref.name": ref_name}}]}))
        .unwrap(),
    )
    .unwrap();
}

/// A tar of a directory tree, entries relative (`bin/busybox`), symlinks kept as symlinks.
fn tar_tree(root: &Path) -> Vec<u8> {
    fn walk(b: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))
            .unwrap()
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let r = rel.join(e.file_name());
            b.append_path_with_name(e.path(), &r).unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(b, root, &r);
            }
        }
    }
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    walk(&mut b, root, Path::new(""));
    b.into_inner().unwrap()
}

/// Imports a two-layer busybox image as `name` into the image store under `state` with
/// `cpengine image import`: the busybox base, then a layer adding `/etc/app.conf` and
/// replacing `/etc/motd`.
pub fn import_busybox(state: &cpengine::container::state::StateRoot, name: &str) {
    import_busybox_with(state, name, None)
}

/// [`import_busybox`] with the image config's `StopSignal` set.
pub fn import_busybox_with(
    state: &cpengine::container::state::StateRoot,
    name: &str,
    stop_signal: Option<&str>,
) {
    let tmp = crate::scratch("cpe-bb-");
    let (base, app, layout) = (
        tmp.path().join("base"),
        tmp.path().join("app"),
        tmp.path().join("layout"),
    );
    crate::runc::make_busybox_base(&base);
    std::fs::create_dir_all(app.join("etc")).unwrap();
    std::fs::write(app.join("etc/app.conf"), "from the second layer\n").unwrap();
    std::fs::write(app.join("etc/motd"), "motd of the second layer\n").unwrap();
    oci_layout_with(&layout, name, &[&base, &app], &["sh"], stop_signal);
    import_image(state, &layout, name);
}

/// `cpengine image import <image> --tag <tag>` into the image store under `state`; `image` is
/// an OCI layout directory or archive.
pub fn import_image(state: &cpengine::container::state::StateRoot, image: &Path, tag: &str) {
    let root = state.lib.parent().expect("state root").to_path_buf();
    let (st, _, err) = crate::run(
        Command::new(crate::cpengine_bin())
            .arg("--state-root")
            .arg(&root)
            .args(["image", "import"])
            .arg(image)
            .args(["--tag", tag]),
    );
    assert!(st.success(), "cpengine image import: {err}");
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
                // The kubelet sends the default masked and read-only /proc and /sys paths with
                // every unprivileged container (containerd applies exactly what the request
                // names); a container without them could write the host's /proc/sys.
                masked_paths: cpengine::policy::verify::MASKED_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                readonly_paths: cpengine::policy::verify::READONLY_PATHS
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The config of a container restored from `image` (a checkpoint archive's path or a checkpoint
/// image's name), as CRI-O takes it: [`container_config`] with no command of its own.
pub fn restore_config(name: &str, image: &str) -> pb::ContainerConfig {
    let mut cfg = container_config(name, image, "unused");
    cfg.command.clear();
    cfg
}

/// The kubelet's checkpoint file name: `checkpoint-<pod>_<ns>-<ctr>-<RFC3339 local time>.tar`.
pub fn kubelet_location(dir: &Path, pod: &str, ns: &str, ctr: &str) -> PathBuf {
    let ts = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    dir.join(format!("checkpoint-{pod}_{ns}-{ctr}-{ts}.tar"))
}

/// RunPodSandbox; returns the pod's id.
pub async fn run_pod(rt: &mut RuntimeServiceClient<Channel>, cfg: pb::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(pb::RunPodSandboxRequest {
        config: Some(cfg),
        runtime_handler: String::new(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

/// CreateContainer then StartContainer in pod `pod_id`; returns the container's id.
pub async fn create_start(
    rt: &mut RuntimeServiceClient<Channel>,
    pod_id: &str,
    pod_cfg: &pb::PodSandboxConfig,
    cfg: pb::ContainerConfig,
) -> String {
    let id = rt
        .create_container(pb::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(pb::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

/// CheckpointContainer of `id` to `location`, with the kubelet's `timeout` in seconds.
pub async fn checkpoint_to(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
    location: &Path,
    timeout: i64,
) -> Result<(), tonic::Status> {
    rt.checkpoint_container(pb::CheckpointContainerRequest {
        container_id: id.into(),
        location: location.display().to_string(),
        timeout,
    })
    .await
    .map(drop)
}

/// StopContainer with `timeout` seconds before the KILL; panics if it fails.
pub async fn stop(rt: &mut RuntimeServiceClient<Channel>, id: &str, timeout: i64) {
    rt.stop_container(pb::StopContainerRequest {
        container_id: id.into(),
        timeout,
    })
    .await
    .expect("StopContainer");
}

/// RemoveContainer; panics if it fails.
pub async fn remove_container(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.remove_container(pb::RemoveContainerRequest {
        container_id: id.into(),
    })
    .await
    .expect("RemoveContainer");
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

/// The state of a pod sandbox (PodSandboxStatus).
pub async fn pod_state(rt: &mut RuntimeServiceClient<Channel>, pod_id: &str) -> i32 {
    rt.pod_sandbox_status(pb::PodSandboxStatusRequest {
        pod_sandbox_id: pod_id.into(),
        verbose: false,
    })
    .await
    .expect("PodSandboxStatus")
    .into_inner()
    .status
    .expect("a pod status")
    .state
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

/// Whether the counter the container `id` writes to `/tmp/counter` reaches `at_least` within
/// `timeout` (read through ExecSync every 50 ms).
pub async fn counter_reaches(
    rt: &RuntimeServiceClient<Channel>,
    id: &str,
    at_least: u64,
    timeout: Duration,
) -> bool {
    eventually(timeout, || {
        let (mut r, c) = (rt.clone(), id.to_string());
        async move { counter_via_exec(&mut r, &c, "/tmp/counter").await >= at_least }
    })
    .await
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

/// The image the standalone fixtures import (the two-layer busybox of [`import_busybox`]).
pub const BUSYBOX: &str = "docker.io/library/busybox:latest";

/// A CRI container's counter: increments `i` every 0.1 s into /tmp/counter, printing nothing.
pub const QUIET_COUNTER: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done";

/// A pod sandbox run over CRI, with the client and the config it was run with (containers in
/// it are created with that config as their sandbox config). What the pod holds is torn down
/// with the runtime that runs it ([`Shim`]'s or containerd's guard) when a test ends early.
#[derive(Debug)]
pub struct Pod {
    pub rt: RuntimeServiceClient<Channel>,
    pub id: String,
    pub config: pb::PodSandboxConfig,
}

impl Pod {
    /// RunPodSandbox with `config`.
    pub async fn run(rt: &RuntimeServiceClient<Channel>, config: pb::PodSandboxConfig) -> Self {
        let mut rt = rt.clone();
        let id = run_pod(&mut rt, config.clone()).await;
        Self { rt, id, config }
    }

    /// CreateContainer then StartContainer of `cfg` in this pod; the container's id.
    pub async fn start(&self, cfg: pb::ContainerConfig) -> String {
        create_start(&mut self.rt.clone(), &self.id, &self.config, cfg).await
    }

    /// CreateContainer of `cfg` in this pod (not started): its id, or the runtime's refusal.
    pub async fn create(&self, cfg: pb::ContainerConfig) -> Result<String, tonic::Status> {
        self.rt
            .clone()
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: self.id.clone(),
                config: Some(cfg),
                sandbox_config: Some(self.config.clone()),
            })
            .await
            .map(|r| r.into_inner().container_id)
    }

    /// StopPodSandbox; panics if it fails.
    pub async fn stop(&self) {
        self.rt
            .clone()
            .stop_pod_sandbox(pb::StopPodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            })
            .await
            .expect("StopPodSandbox");
    }

    /// RemovePodSandbox (which stops the pod first); panics if it fails.
    pub async fn remove(self) {
        self.rt
            .clone()
            .remove_pod_sandbox(pb::RemovePodSandboxRequest {
                pod_sandbox_id: self.id.clone(),
            })
            .await
            .expect("RemovePodSandbox");
    }
}

/// The standalone CRI suites' shared set-up: a [`Shim`] with [`BUSYBOX`] imported, a runtime
/// client, a scratch directory for container logs, and one running pod. Dropped (also when a
/// test fails half-way), the shim's guard stops everything it started.
#[derive(Debug)]
pub struct ShimPod {
    // Dropped in this order: the pod's client, the logs, the shim last.
    pub pod: Pod,
    pub rt: RuntimeServiceClient<Channel>,
    pub logs: tempfile::TempDir,
    pub shim: Shim,
}

impl ShimPod {
    /// Starts a shim, imports busybox and runs pod `pod_name` (its network `Node` or `Pod`).
    pub async fn start(pod_name: &str, network: pb::NamespaceMode) -> Self {
        let shim = Shim::start();
        import_busybox(&shim.state(), BUSYBOX);
        let (rt, _) = shim.clients();
        let logs = crate::scratch("cpe-podlogs-");
        let pod = Pod::run(&rt, pod_config(pod_name, logs.path(), network)).await;
        Self {
            pod,
            rt,
            logs,
            shim,
        }
    }

    /// Runs another pod `name` in the same shim, logging into the same directory.
    pub async fn another_pod(&self, name: &str, network: pb::NamespaceMode) -> Pod {
        Pod::run(&self.rt, pod_config(name, self.logs.path(), network)).await
    }
}
