#!/usr/bin/env bash
# The floor under any gateway's overhead on this machine: the same load as
# bench/gateway.sh sent straight to the mock provider and through nginx as a
# plain keep-alive reverse proxy (no policy, no parsing of the body, no
# budget), alternating in one run.
#
# Whatever overhead nginx shows is what one more loopback hop costs here
# (two more socket wake-ups per call, a second process to schedule on the
# same cores), not anything a gateway does; read ironcaged's overhead from
# bench/gateway.sh next to it, run right after, since on a shared VM the
# hypervisor's steal time moves both from minute to minute.
#
# Needs nginx (Debian: apt-get install nginx-light); nothing is installed or
# left running.
#
#   bench/proxy-floor.sh                       # 2,000 req/s, 10 rounds of 2 s a side
#   WORKERS=1 RATE=1000 bench/proxy-floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-2000}
DURATION=${DURATION:-20}
ROUNDS=${ROUNDS:-10}
WARMUP=${WARMUP:-0.5}
PROMPT_BYTES=${PROMPT_BYTES:-4096}
# Two workers, as ironcaged runs one gateway worker per core here.
WORKERS=${WORKERS:-2}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
[ -x "$NGINX" ] || { echo "nginx not found (apt-get install nginx-light, or NGINX=/path/to/nginx)"; exit 2; }

cargo build --release --locked -q -p ironcage-mock-provider -p ironcage-bench
BIN="$PWD/target/release"
RUN=$(mktemp -d /tmp/ironcage-floor.XXXXXX)
MOCK_PID=""
cleanup() {
    [ -s "$RUN/nginx.pid" ] && kill "$(cat "$RUN/nginx.pid")" 2>/dev/null || true
    [ -n "$MOCK_PID" ] && kill "$MOCK_PID" 2>/dev/null && wait "$MOCK_PID" 2>/dev/null || true
    rm -rf "$RUN"
}
trap cleanup EXIT

# shellcheck source=bench/mock.sh
. bench/mock.sh
start_mock
# nginx cannot listen on port 0: take a free port from the kernel.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

cat > "$RUN/nginx.conf" <<CONF
worker_processes $WORKERS;
pid $RUN/nginx.pid;
error_log $RUN/error.log warn;
daemon on;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $RUN/body;
    proxy_temp_path $RUN/proxy;
    client_body_buffer_size 64k;
    upstream mock {
        server ${MOCK#http://};
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$PORT;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The real key, as a gateway would inject it.
            proxy_set_header Authorization "Bearer sk-bench-real";
        }
    }
}
CONF
"$NGINX" -c "$RUN/nginx.conf" -p "$RUN" 2>"$RUN/nginx.err" || { cat "$RUN/nginx.err"; exit 1; }
for _ in $(seq 1 100); do [ -s "$RUN/nginx.pid" ] && break; sleep 0.1; done

echo "=== nginx $WORKERS worker(s), plain reverse proxy ==="
echo "running: ${RATE} req/s for ${DURATION}s per side in ${ROUNDS} alternating rounds, ${PROMPT_BYTES}-byte prompts..."
"$BIN/gateway-bench" --target "http://127.0.0.1:$PORT" --api-key sk-unused \
    --direct "$MOCK" --direct-api-key sk-bench-real --rate "$RATE" \
    --duration-secs "$DURATION" --rounds "$ROUNDS" --warmup-secs "$WARMUP" \
    --connections 32 --prompt-bytes "$PROMPT_BYTES" --model gpt-4o-mini \
    --direct-pid "$MOCK_PID"
# gateway-bench reads one process's CPU; nginx serves from its workers.
hz=$(getconf CLK_TCK)
calls=$(python3 -c "print(round($ROUNDS * ($DURATION / $ROUNDS + $WARMUP) * $RATE))")
ms=0
for w in $(pgrep -P "$(cat "$RUN/nginx.pid")"); do
    set -- $(cut -d')' -f2- "/proc/$w/stat")
    ms=$(( ms + (${12} + ${13}) * 1000 / hz ))
done
echo "nginx workers' CPU: $ms ms for $calls calls through them (warm-ups included): $(( ms * 1000 / calls )) µs per call"
