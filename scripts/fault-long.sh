#!/usr/bin/env bash
# The long mode of the reliability suites: the fault-injection suite with 100 random-delay
# kills per scenario and every hook ten times (about 650 faults), the malicious corpus, the
# shim load test, and each fuzz target for FUZZ_SECONDS (default 600).
#
#   scripts/fault-long.sh                      everything
#   CPENGINE_FAULT_TRIALS=300 scripts/fault-long.sh
#   CPENGINE_FAULT_SEED=123 scripts/fault-long.sh   replay a run (each scenario prints its seed)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="/usr/local/sbin:$PATH"
export CPENGINE_FAULT_TRIALS=${CPENGINE_FAULT_TRIALS:-100}

cargo build --workspace --all-targets
cargo test -p cpengine-integration --test faults --test malicious --test shim_load \
  -- --test-threads=1 --nocapture 2>&1 | grep -E '^(faults|malicious corpus|test |[0-9]+ checkpoints)|panicked|FAILED'
scripts/fuzz.sh "" "${FUZZ_SECONDS:-600}"
