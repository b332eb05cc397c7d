"""A Python agent under its own user (`user = "nobody"`): the iron_cage module
(its IRONCAGE_FD channel), its credentials file and the gateway with the real
openai SDK all work as for any agent, it is metered, and it cannot read the
daemon's state. Needs root to switch users (CI runs as root)."""

import hashlib
import json
import os
import pwd
import site
import subprocess
import sys

import pytest

from conftest import wait_for
from test_cage_secrets import AGENTS, MASTER_KEY, set_secret

VALUE = "nobody-secret-5b0e2a7c9d1f3e4a"

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="switching an agent's user needs root (CI runs as root)")


def interpreter_for_nobody():
    """A Python that `nobody` may run, with this venv's packages (the openai
    SDK) on its path: the venv's own interpreter often lives under /root
    (pyenv), which nobody cannot enter; the system python3 of the same version
    then runs the same packages. Returns (python, PYTHONPATH) or skips."""
    packages = site.getsitepackages()[0]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        try:
            r = subprocess.run([python, "-c", "import openai"], user=65534, group=65534,
                               extra_groups=[], env={"PYTHONPATH": packages, "PATH": "/usr/bin:/bin"},
                               capture_output=True, timeout=60)
        except PermissionError:
            continue
        if r.returncode == 0:
            return python, packages
    pytest.skip(f"no Python {version} with this venv's packages that user nobody can run")


def test_a_python_agent_under_its_own_user_uses_its_channel_files_and_the_gateway(cage):
    nobody = pwd.getpwnam("nobody")
    python, packages = interpreter_for_nobody()
    cage.write([cage.py_agent("caged", AGENTS / "cage_user.py", python=python, user="nobody",
                              autostart=False, secrets=["TOKEN"], budget_usd=5.0,
                              env={"GRANTED": "TOKEN", "PYTHONPATH": packages,
                                   "REDB": str(cage.state / "ironcage.redb")})])
    cage.start(env={"IRON_SECRETS_MASTER_KEY": MASTER_KEY})
    set_secret(cage, "TOKEN", VALUE)
    cage.ctl("agents", "start", "caged")

    def result():
        for line in cage.logs("caged").splitlines():
            if "RESULT " in line:
                return json.loads(line.split("RESULT ", 1)[1])
        if cage.json("agents", "status", "caged")["state"] in ("exited", "failed"):
            raise AssertionError(f"caged ended without a result:\n{cage.logs('caged')}")
        return None

    r = wait_for("the agent's result", result)
    assert r["uid"] == [nobody.pw_uid] * 4, r
    assert r["gid"] == [nobody.pw_gid] * 4, r
    digest = hashlib.sha256(VALUE.encode()).hexdigest()
    assert r["secret"] == digest and r["file"] == digest
    # Printed as is, the value shows by its name only.
    assert "RAW [secret TOKEN]" in cage.logs("caged")
    assert VALUE not in cage.logs("caged")
    assert r["call_tokens"] > 0
    assert r["redb"].startswith("PermissionError"), r
    assert (r["home"], r["user"]) == (nobody.pw_dir, "nobody")
    b = wait_for("the call to be settled", lambda: (b := cage.budget("caged"))["calls"] == 1 and b)
    assert b["spent"] > 0, b
    cage.ctl("agents", "stop", "caged")
