#!/usr/bin/env bash
# Every check a change must pass before it lands, read-only: formatting, lints, docs, tests.
# CI runs the test command alone (see README); run this before you commit.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --all-targets --workspace -- -D warnings
# The library alone, as a database embeds it: without the binary's and the load generator's crates.
cargo clippy --release --no-default-features --lib -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
cargo test --release --all-targets
