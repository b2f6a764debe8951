//! Fault injection for the reliability tests: a point at which the engine itself kills the
//! CRIU worker of a request, so tests can prove that a checkpoint or a restore that dies at any
//! moment leaves the workload running and nothing behind.
//!
//! It is compiled in always and inert unless an option asks for it (`fault` in
//! [`crate::CheckpointOptions`], [`crate::RestoreOptions`] and the container options): nothing
//! reads it from the environment, so a production caller cannot trip it by accident.
//!
//! The worker is killed with SIGKILL, the one signal CRIU cannot handle: whatever it holds
//! (a frozen cgroup, ptrace-seized tasks, a parasite inside a task, an iptables lock in the
//! tree's network namespace, half-restored tasks) is left exactly as it was at that instant,
//! and the engine's recovery has to deal with it.

use std::time::Duration;

/// Where a request's CRIU worker is killed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultPoint {
    /// SIGKILL the worker when it reaches this hook (e.g. `post-dump`), before the hook is
    /// answered. A hook the request never reaches injects nothing.
    KillCriuAtHook(String),
    /// SIGKILL the worker this long after the request was sent (if it is still running).
    KillCriuAfter(Duration),
}

impl FaultPoint {
    /// Whether the fault fires at the hook `script`.
    pub fn fires_at(&self, script: &str) -> bool {
        matches!(self, Self::KillCriuAtHook(h) if h == script)
    }
}

impl std::fmt::Display for FaultPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KillCriuAtHook(h) => write!(f, "kill criu at {h}"),
            Self::KillCriuAfter(d) => write!(f, "kill criu after {d:?}"),
        }
    }
}

/// The hooks of a dump, in the order CRIU reaches them (`network-lock` only for a tree with its
/// own network namespace).
pub const DUMP_HOOKS: &[&str] = &["pre-dump", "network-lock", "query-ext-files", "post-dump"];

/// The hooks of a restore at which a kill is injected (`setup-namespaces` only when namespaces
/// are restored).
pub const RESTORE_HOOKS: &[&str] = &[
    "pre-restore",
    "setup-namespaces",
    "post-restore",
    "pre-resume",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_only_at_its_hook() {
        let f = FaultPoint::KillCriuAtHook("post-dump".into());
        assert!(f.fires_at("post-dump"));
        assert!(!f.fires_at("pre-dump"));
        assert!(!FaultPoint::KillCriuAfter(Duration::from_millis(5)).fires_at("post-dump"));
        assert_eq!(f.to_string(), "kill criu at post-dump");
    }
}
