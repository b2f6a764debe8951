//! The little cgroup handling the engine needs itself: freezer state.

use std::fs;
use std::path::Path;

/// Thaws a freezer cgroup given as its path (cgroup v1 `freezer.state` or v2 `cgroup.freeze`).
/// Best effort: a missing cgroup is already "thawed".
pub fn thaw(cgroup: &Path) {
    let v1 = cgroup.join("freezer.state");
    let v2 = cgroup.join("cgroup.freeze");
    let r = if v1.exists() {
        fs::write(&v1, "THAWED")
    } else if v2.exists() {
        fs::write(&v2, "0")
    } else {
        return;
    };
    if let Err(e) = r {
        tracing::warn!(cgroup = %cgroup.display(), error = %e, "thawing freezer cgroup failed");
    }
}

/// Whether a freezer cgroup is frozen (or freezing).
pub fn is_frozen(cgroup: &Path) -> bool {
    if let Ok(s) = fs::read_to_string(cgroup.join("freezer.state")) {
        return s.trim() != "THAWED";
    }
    fs::read_to_string(cgroup.join("cgroup.freeze")).is_ok_and(|s| s.trim() == "1")
}
