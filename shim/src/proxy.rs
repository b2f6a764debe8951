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
    /// The upstream's images (to tell a checkpoint image in CreateContainer).
    rt_images: ImageServiceClient<Channel>,
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
            rt_images: ImageServiceClient::new(channel.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
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

/// Why a proxied CreateContainer must not reach the upstream (a restore from a checkpoint,
/// which containerd would do itself, unverified): the image is a path (an archive), or the
/// request, the image's annotations or the upstream's verbose image info name a checkpoint.
pub fn proxy_restore_refusal(
    image: &str,
    request_annotations: &[&str],
    upstream_info: &[String],
) -> Option<String> {
    let keys = crate::standalone::restore::CHECKPOINT_ANNOTATIONS;
    if std::path::Path::new(image).is_absolute() || image.starts_with("file:") {
        return Some(format!("image {image:?} is a checkpoint archive path"));
    }
    if let Some(k) = request_annotations.iter().find(|a| keys.contains(a)) {
        return Some(format!("the request carries the checkpoint annotation {k}"));
    }
    if let Some(k) = keys
        .iter()
        .find(|k| upstream_info.iter().any(|i| i.contains(*k)))
    {
        return Some(format!("image {image:?} is a checkpoint image ({k})"));
    }
    None
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

    async fn create_container(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Reply<pb::CreateContainerResponse> {
        let r = request.get_ref();
        let image = r
            .config
            .as_ref()
            .and_then(|c| c.image.as_ref())
            .map(|i| i.image.clone())
            .unwrap_or_default();
        let mut annotations: Vec<&String> = Vec::new();
        if let Some(c) = &r.config {
            annotations.extend(c.annotations.keys());
            if let Some(i) = &c.image {
                annotations.extend(i.annotations.keys());
            }
        }
        // What the upstream knows of the image (its annotations, and the verbose info a
        // checkpoint image's manifest annotations show up in).
        let mut upstream_info = Vec::new();
        if !image.is_empty() && !std::path::Path::new(&image).is_absolute() {
            let st = self
                .rt_images
                .clone()
                .image_status(pb::ImageStatusRequest {
                    image: Some(pb::ImageSpec {
                        image: image.clone(),
                        ..Default::default()
                    }),
                    verbose: true,
                })
                .await;
            if let Ok(st) = st {
                let st = st.into_inner();
                if let Some(i) = &st.image
                    && let Some(spec) = &i.spec
                {
                    upstream_info.extend(spec.annotations.keys().cloned());
                }
                upstream_info.extend(st.info.into_values());
            }
        }
        let ann: Vec<&str> = annotations.iter().map(|s| s.as_str()).collect();
        if let Some(reason) = proxy_restore_refusal(&image, &ann, &upstream_info) {
            let mode = self.checkpointer.mode();
            let msg = format!(
                "{reason}: the upstream runtime would restore it without cpengine's verification, so the proxy refuses it (--restore-mode {}; verified restores need the standalone shim)",
                mode.name()
            );
            tracing::warn!(image = %image, "{msg}");
            return Err(Status::failed_precondition(msg));
        }
        self.rt.clone().create_container(fwd(request)).await
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

    /// Review finding 8: a restore the upstream would do unverified is refused.
    #[test]
    fn checkpoint_creates_are_refused() {
        let none: &[String] = &[];
        assert!(
            proxy_restore_refusal("busybox:latest", &["io.kubernetes.pod.name"], none).is_none()
        );
        let r = proxy_restore_refusal("/var/lib/kubelet/checkpoints/x.tar", &[], none).unwrap();
        assert!(r.contains("archive path"), "{r}");
        let k = crate::standalone::restore::CHECKPOINT_ANNOTATIONS[0];
        assert!(proxy_restore_refusal("ckpt:latest", &[k], none).is_some());
        let info = vec![format!("{{\"annotations\":{{\"{k}\":\"c\"}}}}")];
        let r = proxy_restore_refusal("ckpt:latest", &[], &info).unwrap();
        assert!(r.contains("checkpoint image"), "{r}");
    }

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
