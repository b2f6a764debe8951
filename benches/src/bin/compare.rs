//! `cpengine-compare`: cpengine against the tools it replaces, in one run, on the same
//! workloads, on this machine.
//!
//! Workloads: `cpe-workload --mem N` (N MiB of incompressible, verifiable memory) as a plain
//! process, and the same binary as the init of a runc container (busybox rootfs on an overlay)
//! or a Podman container. For every memory size it times, alternating the order of the tools
//! from run to run:
//!
//! | operation | cpengine | peers |
//! |---|---|---|
//! | process dump | `cpengine dump --leave-running` | `criu dump --leave-running` (CLI) |
//! | process restore | `cpengine restore`, `cpengine restore --lazy` | `criu restore -d` |
//! | container checkpoint to an archive | `cpengine checkpoint` | `runc checkpoint` + `tar`, `podman container checkpoint --export`, containerd's CRI `CheckpointContainer` |
//! | container restore | `cpengine restore ARCHIVE`, `… --lazy` | `runc restore`, `podman container restore --import`, containerd's CRI restore |
//!
//! Each tool runs as its CLI would for a user (wall time of the whole command). Frozen time is
//! the workload's downtime: CRIU's freezing + frozen time from the tool's `stats-dump`, or
//! cpengine's own measurement. Results: a Markdown table with medians, min–max and the ratios
//! (stdout, `--markdown`), JSON (`--json`) and an SVG plot of time against memory size
//! (`--svg`).
//!
//! Run as root after `cargo build --release --workspace --bins` (see `scripts/bench.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Serialize;

use cpengine_integration::podman::Podman;
use cpengine_integration::runc::{Bundle, RuncContainer, add_workload, unique_id};
use cpengine_integration::{Workload, kill_and_reap, scratch, wait_until, workspace_bin};

/// Compare cpengine with criu, runc, Podman and containerd on this machine.
#[derive(Debug, Parser)]
#[command(name = "cpengine-compare")]
struct Args {
    /// Memory sizes of the workload, in MiB.
    #[arg(long, value_delimiter = ',', default_values_t = [16u32, 256, 1024])]
    sizes: Vec<u32>,
    /// Runs per tool and size (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Skip these suites or peers: process, container, runc, podman, containerd, lazy.
    #[arg(long, value_delimiter = ',')]
    skip: Vec<String>,
    /// Also time cpengine's alternatives (staged pages, CRIU freezing, zstd).
    #[arg(long)]
    variants: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the table as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Draw checkpoint and restore time against memory size into this SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// One tool doing one operation at one size.
#[derive(Debug, Clone, Serialize)]
struct Measure {
    op: &'static str,
    tool: String,
    mib: u32,
    /// Wall time of each run, ms.
    runs_ms: Vec<f64>,
    /// Workload downtime of each run, ms (if known).
    frozen_ms: Vec<f64>,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    frozen_median_ms: Option<f64>,
}

/// cpengine against one peer.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    mib: u32,
    what: String,
    ours: String,
    peer: String,
    ratio: f64,
    /// The target for this ratio on this machine, if there is one.
    target: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Machine {
    date: String,
    kernel: String,
    cpu: String,
    cpus: usize,
    memory_gib: f64,
    criu: String,
    load_before: String,
    load_after: String,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: Machine,
    runs: usize,
    measures: Vec<Measure>,
    ratios: Vec<Ratio>,
}

const DUMP: &str = "process dump";
const PRESTORE: &str = "process restore";
const CKPT: &str = "container checkpoint to archive";
const CRESTORE: &str = "container restore";

const T_CRIU_DUMP: &str = "criu dump";
const T_CPE_DUMP: &str = "cpengine dump";
const T_LIB_DUMP: &str = "cpengine dump (library call)";
const T_LIB_RESTORE: &str = "cpengine restore (library call)";
const T_CRIU_RESTORE: &str = "criu restore";
const T_CPE_RESTORE: &str = "cpengine restore";
const T_CPE_LAZY: &str = "cpengine restore --lazy";
const T_RUNC_CKPT: &str = "runc checkpoint + tar";
const T_CPE_CKPT: &str = "cpengine checkpoint";
const T_PODMAN_CKPT: &str = "podman checkpoint --export";
const T_RUNC_RESTORE: &str = "runc restore";
const T_PODMAN_RESTORE: &str = "podman restore --import";
const T_CTRD_CKPT: &str = "containerd CheckpointContainer";
const T_CTRD_RESTORE: &str = "containerd restore";

struct Sample {
    wall: Duration,
    frozen: Option<Duration>,
}

/// Collects samples per (op, tool, size).
#[derive(Default)]
struct Results {
    samples: BTreeMap<(&'static str, String, u32), Vec<Sample>>,
}

impl Results {
    fn add(&mut self, op: &'static str, tool: &str, mib: u32, s: Sample) {
        eprintln!(
            "  {op:<32} {tool:<36} {mib:>5} MiB  {:>9.1} ms{}",
            ms(s.wall),
            s.frozen
                .map(|f| format!("  (frozen {:.1} ms)", ms(f)))
                .unwrap_or_default()
        );
        self.samples
            .entry((op, tool.to_owned(), mib))
            .or_default()
            .push(s);
    }

    fn measures(&self) -> Vec<Measure> {
        self.samples
            .iter()
            .map(|((op, tool, mib), v)| {
                let runs: Vec<f64> = v.iter().map(|s| ms(s.wall)).collect();
                let frozen: Vec<f64> = v.iter().filter_map(|s| s.frozen.map(ms)).collect();
                Measure {
                    op,
                    tool: tool.clone(),
                    mib: *mib,
                    median_ms: median(&runs),
                    min_ms: runs.iter().copied().fold(f64::INFINITY, f64::min),
                    max_ms: runs.iter().copied().fold(0.0, f64::max),
                    frozen_median_ms: (!frozen.is_empty()).then(|| median(&frozen)),
                    runs_ms: runs,
                    frozen_ms: frozen,
                }
            })
            .collect()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// PATH with CRIU 4.x first (runc, conmon and containerd's shim look `criu` up in PATH).
fn path_env() -> String {
    format!(
        "/usr/local/sbin:{}",
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Runs `cmd`, fails with its output unless it succeeds; returns wall time and stdout.
fn timed(cmd: &mut Command) -> Result<(Duration, String)> {
    cmd.env("PATH", path_env()).stdin(Stdio::null());
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let wall = t.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok((wall, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// CRIU's downtime from a `stats-dump` file: freezing + frozen time.
fn stats_frozen(path: &Path) -> Option<Duration> {
    let s = cpengine::report::read_stats(path).ok()?.dump?;
    Some(Duration::from_micros(
        u64::from(s.freezing_time) + u64::from(s.frozen_time),
    ))
}

/// The same, from the `stats-dump` member of an archive.
fn archive_frozen(archive: &Path) -> Option<Duration> {
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(archive)
        .arg("stats-dump")
        .output()
        .ok()?;
    let s = cpengine::report::decode_stats(&out.stdout[..]).ok()?.dump?;
    Some(Duration::from_micros(
        u64::from(s.freezing_time) + u64::from(s.frozen_time),
    ))
}

fn json_ms(v: &serde_json::Value, key: &str) -> Option<Duration> {
    v.get(key)?
        .as_f64()
        .map(|m| Duration::from_secs_f64(m / 1e3))
}

/// Reaps whatever children have exited (restored trees re-parented to us, lazy-pages
/// daemons whose cpengine exited).
fn reap_children() {
    use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
    while let Ok(s) = waitpid(nix::unistd::Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if matches!(s, WaitStatus::StillAlive) {
            break;
        }
    }
}

struct Bins {
    cpengine: PathBuf,
    criu: PathBuf,
    /// The engine in this process, for the library-call rows (no CLI start-up).
    engine: cpengine::Engine,
    rt: tokio::runtime::Runtime,
}

fn main() -> Result<()> {
    let args = Args::parse();
    cpengine_integration::init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let engine = rt.block_on(cpengine::Engine::new())?;
    let bins = Bins {
        cpengine: workspace_bin("cpengine"),
        criu: PathBuf::from("/usr/local/sbin/criu"),
        engine,
        rt,
    };
    let skip = |s: &str| args.skip.iter().any(|x| x == s);
    let load_before = loadavg();
    let mut r = Results::default();
    for &mib in &args.sizes {
        eprintln!("== {mib} MiB");
        if !skip("process") {
            process_suite(&bins, mib, args.runs, !skip("lazy"), &mut r)?;
        }
        if !skip("container") {
            container_suite(&bins, mib, &args, &mut r)?;
        }
        if !skip("podman") && which("podman") {
            podman_suite(mib, args.runs, &mut r)?;
        }
        if !skip("containerd") {
            containerd_suite(mib, args.runs, &mut r)?;
        }
        reap_children();
    }
    let measures = r.measures();
    let ratios = ratios(&measures);
    let report = Report {
        machine: machine(load_before),
        runs: args.runs,
        measures,
        ratios,
    };
    let md = markdown(&report);
    println!("{md}");
    if let Some(p) = &args.markdown {
        std::fs::write(p, &md)?;
    }
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(p) = &args.svg {
        plot(&report, p)?;
    }
    Ok(())
}

fn which(p: &str) -> bool {
    std::env::split_paths(&path_env()).any(|d| d.join(p).is_file())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(load_before: String) -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let criu = Command::new("/usr/local/sbin/criu")
        .arg("--version")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("Version: ")
                .to_owned()
        })
        .unwrap_or_default();
    Machine {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        kernel,
        cpu,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: mem / (1024.0 * 1024.0),
        criu,
        load_before,
        load_after: loadavg(),
    }
}

// ---------------------------------------------------------------- process suite

fn process_suite(bins: &Bins, mib: u32, runs: usize, lazy: bool, r: &mut Results) -> Result<()> {
    let mem = mib.to_string();
    let work = scratch("cpe-cmp-");
    {
        let w = Workload::start(&["--mem", &mem]);
        let tools = [T_CRIU_DUMP, T_CPE_DUMP, T_LIB_DUMP];
        for i in 0..runs {
            for k in 0..tools.len() {
                let tool = tools[(i + k) % tools.len()];
                let dir = work.path().join(format!("d-{i}-{k}"));
                match tool {
                    T_CRIU_DUMP => {
                        std::fs::create_dir_all(&dir)?;
                        let (wall, _) = timed(
                            Command::new(&bins.criu)
                                .args(["dump", "-t", &w.pid.to_string(), "-D"])
                                .arg(&dir)
                                .args(["--leave-running", "-o", "dump.log", "-v4"]),
                        )?;
                        let frozen = stats_frozen(&dir.join("stats-dump"));
                        r.add(DUMP, tool, mib, Sample { wall, frozen });
                    }
                    T_CPE_DUMP => {
                        let (wall, out) = timed(
                            Command::new(&bins.cpengine)
                                .args(["dump", &w.pid.to_string(), "-D"])
                                .arg(&dir)
                                .args(["--leave-running", "--json"]),
                        )?;
                        let v: serde_json::Value = serde_json::from_str(&out)?;
                        let frozen = v.get("criu").and_then(|c| {
                            Some(json_ms(c, "freezing_ms")? + json_ms(c, "frozen_ms")?)
                        });
                        r.add(DUMP, tool, mib, Sample { wall, frozen });
                    }
                    _ => {
                        let mut o = cpengine::CheckpointOptions::new(w.pid, &dir);
                        o.flags.leave_running = true;
                        let t = Instant::now();
                        let rep = bins.rt.block_on(bins.engine.dump(&o))?;
                        let wall = t.elapsed();
                        let frozen = rep.criu.as_ref().map(|s| s.freezing + s.frozen);
                        r.add(DUMP, tool, mib, Sample { wall, frozen });
                    }
                }
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
    }

    // Restores, all from one set of images (the original is killed by the dump).
    let mut w = Workload::start(&["--mem", &mem]);
    let images = work.path().join("images");
    std::fs::create_dir_all(&images)?;
    timed(
        Command::new(&bins.criu)
            .args(["dump", "-t", &w.pid.to_string(), "-D"])
            .arg(&images)
            .args(["-o", "dump.log", "-v4"]),
    )?;
    kill_and_reap(&[w.pid]);
    w.adopt(0);
    let mut tools = vec![T_CRIU_RESTORE, T_CPE_RESTORE, T_LIB_RESTORE];
    if lazy {
        tools.push(T_CPE_LAZY);
    }
    for i in 0..runs {
        for k in 0..tools.len() {
            let tool = tools[(i + k) % tools.len()];
            let (wall, restored) = match tool {
                T_CRIU_RESTORE => {
                    let (wall, _) = timed(
                        Command::new(&bins.criu)
                            .args(["restore", "-D"])
                            .arg(&images)
                            .args(["-d", "-o", "restore.log", "-v4"]),
                    )?;
                    (wall, restored_pid(&images)?)
                }
                T_LIB_RESTORE => {
                    let t = Instant::now();
                    let rep = bins
                        .rt
                        .block_on(bins.engine.restore(cpengine::RestoreOptions::new(&images)))?;
                    (t.elapsed(), rep.pid)
                }
                _ => {
                    let mut c = Command::new(&bins.cpengine);
                    c.args(["restore", "-D"]).arg(&images).arg("--json");
                    if tool == T_CPE_LAZY {
                        c.arg("--lazy");
                    }
                    let (wall, out) = timed(&mut c)?;
                    let v: serde_json::Value = serde_json::from_str(&out)?;
                    (wall, v["pid"].as_i64().unwrap_or(0) as i32)
                }
            };
            r.add(PRESTORE, tool, mib, Sample { wall, frozen: None });
            w.adopt(restored);
            // Correctness, untimed: every page of the workload's memory is intact (the
            // first run of each tool; a lazy restore every time).
            if i == 0 || tool == T_CPE_LAZY {
                let verdict = w.verify_memory();
                if verdict.trim() != format!("ok {mib}") {
                    bail!("{tool}: memory verification failed: {verdict}");
                }
            }
            w.kill();
            reap_children();
        }
    }
    Ok(())
}

/// The root pid of the tree in an images dir (CRIU restores it with its original pid).
fn restored_pid(images: &Path) -> Result<i32> {
    let tree = cpengine::images::read_pstree(images).context("reading pstree.img")?;
    Ok(tree.first().map_or(0, |t| t.pid as i32))
}

// ---------------------------------------------------------------- container suite

fn container_suite(bins: &Bins, mib: u32, args: &Args, r: &mut Results) -> Result<()> {
    let skip = |s: &str| args.skip.iter().any(|x| x == s);
    let runs = args.runs;
    let wl = workspace_bin("cpe-workload");
    let script = format!("exec /bin/cpe-workload --dir /tmp/wl --mem {mib}");
    let bundle = Bundle::busybox_with(&script, |base| add_workload(base, &wl));
    let id = unique_id("cpe-cmp");
    let mut c = RuncContainer::run(&bundle, &id);
    let ready = bundle.rootfs.join("tmp/wl/ready");
    if !wait_until(Duration::from_secs(120), || ready.exists()) {
        bail!("container workload not ready: {}", c.output());
    }
    let work = scratch("cpe-cmp-");
    let state = work.path().join("state");
    let root = c.root.clone();
    let cpe_ckpt = |extra: &[&str], out: &Path| -> Result<(Duration, Option<Duration>)> {
        let mut cmd = Command::new(&bins.cpengine);
        cmd.arg("--state-root")
            .arg(&state)
            .args(["checkpoint", &id, "--runc-root"])
            .arg(&root)
            .arg("-o")
            .arg(out)
            .arg("--json")
            .args(extra);
        let (wall, stdout) = timed(&mut cmd)?;
        let v: serde_json::Value = serde_json::from_str(&stdout)?;
        Ok((wall, json_ms(&v, "frozen_ms")))
    };
    let mut tools: Vec<(String, Vec<&str>)> = vec![(T_CPE_CKPT.into(), vec![])];
    if !skip("runc") {
        tools.push((T_RUNC_CKPT.into(), vec![]));
    }
    if args.variants {
        tools.push((
            "cpengine checkpoint --stream-pages false".into(),
            vec!["--stream-pages", "false"],
        ));
        tools.push((
            "cpengine checkpoint --fast-freeze false".into(),
            vec!["--fast-freeze", "false"],
        ));
        tools.push((
            "cpengine checkpoint --compress zstd".into(),
            vec!["--compress", "zstd"],
        ));
    }
    for i in 0..runs {
        for k in 0..tools.len() {
            let (tool, extra) = &tools[(i + k) % tools.len()];
            let out = work.path().join(format!("c-{i}-{k}.tar"));
            if tool == T_RUNC_CKPT {
                let img = work.path().join(format!("img-{i}"));
                let wk = work.path().join(format!("wk-{i}"));
                let t = Instant::now();
                timed(
                    Command::new("runc")
                        .arg("--root")
                        .arg(&root)
                        .args(["checkpoint", "--leave-running", "--image-path"])
                        .arg(&img)
                        .arg("--work-path")
                        .arg(&wk)
                        .arg(&id),
                )?;
                timed(
                    Command::new("tar")
                        .arg("-cf")
                        .arg(&out)
                        .arg("-C")
                        .arg(&img)
                        .arg("."),
                )?;
                let wall = t.elapsed();
                let frozen = stats_frozen(&wk.join("stats-dump"));
                r.add(CKPT, tool, mib, Sample { wall, frozen });
                let _ = std::fs::remove_dir_all(&img);
                let _ = std::fs::remove_dir_all(&wk);
            } else {
                let (wall, frozen) = cpe_ckpt(extra, &out)?;
                r.add(CKPT, tool, mib, Sample { wall, frozen });
            }
            let _ = std::fs::remove_file(&out);
        }
    }

    // Restores: one cpengine archive (container left running), then runc's images (which
    // stops the container).
    let archive = work.path().join("final.tar");
    cpe_ckpt(&[], &archive)?;
    let img = work.path().join("final-img");
    let runc_root = |cmd: &mut Command| {
        cmd.arg("--root").arg(&root);
    };
    if !skip("runc") {
        let mut cmd = Command::new("runc");
        runc_root(&mut cmd);
        timed(
            cmd.args(["checkpoint", "--image-path"])
                .arg(&img)
                .arg("--work-path")
                .arg(work.path().join("final-wk"))
                .arg(&id),
        )?;
        let mut cmd = Command::new("runc");
        runc_root(&mut cmd);
        let _ = timed(cmd.args(["delete", "--force", &id]));
    }
    c.destroy();
    reap_children();
    let mut tools = vec![T_CPE_RESTORE];
    if !skip("lazy") {
        tools.push(T_CPE_LAZY);
    }
    if !skip("runc") {
        tools.push(T_RUNC_RESTORE);
    }
    for i in 0..runs {
        for k in 0..tools.len() {
            let tool = tools[(i + k) % tools.len()];
            if tool == T_RUNC_RESTORE {
                let mut cmd = Command::new("runc");
                runc_root(&mut cmd);
                let (wall, _) = timed(
                    cmd.args(["restore", "--detach", "--image-path"])
                        .arg(&img)
                        .arg("--work-path")
                        .arg(work.path().join(format!("rwk-{i}")))
                        .arg("--bundle")
                        .arg(&bundle.dir)
                        .arg(&id)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null()),
                )?;
                r.add(CRESTORE, tool, mib, Sample { wall, frozen: None });
                if i == 0 {
                    verify_container(&bundle.rootfs, mib, tool)?;
                }
                let mut cmd = Command::new("runc");
                runc_root(&mut cmd);
                let _ = timed(cmd.args(["kill", &id, "KILL"]));
                std::thread::sleep(Duration::from_millis(100));
                let mut cmd = Command::new("runc");
                runc_root(&mut cmd);
                let _ = timed(cmd.args(["delete", "--force", &id]));
            } else {
                let new_id = unique_id("cpe-cmr");
                let mut cmd = Command::new(&bins.cpengine);
                cmd.arg("--state-root")
                    .arg(&state)
                    .arg("restore")
                    .arg(&archive)
                    .args(["--id", &new_id, "--rootfs-base"])
                    .arg(&bundle.base)
                    .arg("--json");
                if tool == T_CPE_LAZY {
                    cmd.arg("--lazy");
                }
                let (wall, out) = timed(&mut cmd)?;
                r.add(CRESTORE, tool, mib, Sample { wall, frozen: None });
                let v: serde_json::Value = serde_json::from_str(&out)?;
                let rootfs = PathBuf::from(v["rootfs"].as_str().unwrap_or_default());
                if i == 0 || tool == T_CPE_LAZY {
                    verify_container(&rootfs, mib, tool)?;
                }
                timed(
                    Command::new(&bins.cpengine)
                        .arg("--state-root")
                        .arg(&state)
                        .args(["delete", "--force", &new_id]),
                )?;
            }
            reap_children();
        }
    }
    drop(c);
    Ok(())
}

fn verify_container(rootfs: &Path, mib: u32, tool: &str) -> Result<()> {
    let dir = rootfs.join("tmp/wl");
    let result = dir.join("verify-result");
    let _ = std::fs::remove_file(&result);
    std::fs::write(dir.join("verify-request"), b"")?;
    if !wait_until(Duration::from_secs(120), || result.exists()) {
        bail!("{tool}: the restored workload does not answer");
    }
    std::thread::sleep(Duration::from_millis(20));
    let v = std::fs::read_to_string(&result)?;
    if v.trim() != format!("ok {mib}") {
        bail!("{tool}: memory verification failed: {v}");
    }
    Ok(())
}

// ---------------------------------------------------------------- podman suite

fn podman_suite(mib: u32, runs: usize, r: &mut Results) -> Result<()> {
    let podman = Podman::new();
    let work = scratch("cpe-cmp-pod-");
    let base = work.path().join("base");
    std::fs::create_dir_all(&base)?;
    cpengine_integration::runc::make_busybox_base(&base);
    add_workload(&base, &workspace_bin("cpe-workload"));
    let tarball = work.path().join("base.tar");
    timed(
        Command::new("tar")
            .arg("-C")
            .arg(&base)
            .arg("-cf")
            .arg(&tarball)
            .arg("."),
    )?;
    let image = "localhost/cpe-cmp-wl:latest";
    podman.ok(&[
        "import",
        "--change",
        "CMD [\"/bin/sh\"]",
        tarball.to_str().unwrap_or_default(),
        image,
    ]);
    let name = unique_id("cpe-cmp-pod");
    let mem = mib.to_string();
    podman.ok(&[
        "run",
        "-d",
        "--name",
        &name,
        image,
        "/bin/cpe-workload",
        "--dir",
        "/tmp/wl",
        "--mem",
        &mem,
    ]);
    let upper = podman
        .ok(&["inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", &name])
        .trim()
        .to_owned();
    let ready = Path::new(&upper).join("tmp/wl/ready");
    if !wait_until(Duration::from_secs(120), || ready.exists()) {
        bail!("podman workload not ready");
    }
    let export = work.path().join("export.tar");
    for i in 0..runs {
        let out = work.path().join(format!("p-{i}.tar"));
        let (wall, _) = timed(podman.cmd().args([
            "container",
            "checkpoint",
            "--leave-running",
            "--compress",
            "none",
            "--export",
            out.to_str().unwrap_or_default(),
            &name,
        ]))?;
        let frozen = archive_frozen(&out);
        r.add(CKPT, T_PODMAN_CKPT, mib, Sample { wall, frozen });
        if i + 1 == runs {
            std::fs::rename(&out, &export)?;
        } else {
            let _ = std::fs::remove_file(&out);
        }
    }
    podman.ok(&["rm", "-f", "-t", "0", &name]);
    for i in 0..runs {
        let restored = format!("{name}-r{i}");
        let (wall, _) = timed(podman.cmd().args([
            "container",
            "restore",
            "--import",
            export.to_str().unwrap_or_default(),
            "-n",
            &restored,
        ]))?;
        r.add(
            CRESTORE,
            T_PODMAN_RESTORE,
            mib,
            Sample { wall, frozen: None },
        );
        podman.ok(&["rm", "-f", "-t", "0", &restored]);
    }
    Ok(())
}

// ---------------------------------------------------------------- containerd suite

/// containerd 2.1.9's own CRI `CheckpointContainer` (scripts/containerd.sh fetches and unpacks
/// it; a private instance runs here). The workload binary and its libraries come from a
/// read-only host directory mounted into a busybox container. containerd's CRI restore needs
/// the base image pulled again from a registry, so only the checkpoint is timed.
fn containerd_suite(mib: u32, runs: usize, r: &mut Results) -> Result<()> {
    use cpengine_integration::containerd::{BUSYBOX_IMAGE, Containerd};
    use cpengine_integration::cri;
    use k8s_cri::v1 as pb;
    let ctrd = Containerd::start();
    let work = scratch("cpe-cmp-ctrd-");
    let base = work.path().join("wl");
    std::fs::create_dir_all(base.join("bin"))?;
    add_workload(&base, &workspace_bin("cpe-workload"));
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut c, _) = cri::clients(&ctrd.socket);
        let pod_cfg = cri::pod_config("cmp-pod", &logs, pb::NamespaceMode::Node);
        let pod = c
            .run_pod_sandbox(pb::RunPodSandboxRequest {
                config: Some(pod_cfg.clone()),
                runtime_handler: String::new(),
            })
            .await?
            .into_inner()
            .pod_sandbox_id;
        let script = format!(
            "exec /opt/wl/lib64/ld-linux-x86-64.so.2 --library-path /opt/wl/lib/x86_64-linux-gnu /opt/wl/bin/cpe-workload --dir /tmp/wl --mem {mib}"
        );
        let mut cfg = cri::container_config("wl", BUSYBOX_IMAGE, &script);
        cfg.mounts.push(pb::Mount {
            container_path: "/opt/wl".into(),
            host_path: base.display().to_string(),
            readonly: true,
            ..Default::default()
        });
        let id = c
            .create_container(pb::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        c.start_container(pb::StartContainerRequest {
            container_id: id.clone(),
        })
        .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let ready = cri::exec(&mut c, &id, &["cat", "/tmp/wl/ready"])
                .await
                .is_ok_and(|o| o.exit_code == 0);
            if ready {
                break;
            }
            if Instant::now() > deadline {
                bail!("containerd workload not ready");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for i in 0..runs {
            let loc = work.path().join(format!("ctrd-{i}.tar"));
            let t = Instant::now();
            c.checkpoint_container(pb::CheckpointContainerRequest {
                container_id: id.clone(),
                location: loc.display().to_string(),
                timeout: 300,
            })
            .await?;
            let wall = t.elapsed();
            let frozen = archive_frozen(&loc);
            r.add(CKPT, T_CTRD_CKPT, mib, Sample { wall, frozen });
            let _ = std::fs::remove_file(&loc);
        }
        Ok::<(), anyhow::Error>(())
    })?;
    drop(ctrd);
    Ok(())
}

// ---------------------------------------------------------------- reporting

fn find<'a>(ms: &'a [Measure], op: &str, tool: &str, mib: u32) -> Option<&'a Measure> {
    ms.iter()
        .find(|m| m.op == op && m.tool == tool && m.mib == mib)
}

fn ratios(ms: &[Measure]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let sizes: std::collections::BTreeSet<u32> = ms.iter().map(|m| m.mib).collect();
    for mib in sizes {
        let mut add =
            |what: &str, a: (&str, &str), b: (&str, &str), frozen: bool, target: Option<f64>| {
                let (Some(x), Some(y)) = (find(ms, a.0, a.1, mib), find(ms, b.0, b.1, mib)) else {
                    return;
                };
                let (p, q) = if frozen {
                    match (x.frozen_median_ms, y.frozen_median_ms) {
                        (Some(p), Some(q)) => (p, q),
                        _ => return,
                    }
                } else {
                    (x.median_ms, y.median_ms)
                };
                out.push(Ratio {
                    mib,
                    what: what.to_owned(),
                    ours: a.1.to_owned(),
                    peer: format!("{} ({})", b.1, b.0),
                    ratio: p / q,
                    target,
                });
            };
        let big = mib >= 1024;
        let small = mib <= 16;
        add(
            "dump: engine over CRIU",
            (DUMP, T_CPE_DUMP),
            (DUMP, T_CRIU_DUMP),
            false,
            small.then_some(1.02),
        );
        add(
            "dump: engine (library call) over CRIU",
            (DUMP, T_LIB_DUMP),
            (DUMP, T_CRIU_DUMP),
            false,
            small.then_some(1.02),
        );
        add(
            "restore: eager (library call) vs criu restore",
            (PRESTORE, T_LIB_RESTORE),
            (PRESTORE, T_CRIU_RESTORE),
            false,
            Some(1.0),
        );
        add(
            "restore: eager vs criu restore",
            (PRESTORE, T_CPE_RESTORE),
            (PRESTORE, T_CRIU_RESTORE),
            false,
            Some(1.0),
        );
        add(
            "restore: lazy vs criu restore",
            (PRESTORE, T_CPE_LAZY),
            (PRESTORE, T_CRIU_RESTORE),
            false,
            None,
        );
        add(
            "container to a finished archive vs bare criu dump to images",
            (CKPT, T_CPE_CKPT),
            (DUMP, T_CRIU_DUMP),
            false,
            big.then_some(1.3),
        );
        add(
            "container checkpoint vs runc checkpoint + tar",
            (CKPT, T_CPE_CKPT),
            (CKPT, T_RUNC_CKPT),
            false,
            Some(0.5),
        );
        add(
            "container checkpoint vs podman",
            (CKPT, T_CPE_CKPT),
            (CKPT, T_PODMAN_CKPT),
            false,
            big.then_some(0.2),
        );
        add(
            "container checkpoint vs containerd",
            (CKPT, T_CPE_CKPT),
            (CKPT, T_CTRD_CKPT),
            false,
            big.then_some(0.2),
        );
        add(
            "workload frozen: container vs bare criu dump",
            (CKPT, T_CPE_CKPT),
            (DUMP, T_CRIU_DUMP),
            true,
            Some(1.1),
        );
        add(
            "workload frozen: container vs runc checkpoint",
            (CKPT, T_CPE_CKPT),
            (CKPT, T_RUNC_CKPT),
            true,
            None,
        );
        add(
            "container restore vs runc restore",
            (CRESTORE, T_CPE_RESTORE),
            (CRESTORE, T_RUNC_RESTORE),
            false,
            None,
        );
        add(
            "container restore vs podman",
            (CRESTORE, T_CPE_RESTORE),
            (CRESTORE, T_PODMAN_RESTORE),
            false,
            None,
        );
        add(
            "container restore vs containerd",
            (CRESTORE, T_CPE_RESTORE),
            (CRESTORE, T_CTRD_RESTORE),
            false,
            None,
        );
    }
    out
}

fn markdown(r: &Report) -> String {
    use std::fmt::Write;
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {} ({} cores, {:.0} GiB), kernel {}, CRIU {}; load average {} before, {} after; medians of {} runs.\n",
        m.date, m.cpu, m.cpus, m.memory_gib, m.kernel, m.criu, m.load_before, m.load_after, r.runs
    );
    let _ = writeln!(
        s,
        "| memory | operation | tool | median | min – max | frozen |\n|---:|---|---|---:|---:|---:|"
    );
    let mut ms: Vec<&Measure> = r.measures.iter().collect();
    let op_rank = |op: &str| {
        [DUMP, PRESTORE, CKPT, CRESTORE]
            .iter()
            .position(|o| *o == op)
    };
    ms.sort_by_key(|m| {
        (
            m.mib,
            op_rank(m.op),
            !m.tool.starts_with("cpengine"),
            m.tool.clone(),
        )
    });
    for x in ms {
        let _ = writeln!(
            s,
            "| {} MiB | {} | {} | {:.0} ms | {:.0} – {:.0} ms | {} |",
            x.mib,
            x.op,
            if x.tool.starts_with("cpengine") {
                format!("**{}**", x.tool)
            } else {
                x.tool.clone()
            },
            x.median_ms,
            x.min_ms,
            x.max_ms,
            x.frozen_median_ms
                .map(|f| format!("{f:.0} ms"))
                .unwrap_or_else(|| "–".into())
        );
    }
    let _ = writeln!(
        s,
        "\n| memory | ratio (medians, same run) | cpengine ÷ peer | target |\n|---:|---|---:|---|"
    );
    for x in &r.ratios {
        let target = match x.target {
            Some(t) if x.ratio <= t => format!("≤ {t} ✔"),
            Some(t) => format!("≤ {t} ✘"),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "| {} MiB | {}: {} ÷ {} | {:.2}× | {} |",
            x.mib, x.what, x.ours, x.peer, x.ratio, target
        );
    }
    s
}

fn plot(r: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let sizes: Vec<u32> = {
        let s: std::collections::BTreeSet<u32> = r.measures.iter().map(|m| m.mib).collect();
        s.into_iter().collect()
    };
    let (xmin, xmax) = (
        *sizes.first().unwrap_or(&16) as f64,
        *sizes.last().unwrap_or(&1024) as f64,
    );
    let palette = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0xe3, 0x77, 0xc2),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    for (panel, (title, ops)) in panels.iter().zip([
        (
            "checkpoint (process: images; container: archive)",
            [DUMP, CKPT],
        ),
        ("restore", [PRESTORE, CRESTORE]),
    ]) {
        let series: Vec<(String, Vec<(f64, f64)>)> = {
            let mut by: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
            for m in r.measures.iter().filter(|m| ops.contains(&m.op)) {
                let label = if m.op.starts_with("process") {
                    format!("{} (process)", m.tool)
                } else {
                    format!("{} (container)", m.tool)
                };
                by.entry(label)
                    .or_default()
                    .push((m.mib as f64, m.median_ms));
            }
            by.into_iter()
                .map(|(k, mut v)| {
                    v.sort_by(|a, b| a.0.total_cmp(&b.0));
                    (k, v)
                })
                .collect()
        };
        let ymax = series
            .iter()
            .flat_map(|(_, v)| v.iter().map(|p| p.1))
            .fold(10.0, f64::max)
            * 1.5;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(
                (xmin * 0.8..xmax * 1.25).log_scale(),
                (10.0f64..ymax).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_desc("workload memory (MiB)")
            .y_desc("median time (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .draw()?;
        for (i, (label, pts)) in series.iter().enumerate() {
            let color = if label.starts_with("cpengine") {
                palette[i % 2]
            } else {
                palette[2 + i % (palette.len() - 2)]
            };
            let style = if label.starts_with("cpengine") {
                color.stroke_width(3)
            } else {
                color.stroke_width(2)
            };
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], style));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .label_font(("sans-serif", 11))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
