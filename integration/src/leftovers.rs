//! What a restore may leave behind: the check that a failed or refused container restore left
//! nothing, and a guard that deletes a container a test restored with the `cpengine` CLI.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use cpengine::container::state::StateRoot;

use crate::faults::{mounts_under, names_in, restore_cgroups};

/// Asserts that nothing of the container restore `id` is left under `state`: no container
/// record, run or lib directory, no extraction under `lib/restores`, no mount under the state
/// root and none of the cgroups a restore as `id` gets. `what` names the case in a failure.
pub fn assert_restore_left_nothing(state: &StateRoot, id: &str, what: &str) {
    assert!(
        !state.container_record(id).exists(),
        "{what}: a record was left"
    );
    assert!(
        !state.container_run_dir(id).exists(),
        "{what}: run dir left"
    );
    assert!(
        !state.container_lib_dir(id).exists(),
        "{what}: lib dir left"
    );
    assert!(
        names_in(&state.lib.join("restores")).is_empty(),
        "{what}: extracted checkpoint left: {:?}",
        names_in(&state.lib.join("restores"))
    );
    let root = state.run.parent().expect("a state root");
    assert!(
        mounts_under(root).is_empty(),
        "{what}: mounts left: {:?}",
        mounts_under(root)
    );
    for cg in restore_cgroups(id) {
        assert!(!cg.exists(), "{what}: cgroup {} left", cg.display());
    }
}

/// Deletes a container restored with the `cpengine` CLI (`cpengine --state-root <state> delete
/// --force <id>`) when dropped, also when an assertion fails first. A test that got that far
/// deleted it already: the second delete's complaint is not shown.
#[derive(Debug)]
pub struct CliRestored {
    pub state: PathBuf,
    pub id: String,
}

impl CliRestored {
    pub fn new(state: impl Into<PathBuf>, id: &str) -> Self {
        Self {
            state: state.into(),
            id: id.to_string(),
        }
    }
}

impl Drop for CliRestored {
    fn drop(&mut self) {
        let _ = Command::new(crate::cpengine_bin())
            .arg("--state-root")
            .arg(&self.state)
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}
