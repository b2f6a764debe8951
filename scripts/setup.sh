#!/usr/bin/env bash
# Installs everything cpengine's demo and tests need on a fresh Debian machine, idempotently:
# Debian packages (runc, iptables, busybox-static, protoc, ...) and CRIU 4.2.1 built from
# Debian's own source package, installed to /usr/local/sbin/criu.
#
# The source tarball is fetched from the Debian mirror that this machine's apt sources already
# name (read from the apt configuration below; no host is written here) and checked against a
# pinned sha256 before anything is built.
#
# Environment:
#   CPENGINE_SETUP_QUIET=1   less output
#   CPENGINE_SETUP_NO_RUST=1 do not require cargo (the Vagrant playground VM installs Rust later,
#                            or not at all when it is given prebuilt binaries)
#   CPENGINE_CRIU_SRC        where the CRIU source tree is kept (default /usr/local/src/criu-4.2.1);
#                            the tests read images/rpc.proto from it for the drift check.
set -euo pipefail

CRIU_VERSION=4.2.1
CRIU_TARBALL="criu_${CRIU_VERSION}.orig.tar.xz"
CRIU_SHA256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
CRIU_SRC=${CPENGINE_CRIU_SRC:-/usr/local/src/criu-${CRIU_VERSION}}
CRIU_BIN=/usr/local/sbin/criu

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (CRIU needs root to build, install and run)"
command -v apt-get >/dev/null || die "this setup supports Debian-based machines (apt-get not found)"

# Packages: build dependencies of CRIU, the runtimes and tools the tests drive, and the checkers
# CI runs. Kept in one list so a fresh machine and CI install exactly the same thing.
PACKAGES=(
  # CRIU build dependencies
  build-essential pkgconf libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev
  libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
  python3 xz-utils curl ca-certificates
  # runtime pieces CRIU and the container tests use
  runc iptables busybox-static util-linux procps psmisc e2fsprogs
  # interop peers and tools used by tests
  podman skopeo docker-registry jq shellcheck ruby
  # checkers of vagrant/check.sh (YAML parser, systemd-analyze verify)
  python3-yaml systemd
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install failed for: ${missing[*]}"
else
  log "Debian packages already installed"
fi

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

criu_ok() {
  [ -x "$CRIU_BIN" ] && "$CRIU_BIN" --version 2>/dev/null | grep -q "Version: ${CRIU_VERSION}$" \
    && [ -f "$CRIU_SRC/images/rpc.proto" ]
}

if criu_ok; then
  log "CRIU ${CRIU_VERSION} already installed at $CRIU_BIN"
else
  mirror=$(debian_mirror) || die "no Debian mirror found in the apt configuration (/etc/apt/sources.list*)"
  work=$(mktemp -d /var/tmp/cpengine-criu.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  url="$mirror/pool/main/c/criu/$CRIU_TARBALL"
  log "fetching $CRIU_TARBALL from the apt mirror"
  curl -fsSL --retry 3 -o "$work/$CRIU_TARBALL" "$url" || die "download failed: $url"
  echo "$CRIU_SHA256  $work/$CRIU_TARBALL" | sha256sum -c --quiet - \
    || die "sha256 mismatch for $CRIU_TARBALL (expected $CRIU_SHA256)"
  rm -rf "$CRIU_SRC"
  mkdir -p "$CRIU_SRC"
  tar -xJf "$work/$CRIU_TARBALL" -C "$CRIU_SRC" --strip-components=1
  log "building CRIU ${CRIU_VERSION} (make criu)"
  make -C "$CRIU_SRC" -j"$(nproc)" criu >"$work/build.log" 2>&1 \
    || { tail -n 40 "$work/build.log" >&2; die "CRIU build failed"; }
  install -D -m 0755 "$CRIU_SRC/criu/criu" "$CRIU_BIN"
  criu_ok || die "installed $CRIU_BIN does not report version $CRIU_VERSION"
  log "installed $("$CRIU_BIN" --version | head -n1) at $CRIU_BIN"
fi

# CRIU must work on this kernel, not just be installed.
if ! "$CRIU_BIN" check >/dev/null 2>&1; then
  "$CRIU_BIN" check >&2 || true
  die "'$CRIU_BIN check' failed on this kernel"
fi

# Runtimes look `criu` up in PATH; make sure ours wins over Debian's /usr/sbin/criu if present.
case ":$PATH:" in
  *:/usr/local/sbin:*) ;;
  *) log "note: /usr/local/sbin is not in PATH; cpengine finds CRIU there anyway" ;;
esac

# containerd 2.1.9 (Debian forky's package, unpacked into a cache, not installed) for the shim's
# proxy-mode tests and the comparison runs.
"$(dirname "$0")/containerd.sh" >/dev/null || die "scripts/containerd.sh failed"
# containerd 1.6.20 (Debian bookworm's own package, unpacked the same way) for the proxy test in
# front of a containerd without CheckpointContainer.
"$(dirname "$0")/containerd.sh" 1.6.20 >/dev/null || die "scripts/containerd.sh 1.6.20 failed"

# Rust toolchain pinned by rust-toolchain.toml (rustup installs it on first use if allowed).
if [ "${CPENGINE_SETUP_NO_RUST:-0}" != 1 ]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup"
fi

log "ready: $("$CRIU_BIN" --version | head -n1), $(runc --version | head -n1)"
