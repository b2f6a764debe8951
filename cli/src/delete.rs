//! `cpengine delete`: removes a container cpengine restored.

use std::process::ExitCode;

use cpengine::Engine;
use cpengine::container::StateRoot;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container id.
    id: String,
    /// Kill the container first if it is running.
    #[arg(long, short)]
    force: bool,
}

pub async fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    Engine::delete_container(state, &a.id, a.force).await?;
    println!("{}", a.id);
    Ok(ExitCode::SUCCESS)
}
