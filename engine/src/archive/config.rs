//! The JSON members: `config.dump` (container metadata) and `status.dump` (containerd's CRI
//! container status).
//!
//! `config.dump` is the reduced struct that checkpointctl defines and CRI-O and containerd
//! write: ten keys, four of them omitted when empty (Go `omitempty`), times as Go's
//! `time.Time` marshals them (RFC 3339 with up to nine fraction digits, trailing zeros trimmed,
//! `Z` for UTC, the zero time as `0001-01-01T00:00:00Z`). Decoding is lenient: unknown keys are
//! ignored, so Podman's full libpod `ContainerConfig` decodes into the common subset, and
//! Podman's `rootfsImageID` is accepted for `rootfsImageRef`.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, Timelike, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A timestamp that (de)serializes exactly like Go's `time.Time`, keeping its UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoTime(pub DateTime<FixedOffset>);

impl GoTime {
    /// Go's zero time, `0001-01-01T00:00:00Z`: "not set".
    pub fn zero() -> Self {
        let d = NaiveDate::from_ymd_opt(1, 1, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .expect("0001-01-01 is a valid date");
        Self(d.and_utc().fixed_offset())
    }

    /// The current time in UTC.
    pub fn now() -> Self {
        Self(Utc::now().fixed_offset())
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::zero()
    }

    /// Parses RFC 3339 (any number of fraction digits, `Z` or an offset).
    pub fn parse(s: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(s).map(Self)
    }

    /// RFC 3339 in whole seconds, in the time's own offset (checkpointctl's CREATED column).
    pub fn to_rfc3339_seconds(&self) -> String {
        self.0
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            .replace("+00:00", "Z")
    }
}

impl Default for GoTime {
    fn default() -> Self {
        Self::zero()
    }
}

impl From<DateTime<Utc>> for GoTime {
    fn from(t: DateTime<Utc>) -> Self {
        Self(t.fixed_offset())
    }
}

impl From<std::time::SystemTime> for GoTime {
    fn from(t: std::time::SystemTime) -> Self {
        Self(DateTime::<Utc>::from(t).fixed_offset())
    }
}

/// Go's `time.RFC3339Nano` layout: the fraction has its trailing zeros trimmed and is left out
/// when zero; a zero offset prints as `Z`.
impl fmt::Display for GoTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%dT%H:%M:%S"))?;
        let nanos = self.0.nanosecond() % 1_000_000_000;
        if nanos != 0 {
            let frac = format!("{nanos:09}");
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        let off = self.0.offset().fix().local_minus_utc();
        if off == 0 {
            f.write_str("Z")
        } else {
            let sign = if off < 0 { '-' } else { '+' };
            let a = off.unsigned_abs();
            write!(f, "{sign}{:02}:{:02}", a / 3600, (a % 3600) / 60)
        }
    }
}

impl Serialize for GoTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Go leaves a time untouched on `null`: decode it as the zero time.
        match Option::<String>::deserialize(d)? {
            None => Ok(Self::zero()),
            Some(s) => Self::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `config.dump`: what the runtime knew about the container when it was checkpointed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigDump {
    /// The container id (64 hex digits for CRI-O, containerd and Podman).
    #[serde(default)]
    pub id: String,
    /// The container name.
    #[serde(default)]
    pub name: String,
    /// The image the user asked for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rootfs_image: String,
    /// The resolved image: a 64-hex storage id (CRI-O), a repo digest (containerd) or Podman's
    /// `rootfsImageID`.
    #[serde(
        default,
        alias = "rootfsImageID",
        skip_serializing_if = "String::is_empty"
    )]
    pub rootfs_image_ref: String,
    /// A name of the image.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rootfs_image_name: String,
    /// The OCI runtime or runtime handler (`runc`, `crun`, `io.containerd.runc.v2`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub runtime: String,
    #[serde(default)]
    pub created_time: GoTime,
    #[serde(default)]
    pub checkpointed_time: GoTime,
    #[serde(default)]
    pub restored_time: GoTime,
    /// Whether the container itself had been restored from a checkpoint.
    #[serde(default)]
    pub restored: bool,
}

impl ConfigDump {
    /// The names this checkpoint gives its base image, most exact first: `rootfsImageRef` (an
    /// image id or a digest reference), `rootfsImageName`, then `rootfsImage` (as the user
    /// asked for it); empty and repeated ones left out. The one precedence of every
    /// base-image lookup (the CLI's restore and the shim's).
    pub fn base_image_refs(&self) -> Vec<String> {
        let mut refs: Vec<String> = Vec::new();
        for r in [
            &self.rootfs_image_ref,
            &self.rootfs_image_name,
            &self.rootfs_image,
        ] {
            if !r.is_empty() && !refs.contains(r) {
                refs.push(r.clone());
            }
        }
        refs
    }
}

/// `status.dump` (containerd 2.x): Go's JSON of the CRI `ContainerStatus` message. Only the
/// fields a restore uses are decoded; everything else is ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusDump {
    pub id: String,
    pub metadata: Option<StatusMetadata>,
    pub image: Option<StatusImage>,
    pub image_ref: String,
    pub log_path: String,
    /// Nanoseconds since the epoch.
    pub created_at: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
}

/// Go marshals a nil map as `null`.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusMetadata {
    pub name: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusImage {
    pub image: String,
    pub user_specified_image: String,
    pub runtime_handler: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn sample() -> ConfigDump {
        ConfigDump {
            id: "a".repeat(64),
            name: "k8s_ctr_pod_ns_uid_0".into(),
            rootfs_image: "docker.io/library/busybox:latest".into(),
            rootfs_image_ref: "b".repeat(64),
            rootfs_image_name: "docker.io/library/busybox:latest".into(),
            runtime: "runc".into(),
            created_time: GoTime::parse("2024-04-29T20:43:15.123456789+08:00").unwrap(),
            checkpointed_time: GoTime::parse("2026-03-13T21:43:06.5Z").unwrap(),
            restored_time: GoTime::zero(),
            restored: false,
        }
    }

    #[test]
    fn config_dump_has_exactly_the_ten_keys_with_go_types() {
        let v = serde_json::to_value(sample()).unwrap();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "checkpointedTime",
                "createdTime",
                "id",
                "name",
                "restored",
                "restoredTime",
                "rootfsImage",
                "rootfsImageName",
                "rootfsImageRef",
                "runtime"
            ]
        );
        assert!(obj["restored"].is_boolean());
        for k in [
            "id",
            "name",
            "createdTime",
            "checkpointedTime",
            "restoredTime",
        ] {
            assert!(obj[k].is_string(), "{k}");
        }
        assert_eq!(obj["createdTime"], "2024-04-29T20:43:15.123456789+08:00");
        assert_eq!(obj["checkpointedTime"], "2026-03-13T21:43:06.5Z");
        assert_eq!(obj["restoredTime"], "0001-01-01T00:00:00Z");
    }

    #[test]
    fn config_dump_round_trips_and_omits_empty_strings_like_go() {
        let c = sample();
        let s = serde_json::to_string_pretty(&c).unwrap();
        assert_eq!(serde_json::from_str::<ConfigDump>(&s).unwrap(), c);
        let empty = serde_json::to_value(ConfigDump::default()).unwrap();
        let mut keys: Vec<&str> = empty
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "checkpointedTime",
                "createdTime",
                "id",
                "name",
                "restored",
                "restoredTime"
            ]
        );
    }

    #[test]
    fn go_zero_time() {
        assert_eq!(GoTime::zero().to_string(), "0001-01-01T00:00:00Z");
        assert!(GoTime::parse("0001-01-01T00:00:00Z").unwrap().is_zero());
        assert!(GoTime::default().is_zero());
        assert!(!GoTime::now().is_zero());
        let v: GoTime = serde_json::from_value(Value::Null).unwrap();
        assert!(v.is_zero());
        // Go trims trailing zeros of the fraction and prints a whole second without one.
        assert_eq!(
            GoTime::parse("2025-01-02T03:04:05.120Z")
                .unwrap()
                .to_string(),
            "2025-01-02T03:04:05.12Z"
        );
        assert_eq!(
            GoTime::parse("2025-01-02T03:04:05.000-07:30")
                .unwrap()
                .to_string(),
            "2025-01-02T03:04:05-07:30"
        );
        assert_eq!(
            GoTime::parse("2025-01-02T03:04:05.5+02:00")
                .unwrap()
                .to_rfc3339_seconds(),
            "2025-01-02T03:04:05+02:00"
        );
    }

    #[test]
    fn podman_full_config_dump_decodes_into_the_common_subset() {
        let podman = json!({
            "spec": {"ociVersion": "1.0.2-dev", "process": {"args": ["/bin/sh"]}},
            "id": "c".repeat(64),
            "name": "busy",
            "pod": "",
            "namespace": "",
            "lockID": 3,
            "rootfsImageID": "d".repeat(64),
            "rootfsImageName": "localhost/busybox:latest",
            "rawImageName": "localhost/busybox",
            "createdTime": "2026-05-01T10:11:12.987654321+02:00",
            "runtime": "runc",
            "orderedNetworks": null,
            "namedVolumes": [],
            "LogDriver": "k8s-file",
            "healthcheck": null
        });
        let c: ConfigDump = serde_json::from_value(podman).unwrap();
        assert_eq!(c.id, "c".repeat(64));
        assert_eq!(c.name, "busy");
        assert_eq!(c.rootfs_image_ref, "d".repeat(64));
        assert_eq!(c.rootfs_image_name, "localhost/busybox:latest");
        assert_eq!(c.runtime, "runc");
        assert_eq!(
            c.created_time.to_string(),
            "2026-05-01T10:11:12.987654321+02:00"
        );
        assert!(c.checkpointed_time.is_zero());
        assert!(!c.restored);
    }

    #[test]
    fn base_image_refs_go_most_exact_first_without_repeats() {
        let c = ConfigDump {
            rootfs_image: "busybox".into(),
            rootfs_image_ref: "b".repeat(64),
            rootfs_image_name: "docker.io/library/busybox:latest".into(),
            ..Default::default()
        };
        assert_eq!(
            c.base_image_refs(),
            [
                "b".repeat(64),
                "docker.io/library/busybox:latest".into(),
                "busybox".into()
            ]
        );
        let c = ConfigDump {
            rootfs_image: "busybox".into(),
            rootfs_image_name: "busybox".into(),
            ..Default::default()
        };
        assert_eq!(c.base_image_refs(), ["busybox"]);
        assert!(ConfigDump::default().base_image_refs().is_empty());
    }

    #[test]
    fn compact_containerd_config_dump_decodes() {
        let s = r#"{"id":"e1","name":"ctr_pod_ns_uid_0","rootfsImage":"docker.io/library/busybox:latest","rootfsImageRef":"docker.io/library/busybox@sha256:00","rootfsImageName":"docker.io/library/busybox:latest","runtime":"io.containerd.runc.v2","createdTime":"2026-08-01T00:00:00.1Z","checkpointedTime":"2026-08-01T00:01:00Z","restoredTime":"0001-01-01T00:00:00Z","restored":false}"#;
        let c: ConfigDump = serde_json::from_str(s).unwrap();
        assert_eq!(c.runtime, "io.containerd.runc.v2");
        assert_eq!(serde_json::to_string(&c).unwrap(), s);
    }

    #[test]
    fn status_dump_decodes_leniently() {
        let s = r#"{"id":"x","metadata":{"name":"ctr","attempt":1},"state":1,"created_at":17,"image":{"image":"busybox","annotations":null},"image_ref":"r","labels":{"a":"b"},"annotations":null,"mounts":[],"resources":null}"#;
        let st: StatusDump = serde_json::from_str(s).unwrap();
        assert_eq!(st.metadata.unwrap().name, "ctr");
        assert_eq!(st.image.unwrap().image, "busybox");
        assert_eq!(st.created_at, 17);
        assert_eq!(st.labels["a"], "b");
    }
}
