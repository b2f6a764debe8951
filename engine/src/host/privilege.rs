//! Least privilege for the commands that only read checkpoints.
//!
//! A checkpoint archive holds every memory page of a workload and is parsed from untrusted
//! bytes. Commands that only look at archives and images (`cpengine inspect`, `cpengine image
//! build|ls|inspect`) need none of root's powers except reading files that belong to someone
//! else, so they give up every other capability before any input is touched:
//!
//! * kept: `CAP_DAC_READ_SEARCH` — read any file and search any directory. An archive the
//!   kubelet wrote is 0600 and may belong to another user; the image store is root's.
//!   Everything these commands write (temp extraction directories, the image store) belongs to
//!   the user they run as, so writing needs no capability.
//! * dropped, among others: `CAP_DAC_OVERRIDE` (write anywhere), `CAP_CHOWN`, `CAP_FOWNER`,
//!   `CAP_FSETID`, `CAP_MKNOD` (device nodes), `CAP_SETUID`/`CAP_SETGID`, `CAP_SYS_ADMIN`
//!   (mounts, namespaces), `CAP_SYS_PTRACE`, `CAP_NET_ADMIN`, `CAP_SYS_MODULE`. A bug in a parser
//!   can then at worst read files, not plant a setuid binary, a device node or a mount.
//!
//! The effective, permitted, inheritable and ambient sets are reduced, and the bounding set too
//! (while `CAP_SETPCAP` is still held), so not even an `execve` of a set-uid-root program
//! brings them back; `no_new_privs` is set for the same reason. Capabilities are per thread:
//! this must run before any other thread exists (the CLI calls it before it builds its async
//! runtime), so that every thread created afterwards inherits the reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// The capabilities a read-only command keeps.
pub const READ_ONLY_KEEP: &[Capability] = &[Capability::CAP_DAC_READ_SEARCH];

/// What could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("changing the {set} capability set")]
    Caps {
        set: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("setting no_new_privs")]
    NoNewPrivs { source: std::io::Error },
}

/// The capabilities the calling thread holds after the drop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    pub effective: Vec<String>,
    pub permitted: Vec<String>,
    pub bounding: Vec<String>,
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

fn caps_err(set: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { set, source }
}

/// Reduces the calling thread (and every thread it creates later) to `keep` (intersected with
/// what it has). A process without privileges has nothing to drop and succeeds.
pub fn drop_to(keep: &[Capability]) -> Result<Dropped, PrivilegeError> {
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("permitted"))?;
    let keep: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    // The bounding set needs CAP_SETPCAP, so it goes first.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("bounding"))?;
        for c in bounding.iter().filter(|c| !keep.contains(c)) {
            caps::drop(None, CapSet::Bounding, *c).map_err(caps_err("bounding"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(caps_err("inheritable"))?;
    // Effective must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("effective"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("permitted"))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) takes plain integers and touches no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        return Err(PrivilegeError::NoNewPrivs {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(Dropped {
        effective: names(&caps::read(None, CapSet::Effective).map_err(caps_err("effective"))?),
        permitted: names(&caps::read(None, CapSet::Permitted).map_err(caps_err("permitted"))?),
        bounding: names(&caps::read(None, CapSet::Bounding).map_err(caps_err("bounding"))?),
    })
}

/// Drops to [`READ_ONLY_KEEP`].
pub fn drop_to_read_only() -> Result<Dropped, PrivilegeError> {
    drop_to(READ_ONLY_KEEP)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in a thread of its own: capabilities are per thread, and the test harness's other
    /// threads keep theirs.
    #[test]
    fn a_thread_keeps_only_what_it_asked_for() {
        let root = nix::unistd::geteuid().is_root();
        let d = std::thread::spawn(drop_to_read_only)
            .join()
            .unwrap()
            .expect("dropping capabilities");
        if root {
            assert_eq!(d.effective, vec!["CAP_DAC_READ_SEARCH".to_string()]);
            assert_eq!(d.permitted, d.effective);
            assert_eq!(d.bounding, d.effective);
        } else {
            assert!(d.effective.is_empty(), "{d:?}");
        }
    }
}
