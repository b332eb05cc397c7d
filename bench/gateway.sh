#!/usr/bin/env bash
# Gateway overhead benchmark: the same open-loop load sent straight to the mock
# provider and through ironcaged's gateway, in one run (gateway-bench --direct).
#
# The load generator runs *as a supervised agent*, so it holds a real per-agent
# virtual key and every request takes the full policy path: key lookup,
# budget reservation and settlement (the agent has a budget), JSON parse,
# upstream with the real key injected, usage extraction and pricing.
#
# It runs once per PII mode (PII_MODES, default "off default scan redact"), so the
# cost of the PII policy on the request path shows as the difference:
#   off      [pii] prompt = {}: no scan at all
#   default  the built-in policy (secrets block): every 4 KiB prompt scanned
#            for secrets, nothing to rewrite (the prompts hold emails, phones,
#            IPs, no keys)
#   scan     secrets block, everything else logged: every prompt scanned for
#            every kind (the findings logged at info), nothing rewritten
#   redact   emails and phones redacted, everything else logged: every prompt
#            scanned, rewritten and re-encoded
#
# Each side is measured for DURATION seconds in ROUNDS alternating phases
# (direct, gateway, direct, ..., gateway, direct), each with WARMUP unmeasured
# seconds first: on a shared VM the noise comes and goes over seconds, and
# short alternating phases give both sides the same share of it. ROUNDS=1 is
# one long phase each (direct, gateway, direct).
#
# The daemon's state (the redb ledger it fsyncs) lives under STATE_PARENT,
# default /tmp: a real disk here. STATE_PARENT=/dev/shm shows the run without
# the fsyncs' cost.
#
#   bench/gateway.sh                  # 2,000 req/s for 20 s per side, 4 KiB prompts
#   RATE=5000 DURATION=20 bench/gateway.sh
#   PII_MODES=redact ROUNDS=1 bench/gateway.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-0.5}
STATE_PARENT=${STATE_PARENT:-/tmp}
PROMPT_BYTES=${PROMPT_BYTES:-4096}
PII_MODES=${PII_MODES:-off default scan redact}

cargo build --release --locked -q -p ironcaged -p ironctl -p ironcage-mock-provider -p ironcage-bench
BIN="$PWD/target/release"
# DAEMON=path/to/another/ironcaged compares builds on the same machine state.
DAEMON=${DAEMON:-$BIN/ironcaged}
RUN=$(mktemp -d "$STATE_PARENT/ironcage-gwbench.XXXXXX")
MOCK_PID=""; DAEMON_PID=""
cleanup() {
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
    [ -n "$MOCK_PID" ] && kill "$MOCK_PID" 2>/dev/null && wait "$MOCK_PID" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

# shellcheck source=bench/mock.sh
. bench/mock.sh
start_mock

# The daemon's CPU by thread over the whole run (warm-ups and both sides'
# phases included, so read it as shares, not per-call figures): which of its
# threads the calls cost, the gateway workers or the ledger's writer, say.
threads_cpu() {
    local pid=$1 hz
    hz=$(getconf CLK_TCK)
    echo "ironcaged CPU by thread (ms, user+system):"
    for t in /proc/"$pid"/task/*; do
        local comm stat
        comm=$(cat "$t/comm" 2>/dev/null) || continue
        stat=$(cat "$t/stat" 2>/dev/null) || continue
        # Fields after the ") " that ends comm: utime is the 12th, stime the 13th.
        set -- ${stat##*) }
        echo "$comm $(( (${12} + ${13}) * 1000 / hz ))"
    done | awk '{ms[$1] += $2} END {for (c in ms) if (ms[c] > 0) printf "  %-22s %8d\n", c, ms[c]}' | sort -k2 -nr
}

run_mode() {
    local mode=$1 pii_global="" pii_agent=""
    case "$mode" in
        off) pii_global='[pii]
prompt = {}' ;;
        default) ;;
        scan) pii_agent='[agent.pii]
prompt = { secrets = "block", default = "log" }' ;;
        redact) pii_agent='[agent.pii]
prompt = { email = "redact", phone = "redact", secrets = "block", default = "log" }' ;;
        *) echo "unknown PII mode $mode (off, default, scan, redact)"; exit 2 ;;
    esac
    rm -rf "$RUN/state" "$RUN/report.txt" "$RUN/report.part"
    cat > "$RUN/ironcaged.toml" <<TOML
[daemon]
socket = "$RUN/ironcaged.sock"
state_dir = "$RUN/state"

$pii_global

[[provider]]
name = "openai"
kind = "openai"
base_url = "$MOCK/v1"
api_key_env = "BENCH_OPENAI_KEY"

[[agent]]
name = "bench"
restart = "never"
budget_usd = 100000.0
budget_period = "day"
# \$PPID is ironcaged itself: its CPU per request is reported.
command = ["sh", "-c", "$BIN/gateway-bench --target \"\$OPENAI_BASE_URL\" --api-key \"\$OPENAI_API_KEY\" --direct $MOCK --direct-api-key sk-bench-real --rate $RATE --duration-secs $DURATION --rounds $ROUNDS --warmup-secs $WARMUP --connections 32 --prompt-bytes $PROMPT_BYTES --model gpt-4o-mini --target-pid \$PPID --direct-pid $MOCK_PID > $RUN/report.part 2>&1; mv $RUN/report.part $RUN/report.txt"]

$pii_agent
TOML

    BENCH_OPENAI_KEY=sk-bench-real RUST_LOG=warn "$DAEMON" --config "$RUN/ironcaged.toml" 2>"$RUN/ironcaged.log" &
    DAEMON_PID=$!
    export IRONCAGE_SOCKET="$RUN/ironcaged.sock"
    for _ in $(seq 1 300); do "$BIN/ironctl" daemon ping >/dev/null 2>&1 && break; sleep 0.1; done
    echo "=== PII mode: $mode ==="
    echo "running: ${RATE} req/s for ${DURATION}s per side in ${ROUNDS} alternating rounds, ${PROMPT_BYTES}-byte prompts..."
    # Wait for the report without touching the daemon: polling `ironctl`
    # here would fork, exec and open a control connection ten times a second
    # on the machine being measured.
    for _ in $(seq 1 $(( 3 * DURATION + 2 * (ROUNDS + 1) + 60 ))); do
        [ -e "$RUN/report.txt" ] && break
        sleep 1
    done
    [ -e "$RUN/report.txt" ] || { echo "gateway-bench did not finish; partial output:"; cat "$RUN/report.part" 2>/dev/null; exit 1; }
    cat "$RUN/report.txt"
    echo
    "$BIN/ironctl" budget show bench
    threads_cpu "$DAEMON_PID"
    kill "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true; DAEMON_PID=""
    echo
}

for mode in $PII_MODES; do
    run_mode "$mode"
done
