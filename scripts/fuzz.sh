#!/usr/bin/env bash
# Fuzzes cpengine's parsers of untrusted input with cargo-fuzz (libFuzzer + AddressSanitizer,
# nightly toolchain): CRIU images and the inspection built on them, the archive reader, safe
# extraction and rootfs apply, the JSON members, CRIU's swrk replies, the restore verifier
# (policy checks of CRIU images), and the signature check of signed archives. See fuzz/.
#
#   scripts/fuzz.sh --ci             every target for FUZZ_SECONDS (default 30) each: CI
#   scripts/fuzz.sh [TARGET] [SECS]  one target (or all) for SECS seconds (default 600)
#
# Seeds: the malicious-archive corpus (integration/corpus) and small valid inputs written
# below; libFuzzer's growing corpus stays in fuzz/corpus/<target>/ (not committed). A crash
# stops the run with the input in fuzz/artifacts/<target>/: fix it, add a regression test,
# and keep the input in fuzz/regressions/<target>/ (every run replays those first).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGETS=(criu_image archive_read archive_extract json_members swrk_reply restore_verify signature_verify)

ci=0
if [ "${1:-}" = "--ci" ]; then
  ci=1
  shift
fi
only=${1:-}
secs=${2:-${FUZZ_SECONDS:-$([ $ci = 1 ] && echo 30 || echo 600)}}

log() { printf '[fuzz] %s\n' "$*" >&2; }

# The instrumented build is kept outside the checkout, so a fresh clone (CI) on the same
# machine reuses it instead of rebuilding every dependency with sanitizers.
export CARGO_TARGET_DIR=${CPENGINE_FUZZ_TARGET_DIR:-/var/tmp/cpengine-fuzz-target}

# Toolchain and cargo-fuzz, installed once.
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Seeds, rebuilt every run from the repository.
seed() {
  local t=$1 dir=fuzz/corpus/$1
  mkdir -p "$dir"
  case $t in
    archive_read|archive_extract)
      cp integration/corpus/*.tar* "$dir"/ ;;
    json_members)
      printf '%s' '{"id":"x","name":"n","createdTime":"0001-01-01T00:00:00Z","checkpointedTime":"0001-01-01T00:00:00Z","restoredTime":"0001-01-01T00:00:00Z","restored":false}' >"$dir/config"
      printf '%s' '{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sh"],"user":{"uid":0,"gid":0}},"root":{"path":"rootfs"},"mounts":[{"destination":"/proc","type":"proc"}],"annotations":{"io.kubernetes.cri-o.Annotations":"{}","io.container.manager":"cri-o"}}' >"$dir/spec"
      printf '%s' '["/etc/motd","/root"]' >"$dir/deleted" ;;
    swrk_reply)
      # VERSION reply (4.2) and a NOTIFY post-restore with a pid.
      printf '\x08\x0a\x10\x01\x52\x04\x08\x04\x10\x02' >"$dir/version"
      printf '\x08\x07\x10\x01\x42\x10\x0a\x0cpost-restore\x10\x2a' >"$dir/notify" ;;
    criu_image)
      # pstree with one task (pid 1), then an empty core file.
      printf '\x19\x43\x56\x54\x30\x30\x27\x50\x08\x00\x00\x00\x08\x01\x10\x00\x18\x01\x20\x01\xffIMG\x19\x43\x56\x54\x47\x38\x05\x55' >"$dir/pstree" ;;
    signature_verify)
      # The archives of the corpus (unsigned), and a signature member whose signature does not
      # verify (key of seed [7; 32]).
      cp integration/corpus/*.tar "$dir"/
      printf '%s' '{"version":1,"algorithm":"ed25519","key_id":"x","public_key":"ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c","members":[{"name":"checkpoint","type":"dir","size":0,"sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}],"signature":"00"}' >"$dir/doc" ;;
    restore_verify)
      # Policy knobs 0, then inventory (version 2, root_ids with net ns 7), pstree with pid 1,
      # and a core of pid 1 (x86_64, empty creds).
      printf '\x00\x16\x31\x31\x58\x0e\x00\x00\x00\x08\x02\x1a\x0a\x08\x01\x10\x01\x18\x01\x20\x01\x30\x07\xffIMG\x19\x43\x56\x54\x30\x30\x27\x50\x08\x00\x00\x00\x08\x01\x10\x00\x18\x01\x20\x01\xffIMG\x19\x43\x56\x54\x47\x38\x05\x55\x02\x00\x00\x00\x08\x01' >"$dir/seed" ;;
  esac
}

status=0
for t in "${TARGETS[@]}"; do
  [ -n "$only" ] && [ "$only" != "$t" ] && continue
  seed "$t"
  regress=fuzz/regressions/$t
  if [ -d "$regress" ] && [ -n "$(ls -A "$regress")" ]; then
    log "$t: replaying regressions"
    (cd fuzz && cargo +nightly fuzz run "$t" "../$regress"/* -- -runs=0) || { status=1; continue; }
  fi
  log "$t: fuzzing for ${secs}s"
  out=$(mktemp)
  if (cd fuzz && cargo +nightly fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -max_len=1048576 -print_final_stats=1) 2>"$out"; then
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$out" | grep -Eo '[0-9]+$' || echo '?')
    log "$t: ${execs} executions, no crash"
  else
    tail -40 "$out" >&2
    log "$t: CRASH (input in fuzz/artifacts/$t/)"
    status=1
  fi
  rm -f "$out"
done
exit $status
