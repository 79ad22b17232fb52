#!/usr/bin/env bash
# End-to-end runs of local mode. Each run is bounded (transaction count, stall timeout, and a
# per-case wall-clock timeout) and fails when the audit fails (lost, duplicated or unexpected
# decisions). Cases with 1 and with 3 broker replicas, kill -9 of the broker (with 3 replicas:
# of the current leader of `transactions`), of workers, of the producer, and seeded schedules.
# Every case runs mutual TLS (local mode's default) and its report must say so, except
# plain-1broker, which runs --insecure (plaintext) and must say that.
#
# Usage: scripts/e2e.sh [txpipe-binary]
# Environment: E2E_OUT (report directory), E2E_COUNT (plain runs, default 200000),
# E2E_CHAOS_COUNT (chaos runs, default 100000), E2E_LEADER_SEEDS (default "31 32 33"),
# E2E_CASE_TIMEOUT_S (default 600), E2E_ONLY (regular expression: run matching cases only).
set -euo pipefail
TXPIPE=${1:-target/release/txpipe}
OUT=${E2E_OUT:-$(mktemp -d)}
COUNT=${E2E_COUNT:-200000}
CHAOS_COUNT=${E2E_CHAOS_COUNT:-100000}
LEADER_SEEDS=${E2E_LEADER_SEEDS:-31 32 33}
CASE_TIMEOUT=${E2E_CASE_TIMEOUT_S:-600}
ONLY=${E2E_ONLY:-}
mkdir -p "$OUT"
pass=0; fail=0; summary=""
began=$SECONDS

# run NAME MIN_BROKER_KILLS ARGS...: one local run; it passes when txpipe exits 0 (audit
# passed) and the report shows at least MIN_BROKER_KILLS broker kills.
run() {
  local name=$1 min_kills=$2; shift 2
  if [ -n "$ONLY" ] && ! [[ $name =~ $ONLY ]]; then return 0; fi
  echo "=== e2e: $name: txpipe run $*"
  local t0=$SECONDS rc=0 verdict=passed
  timeout -k 30 "$CASE_TIMEOUT" "$TXPIPE" run --progress=never --stall-timeout-s=90 \
    --report-json "$OUT/$name.json" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    verdict="FAILED (exit $rc)"
  elif [ "$min_kills" -gt 0 ]; then
    local kills
    kills=$(grep -c '"target": "broker-' "$OUT/$name.json" || true)
    if [ "$kills" -lt "$min_kills" ]; then
      verdict="FAILED ($kills broker kills, expected at least $min_kills)"
    fi
  fi
  # The report says which mode ran: plaintext with --insecure, mutual TLS otherwise.
  if [ "$verdict" = passed ]; then
    local want='"tls": true'
    if [[ " $* " == *" --insecure "* ]]; then want='"tls": false'; fi
    if ! grep -q "$want" "$OUT/$name.json"; then
      verdict="FAILED (report lacks $want)"
    fi
  fi
  # MIN_PRODUCER_KILLS=<n> run ...: the report must also show n producer kills.
  if [ "$verdict" = passed ] && [ "${MIN_PRODUCER_KILLS:-0}" -gt 0 ]; then
    local pk
    pk=$(grep -c '"target": "producer"' "$OUT/$name.json" || true)
    if [ "$pk" -lt "$MIN_PRODUCER_KILLS" ]; then
      verdict="FAILED ($pk producer kills, expected at least $MIN_PRODUCER_KILLS)"
    fi
  fi
  local took=$((SECONDS - t0))
  if [ "$verdict" = passed ]; then pass=$((pass+1)); else fail=$((fail+1)); fi
  echo "=== e2e: $name $verdict in ${took} s"
  summary+=$(printf '%-28s %-48s %5d s' "$name" "$verdict" "$took")$'\n'
}

# One broker (no replication), plaintext.
run plain-1broker 0 --brokers 1 --count "$COUNT" --insecure
run kill-broker-1broker 2 --brokers 1 --count "$CHAOS_COUNT" --chaos --chaos-broker-only --chaos-events 2 --chaos-seed 11
run chaos-seed-21-1broker 0 --brokers 1 --count "$CHAOS_COUNT" --chaos --chaos-events 5 --chaos-seed 21
# Three replicas.
run plain-3brokers 0 --brokers 3 --count "$COUNT"
run kill-workers-3brokers 0 --brokers 3 --count "$CHAOS_COUNT" --chaos --chaos-workers-only --chaos-events 4 --chaos-seed 12
run chaos-seed-22-3brokers 0 --brokers 3 --count "$CHAOS_COUNT" --chaos --chaos-events 5 --chaos-seed 22
# The producer killed -9 three times and restarted with the same command line (issue 12): it
# resumes after its last acknowledged transaction, so the audit finds each one stored once.
# Rate-limited so that the producer is still running at every kill point.
MIN_PRODUCER_KILLS=3 run kill-producer-3brokers 0 --brokers 3 --count "$CHAOS_COUNT" --rate 10000 \
  --chaos --chaos-events 0 --chaos-producer-kills 3 --chaos-seed 23
# Leader kills every few seconds plus random worker kills, for several seeds of the schedule.
# The producer is rate-limited so that each run lasts long enough for several leader kills.
for seed in $LEADER_SEEDS; do
  run "leader-kills-seed-$seed" 2 --brokers 3 --count "$CHAOS_COUNT" --rate 5000 \
    --chaos --chaos-kill-interval-ms 3000 --chaos-events 3 --chaos-workers-only --chaos-seed "$seed"
done
# Five replicas, two leader kills.
run leader-kills-5brokers 2 --brokers 5 --count "$CHAOS_COUNT" --chaos --chaos-broker-only --chaos-events 2 --chaos-seed 41

echo "=== e2e summary (reports in $OUT)"
printf '%s' "$summary"
echo "e2e: total $((SECONDS - began)) s"
echo "e2e: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
