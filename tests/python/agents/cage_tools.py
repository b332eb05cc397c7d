"""Exercises iron_cage's channel calls and in-process PII engine; writes what it
saw to RESULT_FILE."""

import json
import os

import iron_cage


def b(x):
    return {"limit_micros": x.limit_micros, "spent_micros": x.spent_micros,
            "reserved_micros": x.reserved_micros, "remaining_micros": x.remaining_micros,
            "period": x.period, "limit": x.limit, "remaining": x.remaining}


def err(f):
    try:
        f()
        return None
    except Exception as e:
        return f"{type(e).__name__}: {e}"


out = {"agent": iron_cage.agent_name(), "budget_before": b(iron_cage.budget())}
with iron_cage.tag("search"):
    iron_cage.report_cost(0.25, "web-search")
out["after_report"] = b(iron_cage.report_cost(0.0015, "ocr"))
out["bad_cost"] = err(lambda: iron_cage.report_cost(-1, "x"))
out["bad_label"] = err(lambda: iron_cage.report_cost(0.1, ""))
out["secret"] = err(lambda: iron_cage.secret("DB_PASSWORD"))
# Threads each see their own tag, even while both are inside one at once.
import threading
both_in = threading.Barrier(2)


def in_thread(name, usd):
    with iron_cage.tag(name):
        both_in.wait(timeout=60)
        assert iron_cage.current_tag() == name
        iron_cage.report_cost(usd, "thread-tool")


threads = [threading.Thread(target=in_thread, args=(n, u)) for n, u in (("thread-a", 0.01), ("thread-b", 0.02))]
for t in threads:
    t.start()
for t in threads:
    t.join()
out["tag_after_threads"] = iron_cage.current_tag()
out["pythonpath"] = os.environ.get("PYTHONPATH")
text = "mail jane.doe@example.com card 4242 4242 4242 4242 ok"
out["scan"] = [[f.kind, f.start, f.end, f.confidence] for f in iron_cage.scan(text)]
out["redacted"] = iron_cage.redact(text)
tmp = os.environ["RESULT_FILE"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f)
os.rename(tmp, os.environ["RESULT_FILE"])
