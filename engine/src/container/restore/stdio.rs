//! Step 4 of a restore: the container's stdio. The pipes recorded in `descriptors.json` are
//! replaced (`inherit_fd`) by new pipes whose read ends go to a detached log relay
//! ([`crate::container::relay`]); stdin becomes a pipe whose writer is gone (end of file).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::container::descriptors::read_descriptors;
use crate::error::{Error, Result};
use crate::options::InheritFd;

/// The relay writing the container's output into its log, and our copies of the write ends
/// of its pipes.
pub(crate) struct Relay {
    pid: i32,
    /// They must go once CRIU has the tree's, or the relay never sees end of file.
    writers: [OwnedFd; 2],
}

impl Relay {
    /// Drops our copies of the pipes' write ends; returns the relay's pid.
    pub(crate) fn let_go(self) -> i32 {
        let Self { pid, writers } = self;
        drop(writers);
        pid
    }
}

/// Stops a relay.
pub(crate) fn kill_relay(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Error::io("creating stdio pipes")(e.into()))
}

/// New pipes for the stdio pipes recorded in `images_dir` (what CRIU hands the tree in their
/// place, by their `pipe:[…]` key), their read ends relayed into `log_path` by `relay_exe`
/// (default: [`crate::container::relay::default_exe`]).
pub(crate) fn start(
    images_dir: &Path,
    relay_exe: Option<&PathBuf>,
    log_path: &Path,
) -> Result<(Vec<InheritFd>, Relay)> {
    let descriptors = read_descriptors(images_dir);
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let mut inherit = Vec::new();
    let mut keys_seen: Vec<String> = Vec::new();
    for (i, key) in descriptors.iter().enumerate() {
        if !key.starts_with("pipe:") || keys_seen.contains(key) {
            continue;
        }
        keys_seen.push(key.clone());
        let fd: OwnedFd = match i {
            // stdin: a pipe whose writer is gone reads as end of file.
            0 => {
                let (r, w) = pipe()?;
                drop(w);
                r
            }
            1 => out_w
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::io("dup"))?,
            _ => err_w
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::io("dup"))?,
        };
        inherit.push(InheritFd {
            key: key.clone(),
            fd,
        });
    }
    let relay_exe = match relay_exe {
        Some(p) => p.clone(),
        None => crate::container::relay::default_exe()
            .map_err(Error::io("locating the log relay binary"))?,
    };
    let relay_pid = crate::container::relay::spawn(&relay_exe, log_path, out_r, err_r)
        .map_err(Error::io("starting the log relay"))?;
    Ok((
        inherit,
        Relay {
            pid: relay_pid,
            writers: [out_w, err_w],
        },
    ))
}
