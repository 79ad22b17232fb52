#!/usr/bin/env bash
# End-to-end runs of local mode. Each run is bounded (count and stall timeout) and exits
# non-zero when the audit fails. Usage: scripts/e2e.sh [txpipe-binary]
set -euo pipefail
TXPIPE=${1:-target/release/txpipe}
OUT=${E2E_OUT:-$(mktemp -d)}
COUNT=${E2E_COUNT:-200000}
CHAOS_COUNT=${E2E_CHAOS_COUNT:-100000}
mkdir -p "$OUT"
pass=0; fail=0
run() {
  local name=$1; shift
  echo "=== e2e: $name"
  if "$TXPIPE" run --progress=never --stall-timeout-s=90 --report-json "$OUT/$name.json" "$@"; then
    pass=$((pass+1)); echo "=== e2e: $name passed"
  else
    fail=$((fail+1)); echo "=== e2e: $name FAILED"
  fi
}
run plain --count "$COUNT"
run kill-broker --count "$CHAOS_COUNT" --chaos --chaos-broker-only --chaos-events 2 --chaos-seed 11
run kill-workers --count "$CHAOS_COUNT" --chaos --chaos-workers-only --chaos-events 4 --chaos-seed 12
for seed in 21 22; do
  run "chaos-seed-$seed" --count "$CHAOS_COUNT" --chaos --chaos-events 5 --chaos-seed "$seed"
done
echo "e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
