"""iron_cage.secret() and rotation pushes end to end: Python agents under the
real ironcaged with an unlocked secrets store read what they are granted (sync
and async), are refused (and audited) what they are not, and learn of a
rotation (`ironctl secrets reload`, SIGUSR1) through a push on their channel.
Plus the module's side alone, against a hand-written daemon end: a push that
arrives while a call waits for its reply is kept, not lost. Every wait is on a
condition with a generous upper bound."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from conftest import BIN, binary, wait_for

AGENTS = Path(__file__).resolve().parent / "agents"
MODULE_DIR = BIN / "python"
MASTER_KEY = "pytest master key for iron_cage secrets, long enough"

DB_V1 = "pw-v1-4f0c2b9a7e5d3c1b9a8f7e6d"
DB_V2 = "pw-v2-8e1d3c5b7a9f0e2d4c6b8a0f"
OTHER_V1 = "other-v1-1a2b3c4d5e6f7a8b9c0d"
OTHER_V2 = "other-v2-9f8e7d6c5b4a3f2e1d0c"
VALUES = (DB_V1, DB_V2, OTHER_V1, OTHER_V2)


def set_secret(cage, name, value):
    r = subprocess.run([binary("ironctl"), "--socket", str(cage.socket), "secrets", "set", name,
                        "--value-stdin"], input=value, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def wait_file(cage, agent, path, what):
    def ready():
        if path.exists():
            return json.loads(path.read_text())
        if cage.json("agents", "status", agent)["state"] in ("exited", "failed"):
            raise AssertionError(f"{agent} ended before {what}:\n{cage.logs(agent)}")
        return None
    return wait_for(what, ready)


def audit(cage):
    out = cage.ctl("--json", "audit", "tail", "-n", "1000").stdout
    return out, [json.loads(l) for l in out.splitlines() if l.strip()]


def test_agents_read_granted_secrets_and_see_rotations(cage):
    cage.write([
        cage.py_agent("holder", AGENTS / "cage_secrets.py", secrets=["DB_PASSWORD"],
                      env={"GRANTED": "DB_PASSWORD", "NOT_GRANTED": "OTHER",
                           "EXPECT_ROTATED": "DB_PASSWORD"}),
        cage.py_agent("bystander", AGENTS / "cage_secrets.py", secrets=["OTHER"],
                      env={"GRANTED": "OTHER", "NOT_GRANTED": "DB_PASSWORD",
                           "EXPECT_ROTATED": "OTHER"}),
    ])
    # Debug logging: not even the daemon's most verbose log may hold a value.
    cage.start(env={"IRON_SECRETS_MASTER_KEY": MASTER_KEY, "RUST_LOG": "debug"})
    # Granted secrets must exist before the agents can start.
    set_secret(cage, "DB_PASSWORD", DB_V1)
    set_secret(cage, "OTHER", OTHER_V1)
    # Both are new since the daemon started: this reload counts them (no
    # agent runs yet), the next one only what changes after it.
    assert "2 secrets changed" in cage.ctl("secrets", "reload").stdout
    for a in ("holder", "bystander"):
        cage.ctl("agents", "restart", a)
        wait_for(f"{a} to run", lambda: cage.json("agents", "status", a)["state"] == "running")

    holder = cage.result("holder")
    assert holder["sync"] == DB_V1
    assert holder["async"] == [DB_V1, DB_V1]
    kind, is_cage_error, msg = holder["not_granted"]
    assert kind == "SecretsUnavailable" and is_cage_error, holder
    assert "not granted" in msg and "OTHER" in msg and OTHER_V1 not in msg, msg
    assert holder["rotated_at_start"] == []
    bystander = cage.result("bystander")
    assert bystander["sync"] == OTHER_V1 and bystander["async"] == [OTHER_V1, OTHER_V1]
    assert bystander["not_granted"][0] == "SecretsUnavailable"

    # Rotate DB_PASSWORD with `ironctl secrets reload`: the holder is told.
    set_secret(cage, "DB_PASSWORD", DB_V2)
    out = cage.ctl("secrets", "reload").stdout
    assert "1 secrets changed" in out, out
    rotated = wait_file(cage, "holder", cage.dir / "holder.json.rotated", "the holder to see the rotation")
    assert rotated["seen"] == ["DB_PASSWORD"], rotated
    assert rotated["value"] == DB_V2 and rotated["async_value"] == DB_V2
    assert rotated["again"] == []

    # Rotate OTHER with SIGUSR1: the bystander is told of OTHER only (it was
    # never told of DB_PASSWORD, which it is not granted).
    set_secret(cage, "OTHER", OTHER_V2)
    cage.proc.send_signal(signal.SIGUSR1)
    rotated = wait_file(cage, "bystander", cage.dir / "bystander.json.rotated", "the bystander to see the rotation")
    assert rotated["seen"] == ["OTHER"], rotated
    assert rotated["value"] == OTHER_V2 and rotated["async_value"] == OTHER_V2

    # The audit trail has each read and each refusal, by agent; never a value.
    raw, entries = audit(cage)
    reads = [(e["actor_agent"], e["target"], e["outcome"]) for e in entries
             if e["action"] == "secret read" and e["actor_role"] == "agent"]
    assert reads.count(("holder", "DB_PASSWORD@production", "ok")) == 5, reads
    assert reads.count(("bystander", "OTHER@production", "ok")) == 5, reads
    assert ("holder", "OTHER", "denied") in reads, reads
    assert ("bystander", "DB_PASSWORD", "denied") in reads, reads
    assert cage.ctl("audit", "verify").returncode == 0
    log = cage.read_log()
    assert "telling the agent its secrets rotated" in log
    for v in VALUES:
        assert v not in raw, "a secret value in the audit trail"
        assert v not in log, "a secret value in the daemon log"
        for a in ("holder", "bystander"):
            assert v not in cage.logs(a), f"a secret value in {a}'s log"


# --- the module against a hand-written daemon end -------------------------------------

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _read_varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return v, i


def _string(s):
    s = s.encode()
    return _varint(len(s)) + s


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "the module closed the channel"
        buf += chunk
    return buf


def _request(sock):
    """(id, AgentRequest variant index) of the module's next request."""
    (n,) = struct.unpack(">I", _recv_exact(sock, 4))
    p = _recv_exact(sock, n)
    rid, i = _read_varint(p, 0)
    variant, _ = _read_varint(p, i)
    return rid, variant


def _send(sock, payload):
    sock.sendall(struct.pack(">I", len(payload)) + payload)


HELLO, HEARTBEAT, SECRET = 0, 1, 4


def test_a_push_arriving_while_a_call_waits_is_kept():
    ours, theirs = socket.socketpair()
    ours.settimeout(60)
    code = r"""
import json, iron_cage
v = iron_cage.secret("DB_PASSWORD")
print(json.dumps({"value": v, "rotated": iron_cage.secrets_rotated(),
                  "again": iron_cage.secrets_rotated()}))
"""
    env = dict(os.environ, IRONCAGE_FD=str(theirs.fileno()),
               PYTHONPATH=str(MODULE_DIR.resolve()))
    p = subprocess.Popen([sys.executable, "-c", code], env=env, pass_fds=[theirs.fileno()],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    theirs.close()
    try:
        rid, v = _request(ours)
        assert v == HELLO
        # Reply{id, Hello(AgentWelcome{version: 1, agent: "fake"})}
        _send(ours, b"\x00" + _varint(rid) + b"\x00" + _varint(1) + _string("fake"))
        rid, v = _request(ours)
        assert v == SECRET
        # The push first, then the reply the module is waiting for.
        _send(ours, b"\x01\x00" + _varint(2) + _string("DB_PASSWORD") + _string("API_TOKEN"))
        _send(ours, b"\x00" + _varint(rid) + b"\x04" + _string("the-value"))
        # secrets_rotated() makes one round trip (a heartbeat), twice.
        for _ in range(2):
            rid, v = _request(ours)
            assert v == HEARTBEAT
            _send(ours, b"\x00" + _varint(rid) + b"\x01")
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert json.loads(out) == {"value": "the-value", "rotated": ["API_TOKEN", "DB_PASSWORD"],
                               "again": []}
