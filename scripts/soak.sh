#!/usr/bin/env bash
# Power-loss soak: runs tests/power_loss.rs's main test with more cycles (3 real nodes on
# powerfs FUSE mounts; power cuts to one, two or all three under writes) and a seed of your
# choice. CI runs 30 cycles with seed 1; run this for longer. Needs root, /dev/fuse and
# fusermount3 (Debian package fuse3). See docs/power-loss.md.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'USAGE'
usage: scripts/soak.sh [--cycles N] [--seed S] [--runs R]

  --cycles N   power-loss cycles per run (default 300; about 3-4 s each)
  --seed S     seed of the first run (default: from the clock); run k uses S + k
  --runs R     runs, each on a fresh cluster (default 1)

Prints each run's figures (cycles, node power cuts, writes acknowledged and read back,
lost = 0) and its seed; a failure names the seed and cycle to rerun with
QUORUM_POWER_LOSS_SEED=S QUORUM_POWER_LOSS_CYCLES=N cargo test --release --test power_loss.
USAGE
}

cycles=300
seed=$(date +%s)
runs=1
while [ $# -gt 0 ]; do
    case "$1" in
        --cycles) cycles="$2"; shift 2 ;;
        --seed) seed="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

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
