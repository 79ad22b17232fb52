# Task runner; .ci/run calls `make ci`, whose steps are the same as `make test` plus the
# end-to-end runs. Every recipe is a plain cargo or shell command you can run by hand.
CARGO ?= cargo
TXPIPE := target/release/txpipe

PY ?= python3
export PIP_ROOT_USER_ACTION=ignore
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: release run test lint unit k8s pydeps crds e2e ci bench bench-broker bench-failover bench-pipeline bench-stages

## The main job: 2,000,000 generated transactions through 3 broker replicas + 4 workers (0.5 CPU each).
run: release
	$(TXPIPE) run

release:
	$(CARGO) build --release --workspace

## Everything CI checks except system packages: lint, unit + integration tests, end-to-end runs.
test: lint unit k8s e2e

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace
	$(CARGO) test -p txpipe-worker --features train

## Python tools of the Kubernetes checks (kubernetes-validate, jsonschema, PyYAML), pinned.
pydeps:
	$(PY) -m pip install -q -r scripts/requirements.txt

## Kubernetes checks without a cluster: the example pipelines validate against the generated
## CRD's schema, the bad ones are rejected, and every object the operator renders passes
## kubernetes-validate (strict) for Kubernetes 1.30 and the newest version it knows.
k8s: pydeps
	$(CARGO) build -p txpipe-operator
	$(PY) scripts/validate_k8s.py target/debug/txpipe-operator

## Regenerate the CRD in crds/ (a test fails when it drifts from the Rust types).
crds:
	$(CARGO) run -q -p txpipe-operator -- crd > crds/transactionpipelines.txpipe.io.yaml

## End-to-end: local mode passes the audit with 1, 3 and 5 broker replicas, also with kill -9 of
## the leader (every few seconds, several seeds) and of workers. Prints per-case timings.
e2e: release
	bash scripts/e2e.sh

ci: test

## Broker alone vs NATS JetStream: 3 replicas each (R3), then 1 each.
bench-broker: release
	$(TXPIPE) bench broker --replicas 3
	$(TXPIPE) bench broker --replicas 1 --no-fsync-run

## Leader kill -> first acknowledged produce on the new leader, over 20 kills.
bench-failover: release
	$(TXPIPE) bench failover --kills 20

bench-pipeline: release
	mkdir -p bench-out
	$(TXPIPE) run --report-json bench-out/pipeline.json
	$(TXPIPE) run --chaos --chaos-kill-interval-ms 5000 --chaos-events 8 --report-json bench-out/pipeline-chaos.json

bench-stages: release
	target/release/txpipe-worker bench-stages --count 50000

bench: bench-stages bench-broker bench-failover bench-pipeline
