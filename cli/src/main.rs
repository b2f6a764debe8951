//! `cpengine`: the command-line interface over the engine library.

mod check;
mod checkpoint;
mod delete;
mod dump;
mod exec;
mod flags;
mod image;
mod inspect;
mod key;
mod kill;
mod list;
mod output;
mod progress;
mod ps;
mod restore;
mod values;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Checkpoint and restore processes and containers with CRIU, natively.
#[derive(Debug, Parser)]
#[command(name = "cpengine", version, about, propagate_version = true)]
struct Cli {
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Where cpengine keeps containers and images (default /var/lib/cpengine and
    /// /run/cpengine; a directory given here holds both, as lib/ and run/).
    #[arg(long, global = true, env = "CPENGINE_STATE_ROOT")]
    state_root: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that CRIU is installed, recent enough, and what this kernel supports.
    Check(check::Args),
    /// Checkpoint a process tree into a directory of CRIU images.
    Dump(dump::Args),
    /// Checkpoint a running container into a checkpoint archive (leaves it running by default).
    Checkpoint(checkpoint::Args),
    /// Restore a container from a checkpoint archive or image, or a process tree from CRIU
    /// images; it keeps running after cpengine exits.
    Restore(Box<restore::Args>),
    /// List the containers cpengine restored.
    Ps(ps::Args),
    /// Send a signal to a container cpengine restored.
    Kill(kill::Args),
    /// Run a command inside a container cpengine restored, confined like the container.
    Exec(exec::Args),
    /// Delete a container cpengine restored (unmounts its rootfs, removes cgroups and state).
    Delete(delete::Args),
    /// Show what a checkpoint archive or CRIU images directory holds: container, image, sizes,
    /// CRIU statistics, and with view flags its processes, files, sockets, mounts and memory.
    Inspect(inspect::Args),
    /// List the checkpoint archives in directories (default: the kubelet's
    /// /var/lib/kubelet/checkpoints): namespace, pod, container, engine, time, size.
    List(list::Args),
    /// Manage images: import, list, remove, build checkpoint images, push and pull.
    Image(image::Args),
    /// The node key checkpoint archives are signed with: show or export its public key.
    Key(key::Args),
}

impl Command {
    /// Commands that only read archives, images and the image store (see
    /// [`cpengine::privilege`]).
    fn read_only(&self) -> bool {
        match self {
            Self::Inspect(_) | Self::List(_) => true,
            Self::Image(a) => a.read_only(),
            _ => false,
        }
    }

    /// Commands that find, change or create containers.
    fn touches_containers(&self) -> bool {
        matches!(
            self,
            Self::Checkpoint(_)
                | Self::Restore(_)
                | Self::Ps(_)
                | Self::Kill(_)
                | Self::Exec(_)
                | Self::Delete(_)
        )
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    cpengine::container::relay::run_if_relay();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    // Commands that only read checkpoints give up root's powers before they read anything,
    // and before the async runtime starts threads (capabilities are per thread).
    if cli.command.read_only()
        && let Err(e) = cpengine::privilege::drop_to_read_only()
    {
        eprintln!("error: dropping privileges: {e:#}");
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = cpengine::container::StateRoot::resolve(cli.state_root.as_deref());
    // Every command that touches containers first repairs checkpoints a killed engine left
    // behind (a frozen container, criu's network lock, staging, partial archives).
    if cli.command.touches_containers() {
        cpengine::Engine::recover(&state);
    }
    let result = rt.block_on(async {
        match cli.command {
            Command::Ps(a) => ps::run(a, &state),
            Command::Kill(a) => kill::run(a, &state),
            Command::Exec(a) => exec::run(a, &state),
            Command::Delete(a) => delete::run(a, &state).await,
            Command::Check(a) => check::run(a).await,
            Command::Dump(a) => dump::run(a).await,
            Command::Restore(a) => restore::run(*a, &state).await,
            Command::Checkpoint(a) => checkpoint::run(a, &state).await,
            Command::Inspect(a) => inspect::run(a).await,
            Command::List(a) => list::run(a).await,
            Command::Image(a) => image::run(a, &state).await,
            Command::Key(a) => key::run(a, &state),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn dump_requires_images_dir() {
        assert!(Cli::try_parse_from(["cpengine", "dump", "12"]).is_err());
        let cli = Cli::try_parse_from([
            "cpengine",
            "dump",
            "12",
            "--images-dir",
            "/tmp/x",
            "--leave-running",
        ])
        .unwrap();
        match cli.command {
            Command::Dump(a) => {
                assert_eq!(a.pid, 12);
                assert!(a.leave_running);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn inspect_takes_an_archive_and_json() {
        let cli = Cli::try_parse_from(["cpengine", "inspect", "/x/a.tar", "--json"]).unwrap();
        match cli.command {
            Command::Inspect(a) => {
                assert_eq!(a.target, std::path::PathBuf::from("/x/a.tar"));
                assert!(a.view.json);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(Cli::try_parse_from(["cpengine", "inspect"]).is_err());
    }

    #[test]
    fn image_build_format_needs_output() {
        let base = ["cpengine", "image", "build", "a.tar", "--tag", "x"];
        assert!(Cli::try_parse_from(base).is_ok());
        let with = |extra: &[&'static str]| {
            Cli::try_parse_from(base.iter().copied().chain(extra.iter().copied()))
        };
        assert!(with(&["--format", "oci-dir"]).is_err());
        assert!(with(&["--output", "/x"]).is_err());
        assert!(with(&["--format", "oci-archive", "--output", "/x"]).is_ok());
        assert!(with(&["--format", "zip", "--output", "/x"]).is_err());
        let cli = Cli::try_parse_from(["cpengine", "image", "ls", "--state-root", "/s"]).unwrap();
        assert_eq!(cli.state_root.as_deref(), Some(std::path::Path::new("/s")));
    }

    #[test]
    fn pid_must_be_a_number() {
        assert!(Cli::try_parse_from(["cpengine", "dump", "abc", "--images-dir", "/x"]).is_err());
    }

    #[test]
    fn restore_policy_flags() {
        let base = ["cpengine", "restore", "a.tar", "--id", "x"];
        let with = |extra: &[&'static str]| {
            Cli::try_parse_from(base.iter().copied().chain(extra.iter().copied()))
        };
        assert!(with(&["--cap-add", "sys_ptrace", "--cap-add", "CAP_NET_ADMIN"]).is_ok());
        assert!(with(&["--cap-add", "CAP_NOPE"]).is_err());
        assert!(with(&["--seccomp", "required", "--device", "/dev/fuse"]).is_ok());
        assert!(with(&["--seccomp", "strictest"]).is_err());
        assert!(with(&["--privileged", "--trust-archive", "--allow-new-privs"]).is_ok());
    }

    #[test]
    fn restore_policy_follows_the_flags_only() {
        let policy = |extra: &[&str]| {
            let base = ["cpengine", "restore", "a.tar", "--id", "x"];
            match Cli::try_parse_from(base.iter().chain(extra.iter()))
                .unwrap()
                .command
            {
                Command::Restore(a) => crate::restore::policy(&a),
                _ => unreachable!(),
            }
        };
        let d = policy(&[]);
        assert_eq!(d, cpengine::policy::RestorePolicy::runtime_default());
        assert!(d.no_new_privs && !d.trust_archive);
        assert!(!policy(&["--allow-new-privs"]).no_new_privs);
        // CAP_SYS_ADMIN is capability 21: not in the default set, added by --cap-add alone.
        let admin = 1u64 << 21;
        assert_eq!(d.capabilities.0 & admin, 0);
        let p = policy(&["--cap-add", "CAP_SYS_ADMIN"]);
        assert_eq!(p.capabilities.0, d.capabilities.0 | admin);
        assert!(policy(&["--trust-archive"]).trust_archive);
        assert!(d.host_namespaces.is_empty());
        let h = policy(&["--host-namespace", "net", "--host-namespace", "uts"]);
        assert_eq!(
            h.host_namespaces.into_iter().collect::<Vec<_>>(),
            [
                cpengine::policy::Namespace::Net,
                cpengine::policy::Namespace::Uts
            ]
        );
        assert_eq!(
            policy(&["--seccomp", "required"]).seccomp,
            cpengine::policy::SeccompRequirement::Required
        );
    }
}
