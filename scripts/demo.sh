#!/usr/bin/env bash
# The demo: ironcaged supervising the example agents (a raw OpenAI-SDK agent,
# a streaming Anthropic-SDK agent, a shell agent, and Python agents using the
# iron_cage module: LangChain, asyncio, raw SDK) against the local mock
# provider, on the embedded defaults. Shows the supervision, the support bot
# hitting its budget and being refused, and where the money went.
#
#   scripts/demo.sh            # runs ~30 s, then stops everything
#   DEMO_KEEP=1 scripts/demo.sh  # leave it running; stop with Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

command -v cargo >/dev/null 2>&1 || { echo "cargo is required (install a Rust toolchain with rustup)"; exit 1; }
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    say "installing python3-venv"
    apt_install python3-venv
fi

say "building ironcaged, ironctl and the mock provider"
cargo build --locked -q -p ironcaged -p ironctl -p ironcage-mock-provider
BIN="$ROOT/target/debug"
say "building the iron_cage Python module (into $BIN/python, where ironcaged finds it)"
build_cage_module "$BIN/python" debug

VENV="$ROOT/.venv"
ensure_venv "$VENV"

RUN=$(mktemp -d /tmp/ironcage-demo.XXXXXX)
MOCK_PID=""; DAEMON_PID=""
cleanup() {
    [ -n "$DAEMON_PID" ] && kill -TERM "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
    [ -n "$MOCK_PID" ] && kill -TERM "$MOCK_PID" 2>/dev/null && wait "$MOCK_PID" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

say "starting the mock provider (stands in for OpenAI and Anthropic)"
"$BIN/ironcage-mock-provider" --listen 127.0.0.1:0 --addr-file "$RUN/mock.addr" \
    --openai-key sk-demo-real-openai --anthropic-key sk-ant-demo-real --record >/dev/null &
MOCK_PID=$!
for _ in $(seq 1 300); do [ -s "$RUN/mock.addr" ] && break; sleep 0.1; done
MOCK=$(cat "$RUN/mock.addr")
echo "mock provider at $MOCK"

sed -e "s|@RUN@|$RUN|g" -e "s|@MOCK@|$MOCK|g" -e "s|@PYTHON@|$VENV/bin/python|g" \
    -e "s|@EXAMPLES@|$ROOT/examples|g" examples/demo.toml.in > "$RUN/ironcaged.toml"

say "starting ironcaged (config: $RUN/ironcaged.toml)"
# The real provider keys live only in the daemon's environment.
DEMO_OPENAI_KEY=sk-demo-real-openai DEMO_ANTHROPIC_KEY=sk-ant-demo-real \
    "$BIN/ironcaged" --config "$RUN/ironcaged.toml" 2>"$RUN/ironcaged.log" &
DAEMON_PID=$!
export IRONCAGE_SOCKET="$RUN/ironcaged.sock"
CTL="$BIN/ironctl"
for _ in $(seq 1 300); do "$CTL" daemon ping >/dev/null 2>&1 && break; sleep 0.1; done

"$CTL" daemon status
say "ironctl agents list"
sleep 2
"$CTL" agents list

say "waiting for support-bot to spend its \$0.0006 daily budget"
for _ in $(seq 1 600); do
    "$CTL" agents logs support-bot -n 50 | grep -q "refused (402)" && break
    sleep 0.1
done
"$CTL" agents logs support-bot -n 4

say "ironctl budget show"
"$CTL" budget show
say "ironctl costs --by agent"
"$CTL" costs --by agent
say "ironctl costs --by tag"
"$CTL" costs --by tag
say "ironctl costs --by model"
"$CTL" costs --by model

say "the agents never saw a real key: support-bot's OPENAI_API_KEY is a virtual one"
tr '\0' '\n' < "/proc/$("$CTL" --json agents status support-bot | "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["pid"])')/environ" \
    | grep -E '^OPENAI_(API_KEY|BASE_URL)=' | sed -E 's/(ic-vk-.{6}).*/\1.../'

say "an outage: the mock provider now fails every gpt-4o call with HTTP 500"
"$VENV/bin/python" - "$MOCK" <<'PY'
import json, sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/_mock/faults", method="POST",
                             data=json.dumps({"model": "gpt-4o", "status": 500}).encode(),
                             headers={"content-type": "application/json"})
urllib.request.urlopen(req, timeout=10).read()
PY
for _ in $(seq 1 600); do
    "$CTL" --json circuits list | grep -q '"state": "open"' && break
    sleep 0.1
done
say "ironctl circuits list: gpt-4o's circuit is open"
"$CTL" circuits list
sleep 2
say "the summarizer keeps working: the gateway falls back to gpt-4o-mini"
"$CTL" agents logs summarizer -n 4

say "Python agents with the iron_cage module: LangChain, asyncio workers, a raw-SDK agent"
"$CTL" agents logs langchain-researcher -n 2
"$CTL" agents logs async-workers -n 3
"$CTL" agents logs triage -n 2
say "ironctl costs --by tag: iron_cage.tag() billed their calls per task (worker-N, research, ...)"
"$CTL" costs --by tag
say "ironctl costs --by model: tool/kb-lookup is the triage agent's iron_cage.report_cost()"
"$CTL" costs --by model

say "ironctl agents kill heartbeat (restart=always, but an operator kill is a stop)"
"$CTL" agents kill heartbeat
"$CTL" agents list

say "PII: crm-bot pasted a customer's email and phone into its prompt; what the provider received:"
for _ in $(seq 1 300); do
    "$CTL" agents logs crm-bot -n 5 | grep -q "draft ready" && break
    sleep 0.1
done
"$VENV/bin/python" - "$MOCK" <<'PY'
import json, sys, urllib.request
reqs = json.load(urllib.request.urlopen(sys.argv[1] + "/_mock/requests", timeout=10))
sent = [r for r in reqs if "refund for order" in json.dumps(r["body"])]
print("agent wrote:        Draft a reply to Dana Whitfield (dana.whitfield@example.com, +1 415-555-2671) about the refund for order 88123.")
print("provider received: ", sent[-1]["body"]["messages"][0]["content"] if sent else "(no call recorded yet)")
PY

say "ironctl pii scan: finds personal data and keys in a file (values masked), no daemon needed"
"$CTL" pii scan examples/customer-note.txt || true

if [ -n "${DEMO_KEEP:-}" ]; then
    say "running; try: IRONCAGE_SOCKET=$IRONCAGE_SOCKET $CTL agents list   (Ctrl-C to stop)"
    wait "$DAEMON_PID"
else
    say "stopping the daemon (SIGTERM): every agent is stopped gracefully"
    kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID"; DAEMON_PID=""
    tail -n 3 "$RUN/ironcaged.log" | sed -E 's/\x1b\[[0-9;]*m//g'
fi
say "demo done"
