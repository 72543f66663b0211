#!/usr/bin/env bash
# Runs every cargo fuzz target in fuzz/ (docs/fuzzing.md) for a bounded time each and exits
# non-zero if any crashed (a panic is a crash), hung or ran out of memory.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
Usage: scripts/fuzz.sh [--seconds N] [--target NAME] [--sanitizer auto|address|none] [--grow]

Builds the fuzz targets of fuzz/ with cargo fuzz and runs each for N seconds (default 20),
starting from its corpus in fuzz/corpus/<target>/. New inputs found go to a scratch copy, so
the committed corpus stays as it is unless --grow merges them back (libFuzzer -merge=1: only
inputs that add coverage). Prints the executions per target (libFuzzer's
stat::number_of_executed_units) and exits 1 if any target found a crash, a hang (one input
over 10 s) or an out-of-memory (over 2048 MiB); the input is kept in fuzz/artifacts/<target>/.
Exits 2 if cargo fuzz is missing (install: cargo install --locked cargo-fuzz@0.13.1).

  --seconds N     run each target for N seconds
  --target NAME   run only NAME (repeatable); default: every target in fuzz/fuzz_targets/
  --sanitizer S   address (AddressSanitizer: needs a nightly toolchain), none (any
                  toolchain), or auto (the default: address if `cargo +nightly` works)
  --grow          merge what the run found into fuzz/corpus/<target>/
  -h, --help      this text
EOF
}

seconds=20
sanitizer=auto
grow=0
targets=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="${2:?--seconds needs a value}"; shift 2 ;;
        --target) targets+=("${2:?--target needs a value}"); shift 2 ;;
        --sanitizer) sanitizer="${2:?--sanitizer needs a value}"; shift 2 ;;
        --grow) grow=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fuzz.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "fuzz.sh: --seconds takes a whole number of seconds, not '$seconds'" >&2
    exit 2
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    for file in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$file" .rs)")
    done
fi
for target in "${targets[@]}"; do
    if [[ ! -f "fuzz/fuzz_targets/$target.rs" ]]; then
        echo "fuzz.sh: no target '$target' in fuzz/fuzz_targets/" >&2
        exit 2
    fi
done

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo fuzz is not installed (cargo install --locked cargo-fuzz@0.13.1)" >&2
    exit 2
fi
toolchain=()
case "$sanitizer" in
    auto)
        if cargo +nightly --version >/dev/null 2>&1; then
            sanitizer=address
        else
            sanitizer=none
        fi
        ;;
    address|none) ;;
    *) echo "fuzz.sh: --sanitizer is auto, address or none, not '$sanitizer'" >&2; exit 2 ;;
esac
# AddressSanitizer is a nightly-only rustc flag; without it cargo fuzz passes only stable
# flags (coverage instrumentation), so any toolchain builds the targets.
if [[ "$sanitizer" == address ]]; then
    toolchain=(+nightly)
fi

triple="$(rustc -vV | sed -n 's/^host: //p')"
echo "fuzz.sh: building ${#targets[@]} target(s), sanitizer $sanitizer, toolchain" \
    "$(cargo "${toolchain[@]}" --version)"
build_start=$SECONDS
build_args=(--fuzz-dir fuzz -s "$sanitizer" --target "$triple")
if [[ ${#targets[@]} -eq 1 ]]; then
    cargo "${toolchain[@]}" fuzz build "${build_args[@]}" "${targets[0]}"
else
    cargo "${toolchain[@]}" fuzz build "${build_args[@]}"
fi
echo "fuzz.sh: build took $((SECONDS - build_start)) s"

bin_dir="fuzz/target/$triple/release"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
failed=()
summary=()
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    artifacts="fuzz/artifacts/$target"
    mkdir -p "$corpus" "$artifacts" "$scratch/$target"
    log="$scratch/$target.log"
    echo "fuzz.sh: $target for $seconds s (corpus $corpus: $(find "$corpus" -type f | wc -l) inputs)"
    status=0
    # New inputs go to the scratch directory (the first one named); the committed corpus is
    # read only. A per-input timeout and memory limit turn hangs and unbounded allocation
    # into failures; the outer timeout catches a target that never returns to libFuzzer.
    timeout --kill-after=10 $((seconds + 120)) "$bin_dir/$target" \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "$scratch/$target" "$corpus" >"$log" 2>&1 || status=$?
    executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)"
    if [[ $status -ne 0 ]]; then
        echo "fuzz.sh: $target FAILED (exit $status); the end of its log:" >&2
        tail -n 60 "$log" >&2
        failed+=("$target")
        result=FAILED
    else
        result=ok
    fi
    summary+=("$(printf '%-14s %12s executions %8s/s  %s' "$target" "${executions:-?}" "${rate:-?}" "$result")")
    if [[ $grow -eq 1 && $status -eq 0 ]]; then
        "$bin_dir/$target" -merge=1 "$corpus" "$scratch/$target" >"$scratch/$target.merge" 2>&1
    fi
done

echo "fuzz.sh: $seconds s per target, load average $(cut -d' ' -f1-3 /proc/loadavg):"
printf '  %s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz.sh: FAILED: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz.sh: every target ran clean"
