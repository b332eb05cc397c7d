"""Hangs the way real agents do: stuck in native code that holds the GIL (a
catastrophically backtracking regex), so the heartbeat thread cannot run.
Appends its pid to $STARTS first."""

import os
import re

with open(os.environ["STARTS"], "a") as f:
    f.write(f"{os.getpid()}\n")
re.match(r"(a+)+$", "a" * 64 + "!")
