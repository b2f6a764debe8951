//! The shim's own model of what the CRI asks for: pods, containers, images, checkpoints.
//!
//! The tonic services in [`crate::cri`] convert the generated CRI messages into these types and
//! call a [`RuntimeBackend`] and an [`ImageBackend`]; the standalone runtime
//! ([`crate::standalone`]) implements them. Keeping the wire types at the edge means the
//! runtime code reads as what it does (run a pod, create a container from a resolved image)
//! rather than as protobuf plumbing, and the conversions live in one place.
//!
//! Times are nanoseconds since the Unix epoch (the CRI's unit); 0 means "not yet".

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::error::Result;

/// Labels or annotations.
pub type Map = BTreeMap<String, String>;

/// How a pod or container uses one kind of namespace (the CRI's `NamespaceMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NsMode {
    /// Shared by the pod's containers (held by the pod).
    #[default]
    Pod,
    /// Private to each container.
    Container,
    /// The host's.
    Node,
    /// Another container's (the CRI's `TARGET`).
    Target,
}

/// The namespaces a pod asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct PodNamespaces {
    pub network: NsMode,
    pub pid: NsMode,
    pub ipc: NsMode,
}

/// DNS settings for the pod's resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The Kubernetes identity of a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// What `RunPodSandbox` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodSpec {
    pub metadata: PodMetadata,
    pub hostname: String,
    /// Directory the kubelet wants container logs under (relative log paths are resolved
    /// against it).
    pub log_directory: String,
    pub dns: Option<DnsConfig>,
    pub labels: Map,
    pub annotations: Map,
    pub cgroup_parent: String,
    pub namespaces: PodNamespaces,
    pub runtime_handler: String,
}

/// A pod sandbox's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodState {
    Ready,
    NotReady,
}

/// A pod sandbox as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub id: String,
    pub spec: PodSpec,
    pub state: PodState,
    pub created_at: i64,
}

/// `ListPodSandbox` filter; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct PodFilter {
    pub id: Option<String>,
    pub state: Option<PodState>,
    pub labels: Map,
}

impl PodFilter {
    pub fn matches(&self, pod: &Pod) -> bool {
        self.id
            .as_ref()
            .is_none_or(|id| pod.id == *id || pod.id.starts_with(id.as_str()))
            && self.state.is_none_or(|s| pod.state == s)
            && labels_match(&self.labels, &pod.spec.labels)
    }
}

/// Whether every selector entry is present with the same value.
pub fn labels_match(selector: &Map, labels: &Map) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The image a container names, as the CRI gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSpec {
    pub image: String,
    pub annotations: Map,
    pub user_specified_image: String,
}

/// Mount propagation of a bind mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Propagation {
    #[default]
    Private,
    HostToContainer,
    Bidirectional,
}

/// A bind mount into a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountSpec {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub propagation: Propagation,
}

/// The little of the container's resources the standalone runtime applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    pub cpu_period: i64,
    pub cpu_quota: i64,
    pub cpu_shares: i64,
    pub memory_limit_in_bytes: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
    /// The kubelet's OOM score adjustment for the container (by QoS class: -997 Guaranteed,
    /// 1000 BestEffort, in between Burstable); 0: none given.
    #[serde(default)]
    pub oom_score_adj: i64,
}

/// Security settings of a container.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Security {
    pub privileged: bool,
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_username: String,
    pub readonly_rootfs: bool,
    pub supplemental_groups: Vec<i64>,
    pub no_new_privs: bool,
    pub add_capabilities: Vec<String>,
    pub drop_capabilities: Vec<String>,
    /// The container's pid namespace mode (the pod's network and ipc modes are the pod's).
    pub pid_mode: Option<NsMode>,
}

/// What `CreateContainer` asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub attempt: u32,
    pub image: ImageSpec,
    /// The entrypoint override (CRI `command`).
    pub command: Vec<String>,
    /// The arguments override (CRI `args`).
    pub args: Vec<String>,
    pub working_dir: String,
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<MountSpec>,
    pub labels: Map,
    pub annotations: Map,
    /// Relative to the pod's log directory unless absolute.
    pub log_path: String,
    pub stdin: bool,
    pub tty: bool,
    pub resources: Resources,
    pub security: Security,
}

/// A container's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

/// A container as the runtime knows it (enough for `ListContainers` and `ContainerStatus`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    pub image: ImageSpec,
    /// The image as resolved (`repo@digest` or the image id).
    pub image_ref: String,
    pub image_id: String,
    pub state: ContainerState,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub labels: Map,
    pub annotations: Map,
    pub mounts: Vec<MountSpec>,
    pub log_path: String,
    /// Host pid of the container's init while it runs.
    pub pid: Option<i32>,
}

/// `ListContainers` filter.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: Option<String>,
    pub state: Option<ContainerState>,
    pub pod_id: Option<String>,
    pub labels: Map,
}

impl ContainerFilter {
    pub fn matches(&self, c: &ContainerInfo) -> bool {
        self.id
            .as_ref()
            .is_none_or(|id| c.id == *id || c.id.starts_with(id.as_str()))
            && self.state.is_none_or(|s| c.state == s)
            && self
                .pod_id
                .as_ref()
                .is_none_or(|p| c.pod_id == *p || c.pod_id.starts_with(p.as_str()))
            && labels_match(&self.labels, &c.labels)
    }
}

/// The result of `ExecSync`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_code: i32,
}

/// Minimal container statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerStats {
    pub id: String,
    pub name: String,
    pub attempt: u32,
    pub labels: Map,
    pub annotations: Map,
    pub timestamp: i64,
    pub cpu_usage_ns: Option<u64>,
    pub memory_working_set: Option<u64>,
    pub writable_layer_bytes: Option<u64>,
    pub writable_layer_mountpoint: String,
}

/// A `CheckpointContainer` request, with the deadline the call must meet.
#[derive(Debug, Clone)]
pub struct CheckpointRequest {
    pub container_id: String,
    /// Where the archive goes (absolute; validated by the checkpoint service).
    pub location: String,
    /// When the answer is due: the earlier of the gRPC deadline and the request's `timeout`
    /// field, less the time the answer needs to travel (see
    /// [`crate::checkpoint::answer_deadline`]).
    pub deadline: Option<Instant>,
}

/// Runtime name and versions for `Version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeVersion {
    pub runtime_name: String,
    pub runtime_version: String,
    pub runtime_api_version: String,
}

/// One condition of `Status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

/// The pod runtime: pods, containers, exec, stats, checkpoint.
///
/// Every method is one CRI call; an implementation must be safe to call concurrently.
pub trait RuntimeBackend: Send + Sync + 'static {
    fn version(&self) -> RuntimeVersion;
    /// `Status`'s conditions, checked at the call.
    fn conditions(&self) -> impl Future<Output = Vec<Condition>> + Send;

    fn run_pod(&self, spec: PodSpec) -> impl Future<Output = Result<String>> + Send;
    fn stop_pod(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn remove_pod(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn pod(&self, id: &str) -> impl Future<Output = Result<Pod>> + Send;
    fn list_pods(&self, filter: PodFilter) -> impl Future<Output = Result<Vec<Pod>>> + Send;

    fn create_container(
        &self,
        pod_id: &str,
        spec: ContainerSpec,
    ) -> impl Future<Output = Result<String>> + Send;
    fn start_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn stop_container(
        &self,
        id: &str,
        timeout: Duration,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove_container(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn container(&self, id: &str) -> impl Future<Output = Result<ContainerInfo>> + Send;
    fn list_containers(
        &self,
        filter: ContainerFilter,
    ) -> impl Future<Output = Result<Vec<ContainerInfo>>> + Send;
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Option<Duration>,
    ) -> impl Future<Output = Result<ExecResult>> + Send;
    fn container_stats(&self, id: &str) -> impl Future<Output = Result<ContainerStats>> + Send;
    /// Opens the container's log path again (after the kubelet rotated it).
    fn reopen_container_log(&self, id: &str) -> impl Future<Output = Result<()>> + Send;
    fn checkpoint_container(
        &self,
        req: CheckpointRequest,
    ) -> impl Future<Output = Result<()>> + Send;
}

/// An image as the store knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:<hex>`.
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub size: u64,
    /// Numeric user of the image config, if it names one.
    pub uid: Option<i64>,
    /// User name of the image config, if not numeric.
    pub username: String,
    /// Annotations of the image manifest (checkpoint images carry theirs here).
    pub annotations: Map,
    pub pinned: bool,
}

/// The runtime-relevant parts of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
}

/// An image ready to run: its identity, config and unpacked layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub info: ImageInfo,
    /// The reference to record for the container (`repo@digest`, else the id).
    pub image_ref: String,
    pub config: ImageConfig,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
}

/// Registry credentials passed with `PullImage`.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub username: String,
    pub password: String,
    pub auth: String,
    pub server_address: String,
    pub identity_token: String,
    pub registry_token: String,
}

/// Usage of the file system holding the images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsUsage {
    pub mountpoint: String,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// The image store behind the ImageService (and the rootfs source of containers).
pub trait ImageBackend: Send + Sync + 'static {
    fn list(&self) -> impl Future<Output = Result<Vec<ImageInfo>>> + Send;
    /// `None` when the image is not present.
    fn status(&self, reference: &str) -> impl Future<Output = Result<Option<ImageInfo>>> + Send;
    /// Makes the image present; returns its reference (the image id).
    fn pull(&self, reference: &str, auth: Auth) -> impl Future<Output = Result<String>> + Send;
    /// Removing an absent image succeeds.
    fn remove(&self, reference: &str) -> impl Future<Output = Result<()>> + Send;
    fn fs_info(&self) -> impl Future<Output = Result<Vec<FsUsage>>> + Send;
    /// The config and unpacked layers of a present image.
    fn resolve(&self, reference: &str) -> impl Future<Output = Result<ResolvedImage>> + Send;
}

/// Nanoseconds since the epoch, now.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_prefixes_states_and_labels() {
        let pod = Pod {
            id: "abcdef".into(),
            spec: PodSpec {
                labels: [("app".to_string(), "x".to_string())].into(),
                ..Default::default()
            },
            state: PodState::Ready,
            created_at: 1,
        };
        assert!(PodFilter::default().matches(&pod));
        assert!(
            PodFilter {
                id: Some("abc".into()),
                ..Default::default()
            }
            .matches(&pod)
        );
        assert!(
            !PodFilter {
                state: Some(PodState::NotReady),
                ..Default::default()
            }
            .matches(&pod)
        );
        assert!(
            !PodFilter {
                labels: [("app".to_string(), "y".to_string())].into(),
                ..Default::default()
            }
            .matches(&pod)
        );
    }
}
