#!/usr/bin/env bash
# Measures a node's resident memory as a million distinct clients (each one session and one
# write) come and go: with the small session limits of tests/sessions.rs (asserted flat within
# 10 % after the first 100,000), then with the node's default limits (reported). The numbers
# go in docs/operations.md, "Client sessions".
#   scripts/sessions-rss.sh [CLIENTS]      (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
clients=${1:-1000000}
echo "== small limits (--sessions-max 10000 --session-idle-commands-min 20000 --sessions-evicted-max 50000)"
QUORUM_SESSION_CLIENTS=$clients cargo test --release --test sessions -- --nocapture 2>&1 \
    | grep -E "^clients|clients in|test result"
echo "== default limits"
QUORUM_SESSION_DEFAULTS=1 QUORUM_SESSION_CLIENTS=$clients cargo test --release --test sessions -- --nocapture 2>&1 \
    | grep -E "^clients|clients in|test result"
