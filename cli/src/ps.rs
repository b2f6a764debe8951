//! `cpengine ps`: the containers cpengine restored.

use std::process::ExitCode;

use cpengine::Engine;
use cpengine::container::StateRoot;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let list = Engine::list_containers(state);
    if a.json {
        crate::output::json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:>8}  {:<8}  {:<35}  RESTORED FROM",
        "ID", "PID", "STATUS", "CREATED"
    );
    for c in list {
        println!(
            "{:<24} {:>8}  {:<8}  {:<35}  {}",
            c.id,
            c.pid,
            c.status.to_string(),
            c.created,
            c.restored_from.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
