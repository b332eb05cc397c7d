"""Reports its open file descriptors (number -> target, close-on-exec) and
IRONCAGE_FD to RESULT_FILE."""

import fcntl
import json
import os

fds = {}
for f in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{f}")
    except OSError:  # listdir's own descriptor, closed by now
        continue
    cloexec = bool(fcntl.fcntl(int(f), fcntl.F_GETFD) & fcntl.FD_CLOEXEC)
    fds[f] = [target, cloexec]
out = {"fds": fds, "env_fd": os.environ.get("IRONCAGE_FD")}
tmp = os.environ["RESULT_FILE"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f)
os.rename(tmp, os.environ["RESULT_FILE"])
