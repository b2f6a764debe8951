//! Mounts of a container, from its OCI runtime spec (`spec.dump` in a checkpoint archive,
//! `config.json` in a bundle).

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use super::{InspectError, Result};

/// Largest spec file read.
const MAX_SPEC: u64 = crate::archive::MAX_JSON_BYTES;

/// One mount (checkpointctl's `mounts` element, plus the options).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub source: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The mounts of a parsed OCI spec, in spec order. Missing or ill-typed fields read as
/// empty: specs from different engines differ in what they fill in.
pub fn mounts_from_spec(spec: &serde_json::Value) -> Vec<Mount> {
    let text = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string()
    };
    spec.get("mounts")
        .and_then(|m| m.as_array())
        .map(|mounts| {
            mounts
                .iter()
                .map(|m| Mount {
                    destination: text(m, "destination"),
                    fs_type: text(m, "type"),
                    source: text(m, "source"),
                    options: m
                        .get("options")
                        .and_then(|o| o.as_array())
                        .map(|o| {
                            o.iter()
                                .filter_map(|s| s.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Reads an OCI spec file (at most 16 MiB) and returns its mounts.
pub fn mounts_from_spec_file(path: &Path) -> Result<Vec<Mount>> {
    let read_err = |source| InspectError::SpecRead {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    f.take(MAX_SPEC + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_SPEC {
        return Err(InspectError::SpecTooLarge {
            path: path.to_path_buf(),
            limit: MAX_SPEC,
        });
    }
    let spec: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| InspectError::SpecParse {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(mounts_from_spec(&spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_in_spec_order_with_options() {
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/srv/data",
                 "options": ["rbind", "ro"]},
                {"destination": 5}
            ]
        });
        let m = mounts_from_spec(&spec);
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].destination, "/proc");
        assert_eq!(m[0].fs_type, "proc");
        assert_eq!(m[1].source, "/srv/data");
        assert_eq!(m[1].options, vec!["rbind", "ro"]);
        assert_eq!(m[2].destination, "");
        let json = serde_json::to_value(&m[1]).unwrap();
        assert_eq!(json["type"], "bind");
        assert!(mounts_from_spec(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn spec_file_errors_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.json");
        assert!(matches!(
            mounts_from_spec_file(&missing),
            Err(InspectError::SpecRead { .. })
        ));
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, b"{not json").unwrap();
        assert!(matches!(
            mounts_from_spec_file(&bad),
            Err(InspectError::SpecParse { .. })
        ));
        let big = dir.path().join("big.json");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_SPEC + 10).unwrap();
        assert!(matches!(
            mounts_from_spec_file(&big),
            Err(InspectError::SpecTooLarge { .. })
        ));
    }
}
