"""Reports how it was run (argv, __name__, __file__, sys.path[0], pickling of a
class defined in __main__) to RESULT_FILE, then fails with a traceback through
two of its own functions. Run by hand and under ironcaged, the two must match."""

import json
import os
import pickle
import sys


class Point:
    def __init__(self, x):
        self.x = x


def under_cage():
    try:
        import iron_cage
    except ImportError:
        return None
    return iron_cage.running_under_cage()


def report():
    out = {
        "argv": sys.argv,
        "name": __name__,
        "file": __file__,
        "path0": sys.path[0],
        "main_is_module": sys.modules["__main__"].__dict__ is globals(),
        "pickled": pickle.loads(pickle.dumps(Point(3))).x,
        "under_cage": under_cage(),
    }
    tmp = os.environ["RESULT_FILE"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, os.environ["RESULT_FILE"])


def fail():
    raise ValueError("probe failed on purpose")


if __name__ == "__main__":
    report()
    fail()
