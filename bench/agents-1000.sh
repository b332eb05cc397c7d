#!/usr/bin/env bash
# Benchmark: ironcaged supervising 1,000 plain agents (`sleep 100000`).
#
# Reports the daemon's memory (VmRSS / VmHWM from /proc/PID/status) once every
# agent runs, and the wall time of `ironctl --json agents list` (median and max
# of RUNS runs; hyperfine when installed, a bash loop otherwise). Then stops the
# daemon with SIGTERM and checks that no agent process survived it.
#
# Targets (design brief): RSS <= 64 MiB, list <= 50 ms.
#
# Usage: bench/agents-1000.sh
# Environment:
#   BIN_DIR   directory holding ironcaged and ironctl (default: build them in
#             release mode with cargo, into $CARGO_TARGET_DIR or ./target)
#   AGENTS    number of agents (default 1000)
#   RUNS      timed runs of the list command (default 20)
#   KEEP=1    keep the temporary directory (config, state, logs)
#   NO_HYPERFINE=1  time with the bash loop even if hyperfine is installed
# Exit status: 0 when the run completed and no agent survived (targets missed
# are reported, not fatal); 1 on any failure.
set -euo pipefail

AGENTS=${AGENTS:-1000}
RUNS=${RUNS:-20}
RSS_TARGET_KIB=$((64 * 1024))
LIST_TARGET_MS=50
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

log() { printf '%s\n' "$*" >&2; }
die() { log "agents-1000: $*"; exit 1; }

if [[ -z "${BIN_DIR:-}" ]]; then
    log "building release binaries (set BIN_DIR to skip)..."
    (cd "$ROOT" && cargo build --release --quiet -p ironcaged -p ironctl)
    BIN_DIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi
IRONCAGED=$BIN_DIR/ironcaged
IRONCTL=$BIN_DIR/ironctl
[[ -x $IRONCAGED && -x $IRONCTL ]] || die "no ironcaged/ironctl in $BIN_DIR"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/ironcage-bench-agents.XXXXXX")
SOCK=$WORK/run/ironcaged.sock
CONFIG=$WORK/ironcaged.toml
DAEMON_PID=
# Every agent carries this variable, so its processes can be found in /proc
# even if the daemon loses track of them.
MARK="IRONCAGE_BENCH_RUN=$WORK"

cleanup() {
    if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
        kill -TERM "$DAEMON_PID" 2>/dev/null || true
        wait "$DAEMON_PID" 2>/dev/null || true
    fi
    if [[ ${KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

now_ns() { date +%s%N; }
ms_since() { echo $(( ($(now_ns) - $1) / 1000000 )); }
ctl() { "$IRONCTL" --socket "$SOCK" "$@"; }

# Pids of live processes whose environment carries $MARK (a zombie's environ
# reads as empty, so zombies do not count).
survivors() {
    { grep -lazxF "$MARK" /proc/[0-9]*/environ 2> /dev/null || true; } | awk -F/ '{print $3}'
}

status_kib() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

# --- config -----------------------------------------------------------------
{
    for ((i = 0; i < AGENTS; i++)); do
        printf '[[agent]]\nname = "agent-%04d"\ncommand = ["sleep", "100000"]\nenv = { IRONCAGE_BENCH_RUN = "%s" }\nstop_grace_secs = 5\n\n' "$i" "$WORK"
    done
} > "$CONFIG"
"$IRONCAGED" --check-config --config "$CONFIG" > /dev/null

# --- start ------------------------------------------------------------------
log "starting ironcaged with $AGENTS agents in $WORK"
t0=$(now_ns)
RUST_LOG=${RUST_LOG:-warn} "$IRONCAGED" --config "$CONFIG" --socket "$SOCK" \
    --state-dir "$WORK/state" --log-format text 2> "$WORK/ironcaged.stderr" &
DAEMON_PID=$!

deadline=$((SECONDS + 120))
until ctl daemon ping > /dev/null 2>&1; do
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/ironcaged.stderr" >&2; die "ironcaged exited during start"; }
    ((SECONDS < deadline)) || die "ironcaged did not answer within 120 s"
    sleep 0.05
done
ping_ms=$(ms_since "$t0")

running=0
until ((running == AGENTS)); do
    running=$(ctl --json daemon status | awk -F': *' '/"agents_running"/ {gsub(/[ ,]/, "", $2); print $2}')
    ((SECONDS < deadline)) || die "only $running of $AGENTS agents running after 120 s"
    ((running == AGENTS)) || sleep 0.1
done
all_running_ms=$(ms_since "$t0")
list_running=$(ctl --json agents list | grep -c '"state": "running"')
((list_running == AGENTS)) || die "agents list shows $list_running running, expected $AGENTS"

# Let the start-up burst settle so RSS reflects the steady state (HWM keeps the peak).
sleep 2
rss=$(status_kib "$DAEMON_PID" VmRSS)
hwm=$(status_kib "$DAEMON_PID" VmHWM)
anon=$(status_kib "$DAEMON_PID" RssAnon)
threads=$(status_kib "$DAEMON_PID" Threads)
fds=$(find "/proc/$DAEMON_PID/fd" -mindepth 1 -maxdepth 1 | wc -l)
json_bytes=$(ctl --json agents list | wc -c)

# --- list timing ------------------------------------------------------------
LIST_CMD=("$IRONCTL" --socket "$SOCK" --json agents list)
ctl --json agents list > /dev/null # warm up
if [[ ${NO_HYPERFINE:-0} != 1 ]] && command -v hyperfine > /dev/null && command -v jq > /dev/null; then
    tool=hyperfine
    hyperfine --shell=none --warmup 3 --runs "$RUNS" --output=pipe \
        --export-json "$WORK/hyperfine.json" "${LIST_CMD[*]}" > "$WORK/hyperfine.txt"
    median_ms=$(jq '.results[0].median * 1000 | . * 10 | round / 10' "$WORK/hyperfine.json")
    max_ms=$(jq '.results[0].max * 1000 | . * 10 | round / 10' "$WORK/hyperfine.json")
    mean_ms=$(jq '.results[0].mean * 1000 | . * 10 | round / 10' "$WORK/hyperfine.json")
else
    tool="bash loop"
    times=()
    for ((r = 0; r < RUNS; r++)); do
        s=$(now_ns)
        "${LIST_CMD[@]}" > /dev/null
        times+=($(( ($(now_ns) - s) / 1000 )))
    done
    mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
    n=${#sorted[@]}
    if ((n % 2)); then med_us=${sorted[n / 2]}; else med_us=$(( (sorted[n / 2 - 1] + sorted[n / 2]) / 2 )); fi
    median_ms=$(awk -v u="$med_us" 'BEGIN {printf "%.1f", u / 1000}')
    max_ms=$(awk -v u="${sorted[n - 1]}" 'BEGIN {printf "%.1f", u / 1000}')
    mean_ms=$(printf '%s\n' "${times[@]}" | awk '{s += $1} END {printf "%.1f", s / NR / 1000}')
fi
rss_after=$(status_kib "$DAEMON_PID" VmRSS)

# --- stop -------------------------------------------------------------------
mapfile -t agent_pids < <(ctl --json agents list | awk -F': *' '/"pid"/ {gsub(/[ ,]/, "", $2); print $2}')
before=$(survivors | wc -l)
t1=$(now_ns)
kill -TERM "$DAEMON_PID"
set +e
wait "$DAEMON_PID"
daemon_status=$?
set -e
DAEMON_PID=
stop_ms=$(ms_since "$t1")
alive=0
for p in "${agent_pids[@]}"; do
    [[ $p == null ]] && continue
    if [[ -e /proc/$p && $(awk '{print $3}' "/proc/$p/stat" 2>/dev/null) != Z ]]; then
        alive=$((alive + 1))
    fi
done
left=$(survivors | wc -l)

# --- report -----------------------------------------------------------------
verdict() { if awk -v a="$1" -v b="$2" 'BEGIN {exit !(a <= b)}'; then echo "ok"; else echo "MISSED"; fi; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
cat <<EOF

ironcaged with $AGENTS agents ($(nproc) cores, $(uname -r))
  start: socket answers after ${ping_ms} ms, all $AGENTS running after ${all_running_ms} ms
  daemon VmRSS          $(mib "$rss") MiB (RssAnon $(mib "$anon") MiB)   target <= 64 MiB: $(verdict "$rss" "$RSS_TARGET_KIB")
  daemon VmHWM (peak)   $(mib "$hwm") MiB
  daemon VmRSS after the list runs  $(mib "$rss_after") MiB
  daemon threads $threads, open fds $fds
  ironctl --json agents list ($tool, $RUNS runs, $json_bytes bytes of JSON):
    median ${median_ms} ms, mean ${mean_ms} ms, max ${max_ms} ms   target <= ${LIST_TARGET_MS} ms: $(verdict "$median_ms" "$LIST_TARGET_MS")
  SIGTERM -> exit status $daemon_status after ${stop_ms} ms
  agent processes before stop: $before; listed pids alive after: $alive; marked processes alive after: $left
EOF

((daemon_status == 0)) || die "ironcaged exited with status $daemon_status"
((alive == 0 && left == 0)) || die "agent processes survived the daemon: $(survivors | tr '\n' ' ')"
((before >= AGENTS)) || die "expected at least $AGENTS agent processes before the stop, found $before"
