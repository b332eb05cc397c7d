"""Reports its interpreter's version and venv and one call of each kind."""

import json
import os
import sys

import iron_cage

out = {"version": f"{sys.version_info[0]}.{sys.version_info[1]}", "prefix": sys.prefix,
       "budget_limit_micros": iron_cage.budget().limit_micros,
       "redacted": iron_cage.redact("jane.doe@example.com")}
tmp = os.environ["RESULT_FILE"] + ".tmp"
with open(tmp, "w") as f:
    json.dump(out, f)
os.rename(tmp, os.environ["RESULT_FILE"])
