#!/usr/bin/env bash
# Runs cpengine's benchmarks against real CRIU (root): the criterion benches, then the
# comparison with criu, runc and Podman (cpengine-compare). Builds the release binaries first
# (the benches start the workload binary, cpe-workload, from target/release).
#
#   scripts/bench.sh                  # criterion benches + comparison (sizes 16,256,1024; 5 runs)
#   scripts/bench.sh benches [NAME]   # only the criterion benches (dump, restore, container, archive, inspect)
#   scripts/bench.sh compare [ARGS]   # only the comparison; ARGS go to cpengine-compare
#
# Take numbers on a quiet machine (watch `uptime`): the comparison prints the load average
# before and after, and all ratios come from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: must run as root (CRIU needs it)" >&2; exit 1; }
export PATH="/usr/local/sbin:$PATH"

what="${1:-all}"
[ $# -gt 0 ] && shift

echo "== building release binaries" >&2
cargo build --release --workspace --bins

case "$what" in
  benches)
    if [ $# -gt 0 ]; then cargo bench -p cpengine-benches --bench "$1"; else cargo bench -p cpengine-benches; fi
    ;;
  compare)
    target/release/cpengine-compare "$@"
    ;;
  all)
    cargo bench -p cpengine-benches
    target/release/cpengine-compare --json target/compare.json --markdown target/compare.md \
      --svg target/compare.svg
    ;;
  *)
    echo "usage: scripts/bench.sh [all | benches [NAME] | compare [ARGS]]" >&2
    exit 2
    ;;
esac
