//! `cpengine-shim`: serves the CRI (RuntimeService + ImageService) on a unix socket, standalone
//! on runc or in front of another runtime, with `CheckpointContainer` served by cpengine.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// CRI runtime endpoint whose CheckpointContainer is served by cpengine.
#[derive(Debug, Parser)]
#[command(name = "cpengine-shim", version, about)]
struct Cli {
    /// The CRI socket to serve: unix:///path or a path (created 0600, its directory 0700; a
    /// stale socket is replaced). Other schemes are refused.
    #[arg(long, default_value = cpengine_shim::DEFAULT_SOCKET, value_parser = parse_listen)]
    listen: PathBuf,
    /// Where pods, containers and images are kept (default /var/lib/cpengine and
    /// /run/cpengine; a directory given here holds both, as lib/ and run/).
    #[arg(long, env = "CPENGINE_STATE_ROOT")]
    state_root: Option<PathBuf>,
    /// Proxy mode: forward every call to this runtime (unix:///run/containerd/containerd.sock)
    /// except CheckpointContainer.
    #[arg(long)]
    upstream: Option<String>,
    /// The upstream's runc root, where its containers are found for checkpointing.
    #[arg(long, default_value = cpengine_shim::CONTAINERD_K8S_RUNC_ROOT)]
    upstream_runc_root: PathBuf,
    /// Runtime name written to the archives of upstream containers.
    #[arg(long, default_value = "io.containerd.runc.v2")]
    upstream_runtime_name: String,
    /// The runc binary (standalone mode).
    #[arg(long, default_value = "runc")]
    runc: PathBuf,
    /// A directory CheckpointContainer may write archives in (repeatable; locations below it
    /// are allowed too). Archives hold every memory page of a workload: nowhere else.
    #[arg(long = "checkpoint-dir", value_name = "DIR", default_value = cpengine_shim::checkpoint::KUBELET_CHECKPOINT_DIR)]
    checkpoint_dirs: Vec<PathBuf>,
    /// Checkpoint/restore through the CRI: `off` (neither), `checkpoint-only` (no restore at
    /// CreateContainer), `verified` (restores checked against the request's security context
    /// before they start).
    #[arg(long, value_enum, default_value_t)]
    restore_mode: cpengine_shim::restore_mode::RestoreMode,
    /// Restore at CreateContainer only archives signed by this node's key
    /// (<state lib>/keys/node.ed25519, created on first use; CheckpointContainer signs with
    /// it) or by a --trusted-key. Checked while the archive is extracted, before anything is
    /// created; the restore policy is verified too.
    #[arg(long)]
    require_signed: bool,
    /// A public key file (`ed25519 <hex>`, as `cpengine key show` prints it) whose signatures
    /// are trusted too: another node's (repeatable; needs --require-signed).
    #[arg(long = "trusted-key", value_name = "FILE", requires = "require_signed")]
    trusted_keys: Vec<PathBuf>,
    /// More log output on stderr (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn parse_listen(s: &str) -> Result<PathBuf, String> {
    cpengine_shim::server::listen_path(s).map_err(|e| e.to_string())
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
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

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down; pods and containers keep running");
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let upstream = cli
        .upstream
        .as_deref()
        .map(cpengine_shim::proxy::upstream_path)
        .transpose()?;
    let state = cpengine::container::StateRoot::resolve(cli.state_root.as_deref());
    let require_signed = if cli.require_signed {
        let mut keys = cpengine::archive::sign::TrustedKeys::default();
        keys.add(cpengine::Engine::node_key(&state)?.public());
        for f in &cli.trusted_keys {
            keys.add(cpengine::archive::sign::PublicKey::from_file(f)?);
        }
        Some(keys)
    } else {
        None
    };
    let cfg = cpengine_shim::ShimConfig {
        listen: cli.listen,
        state,
        upstream,
        upstream_runc_root: cli.upstream_runc_root,
        upstream_runtime_name: cli.upstream_runtime_name,
        runc: cli.runc,
        exe: std::env::current_exe()?,
        checkpoint_dirs: cli.checkpoint_dirs,
        restore_mode: cli.restore_mode,
        require_signed,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(cpengine_shim::run(cfg, shutdown_signal()))?;
    Ok(())
}

fn main() -> ExitCode {
    cpengine::container::relay::run_if_relay();
    cpengine_shim::holder::run_if_holder();
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
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
    fn defaults_and_proxy_flags_parse() {
        let c = Cli::try_parse_from(["cpengine-shim"]).unwrap();
        assert_eq!(c.listen, PathBuf::from("/run/cpengine/cri.sock"));
        assert!(c.upstream.is_none());
        let c = Cli::try_parse_from([
            "cpengine-shim",
            "--listen",
            "/tmp/x.sock",
            "--upstream",
            "unix:///run/containerd/containerd.sock",
        ])
        .unwrap();
        assert_eq!(
            c.upstream.as_deref(),
            Some("unix:///run/containerd/containerd.sock")
        );
        assert_eq!(c.listen, PathBuf::from("/tmp/x.sock"));
        let c = Cli::try_parse_from(["cpengine-shim", "--listen", "unix:///run/x.sock"]).unwrap();
        assert_eq!(c.listen, PathBuf::from("/run/x.sock"));
        let e =
            Cli::try_parse_from(["cpengine-shim", "--listen", "tcp://127.0.0.1:9"]).unwrap_err();
        assert!(e.to_string().contains("is not supported"), "{e}");
    }

    #[test]
    fn provenance_flags_parse() {
        let c = Cli::try_parse_from(["cpengine-shim"]).unwrap();
        assert!(!c.require_signed && c.trusted_keys.is_empty());
        let c = Cli::try_parse_from([
            "cpengine-shim",
            "--require-signed",
            "--trusted-key",
            "/etc/a.pub",
            "--trusted-key",
            "/etc/b.pub",
        ])
        .unwrap();
        assert!(c.require_signed);
        assert_eq!(c.trusted_keys.len(), 2);
        // A trusted key means nothing without the requirement.
        assert!(Cli::try_parse_from(["cpengine-shim", "--trusted-key", "/etc/a.pub"]).is_err());
    }
}
