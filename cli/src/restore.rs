//! `cpengine restore`: a container from a checkpoint archive or image, or a process tree from
//! a CRIU images directory.

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::ContainerRestoreOptions;
use cpengine::container::StateRoot;
use cpengine::rootfs::Base;
use cpengine::{Engine, RestoreOptions};

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
    /// Restore a process tree from this CRIU images directory instead.
    #[arg(long, short = 'D', conflicts_with_all = ["source", "id"])]
    pub images_dir: Option<PathBuf>,
    /// Restore established TCP connections (needed if the checkpoint had them).
    #[arg(long)]
    pub tcp_established: bool,
    /// The tree was dumped as a shell job (process restore).
    #[arg(long)]
    pub shell_job: bool,
    /// Restore connected unix sockets whose peer was outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Restore file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// Lazy restore: run the restored tree at once and copy its memory in on demand and in
    /// the background (a `criu lazy-pages` daemon that exits when done; needs userfaultfd,
    /// see `cpengine check`).
    #[arg(long)]
    pub lazy: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let engine = Engine::new().await?;
    if let Some(images_dir) = a.images_dir {
        let mut opts = RestoreOptions::new(images_dir);
        opts.tcp_established = a.tcp_established;
        opts.shell_job = a.shell_job;
        opts.ext_unix_sk = a.ext_unix_sk;
        opts.file_locks = a.file_locks;
        opts.lazy_pages = a.lazy;
        let report = engine.restore(opts).await?;
        crate::output::report(&report, a.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let source = a.source.unwrap_or_default();
    let id =
        a.id.ok_or_else(|| anyhow::anyhow!("restoring a container needs --id <NEW_ID>"))?;
    let mut o = ContainerRestoreOptions::new(id, state.clone());
    o.base = a.rootfs_base.map(Base::from_path);
    o.base_image = a.rootfs_image;
    o.log_path = a.log;
    o.tcp_established = a.tcp_established;
    o.ext_unix_sk = a.ext_unix_sk;
    o.file_locks = a.file_locks;
    o.lazy_pages = a.lazy;
    o.binds.map = a.mounts.into_iter().collect();
    o.binds.trust_archive = a.trust_archive_binds || a.trust_archive;
    o.policy = policy(
        &a.cap_add,
        a.privileged,
        &a.devices,
        a.seccomp.into(),
        a.trust_archive,
    );
    if a.trust_archive {
        eprintln!(
            "WARNING: --trust-archive: the checkpoint is restored WITHOUT verification; its images decide the container's privileges"
        );
    }
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

/// The restore policy of the command line: the runtime default with the opt-ins.
fn policy(
    cap_add: &[cpengine::policy::CapSet],
    privileged: bool,
    devices: &[PathBuf],
    seccomp: cpengine::policy::SeccompRequirement,
    trust_archive: bool,
) -> cpengine::policy::RestorePolicy {
    let mut p = cpengine::policy::RestorePolicy::runtime_default();
    if privileged {
        p = p.privileged();
    }
    for c in cap_add {
        p.capabilities.0 |= c.0;
    }
    p.devices = devices.to_vec();
    p.seccomp = seccomp;
    p.trust_archive = trust_archive;
    p
}
