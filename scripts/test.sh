#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian/Ubuntu
# machine, then runs every test: Rust unit and end-to-end tests, the Python SDK
# tests through the real gateway, and the systemd unit checks.
#
#   scripts/test.sh            # everything
#   SKIP_LINT=1 scripts/test.sh  # skip cargo fmt/clippy
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step() { printf '\n==> %s\n' "$*"; }

# --- system packages ---------------------------------------------------------
need_pkgs=()
command -v systemd-analyze >/dev/null 2>&1 || need_pkgs+=(systemd)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
# The secrets rotation e2e test calls the gateway from a shell agent with curl.
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    step "installing Debian packages: ${need_pkgs[*]}"
    apt_install "${need_pkgs[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo is required (install a Rust toolchain with rustup)"; exit 1; }

# --- Python venv for the SDK tests -------------------------------------------
VENV="$ROOT/.venv"
ensure_venv "$VENV"

# --- Rust ----------------------------------------------------------------------
if [ -z "${SKIP_LINT:-}" ]; then
    step "cargo fmt --check"
    cargo fmt --all -- --check
    step "cargo clippy"
    cargo clippy --workspace --all-targets --locked -- -D warnings
fi
step "cargo build (workspace binaries)"
cargo build --workspace --locked --bins
step "the iron_cage Python module (into target/debug/python, where ironcaged finds it)"
build_cage_module "$ROOT/target/debug/python" debug
step "cargo test"
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-4}"

# --- Python SDK tests through the gateway --------------------------------------
step "pytest (real openai/anthropic SDKs and LangChain through ironcaged's gateway; the iron_cage module)"
IRONCAGE_BIN_DIR="$ROOT/target/debug" "$VENV/bin/python" -m pytest -q tests/python

# --- systemd units and install layout -----------------------------------------
if [ -x tests/systemd/verify.sh ]; then
    step "systemd units and make install"
    # What this script built and tested (a release build may be older).
    BIN_DIR="$ROOT/target/debug" tests/systemd/verify.sh
fi

step "all tests passed"
