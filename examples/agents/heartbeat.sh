#!/bin/sh
# A plain, non-Python agent: supervised the same way (process group, clean
# environment, captured output, restart policy).
n=0
while true; do
    n=$((n + 1))
    echo "heartbeat $n from $IRONCAGE_AGENT (pid $$)"
    sleep 2
done
