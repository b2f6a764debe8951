#!/usr/bin/env bash
# Step 00: the base a kubeadm node needs on Debian 12 - packages (conntrack for kube-proxy, the
# CNI plugins, curl, jq, ...), the overlay and br_netfilter modules, the forwarding/bridge
# sysctls, and swap off (the kubelet refuses to start with swap on by default).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
require_debian12_amd64

apt_install ca-certificates curl jq rsync tar xz-utils gzip iproute2 iptables conntrack socat \
  ethtool ebtables kmod containernetworking-plugins

if write_file /etc/modules-load.d/cpengine-playground.conf 0644 <<'EOF'
# Kubernetes networking and containerd's overlayfs snapshotter (vagrant/provision/00-base.sh)
overlay
br_netfilter
EOF
then
  log "kernel modules configured"
fi
for m in overlay br_netfilter; do
  if ! lsmod | grep -q "^$m "; then
    modprobe "$m" || die "modprobe $m failed"
  fi
done

if write_file /etc/sysctl.d/90-cpengine-playground.conf 0644 <<'EOF'
# Pod traffic crosses the cni0 bridge and is routed/NATed by kube-proxy's iptables rules
# (vagrant/provision/00-base.sh)
net.bridge.bridge-nf-call-iptables = 1
net.bridge.bridge-nf-call-ip6tables = 1
net.ipv4.ip_forward = 1
EOF
then
  sysctl --system >/dev/null
  log "sysctls applied"
fi

# Swap: off now and at every boot (the fstab entries are commented out, not deleted).
if [ -n "$(swapon --noheadings --show=NAME 2>/dev/null)" ]; then
  log "turning swap off"
  swapoff -a
fi
if grep -Eq '^[^#].*[[:space:]]swap[[:space:]]' /etc/fstab; then
  sed -i -E 's/^([^#].*[[:space:]]swap[[:space:]].*)$/# disabled for the kubelet: \1/' /etc/fstab
  systemctl daemon-reload
  log "swap entries in /etc/fstab commented out"
fi

log "base ready: $(uname -r), $(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
