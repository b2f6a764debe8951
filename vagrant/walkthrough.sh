#!/usr/bin/env bash
# The checkpoint/restore walkthrough of the seeds, on the playground VM, with cpengine:
#
#   1. build a tiny stateful image (busybox) and push it to the node's registry
#   2. run it as pod "counter": a shell keeps `started` and a counter in memory, httpd serves them
#   3. checkpoint its container through the kubelet API (POST /checkpoint/default/counter/counter
#      with the apiserver's kubelet client certificate); the kubelet sends CRI
#      CheckpointContainer to cpengine-shim, which writes the archive with the cpengine engine
#   4. look at the archive: ls -l, tar tf, cpengine inspect
#   5. cpengine image build + cpengine image push: a checkpoint image in the node's registry
#   6. delete the pod, create pod "counter-restored" from the checkpoint image
#   7. check the state came back: same `started`, and the count carried on from the checkpoint
#
# Run inside the VM as root:   vagrant ssh -c 'sudo /cpengine/vagrant/walkthrough.sh'
# The CRI calls each step causes are listed in vagrant/README.md ("What happens at the CRI").
#
# Environment:
#   WALKTHROUGH_PAUSE=1   wait for Enter before each step (when run on a terminal)
# errtrace (-E): the ERR trap below also fires inside functions, so every failure is reported.
set -Eeuo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=config/versions.env
. "$HERE/config/versions.env"
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
export KUBECONFIG=${KUBECONFIG:-/etc/kubernetes/admin.conf}

NS=default
POD=counter
CTR=counter
RESTORED=counter-restored
KUBELET=https://localhost:10250
PKI=/etc/kubernetes/pki
CERT=$PKI/apiserver-kubelet-client.crt
KEY=$PKI/apiserver-kubelet-client.key
# The checkpoint image under its local name (cpengine's store) and in the registry.
LOCAL_CHECKPOINT_REF=${CHECKPOINT_IMAGE#"$REGISTRY"/}

WORK=$(mktemp -d /var/tmp/cpengine-walkthrough.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

STEP_NO=0
STEP_NAME="preflight"

bold() { printf '\033[1m%s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }

step() {
  STEP_NO=$((STEP_NO + 1))
  STEP_NAME=$*
  printf '\n'
  bold "==> Step $STEP_NO: $*"
  if [ "${WALKTHROUGH_PAUSE:-0}" = 1 ] && [ -t 0 ]; then
    read -r -p "    (press Enter to run it) " _
  fi
}

# run CMD...: shows the command (on stderr, so that CMD's own output can be redirected alone),
# then runs it.
run() {
  printf '\033[2m$ %s\033[0m\n' "$*" >&2
  "$@"
}

# Known error messages and what they mean here (the README's troubleshooting section has more).
explain() {
  local text=$1
  case "$text" in
    *"only supported in the CRI v1 runtime API"*)
      note "hint: the kubelet reached a runtime that speaks only the old CRI v1alpha2 API. Here the"
      note "      kubelet must talk to cpengine-shim (CRI v1): check containerRuntimeEndpoint in"
      note "      /var/lib/kubelet/config.yaml and --container-runtime-endpoint in kubeadm-flags.env" ;;
    *"checkpoint/restore support not available"* | *"criu"*"not found"* | *"CRIU"*)
      note "hint: CRIU is missing, too old or unusable. Run 'cpengine check' and"
      note "      'journalctl -u cpengine-shim'; /cpengine/vagrant/provision/10-criu.sh reinstalls it" ;;
    *"Unimplemented"* | *"not implemented"*)
      note "hint: the call reached a runtime that does not implement it - is the kubelet talking to"
      note "      containerd directly instead of cpengine-shim? (systemctl status cpengine-shim)" ;;
    *"disabled by configuration"*)
      note "hint: containerd >= 2.3.4 restores through CreateContainer only with"
      note "      enable_experimental_restore_via_create = true (vagrant/config/containerd/config.toml)" ;;
    *"pod level PID namespace requested"*)
      note "hint: that is CRI-O without an infra container (--drop-infra-ctr); see the README" ;;
    *"404"* | *"page not found"*)
      note "hint: the kubelet has no /checkpoint endpoint: the ContainerCheckpoint feature gate is off" ;;
    *"401"* | *"403"* | *"Unauthorized"* | *"Forbidden"*)
      note "hint: the kubelet refused the client certificate; use $CERT and its key" ;;
  esac
}

fail() {
  printf '\n\033[1;31mFAILED in step %d (%s):\033[0m %s\n' "$STEP_NO" "$STEP_NAME" "$*" >&2
  explain "$*" >&2
  note "logs: journalctl -u cpengine-shim -u containerd -u kubelet --since '-10min'" >&2
  exit 1
}
trap 'fail "command failed (line $LINENO): $BASH_COMMAND"' ERR

need() {
  command -v "$1" >/dev/null || fail "$1 not found: $2"
}

# registry_has REF: the registry holds a manifest for REF (registry/repository:tag).
registry_has() {
  local ref=${1#"$REGISTRY"/}
  curl -fsS -o /dev/null \
    -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' \
    "http://$REGISTRY/v2/${ref%:*}/manifests/${ref##*:}"
}

# pod_state POD: prints "started=<unix time> count=<n>" as the pod's httpd serves it.
pod_state() {
  local ip
  ip=$(kubectl get pod -n "$NS" "$1" -o jsonpath='{.status.podIP}')
  [ -n "$ip" ] || return 1
  curl -fsS --max-time 5 "http://$ip:8080/state"
}

field() { # field NAME "started=... count=..."
  printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"
}

wait_ready() {
  if ! kubectl wait -n "$NS" --for=condition=Ready "pod/$1" --timeout="$2"; then
    kubectl describe pod -n "$NS" "$1" | tail -n 25 >&2 || true
    fail "pod $1 did not become Ready within $2 ($(kubectl get pod -n "$NS" "$1" -o jsonpath='{.status.containerStatuses[0].state}' 2>/dev/null || true))"
  fi
}

########################################################################################
step "preflight: cluster, shim, registry, CRIU"
[ "$(id -u)" -eq 0 ] || fail "run as root: the kubelet's client key and CRIU need it (sudo $0)"
need kubectl "run vagrant/provision/30-kubernetes.sh"
need crictl "run vagrant/provision/30-kubernetes.sh"
need cpengine "run vagrant/provision/40-cpengine.sh"
need jq "run vagrant/provision/00-base.sh"
need podman "run vagrant/provision/10-criu.sh (scripts/setup.sh installs podman)"
if [ ! -f "$CERT" ] || [ ! -f "$KEY" ]; then
  fail "no kubelet client certificate in $PKI: run vagrant/provision/50-cluster.sh"
fi
kubectl get --raw=/readyz >/dev/null || fail "the API server does not answer: run vagrant/provision/50-cluster.sh"
run crictl --runtime-endpoint "$CPENGINE_CRI_SOCKET" version \
  || fail "cpengine-shim does not answer on $CPENGINE_CRI_SOCKET (systemctl status cpengine-shim)"
curl -fsS -o /dev/null "http://$REGISTRY/v2/" || fail "no registry at $REGISTRY: run vagrant/provision/25-registry.sh"
run cpengine check || fail "cpengine check failed: CRIU is not usable"
run kubectl get nodes -o wide

########################################################################################
step "a stateful workload image: busybox + a counter, pushed to $REGISTRY"
if registry_has "$WORKLOAD_IMAGE"; then
  note "$WORKLOAD_IMAGE is already in the registry"
else
  busybox=/bin/busybox
  [ -x "$busybox" ] || fail "$busybox missing: scripts/setup.sh installs busybox-static"
  if ldd "$busybox" >/dev/null 2>&1; then
    fail "$busybox is dynamically linked: install busybox-static (the image has no libc)"
  fi
  rootfs="$WORK/rootfs"
  mkdir -p "$rootfs/bin" "$rootfs/www" "$rootfs/tmp"
  cp "$busybox" "$rootfs/bin/busybox"
  for applet in sh date httpd mkdir mv sleep cat ls ps; do
    ln -s busybox "$rootfs/bin/$applet"
  done
  tar -C "$rootfs" -cf "$WORK/rootfs.tar" .
  run podman import --change 'CMD ["/bin/sh"]' "$WORK/rootfs.tar" "$WORKLOAD_IMAGE" >/dev/null
  run podman push --tls-verify=false --format oci "$WORKLOAD_IMAGE"
fi

########################################################################################
step "run pod $POD"
kubectl delete pod -n "$NS" "$POD" "$RESTORED" --ignore-not-found --wait=true >/dev/null
run kubectl apply -f "$HERE/manifests/counter.yaml"
wait_ready "$POD" 180s
run kubectl get pod -n "$NS" "$POD" -o wide
for _ in $(seq 1 60); do
  state=$(pod_state "$POD" || true)
  [ "$(field count "$state")" -ge 5 ] 2>/dev/null && break
  sleep 1
done
[ -n "${state:-}" ] || fail "pod $POD does not serve /state on port 8080"
note "state served by the pod: $state"

########################################################################################
step "checkpoint $NS/$POD/$CTR through the kubelet API"
before=$(pod_state "$POD") || fail "could not read the pod's state before the checkpoint"
started_before=$(field started "$before")
count_before=$(field count "$before")
note "before the checkpoint: $before"
run curl -sk -X POST "$KUBELET/checkpoint/$NS/$POD/$CTR" \
  --cert "$CERT" --key "$KEY" -o "$WORK/checkpoint.json" -w '%{http_code}\n' >"$WORK/http_code" \
  || fail "curl could not reach the kubelet at $KUBELET"
code=$(cat "$WORK/http_code")
body=$(cat "$WORK/checkpoint.json")
printf '%s\n' "$body"
[ "$code" = 200 ] || fail "kubelet answered HTTP $code: $body"
archive=$(jq -r '.items[0] // empty' "$WORK/checkpoint.json") \
  || fail "the kubelet's answer is not the expected {\"items\":[\"<path>\"]}: $body"
[ -n "$archive" ] || fail "the kubelet's answer names no archive: $body"
[ -f "$archive" ] || fail "the kubelet reported $archive, but there is no such file"

########################################################################################
step "the pod is still running"
run kubectl get pod -n "$NS" "$POD"
sleep 2
note "state now: $(pod_state "$POD")"

########################################################################################
step "the checkpoint archive"
run ls -l "$archive"
# --force-local: the kubelet's file names contain ':' (the RFC 3339 time), which GNU tar would
# otherwise take for a remote host.
tar --force-local -tf "$archive" >"$WORK/members" || fail "tar cannot read $archive"
printf '\033[2m$ tar --force-local -tf %s | head -n 20\033[0m\n' "$archive" >&2
head -n 20 "$WORK/members"
note "... $(wc -l <"$WORK/members") members"
for member in checkpoint/ config.dump spec.dump; do
  grep -qx "$member" "$WORK/members" || fail "the archive has no $member member"
done

########################################################################################
step "cpengine inspect"
run cpengine inspect "$archive"
run cpengine inspect "$archive" --ps-tree

########################################################################################
step "a checkpoint image: cpengine image build, cpengine image push"
run cpengine image build "$archive" --tag "$LOCAL_CHECKPOINT_REF"
run cpengine image push "$LOCAL_CHECKPOINT_REF" "$CHECKPOINT_IMAGE" --insecure
registry_has "$CHECKPOINT_IMAGE" || fail "$CHECKPOINT_IMAGE is not in the registry after the push"
ref=${CHECKPOINT_IMAGE#"$REGISTRY"/}
note "annotations the runtimes look for (containerd: org.criu.checkpoint.container.name,"
note "CRI-O: io.kubernetes.cri-o.annotations.checkpoint.name):"
curl -fsS -H 'Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json' \
  "http://$REGISTRY/v2/${ref%:*}/manifests/${ref##*:}" | jq '.annotations // {}'

########################################################################################
step "delete pod $POD"
run kubectl delete pod -n "$NS" "$POD" --wait=true

########################################################################################
step "create pod $RESTORED from $CHECKPOINT_IMAGE"
run kubectl apply -f "$HERE/manifests/counter-restored.yaml"
wait_ready "$RESTORED" 300s
run kubectl get pod -n "$NS" "$RESTORED" -o wide

########################################################################################
step "did the state come back?"
after=$(pod_state "$RESTORED") || fail "pod $RESTORED does not serve /state"
started_after=$(field started "$after")
count_after=$(field count "$after")
restarts=$(kubectl get pod -n "$NS" "$RESTORED" -o jsonpath='{.status.containerStatuses[0].restartCount}')
note "before the checkpoint: $before"
note "after the restore:     $after   (container restarts: $restarts)"
[ "$started_after" = "$started_before" ] \
  || fail "started=$started_after, not $started_before: the container started afresh instead of being restored"
[ "$count_after" -ge "$count_before" ] \
  || fail "count=$count_after is below $count_before: the counter restarted instead of carrying on"

printf '\n'
bold "OK: the counter came back from the checkpoint (started=$started_after, count $count_before -> $count_after)."
note "pod $RESTORED is left running; remove it with: kubectl delete pod $RESTORED"
