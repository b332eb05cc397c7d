"""Benchmarks of the iron_cage module under a real ironcaged (run by bench/cage.sh).

1. Spawn to first line: the time from asking for a start to the agent's first
   statement running, for
     - `python script.py` started directly (the baseline),
     - the same as a plain `command` agent of ironcaged,
     - a Python agent (`python = ..., script = ...`: bootstrap, iron_cage
       import, channel Hello, then the script).
   The daemon is asked with a raw StartAgent on the control socket (no
   ironctl process in the measurement); the script's first statement writes
   CLOCK_MONOTONIC, which is system-wide, so both ends read the same clock.
2. Round trips over the agent channel, measured inside a Python agent:
   `iron_cage.budget()` (channel + budget ledger), `iron_cage.heartbeat()`
   (channel only) and `await iron_cage.abudget()`.

Usage: cage_bench.py BIN_DIR PYTHON [RUNS]
"""

import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.argv[1]).resolve()
PYTHON = sys.argv[2]
RUNS = int(sys.argv[3]) if len(sys.argv) > 3 else 40
HERE = Path(__file__).resolve().parent

FIRST_LINE = """import time, os
t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
with open(os.environ["STAMP"], "w") as f:
    f.write(str(t))
"""

ROUND_TRIPS = r"""
import asyncio, json, os, time
import iron_cage

N = int(os.environ["N"])


def timed(f, n):
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        f()
        out.append(time.perf_counter_ns() - t)
    return out


for _ in range(200):
    iron_cage.budget()
res = {"budget": timed(iron_cage.budget, N), "heartbeat": timed(iron_cage.heartbeat, N)}


async def aloop():
    out = []
    for _ in range(N // 4):
        t = time.perf_counter_ns()
        await iron_cage.abudget()
        out.append(time.perf_counter_ns() - t)
    return out

res["abudget"] = asyncio.run(aloop())
with open(os.environ["OUT"] + ".tmp", "w") as f:
    json.dump(res, f)
os.rename(os.environ["OUT"] + ".tmp", os.environ["OUT"])
"""


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def pstr(s):
    b = s.encode()
    assert len(b) < 128
    return bytes([len(b)]) + b


class Control:
    """The control protocol, by hand: Hello, then StartAgent requests."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(str(path))
        self.s.sendall(frame(bytes([0, 1]) + pstr("cage-bench")))  # Hello{1, "cage-bench"}
        self.read()

    def read(self):
        h = self._exact(4)
        return self._exact(struct.unpack(">I", h)[0])

    def _exact(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise RuntimeError("daemon closed the control connection")
            b += c
        return b

    def start(self, name):
        """True when started; False when refused (still running)."""
        self.s.sendall(frame(bytes([6]) + pstr(name)))  # StartAgent(AgentRef{name})
        return self.read()[0] == 2  # Response::Ok


def wait_file(p, timeout=60):
    deadline = time.monotonic() + timeout
    while not p.exists() or not p.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {p}")
        time.sleep(0.0002)
    return int(p.read_text())


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    tmp = Path(tempfile.mkdtemp(prefix="cage-bench-"))
    script = tmp / "first_line.py"
    script.write_text(FIRST_LINE)
    rt = tmp / "round_trips.py"
    rt.write_text(ROUND_TRIPS)
    stamp = tmp / "stamp"
    cfg = tmp / "c.toml"
    cfg.write_text(f"""
[[agent]]
name = "plain"
command = [{json.dumps(PYTHON)}, "first_line.py"]
working_dir = {json.dumps(str(tmp))}
env = {{ STAMP = {json.dumps(str(stamp))} }}
restart = "never"
autostart = false

[[agent]]
name = "caged"
python = {json.dumps(PYTHON)}
script = "first_line.py"
working_dir = {json.dumps(str(tmp))}
env = {{ STAMP = {json.dumps(str(stamp))} }}
restart = "never"
autostart = false

[[agent]]
name = "roundtrips"
python = {json.dumps(PYTHON)}
script = "round_trips.py"
working_dir = {json.dumps(str(tmp))}
env = {{ OUT = {json.dumps(str(tmp / "rt.json"))}, N = "20000" }}
restart = "never"
budget_usd = 5.0
""")
    sock = tmp / "s.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCAGE_")}
    daemon = subprocess.Popen([str(BIN / "ironcaged"), "--config", str(cfg), "--socket", str(sock),
                               "--state-dir", str(tmp / "state")],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "d.log", "w"), env=env)
    try:
        deadline = time.monotonic() + 60
        while not sock.exists():
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError((tmp / "d.log").read_text())
            time.sleep(0.01)
        ctl = Control(sock)
        times = {"direct": [], "plain": [], "caged": []}
        for _ in range(RUNS):
            for mode in times:
                if stamp.exists():
                    stamp.unlink()
                t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                if mode == "direct":
                    p = subprocess.Popen([PYTHON, "first_line.py"], cwd=tmp, env={"STAMP": str(stamp)})
                    t1 = wait_file(stamp)
                    p.wait()
                else:
                    while not ctl.start(mode):  # the previous run is still exiting
                        time.sleep(0.001)
                        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    t1 = wait_file(stamp)
                times[mode].append((t1 - t0) / 1e6)
        rt_out = tmp / "rt.json"
        deadline = time.monotonic() + 300
        while not rt_out.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("round-trip agent gave no result")
            time.sleep(0.05)
        rts = json.loads(rt_out.read_text())
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)

    ver = subprocess.run([PYTHON, "-c", "import sys; print(sys.version.split()[0])"],
                         capture_output=True, text=True).stdout.strip()
    print(f"Python {ver}; {RUNS} runs of each, interleaved; daemon and module from {BIN}")
    print()
    print("spawn to first line (ms)          p50     p90     min")
    for mode, label in (("direct", "python script.py (direct)"), ("plain", "command agent (python script.py)"),
                        ("caged", "Python agent (iron_cage loaded)")):
        xs = times[mode]
        print(f"  {label:32s} {statistics.median(xs):6.2f}  {pct(xs, 0.9):6.2f}  {min(xs):6.2f}")
    d = statistics.median(times["caged"]) - statistics.median(times["direct"])
    d2 = statistics.median(times["caged"]) - statistics.median(times["plain"])
    print(f"  Python agent vs direct: {d:+.2f} ms p50 (target <= +15 ms); vs command agent: {d2:+.2f} ms")
    print()
    print("agent channel round trip (us)     p50     p90     p99")
    for k, label in (("budget", "budget()"), ("heartbeat", "heartbeat()"), ("abudget", "await abudget()")):
        xs = [x / 1000 for x in rts[k]]
        print(f"  {label:32s} {statistics.median(xs):6.1f}  {pct(xs, 0.9):6.1f}  {pct(xs, 0.99):6.1f}   (n={len(xs)})")
    print("  target: budget() p50 <= 50 us")


main()
