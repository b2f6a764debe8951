//! The CRI gRPC services: generated tonic servers on one side, the domain traits on the other.
//!
//! [`CriRuntime`] serves `runtime.v1.RuntimeService` over a [`RuntimeBackend`], [`CriImages`]
//! serves `runtime.v1.ImageService` over an [`ImageBackend`]. Each method converts the request
//! ([`convert`]), calls the backend, converts the answer, and turns a [`ShimError`] into a
//! status through its one `From` impl. Calls are logged once here, at the edge.

pub mod convert;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_cri::v1 as pb;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::domain::{CheckpointRequest, ImageBackend, RuntimeBackend, now_ns};
use crate::error::ShimError;

type Reply<T> = Result<Response<T>, Status>;

pub use crate::deadline::{effective_deadline, grpc_deadline, parse_grpc_timeout};

/// Logs a failed call once and converts it.
fn fail(call: &'static str, e: ShimError) -> Status {
    let status = Status::from(e);
    match status.code() {
        tonic::Code::NotFound | tonic::Code::InvalidArgument | tonic::Code::Unimplemented => {
            tracing::debug!(call, code = ?status.code(), message = status.message(), "cri call refused");
        }
        _ => {
            tracing::warn!(call, code = ?status.code(), message = status.message(), "cri call failed")
        }
    }
    status
}

/// `runtime.v1.RuntimeService` over a [`RuntimeBackend`].
#[derive(Debug)]
pub struct CriRuntime<R> {
    backend: Arc<R>,
}

impl<R> CriRuntime<R> {
    pub fn new(backend: Arc<R>) -> Self {
        Self { backend }
    }
}

/// `runtime.v1.ImageService` over an [`ImageBackend`].
#[derive(Debug)]
pub struct CriImages<I> {
    backend: Arc<I>,
}

impl<I> CriImages<I> {
    pub fn new(backend: Arc<I>) -> Self {
        Self { backend }
    }
}

/// A method answering `Unimplemented`. `#[async_trait]` does not see methods produced by a
/// macro, so this writes out the boxed-future signature it would generate.
macro_rules! unimplemented_rpc {
    ($name:ident, $req:ty, $resp:ty, $label:literal) => {
        fn $name<'life0, 'async_trait>(
            &'life0 self,
            _request: Request<$req>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Reply<$resp>> + Send + 'async_trait>,
        >
        where
            'life0: 'async_trait,
            Self: 'async_trait,
        {
            Box::pin(async move { Err(fail($label, ShimError::Unimplemented($label))) })
        }
    };
}

#[tonic::async_trait]
impl<R: RuntimeBackend> RuntimeService for CriRuntime<R> {
    async fn version(&self, _request: Request<pb::VersionRequest>) -> Reply<pb::VersionResponse> {
        let v = self.backend.version();
        Ok(Response::new(pb::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: v.runtime_name,
            runtime_version: v.runtime_version,
            runtime_api_version: v.runtime_api_version,
        }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Reply<pb::StatusResponse> {
        let conditions = self
            .backend
            .conditions()
            .await
            .into_iter()
            .map(|c| pb::RuntimeCondition {
                r#type: c.kind,
                status: c.status,
                reason: c.reason,
                message: c.message,
            })
            .collect();
        Ok(Response::new(pb::StatusResponse {
            status: Some(pb::RuntimeStatus { conditions }),
            info: Default::default(),
            runtime_handlers: vec![pb::RuntimeHandler {
                name: String::new(),
                features: Some(pb::RuntimeHandlerFeatures::default()),
            }],
            features: Some(pb::RuntimeFeatures::default()),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<pb::RunPodSandboxRequest>,
    ) -> Reply<pb::RunPodSandboxResponse> {
        let r = request.into_inner();
        let spec =
            convert::pod_spec(r.config, r.runtime_handler).map_err(|e| fail("RunPodSandbox", e))?;
        let id = self
            .backend
            .run_pod(spec)
            .await
            .map_err(|e| fail("RunPodSandbox", e))?;
        tracing::info!(pod = %id, "pod sandbox running");
        Ok(Response::new(pb::RunPodSandboxResponse {
            pod_sandbox_id: id,
        }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<pb::StopPodSandboxRequest>,
    ) -> Reply<pb::StopPodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        self.backend
            .stop_pod(&id)
            .await
            .map_err(|e| fail("StopPodSandbox", e))?;
        Ok(Response::new(pb::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<pb::RemovePodSandboxRequest>,
    ) -> Reply<pb::RemovePodSandboxResponse> {
        let id = request.into_inner().pod_sandbox_id;
        self.backend
            .remove_pod(&id)
            .await
            .map_err(|e| fail("RemovePodSandbox", e))?;
        Ok(Response::new(pb::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<pb::PodSandboxStatusRequest>,
    ) -> Reply<pb::PodSandboxStatusResponse> {
        let id = request.into_inner().pod_sandbox_id;
        let pod = self
            .backend
            .pod(&id)
            .await
            .map_err(|e| fail("PodSandboxStatus", e))?;
        let containers = self
            .backend
            .list_containers(crate::domain::ContainerFilter {
                pod_id: Some(pod.id.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| fail("PodSandboxStatus", e))?;
        Ok(Response::new(pb::PodSandboxStatusResponse {
            status: Some(convert::pod_status(&pod)),
            info: Default::default(),
            containers_statuses: containers.iter().map(convert::container_status).collect(),
            timestamp: now_ns(),
        }))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<pb::ListPodSandboxRequest>,
    ) -> Reply<pb::ListPodSandboxResponse> {
        let filter = convert::pod_filter(request.into_inner().filter);
        let pods = self
            .backend
            .list_pods(filter)
            .await
            .map_err(|e| fail("ListPodSandbox", e))?;
        Ok(Response::new(pb::ListPodSandboxResponse {
            items: pods.iter().map(convert::pod_item).collect(),
        }))
    }

    async fn create_container(
        &self,
        request: Request<pb::CreateContainerRequest>,
    ) -> Reply<pb::CreateContainerResponse> {
        let r = request.into_inner();
        let spec = convert::container_spec(r.config).map_err(|e| fail("CreateContainer", e))?;
        let id = self
            .backend
            .create_container(&r.pod_sandbox_id, spec)
            .await
            .map_err(|e| fail("CreateContainer", e))?;
        tracing::info!(container = %id, pod = %r.pod_sandbox_id, "container created");
        Ok(Response::new(pb::CreateContainerResponse {
            container_id: id,
        }))
    }

    async fn start_container(
        &self,
        request: Request<pb::StartContainerRequest>,
    ) -> Reply<pb::StartContainerResponse> {
        let id = request.into_inner().container_id;
        self.backend
            .start_container(&id)
            .await
            .map_err(|e| fail("StartContainer", e))?;
        tracing::info!(container = %id, "container started");
        Ok(Response::new(pb::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<pb::StopContainerRequest>,
    ) -> Reply<pb::StopContainerResponse> {
        let r = request.into_inner();
        let timeout = Duration::from_secs(r.timeout.max(0) as u64);
        self.backend
            .stop_container(&r.container_id, timeout)
            .await
            .map_err(|e| fail("StopContainer", e))?;
        Ok(Response::new(pb::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<pb::RemoveContainerRequest>,
    ) -> Reply<pb::RemoveContainerResponse> {
        let id = request.into_inner().container_id;
        self.backend
            .remove_container(&id)
            .await
            .map_err(|e| fail("RemoveContainer", e))?;
        Ok(Response::new(pb::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<pb::ListContainersRequest>,
    ) -> Reply<pb::ListContainersResponse> {
        let filter = convert::container_filter(request.into_inner().filter);
        let list = self
            .backend
            .list_containers(filter)
            .await
            .map_err(|e| fail("ListContainers", e))?;
        Ok(Response::new(pb::ListContainersResponse {
            containers: list.iter().map(convert::container_item).collect(),
        }))
    }

    async fn container_status(
        &self,
        request: Request<pb::ContainerStatusRequest>,
    ) -> Reply<pb::ContainerStatusResponse> {
        let id = request.into_inner().container_id;
        let c = self
            .backend
            .container(&id)
            .await
            .map_err(|e| fail("ContainerStatus", e))?;
        let mut info = std::collections::HashMap::new();
        if let Some(pid) = c.pid {
            info.insert("pid".to_string(), pid.to_string());
        }
        Ok(Response::new(pb::ContainerStatusResponse {
            status: Some(convert::container_status(&c)),
            info,
        }))
    }

    async fn exec_sync(
        &self,
        request: Request<pb::ExecSyncRequest>,
    ) -> Reply<pb::ExecSyncResponse> {
        let r = request.into_inner();
        if r.cmd.is_empty() {
            return Err(fail(
                "ExecSync",
                ShimError::InvalidArgument("exec needs a command".into()),
            ));
        }
        let timeout = (r.timeout > 0).then(|| Duration::from_secs(r.timeout as u64));
        let out = self
            .backend
            .exec_sync(&r.container_id, r.cmd, timeout)
            .await
            .map_err(|e| fail("ExecSync", e))?;
        Ok(Response::new(pb::ExecSyncResponse {
            stdout: out.stdout,
            stderr: out.stderr,
            exit_code: out.exit_code,
        }))
    }

    async fn container_stats(
        &self,
        request: Request<pb::ContainerStatsRequest>,
    ) -> Reply<pb::ContainerStatsResponse> {
        let id = request.into_inner().container_id;
        let s = self
            .backend
            .container_stats(&id)
            .await
            .map_err(|e| fail("ContainerStats", e))?;
        Ok(Response::new(pb::ContainerStatsResponse {
            stats: Some(convert::container_stats(&s)),
        }))
    }

    async fn list_container_stats(
        &self,
        request: Request<pb::ListContainerStatsRequest>,
    ) -> Reply<pb::ListContainerStatsResponse> {
        let filter = convert::container_stats_filter(request.into_inner().filter);
        let list = self
            .backend
            .list_containers(filter)
            .await
            .map_err(|e| fail("ListContainerStats", e))?;
        let mut stats = Vec::new();
        for c in list {
            if c.state != crate::domain::ContainerState::Running {
                continue;
            }
            // A container that went away between the list and now is simply skipped.
            if let Ok(s) = self.backend.container_stats(&c.id).await {
                stats.push(convert::container_stats(&s));
            }
        }
        Ok(Response::new(pb::ListContainerStatsResponse { stats }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<pb::PodSandboxStatsRequest>,
    ) -> Reply<pb::PodSandboxStatsResponse> {
        let id = request.into_inner().pod_sandbox_id;
        let pod = self
            .backend
            .pod(&id)
            .await
            .map_err(|e| fail("PodSandboxStats", e))?;
        Ok(Response::new(pb::PodSandboxStatsResponse {
            stats: Some(pod_stats(&pod)),
        }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<pb::ListPodSandboxStatsRequest>,
    ) -> Reply<pb::ListPodSandboxStatsResponse> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = crate::domain::PodFilter {
            id: (!f.id.is_empty()).then_some(f.id),
            state: None,
            labels: f.label_selector.into_iter().collect(),
        };
        let pods = self
            .backend
            .list_pods(filter)
            .await
            .map_err(|e| fail("ListPodSandboxStats", e))?;
        Ok(Response::new(pb::ListPodSandboxStatsResponse {
            stats: pods.iter().map(pod_stats).collect(),
        }))
    }

    async fn update_runtime_config(
        &self,
        _request: Request<pb::UpdateRuntimeConfigRequest>,
    ) -> Reply<pb::UpdateRuntimeConfigResponse> {
        // The pod CIDR matters to CNI only; the standalone runtime has no CNI.
        Ok(Response::new(pb::UpdateRuntimeConfigResponse {}))
    }

    async fn runtime_config(
        &self,
        _request: Request<pb::RuntimeConfigRequest>,
    ) -> Reply<pb::RuntimeConfigResponse> {
        Ok(Response::new(pb::RuntimeConfigResponse {
            linux: Some(pb::LinuxRuntimeConfiguration {
                cgroup_driver: pb::CgroupDriver::Cgroupfs as i32,
            }),
        }))
    }

    async fn checkpoint_container(
        &self,
        request: Request<pb::CheckpointContainerRequest>,
    ) -> Reply<pb::CheckpointContainerResponse> {
        let grpc = grpc_deadline(request.metadata());
        let r = request.into_inner();
        let req = CheckpointRequest {
            deadline: crate::deadline::answer_deadline(grpc, r.timeout),
            container_id: r.container_id,
            location: r.location,
        };
        let id = req.container_id.clone();
        let started = Instant::now();
        self.backend
            .checkpoint_container(req)
            .await
            .map_err(|e| fail("CheckpointContainer", e))?;
        tracing::info!(container = %id, elapsed_ms = started.elapsed().as_millis() as u64, "container checkpointed");
        Ok(Response::new(pb::CheckpointContainerResponse {}))
    }

    type GetContainerEventsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::ContainerEventResponse, Status>> + Send>,
    >;

    async fn get_container_events(
        &self,
        _request: Request<pb::GetEventsRequest>,
    ) -> Reply<Self::GetContainerEventsStream> {
        Err(fail(
            "GetContainerEvents",
            ShimError::Unimplemented("GetContainerEvents"),
        ))
    }

    unimplemented_rpc!(
        update_container_resources,
        pb::UpdateContainerResourcesRequest,
        pb::UpdateContainerResourcesResponse,
        "UpdateContainerResources"
    );
    async fn reopen_container_log(
        &self,
        request: Request<pb::ReopenContainerLogRequest>,
    ) -> Reply<pb::ReopenContainerLogResponse> {
        let id = request.into_inner().container_id;
        self.backend
            .reopen_container_log(&id)
            .await
            .map_err(|e| fail("ReopenContainerLog", e))?;
        Ok(Response::new(pb::ReopenContainerLogResponse {}))
    }

    unimplemented_rpc!(exec, pb::ExecRequest, pb::ExecResponse, "Exec");
    unimplemented_rpc!(attach, pb::AttachRequest, pb::AttachResponse, "Attach");
    unimplemented_rpc!(
        port_forward,
        pb::PortForwardRequest,
        pb::PortForwardResponse,
        "PortForward"
    );
    unimplemented_rpc!(
        list_metric_descriptors,
        pb::ListMetricDescriptorsRequest,
        pb::ListMetricDescriptorsResponse,
        "ListMetricDescriptors"
    );
    unimplemented_rpc!(
        list_pod_sandbox_metrics,
        pb::ListPodSandboxMetricsRequest,
        pb::ListPodSandboxMetricsResponse,
        "ListPodSandboxMetrics"
    );
}

fn pod_stats(pod: &crate::domain::Pod) -> pb::PodSandboxStats {
    pb::PodSandboxStats {
        attributes: Some(pb::PodSandboxAttributes {
            id: pod.id.clone(),
            metadata: Some(pb::PodSandboxMetadata {
                name: pod.spec.metadata.name.clone(),
                uid: pod.spec.metadata.uid.clone(),
                namespace: pod.spec.metadata.namespace.clone(),
                attempt: pod.spec.metadata.attempt,
            }),
            labels: pod.spec.labels.clone().into_iter().collect(),
            annotations: pod.spec.annotations.clone().into_iter().collect(),
        }),
        linux: None,
        windows: None,
    }
}

#[tonic::async_trait]
impl<I: ImageBackend> ImageService for CriImages<I> {
    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Reply<pb::ListImagesResponse> {
        let want = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .filter(|s| !s.is_empty());
        let images = match want {
            Some(reference) => self
                .backend
                .status(&reference)
                .await
                .map_err(|e| fail("ListImages", e))?
                .into_iter()
                .collect(),
            None => self
                .backend
                .list()
                .await
                .map_err(|e| fail("ListImages", e))?,
        };
        Ok(Response::new(pb::ListImagesResponse {
            images: images.iter().map(convert::image_out).collect(),
        }))
    }

    async fn image_status(
        &self,
        request: Request<pb::ImageStatusRequest>,
    ) -> Reply<pb::ImageStatusResponse> {
        let reference = request
            .into_inner()
            .image
            .map(|i| i.image)
            .unwrap_or_default();
        if reference.is_empty() {
            return Err(fail(
                "ImageStatus",
                ShimError::InvalidArgument("image status needs an image".into()),
            ));
        }
        let image = self
            .backend
            .status(&reference)
            .await
            .map_err(|e| fail("ImageStatus", e))?;
        // An absent image is not an error: the kubelet reads the empty answer as "pull it".
        Ok(Response::new(pb::ImageStatusResponse {
            image: image.as_ref().map(convert::image_out),
            info: Default::default(),
        }))
    }

    async fn pull_image(
        &self,
        request: Request<pb::PullImageRequest>,
    ) -> Reply<pb::PullImageResponse> {
        let r = request.into_inner();
        let reference = r.image.map(|i| i.image).unwrap_or_default();
        if reference.is_empty() {
            return Err(fail(
                "PullImage",
                ShimError::InvalidArgument("pull needs an image".into()),
            ));
        }
        let image_ref = self
            .backend
            .pull(&reference, convert::auth(r.auth))
            .await
            .map_err(|e| fail("PullImage", e))?;
        tracing::info!(image = %reference, %image_ref, "image pulled");
        Ok(Response::new(pb::PullImageResponse { image_ref }))
    }

    async fn remove_image(
        &self,
        request: Request<pb::RemoveImageRequest>,
    ) -> Reply<pb::RemoveImageResponse> {
        let reference = request
            .into_inner()
            .image
            .map(|i| i.image)
            .unwrap_or_default();
        self.backend
            .remove(&reference)
            .await
            .map_err(|e| fail("RemoveImage", e))?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<pb::ImageFsInfoRequest>,
    ) -> Reply<pb::ImageFsInfoResponse> {
        let now = now_ns();
        let usage = self
            .backend
            .fs_info()
            .await
            .map_err(|e| fail("ImageFsInfo", e))?;
        Ok(Response::new(pb::ImageFsInfoResponse {
            image_filesystems: usage.iter().map(|u| convert::fs_usage(u, now)).collect(),
            container_filesystems: vec![],
        }))
    }
}
