# Task runner; .ci/run calls `make ci`, whose steps are the same as `make test` plus the
# end-to-end runs. Every recipe is a plain cargo or shell command you can run by hand.
CARGO ?= cargo
TXPIPE := target/release/txpipe

.PHONY: run test lint unit e2e ci bench bench-broker bench-pipeline bench-stages

## The main job: 2,000,000 generated transactions through broker + 4 workers (0.5 CPU each).
run:
	$(CARGO) run --release -p txpipe -- run

## Everything CI checks except system packages: lint, unit + integration tests, end-to-end runs.
test: lint unit e2e

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

$(TXPIPE):
	$(CARGO) build --release --workspace

## End-to-end: local mode passes the audit, also with kill -9 of the broker and of workers.
e2e: $(TXPIPE)
	bash scripts/e2e.sh

ci: test

bench-broker: $(TXPIPE)
	$(TXPIPE) bench broker --no-fsync-run

bench-pipeline: $(TXPIPE)
	$(TXPIPE) run --report-json bench-out/pipeline.json

bench: bench-broker bench-pipeline
