#!/usr/bin/env bash
# Step 20: containerd 2.x from the upstream release tarball (pinned sha256), its configuration,
# the bridge CNI network, the hosts.toml that lets it pull from the node-local registry over
# plain HTTP, and its systemd unit. runc is Debian's (installed by step 10).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
require_debian12_amd64
load_versions

command -v runc >/dev/null || die "runc is missing: run step 10 (scripts/setup.sh installs it)"

tarball="$CACHE/containerd-$CONTAINERD_VERSION-linux-amd64.tar.gz"
fetch_verified \
  "$CONTAINERD_RELEASE_URL/v$CONTAINERD_VERSION/containerd-$CONTAINERD_VERSION-linux-amd64.tar.gz" \
  "$CONTAINERD_SHA256" "$tarball"

restart=0
installed=$(/usr/local/bin/containerd --version 2>/dev/null | awk '{print $3}' || true)
if [ "$installed" != "v$CONTAINERD_VERSION" ]; then
  log "installing containerd $CONTAINERD_VERSION into /usr/local/bin (was: ${installed:-none})"
  # The tarball holds bin/containerd, bin/containerd-shim-runc-v2, bin/ctr, ...
  tar -xzf "$tarball" -C /usr/local bin/
  restart=1
fi

if install_file "$CONFIG/containerd/config.toml" /etc/containerd/config.toml 0644; then restart=1; fi
if install_file "$CONFIG/containerd/hosts-localhost-5000.toml" \
  "/etc/containerd/certs.d/$REGISTRY/hosts.toml" 0644; then
  restart=1
fi
# containerd reads the CNI configuration when it sets up a pod; no restart needed for it.
install_file "$CONFIG/cni/10-cpengine-bridge.conflist" /etc/cni/net.d/10-cpengine-bridge.conflist 0644 || true
if install_file "$CONFIG/systemd/containerd.service" /etc/systemd/system/containerd.service 0644; then
  restart=1
fi

enable_and_restart containerd.service "$restart"
wait_for 60 "containerd's socket ${CONTAINERD_SOCKET#unix://}" test -S "${CONTAINERD_SOCKET#unix://}"
wait_for 60 "containerd to answer" ctr --address "${CONTAINERD_SOCKET#unix://}" version

log "containerd $(/usr/local/bin/containerd --version | awk '{print $3}') running, runc: $(runc --version | head -n1)"
