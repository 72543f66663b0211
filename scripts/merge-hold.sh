#!/usr/bin/env bash
# Measures how long an idle shard holds up the merged order (issue #5): three voters with
# 2 shards, writes to shard 0 only (open loop), shard 1 idle; a `quorum tail` of each node's
# merged log reports how long each batch waited between arriving from its shard and its turn
# in the global order (p50, p99, max). Default timing: heartbeat 20 ms, tick 5 ms.
#   scripts/merge-hold.sh [RATE] [SECONDS]
source "$(dirname "$0")/measure-common.sh"
peers="1=127.0.0.1:7400,2=127.0.0.1:7410,3=127.0.0.1:7420"
for id in 1 2 3; do
  $quorum node --id $id --cluster-id 11 --listen 127.0.0.1:$((7390 + 10 * id)) --peers "$peers" \
    --data-dir "$work/d$id" --shards 2 2>"$work/log$id" &
done
sleep 2
# Each tail stops after 80 % of the writes the load will send; it reads from position 0.
count=$(python3 -c "print(int($rate * $seconds * 0.8))")
tails=()
for id in 1 2 3; do
  $quorum tail --cluster 127.0.0.1:$((7390 + 10 * id)) --cluster-id 11 --count "$count" \
    --hold-report > /dev/null 2> "$work/tail$id" &
  tails+=($!)
done
$quorum bench --target 127.0.0.1:7400 --cluster-id 11 --open-loop --rate "$rate" --clients 256 \
  --duration "$seconds" --warmup 0 --no-limits --only-shard 0 --json > "$work/bench.json"
wait "${tails[@]}"
python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"load: {r['ops_per_sec']:.0f} writes/s to shard 0 only, p99 {r['p99_us']:.0f} us\")" "$work/bench.json"
for id in 1 2 3; do
  echo "node $id: $(cat "$work/tail$id")"
  $quorum status --node 127.0.0.1:$((7390 + 10 * id)) --cluster-id 11 | cut -d, -f1-3
done
