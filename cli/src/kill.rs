//! `cpengine kill`: a signal to a container cpengine restored.

use std::process::ExitCode;

use cpengine::container::manage;
use cpengine::container::state::StateRoot;

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
    manage::kill(state, &a.id, sig)?;
    Ok(ExitCode::SUCCESS)
}
