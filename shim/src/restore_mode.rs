//! The node admin's switch for checkpoint and restore through the CRI (`--restore-mode`).

/// What the shim's CRI allows of checkpoint/restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestoreMode {
    /// Neither CheckpointContainer nor a CreateContainer from a checkpoint.
    Off,
    /// CheckpointContainer only; a CreateContainer naming a checkpoint is refused.
    CheckpointOnly,
    /// Both; a restore is verified against the request's policy before it starts
    /// (`cpengine::policy`).
    #[default]
    Verified,
}

impl RestoreMode {
    pub fn allows_checkpoint(self) -> bool {
        self != Self::Off
    }

    pub fn allows_restore(self) -> bool {
        self == Self::Verified
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::CheckpointOnly => "checkpoint-only",
            Self::Verified => "verified",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(RestoreMode::default(), RestoreMode::Verified);
        assert!(!RestoreMode::Off.allows_checkpoint() && !RestoreMode::Off.allows_restore());
        assert!(RestoreMode::CheckpointOnly.allows_checkpoint());
        assert!(!RestoreMode::CheckpointOnly.allows_restore());
        assert!(
            RestoreMode::Verified.allows_checkpoint() && RestoreMode::Verified.allows_restore()
        );
    }
}
