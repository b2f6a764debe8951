#!/usr/bin/env bash
# Step 25: the node-local registry for the walkthrough's images, localhost:5000.
#
# Debian's docker-registry package rather than the registry image as a pod, because
#   * it comes from the distribution (scripts/setup.sh installs it; the project's CI uses the
#     same one), so no image has to be pulled from a public registry to get started;
#   * it is up before the cluster exists and independent of it: images can be pushed before
#     `kubeadm init`, and a broken or reset cluster does not take the images with it;
#   * containerd pulls from it on loopback (config/containerd/hosts-localhost-5000.toml) with
#     no Service, NodePort or TLS to set up.
# It listens on 127.0.0.1 only (no authentication is configured).
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
load_versions

command -v docker-registry >/dev/null \
  || die "docker-registry is missing: run step 10 (scripts/setup.sh installs it)"

restart=0
if install_file "$CONFIG/registry.yml" /etc/cpengine-playground/registry.yml 0644; then restart=1; fi
if install_file "$CONFIG/systemd/docker-registry.service.d/10-cpengine-playground.conf" \
  /etc/systemd/system/docker-registry.service.d/10-cpengine-playground.conf 0644; then
  restart=1
fi
enable_and_restart docker-registry.service "$restart"
wait_for 30 "the registry at http://$REGISTRY/v2/" curl -fsS "http://$REGISTRY/v2/"

log "registry answering at http://$REGISTRY/v2/"
