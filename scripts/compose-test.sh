#!/usr/bin/env bash
# End-to-end test of the container image and docker-compose.yml: builds the base image and the
# image (no registry needed, see scripts/docker-base.sh), starts the compose project with a
# small run, waits for the producer to exit 0, then runs `txpipe audit` (the compose `audit`
# service) until it reports PASSED (it fails while transactions are still pending), and tears
# everything down (`down -v`) whatever happens. Prints the time of every step.
#
# With --chaos (scripts/compose-chaos.sh) it also kills (`docker kill`, SIGKILL) and restarts
# (`docker start`) broker and worker containers during the run: a bounded number of events,
# brokers and workers alternately, the broker being the current leader of `transactions` when it
# can be found; never more than one broker down: after a broker kill the script waits until that
# broker serves again (/status.json ready and a leader for `transactions`) before the next event.
#
# Options / env:
#   --count N        transactions (COMPOSE_TEST_COUNT; default 20000, chaos 60000)
#   --rate R         producer rate limit tx/s (COMPOSE_TEST_RATE; default 0 = unlimited, chaos 1200
#                    so that the kills land while the pipeline works)
#   --events N       chaos events (COMPOSE_TEST_EVENTS; default 6)
#   --timeout S      overall timeout, seconds (COMPOSE_TEST_TIMEOUT_S; default 600)
#   --no-build       use the existing $TXPIPE_IMAGE
#   --keep           do not tear down at the end (debugging)
# Needs: docker, docker compose v2 or docker-compose >= 1.28, curl, python3, built binaries in
# target/release (for the image).
set -euo pipefail
cd "$(dirname "$0")/.."

CHAOS=0 BUILD=1 KEEP=0
COUNT=${COMPOSE_TEST_COUNT:-} RATE=${COMPOSE_TEST_RATE:-} EVENTS=${COMPOSE_TEST_EVENTS:-6}
TIMEOUT_S=${COMPOSE_TEST_TIMEOUT_S:-600}
while [[ $# -gt 0 ]]; do
  case $1 in
    --chaos) CHAOS=1 ;;
    --count) COUNT=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --events) EVENTS=$2; shift ;;
    --timeout) TIMEOUT_S=$2; shift ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ $CHAOS == 1 ]]; then COUNT=${COUNT:-60000}; RATE=${RATE:-1200}; else COUNT=${COUNT:-20000}; RATE=${RATE:-0}; fi
NAME=$([[ $CHAOS == 1 ]] && echo compose-chaos || echo compose-test)

export TXPIPE_IMAGE=${TXPIPE_IMAGE:-txpipe:local}
export COMPOSE_PROJECT_NAME=txpipe-${NAME#compose-}-$$
export PRODUCER_COUNT=$COUNT PRODUCER_RATE=$RATE
# The PAN key of this run (required by producer and workers; docker-compose.yml refuses to
# start without it): a fresh random one unless given.
TXPIPE_PAN_KEY=${TXPIPE_PAN_KEY:-$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')}
export TXPIPE_PAN_KEY
export COMPOSE_FILE=$PWD/docker-compose.yml

if docker compose version >/dev/null 2>&1; then DC=(docker compose)
elif command -v docker-compose >/dev/null; then DC=(docker-compose)
else echo "$NAME: neither 'docker compose' nor docker-compose found" >&2; exit 2; fi

START=$SECONDS
STEP_START=$SECONDS
TIMINGS=()
log() { printf '%s [%4ds] %s\n' "$NAME" "$((SECONDS - START))" "$*"; }
left() { echo $((TIMEOUT_S - (SECONDS - START))); }
check_deadline() { if (($(left) <= 0)); then log "FAILED: overall timeout ${TIMEOUT_S}s ($1)"; exit 1; fi; }
step_done() {
  TIMINGS+=("$(printf '%-28s %5ds' "$1" "$((SECONDS - STEP_START))")"); STEP_START=$SECONDS
  [[ $1 == "down -v" ]] || check_deadline "after: $1"
}
dc() { timeout -k 5 "$(( $(left) > 5 ? $(left) : 5 ))" "${DC[@]}" "$@"; }
# Container ids, resolved once after `up` (Compose v2's `ps` omits exited containers without -a;
# ids survive docker kill/start).
declare -A CIDS=()
cid() { if [[ -n ${CIDS[$1]:-} ]]; then echo "${CIDS[$1]}"; else "${DC[@]}" ps -a -q "$1"; fi; }

RESULT=FAILED
cleanup() {
  local rc=$?
  set +e
  if [[ $RESULT != PASSED ]]; then
    log "--- logs (tail) ---"
    timeout 30 "${DC[@]}" logs --no-color --tail 25 2>&1 | tail -150
  fi
  if [[ $KEEP == 1 ]]; then
    log "--keep: project $COMPOSE_PROJECT_NAME left running; '${DC[*]} -p $COMPOSE_PROJECT_NAME down -v' removes it"
  else
    STEP_START=$SECONDS
    timeout 120 "${DC[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1
    step_done "down -v"
  fi
  log "timings:"; printf '  %s\n' "${TIMINGS[@]}"
  log "$RESULT ($COUNT transactions, $([[ $CHAOS == 1 ]] && echo "$KILLS kills" || echo "no chaos"), total $((SECONDS - START))s, ${DC[*]})"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
KILLS=0

log "$("${DC[@]}" version 2>/dev/null | head -1); project $COMPOSE_PROJECT_NAME; $COUNT transactions, rate $RATE; timeout ${TIMEOUT_S}s"

# ---- 1. images --------------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
  bash scripts/docker-base.sh
  timeout 600 docker build -q -f Dockerfile --target prebuilt --build-arg BASE_IMAGE=txpipe-base:local \
    -t "$TXPIPE_IMAGE" target/docker/context >/dev/null
  log "image $TXPIPE_IMAGE: $(docker image inspect -f '{{.Size}}' "$TXPIPE_IMAGE" | awk '{printf "%.1f MB", $1/1e6}')"
  step_done "build base + image"
fi

# ---- 2. up --------------------------------------------------------------------------------
dc up -d --quiet-pull 2>&1 | grep -v "^$" || true
for s in broker-0 broker-1 broker-2 worker-0 worker-1 worker-2 worker-3 producer; do
  CIDS[$s]=$("${DC[@]}" ps -a -q "$s")
  [[ -n ${CIDS[$s]} && ${CIDS[$s]} != *$'\n'* ]] || { log "FAILED: service $s has no (single) container"; exit 1; }
done
step_done "up -d"

# Broker admin endpoint from the host: container IP on the project network, port 9180.
broker_ip() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$(cid "$1")" | awk '{print $1}'; }
status_of() { local ip; ip=$(broker_ip "$1"); [[ -n $ip ]] && curl -fsS -m 2 "http://$ip:9180/status.json" 2>/dev/null; }
# ready and some replica leads `transactions`: prints the leader's node id
broker_ok() {
  status_of "$1" | python3 -c '
import json,sys
s=json.load(sys.stdin); t=s.get("raft",{}).get("transactions",{})
ok = s.get("ready") and t.get("leader_id") is not None
print(t.get("leader_id") if ok else ""); sys.exit(0 if ok else 1)' 2>/dev/null
}
wait_broker() { # name, deadline seconds
  local until=$((SECONDS + $2))
  while ((SECONDS < until)); do broker_ok "$1" >/dev/null && return 0; check_deadline "waiting for $1"; sleep 0.5; done
  return 1
}
for b in broker-0 broker-1 broker-2; do
  wait_broker "$b" 120 || { log "FAILED: $b not ready with a leader within 120 s"; exit 1; }
done
log "brokers ready, transactions led by node $(broker_ok broker-0)"
step_done "brokers ready"

producer_state() { docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(cid producer)"; }

# ---- 3. chaos -----------------------------------------------------------------------------
if [[ $CHAOS == 1 ]]; then
  for ((i = 0; i < EVENTS; i++)); do
    check_deadline "chaos"
    # spacing between events: 2 s, polling (the run lasts COUNT/RATE s)
    until_t=$((SECONDS + 2)); while ((SECONDS < until_t)); do sleep 0.5; done
    if ((i % 2 == 0)); then
      leader=$(broker_ok broker-0 || broker_ok broker-1 || broker_ok broker-2 || true)
      target=broker-${leader:-$(( (i / 2) % 3 ))}
      [[ $target =~ ^broker-[0-2]$ ]] || target=broker-$(( (i / 2) % 3 ))
      c=$(cid "$target"); t_kill=$SECONDS
      docker kill "$c" >/dev/null; KILLS=$((KILLS + 1))
      # wait for a new leader among the survivors (bounded), then restart
      until_t=$((SECONDS + 30)); new=""
      while ((SECONDS < until_t)); do
        # a survivor must name a leader other than the killed node (node id = ordinal here)
        for o in broker-0 broker-1 broker-2; do
          [[ $o == "$target" ]] && continue
          new=$(broker_ok "$o" || true); [[ -n $new && $new != "${target#broker-}" ]] && break; new=""
        done
        [[ -n $new ]] && break; sleep 0.3
      done
      restarts=$(docker inspect -f '{{.RestartCount}} {{.State.Status}}' "$c")
      docker start "$c" >/dev/null
      wait_broker "$target" 120 || { log "FAILED: $target not back within 120 s after restart"; exit 1; }
      log "chaos $((i + 1))/$EVENTS: killed $target (leader of transactions: ${leader:-?}), new leader ${new:-none seen}, back after $((SECONDS - t_kill))s (before docker start: restarts/state $restarts); producer: $(producer_state)"
    else
      target=worker-$(( (i / 2) % 4 )); c=$(cid "$target")
      docker kill "$c" >/dev/null; KILLS=$((KILLS + 1))
      until_t=$((SECONDS + 1)); while ((SECONDS < until_t)); do sleep 0.5; done
      docker start "$c" >/dev/null
      log "chaos $((i + 1))/$EVENTS: killed and restarted $target; producer: $(producer_state)"
    fi
  done
  step_done "chaos ($KILLS kills)"
fi

# ---- 4. producer exits 0 ------------------------------------------------------------------
while :; do
  read -r st code < <(producer_state)
  if [[ $st == exited ]]; then
    [[ $code == 0 ]] || { log "FAILED: producer exited $code"; exit 1; }
    break
  fi
  check_deadline "waiting for the producer"
  sleep 1
done
log "producer exited 0"
step_done "producer done"

# ---- 5. audit until PASSED (pending drains) -----------------------------------------------
while :; do
  out=$(dc run --rm -T audit 2>&1) || true
  if grep -q "^audit: PASSED" <<<"$out"; then break; fi
  if grep -Eq "lost [1-9]|duplicated [1-9]|unexpected [1-9]" <<<"$out" && ! grep -Eq "pending [1-9]" <<<"$out"; then
    log "FAILED: audit"; printf '%s\n' "$out"; exit 1
  fi
  log "audit not passed yet: $(grep -E '^audit|pending' <<<"$out" | tr -s ' \n' ' ' | cut -c1-200)"
  check_deadline "waiting for the audit to pass"
  sleep 2
done
printf '%s\n' "$out" | grep -E "^audit|produced|lost|latency|decisions:" | sed 's/^/  /'
step_done "audit PASSED"
RESULT=PASSED
