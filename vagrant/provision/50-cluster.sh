#!/usr/bin/env bash
# Step 50: the one-node cluster. `kubeadm init --config vagrant/config/kubeadm.yaml` (criSocket:
# the shim; kubelet feature gate ContainerCheckpoint; cgroup driver systemd), kubeconfigs for
# root and the vagrant user, and a wait until the node is Ready. Skipped when the cluster is
# already up; a half-finished earlier init is reset first.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
load_versions

export KUBECONFIG=/etc/kubernetes/admin.conf

for unit in containerd.service cpengine-shim.service docker-registry.service; do
  systemctl is-active --quiet "$unit" || die "$unit is not running: run the earlier steps first"
done

cluster_up() {
  [ -f /etc/kubernetes/admin.conf ] && kubectl get --raw=/readyz >/dev/null 2>&1
}

if cluster_up; then
  log "cluster already initialised"
else
  if [ -e /etc/kubernetes/manifests/kube-apiserver.yaml ] || [ -e /etc/kubernetes/admin.conf ]; then
    log "an earlier kubeadm init did not finish: resetting it"
    kubeadm reset --force --cri-socket "$CPENGINE_CRI_SOCKET" >&2
  fi
  log "kubeadm init (Kubernetes $KUBERNETES_VERSION, CRI $CPENGINE_CRI_SOCKET)"
  kubeadm init --config "$CONFIG/kubeadm.yaml" >&2 \
    || die "kubeadm init failed: see the output above, journalctl -u kubelet and journalctl -u cpengine-shim"
fi

for home in /root /home/vagrant; do
  [ -d "$home" ] || continue
  owner=$(stat -c %U:%G "$home")
  install -d -m 0700 -o "${owner%%:*}" -g "${owner##*:}" "$home/.kube"
  if ! cmp -s /etc/kubernetes/admin.conf "$home/.kube/config"; then
    install -m 0600 -o "${owner%%:*}" -g "${owner##*:}" /etc/kubernetes/admin.conf "$home/.kube/config"
    log "kubeconfig written to $home/.kube/config"
  fi
done

node=$(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')
log "waiting for node $node to be Ready"
kubectl wait --for=condition=Ready "node/$node" --timeout=300s >&2 \
  || die "node $node is not Ready: kubectl describe node $node; journalctl -u kubelet"
kubectl get nodes -o wide >&2

log "cluster ready; next: sudo /cpengine/vagrant/walkthrough.sh"
