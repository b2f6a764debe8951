//! What the live request allows, decided before anything of a restore is created: the
//! checkpoint's images verified against the policy, and what holds the container afterwards.

use crate::container::containment::{Containment, DeviceRule};
use crate::error::Result;

use super::options::{CheckpointDir, ContainerRestoreOptions};

/// The images against the live request's policy, before anything is mounted, started or
/// locked (read-only: no lock needed).
pub(crate) async fn verify_images(
    ckpt: &CheckpointDir,
    opts: &ContainerRestoreOptions,
) -> Result<crate::policy::Verdict> {
    let verification = {
        let (dir, spec, policy) = (
            ckpt.images_dir.clone(),
            ckpt.spec.clone(),
            opts.policy.clone(),
        );
        crate::blocking(move || {
            let plan = crate::policy::VerifyPlan::for_container(&spec, &policy);
            Ok(crate::policy::verify(&dir, &spec, &policy, &plan)?)
        })
        .await?
    };
    if verification.trusted_unverified {
        tracing::warn!(
            container = opts.id.as_str(),
            "restoring WITHOUT verifying the checkpoint: the caller trusts the archive (--trust-archive)"
        );
    }
    Ok(verification)
}

/// What the container is held to after the restore: the request's containment, with the
/// policy's devices and `privileged` added.
pub(crate) fn containment(opts: &ContainerRestoreOptions) -> Result<Containment> {
    let mut containment = opts.containment.clone();
    containment.all_devices |= opts.policy.privileged;
    for d in &opts.policy.devices {
        containment.devices.push(DeviceRule::of_path(d)?);
    }
    Ok(containment)
}
