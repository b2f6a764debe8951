//! The undo list of a container restore in progress: everything it created goes if it fails
//! (or, should the engine die, the journal lets the next start undo it).

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::container::journal;
use crate::container::state::StateRoot;
use crate::error::{Error, Result};

/// Undo list for a restore in progress.
#[derive(Default)]
pub(crate) struct Cleanup {
    pub(crate) mounted: Option<PathBuf>,
    pub(crate) cgroups: BTreeMap<String, PathBuf>,
    dirs: Vec<PathBuf>,
    /// A namespace the restore joined: CRIU may have left its network lock in it.
    pub(crate) netns: Option<PathBuf>,
    pub(crate) armed: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Whatever CRIU left of the tree (half-restored, stopped, or already running past
        // pre-resume) lives in the container's cgroups: nothing of a failed restore survives.
        let killed = crate::cgroups::kill_all(&self.cgroups);
        if killed > 0 {
            tracing::warn!(killed, "killed the tasks of a failed restore");
        }
        if let Some(ns) = &self.netns
            && let Err(e) = crate::netlock::unlock(ns)
        {
            tracing::error!(netns = %ns.display(), error = %e, "removing criu's network lock failed");
        }
        if let Some(m) = &self.mounted {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        let left = crate::cgroups::remove_all(&self.cgroups);
        if !left.is_empty() {
            tracing::warn!(?left, "cgroups of a failed restore could not be removed");
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Journals the restore of `id` and creates its run and lib directories (0700), both listed
/// for removal: the journal entry and the armed undo list of the restore.
pub(crate) fn start(
    state: &StateRoot,
    id: &str,
    run_dir: &Path,
    lib_dir: &Path,
) -> Result<(journal::Entry, Cleanup)> {
    // If this process dies before the record is written, the next engine start undoes what is
    // listed here (see `journal`; `restore_archive` journals its extraction itself).
    let journal = journal::begin(
        state,
        journal::InFlight::restore(id, vec![run_dir.to_path_buf(), lib_dir.to_path_buf()]),
    )
    .map_err(Error::io("writing the restore journal"))?;
    let mut cleanup = Cleanup::default();
    cleanup.armed = true;
    for d in [run_dir, lib_dir] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(d)
            .map_err(Error::io(format!("creating {}", d.display())))?;
        cleanup.dirs.push(d.to_path_buf());
    }
    Ok((journal, cleanup))
}
