#!/usr/bin/env bash
# Measures what learners cost the leaders (issue #5): the same open-loop write load against
# three voters (2 shards each) without learners, then with two learners (node 5 relaying through
# node 4), and the shards' leaders' egress bytes per committed write in each run (from the
# nodes' own counters, `quorum status`), with their ratio.
#   scripts/learner-egress.sh [RATE] [SECONDS]
source "$(dirname "$0")/measure-common.sh"
peers="1=127.0.0.1:7300,2=127.0.0.1:7310,3=127.0.0.1:7320"
learners="4=127.0.0.1:7330,5=127.0.0.1:7340"

run() { # $1: label, $2: learners list ("" for none)
  local label=$1 list=$2
  rm -rf "$work"/d*
  for id in 1 2 3; do
    $quorum node --id $id --cluster-id 9 --listen 127.0.0.1:$((7290 + 10 * id)) --peers "$peers" \
      --learners "$list" --data-dir "$work/d$id" --shards 2 2>"$work/log$id" &
  done
  if [ -n "$list" ]; then
    $quorum node --id 4 --learner --cluster-id 9 --listen 127.0.0.1:7330 --peers "$peers" \
      --learners "$list" --data-dir "$work/d4" --shards 2 2>"$work/log4" &
    $quorum node --id 5 --learner --upstream 4 --cluster-id 9 --listen 127.0.0.1:7340 \
      --peers "$peers" --learners "$list" --data-dir "$work/d5" --shards 2 2>"$work/log5" &
  fi
  sleep 2
  $quorum bench --target 127.0.0.1:7300 --cluster-id 9 --open-loop --rate "$rate" --clients 256 \
    --duration "$seconds" --warmup 2 --no-limits --json > "$work/$label.json"
  if [ -n "$list" ]; then
    for port in 7300 7330 7340; do $quorum status --node 127.0.0.1:$port --cluster-id 9; done \
      > "$work/$label.learners"
  fi
  kill $(jobs -p); wait 2>/dev/null || true
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(f\"$label: {r['ops_per_sec']:.0f} writes/s, p99 {r['p99_us']:.0f} us, leader egress {r['leader_egress_bytes_per_write']:.1f} bytes/write, of which committed runs {r['leader_chosen_bytes_per_write']:.2f}, {r['commands_per_batch']:.1f} commands/batch\")" "$work/$label.json"
}
run none ""
run learners "$learners"
echo "commit positions at the end, voter 1 then learners 4 and 5:"; cut -d, -f1-3 "$work/learners.learners"
python3 - "$work/none.json" "$work/learners.json" <<'PY'
import json, sys
none, learners = (json.load(open(path)) for path in sys.argv[1:3])
ratio = learners["leader_egress_bytes_per_write"] / none["leader_egress_bytes_per_write"]
print(f"leader egress with 2 learners / without: {ratio:.3f}")
PY
