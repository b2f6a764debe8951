//! The JSON members of a checkpoint archive as the engine decodes and uses them: `config.dump`,
//! `status.dump`, `deleted.files`, and `spec.dump` (engine detection, identity, annotation, the
//! restore's typed spec with the new root, the mounts view).
#![no_main]

use cpengine::archive::{self, CheckpointAnnotations, ConfigDump, GoTime, StatusDump};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<ConfigDump>(data);
    let _ = serde_json::from_slice::<StatusDump>(data);
    let _ = serde_json::from_slice::<Vec<String>>(data);
    let Ok(mut spec) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let engine = archive::detect_engine(&spec);
    let _ = archive::identity(&spec, engine, "name");
    let _ = archive::annotations(&spec);
    let _ = cpengine::inspect::mounts_from_spec(&spec);
    let _ = cpengine::container::restore::spec_with_root(&spec, std::path::Path::new("/rootfs"));
    let _ = archive::annotate_spec(
        &mut spec,
        &CheckpointAnnotations {
            container_name: "c".into(),
            sandbox_name: Some("p".into()),
            sandbox_namespace: None,
            criu_version: Some("4.2".into()),
            checkpointed: GoTime::zero(),
        },
    );
});
