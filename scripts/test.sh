#!/usr/bin/env bash
# Runs every test of cpengine: unit tests, the protocol tests against a fake CRIU peer, the
# drift check against upstream CRIU's protos, and the integration tests against real CRIU,
# real processes and real containers. Installs what it needs first (scripts/setup.sh).
# Must run as root: CRIU needs it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="/usr/local/sbin:$PATH"
vagrant/check.sh # static checks of the kubeadm playground in vagrant/ (no VM needed)

echo "== module layers (no import cycles, bottom layers import nothing above them)" >&2
scripts/layers.sh

echo "== building" >&2
cargo build --locked --workspace --all-targets

echo "== unit and protocol tests" >&2
cargo test --locked --workspace --exclude cpengine-integration

# Real-CRIU tests run one at a time: CRIU restores processes with their original pids, and two
# tests restoring at once could collide on them (or on the freezer, the mounts, the ports).
echo "== integration tests (real CRIU, runc, containers)" >&2
cargo test --locked -p cpengine-integration -- --test-threads=1

# Fuzzing of every parser of untrusted input, 30 s per target (scripts/fuzz.sh; installs
# cargo-fuzz and the nightly toolchain on first use; the long runs are scripts/fault-long.sh).
echo "== fuzzing (cargo-fuzz, bounded)" >&2
scripts/fuzz.sh --ci
