//! CRI messages ↔ the shim's domain types, in one place.

use std::collections::HashMap;

use k8s_cri::v1 as pb;

use crate::domain::*;
use crate::error::{Result, ShimError};

fn map_in(m: HashMap<String, String>) -> Map {
    m.into_iter().collect()
}

fn map_out(m: &Map) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn ns_mode(v: i32) -> Result<NsMode> {
    Ok(
        match pb::NamespaceMode::try_from(v)
            .map_err(|_| ShimError::InvalidArgument(format!("unknown namespace mode {v}")))?
        {
            pb::NamespaceMode::Pod => NsMode::Pod,
            pb::NamespaceMode::Container => NsMode::Container,
            pb::NamespaceMode::Node => NsMode::Node,
            pb::NamespaceMode::Target => NsMode::Target,
        },
    )
}

fn ns_mode_out(m: NsMode) -> i32 {
    (match m {
        NsMode::Pod => pb::NamespaceMode::Pod,
        NsMode::Container => pb::NamespaceMode::Container,
        NsMode::Node => pb::NamespaceMode::Node,
        NsMode::Target => pb::NamespaceMode::Target,
    }) as i32
}

/// `RunPodSandbox`'s config.
pub fn pod_spec(config: Option<pb::PodSandboxConfig>, runtime_handler: String) -> Result<PodSpec> {
    let c = config
        .ok_or_else(|| ShimError::InvalidArgument("pod sandbox config is required".into()))?;
    let md = c
        .metadata
        .ok_or_else(|| ShimError::InvalidArgument("pod sandbox metadata is required".into()))?;
    if md.name.is_empty() || md.namespace.is_empty() || md.uid.is_empty() {
        return Err(ShimError::InvalidArgument(
            "pod sandbox metadata needs name, namespace and uid".into(),
        ));
    }
    let linux = c.linux.unwrap_or_default();
    // Without namespace options (crictl's minimal configs) a pod gets the kubelet's defaults:
    // pod network and IPC, a pid namespace per container.
    let nso = linux
        .security_context
        .as_ref()
        .and_then(|s| s.namespace_options.clone())
        .unwrap_or(pb::NamespaceOption {
            network: pb::NamespaceMode::Pod as i32,
            pid: pb::NamespaceMode::Container as i32,
            ipc: pb::NamespaceMode::Pod as i32,
            ..Default::default()
        });
    if nso
        .userns_options
        .as_ref()
        .is_some_and(|u| u.mode == pb::NamespaceMode::Pod as i32)
    {
        return Err(ShimError::Unimplemented("user namespaces"));
    }
    Ok(PodSpec {
        metadata: PodMetadata {
            name: md.name,
            uid: md.uid,
            namespace: md.namespace,
            attempt: md.attempt,
        },
        hostname: c.hostname,
        log_directory: c.log_directory,
        dns: c.dns_config.map(|d| DnsConfig {
            servers: d.servers,
            searches: d.searches,
            options: d.options,
        }),
        labels: map_in(c.labels),
        annotations: map_in(c.annotations),
        cgroup_parent: linux.cgroup_parent,
        namespaces: PodNamespaces {
            network: ns_mode(nso.network)?,
            pid: ns_mode(nso.pid)?,
            ipc: ns_mode(nso.ipc)?,
        },
        runtime_handler,
    })
}

fn pod_metadata(m: &PodMetadata) -> pb::PodSandboxMetadata {
    pb::PodSandboxMetadata {
        name: m.name.clone(),
        uid: m.uid.clone(),
        namespace: m.namespace.clone(),
        attempt: m.attempt,
    }
}

fn pod_state(s: PodState) -> i32 {
    (match s {
        PodState::Ready => pb::PodSandboxState::SandboxReady,
        PodState::NotReady => pb::PodSandboxState::SandboxNotready,
    }) as i32
}

pub fn pod_filter(f: Option<pb::PodSandboxFilter>) -> PodFilter {
    let Some(f) = f else {
        return PodFilter::default();
    };
    PodFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: f.state.map(|s| {
            if s.state == pb::PodSandboxState::SandboxReady as i32 {
                PodState::Ready
            } else {
                PodState::NotReady
            }
        }),
        labels: map_in(f.label_selector),
    }
}

pub fn pod_item(p: &Pod) -> pb::PodSandbox {
    pb::PodSandbox {
        id: p.id.clone(),
        metadata: Some(pod_metadata(&p.spec.metadata)),
        state: pod_state(p.state),
        created_at: p.created_at,
        labels: map_out(&p.spec.labels),
        annotations: map_out(&p.spec.annotations),
        runtime_handler: p.spec.runtime_handler.clone(),
    }
}

pub fn pod_status(p: &Pod) -> pb::PodSandboxStatus {
    pb::PodSandboxStatus {
        id: p.id.clone(),
        metadata: Some(pod_metadata(&p.spec.metadata)),
        state: pod_state(p.state),
        created_at: p.created_at,
        network: Some(pb::PodSandboxNetworkStatus::default()),
        linux: Some(pb::LinuxPodSandboxStatus {
            namespaces: Some(pb::Namespace {
                options: Some(pb::NamespaceOption {
                    network: ns_mode_out(p.spec.namespaces.network),
                    pid: ns_mode_out(p.spec.namespaces.pid),
                    ipc: ns_mode_out(p.spec.namespaces.ipc),
                    ..Default::default()
                }),
            }),
        }),
        labels: map_out(&p.spec.labels),
        annotations: map_out(&p.spec.annotations),
        runtime_handler: p.spec.runtime_handler.clone(),
    }
}

pub fn image_spec(i: Option<pb::ImageSpec>) -> ImageSpec {
    let i = i.unwrap_or_default();
    ImageSpec {
        image: i.image,
        annotations: map_in(i.annotations),
        user_specified_image: i.user_specified_image,
    }
}

pub fn image_spec_out(i: &ImageSpec) -> pb::ImageSpec {
    pb::ImageSpec {
        image: i.image.clone(),
        annotations: map_out(&i.annotations),
        user_specified_image: i.user_specified_image.clone(),
        runtime_handler: String::new(),
    }
}

fn propagation(v: i32) -> Propagation {
    match pb::MountPropagation::try_from(v) {
        Ok(pb::MountPropagation::PropagationHostToContainer) => Propagation::HostToContainer,
        Ok(pb::MountPropagation::PropagationBidirectional) => Propagation::Bidirectional,
        _ => Propagation::Private,
    }
}

fn propagation_out(p: Propagation) -> i32 {
    (match p {
        Propagation::Private => pb::MountPropagation::PropagationPrivate,
        Propagation::HostToContainer => pb::MountPropagation::PropagationHostToContainer,
        Propagation::Bidirectional => pb::MountPropagation::PropagationBidirectional,
    }) as i32
}

fn mount_out(m: &MountSpec) -> pb::Mount {
    pb::Mount {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        propagation: propagation_out(m.propagation),
        ..Default::default()
    }
}

/// `CreateContainer`'s config.
pub fn container_spec(c: Option<pb::ContainerConfig>) -> Result<ContainerSpec> {
    let c = c.ok_or_else(|| ShimError::InvalidArgument("container config is required".into()))?;
    let md = c
        .metadata
        .ok_or_else(|| ShimError::InvalidArgument("container metadata is required".into()))?;
    if md.name.is_empty() {
        return Err(ShimError::InvalidArgument(
            "container metadata needs a name".into(),
        ));
    }
    let image = image_spec(c.image);
    if image.image.is_empty() {
        return Err(ShimError::InvalidArgument(
            "container config needs an image".into(),
        ));
    }
    if !c.devices.is_empty() || !c.cdi_devices.is_empty() {
        return Err(ShimError::Unimplemented("devices in containers"));
    }
    let mut mounts = Vec::with_capacity(c.mounts.len());
    for m in c.mounts {
        if m.image.is_some() {
            return Err(ShimError::Unimplemented("image volumes"));
        }
        if !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty() {
            return Err(ShimError::Unimplemented("id-mapped mounts"));
        }
        mounts.push(MountSpec {
            container_path: m.container_path,
            host_path: m.host_path,
            readonly: m.readonly,
            propagation: propagation(m.propagation),
        });
    }
    let linux = c.linux.unwrap_or_default();
    let r = linux.resources.unwrap_or_default();
    let sc = linux.security_context.unwrap_or_default();
    let caps = sc.capabilities.unwrap_or_default();
    let pid_mode = match sc.namespace_options.as_ref() {
        Some(n) => Some(ns_mode(n.pid)?),
        None => None,
    };
    Ok(ContainerSpec {
        name: md.name,
        attempt: md.attempt,
        image,
        command: c.command,
        args: c.args,
        working_dir: c.working_dir,
        envs: c.envs.into_iter().map(|kv| (kv.key, kv.value)).collect(),
        mounts,
        labels: map_in(c.labels),
        annotations: map_in(c.annotations),
        log_path: c.log_path,
        stdin: c.stdin,
        tty: c.tty,
        resources: Resources {
            cpu_period: r.cpu_period,
            cpu_quota: r.cpu_quota,
            cpu_shares: r.cpu_shares,
            memory_limit_in_bytes: r.memory_limit_in_bytes,
            cpuset_cpus: r.cpuset_cpus,
            cpuset_mems: r.cpuset_mems,
            oom_score_adj: r.oom_score_adj,
        },
        security: Security {
            privileged: sc.privileged,
            run_as_user: sc.run_as_user.map(|v| v.value),
            run_as_group: sc.run_as_group.map(|v| v.value),
            run_as_username: sc.run_as_username,
            readonly_rootfs: sc.readonly_rootfs,
            supplemental_groups: sc.supplemental_groups,
            no_new_privs: sc.no_new_privs,
            add_capabilities: caps.add_capabilities,
            drop_capabilities: caps.drop_capabilities,
            pid_mode,
        },
    })
}

fn container_state(s: ContainerState) -> i32 {
    (match s {
        ContainerState::Created => pb::ContainerState::ContainerCreated,
        ContainerState::Running => pb::ContainerState::ContainerRunning,
        ContainerState::Exited => pb::ContainerState::ContainerExited,
        ContainerState::Unknown => pb::ContainerState::ContainerUnknown,
    }) as i32
}

pub fn container_filter(f: Option<pb::ContainerFilter>) -> ContainerFilter {
    let Some(f) = f else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: f
            .state
            .map(|s| match pb::ContainerState::try_from(s.state) {
                Ok(pb::ContainerState::ContainerCreated) => ContainerState::Created,
                Ok(pb::ContainerState::ContainerRunning) => ContainerState::Running,
                Ok(pb::ContainerState::ContainerExited) => ContainerState::Exited,
                _ => ContainerState::Unknown,
            }),
        pod_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        labels: map_in(f.label_selector),
    }
}

pub fn container_stats_filter(f: Option<pb::ContainerStatsFilter>) -> ContainerFilter {
    let Some(f) = f else {
        return ContainerFilter::default();
    };
    ContainerFilter {
        id: (!f.id.is_empty()).then_some(f.id),
        state: None,
        pod_id: (!f.pod_sandbox_id.is_empty()).then_some(f.pod_sandbox_id),
        labels: map_in(f.label_selector),
    }
}

pub fn container_item(c: &ContainerInfo) -> pb::Container {
    pb::Container {
        id: c.id.clone(),
        pod_sandbox_id: c.pod_id.clone(),
        metadata: Some(pb::ContainerMetadata {
            name: c.name.clone(),
            attempt: c.attempt,
        }),
        image: Some(image_spec_out(&c.image)),
        image_ref: c.image_ref.clone(),
        state: container_state(c.state),
        created_at: c.created_at,
        labels: map_out(&c.labels),
        annotations: map_out(&c.annotations),
        image_id: c.image_id.clone(),
    }
}

pub fn container_status(c: &ContainerInfo) -> pb::ContainerStatus {
    pb::ContainerStatus {
        id: c.id.clone(),
        metadata: Some(pb::ContainerMetadata {
            name: c.name.clone(),
            attempt: c.attempt,
        }),
        state: container_state(c.state),
        created_at: c.created_at,
        started_at: c.started_at,
        finished_at: c.finished_at,
        exit_code: c.exit_code,
        image: Some(image_spec_out(&c.image)),
        image_ref: c.image_ref.clone(),
        reason: c.reason.clone(),
        message: c.message.clone(),
        labels: map_out(&c.labels),
        annotations: map_out(&c.annotations),
        mounts: c.mounts.iter().map(mount_out).collect(),
        log_path: c.log_path.clone(),
        resources: None,
        image_id: c.image_id.clone(),
        user: None,
    }
}

fn u64v(v: Option<u64>) -> Option<pb::UInt64Value> {
    v.map(|value| pb::UInt64Value { value })
}

pub fn container_stats(s: &ContainerStats) -> pb::ContainerStats {
    pb::ContainerStats {
        attributes: Some(pb::ContainerAttributes {
            id: s.id.clone(),
            metadata: Some(pb::ContainerMetadata {
                name: s.name.clone(),
                attempt: s.attempt,
            }),
            labels: map_out(&s.labels),
            annotations: map_out(&s.annotations),
        }),
        cpu: Some(pb::CpuUsage {
            timestamp: s.timestamp,
            usage_core_nano_seconds: u64v(s.cpu_usage_ns),
            usage_nano_cores: None,
        }),
        memory: Some(pb::MemoryUsage {
            timestamp: s.timestamp,
            working_set_bytes: u64v(s.memory_working_set),
            ..Default::default()
        }),
        writable_layer: Some(pb::FilesystemUsage {
            timestamp: s.timestamp,
            fs_id: Some(pb::FilesystemIdentifier {
                mountpoint: s.writable_layer_mountpoint.clone(),
            }),
            used_bytes: u64v(s.writable_layer_bytes),
            inodes_used: None,
        }),
        swap: None,
    }
}

pub fn image_out(i: &ImageInfo) -> pb::Image {
    pb::Image {
        id: i.id.clone(),
        repo_tags: i.repo_tags.clone(),
        repo_digests: i.repo_digests.clone(),
        size: i.size,
        uid: i.uid.map(|value| pb::Int64Value { value }),
        username: i.username.clone(),
        spec: Some(pb::ImageSpec {
            image: i.id.clone(),
            annotations: map_out(&i.annotations),
            ..Default::default()
        }),
        pinned: i.pinned,
    }
}

pub fn auth(a: Option<pb::AuthConfig>) -> Auth {
    let a = a.unwrap_or_default();
    Auth {
        username: a.username,
        password: a.password,
        auth: a.auth,
        server_address: a.server_address,
        identity_token: a.identity_token,
        registry_token: a.registry_token,
    }
}

pub fn fs_usage(u: &FsUsage, timestamp: i64) -> pb::FilesystemUsage {
    pb::FilesystemUsage {
        timestamp,
        fs_id: Some(pb::FilesystemIdentifier {
            mountpoint: u.mountpoint.clone(),
        }),
        used_bytes: Some(pb::UInt64Value {
            value: u.used_bytes,
        }),
        inodes_used: Some(pb::UInt64Value {
            value: u.inodes_used,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_config_needs_metadata_and_maps_namespaces() {
        assert!(matches!(
            pod_spec(None, String::new()),
            Err(ShimError::InvalidArgument(_))
        ));
        let cfg = pb::PodSandboxConfig {
            metadata: Some(pb::PodSandboxMetadata {
                name: "p".into(),
                uid: "u".into(),
                namespace: "default".into(),
                attempt: 1,
            }),
            linux: Some(pb::LinuxPodSandboxConfig {
                security_context: Some(pb::LinuxSandboxSecurityContext {
                    namespace_options: Some(pb::NamespaceOption {
                        network: pb::NamespaceMode::Node as i32,
                        pid: pb::NamespaceMode::Container as i32,
                        ipc: pb::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = pod_spec(Some(cfg), "runc".into()).unwrap();
        assert_eq!(s.namespaces.network, NsMode::Node);
        assert_eq!(s.namespaces.pid, NsMode::Container);
        assert_eq!(s.namespaces.ipc, NsMode::Pod);
        assert_eq!(s.metadata.attempt, 1);
    }

    #[test]
    fn container_config_rejects_what_the_runtime_cannot_do() {
        let base = pb::ContainerConfig {
            metadata: Some(pb::ContainerMetadata {
                name: "c".into(),
                attempt: 0,
            }),
            image: Some(pb::ImageSpec {
                image: "busybox".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(container_spec(Some(base.clone())).is_ok());
        let mut dev = base.clone();
        dev.devices.push(pb::Device::default());
        assert!(matches!(
            container_spec(Some(dev)),
            Err(ShimError::Unimplemented(_))
        ));
        let mut noimg = base;
        noimg.image = None;
        assert!(matches!(
            container_spec(Some(noimg)),
            Err(ShimError::InvalidArgument(_))
        ));
    }
}
