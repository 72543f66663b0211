#!/usr/bin/env bash
# Long runs of what CI runs briefly.
# - Power-loss soak (the default): tests/power_loss.rs's main test with more cycles (3 real
#   nodes on powerfs FUSE mounts; power cuts to one, two or all three under writes) and a seed
#   of your choice. CI runs 30 cycles with seed 1. Needs root, /dev/fuse and fusermount3
#   (Debian package fuse3). See docs/power-loss.md.
# - Simulator soak (--sim): `quorum sim` over seed ranges, chunk after chunk, for a given
#   time, each chunk's summary appended to a ledger (docs/soak-ledger.jsonl) with the date, the
#   commit and the machine; the next run goes on from the ledger's highest seed. See
#   docs/simulator.md.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'USAGE'
usage: scripts/soak.sh [--cycles N] [--seed S] [--runs R]
       scripts/soak.sh --sim [--seconds T] [--from N] [--chunk C] [--ledger FILE]

Power loss:
  --cycles N   power-loss cycles per run (default 300; about 3-4 s each)
  --seed S     seed of the first run (default: from the clock); run k uses S + k
  --runs R     runs, each on a fresh cluster (default 1)

Simulator (--sim):
  --seconds T  stop starting chunks after T seconds (default 3600)
  --from N     first seed (default: the ledger's highest seed run, or 0)
  --chunk C    seeds per chunk, each one ledger line (default 10000; about 20 min on 2 cores)
  --ledger F   the ledger (default docs/soak-ledger.jsonl); a violation is recorded, printed
               with its replay command, and ends the run with status 1

Prints each run's figures (cycles, node power cuts, writes acknowledged and read back,
lost = 0) and its seed; a failure names the seed and cycle to rerun with
QUORUM_POWER_LOSS_SEED=S QUORUM_POWER_LOSS_CYCLES=N cargo test --release --test power_loss.
USAGE
}

cycles=300
seed=$(date +%s)
runs=1
sim=0
seconds=3600
from=""
chunk=10000
ledger=docs/soak-ledger.jsonl
while [ $# -gt 0 ]; do
    case "$1" in
        --sim) sim=1; shift ;;
        --seconds) seconds="$2"; shift 2 ;;
        --from) from="$2"; shift 2 ;;
        --chunk) chunk="$2"; shift 2 ;;
        --ledger) ledger="$2"; shift 2 ;;
        --cycles) cycles="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [ "$sim" = 1 ]; then
    cargo build --release --bin quorum --quiet
    touch "$ledger"
    if [ -z "$from" ]; then
        from=$(sed -n 's/.*"seeds_to":\([0-9]*\).*/\1/p' "$ledger" | sort -n | tail -n 1)
        from=${from:-0}
    fi
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    machine="$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
    started=$(date +%s)
    status=0
    while [ $(($(date +%s) - started)) -lt "$seconds" ]; do
        to=$((from + chunk))
        echo "seeds $from..$to ($(date -u +%H:%M:%S))"
        summary=$(target/release/quorum sim --seeds "$from..$to" --json 2>target/soak-sim-stderr.log) || status=1
        if [ -z "$summary" ]; then
            echo "quorum sim printed no summary: see target/soak-sim-stderr.log" >&2
            exit 1
        fi
        echo "{\"date\":\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\",\"commit\":\"$commit\",\"machine\":\"$machine\",${summary#\{}" >>"$ledger"
        echo "  $summary"
        if [ "$status" != 0 ]; then
            grep -A1 VIOLATION target/soak-sim-stderr.log >&2
            echo "violations in seeds $from..$to: recorded in $ledger" >&2
            exit 1
        fi
        from=$to
    done
    awk -F'"seeds":' '{ split($2, a, ","); seeds += a[1] } END { printf "ledger %s: %d seeds in all\n", FILENAME, seeds }' "$ledger"
    exit 0
fi

cargo build --release --tests --bin quorum --quiet
mkdir -p target/soak
for ((run = 0; run < runs; run++)); do
    run_seed=$((seed + run))
    log="target/soak/power-loss-$run_seed.log"
    echo "run $((run + 1))/$runs: seed $run_seed, $cycles cycles (log: $log)"
    if QUORUM_POWER_LOSS_SEED="$run_seed" QUORUM_POWER_LOSS_CYCLES="$cycles" \
        cargo test --release --quiet --test power_loss -- --exact --nocapture \
        acknowledged_writes_survive_power_cuts_to_one_two_or_all_three_nodes >"$log" 2>&1; then
        grep -E "^(power loss|skipped)" "$log"
    else
        tail -n 60 "$log" >&2
        echo "run with seed $run_seed FAILED: full output in $log" >&2
        exit 1
    fi
done
