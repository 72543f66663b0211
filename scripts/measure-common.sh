# Sourced by the measuring scripts: builds Quorum, sets `quorum`, `rate` and `seconds` from the
# script's arguments ([RATE] [SECONDS], default 20000 and 10), and makes a work directory that
# is removed, with every node the script started, when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-20000}
seconds=${2:-10}
cargo build --release --quiet
quorum=target/release/quorum
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
