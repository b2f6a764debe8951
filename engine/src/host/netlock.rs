//! CRIU's network lock, and removing it when CRIU could not.
//!
//! When CRIU dumps a tree that has its own network namespace (every runc container), it
//! "locks the network" right after the `network-lock` hook: with the default iptables method
//! it adds a chain `CRIU` to the namespace's `filter` table, jumped to first from `INPUT` and
//! `OUTPUT`, that drops every packet not marked by CRIU itself (nftables method: a table
//! `inet CRIU-<pid>` doing the same). It removes the lock when the dump ends (`leave_running`)
//! or fails. A CRIU that is killed in between cannot: the workload would go on running with
//! its network silently dead. [`unlock`] removes such a leftover lock after a failed dump, a
//! failed restore into an existing namespace, or an abandoned checkpoint found at start-up.
//!
//! The tools run with only their network namespace switched (`setns` between fork and exec),
//! and never in the engine's own namespace: a namespace that turns out to be ours is left
//! alone, since CRIU never locks the namespace it runs in.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The chain CRIU's iptables lock adds.
const IPTABLES_CHAIN: &str = "CRIU";
/// Prefix of the table CRIU's nftables lock adds (`inet CRIU-<pid>`).
const NFT_TABLE_PREFIX: &str = "CRIU";

/// What [`unlock`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Unlocked {
    /// `iptables`/`ip6tables` whose `CRIU` chain was removed.
    pub iptables: Vec<String>,
    /// nftables tables removed.
    pub nft_tables: Vec<String>,
}

impl Unlocked {
    pub fn is_empty(&self) -> bool {
        self.iptables.is_empty() && self.nft_tables.is_empty()
    }
}

/// The network namespace of `pid`, if it is not the engine's own.
pub fn foreign_netns_of(pid: i32) -> Option<PathBuf> {
    let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
    is_foreign(&p).then_some(p)
}

fn is_foreign(netns: &Path) -> bool {
    let ours = std::fs::metadata("/proc/self/ns/net").map(|m| (m.dev(), m.ino()));
    let theirs = std::fs::metadata(netns).map(|m| (m.dev(), m.ino()));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a != b)
}

/// Whether the namespace at `netns` (a `/proc/PID/ns/net` or a bind-mounted namespace file)
/// carries CRIU's iptables or nftables lock.
pub fn is_locked(netns: &Path) -> io::Result<bool> {
    if !is_foreign(netns) {
        return Ok(false);
    }
    let ns: OwnedFd = std::fs::File::open(netns)?.into();
    for tool in ["iptables", "ip6tables"] {
        if run_in(&ns, tool, &["-w", "-n", "-L", IPTABLES_CHAIN])?.is_some_and(|o| o.0) {
            return Ok(true);
        }
    }
    Ok(!criu_nft_tables(&ns)?.is_empty())
}

/// Removes CRIU's network lock from the namespace at `netns`, if it has one. Does nothing for
/// the engine's own namespace or a namespace that no longer exists.
pub fn unlock(netns: &Path) -> io::Result<Unlocked> {
    let mut done = Unlocked::default();
    if !is_foreign(netns) {
        return Ok(done);
    }
    let ns: OwnedFd = match std::fs::File::open(netns) {
        Ok(f) => f.into(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(e),
    };
    for tool in ["iptables", "ip6tables"] {
        if !run_in(&ns, tool, &["-w", "-n", "-L", IPTABLES_CHAIN])?.is_some_and(|o| o.0) {
            continue;
        }
        // The jumps first (CRIU inserts one per hook chain; delete until none is left), then
        // the chain's rules, then the chain.
        for hook in ["INPUT", "OUTPUT"] {
            for _ in 0..16 {
                let deleted = run_in(&ns, tool, &["-w", "-D", hook, "-j", IPTABLES_CHAIN])?
                    .is_some_and(|o| o.0);
                if !deleted {
                    break;
                }
            }
        }
        run_in(&ns, tool, &["-w", "-F", IPTABLES_CHAIN])?;
        match run_in(&ns, tool, &["-w", "-X", IPTABLES_CHAIN])? {
            Some((true, _)) => done.iptables.push(tool.to_string()),
            Some((false, err)) => {
                return Err(io::Error::other(format!(
                    "{tool}: removing chain {IPTABLES_CHAIN} in {}: {}",
                    netns.display(),
                    err.trim()
                )));
            }
            None => {}
        }
    }
    for table in criu_nft_tables(&ns)? {
        if let Some((true, _)) = run_in(&ns, "nft", &["delete", "table", "inet", &table])? {
            done.nft_tables.push(format!("inet {table}"));
        }
    }
    if !done.is_empty() {
        tracing::warn!(netns = %netns.display(), ?done, "removed a network lock criu left behind");
    }
    Ok(done)
}

/// Names of `inet CRIU*` tables in the namespace.
fn criu_nft_tables(ns: &OwnedFd) -> io::Result<Vec<String>> {
    let Some((true, out)) = run_in_stdout(ns, "nft", &["list", "tables"])? else {
        return Ok(Vec::new());
    };
    Ok(out
        .lines()
        .filter_map(|l| l.strip_prefix("table inet "))
        .map(str::trim)
        .filter(|t| t.starts_with(NFT_TABLE_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Runs `tool args` inside the namespace `ns`; `None` if the tool is not installed (then CRIU
/// could not have used it either). Returns success and stderr.
fn run_in(ns: &OwnedFd, tool: &str, args: &[&str]) -> io::Result<Option<(bool, String)>> {
    Ok(output_in(ns, tool, args)?.map(|o| (o.status.success(), lossy(&o.stderr))))
}

fn run_in_stdout(ns: &OwnedFd, tool: &str, args: &[&str]) -> io::Result<Option<(bool, String)>> {
    Ok(output_in(ns, tool, args)?.map(|o| (o.status.success(), lossy(&o.stdout))))
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn output_in(ns: &OwnedFd, tool: &str, args: &[&str]) -> io::Result<Option<std::process::Output>> {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec the closure only calls setns(2) on an fd that is open in
    // the child (close-on-exec fds stay open until the exec); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.output() {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_namespace_is_never_touched() {
        let own = Path::new("/proc/self/ns/net");
        assert!(!is_foreign(own));
        assert!(foreign_netns_of(std::process::id() as i32).is_none());
        assert_eq!(unlock(own).unwrap(), Unlocked::default());
        assert!(!is_locked(own).unwrap());
    }
}
