//! `cpengine restore`: a container from a checkpoint archive or image, or a process tree from
//! a CRIU images directory.

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::ContainerRestoreOptions;
use cpengine::container::StateRoot;
use cpengine::rootfs::Base;
use cpengine::{Engine, RestoreOptions};

use crate::flags::{CriuArgs, VerbFlags};
use crate::output::table;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["source", "images_dir"])))]
pub struct Args {
    /// A checkpoint archive (plain, gzip or zstd), or a checkpoint image reference (local, or
    /// pulled from its registry).
    pub source: Option<String>,
    /// Id of the restored container (with an archive or image).
    #[arg(long, requires = "source")]
    pub id: Option<String>,
    /// Base filesystem (directory or tarball) the container's rootfs diff applies to. Default:
    /// --rootfs-image, else the image the checkpoint names exactly, from the image store.
    #[arg(long, value_name = "DIR|TAR", requires = "source")]
    pub rootfs_base: Option<PathBuf>,
    /// Base image (a reference or id in the image store) the container's rootfs diff applies
    /// to, instead of the one the checkpoint names (which is only matched exactly).
    #[arg(
        long,
        value_name = "NAME",
        requires = "source",
        conflicts_with = "rootfs_base"
    )]
    pub rootfs_image: Option<String>,
    /// Where the container's output goes (CRI log format).
    #[arg(long, value_name = "FILE", requires = "source")]
    pub log: Option<PathBuf>,
    /// Allow plain HTTP to the registry when pulling a checkpoint image.
    #[arg(long, requires = "source")]
    pub insecure: bool,
    /// Bind this host path at DEST, where the checkpoint had a bind mount (repeatable). The
    /// checkpoint's own host paths are not used unless --trust-archive-binds; files a runtime
    /// manages (/etc/hosts, /etc/resolv.conf, /etc/hostname, …) are made fresh.
    #[arg(long = "mount", value_name = "SRC:DEST", requires = "source", value_parser = cpengine::container::binds::parse_mount)]
    pub mounts: Vec<(PathBuf, PathBuf)>,
    /// Use the host paths the checkpoint names as its bind mounts' sources (only for an
    /// archive you trust: it decides what of the host the container sees).
    #[arg(long, requires = "source")]
    pub trust_archive_binds: bool,
    /// Allow this capability beyond the runtime default set (repeatable; `ALL` for every
    /// one). The checkpoint's threads may hold only the capabilities allowed.
    #[arg(long = "cap-add", value_name = "CAP", requires = "source", value_parser = cpengine::policy::parse_cap)]
    pub cap_add: Vec<cpengine::policy::CapSet>,
    /// Allow the restored tasks to be in this namespace of the host (repeatable; net, ipc,
    /// uts or pid): for a container that ran with the host's network (a hostNetwork pod),
    /// IPC or pid namespace. Without it, a checkpoint whose tasks were in the host's
    /// namespace is refused.
    #[arg(
        long = "host-namespace",
        value_name = "NS",
        value_enum,
        requires = "source"
    )]
    pub host_namespaces: Vec<crate::values::HostNamespace>,
    /// Allow threads without no_new_privs (containers a runtime started without it, such as
    /// Podman's by default).
    #[arg(long, requires = "source")]
    pub allow_new_privs: bool,
    /// Allow a privileged container: every capability, no no_new_privs, any /dev device.
    #[arg(long, requires = "source")]
    pub privileged: bool,
    /// Allow this device beyond the standard /dev set (repeatable).
    #[arg(long = "device", value_name = "PATH", requires = "source")]
    pub devices: Vec<PathBuf>,
    /// Whether every restored thread must run under a seccomp filter.
    #[arg(long, value_enum, default_value_t, requires = "source")]
    pub seccomp: crate::values::Seccomp,
    /// Do not verify the checkpoint against the restore policy: you vouch for this archive
    /// (its images decide the workload's capabilities, mounts, devices and namespaces).
    /// Implies --trust-archive-binds.
    #[arg(long, requires = "source")]
    pub trust_archive: bool,
    /// Memory limit of the restored container, in bytes (suffixes k, m, g).
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes, requires = "source")]
    pub memory: Option<i64>,
    /// Most tasks the restored container may have.
    #[arg(long, value_name = "N", requires = "source")]
    pub pids_limit: Option<i64>,
    /// CPU shares (relative weight) of the restored container.
    #[arg(long, value_name = "N", requires = "source")]
    pub cpu_shares: Option<u64>,
    /// CPU quota in microseconds per 100 ms period.
    #[arg(long, value_name = "USEC", requires = "source")]
    pub cpu_quota: Option<i64>,
    /// Restore a process tree from this CRIU images directory instead.
    #[arg(long, short = 'D', conflicts_with_all = ["source", "id"])]
    pub images_dir: Option<PathBuf>,
    /// The tree was dumped as a shell job (process restore).
    #[arg(long)]
    pub shell_job: bool,
    #[command(flatten)]
    pub criu: CriuArgs,
    /// Lazy restore: run the restored tree at once and copy its memory in on demand and in
    /// the background (a `criu lazy-pages` daemon that exits when done; needs userfaultfd,
    /// see `cpengine check`).
    #[arg(long)]
    pub lazy: bool,
    /// Restore only an archive signed by this node's key (<state lib>/keys/node.ed25519,
    /// which `cpengine checkpoint` signs with) or by a --trusted-key: checked while it is
    /// extracted, before anything is created (an unsigned archive, another key, or a member
    /// added, removed or changed is refused). The images are still verified (see
    /// --trust-archive).
    #[arg(long, requires = "source")]
    pub require_signed: bool,
    /// A public key file (`ed25519 <hex>`, as `cpengine key show` prints it) whose
    /// signatures are trusted too, such as another node's (repeatable; needs
    /// --require-signed).
    #[arg(long = "trusted-key", value_name = "FILE", requires = "require_signed")]
    pub trusted_keys: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let engine = Engine::new().await?;
    // --shell-job is for a process tree: a container is never a shell job.
    let flags = a.criu.into_flags(VerbFlags {
        shell_job: a.shell_job && a.images_dir.is_some(),
        ..VerbFlags::default()
    });
    if let Some(images_dir) = a.images_dir {
        let mut opts = RestoreOptions::new(images_dir);
        opts.flags = flags;
        opts.lazy_pages = a.lazy;
        let report = engine.restore(opts).await?;
        crate::output::report(&report, a.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let policy = policy(&a);
    // A file named on the command line is an archive: the engine takes only absolute paths
    // as files (anything else is an image reference).
    let source = a.source.unwrap_or_default();
    let source = match std::path::Path::new(&source) {
        p if p.is_file() => std::path::absolute(p)?.display().to_string(),
        _ => source,
    };
    let id =
        a.id.ok_or_else(|| anyhow::anyhow!("restoring a container needs --id <NEW_ID>"))?;
    let mut o = ContainerRestoreOptions::new(id, state.clone());
    o.base = a.rootfs_base.map(Base::from_path);
    o.base_image = a.rootfs_image;
    o.log_path = a.log;
    o.flags = flags;
    o.lazy_pages = a.lazy;
    o.policy = policy;
    o.binds.map = a.mounts.into_iter().collect();
    o.binds.trust_archive = a.trust_archive_binds || a.trust_archive;
    o.containment.resources = cpengine::container::containment::Resources {
        memory_limit: a.memory,
        pids_limit: a.pids_limit,
        cpu_shares: a.cpu_shares,
        cpu_quota: a.cpu_quota,
        cpu_period: None,
    };
    if a.require_signed {
        let mut keys = cpengine::archive::sign::TrustedKeys::default();
        keys.add(Engine::node_key(state)?.public());
        for f in &a.trusted_keys {
            keys.add(cpengine::archive::sign::PublicKey::from_file(f)?);
        }
        o.require_signed = Some(keys);
    }
    if a.trust_archive {
        eprintln!(
            "WARNING: --trust-archive: the checkpoint is restored WITHOUT verification; its images decide the container's privileges"
        );
    }
    let trusted = o.require_signed.as_ref().map(|k| k.keys().len());
    let report = engine
        .restore_container_from(&source, &o, a.insecure)
        .await?;
    if a.json {
        crate::output::json(&report)?;
    } else {
        println!("restored container {} as pid {}", report.id, report.pid);
        let v = &report.verification;
        if v.trusted_unverified {
            println!(
                "  verified NO: --trust-archive (the archive was not checked against any policy)"
            );
        } else {
            println!(
                "  verified {} threads, {} tasks' namespaces, {} mounts, {} tmpfs entries, {} files",
                v.threads, v.tasks, v.mounts, v.tmpfs_entries, v.files
            );
        }
        if let Some(n) = trusted {
            println!("  signature verified (one of {n} trusted keys)");
        }
        print!(
            "{}",
            table(
                &[
                    ("rootfs", report.rootfs.display()),
                    ("log", report.log_path.display()),
                ],
                0
            )
        );
        println!("phases");
        let rows = cpengine::report::phase_rows(&report.phases, report.total);
        print!("{}", table(&rows, 28));
        if let Some(s) = &report.criu.criu {
            println!("criu restore statistics");
            let rows = [
                ("restore time", cpengine::report::ms(s.restore)),
                ("pages restored", s.pages_restored.to_string()),
            ];
            print!("{}", table(&rows, 28));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The restore policy of the command line: the runtime defaults, widened only by the flags the
/// admin gave.
pub(crate) fn policy(a: &Args) -> cpengine::policy::RestorePolicy {
    let mut p = cpengine::policy::RestorePolicy::runtime_default();
    if a.privileged {
        p = p.privileged();
    }
    for c in &a.cap_add {
        p.capabilities.0 |= c.0;
    }
    if a.allow_new_privs {
        p.no_new_privs = false;
    }
    p.host_namespaces.extend(
        a.host_namespaces
            .iter()
            .map(|&n| cpengine::policy::Namespace::from(n)),
    );
    p.devices = a.devices.clone();
    p.seccomp = a.seccomp.into();
    p.trust_archive = a.trust_archive;
    p
}

/// A byte count with an optional k/m/g suffix (powers of 1024).
fn parse_bytes(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t.as_str(), 1),
    };
    num.parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{s:?} is not a byte count"))
}
