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
# The real interpreter, not a wrapper (pyenv's shims are shell scripts that
# would add their own start-up to every figure).
PY=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
"$PY" bench/cage/cage_bench.py "$TARGET" "$PY" "${RUNS:-40}"
