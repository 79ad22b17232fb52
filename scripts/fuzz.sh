#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (libFuzzer through cargo-fuzz) for a bounded time:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 20)
#   FUZZ_SEED=N scripts/fuzz.sh ...           (libFuzzer's -seed; default: a new one each run)
#
# With a fixed FUZZ_SEED a target tries the same inputs in the same order on every machine, so
# a run of S seconds covers a prefix of what a longer run with the same seed tried: `make
# fuzz-ci` (the run of `make test`) uses a fixed seed, and a longer local run with that seed
# shows beforehand that CI will not find a crash by chance.
#
# Installs cargo-fuzz when missing, builds the targets once (release, AddressSanitizer), then
# runs each target on a temporary copy of its committed corpus (fuzz/corpus/<target>/; nothing
# the run finds is written back) plus its recorded crashes (fuzz/regressions/<target>/).
# Fails on the first crash, panic, timeout (10 s per input), over-large allocation or leak, and
# prints the reproducing input's path and the command to replay it. See docs/fuzzing.md.
#
# Stable toolchain: cargo-fuzz passes `-Zsanitizer=address` and other unstable flags to rustc;
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept them (no nightly toolchain is installed).
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
case "$secs" in '' | *[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a number, got '$secs'" >&2; exit 2 ;; esac
seed_args=()
if [ -n "${FUZZ_SEED:-}" ]; then
  case "$FUZZ_SEED" in *[!0-9]*) echo "fuzz.sh: FUZZ_SEED must be a number, got '$FUZZ_SEED'" >&2; exit 2 ;; esac
  seed_args=(-seed="$FUZZ_SEED")
fi
CARGO_FUZZ_VERSION=0.13.2
export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL=0

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install --locked --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

started=$(date +%s)
cargo fuzz build -O
built=$(date +%s)
echo "fuzz: targets built in $((built - started)) s"

# The segment and transfer checks write scratch directories (and fsync) under TMPDIR: in
# memory when /dev/shm is there.
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  work=$(mktemp -d -p /dev/shm txpipe-fuzz.XXXXXX)
else
  work=$(mktemp -d)
fi
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"

failed=()
for target in $(cargo fuzz list); do
  corpus="$work/corpus/$target"
  mkdir -p "$corpus"
  cp fuzz/corpus/"$target"/* "$corpus"/
  dirs=("$corpus")
  if compgen -G "fuzz/regressions/$target/*" >/dev/null; then
    dirs+=("fuzz/regressions/$target")
  fi
  log="$work/$target.log"
  t0=$(date +%s)
  if cargo fuzz run -O "$target" "${dirs[@]}" -- \
    "${seed_args[@]}" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/$target-" >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $target ok: $runs inputs in $(($(date +%s) - t0)) s ($cov)"
  else
    echo "fuzz: $target FAILED; the end of its log:"
    tail -n 60 "$log"
    mkdir -p fuzz/artifacts/"$target"
    for a in "$work/$target"-*; do
      [ -e "$a" ] || continue
      cp "$a" fuzz/artifacts/"$target"/
      echo "fuzz: reproducing input saved as fuzz/artifacts/$target/$(basename "$a")"
      echo "      replay: RUSTC_BOOTSTRAP=1 cargo fuzz run -O $target fuzz/artifacts/$target/$(basename "$a")"
      echo "      once fixed, keep it: cp it to fuzz/regressions/$target/"
    done
    failed+=("$target")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
  exit 1
fi
echo "fuzz: every target ran ${secs} s without a failure ($(($(date +%s) - started)) s in all)"
