//! `cpengine key`: the node key cpengine signs its checkpoint archives with.

use std::path::PathBuf;
use std::process::ExitCode;

use cpengine::Engine;
use cpengine::container::StateRoot;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Print the node's public key (`ed25519 <hex>`) and its key id, creating the key
    /// (<state lib>/keys/node.ed25519, mode 0600) if there is none yet.
    Show {
        /// Print JSON ({"algorithm", "public_key", "key_id", "path"}).
        #[arg(long)]
        json: bool,
    },
    /// Write the node's public key to FILE (or stdout), in the form `--trusted-key` reads: on
    /// another node, `cpengine restore --require-signed --trusted-key FILE` then accepts
    /// this node's checkpoints.
    Export {
        /// The file to write (created; not overwritten). Default: stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let key = Engine::node_key(state)?.public();
    let path = cpengine::archive::sign::node_key_path(&state.lib);
    match a.command {
        KeyCommand::Show { json } => {
            if json {
                crate::output::json(&serde_json::json!({
                    "algorithm": cpengine::archive::sign::ALGORITHM,
                    "public_key": key.to_line(),
                    "key_id": key.key_id(),
                    "path": path,
                }))?;
            } else {
                println!("{}", key.to_line());
                println!("key id {} ({})", key.key_id(), path.display());
            }
        }
        KeyCommand::Export { output } => {
            let text = format!("# cpengine node key {}\n{}\n", key.key_id(), key.to_line());
            match output {
                Some(p) => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&p)
                        .map_err(|e| anyhow::anyhow!("creating {}: {e}", p.display()))?;
                    f.write_all(text.as_bytes())?;
                }
                None => print!("{text}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
