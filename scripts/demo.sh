#!/usr/bin/env bash
# The cpengine demo: start a real workload, checkpoint it (leaving it running), kill it,
# restore it from the checkpoint and show it carrying on from where it was.
# Installs what it needs first (scripts/setup.sh). Must run as root: CRIU needs it.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="/usr/local/sbin:$PATH"
cargo build --locked --release -p cpengine >&2
CPENGINE="$PWD/target/release/cpengine"

work=$(mktemp -d /var/tmp/cpengine-demo.XXXXXX)
restored=""
cleanup() {
  if [ -n "$restored" ]; then kill -9 "$restored" 2>/dev/null || true; fi
  if [ -n "${wl:-}" ]; then kill -9 "$wl" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
count() { cat "$work/counter" 2>/dev/null || echo "-"; }

say "cpengine check"
"$CPENGINE" check

say "starting a workload: a shell loop that counts into $work/counter"
# shellcheck disable=SC2016 # expanded by the inner shell
setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > "$0/counter"; sleep 0.1; done' "$work" \
  </dev/null >/dev/null 2>&1 &
wl=$!
sleep 1
echo "workload pid $wl, counter at $(count)"

say "cpengine dump $wl --leave-running"
"$CPENGINE" dump "$wl" --leave-running --images-dir "$work/images"
checkpointed=$(count)
echo "counter right after the checkpoint: $checkpointed"
sleep 1.5
echo "the workload kept running:          $(count)"

say "killing the workload"
kill -9 "$wl"; wait "$wl" 2>/dev/null || true
before=$(count)
sleep 0.5
echo "counter stopped at $before (still $(count) half a second later)"

say "cpengine restore --images-dir $work/images"
"$CPENGINE" restore --images-dir "$work/images" | tee "$work/restore.out"
restored=$(awk '/^restored /{print $NF}' "$work/restore.out")

say "the restored workload continues from its checkpoint (counter was $checkpointed)"
first=""
for _ in 1 2 3 4 5; do
  sleep 0.2
  c=$(count); first=${first:-$c}
  echo "pid $restored counter: $c"
done
after=$(count)
if [ "$first" -ge "$checkpointed" ] && [ "$first" -lt "$before" ] && [ "$after" -gt "$first" ] \
   && grep -q "^State:\s*[RS]" "/proc/$restored/status"; then
  echo "OK: the counter resumed from its checkpointed value $checkpointed (not from 1, not from $before)"
else
  echo "FAILED: counter did not continue" >&2
  exit 1
fi
