//! `cpengine ps`, `cpengine kill`, `cpengine delete`: containers cpengine restored.

use std::process::ExitCode;

use cpengine::container::manage;
use cpengine::container::state::StateRoot;

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct KillArgs {
    /// Container id.
    id: String,
    /// Signal name or number.
    #[arg(default_value = "TERM")]
    signal: String,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Container id.
    id: String,
    /// Kill the container first if it is running.
    #[arg(long, short)]
    force: bool,
}

pub fn ps(a: PsArgs, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let list = manage::list(state);
    if a.json {
        crate::print_json(&list)?;
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

pub fn kill(a: KillArgs, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let sig = manage::parse_signal(&a.signal)
        .ok_or_else(|| anyhow::anyhow!("unknown signal {:?}", a.signal))?;
    manage::kill(state, &a.id, sig)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(a: DeleteArgs, state: &StateRoot) -> anyhow::Result<ExitCode> {
    manage::delete(state, &a.id, a.force).await?;
    println!("{}", a.id);
    Ok(ExitCode::SUCCESS)
}
