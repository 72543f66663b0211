#!/usr/bin/env bash
# The front ends' cost, measured in one run on a hand-started 3-node cluster on loopback (two
# shards, fsync on; BENCHMARKS.md, "Front ends"):
#   1. latency one request at a time: the native client (`quorum bench --clients 1`) against
#      the Redis front end (redis-benchmark -c 1) and the HTTP front end (curl, one kept-alive
#      connection, 1000 requests, time of each);
#   2. throughput: `quorum bench` at 256 concurrent against redis-benchmark -P 16 (50
#      connections, as issue #19 asks), on one key and on 100,000 random keys.
# Usage: scripts/front_bench.sh [OUT_DIR]   (needs target/release/quorum, redis-benchmark, curl)
set -euo pipefail
cd "$(dirname "$0")/.."
Q=./target/release/quorum
OUT=${1:-$(mktemp -d)}
mkdir -p "$OUT"
DATA=$(mktemp -d)
PEERS=1=127.0.0.1:27000,2=127.0.0.1:27010,3=127.0.0.1:27020
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DATA"; }
trap cleanup EXIT
for i in 1 2 3; do
    $Q node --id $i --cluster-id 7 --listen 127.0.0.1:$((27000 + (i - 1) * 10)) --peers $PEERS \
        --data-dir "$DATA/$i" --shards 2 --http-listen 127.0.0.1:$((28000 + i)) \
        --redis-listen 127.0.0.1:$((26379 + i)) 2>"$OUT/node-$i.log" &
    pids+=($!)
done
until $Q kv --cluster 127.0.0.1:27000 --timeout-ms 1000 put warm up >/dev/null 2>&1; do sleep 0.2; done
HTTP=127.0.0.1:28001
REDIS_PORT=26380

echo "## latency, one request at a time"
$Q bench --target 127.0.0.1:27000 --clients 1 --duration 5 --warmup 1 | tail -2
$Q bench --target 127.0.0.1:27000 --clients 1 --duration 5 --warmup 1 --read-ratio 1 | tail -1
redis-benchmark -p $REDIS_PORT -c 1 -n 5000 -r 100000 -t set,get -d 16 2>/dev/null \
    | grep -E '^====|latency summary|avg|^ +[0-9.]+ +[0-9.]+' | head -12
percentiles() { sort -n | awk '{ v[NR] = $1 } END { printf "p50 %.0f us, p99 %.0f us (%d requests)\n", v[int(NR * 0.5)] * 1e6, v[int(NR * 0.99)] * 1e6, NR }'; }
# One `output` per URL: curl applies -o to the first URL only.
urls() { for i in $(seq 1 1000); do printf 'url = "http://%s/v1/kv/lat%s"\noutput = "/dev/null"\n' "$HTTP" "$i"; done; }
printf 'curl PUT (one connection): '
urls | curl -s -K - -X PUT --data-binary 0123456789abcdef -w '%{time_total}\n' | percentiles
printf 'curl GET (one connection): '
urls | curl -s -K - -w '%{time_total}\n' | percentiles
printf 'curl GET of /health, no cluster request (one connection): '
for i in $(seq 1 1000); do printf 'url = "http://%s/health"\noutput = "/dev/null"\n' "$HTTP"; done | curl -s -K - -w '%{time_total}\n' | percentiles

echo "## throughput"
$Q bench --target 127.0.0.1:27000 --clients 256 --duration 5 --warmup 1 | tail -1
$Q bench --target 127.0.0.1:27000 --clients 256 --duration 5 --warmup 1 --read-ratio 1 | tail -1
echo "redis-benchmark -t set,get -n 100000 -P 16 (one key):"
redis-benchmark -p $REDIS_PORT -t set,get -n 100000 -P 16 -q 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | grep -v rps=
echo "redis-benchmark -t set,get -n 100000 -P 16 -r 100000 (random keys):"
redis-benchmark -p $REDIS_PORT -t set,get -n 100000 -P 16 -r 100000 -q 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | grep -v rps=
echo "redis-benchmark -t set,get -n 100000 -c 256 -r 100000 (no pipelining, 256 connections):"
redis-benchmark -p $REDIS_PORT -t set,get -n 100000 -c 256 -r 100000 -q 2>/dev/null | tr '\r' '\n' | grep -E 'requests per second' | grep -v rps=
