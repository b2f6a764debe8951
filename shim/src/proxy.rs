//! Proxy mode: the shim in front of another CRI runtime (containerd, CRI-O).
//!
//! Every RuntimeService and ImageService call is forwarded unchanged to the upstream socket —
//! message, metadata (so the caller's `grpc-timeout` reaches upstream) and answer, streams
//! included — except `CheckpointContainer`, which the engine serves on the upstream's runc
//! container: the container is found in the upstream's runc root (containerd keeps its CRI
//! containers under `/run/containerd/runc/k8s.io`), and the pod and image names the archive
//! records come from the upstream's own `ContainerStatus`.
//!
//! The forwarding is wire-level on purpose: converting through the domain types would drop
//! every field the shim does not model, and a proxy must not.

use std::path::PathBuf;
use std::sync::Arc;

use cpengine::container::{Container, StateRoot};
use cpengine::{ImageInfo, PodInfo};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as pb;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

use crate::checkpoint::{Checkpointer, kubelet_options};
use crate::cri::grpc_deadline;
use crate::error::{Result, ShimError};
use crate::locks::KeyedLocks;

type Reply<T> = std::result::Result<Response<T>, Status>;

/// Settings of proxy mode.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The upstream CRI socket path.
    pub upstream: PathBuf,
    /// The runc root of the upstream's containers.
    pub runc_root: PathBuf,
    /// cpengine's state root (journal of in-flight checkpoints).
    pub state: StateRoot,
    /// Runtime name recorded in `config.dump`.
    pub runtime_name: String,
}

/// Parses `--upstream`: `unix:///path` or a plain absolute path.
pub fn upstream_path(s: &str) -> Result<PathBuf> {
    let p = s.strip_prefix("unix://").unwrap_or(s);
    if !p.starts_with('/') {
        return Err(ShimError::InvalidArgument(format!(
            "upstream {s:?} must be unix:///absolute/path"
        )));
    }
    Ok(PathBuf::from(p))
}

/// A lazily connected channel to a unix socket.
pub fn channel(path: PathBuf) -> Result<Channel> {
    let ep = Endpoint::try_from("http://[::]:0")
        .map_err(|e| ShimError::Internal(format!("endpoint: {e}")))?;
    Ok(
        ep.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(s))
            }
        })),
    )
}

/// The forwarding RuntimeService.
#[derive(Debug, Clone)]
pub struct ProxyRuntime {
    cfg: ProxyConfig,
    rt: RuntimeServiceClient<Channel>,
    checkpointer: Arc<Checkpointer>,
    locks: Arc<KeyedLocks>,
}

/// The forwarding ImageService.
#[derive(Debug, Clone)]
pub struct ProxyImages {
    img: ImageServiceClient<Channel>,
}

impl ProxyRuntime {
    pub fn new(cfg: ProxyConfig, channel: Channel, checkpointer: Arc<Checkpointer>) -> Self {
        Self {
            cfg,
            rt: RuntimeServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            checkpointer,
            locks: Arc::new(KeyedLocks::default()),
        }
    }

    async fn checkpoint(&self, request: Request<pb::CheckpointContainerRequest>) -> Result<()> {
        let grpc = grpc_deadline(request.metadata());
        let r = request.into_inner();
        let deadline = crate::checkpoint::answer_deadline(grpc, r.timeout);
        // The upstream knows the container's Kubernetes identity and whether it runs.
        let mut status_req = Request::new(pb::ContainerStatusRequest {
            container_id: r.container_id.clone(),
            verbose: false,
        });
        if let Some(d) = deadline {
            status_req.set_timeout(d.saturating_duration_since(std::time::Instant::now()));
        }
        let status = self
            .rt
            .clone()
            .container_status(status_req)
            .await
            .map_err(ShimError::Upstream)?
            .into_inner()
            .status
            .ok_or_else(|| ShimError::Internal("upstream ContainerStatus has no status".into()))?;
        if status.state != pb::ContainerState::ContainerRunning as i32 {
            return Err(ShimError::FailedPrecondition(format!(
                "container {} is not running",
                status.id
            )));
        }
        let output = self.checkpointer.location(&r.location)?;
        let lock = match deadline {
            Some(d) => tokio::time::timeout_at(d.into(), self.locks.lock(&status.id))
                .await
                .map_err(|_| {
                    ShimError::DeadlineExceeded(format!(
                        "container {} is busy with another checkpoint past the deadline",
                        status.id
                    ))
                })?,
            None => self.locks.lock(&status.id).await,
        };
        let ctr = Container::find(
            &status.id,
            std::slice::from_ref(&self.cfg.runc_root),
            &self.cfg.state,
        )
        .map_err(|source| ShimError::Container {
            step: "finding the upstream's runc container",
            source,
        })?;
        let label = |k: &str| status.labels.get(k).cloned().unwrap_or_default();
        let mut opts = kubelet_options(output);
        opts.pod = Some(PodInfo {
            container_name: status
                .metadata
                .as_ref()
                .map(|m| m.name.clone())
                .unwrap_or_else(|| label("io.kubernetes.container.name")),
            pod_name: label("io.kubernetes.pod.name"),
            pod_namespace: label("io.kubernetes.pod.namespace"),
            pod_uid: label("io.kubernetes.pod.uid"),
        });
        let image = status
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        opts.image = Some(ImageInfo {
            image: image.clone(),
            image_ref: status.image_ref.clone(),
            image_name: image,
        });
        opts.runtime = Some(self.cfg.runtime_name.clone());
        self.checkpointer.run(lock, ctr, opts, deadline).await
    }
}

impl ProxyImages {
    pub fn new(channel: Channel) -> Self {
        Self {
            img: ImageServiceClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        }
    }
}

/// The request as a client request: same message and metadata, no server-side extensions.
fn fwd<T>(req: Request<T>) -> Request<T> {
    let (meta, _ext, msg) = req.into_parts();
    Request::from_parts(meta, tonic::Extensions::default(), msg)
}

/// Methods that forward to the upstream client. `#[async_trait]` does not see methods
/// produced by a macro, so this writes out the boxed-future signature it would generate.
macro_rules! forward {
    ($client:ident, $($name:ident($req:ty) -> $resp:ty;)*) => {
        $(
            fn $name<'life0, 'async_trait>(
                &'life0 self,
                request: Request<$req>,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Reply<$resp>> + Send + 'async_trait>,
            >
            where
                'life0: 'async_trait,
                Self: 'async_trait,
            {
                let mut client = self.$client.clone();
                Box::pin(async move { client.$name(fwd(request)).await })
            }
        )*
    };
}

#[tonic::async_trait]
impl RuntimeService for ProxyRuntime {
    forward! { rt,
        version(pb::VersionRequest) -> pb::VersionResponse;
        run_pod_sandbox(pb::RunPodSandboxRequest) -> pb::RunPodSandboxResponse;
        stop_pod_sandbox(pb::StopPodSandboxRequest) -> pb::StopPodSandboxResponse;
        remove_pod_sandbox(pb::RemovePodSandboxRequest) -> pb::RemovePodSandboxResponse;
        pod_sandbox_status(pb::PodSandboxStatusRequest) -> pb::PodSandboxStatusResponse;
        list_pod_sandbox(pb::ListPodSandboxRequest) -> pb::ListPodSandboxResponse;
        create_container(pb::CreateContainerRequest) -> pb::CreateContainerResponse;
        start_container(pb::StartContainerRequest) -> pb::StartContainerResponse;
        stop_container(pb::StopContainerRequest) -> pb::StopContainerResponse;
        remove_container(pb::RemoveContainerRequest) -> pb::RemoveContainerResponse;
        list_containers(pb::ListContainersRequest) -> pb::ListContainersResponse;
        container_status(pb::ContainerStatusRequest) -> pb::ContainerStatusResponse;
        update_container_resources(pb::UpdateContainerResourcesRequest) -> pb::UpdateContainerResourcesResponse;
        reopen_container_log(pb::ReopenContainerLogRequest) -> pb::ReopenContainerLogResponse;
        exec_sync(pb::ExecSyncRequest) -> pb::ExecSyncResponse;
        exec(pb::ExecRequest) -> pb::ExecResponse;
        attach(pb::AttachRequest) -> pb::AttachResponse;
        port_forward(pb::PortForwardRequest) -> pb::PortForwardResponse;
        container_stats(pb::ContainerStatsRequest) -> pb::ContainerStatsResponse;
        list_container_stats(pb::ListContainerStatsRequest) -> pb::ListContainerStatsResponse;
        pod_sandbox_stats(pb::PodSandboxStatsRequest) -> pb::PodSandboxStatsResponse;
        list_pod_sandbox_stats(pb::ListPodSandboxStatsRequest) -> pb::ListPodSandboxStatsResponse;
        update_runtime_config(pb::UpdateRuntimeConfigRequest) -> pb::UpdateRuntimeConfigResponse;
        status(pb::StatusRequest) -> pb::StatusResponse;
        list_metric_descriptors(pb::ListMetricDescriptorsRequest) -> pb::ListMetricDescriptorsResponse;
        list_pod_sandbox_metrics(pb::ListPodSandboxMetricsRequest) -> pb::ListPodSandboxMetricsResponse;
        runtime_config(pb::RuntimeConfigRequest) -> pb::RuntimeConfigResponse;
    }

    async fn checkpoint_container(
        &self,
        request: Request<pb::CheckpointContainerRequest>,
    ) -> Reply<pb::CheckpointContainerResponse> {
        let id = request.get_ref().container_id.clone();
        let started = std::time::Instant::now();
        match self.checkpoint(request).await {
            Ok(()) => {
                tracing::info!(container = %id, elapsed_ms = started.elapsed().as_millis() as u64, "upstream container checkpointed by the engine");
                Ok(Response::new(pb::CheckpointContainerResponse {}))
            }
            Err(e) => {
                let s = Status::from(e);
                tracing::warn!(container = %id, code = ?s.code(), message = s.message(), "checkpoint failed");
                Err(s)
            }
        }
    }

    type GetContainerEventsStream = tonic::Streaming<pb::ContainerEventResponse>;

    async fn get_container_events(
        &self,
        request: Request<pb::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        self.rt.clone().get_container_events(fwd(request)).await
    }
}

#[tonic::async_trait]
impl ImageService for ProxyImages {
    forward! { img,
        list_images(pb::ListImagesRequest) -> pb::ListImagesResponse;
        image_status(pb::ImageStatusRequest) -> pb::ImageStatusResponse;
        pull_image(pb::PullImageRequest) -> pb::PullImageResponse;
        remove_image(pb::RemoveImageRequest) -> pb::RemoveImageResponse;
        image_fs_info(pb::ImageFsInfoRequest) -> pb::ImageFsInfoResponse;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_addresses() {
        assert_eq!(
            upstream_path("unix:///run/containerd/containerd.sock").unwrap(),
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(upstream_path("/x.sock").unwrap(), PathBuf::from("/x.sock"));
        assert!(upstream_path("tcp://1.2.3.4:5").is_err());
        assert!(upstream_path("unix://relative").is_err());
    }
}
