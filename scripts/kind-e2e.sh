#!/usr/bin/env bash
# End-to-end check of the txpipe operator on a throwaway local cluster.
#
# NOT run in CI (CI has no container runtime for a cluster); this is for users and developers
# with Docker. It:
#   1. creates a kind (or k3d) cluster,
#   2. builds the txpipe image (`docker build -t txpipe:dev .`) and loads it into the cluster,
#   3. installs crds/, manifests/rbac/cluster-role.yaml and manifests/operator/deployment.yaml
#      (with the image overridden),
#   4. applies manifests/examples/small.yaml (image overridden) and waits until it is Ready and
#      its producer Job has completed,
#   5. deletes a broker pod and a worker pod and waits until everything is Ready again,
#   6. prints `kubectl get txp,sts,deploy,hpa,pdb,svc`.
# The cluster is deleted on exit unless KEEP=1 (or it existed before the script started).
#
# Requirements: docker, kubectl, and kind (default) or k3d (TOOL=k3d).
#
# Environment:
#   TOOL=kind|k3d        cluster tool (default kind)
#   CLUSTER=name         cluster name (default txpipe-e2e)
#   IMAGE=ref            image to build and load (default txpipe:dev)
#   SKIP_BUILD=1         do not build IMAGE; it must exist in the local Docker daemon
#   KEEP=1               keep the cluster afterwards
#   WAIT_TIMEOUT=300s    bound of each readiness wait
#
#   bash scripts/kind-e2e.sh
#   KEEP=1 TOOL=k3d bash scripts/kind-e2e.sh
set -euo pipefail

cd "$(dirname "$0")/.."

TOOL=${TOOL:-kind}
CLUSTER=${CLUSTER:-txpipe-e2e}
IMAGE=${IMAGE:-txpipe:dev}
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP=${KEEP:-0}
WAIT_TIMEOUT=${WAIT_TIMEOUT:-300s}
PIPELINE=small

log() { printf '\n==> %s\n' "$*" >&2; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required but not installed ($2)"; }

case "$TOOL" in
  kind) need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation" ;;
  k3d) need k3d "https://k3d.io/#installation" ;;
  *) die "TOOL must be kind or k3d (got '$TOOL')" ;;
esac
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need docker "https://docs.docker.com/get-docker/"

if [[ "$SKIP_BUILD" != 1 && ! -f Dockerfile ]]; then
  die "no Dockerfile at the repository root: the container image arrives with a later issue.
Build an image holding txpipe-operator, txpipe-broker, txpipe-worker and txpipe-producer
on its PATH (running as a non-root user), then run: IMAGE=<that image> SKIP_BUILD=1 $0"
fi

# The kubectl context of the cluster; every kubectl call names it explicitly, so the script
# never touches another cluster of the user's kubeconfig.
case "$TOOL" in
  kind) CONTEXT="kind-$CLUSTER" ;;
  k3d) CONTEXT="k3d-$CLUSTER" ;;
esac
k() { kubectl --context "$CONTEXT" "$@"; }

cluster_exists() {
  case "$TOOL" in
    kind) kind get clusters 2>/dev/null | grep -qx "$CLUSTER" ;;
    k3d) k3d cluster get "$CLUSTER" >/dev/null 2>&1 ;;
  esac
}

CREATED=0
cleanup() {
  local status=$?
  if [[ $status -ne 0 && -n "${CONTEXT:-}" ]] && k get ns txpipe-system >/dev/null 2>&1; then
    log "failed (exit $status): diagnostics"
    k get txp,sts,deploy,pods,pvc,jobs -o wide || true
    k describe txp "$PIPELINE" || true
    k -n txpipe-system logs deploy/txpipe-operator --tail=100 || true
  fi
  if [[ $CREATED == 1 && $KEEP != 1 ]]; then
    log "deleting cluster $CLUSTER (KEEP=1 keeps it)"
    case "$TOOL" in
      kind) kind delete cluster --name "$CLUSTER" || true ;;
      k3d) k3d cluster delete "$CLUSTER" || true ;;
    esac
  elif [[ $CREATED == 1 ]]; then
    log "keeping cluster $CLUSTER (kubectl --context $CONTEXT ...)"
  fi
  exit "$status"
}
trap cleanup EXIT

# Polls until `kubectl get "$@"` finds the object, at most 120 s (kubectl wait fails at once on
# an object that does not exist yet).
wait_exists() {
  local _
  for _ in $(seq 1 120); do
    if k get "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  die "timed out waiting for $* to exist"
}

if cluster_exists; then
  log "using the existing cluster $CLUSTER (it is not deleted at the end)"
else
  log "creating $TOOL cluster $CLUSTER"
  CREATED=1
  case "$TOOL" in
    kind) kind create cluster --name "$CLUSTER" --wait 180s ;;
    k3d) k3d cluster create "$CLUSTER" --wait --timeout 180s ;;
  esac
fi

if [[ "$SKIP_BUILD" != 1 ]]; then
  log "building $IMAGE"
  docker build -t "$IMAGE" .
fi
log "loading $IMAGE into the cluster"
case "$TOOL" in
  kind) kind load docker-image "$IMAGE" --name "$CLUSTER" ;;
  k3d) k3d image import "$IMAGE" --cluster "$CLUSTER" ;;
esac

log "installing the CRD, RBAC and the operator"
k apply --server-side -f crds/
k wait --for=condition=Established crd/transactionpipelines.txpipe.io --timeout=60s
k create namespace txpipe-system --dry-run=client -o yaml | k apply -f -
k apply -f manifests/rbac/cluster-role.yaml
sed "s#image: ghcr.io/txpipe-io/txpipe:[^[:space:]]*#image: ${IMAGE}#" \
  manifests/operator/deployment.yaml | k apply -f -
k -n txpipe-system rollout status deploy/txpipe-operator --timeout="$WAIT_TIMEOUT"

log "creating the PAN key Secret (required by the pipeline: no default key)"
k create secret generic txpipe-pan-key \
  --from-literal=pan-key="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')" \
  --dry-run=client -o yaml | k apply -f -

log "applying manifests/examples/$PIPELINE.yaml with image $IMAGE"
awk -v img="$IMAGE" '{ print } /^spec:[[:space:]]*$/ { print "  image: " img }' \
  "manifests/examples/$PIPELINE.yaml" | k apply -f -
k wait "txp/$PIPELINE" --for=condition=Ready --timeout="$WAIT_TIMEOUT"
wait_exists "job/$PIPELINE-producer"
k wait "job/$PIPELINE-producer" --for=condition=Complete --timeout="$WAIT_TIMEOUT"

log "deleting a broker pod and a worker pod"
broker_pod="$PIPELINE-broker-0"
worker_pod=$(k get pods \
  -l "app.kubernetes.io/instance=$PIPELINE,app.kubernetes.io/component=worker" \
  -o jsonpath='{.items[0].metadata.name}')
[[ -n "$worker_pod" ]] || die "no worker pod found"
k delete pod "$broker_pod" "$worker_pod" --wait=true --timeout=120s

log "waiting until the pipeline is Ready again"
wait_exists "pod/$broker_pod"
k wait "pod/$broker_pod" --for=condition=Ready --timeout="$WAIT_TIMEOUT"
k rollout status "deploy/$PIPELINE-worker" --timeout="$WAIT_TIMEOUT"
k wait "txp/$PIPELINE" --for=jsonpath='{.status.broker.readyReplicas}'=1 --timeout="$WAIT_TIMEOUT"
k wait "txp/$PIPELINE" --for=condition=Ready --timeout="$WAIT_TIMEOUT"

log "result"
k get txp,sts,deploy,hpa,pdb,svc -o wide
log "kind e2e passed"
