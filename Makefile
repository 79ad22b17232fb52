# Task runner; .ci/run calls `make ci`, whose steps are the same as `make test` plus the
# end-to-end runs. Every recipe is a plain cargo or shell command you can run by hand.
CARGO ?= cargo
TXPIPE := target/release/txpipe

.PHONY: release run test lint unit e2e ci bench bench-broker bench-pipeline bench-stages

## The main job: 2,000,000 generated transactions through broker + 4 workers (0.5 CPU each).
run: release
	$(TXPIPE) run

release:
	$(CARGO) build --release --workspace

## Everything CI checks except system packages: lint, unit + integration tests, end-to-end runs.
test: lint unit e2e

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace
	$(CARGO) test -p txpipe-worker --features train

## End-to-end: local mode passes the audit, also with kill -9 of the broker and of workers.
e2e: release
	bash scripts/e2e.sh

ci: test

bench-broker: release
	$(TXPIPE) bench broker --no-fsync-run

bench-pipeline: release
	mkdir -p bench-out
	$(TXPIPE) run --report-json bench-out/pipeline.json
	$(TXPIPE) run --chaos --chaos-events 8 --report-json bench-out/pipeline-chaos.json

bench-stages: release
	target/release/txpipe-worker bench-stages --count 50000

bench: bench-stages bench-broker bench-pipeline
