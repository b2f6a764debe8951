#!/usr/bin/env bash
# Step 30: kubeadm, kubelet and kubectl (upstream release binaries, pinned sha256) into
# /usr/local/bin, crictl, and the kubelet's systemd unit with the kubeadm drop-in. The kubelet
# is enabled but only becomes useful after `kubeadm init` (step 50) writes its configuration.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
require_debian12_amd64
load_versions

install_k8s_binary() {
  local name=$1 sha=$2 cached="$CACHE/kubernetes-v$KUBERNETES_VERSION/$1"
  fetch_verified "$KUBERNETES_RELEASE_URL/v$KUBERNETES_VERSION/bin/linux/amd64/$name" "$sha" "$cached"
  install_file "$cached" "/usr/local/bin/$name" 0755 || true
}
install_k8s_binary kubeadm "$KUBEADM_SHA256"
install_k8s_binary kubelet "$KUBELET_SHA256"
install_k8s_binary kubectl "$KUBECTL_SHA256"

crictl_tgz="$CACHE/crictl-v$CRICTL_VERSION-linux-amd64.tar.gz"
fetch_verified "$CRICTL_RELEASE_URL/v$CRICTL_VERSION/crictl-v$CRICTL_VERSION-linux-amd64.tar.gz" \
  "$CRICTL_SHA256" "$crictl_tgz"
if [ "$(crictl --version 2>/dev/null | awk '{print $3}' || true)" != "v$CRICTL_VERSION" ]; then
  tar -xzf "$crictl_tgz" -C /usr/local/bin crictl
  log "installed crictl $CRICTL_VERSION"
fi
install_file "$CONFIG/crictl.yaml" /etc/crictl.yaml 0644 || true

changed=0
if install_file "$CONFIG/systemd/kubelet.service" /etc/systemd/system/kubelet.service 0644; then changed=1; fi
if install_file "$CONFIG/systemd/kubelet.service.d/10-kubeadm.conf" \
  /etc/systemd/system/kubelet.service.d/10-kubeadm.conf 0644; then
  changed=1
fi
systemctl daemon-reload
systemctl enable kubelet.service >/dev/null 2>&1 || die "systemctl enable kubelet failed"
# A running kubelet picks up a changed unit only on restart; before `kubeadm init` there is
# nothing running to restart.
if [ "$changed" = 1 ] && [ -f /var/lib/kubelet/config.yaml ]; then
  systemctl restart kubelet.service
fi

log "kubeadm $(kubeadm version -o short), kubelet $(kubelet --version | awk '{print $2}'), kubectl $KUBERNETES_VERSION, crictl $CRICTL_VERSION"
