"""A Python agent run under its own user (`user = "nobody"`): reports its
uid and gid, reads its granted secret through iron_cage (the inherited
IRONCAGE_FD channel) and from its credentials file, makes one OpenAI SDK call
through the gateway with its virtual key, and tries to read the daemon's redb
file. It prints one line `RESULT {json}` (it cannot write where the test
runs; the secret as its SHA-256, since the value itself shows masked in its
logs, as the line `RAW ...` shows), then waits to be stopped."""

import hashlib
import json
import os
import time

import iron_cage
import openai


def ids():
    status = open("/proc/self/status").read().splitlines()
    pick = {l.split(":")[0]: l.split(":")[1].split() for l in status
            if l.startswith(("Uid:", "Gid:"))}
    return {"uid": [int(x) for x in pick["Uid"]], "gid": [int(x) for x in pick["Gid"]]}


def try_read(path):
    try:
        with open(path, "rb") as f:
            f.read(1)
        return "read"
    except PermissionError as e:
        return f"PermissionError: {e.strerror}"
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror}"


granted = os.environ["GRANTED"]
with open(os.path.join(os.environ["IRONCAGE_CREDENTIALS_DIRECTORY"], granted)) as f:
    from_file = f.read()
client = openai.OpenAI()
r = client.chat.completions.create(model="gpt-4o-mini", max_tokens=10,
                                   messages=[{"role": "user", "content": "hello from nobody"}])
def sha256(s):
    return hashlib.sha256(s.encode()).hexdigest()


value = iron_cage.secret(granted)
print("RAW " + value, flush=True)
out = ids() | {
    "secret": sha256(value),
    "file": sha256(from_file),
    "call_tokens": r.usage.total_tokens,
    "redb": try_read(os.environ["REDB"]),
    "home": os.environ.get("HOME"),
    "user": os.environ.get("USER"),
}
print("RESULT " + json.dumps(out), flush=True)
deadline = time.monotonic() + 600
while time.monotonic() < deadline:
    time.sleep(1)
