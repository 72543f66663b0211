#!/usr/bin/env bash
# Quorum's Redis front end beside a real redis-server, in one run, with the CPU each side spends
# per request (issue #19 point 4; BENCHMARKS.md, "Front ends"). For each of redis-server
# (`--appendonly yes --appendfsync always`) and a 3-node Quorum cluster on loopback (2 shards,
# fsync, `--redis-listen` on each, the benchmark sent to node 1), runs the issue's command
#   redis-benchmark -t TEST -n N -c 256 -P 16 -d 16
# for SET and for GET, and reads the servers' user + system CPU from /proc/PID/stat before and
# after, and redis-benchmark's own from `time`: so the ratio of the rates can be set beside
# what each request costs the machine (two cores here, shared by the servers and the benchmark).
# Usage: scripts/redis-compare.sh [ROUNDS] [N]   (needs target/release/quorum, redis-server,
# redis-benchmark)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=./target/release/quorum
ROUNDS=${1:-2}
N=${2:-1000000}
DATA=$(mktemp -d)
TICK=$(getconf CLK_TCK)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT

# Clock ticks of user + system time of the given processes, threads included.
cpu_ticks() { local sum=0; for pid in "$@"; do set -- $(awk '{print $14, $15}' "/proc/$pid/stat"); sum=$((sum + $1 + $2)); done; echo $sum; }

# One redis-benchmark run against PORT; prints "rate cpu_us_per_request_servers cpu_us_per_request_benchmark".
measure() {
    local port=$1 test=$2; shift 2
    local before; before=$(cpu_ticks "$@")
    local out; out=$( { /usr/bin/time -f 'bench_cpu %U %S' redis-benchmark -p "$port" -t "$test" -n "$N" -c 256 -P 16 -d 16 -q; } 2>&1 | tr '\r' '\n')
    local after; after=$(cpu_ticks "$@")
    local rate; rate=$(echo "$out" | grep -v 'rps=' | grep -oE '[0-9.]+ requests per second' | awk '{print $1}' | tail -1)
    local bench; bench=$(echo "$out" | awk '/^bench_cpu/ {print $2 + $3}')
    awk -v r="$rate" -v s="$(( after - before ))" -v b="$bench" -v n="$N" -v t="$TICK" \
        'BEGIN { printf "%s/s  servers %.2f us/request  redis-benchmark %.2f us/request\n", r, s / t / n * 1e6, b / n * 1e6 }'
}

start_redis() {
    # A fresh log each round: loading the last round's would answer -LOADING for a while.
    rm -rf "$DATA/appendonlydir"
    redis-server --port 26999 --appendonly yes --appendfsync always --save "" --dir "$DATA" \
        --daemonize no >"$DATA/redis.log" 2>&1 &
    REDIS_PID=$!
    pids+=("$REDIS_PID")
    until [ "$(redis-cli -p 26999 PING 2>/dev/null)" = PONG ]; do sleep 0.1; done
}

start_quorum() {
    local peers=1=127.0.0.1:27500,2=127.0.0.1:27510,3=127.0.0.1:27520
    QUORUM_PIDS=()
    rm -rf "$DATA"/q*
    for i in 1 2 3; do
        $Q node --id $i --cluster-id 9 --listen 127.0.0.1:$((27500 + (i - 1) * 10)) --peers $peers \
            --data-dir "$DATA/q$i" --shards 2 --redis-listen 127.0.0.1:$((26500 + i)) \
            2>"$DATA/node-$i.log" &
        QUORUM_PIDS+=($!)
        pids+=($!)
    done
    until $Q kv --cluster 127.0.0.1:27500 --timeout-ms 1000 put warm up >/dev/null 2>&1; do sleep 0.2; done
}

stop() { for pid in "$@"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }

echo "## $(date -u +%FT%TZ) $(git rev-parse --short HEAD), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "## redis-benchmark -t set|get -n $N -c 256 -P 16 -d 16"
for round in $(seq 1 "$ROUNDS"); do
    start_redis
    echo "round $round redis-server (appendfsync always) SET: $(measure 26999 set "$REDIS_PID")"
    echo "round $round redis-server (appendfsync always) GET: $(measure 26999 get "$REDIS_PID")"
    stop "$REDIS_PID"
    start_quorum
    echo "round $round Quorum (3 nodes, fsync) SET: $(measure 26501 set "${QUORUM_PIDS[@]}")"
    echo "round $round Quorum (3 nodes, fsync) GET: $(measure 26501 get "${QUORUM_PIDS[@]}")"
    stop "${QUORUM_PIDS[@]}"
done
