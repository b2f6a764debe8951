//! `cpengine exec`: a command inside a container cpengine restored, confined like `runc exec`
//! (the container's cgroups, namespaces, capabilities and no_new_privs).

use std::process::ExitCode;

use cpengine::container::exec::ExecUser;
use cpengine::container::state::StateRoot;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Container id.
    id: String,
    /// Environment variable for the command (repeatable); nothing else is passed on but a
    /// default PATH.
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long, default_value = "/")]
    cwd: String,
    /// UID[:GID] to run as (default: the container init's).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(a: Args, state: &StateRoot) -> anyhow::Result<ExitCode> {
    let mut env: Vec<(String, String)> = Vec::new();
    for e in &a.env {
        let (k, v) = e
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--env {e:?} is not KEY=VALUE"))?;
        env.push((k.to_string(), v.to_string()));
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    let user = match &a.user {
        None => None,
        Some(u) => {
            let (uid, gid) = match u.split_once(':') {
                Some((u, g)) => (u.parse::<u32>()?, g.parse::<u32>()?),
                None => {
                    let uid = u.parse::<u32>()?;
                    (uid, uid)
                }
            };
            Some(ExecUser {
                uid,
                gid,
                groups: Vec::new(),
            })
        }
    };
    let code = cpengine::container::exec::run(state, &a.id, a.cmd, env, a.cwd, user)?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
