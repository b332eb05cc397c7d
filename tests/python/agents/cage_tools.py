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
text = "mail jane.doe@example.com card 4242 4242 4242 4242 ok"
out["scan"] = [[f.kind, f.start, f.end, f.confidence] for f in iron_cage.scan(text)]
out["redacted"] = iron_cage.redact(text)
tmp = os.environ["RESULT_FILE"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f)
os.rename(tmp, os.environ["RESULT_FILE"])
