#!/usr/bin/env bash
# Step 40: cpengine and cpengine-shim into /usr/local/bin, and the shim's systemd unit (proxy
# mode in front of containerd, ordered after containerd and before the kubelet).
#
# Where the binaries come from:
#   * vagrant/bin/cpengine and vagrant/bin/cpengine-shim, if both are there (Linux x86-64
#     release binaries you put there, e.g. from `cargo build --release --locked` on a Linux
#     host): installed as they are, no Rust toolchain in the VM;
#   * otherwise built in the VM from the synced repository: rustup-init (pinned sha256) installs
#     rustup under /opt/rust, rustup installs the toolchain rust-toolchain.toml pins, and
#     `cargo build --release --locked` builds both binaries. cargo only rebuilds what changed,
#     so re-running this step after `vagrant rsync` picks up source changes.
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
require_root
require_debian12_amd64
load_versions

export RUSTUP_HOME=/opt/rust/rustup CARGO_HOME=/opt/rust/cargo
export CARGO_TARGET_DIR=/var/cache/cpengine-playground/target

is_elf_x86_64() {
  # ELF magic, 64-bit class, machine 0x3e (x86-64) at offset 18.
  [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] \
    && [ "$(od -An -tx1 -j 4 -N 1 "$1" | tr -d ' \n')" = 02 ] \
    && [ "$(od -An -tx1 -j 18 -N 2 "$1" | tr -d ' \n')" = 3e00 ]
}

prebuilt="$PLAYGROUND/bin"
if [ -f "$prebuilt/cpengine" ] && [ -f "$prebuilt/cpengine-shim" ]; then
  for b in cpengine cpengine-shim; do
    is_elf_x86_64 "$prebuilt/$b" || die "$prebuilt/$b is not a Linux x86-64 binary"
  done
  log "using the prebuilt binaries in vagrant/bin/"
  built="$prebuilt"
else
  if [ -f "$prebuilt/cpengine" ] || [ -f "$prebuilt/cpengine-shim" ]; then
    die "vagrant/bin/ holds only one of cpengine and cpengine-shim: put both there, or neither to build in the VM"
  fi
  if [ ! -x "$CARGO_HOME/bin/rustup" ]; then
    init="$CACHE/rustup-init-$RUSTUP_VERSION"
    fetch_verified "$RUSTUP_RELEASE_URL/$RUSTUP_VERSION/x86_64-unknown-linux-gnu/rustup-init" \
      "$RUSTUP_INIT_SHA256" "$init"
    chmod 0755 "$init"
    log "installing rustup $RUSTUP_VERSION under /opt/rust"
    "$init" -y --no-modify-path --profile minimal --default-toolchain none >/dev/null \
      || die "rustup-init failed"
  fi
  export PATH="$CARGO_HOME/bin:$PATH"
  channel=$(sed -n 's/^channel *= *"\([^"]*\)".*/\1/p' "$CPENGINE_SRC/rust-toolchain.toml")
  [ -n "$channel" ] || die "no channel in $CPENGINE_SRC/rust-toolchain.toml"
  (cd "$CPENGINE_SRC" && rustup toolchain install "$channel" --profile minimal >/dev/null) \
    || die "rustup could not install Rust $channel"
  log "building cpengine and cpengine-shim with Rust $channel (cargo build --release --locked)"
  (cd "$CPENGINE_SRC" \
    && cargo build --release --locked --workspace --bin cpengine --bin cpengine-shim) \
    || die "cargo build failed (is the shim crate, with its cpengine-shim binary, in this checkout?)"
  built="$CARGO_TARGET_DIR/release"
fi

restart=0
install_file "$built/cpengine" /usr/local/bin/cpengine 0755 || true
if install_file "$built/cpengine-shim" /usr/local/bin/cpengine-shim 0755; then restart=1; fi
if install_file "$CONFIG/systemd/cpengine-shim.service" /etc/systemd/system/cpengine-shim.service 0644; then
  restart=1
fi

# What CRIU can do on this kernel, as cpengine sees it (fails loudly if CRIU is unusable).
cpengine check || die "cpengine check failed: CRIU is missing, too old, or unusable on this kernel"

systemctl is-active --quiet containerd.service || die "containerd is not running: run step 20 first"
enable_and_restart cpengine-shim.service "$restart"
sock=${CPENGINE_CRI_SOCKET#unix://}
wait_for 60 "the shim's socket $sock" test -S "$sock"
# A RuntimeService call forwarded to containerd, and an ImageService one.
wait_for 60 "the shim to answer CRI Version" crictl --runtime-endpoint "$CPENGINE_CRI_SOCKET" version
crictl --runtime-endpoint "$CPENGINE_CRI_SOCKET" version >&2
crictl --image-endpoint "$CPENGINE_CRI_SOCKET" images >/dev/null \
  || die "the shim does not answer CRI ImageService calls (journalctl -u cpengine-shim)"

log "cpengine-shim serving CRI on $CPENGINE_CRI_SOCKET, forwarding to $CONTAINERD_SOCKET"
