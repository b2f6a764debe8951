#!/usr/bin/env bash
# Static checks of the Vagrant/kubeadm playground - everything that can be verified without a VM.
# Run by scripts/test.sh (so by CI); takes a few seconds. Every checker it needs must be
# installed (scripts/setup.sh installs them): a missing one is an error, never a skip.
#
#   1. shellcheck on every script in vagrant/ and scripts/
#   2. ruby -c on the Vagrantfile, then the Vagrantfile evaluated against a recording stand-in
#      for Vagrant's API (box, providers, synced folder, one provisioner per step, in order),
#      and that checker shown to catch deliberately broken Vagrantfiles
#   3. every YAML/TOML/JSON file parsed; kubeadm/kubelet/Pod documents checked for
#      apiVersion/kind and key fields (criSocket, featureGates.ContainerCheckpoint, ...); the
#      files cross-checked; the systemd units verified (systemd-analyze verify when installed,
#      plus a structural check of sections, ExecStart and After/Before ordering); the checker's
#      self-test shows each of ~40 deliberate breakages is caught
#   4. config/registry.yml served by the real docker-registry (loopback, scratch storage)
#   5. the provisioning helpers (provision/lib.sh) exercised in a scratch directory
set -euo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3 # Debian's python3, where python3-yaml is installed

die() {
  printf 'vagrant/check.sh: error: %s\n' "$*" >&2
  exit 1
}
command -v shellcheck >/dev/null || die "shellcheck not found (scripts/setup.sh installs it)"
command -v ruby >/dev/null || die "ruby not found (scripts/setup.sh installs it)"
command -v docker-registry >/dev/null || die "docker-registry not found (scripts/setup.sh installs it)"
command -v curl >/dev/null || die "curl not found (scripts/setup.sh installs it)"
[ -x "$PY" ] || die "$PY not found (scripts/setup.sh installs python3)"
"$PY" -c 'import tomllib, yaml' 2>/dev/null \
  || die "$PY cannot import yaml and tomllib (needs Python >= 3.11 and python3-yaml from scripts/setup.sh)"

passed=0
failed=0
section() { printf '== vagrant: %s\n' "$*" >&2; }
result() { # result STATUS NAME
  if [ "$1" -eq 0 ]; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    printf 'vagrant/check.sh: FAILED: %s\n' "$2" >&2
  fi
}

section "shellcheck"
mapfile -t scripts < <(find vagrant scripts -path vagrant/.vagrant -prune -o -type f -name '*.sh' -print | sort)
[ "${#scripts[@]}" -gt 0 ] || die "found no scripts to check"
status=0
shellcheck -x -P SCRIPTDIR "${scripts[@]}" || status=$?
result "$status" "shellcheck"
[ "$status" -ne 0 ] || printf 'shellcheck: %d scripts clean\n' "${#scripts[@]}"

section "Vagrantfile"
status=0
ruby -c vagrant/Vagrantfile >/dev/null || status=$?
result "$status" "ruby -c vagrant/Vagrantfile"
status=0
ruby vagrant/ci/vagrantfile_check.rb vagrant/Vagrantfile || status=$?
result "$status" "Vagrantfile configuration"

# The Vagrantfile checker must reject broken Vagrantfiles (a checker that cannot fail proves
# nothing). Each line: a sed expression that breaks one thing.
scratch=$(mktemp -d /tmp/cpengine-vagrant-check.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
ln -s "$PWD/vagrant/provision" "$scratch/provision"
caught=0
total=0
while IFS= read -r breakage; do
  [ -n "$breakage" ] || continue
  total=$((total + 1))
  sed -e "$breakage" vagrant/Vagrantfile >"$scratch/Vagrantfile"
  if cmp -s vagrant/Vagrantfile "$scratch/Vagrantfile"; then
    printf 'vagrant/check.sh: breakage %s no longer applies to the Vagrantfile\n' "$breakage" >&2
  elif ruby vagrant/ci/vagrantfile_check.rb "$scratch/Vagrantfile" >/dev/null 2>&1; then
    printf 'vagrant/check.sh: the Vagrantfile checker accepted a broken Vagrantfile (%s)\n' "$breakage" >&2
  else
    caught=$((caught + 1))
  fi
done <<'EOF'
s/"libvirt" do/"libvirt-x" do/
s/"virtualbox" do/"vbox" do/
s/"2"))/"1"))/
s/"4096"))/"2048"))/
s/debian\/bookworm64/ubuntu\/jammy64/
/^  25-registry$/d
s/^  30-kubernetes$/  31-kubernetes/
s/type: "rsync",/type: "nfs",/
s/"target\/", //
s/exec \/cpengine\/vagrant\/provision\/#{step}.sh/exec \/vagrant\/#{step}.sh/
s/">= 2.3.0"/">= 2.0.0"/
EOF
printf 'Vagrantfile checker self-test: %d of %d deliberate breakages detected\n' "$caught" "$total"
result "$((total - caught))" "Vagrantfile checker self-test"

section "YAML, TOML, JSON, systemd units, cross-checks"
status=0
"$PY" -B vagrant/ci/check_config.py --self-test || status=$?
result "$status" "configuration checks"

section "registry configuration, served by Debian's docker-registry"
# The real registry must accept config/registry.yml. It runs on a free loopback port with its
# storage in the scratch directory (environment overrides), so nothing on this machine is
# touched, and is stopped again right away.
status=1
port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REGISTRY_HTTP_ADDR="127.0.0.1:$port" REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$scratch/registry" \
  docker-registry serve vagrant/config/registry.yml >"$scratch/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 50); do
  if [ "$(curl -s "http://127.0.0.1:$port/v2/" 2>/dev/null)" = "{}" ]; then
    status=0
    break
  fi
  kill -0 "$registry_pid" 2>/dev/null || break
  sleep 0.2
done
kill "$registry_pid" 2>/dev/null || true
wait "$registry_pid" 2>/dev/null || true
if [ "$status" -eq 0 ]; then
  echo "registry.yml: docker-registry started with it and answered /v2/ without credentials"
else
  tail -n 5 "$scratch/registry.log" >&2
fi
result "$status" "docker-registry with config/registry.yml"

section "provisioning helpers"
status=0
vagrant/ci/lib_test.sh || status=$?
result "$status" "provision/lib.sh helpers"

printf 'vagrant checks: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
