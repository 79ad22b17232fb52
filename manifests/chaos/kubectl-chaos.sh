#!/usr/bin/env bash
# Chaos test of a running TransactionPipeline on a real cluster, with nothing but kubectl.
#
# NOT run in CI: the project's machines have no Kubernetes cluster. It has not been run by the
# authors on a real cluster yet either; treat its first run as a test of the script too.
#
# What it covers (the cluster counterpart of `txpipe run --chaos` and `make compose-chaos`):
#   1. waits until the pipeline is Ready (condition Ready=True, every broker ready);
#   2. for DURATION seconds, at seeded random intervals, deletes a random broker pod or a random
#      worker pod (at most MAX_KILLS deletions). Never more than one broker is down: before
#      every broker deletion the script waits until the replacement of the previous one is
#      Ready, the StatefulSet reports all replicas ready, the pipeline's status counts every
#      broker ready and its Ready condition is True (and, when jq is installed, until every
#      broker's /status.json, read through the API server's pod proxy, shows a leader for
#      every stream and an applied index within CATCHUP_ENTRIES of the leaders' commit index);
#   3. waits for the producer Job `<name>-producer` (spec.producer) to complete and the
#      pipeline to be Ready again;
#   4. runs `txpipe audit` as a Kubernetes Job (same image as the brokers) against every
#      broker's stable address `<name>-broker-<i>.<name>-broker-headless.<ns>.svc:9100`,
#      repeating it while transactions are still pending (workers still draining), and exits
#      with its status: 0 = PASSED (nothing lost, nothing decided twice, nothing pending).
# It prints every deletion with its time and how long the pipeline took to recover.
#
# What it does NOT cover: node loss, lost volumes, network partitions, a kill -9 (a pod deletion
# sends SIGTERM, then SIGKILL after GRACE_PERIOD seconds). For those use the Chaos Mesh
# manifests next to this script (manifests/chaos/chaos-mesh/).
#
# The pipeline needs traffic while the chaos runs: set spec.producer with a rate that lasts
# longer than DURATION, e.g. `producer: {count: 300000, rate: 1000}` (300 s), and apply it
# just before starting this script. Without a producer Job the audit finds nothing produced
# and fails (real traffic carries no labels, so the audit cannot check it).
#
# Usage:
#   manifests/chaos/kubectl-chaos.sh NAME NAMESPACE [DURATION_S] [SEED]
#   manifests/chaos/kubectl-chaos.sh fraud payments 300 7
#
# Environment (all optional):
#   KUBECTL_CONTEXT=ctx     kubectl context (default: the current one)
#   MAX_KILLS=10            upper bound of pod deletions
#   MIN_GAP_S=10 MAX_GAP_S=30   seeded pause before each deletion, seconds
#   TARGETS=both            both | brokers | workers
#   GRACE_PERIOD=1          --grace-period of the deletions, seconds (>= 1)
#   WAIT_TIMEOUT=300s       bound of every readiness wait
#   CATCHUP_ENTRIES=100     catch-up gate (same bound as the operator's rolling restart)
#   PRODUCER_TIMEOUT=1800s  bound of the wait for the producer Job
#   AUDIT_TIMEOUT_S=600     how long to repeat the audit while transactions are pending
#   IMAGE=ref               image of the audit Job (default: the broker StatefulSet's image)
#
# Requirements: bash >= 4, kubectl >= 1.23 (kubectl wait --for=jsonpath), RBAC to get/list
# pods, statefulsets, jobs and transactionpipelines, delete pods, create/delete jobs and read
# pod logs in NAMESPACE; optional jq and pods/proxy access for the catch-up gate.
# Exit status: 0 audit passed, 1 audit failed or a wait timed out, 2 usage error.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
}

[[ $# -ge 2 && $# -le 4 ]] || usage
case "$1" in -h | --help) usage ;; esac

NAME=$1
NS=$2
DURATION_S=${3:-300}
SEED=${4:-1}
MAX_KILLS=${MAX_KILLS:-10}
MIN_GAP_S=${MIN_GAP_S:-10}
MAX_GAP_S=${MAX_GAP_S:-30}
TARGETS=${TARGETS:-both}
GRACE_PERIOD=${GRACE_PERIOD:-1}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-300s}
CATCHUP_ENTRIES=${CATCHUP_ENTRIES:-100}
PRODUCER_TIMEOUT=${PRODUCER_TIMEOUT:-1800s}
AUDIT_TIMEOUT_S=${AUDIT_TIMEOUT_S:-600}
IMAGE=${IMAGE:-}

log() { printf '%s  %s\n' "$(date -u +%H:%M:%SZ)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

for v in DURATION_S SEED MAX_KILLS MIN_GAP_S MAX_GAP_S GRACE_PERIOD CATCHUP_ENTRIES AUDIT_TIMEOUT_S; do
  is_uint "${!v}" || { printf 'error: %s must be a non-negative integer (got %q)\n' "$v" "${!v}" >&2; exit 2; }
done
[[ $WAIT_TIMEOUT =~ ^[0-9]+s$ ]] || { echo "error: WAIT_TIMEOUT must be seconds like 300s" >&2; exit 2; }
((MAX_GAP_S >= MIN_GAP_S)) || { echo "error: MAX_GAP_S < MIN_GAP_S" >&2; exit 2; }
((GRACE_PERIOD >= 1)) || { echo "error: GRACE_PERIOD must be >= 1 (0 needs --force, unsafe for StatefulSet pods)" >&2; exit 2; }
case "$TARGETS" in both | brokers | workers) ;; *) echo "error: TARGETS must be both, brokers or workers" >&2; exit 2 ;; esac
command -v kubectl >/dev/null 2>&1 || { echo "error: kubectl is required" >&2; exit 2; }

k() {
  if [[ -n "${KUBECTL_CONTEXT:-}" ]]; then
    kubectl --context "$KUBECTL_CONTEXT" -n "$NS" "$@"
  else
    kubectl -n "$NS" "$@"
  fi
}

# Raw API reads (no namespace flag).
kraw() {
  if [[ -n "${KUBECTL_CONTEXT:-}" ]]; then
    kubectl --context "$KUBECTL_CONTEXT" get --raw "$1" --request-timeout=5s
  else
    kubectl get --raw "$1" --request-timeout=5s
  fi
}

# bash's generator is deterministic for a given seed: same seed (and bash version), same
# pauses and targets (given the same pod names).
RANDOM=$SEED
rand_between() { echo $(($1 + RANDOM % ($2 - $1 + 1))); }

STS="$NAME-broker"
HEADLESS="$NAME-broker-headless"
WORKER_SELECTOR="app.kubernetes.io/name=txpipe,app.kubernetes.io/instance=$NAME,app.kubernetes.io/component=worker"
AUDIT_JOB=""
AUDIT_OUT=$(mktemp)
START=$SECONDS
KILLS=()

summary() {
  if ((${#KILLS[@]} > 0)); then
    log "chaos: ${#KILLS[@]} pod deletions:"
    printf '  %s\n' "${KILLS[@]}" >&2
  else
    log "chaos: no pod deleted"
  fi
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  rm -f "$AUDIT_OUT"
  if [[ -n "$AUDIT_JOB" ]]; then
    k delete job "$AUDIT_JOB" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  fi
  summary
  if ((status != 0)); then
    log "exit $status; state of the pipeline:"
    k get txp "$NAME" -o wide >&2 || true
    k get pods -l "app.kubernetes.io/instance=$NAME" -o wide >&2 || true
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

elapsed() { echo "$((SECONDS - START))"; }

replicas() { k get sts "$STS" -o jsonpath='{.spec.replicas}'; }

# Waits until the pipeline is whole: every broker pod Ready, the StatefulSet and the
# pipeline's status counting every broker ready, condition Ready=True, and (best effort) every
# broker caught up.
wait_healthy() {
  local n
  n=$(replicas)
  [[ -n "$n" ]] || die "StatefulSet $STS has no replicas"
  k wait pod -l "app.kubernetes.io/name=txpipe,app.kubernetes.io/instance=$NAME,app.kubernetes.io/component=broker" \
    --for=condition=Ready --timeout="$WAIT_TIMEOUT" >/dev/null
  k wait "sts/$STS" --for=jsonpath='{.status.readyReplicas}'="$n" --timeout="$WAIT_TIMEOUT" >/dev/null
  k wait "txp/$NAME" --for=jsonpath='{.status.broker.readyReplicas}'="$n" --timeout="$WAIT_TIMEOUT" >/dev/null
  k wait "txp/$NAME" --for=condition=Ready --timeout="$WAIT_TIMEOUT" >/dev/null
  wait_caught_up "$n"
}

# Best effort (needs jq and pods/proxy): every broker sees a leader for every stream and has
# applied up to CATCHUP_ENTRIES entries behind the highest commit index of that stream.
# Skipped with a note when the admin API cannot be read (no jq, no RBAC, a NetworkPolicy).
CATCHUP_NOTED=0
wait_caught_up() {
  local n=$1 deadline i statuses s
  command -v jq >/dev/null 2>&1 || {
    ((CATCHUP_NOTED)) || log "jq not installed: catch-up gate skipped (readiness gates only)"
    CATCHUP_NOTED=1
    return 0
  }
  deadline=$((SECONDS + ${WAIT_TIMEOUT%s}))
  while :; do
    statuses="["
    for ((i = 0; i < n; i++)); do
      if ! s=$(kraw "/api/v1/namespaces/$NS/pods/$STS-$i:9180/proxy/status.json" 2>/dev/null); then
        ((CATCHUP_NOTED)) || log "cannot read $STS-$i's /status.json through the API server: catch-up gate skipped"
        CATCHUP_NOTED=1
        return 0
      fi
      statuses+="$s"
      ((i < n - 1)) && statuses+=","
    done
    statuses+="]"
    if jq -e --argjson lag "$CATCHUP_ENTRIES" '
        ([.[].raft | to_entries[]] | group_by(.key)) as $groups
        | all(.[]; .ready == true)
          and all($groups[];
                (map(.value.commit_index) | max) as $c
                | all(.[]; .value.leader_id != null and .value.applied_index + $lag >= $c))
      ' >/dev/null <<<"$statuses"; then
      return 0
    fi
    ((SECONDS < deadline)) || die "brokers not caught up after $WAIT_TIMEOUT"
    sleep 2
  done
}

# Waits until a pod named $1 exists with a uid other than $2 (the StatefulSet re-created it).
wait_recreated() {
  local pod=$1 old_uid=$2 deadline uid
  deadline=$((SECONDS + ${WAIT_TIMEOUT%s}))
  while :; do
    uid=$(k get pod "$pod" -o jsonpath='{.metadata.uid}' 2>/dev/null || true)
    [[ -n "$uid" && "$uid" != "$old_uid" ]] && return 0
    ((SECONDS < deadline)) || die "$pod was not re-created within $WAIT_TIMEOUT"
    sleep 1
  done
}

kill_broker() {
  local n ordinal pod uid t0 leader role=""
  log "gate: waiting until every broker is ready and caught up, and the pipeline is Ready"
  wait_healthy
  n=$(replicas)
  ordinal=$(rand_between 0 $((n - 1)))
  pod="$STS-$ordinal"
  uid=$(k get pod "$pod" -o jsonpath='{.metadata.uid}')
  leader=$(k get txp "$NAME" -o jsonpath='{.status.broker.leader}' 2>/dev/null || true)
  [[ "$leader" == "$pod" ]] && role=" (leader)"
  t0=$SECONDS
  log "deleting broker pod $pod (grace ${GRACE_PERIOD}s; status.broker.leader: ${leader:-unknown})"
  k delete pod "$pod" --grace-period="$GRACE_PERIOD" --wait=true --timeout=120s >/dev/null
  wait_recreated "$pod" "$uid"
  k wait "pod/$pod" --for=condition=Ready --timeout="$WAIT_TIMEOUT" >/dev/null
  local ready_after=$((SECONDS - t0))
  wait_healthy
  KILLS+=("$(printf '%6ss  broker %s%s: pod Ready after %ss, pipeline Ready and caught up after %ss' \
    "$((t0 - START))" "$pod" "$role" "$ready_after" "$((SECONDS - t0))")")
  log "broker $pod back: Ready after ${ready_after}s, pipeline healthy after $((SECONDS - t0))s"
}

kill_worker() {
  local pods=() pod t0
  mapfile -t pods < <(k get pods -l "$WORKER_SELECTOR" --field-selector=status.phase=Running \
    -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | sort)
  if ((${#pods[@]} == 0)); then
    log "no running worker pod: skipping this worker deletion"
    return 0
  fi
  pod=${pods[$(rand_between 0 $((${#pods[@]} - 1)))]}
  t0=$SECONDS
  log "deleting worker pod $pod (grace ${GRACE_PERIOD}s)"
  k delete pod "$pod" --grace-period="$GRACE_PERIOD" --wait=true --timeout=120s >/dev/null
  KILLS+=("$(printf '%6ss  worker %s' "$((t0 - START))" "$pod")")
}

# ---- 1. preflight ---------------------------------------------------------------------------
k get txp "$NAME" >/dev/null || die "no TransactionPipeline $NAME in namespace $NS"
k get sts "$STS" >/dev/null || die "no StatefulSet $STS (is the operator running?)"
if [[ -z "$IMAGE" ]]; then
  IMAGE=$(k get sts "$STS" -o jsonpath='{.spec.template.spec.containers[0].image}')
fi
PULL_POLICY=$(k get sts "$STS" -o jsonpath='{.spec.template.spec.containers[0].imagePullPolicy}')
HAS_PRODUCER=1
if ! k get job "$NAME-producer" >/dev/null 2>&1; then
  HAS_PRODUCER=0
  log "warning: no Job $NAME-producer: set spec.producer (count and a rate that lasts longer than ${DURATION_S}s), or the audit finds nothing to check"
elif ((DURATION_S > 0)) && [[ "$(k get job "$NAME-producer" -o jsonpath='{.status.succeeded}')" == 1 ]]; then
  log "warning: Job $NAME-producer has already completed: the chaos runs without producer traffic (only the workers' draining is exercised)"
fi
N=$(replicas)
if ((N == 1)) && [[ "$TARGETS" != workers ]]; then
  log "warning: a single broker replica: every broker deletion stops the pipeline until the pod is back (no quorum to fail over to)"
fi
log "pipeline $NS/$NAME: $N broker replicas, image $IMAGE; chaos for ${DURATION_S}s, seed $SEED, at most $MAX_KILLS deletions, targets $TARGETS"
log "waiting until the pipeline is Ready"
wait_healthy

# ---- 2. chaos -------------------------------------------------------------------------------
while ((${#KILLS[@]} < MAX_KILLS)); do
  gap=$(rand_between "$MIN_GAP_S" "$MAX_GAP_S")
  (($(elapsed) + gap < DURATION_S)) || break
  sleep "$gap"
  case "$TARGETS" in
    brokers) target=broker ;;
    workers) target=worker ;;
    *) if ((RANDOM % 2)); then target=broker; else target=worker; fi ;;
  esac
  if [[ $target == broker ]]; then kill_broker; else kill_worker; fi
  (($(elapsed) < DURATION_S)) || break
done
log "chaos phase over after $(elapsed)s"

# ---- 3. let the run finish --------------------------------------------------------------------
wait_healthy
if ((HAS_PRODUCER)); then
  log "waiting for Job $NAME-producer to complete (timeout $PRODUCER_TIMEOUT)"
  k wait "job/$NAME-producer" --for=condition=Complete --timeout="$PRODUCER_TIMEOUT" >/dev/null \
    || die "Job $NAME-producer did not complete (kubectl -n $NS logs job/$NAME-producer)"
fi

# ---- 4. audit -------------------------------------------------------------------------------
ADDRS=""
for ((i = 0; i < N; i++)); do
  ADDRS+="${ADDRS:+,}$STS-$i.$HEADLESS.$NS.svc:9100"
done

# Runs one audit Job, writes its output to $AUDIT_OUT; returns 0 when the Job succeeded (the
# audit PASSED).
run_audit_job() {
  local attempt=$1 deadline succeeded failed
  AUDIT_JOB="$NAME-chaos-audit-$$-$attempt"
  if ((${#AUDIT_JOB} > 63)); then
    AUDIT_JOB=${AUDIT_JOB:${#AUDIT_JOB}-63}
    AUDIT_JOB=${AUDIT_JOB#-}
  fi
  k create -f - >/dev/null <<EOF
apiVersion: batch/v1
kind: Job
metadata:
  name: $AUDIT_JOB
  labels:
    app.kubernetes.io/name: txpipe
    app.kubernetes.io/instance: $NAME
    app.kubernetes.io/component: chaos-audit
spec:
  backoffLimit: 0
  activeDeadlineSeconds: 300
  ttlSecondsAfterFinished: 3600
  template:
    metadata:
      labels:
        app.kubernetes.io/name: txpipe
        app.kubernetes.io/instance: $NAME
        app.kubernetes.io/component: chaos-audit
    spec:
      restartPolicy: Never
      securityContext:
        runAsNonRoot: true
        runAsUser: 65532
        runAsGroup: 65532
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: audit
          image: $IMAGE
          imagePullPolicy: ${PULL_POLICY:-IfNotPresent}
          command: ["txpipe", "audit", "--brokers", "$ADDRS"]
          resources:
            requests: {cpu: 250m, memory: 256Mi}
            limits: {memory: 1Gi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: ["ALL"]
EOF
  deadline=$((SECONDS + 330))
  while :; do
    succeeded=$(k get job "$AUDIT_JOB" -o jsonpath='{.status.succeeded}' 2>/dev/null || true)
    failed=$(k get job "$AUDIT_JOB" -o jsonpath='{.status.failed}' 2>/dev/null || true)
    [[ "${succeeded:-0}" != 0 || "${failed:-0}" != 0 ]] && break
    ((SECONDS < deadline)) || { log "audit Job $AUDIT_JOB did not finish"; break; }
    sleep 2
  done
  k logs "job/$AUDIT_JOB" --tail=-1 >"$AUDIT_OUT" 2>/dev/null || true
  k delete job "$AUDIT_JOB" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  AUDIT_JOB=""
  [[ "${succeeded:-0}" != 0 ]]
}

log "running txpipe audit as a Job against $ADDRS"
audit_deadline=$((SECONDS + AUDIT_TIMEOUT_S))
attempt=0
while :; do
  attempt=$((attempt + 1))
  if run_audit_job "$attempt"; then
    cat "$AUDIT_OUT"
    log "audit PASSED (attempt $attempt)"
    exit 0
  fi
  out=$(cat "$AUDIT_OUT")
  # Lost, duplicated or unexpected with nothing pending cannot get better: fail now.
  if grep -Eq 'duplicated [1-9]|unexpected [1-9]' <<<"$out" \
    || { grep -Eq 'lost [1-9]' <<<"$out" && grep -Eq 'pending 0( |$)' <<<"$out"; }; then
    printf '%s\n' "$out"
    log "audit FAILED"
    exit 1
  fi
  if ((SECONDS >= audit_deadline)); then
    printf '%s\n' "$out"
    log "audit not passed after ${AUDIT_TIMEOUT_S}s"
    exit 1
  fi
  log "audit not passed yet (attempt $attempt): $(grep -E '^audit|pending' <<<"$out" | tr -s ' \n' ' ' | cut -c1-200)"
  sleep 10
done
