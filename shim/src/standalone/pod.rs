//! Pod sandboxes: a record, the pod's resolv.conf and hostname files, and a namespace holder.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::domain::*;
use crate::error::{Result, ShimError};
use crate::holder::{self, HolderSpec};

use super::store::{HolderRecord, PodRecord, new_id};
use super::{ImageBackend, Standalone, create_private_dir};

/// The pod as the CRI sees it: ready while its record says so and its holder lives.
pub(super) fn to_pod(rec: &PodRecord) -> Pod {
    let holder_ok = rec.holder.is_none_or(|h| h.holder().alive());
    Pod {
        id: rec.id.clone(),
        spec: rec.spec.clone(),
        state: if rec.state == PodState::Ready && holder_ok {
            PodState::Ready
        } else {
            PodState::NotReady
        },
        created_at: rec.created_at,
    }
}

fn check_modes(ns: &PodNamespaces) -> Result<()> {
    match ns.network {
        NsMode::Pod | NsMode::Node => {}
        m => {
            return Err(ShimError::InvalidArgument(format!(
                "pod network namespace mode {m:?} is not valid for a pod"
            )));
        }
    }
    match ns.ipc {
        NsMode::Pod | NsMode::Node => {}
        m => {
            return Err(ShimError::InvalidArgument(format!(
                "pod ipc namespace mode {m:?} is not valid for a pod"
            )));
        }
    }
    match ns.pid {
        NsMode::Container | NsMode::Node => Ok(()),
        NsMode::Pod => Err(ShimError::Unimplemented(
            "a pid namespace shared by the pod (shareProcessNamespace)",
        )),
        NsMode::Target => Err(ShimError::InvalidArgument(
            "pod pid namespace mode TARGET is only valid for containers".into(),
        )),
    }
}

/// The absolute log path: `log_path` under the pod's log directory unless absolute; a file in
/// the container's directory when the kubelet gives none.
pub(super) fn log_path(pod: &PodRecord, c: &ContainerSpec, lib_dir: &Path) -> Result<PathBuf> {
    let p = Path::new(&c.log_path);
    let path = if c.log_path.is_empty() {
        lib_dir.join("container.log")
    } else if p.is_absolute() {
        p.to_path_buf()
    } else if !pod.spec.log_directory.is_empty() {
        Path::new(&pod.spec.log_directory).join(p)
    } else {
        lib_dir.join(p)
    };
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ShimError::InvalidArgument(format!(
            "log path {} must not contain '..'",
            path.display()
        )));
    }
    Ok(path)
}

/// resolv.conf text for a DNS config.
fn resolv_conf(d: &DnsConfig) -> String {
    let mut s = String::new();
    if !d.searches.is_empty() {
        s.push_str(&format!("search {}\n", d.searches.join(" ")));
    }
    for n in &d.servers {
        s.push_str(&format!("nameserver {n}\n"));
    }
    if !d.options.is_empty() {
        s.push_str(&format!("options {}\n", d.options.join(" ")));
    }
    s
}

impl<I: ImageBackend> Standalone<I> {
    pub(super) async fn run_pod_impl(&self, spec: PodSpec) -> Result<String> {
        check_modes(&spec.namespaces)?;
        let md = &spec.metadata;
        if let Some(other) = self.store.pods().iter().find(|p| {
            let m = &p.spec.metadata;
            m.name == md.name
                && m.namespace == md.namespace
                && m.uid == md.uid
                && m.attempt == md.attempt
        }) {
            return Err(ShimError::AlreadyExists(format!(
                "pod {}/{} (uid {}, attempt {}) already exists as {}",
                md.namespace, md.name, md.uid, md.attempt, other.id
            )));
        }
        let id = new_id();
        let dir = self.store.pod_dir(&id);
        create_private_dir(&dir)?;
        let result = self.setup_pod(&id, spec).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        result
    }

    async fn setup_pod(&self, id: &str, spec: PodSpec) -> Result<String> {
        let dir = self.store.pod_dir(id);
        let host_net = spec.namespaces.network == NsMode::Node;
        // /etc/resolv.conf: the pod's DNS config, else the host's.
        let resolv = dir.join("resolv.conf");
        let text = match &spec.dns {
            Some(d) if !d.servers.is_empty() || !d.searches.is_empty() => resolv_conf(d),
            _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        };
        std::fs::write(&resolv, text).map_err(ShimError::fs("writing", &resolv))?;
        // /etc/hostname: the pod's hostname in its own UTS namespace, the host's otherwise.
        let hostname = if host_net || spec.hostname.is_empty() {
            nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_default()
        } else {
            spec.hostname.clone()
        };
        let hostname_file = dir.join("hostname");
        std::fs::write(&hostname_file, format!("{hostname}\n"))
            .map_err(ShimError::fs("writing", &hostname_file))?;

        let hs = HolderSpec {
            net: !host_net,
            ipc: spec.namespaces.ipc == NsMode::Pod,
            uts: !host_net,
            hostname: (!host_net && !spec.hostname.is_empty()).then(|| spec.hostname.clone()),
        };
        let holder = if hs.net || hs.ipc || hs.uts {
            let exe = self.cfg.exe.clone();
            let hs2 = hs.clone();
            let h = tokio::task::spawn_blocking(move || holder::spawn(&exe, &hs2))
                .await
                .map_err(|e| ShimError::Internal(format!("holder task: {e}")))??;
            Some(HolderRecord {
                pid: h.pid,
                start: h.start,
                net: hs.net,
                ipc: hs.ipc,
                uts: hs.uts,
            })
        } else {
            None
        };
        let rec = PodRecord {
            id: id.to_string(),
            spec,
            created_at: now_ns(),
            state: PodState::Ready,
            holder,
            resolv_conf: Some(resolv),
            hostname_file: Some(hostname_file),
        };
        if let Err(e) = self.store.save_pod(&rec) {
            if let Some(h) = &rec.holder {
                holder::kill(&h.holder());
            }
            return Err(e);
        }
        Ok(id.to_string())
    }

    pub(super) async fn stop_pod_impl(&self, id: &str) -> Result<()> {
        let id = match self.store.pod_id(id) {
            Ok(id) => id,
            Err(ShimError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for c in self.store.ctrs().into_iter().filter(|c| c.pod_id == id) {
            let _lock = self.locks.lock(&c.id).await;
            self.stop_locked(&c.id, Duration::ZERO).await?;
        }
        let Some(mut rec) = self.store.pod(&id) else {
            return Ok(());
        };
        if let Some(h) = rec.holder {
            tokio::task::spawn_blocking(move || holder::kill(&h.holder()))
                .await
                .map_err(|e| ShimError::Internal(format!("holder task: {e}")))?;
        }
        rec.state = PodState::NotReady;
        self.store.save_pod(&rec)
    }

    pub(super) async fn remove_pod_impl(&self, id: &str) -> Result<()> {
        let id = match self.store.pod_id(id) {
            Ok(id) => id,
            Err(ShimError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        for c in self.store.ctrs().into_iter().filter(|c| c.pod_id == id) {
            let _lock = self.locks.lock(&c.id).await;
            self.remove_locked(&c.id).await?;
        }
        if let Some(rec) = self.store.pod(&id)
            && let Some(h) = rec.holder
        {
            tokio::task::spawn_blocking(move || holder::kill(&h.holder()))
                .await
                .map_err(|e| ShimError::Internal(format!("holder task: {e}")))?;
        }
        self.store.forget_pod(&id);
        tracing::info!(pod = %id, "pod sandbox removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_the_runtime_cannot_provide_are_refused() {
        let ok = PodNamespaces {
            network: NsMode::Pod,
            pid: NsMode::Container,
            ipc: NsMode::Pod,
        };
        assert!(check_modes(&ok).is_ok());
        assert!(matches!(
            check_modes(&PodNamespaces {
                pid: NsMode::Pod,
                ..ok
            }),
            Err(ShimError::Unimplemented(_))
        ));
        assert!(matches!(
            check_modes(&PodNamespaces {
                network: NsMode::Container,
                ..ok
            }),
            Err(ShimError::InvalidArgument(_))
        ));
    }

    #[test]
    fn resolv_conf_lists_search_servers_options() {
        let d = DnsConfig {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["ns.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search ns.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }
}
