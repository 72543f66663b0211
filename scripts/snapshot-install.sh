#!/usr/bin/env bash
# A voter that was down while the others wrote a large state comes back and installs their
# snapshot (sent in pieces). Nodes 1 and 2 of three run `quorum bench --target` for 25 s of
# 512-byte values on 200,000 keys (about 107 MB of state) with snapshots every 64 MiB of WAL;
# then node 3 starts with an empty log, and this prints how long until it reports the
# snapshot's slot committed. Temporary data is removed at the end.
#   scripts/snapshot-install.sh [extra node flags, e.g. --snapshot-piece-kib 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
q=target/release/quorum
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
peers="1=127.0.0.1:7500,2=127.0.0.1:7510,3=127.0.0.1:7520"
node() {
  $q node --id "$1" --cluster-id 12 --listen "127.0.0.1:$((7490 + 10 * $1))" --peers "$peers" \
    --data-dir "$work/d$1" --shards 1 --snapshot-every-mib 64 "${@:2}" 2>"$work/log$1" &
}
node 1 "$@"
node 2 "$@"
sleep 2
$q bench --target 127.0.0.1:7500 --cluster-id 12 --duration 25 --warmup 0 --keys 200000 \
  --payload-bytes 512 --clients 256 --no-limits 2>&1 | tail -2
slot=$($q snapshot --node 127.0.0.1:7500 --cluster-id 12 | sed -n 's/.*at slot \([0-9]*\).*/\1/p')
start=$(date +%s%N)
node 3 "$@"
while :; do
  commit=$($q status --node 127.0.0.1:7520 --cluster-id 12 2>/dev/null \
    | sed -n 's/.*commit index \([0-9]*\).*/\1/p' || true)
  if [ -n "$commit" ] && [ "$commit" -ge "$slot" ]; then break; fi
  sleep 0.1 # (each status computes the state's digest: 107 MB hashed)
done
echo "node 3 reached slot $commit (node 1's snapshot at $slot) $(( ($(date +%s%N) - start) / 1000000 )) ms after it was started"
$q status --node 127.0.0.1:7520 --cluster-id 12
