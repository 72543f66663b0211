#!/usr/bin/env bash
# `quorum bench --target` against three `quorum node` processes on loopback (1 shard each,
# fsync on, temporary data removed at the end), as README's "A cluster by hand" starts them.
# Every argument goes to `quorum bench`; NODE_FLAGS adds flags to each node.
#   scripts/bench-processes.sh --payload-bytes 4096 --keys 1000 --clients 64,128,256
#   NODE_FLAGS="--retain-slots 1000" scripts/bench-processes.sh --duration 30
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
quorum=target/release/quorum
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
peers="1=127.0.0.1:7500,2=127.0.0.1:7510,3=127.0.0.1:7520"
for id in 1 2 3; do
  # shellcheck disable=SC2086 # NODE_FLAGS is a list of flags.
  $quorum node --id $id --cluster-id 12 --listen 127.0.0.1:$((7490 + 10 * id)) --peers "$peers" \
    --data-dir "$work/d$id" --shards 1 ${NODE_FLAGS:-} 2>"$work/log$id" &
done
sleep 2
$quorum bench --target 127.0.0.1:7500 --cluster-id 12 "$@"
