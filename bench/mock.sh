# Sourced by the gateway benchmark scripts: starts the mock provider the way
# they all measure it, one worker thread (on a 2-core machine it is then
# cheaper per request, with no cross-thread wake-ups), and sets MOCK_PID and
# MOCK (its base URL). Needs BIN (the release binaries) and RUN (a scratch
# directory); the caller's EXIT trap kills MOCK_PID.
start_mock() {
    "$BIN/ironcage-mock-provider" --listen 127.0.0.1:0 --addr-file "$RUN/mock.addr" \
        --openai-key sk-bench-real --threads 1 >/dev/null &
    MOCK_PID=$!
    for _ in $(seq 1 300); do [ -s "$RUN/mock.addr" ] && break; sleep 0.1; done
    [ -s "$RUN/mock.addr" ] || { echo "the mock provider did not start"; exit 1; }
    MOCK=$(cat "$RUN/mock.addr")
}
