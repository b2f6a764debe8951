# Helpers shared by the provisioning steps (sourced, not run). Every helper is idempotent: it
# compares what is there with what should be there and only acts on a difference, so
# `vagrant provision` can be re-run at any time.
# shellcheck shell=bash

# The repository root (the VM sees it at /cpengine through the Vagrantfile's synced folder).
# shellcheck disable=SC2034 # used by the steps that source this file
CPENGINE_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PLAYGROUND="$CPENGINE_SRC/vagrant"
CONFIG="$PLAYGROUND/config"
# shellcheck disable=SC2034 # used by the steps that source this file
CACHE=/var/cache/cpengine-playground
STEP=$(basename "$0" .sh)
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log() { printf '[%s] %s\n' "$STEP" "$*" >&2; }
die() {
  printf '[%s] error: %s\n' "$STEP" "$*" >&2
  exit 1
}

require_root() {
  [ "$(id -u)" -eq 0 ] || die "must run as root (vagrant runs provisioners with sudo)"
}

# The playground targets Debian 12 on amd64: the pinned checksums in versions.env are amd64's,
# and scripts/setup.sh builds CRIU from Debian's source package.
require_debian12_amd64() {
  local id="" version_id=""
  # shellcheck disable=SC1091 # the VM's own os-release
  . /etc/os-release
  id=${ID:-}
  version_id=${VERSION_ID:-}
  if [ "$id" != debian ] || [ "$version_id" != 12 ]; then
    die "this playground provisions Debian 12 (found ${id:-?} ${version_id:-?}); use the Vagrantfile's box"
  fi
  if [ "$(dpkg --print-architecture)" != amd64 ]; then
    die "only amd64 is supported (the pinned checksums in config/versions.env are amd64's)"
  fi
}

load_versions() {
  # shellcheck source=../config/versions.env
  . "$CONFIG/versions.env"
}

# apt_install PKG...: installs the packages that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
}

# install_file SRC DEST MODE: copies SRC to DEST when they differ. Returns 0 when DEST changed,
# 1 when it was already up to date (so callers can restart a service only on a change).
install_file() {
  local src=$1 dest=$2 mode=$3
  [ -f "$src" ] || die "missing source file $src"
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    return 1
  fi
  install -D -m "$mode" "$src" "$dest"
  log "installed $dest"
  return 0
}

# write_file DEST MODE: like install_file, with the content read from stdin.
write_file() {
  local dest=$1 mode=$2 tmp changed=1
  tmp=$(mktemp)
  cat >"$tmp"
  if install_file "$tmp" "$dest" "$mode"; then changed=0; fi
  rm -f "$tmp"
  return "$changed"
}

# fetch_verified URL SHA256 DEST: downloads URL to DEST unless DEST already has that sha256;
# a download whose sha256 differs is discarded and the step fails.
fetch_verified() {
  local url=$1 sha=$2 dest=$3 tmp
  if [ -f "$dest" ] && echo "$sha  $dest" | sha256sum -c --quiet - >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.XXXXXX")
  log "downloading $url"
  if ! curl -fsSL --retry 3 -o "$tmp" "$url"; then
    rm -f "$tmp"
    die "download failed: $url"
  fi
  if ! echo "$sha  $tmp" | sha256sum -c --quiet - >/dev/null 2>&1; then
    rm -f "$tmp"
    die "sha256 mismatch for $url (expected $sha; see config/versions.env)"
  fi
  mv -f "$tmp" "$dest"
}

# wait_for SECONDS WHAT CMD...: retries CMD once a second until it succeeds or time runs out.
wait_for() {
  local seconds=$1 what=$2 i
  shift 2
  for ((i = 0; i < seconds; i++)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    sleep 1
  done
  die "timed out after ${seconds}s waiting for $what"
}

# enable_and_restart UNIT CHANGED: enables UNIT and starts it, restarting it when CHANGED=1.
enable_and_restart() {
  local unit=$1 changed=$2
  systemctl daemon-reload
  systemctl enable "$unit" >/dev/null 2>&1 || die "systemctl enable $unit failed"
  if [ "$changed" = 1 ]; then
    log "restarting $unit"
    systemctl restart "$unit" || die "$unit failed to start: see journalctl -u $unit"
  elif ! systemctl is-active --quiet "$unit"; then
    log "starting $unit"
    systemctl start "$unit" || die "$unit failed to start: see journalctl -u $unit"
  fi
}
