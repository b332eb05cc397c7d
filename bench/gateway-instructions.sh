#!/usr/bin/env bash
# Instructions the gateway executes per call, counted by callgrind: unlike
# latency and CPU time, the count does not move with the host's load (on
# this shared VM the hypervisor's steal time changes those from minute to
# minute), so it is the figure to compare two builds by.
#
# The daemon runs under `valgrind --tool=callgrind --separate-threads=yes`
# with bench/gateway.sh's agent load at a low rate (valgrind is ~50x
# slower), twice: SHORT and LONG measured seconds. The gateway worker
# threads' instructions of the short run are subtracted from the long run's,
# which cancels start-up and warm-up, and divided by the extra calls. Only
# user-space instructions are counted (not the kernel's socket work), and
# the ledger writer's thread is left out: its commits batch differently at
# this rate than under load.
#
#   bench/gateway-instructions.sh                      # the built release daemon
#   DAEMON=/path/to/other/ironcaged bench/gateway-instructions.sh
#   PII_MODE=off bench/gateway-instructions.sh         # off, default, scan or redact
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-100}
SHORT=${SHORT:-4}
LONG=${LONG:-14}
PII_MODE=${PII_MODE:-default}
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)"; exit 2; }
cargo build --release --locked -q -p ironcaged -p ironctl -p ironcage-mock-provider -p ironcage-bench
DAEMON=${DAEMON:-$PWD/target/release/ironcaged}
OUT=$(mktemp -d /tmp/ironcage-gwinstr.XXXXXX)
trap 'rm -rf "$OUT"' EXIT
cat > "$OUT/daemon.sh" <<SH
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes --dump-instr=no \
    --callgrind-out-file="\$IRONCAGE_CG_DIR/cg.%p.out" "$DAEMON" "\$@"
SH
chmod +x "$OUT/daemon.sh"

# Inclusive instructions of the gateway worker threads (the threads whose
# profile has proxy::handle): total, then a few parts of the call.
count() {
    python3 - "$1" <<'PY'
import glob, re, subprocess, sys
parts = {
    "PII scans": "Scanner::scan_into",
    "PII rewrites": "gateway::pii::apply_text",
    "request JSON parse": "serde_json::de::from_trait",
    "re-encoding the request": "serde_json::ser::to_vec",
    "input token bound": "tokens::upper_bound_request_input",
    "usage from the answer": "gateway::usage::extract",
    "upstream client": "Client<C,B>::send_request::{{closure}}",
    "budget reserve": "budget::core::Core::reserve",
    "budget settle": "budget::core::Core::settle",
}
total = 0
sums = dict.fromkeys(parts, 0)
for f in glob.glob(sys.argv[1] + "/cg.*.out*"):
    text = open(f, errors="replace").read()
    if "gateway::proxy::handle" not in text:
        continue
    total += int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", f],
                         capture_output=True, text=True).stdout
    for name, sym in parts.items():
        best = 0
        for line in ann.splitlines():
            m = re.match(r"\s*([\d,]+) \(", line)
            if m and sym in line and "=>" not in line:
                best = max(best, int(m.group(1).replace(",", "")))
        sums[name] += best
print(total, *(sums[p] for p in parts))
print("|".join(parts))
PY
}

run() {
    local secs=$1 dir="$OUT/$1"
    mkdir -p "$dir"
    IRONCAGE_CG_DIR="$dir" DAEMON="$OUT/daemon.sh" ROUNDS=1 WARMUP=1 RATE=$RATE DURATION=$secs \
        PII_MODES=$PII_MODE STATE_PARENT=/dev/shm bench/gateway.sh > "$dir/run.txt" 2>&1 \
        || { cat "$dir/run.txt"; exit 1; }
    count "$dir"
}

echo "counting the gateway's instructions per call (PII $PII_MODE, $RATE calls/s, ${SHORT}s and ${LONG}s runs under callgrind)..."
short=$(run "$SHORT" | head -1)
both=$(run "$LONG")
long=$(echo "$both" | head -1)
names=$(echo "$both" | tail -1)
calls=$(( (LONG - SHORT) * RATE ))
python3 - "$short" "$long" "$names" "$calls" <<'PY'
import sys
short = list(map(int, sys.argv[1].split()))
long = list(map(int, sys.argv[2].split()))
names = sys.argv[3].split("|")
calls = int(sys.argv[4])
per = [(l - s) / calls for s, l in zip(short, long)]
print(f"gateway worker threads: {per[0] / 1000:.1f}k instructions per call (user space)")
for name, p in zip(names, per[1:]):
    print(f"  {name:<24} {p / 1000:7.1f}k  ({100 * p / per[0]:4.1f}%)")
PY
