"""Reads its secrets with iron_cage.secret() / asecret(), tries one it is not
granted, then waits (bounded) until secrets_rotated() names EXPECT_ROTATED and
reads the secret again. Writes <RESULT_FILE> after the first reads and
<RESULT_FILE>.rotated after the rotation."""

import asyncio
import json
import os
import time

import iron_cage

GRANTED = os.environ["GRANTED"]
EXPECT = os.environ["EXPECT_ROTATED"]


def write(path, data):
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.rename(path + ".tmp", path)


def err(f):
    try:
        f()
        return None
    except Exception as e:
        return [type(e).__name__, isinstance(e, iron_cage.IronCageError), str(e)]


async def both():
    return await asyncio.gather(iron_cage.asecret(GRANTED), iron_cage.asecret(GRANTED))


async def one(f, *args):
    return await f(*args)


out = {
    "sync": iron_cage.secret(GRANTED),
    "async": asyncio.run(both()),
    "not_granted": err(lambda: iron_cage.secret(os.environ["NOT_GRANTED"])),
    "rotated_at_start": iron_cage.secrets_rotated(),
}
write(os.environ["RESULT_FILE"], out)

seen = []
deadline = time.monotonic() + 60
while EXPECT not in seen:
    if time.monotonic() > deadline:
        write(os.environ["RESULT_FILE"] + ".rotated", {"timed_out": True, "seen": seen})
        raise SystemExit(1)
    seen += iron_cage.secrets_rotated()
    time.sleep(0.02)
write(os.environ["RESULT_FILE"] + ".rotated", {
    "seen": seen,
    "value": iron_cage.secret(GRANTED),
    "async_value": asyncio.run(one(iron_cage.asecret, GRANTED)),
    # Each rotation is reported once.
    "again": asyncio.run(one(iron_cage.asecrets_rotated)),
})
# Stay up (the test stops the daemon).
while True:
    time.sleep(3600)
