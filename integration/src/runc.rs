//! Real runc containers for tests: a busybox rootfs on an overlay (absolute layer paths, as
//! containerd, CRI-O and podman mount them), started detached with `runc run -d` under a
//! per-test runc root, and torn down (killed, deleted, unmounted, removed) on drop.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{require_program, run, scratch, wait_until};

/// A busybox base tree: /bin/busybox with applet links, the usual dirs, and a few files.
pub fn make_busybox_base(dir: &Path) {
    let busybox = require_program("/bin/busybox");
    for d in [
        "bin", "proc", "sys", "dev", "tmp", "etc", "root", "var/log", "data",
    ] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "sleep", "echo", "cat", "ls", "rm", "mkdir", "touch", "date", "head", "dd", "seq",
        "wc", "nc", "grep",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/motd"), "hello from the base image\n").unwrap();
    std::fs::write(
        dir.join("etc/to-delete"),
        "this file is deleted in the container\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// Copies the `cpe-workload` binary into a base tree as `/bin/cpe-workload`, with the shared
/// libraries it needs (as `ldd` lists them) at their host paths, so a container can run the
/// memory workload (`--mem N`, `verify-request`).
pub fn add_workload(base: &Path, workload: &Path) {
    std::fs::copy(workload, base.join("bin/cpe-workload")).unwrap();
    let (st, out, err) = run(Command::new("ldd").arg(workload));
    assert!(st.success(), "ldd {}: {err}", workload.display());
    for line in out.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line
            .split("=>")
            .last()
            .and_then(|r| r.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let src = std::fs::canonicalize(p).unwrap();
            let dest = base.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&src, &dest).unwrap();
        }
    }
}

/// A bundle whose rootfs is an overlay over a busybox base.
#[derive(Debug)]
pub struct Bundle {
    pub tmp: tempfile::TempDir,
    pub base: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    mounted: bool,
}

impl Bundle {
    /// Creates base, upper, work and the bundle, mounts the overlay and writes config.json
    /// running `sh -c <script>`.
    pub fn busybox(script: &str) -> Self {
        Self::busybox_with(script, |_| {})
    }

    /// Like [`Bundle::busybox`], with `add` putting more into the base tree before the overlay
    /// is mounted (e.g. [`add_workload`]).
    pub fn busybox_with(script: &str, add: impl FnOnce(&Path)) -> Self {
        require_program("runc");
        let tmp = scratch("cpe-bundle-");
        let root = tmp.path().to_path_buf();
        let (base, upper, work, dir) = (
            root.join("base"),
            root.join("upper"),
            root.join("work"),
            root.join("bundle"),
        );
        let rootfs = dir.join("rootfs");
        for d in [&base, &upper, &work, &rootfs] {
            std::fs::create_dir_all(d).unwrap();
        }
        make_busybox_base(&base);
        add(&base);
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            base.display(),
            upper.display(),
            work.display()
        );
        let (st, _, err) = run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &data])
            .arg(&rootfs));
        assert!(st.success(), "mounting overlay: {err}");
        let (st, _, err) = run(Command::new("runc").arg("spec").current_dir(&dir));
        assert!(st.success(), "runc spec: {err}");
        let mut b = Self {
            tmp,
            base,
            upper,
            work,
            dir,
            rootfs,
            mounted: true,
        };
        b.edit_spec(|spec| {
            spec["process"]["terminal"] = false.into();
            spec["process"]["args"] = serde_json::json!(["sh", "-c", script]);
            spec["root"]["readonly"] = false.into();
            spec["root"]["path"] = b_rootfs_placeholder();
            // This machine caps RLIMIT_NOFILE at 20000 and lacks CAP_SYS_RESOURCE.
            spec["process"]["rlimits"] =
                serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
        });
        let rootfs_s = b.rootfs.display().to_string();
        b.edit_spec(|spec| spec["root"]["path"] = rootfs_s.into());
        b
    }

    /// Changes config.json.
    pub fn edit_spec(&mut self, f: impl FnOnce(&mut serde_json::Value)) {
        let p = self.dir.join("config.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    /// Adds a bind mount of host `source` at `dest`.
    pub fn add_bind(&mut self, source: &Path, dest: &str) {
        let src = source.display().to_string();
        self.edit_spec(|s| {
            s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": dest, "type": "bind", "source": src, "options": ["rbind", "rw"]
            }))
        });
    }
}

fn b_rootfs_placeholder() -> serde_json::Value {
    serde_json::Value::String("rootfs".into())
}

impl Drop for Bundle {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg("-l").arg(&self.rootfs).status();
        }
    }
}

/// The container suites' shared fixture: a busybox bundle running `prelude` then
/// [`COUNTER_SCRIPT`] as a runc container named `<prefix>-<unique>`, returned once its counter
/// reached 3 (it fails loudly if it does not within 10 s).
pub fn counting_container(prefix: &str, prelude: &str) -> (Bundle, String, RuncContainer) {
    let bundle = Bundle::busybox(&format!("{prelude}{COUNTER_SCRIPT}"));
    let id = unique_id(prefix);
    let c = RuncContainer::run(&bundle, &id);
    assert!(
        crate::wait_until(std::time::Duration::from_secs(10), || counter_in(
            &bundle.rootfs
        ) >= 3),
        "the counting container {id} did not count to 3"
    );
    (bundle, id, c)
}

/// A [`counting_container`] (ids `<prefix>-…`) checkpointed by the engine, with `state` as its
/// state root, into `c.tar` in a new scratch directory, then destroyed: its bundle (whose base
/// restores use), the directory and the archive.
pub async fn checkpointed_counter(
    engine: &cpengine::Engine,
    state: &cpengine::container::state::StateRoot,
    prefix: &str,
) -> (Bundle, tempfile::TempDir, PathBuf) {
    use cpengine::container::checkpoint::{ContainerCheckpointOptions, checkpoint};
    let (bundle, id, mut c) = counting_container(prefix, "");
    let ctr = cpengine::container::Container::find(&id, std::slice::from_ref(&c.root), state)
        .expect("the engine finds the runc container");
    let out = scratch(&format!("{prefix}out-"));
    let archive = out.path().join("c.tar");
    let mut o = ContainerCheckpointOptions::new(&archive);
    o.state = Some(state.clone());
    checkpoint(engine, &ctr, &o).await.expect("checkpoint");
    c.destroy();
    (bundle, out, archive)
}

/// A runc container `<prefix>-<unique>` running the memory workload (`cpe-workload --dir
/// /tmp/wl <args>`, e.g. `--mem 256`) from a busybox bundle, returned once the workload is
/// ready; it fails loudly, with the container's output, if it is not within `ready_within`.
pub fn workload_container(
    prefix: &str,
    args: &str,
    ready_within: Duration,
) -> (Bundle, RuncContainer) {
    let wl = crate::workload_bin();
    let script = format!("exec /bin/cpe-workload --dir /tmp/wl {args}");
    let bundle = Bundle::busybox_with(&script, |base| add_workload(base, &wl));
    let c = RuncContainer::run(&bundle, &unique_id(prefix));
    assert!(
        wait_until(ready_within, || bundle.rootfs.join("tmp/wl/ready").exists()),
        "workload in the container did not become ready: {}",
        c.output()
    );
    (bundle, c)
}

/// A container started with `runc run -d`. Its stdout and stderr are a pipe that a thread
/// drains into memory (the read end is ours), so the container never blocks on output.
#[derive(Debug)]
pub struct RuncContainer {
    pub id: String,
    pub root: PathBuf,
    pub pid: i32,
    output: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    _root_tmp: tempfile::TempDir,
}

impl RuncContainer {
    /// Runs the bundle as container `id` under a fresh runc root.
    pub fn run(bundle: &Bundle, id: &str) -> Self {
        crate::init();
        let root_tmp = scratch("cpe-runc-");
        let root = root_tmp.path().to_path_buf();
        let (r, w) = nix::unistd::pipe().unwrap();
        let w2 = w.try_clone().unwrap();
        let pid_file = root.join("pid");
        let status = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "-d", "--pid-file"])
            .arg(&pid_file)
            .arg(id)
            .current_dir(&bundle.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2))
            .status()
            .expect("runc run");
        assert!(status.success(), "runc run {id} failed");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let output = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        spawn_drain(r, output.clone());
        Self {
            id: id.to_string(),
            root,
            pid,
            output,
            _root_tmp: root_tmp,
        }
    }

    /// Everything the container printed so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// `runc kill <id> KILL` and `runc delete --force`, waiting until init is gone.
    pub fn destroy(&mut self) {
        if self.pid == 0 {
            return;
        }
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["kill", &self.id, "KILL"])
            .status();
        let pid = self.pid;
        wait_until(Duration::from_secs(10), || {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            !cpengine::proc::exists(pid)
        });
        let _ = Command::new("runc")
            .arg("--root")
            .arg(&self.root)
            .args(["delete", "--force", &self.id])
            .status();
        self.pid = 0;
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        self.destroy();
    }
}

fn spawn_drain(r: OwnedFd, into: std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(r);
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
}

/// A short unique container id.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .unwrap();
    u32::from_le_bytes(b)
}

/// A counter script: increments `i`, writes it to /tmp/counter and prints it.
pub const COUNTER_SCRIPT: &str =
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo tick $i; sleep 0.1; done";

/// Reads the container's counter through its rootfs.
pub fn counter_in(rootfs: &Path) -> u64 {
    std::fs::read_to_string(rootfs.join("tmp/counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}
