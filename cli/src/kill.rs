//! `cpengine kill`: a signal to a container cpengine restored.

use std::process::ExitCode;

use cpengine::Engine;
use cpengine::container::StateRoot;
use cpengine::container::manage;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container id.
    id: String,
    /// Signal name or number.
    #[arg(default_value = "TERM")]
    signal: String,
}

pub fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let sig = manage::parse_signal(&a.signal)
        .ok_or_else(|| anyhow::anyhow!("unknown signal {:?}", a.signal))?;
    Engine::kill_container(state, &a.id, sig)?;
    Ok(ExitCode::SUCCESS)
}
