//! What a restore may leave behind: the check that a failed or refused container restore left
//! nothing, and a guard that deletes a container a test restored with the `cpengine` CLI.

use std::path::{Path, PathBuf};
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

/// `cpengine --state-root <state> restore <archive> --id <id> --rootfs-base <base> <extra…>`:
/// whether it succeeded, its stdout and its stderr.
pub fn cli_restore(
    archive: &Path,
    id: &str,
    base: &Path,
    state: &Path,
    extra: &[&str],
) -> (bool, String, String) {
    let (st, out, err) = crate::run(
        Command::new(crate::cpengine_bin())
            .arg("--state-root")
            .arg(state)
            .arg("restore")
            .arg(archive)
            .arg("--id")
            .arg(id)
            .arg("--rootfs-base")
            .arg(base)
            .args(extra),
    );
    (st.success(), out, err)
}

/// Nothing of a refused restore exists: what [`assert_restore_left_nothing`] checks, and no
/// file naming the id under the state root, no process whose command line names the state
/// root, no runc container of that id.
pub fn assert_refused_restore_left_nothing(state: &Path, id: &str) {
    assert_restore_left_nothing(&StateRoot::at(state), id, "refused restore");
    let mut stack = vec![state.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            assert!(!name.contains(id), "{} left behind", p.display());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    let needle = state.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(
                !cmd.contains(&needle),
                "process left: {} {cmd}",
                e.file_name().to_string_lossy()
            );
        }
    }
    let (_, out, _) = crate::run(
        Command::new("runc")
            .arg("--root")
            .arg(state.join("run/runc"))
            .arg("list"),
    );
    assert!(!out.contains(id), "runc container left: {out}");
}
