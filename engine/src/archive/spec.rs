//! `spec.dump` (the bundle's OCI runtime spec, kept as JSON so unknown fields survive verbatim),
//! the annotations cpengine adds to it, and engine detection.
//!
//! # Which engine checkpointctl sees
//!
//! checkpointctl picks how to read an archive from the spec annotation
//! `io.container.manager`: `cri-o` makes it require the `io.kubernetes.cri-o.Metadata` JSON
//! annotation (and fail without it), `libpod` makes it take the name from `config.dump` and
//! networks from `network.status`; any other value, or none, is read as containerd: the
//! container name from `io.kubernetes.cri.container-name`, the pod from
//! `io.kubernetes.cri.sandbox-name`, the namespace from `io.kubernetes.cri.sandbox-namespace`.
//!
//! cpengine therefore sets `io.container.manager=cpengine` (neither `cri-o` nor `libpod`, so
//! checkpointctl takes the containerd path, which needs nothing cpengine cannot provide) and
//! fills the three `io.kubernetes.cri.*` keys it reads. cpengine's own keys, under
//! `io.cpengine.`, name the engine and its version, the CRIU version and the checkpoint time;
//! [`detect_engine`] recognises cpengine archives from them (or from the manager value),
//! before falling back to the rules above.

use serde::Serialize;
use serde_json::{Map, Value};

use super::config::GoTime;

/// `io.container.manager`: who manages the container.
pub const MANAGER: &str = "io.container.manager";
/// The value cpengine writes for [`MANAGER`].
pub const MANAGER_CPENGINE: &str = "cpengine";
pub const CRI_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const CRIO_METADATA: &str = "io.kubernetes.cri-o.Metadata";
pub const CRIO_CREATED: &str = "io.kubernetes.cri-o.Created";
pub const K8S_POD_NAME: &str = "io.kubernetes.pod.name";
pub const K8S_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
pub const CPENGINE_ENGINE_NAME: &str = "io.cpengine.engine.name";
pub const CPENGINE_ENGINE_VERSION: &str = "io.cpengine.engine.version";
pub const CPENGINE_CRIU_VERSION: &str = "io.cpengine.criu.version";
pub const CPENGINE_CHECKPOINT_TIME: &str = "io.cpengine.checkpoint.time";

/// What cpengine records in a checkpoint's spec.
#[derive(Debug, Clone)]
pub struct CheckpointAnnotations {
    /// The container's name (`io.kubernetes.cri.container-name`).
    pub container_name: String,
    /// The pod's name, when the container belongs to one.
    pub sandbox_name: Option<String>,
    /// The pod's namespace, when known.
    pub sandbox_namespace: Option<String>,
    /// CRIU's version string, e.g. `4.2.1`.
    pub criu_version: Option<String>,
    pub checkpointed: GoTime,
}

/// Adds cpengine's annotations to an OCI runtime spec, creating `annotations` if needed.
/// Everything else in the spec is left as it is.
pub fn annotate_spec(spec: &mut Value, a: &CheckpointAnnotations) -> Result<(), SpecError> {
    let obj = spec.as_object_mut().ok_or(SpecError::NotAnObject)?;
    let ann = obj
        .entry("annotations")
        .or_insert_with(|| Value::Object(Map::new()));
    if ann.is_null() {
        *ann = Value::Object(Map::new());
    }
    let ann = ann
        .as_object_mut()
        .ok_or(SpecError::AnnotationsNotAnObject)?;
    let mut set = |k: &str, v: &str| {
        ann.insert(k.to_owned(), Value::String(v.to_owned()));
    };
    set(MANAGER, MANAGER_CPENGINE);
    set(CRI_CONTAINER_NAME, &a.container_name);
    if let Some(v) = &a.sandbox_name {
        set(CRI_SANDBOX_NAME, v);
    }
    if let Some(v) = &a.sandbox_namespace {
        set(CRI_SANDBOX_NAMESPACE, v);
    }
    set(CPENGINE_ENGINE_NAME, "cpengine");
    set(CPENGINE_ENGINE_VERSION, env!("CARGO_PKG_VERSION"));
    if let Some(v) = &a.criu_version {
        set(CPENGINE_CRIU_VERSION, v);
    }
    set(CPENGINE_CHECKPOINT_TIME, &a.checkpointed.to_string());
    Ok(())
}

/// A spec that cannot carry annotations.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("runtime spec is not a JSON object")]
    NotAnObject,
    #[error("runtime spec annotations are not a JSON object")]
    AnnotationsNotAnObject,
}

/// The engine that wrote an archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Cpengine,
    #[serde(rename = "cri-o")]
    CriO,
    /// Podman (libpod).
    Podman,
    Containerd,
    /// No annotation identifies the writer.
    Unknown,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpengine => "cpengine",
            Self::CriO => "cri-o",
            Self::Podman => "podman",
            Self::Containerd => "containerd",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's annotations, if any.
pub fn annotations(spec: &Value) -> Option<&Map<String, Value>> {
    spec.get("annotations")?.as_object()
}

/// One string annotation.
pub fn annotation<'a>(spec: &'a Value, key: &str) -> Option<&'a str> {
    annotations(spec)?.get(key)?.as_str()
}

/// Which engine wrote the archive, from the spec annotations: cpengine's own keys or manager
/// value, then `io.container.manager` `cri-o` / `libpod`, then any `io.kubernetes.cri.*` key
/// (containerd writes no manager).
pub fn detect_engine(spec: &Value) -> EngineKind {
    let Some(ann) = annotations(spec) else {
        return EngineKind::Unknown;
    };
    let manager = ann.get(MANAGER).and_then(Value::as_str);
    if manager == Some(MANAGER_CPENGINE) || ann.contains_key(CPENGINE_ENGINE_NAME) {
        return EngineKind::Cpengine;
    }
    match manager {
        Some("cri-o") => EngineKind::CriO,
        Some("libpod") => EngineKind::Podman,
        _ if ann.keys().any(|k| k.starts_with("io.kubernetes.cri.")) => EngineKind::Containerd,
        _ => EngineKind::Unknown,
    }
}

/// Container name, pod and namespace as checkpointctl derives them for each engine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub container_name: String,
    pub pod: Option<String>,
    pub namespace: Option<String>,
}

/// See [`Identity`]; `config_name` is `config.dump`'s `name` (used for Podman and as the last
/// resort).
pub fn identity(spec: &Value, engine: EngineKind, config_name: &str) -> Identity {
    let get = |k: &str| annotation(spec, k).map(str::to_owned);
    match engine {
        EngineKind::CriO => Identity {
            container_name: get(CRIO_METADATA)
                .and_then(|m| serde_json::from_str::<Value>(&m).ok())
                .and_then(|m| m.get("name")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| config_name.to_owned()),
            pod: get(K8S_POD_NAME),
            namespace: get(K8S_POD_NAMESPACE),
        },
        EngineKind::Podman | EngineKind::Unknown => Identity {
            container_name: config_name.to_owned(),
            pod: None,
            namespace: None,
        },
        EngineKind::Containerd | EngineKind::Cpengine => Identity {
            container_name: get(CRI_CONTAINER_NAME).unwrap_or_else(|| config_name.to_owned()),
            pod: get(CRI_SANDBOX_NAME),
            namespace: get(CRI_SANDBOX_NAMESPACE),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotate_sets_containerd_style_keys_and_keeps_the_rest() {
        let mut spec = json!({"ociVersion": "1.0.2", "x-unknown": {"k": [1, 2]},
            "annotations": {"user": "v"}});
        annotate_spec(
            &mut spec,
            &CheckpointAnnotations {
                container_name: "web".into(),
                sandbox_name: Some("pod1".into()),
                sandbox_namespace: Some("default".into()),
                criu_version: Some("4.2.1".into()),
                checkpointed: GoTime::parse("2026-01-01T00:00:00Z").unwrap(),
            },
        )
        .unwrap();
        let a = annotations(&spec).unwrap();
        assert_eq!(a["user"], "v");
        assert_eq!(spec["x-unknown"], json!({"k": [1, 2]}));
        assert_ne!(a[MANAGER], "cri-o");
        assert_ne!(a[MANAGER], "libpod");
        assert_eq!(a[CRI_CONTAINER_NAME], "web");
        assert_eq!(a[CRI_SANDBOX_NAME], "pod1");
        assert_eq!(a[CRI_SANDBOX_NAMESPACE], "default");
        assert_eq!(a[CPENGINE_CRIU_VERSION], "4.2.1");
        assert_eq!(a[CPENGINE_CHECKPOINT_TIME], "2026-01-01T00:00:00Z");
        assert_eq!(detect_engine(&spec), EngineKind::Cpengine);
        let id = identity(&spec, EngineKind::Cpengine, "ignored");
        assert_eq!(id.container_name, "web");
        assert_eq!(id.pod.as_deref(), Some("pod1"));

        let mut no_ann = json!({"ociVersion": "1.0.2", "annotations": null});
        annotate_spec(
            &mut no_ann,
            &CheckpointAnnotations {
                container_name: "c".into(),
                sandbox_name: None,
                sandbox_namespace: None,
                criu_version: None,
                checkpointed: GoTime::now(),
            },
        )
        .unwrap();
        assert_eq!(annotation(&no_ann, CRI_CONTAINER_NAME), Some("c"));
        assert!(matches!(
            annotate_spec(
                &mut json!([]),
                &CheckpointAnnotations {
                    container_name: "c".into(),
                    sandbox_name: None,
                    sandbox_namespace: None,
                    criu_version: None,
                    checkpointed: GoTime::now(),
                }
            ),
            Err(SpecError::NotAnObject)
        ));
    }

    #[test]
    fn engine_detection() {
        let crio = json!({"annotations": {"io.container.manager": "cri-o",
            "io.kubernetes.cri-o.Metadata": "{\"name\":\"ctr\",\"attempt\":0}",
            "io.kubernetes.pod.name": "p", "io.kubernetes.pod.namespace": "n"}});
        assert_eq!(detect_engine(&crio), EngineKind::CriO);
        assert_eq!(
            identity(&crio, EngineKind::CriO, "k8s_x").container_name,
            "ctr"
        );
        let podman = json!({"annotations": {"io.container.manager": "libpod"}});
        assert_eq!(detect_engine(&podman), EngineKind::Podman);
        assert_eq!(
            identity(&podman, EngineKind::Podman, "busy").container_name,
            "busy"
        );
        let ctrd = json!({"annotations": {"io.kubernetes.cri.container-name": "c",
            "io.kubernetes.cri.sandbox-namespace": "ns"}});
        assert_eq!(detect_engine(&ctrd), EngineKind::Containerd);
        assert_eq!(
            identity(&ctrd, EngineKind::Containerd, "x")
                .namespace
                .as_deref(),
            Some("ns")
        );
        assert_eq!(
            detect_engine(&json!({"annotations": {}})),
            EngineKind::Unknown
        );
        assert_eq!(detect_engine(&json!({})), EngineKind::Unknown);
        let ours = json!({"annotations": {"io.cpengine.engine.name": "cpengine"}});
        assert_eq!(detect_engine(&ours), EngineKind::Cpengine);
        assert_eq!(serde_json::to_value(EngineKind::CriO).unwrap(), "cri-o");
    }
}
