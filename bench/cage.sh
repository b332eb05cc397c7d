#!/usr/bin/env bash
# Benchmarks the iron_cage Python module under a real ironcaged: spawn to first
# line of a Python agent vs `python script.py`, and agent-channel round trips
# (budget() p50). See bench/cage/cage_bench.py for what is measured how.
#
#   bench/cage.sh                   # release build (slow to build, the real figures)
#   PROFILE=debug bench/cage.sh     # the debug build scripts/test.sh made
#   RUNS=100 PYTHON=/path/to/python bench/cage.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
PROFILE=${PROFILE:-release}
flag=""; [ "$PROFILE" = release ] && flag="--release"
cargo build --locked -q $flag -p ironcaged
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE
build_cage_module "$TARGET/python" "$PROFILE"
PY=${PYTHON:-python3}
"$PY" bench/cage/cage_bench.py "$TARGET" "$(command -v "$PY")" "${RUNS:-40}"
