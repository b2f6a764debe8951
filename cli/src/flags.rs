//! The CRIU flags of the verbs that checkpoint or restore (`dump`, `checkpoint`, `restore`):
//! one clap struct each verb flattens, and the one conversion into the engine's
//! [`cpengine::CriuFlags`].

use cpengine::CriuFlags;

use crate::values::NetworkLock;

/// CRIU flags every checkpoint and restore verb takes.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct CriuArgs {
    /// Checkpoint established TCP connections (a restore needs it if the checkpoint had them).
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow connected unix sockets whose peer is outside the tree or container.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Checkpoint (or restore) file locks.
    #[arg(long)]
    pub file_locks: bool,
}

/// The flags only some verbs take (their syntax differs per verb: `dump --leave-running`
/// is a switch, `checkpoint --leave-running true|false` defaults to true).
#[derive(Debug, Clone, Copy, Default)]
pub struct VerbFlags {
    pub leave_running: bool,
    pub shell_job: bool,
    pub network_lock: Option<NetworkLock>,
}

impl CriuArgs {
    /// The engine's flags for this command line: the one place CLI flags become
    /// [`CriuFlags`] (timeout and log level stay at the engine's defaults).
    pub fn into_flags(self, verb: VerbFlags) -> CriuFlags {
        CriuFlags {
            leave_running: verb.leave_running,
            tcp_established: self.tcp_established,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: self.file_locks,
            shell_job: verb.shell_job,
            network_lock: verb.network_lock.map(Into::into),
            ..CriuFlags::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_reaches_the_engine() {
        let args = CriuArgs {
            tcp_established: true,
            ext_unix_sk: true,
            file_locks: true,
        };
        let f = args.into_flags(VerbFlags {
            leave_running: true,
            shell_job: true,
            network_lock: Some(NetworkLock::Nftables),
        });
        assert!(f.leave_running && f.tcp_established && f.ext_unix_sk && f.file_locks);
        assert!(f.shell_job);
        assert_eq!(
            f.network_lock,
            Some(cpengine::options::NetworkLock::Nftables)
        );
        assert_eq!(f.timeout, cpengine::options::DEFAULT_TIMEOUT);
        assert_eq!(
            CriuArgs::default().into_flags(VerbFlags::default()),
            CriuFlags::default()
        );
    }
}
