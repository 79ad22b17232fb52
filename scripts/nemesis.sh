#!/usr/bin/env bash
# The nemesis suite: `txpipe nemesis` for several seeds (docs/nemesis.md). Each seed builds its
# own network namespaces, injects its seeded faults for NEMESIS_DURATION_S seconds, lets the
# pipeline settle and checks it; its JSON report goes to $NEMESIS_OUT/seed-<seed>.json.
#
# Usage: scripts/nemesis.sh [txpipe-binary]
# Environment: NEMESIS_SEEDS (default "1 2"), NEMESIS_DURATION_S (default 60), NEMESIS_OUT
# (report directory, default a new temporary one), NEMESIS_ARGS (extra arguments).
# Exit: 0 every seed passed; 1 a seed found a violation or failed; 3 skipped (not root or no
# network namespaces: the nemesis cannot run on this machine).
set -uo pipefail
TXPIPE=${1:-target/release/txpipe}
SEEDS=${NEMESIS_SEEDS:-1 2}
DURATION=${NEMESIS_DURATION_S:-60}
OUT=${NEMESIS_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
# What killed runs of earlier invocations left behind.
"$TXPIPE" nemesis --cleanup
rc=$?
if [ "$rc" -eq 3 ]; then
  echo "nemesis: SKIPPED (not root, or no network namespaces on this machine)"
  exit 3
fi
fail=0; summary=""
for seed in $SEEDS; do
  echo "=== nemesis: seed $seed, $DURATION s"
  t0=$SECONDS
  # The run stops by itself: faults for DURATION s, then at most 120 s to settle, then the
  # check; the timeout only guards against a hang.
  timeout -k 30 $((DURATION + 300)) "$TXPIPE" nemesis --seed "$seed" --duration-s "$DURATION" \
    --report-json "$OUT/seed-$seed.json" ${NEMESIS_ARGS:-} > /dev/null
  rc=$?
  case $rc in
    0) verdict=passed ;;
    3) echo "nemesis: SKIPPED"; exit 3 ;;
    *) verdict="FAILED (exit $rc)"; fail=1 ;;
  esac
  summary+="  seed $seed: $verdict in $((SECONDS - t0)) s"$'\n'
done
"$TXPIPE" nemesis --cleanup > /dev/null 2>&1
echo "=== nemesis summary (reports in $OUT)"
printf '%s' "$summary"
exit $fail
