"""Speaks the agent channel by hand on IRONCAGE_FD (no iron_cage module), the
way a hostile or buggy agent might: a proper Hello, then control-protocol
requests, then a Budget request, then a frame with a lying length. Writes what
came back to RESULT_FILE."""

import json
import os
import socket
import struct

sock = socket.socket(fileno=int(os.environ["IRONCAGE_FD"]))
sock.settimeout(60)


def send(payload):
    sock.sendall(struct.pack(">I", len(payload)) + payload)


def recv_exact(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def varint(b, i):
    v = shift = 0
    while True:
        x = b[i]
        i += 1
        v |= (x & 0x7F) << shift
        shift += 7
        if x < 0x80:
            return v, i


RESPONSES = ["welcome", "ok", "budget", "cost_booked", "secret", "error"]


def reply():
    """(variant name, error message) of the next reply; ("closed", None) at EOF."""
    h = recv_exact(4)
    if h is None:
        return "closed", None
    p = recv_exact(struct.unpack(">I", h)[0])
    assert p[0] == 0, "not a Reply"
    _, i = varint(p, 1)
    variant = RESPONSES[p[i]]
    if variant == "error":
        _kind, j = varint(p, i + 1)
        n, j = varint(p, j)
        return variant, p[j:j + n].decode()
    return variant, None


out = {}
# Envelope{id: 1, Hello{version: 1, pid}}: postcard varints.
send(bytes([1, 0, 1, 5]))
out["hello"] = reply()[0]
# The control protocol's StopAgent{name: "victim"} (variant 7) and Reload (3).
send(bytes([7, 6]) + b"victim")
v, m = reply()
out["control_stop"] = {"variant": v, "message": m}
send(bytes([3]))
v, m = reply()
out["control_reload"] = {"variant": v, "message": m}
# Envelope{id: 9, Budget}.
send(bytes([9, 2]))
out["budget_after"] = reply()[0]
# A header announcing 4 GiB.
sock.sendall(struct.pack(">I", 0xFFFFFFFF))
out["after_huge"] = reply()[0]
tmp = os.environ["RESULT_FILE"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f)
os.rename(tmp, os.environ["RESULT_FILE"])
while True:
    import time
    time.sleep(1)
