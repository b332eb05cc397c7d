"""The iron_cage Python module, end to end: Python agents started by the real
ironcaged (`python = ..., script = ...`), talking to it over their channel, and
calling the mock provider through the gateway with the real openai SDK and
LangChain. Every wait is on a condition with a generous upper bound."""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import BIN, ROOT, binary, wait_for

AGENTS = Path(__file__).resolve().parent / "agents"
EXAMPLES = ROOT / "examples" / "agents"
MODULE_DIR = BIN / "python"


def status(cage, name):
    return cage.json("agents", "status", name)


def costs_by(cage, key):
    return {r["key"]: r for r in cage.json("costs", "--by", key)["rows"]}


def wait_exited(cage, name):
    return wait_for(f"agent {name} to exit",
                    lambda: (s := status(cage, name))["state"] in ("exited", "failed") and s)


def other_pythons():
    """CPython interpreters on this machine other than the venv's version (3.9+)."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    found = {}
    for p in sorted(glob.glob("/usr/bin/python3.*") + glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3"))):
        m = re.search(r"python3\.(\d+)$", p) or re.search(r"versions/3\.(\d+)\.", p)
        if not m or not os.access(p, os.X_OK):
            continue
        v = f"3.{m.group(1)}"
        if v != mine and int(m.group(1)) >= 9 and v not in found:
            found[v] = p
    return found


def test_outside_the_daemon_import_works_and_every_call_raises():
    code = r"""
import asyncio, json, iron_cage
out = {"under": iron_cage.running_under_cage(), "errors": []}
calls = [iron_cage.budget, iron_cage.agent_name, iron_cage.heartbeat,
         lambda: iron_cage.report_cost(0.1, "x"), lambda: iron_cage.secret("A"),
         lambda: iron_cage.scan("a@b.co"), lambda: iron_cage.redact("a@b.co"),
         lambda: iron_cage.tag("t"), lambda: asyncio.run(iron_cage.abudget())]
for c in calls:
    try:
        c()
        out["errors"].append(None)
    except iron_cage.NotUnderCage as e:
        out["errors"].append(str(e))
print(json.dumps(out))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONCAGE_")}
    env["PYTHONPATH"] = str(MODULE_DIR)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["under"] is False
    assert len(out["errors"]) == 9
    for e in out["errors"]:
        assert e is not None and e.startswith("not running under ironcaged"), out


def test_script_runs_as_it_would_by_hand(cage, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    script = work / "probe.py"
    script.write_text((AGENTS / "probe_main.py").read_text())
    # By hand, in the same directory, with the same interpreter.
    by_hand = subprocess.run([sys.executable, "probe.py", "alpha", "--beta=2"], cwd=work,
                             capture_output=True, text=True, timeout=60,
                             env={"PATH": os.environ["PATH"], "RESULT_FILE": str(tmp_path / "hand.json")})
    assert by_hand.returncode == 1
    hand = json.loads((tmp_path / "hand.json").read_text())

    cage.write([cage.py_agent("probe", "probe.py", ["alpha", "--beta=2"], working_dir=work)])
    cage.start()
    caged = cage.result("probe")
    st = wait_exited(cage, "probe")
    assert st["last_exit"]["code"] == 1
    for k in ("argv", "name", "file", "path0", "main_is_module", "pickled"):
        assert caged[k] == hand[k], (k, caged[k], hand[k])
    assert caged["under_cage"] is True and hand["under_cage"] is None
    # The traceback names the script's own file and lines, and nothing else.
    hand_tb = [l for l in by_hand.stderr.splitlines() if l.startswith("  File ")]
    logs = cage.logs("probe")
    caged_tb = [l.split("  File ", 1)[1] for l in logs.splitlines() if "  File " in l]
    assert hand_tb and [l.strip()[5:] for l in hand_tb] == caged_tb, (hand_tb, logs)
    assert "_run.py" not in logs and "<string>" not in logs
    assert "ValueError: probe failed on purpose" in logs


def test_budget_report_cost_tags_and_pii_over_the_channel(cage):
    cage.write([cage.py_agent("tools", AGENTS / "cage_tools.py", budget_usd=2.0, budget_period="week",
                              env={"PYTHONPATH": "/opt/extra-lib"})])
    cage.start()
    r = cage.result("tools")
    assert r["agent"] == "tools"
    first = r["budget_before"]
    assert first["limit_micros"] == 2_000_000 and first["period"] == "week"
    assert first["spent_micros"] == 0 and first["remaining_micros"] == 2_000_000
    # report_cost answers with the budget after the (durable) booking.
    assert r["after_report"]["spent_micros"] == 250_000 + 1_500
    assert r["after_report"]["remaining_micros"] == 2_000_000 - 251_500
    assert r["bad_cost"].startswith("ValueError")
    assert r["bad_label"].startswith("ValueError")
    # No master key in this daemon: secret() says how to configure one.
    assert r["secret"].startswith("SecretsUnavailable") and "secrets are disabled" in r["secret"]
    assert "IRON_SECRETS_MASTER_KEY" in r["secret"]
    assert r["scan"] == [["email", 5, 25, "high"], ["card", 31, 50, "high"]]
    assert r["redacted"] == "mail [EMAIL] card [CARD] ok"
    assert r["tag_after_threads"] is None
    # The module's directory first, then the agent's own PYTHONPATH.
    assert r["pythonpath"] == f"{MODULE_DIR.resolve()}:/opt/extra-lib"
    # The ledger agrees, by tag and by model.
    by_tag = costs_by(cage, "tag")
    assert by_tag["search"]["cost"] == 250_000
    assert by_tag["-"]["cost"] == 1_500
    assert by_tag["thread-a"]["cost"] == 10_000 and by_tag["thread-b"]["cost"] == 20_000
    by_model = costs_by(cage, "model")
    assert by_model["tool/web-search"]["cost"] == 250_000
    assert by_model["tool/ocr"]["cost"] == 1_500
    b = cage.budget("tools")
    assert b["spent"] == 281_500 and b["remaining"] == 2_000_000 - 281_500


def test_langchain_agent_is_metered_per_tag(cage):
    cage.write([cage.py_agent("lc", EXAMPLES / "langchain_agent.py", ["--rounds", "3", "--pause", "0"],
                              working_dir=EXAMPLES, budget_usd=1.0)])
    cage.start()
    st = wait_exited(cage, "lc")
    logs = cage.logs("lc")
    assert st["last_exit"]["code"] == 0, logs
    assert "langchain agent done" in logs
    by_tag = costs_by(cage, "tag")
    assert by_tag["research"]["calls"] == 3, by_tag
    assert by_tag["summarize"]["calls"] == 3, by_tag
    assert "-" not in by_tag, by_tag
    total = cage.json("costs", "--by", "agent")["rows"][0]
    assert total["cost"] == by_tag["research"]["cost"] + by_tag["summarize"]["cost"] > 0
    assert cage.budget("lc")["spent"] == total["cost"]


def test_asyncio_agents_await_budget_concurrently(cage):
    agents = []
    for name in ("async-a", "async-b"):
        agents.append(cage.py_agent(
            name, EXAMPLES / "async_agent.py",
            ["--workers", "4", "--rounds", "3", "--budget-checks", "25", "--pause", "0",
             "--result", str(cage.dir / f"{name}.json")],
            working_dir=EXAMPLES, budget_usd=1.0))
    cage.write(agents)
    cage.start()
    for name in ("async-a", "async-b"):
        r = cage.result(name)
        assert r["agent"] == name
        assert r["budget_checks"] == 4 * 3 * 25
        assert wait_exited(cage, name)["last_exit"]["code"] == 0
        # Once the last settle is durable, the ledger's spend is what the
        # costs report says, and no check saw more than it.
        b = wait_for(f"{name}'s last settle", lambda: (b := cage.budget(name))["reserved"] == 0 and b)
        assert b["spent"] == costs_by(cage, "agent")[name]["cost"] > 0
        assert all(0 <= s <= b["spent"] for s in r["spent_seen"])
        assert r["final_spent_micros"] <= b["spent"]
    by_tag = costs_by(cage, "tag")
    # 4 workers per agent, each its own tag, 3 calls each, in both agents.
    for n in range(1, 5):
        assert by_tag[f"worker-{n}"]["calls"] == 6, by_tag


def test_python_versions_other_than_the_venvs(cage, tmp_path):
    """The one abi3 build loads into a venv of the machine's python3 (this
    test run's venv, used by the other tests) and into every other CPython
    3.9+ the machine has, each in its own venv."""
    pythons = other_pythons()
    if not pythons:
        pytest.skip("no CPython other than the venv's version on this machine")
    agents = []
    for v, exe in sorted(pythons.items()):
        venv = tmp_path / f"venv{v}"
        subprocess.run([exe, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        agents.append(cage.py_agent(f"py{v.replace('.', '')}", AGENTS / "cage_version.py",
                                    python=str(venv / "bin" / "python"), budget_usd=0.5))
    cage.write(agents)
    cage.start()
    for v in sorted(pythons):
        r = cage.result(f"py{v.replace('.', '')}")
        assert r["version"] == v, r
        assert r["prefix"].startswith(str(tmp_path)), r
        assert r["budget_limit_micros"] == 500_000
        assert r["redacted"] == "[EMAIL]"


def test_watchdog_restarts_a_hung_agent(cage, tmp_path):
    cage.write([
        cage.py_agent("hung", AGENTS / "cage_hang.py", watchdog_secs=1, restart="never",
                      env={"STARTS": str(tmp_path / "starts")}),
        cage.py_agent("healthy", AGENTS / "cage_idle.py", watchdog_secs=1),
        cage.agent("plain", script="cage_idle.py"),
    ])
    cage.start()

    starts_file = tmp_path / "starts"

    def restarted_twice():
        st = status(cage, "hung")
        starts = starts_file.read_text().split() if starts_file.exists() else []
        return st["restarts"] >= 2 and st["state"] == "running" and len(starts) >= 3 and (st, starts)
    st, starts = wait_for("the watchdog to restart the hung agent twice", restarted_twice)
    assert st["stop_reason"] == "watchdog"
    assert st["last_exit"]["signal"] in (9, 15)
    assert len(set(starts)) == len(starts), starts
    assert "watchdog: no heartbeat on the agent channel" in cage.logs("hung")
    assert "watchdog: no heartbeat" in cage.read_log()
    # Meanwhile (> 2 watchdog periods), the healthy Python agent kept beating
    # and the plain command, with no watchdog, was left alone.
    for name in ("healthy", "plain"):
        s = status(cage, name)
        assert s["state"] == "running" and s["restarts"] == 0, s


def test_the_channel_gives_the_agent_role_only(cage):
    cage.write([
        cage.agent("raw", script="channel_raw.py"),
        cage.agent("victim", script="cage_idle.py"),
    ])
    cage.start()
    r = cage.result("raw")
    assert r["hello"] == "welcome", r
    # A control-protocol request (StopAgent victim) is refused, the channel stays open...
    assert r["control_stop"]["variant"] == "error" and "not an agent channel request" in r["control_stop"]["message"], r
    assert r["control_reload"]["variant"] == "error", r
    # ... and the agent's own requests still work after it.
    assert r["budget_after"] == "budget", r
    # A frame with a lying length closes this channel only.
    assert r["after_huge"] == "closed", r
    assert status(cage, "victim")["state"] == "running"
    assert cage.ctl("daemon", "ping").returncode == 0
    assert "refused a request on the agent's channel" in cage.read_log()


def test_a_python_agent_without_the_module_is_a_clear_config_error(tmp_path):
    (tmp_path / "agent.py").write_text("print('hi')\n")
    (tmp_path / "empty").mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text('[daemon]\npython_path = "empty"\n\n[[agent]]\nname = "a"\n'
                   f'python = {json.dumps(sys.executable)}\nscript = "agent.py"\n')
    r = subprocess.run([binary("ironcaged"), "--check-config", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    msg = r.stderr + r.stdout
    assert "iron_cage module" in msg and str(tmp_path / "empty") in msg, msg
    assert f"{cfg}:2" in msg, msg


def test_agents_inherit_only_their_own_channel(cage):
    cage.write([cage.agent("plain-fds", script="fd_list.py"),
                cage.py_agent("py-fds", AGENTS / "fd_list.py")])
    cage.start()
    plain = cage.result("plain-fds")
    fd = plain["env_fd"]
    assert fd is not None and int(fd) > 2
    assert sorted(plain["fds"], key=int) == sorted(["0", "1", "2", fd], key=int), plain
    assert plain["fds"][fd][0].startswith("socket:") and plain["fds"][fd][1] is False
    # In a Python agent the module owns the descriptor: close-on-exec, and
    # IRONCAGE_FD is gone from the environment its own children would get.
    py = cage.result("py-fds")
    assert py["env_fd"] is None
    extra = {k: v for k, v in py["fds"].items() if k not in ("0", "1", "2")}
    assert len(extra) == 1 and all(t.startswith("socket:") and cx for t, cx in extra.values()), py


def test_a_python_too_old_for_the_module_exits_with_a_clear_message(cage):
    old = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[5-8].*/bin/python3")) +
                 glob.glob("/usr/bin/python3.[5-8]"))
    if not old:
        pytest.skip("no CPython older than 3.9 on this machine")
    cage.write([cage.py_agent("old", AGENTS / "cage_version.py", python=old[-1])])
    cage.start()
    st = wait_exited(cage, "old")
    assert st["last_exit"]["code"] == 3
    logs = cage.logs("old")
    assert "cannot import the iron_cage module" in logs and "3.9 or later" in logs, logs


def test_tag_reaches_both_sdks_sync_and_async(cage):
    cage.write([cage.py_agent("sdks", AGENTS / "cage_sdks.py")])
    cage.start()
    st = wait_exited(cage, "sdks")
    assert st["last_exit"]["code"] == 0, cage.logs("sdks")
    wait_for("the last settle", lambda: cage.budget("sdks")["reserved"] == 0)
    by_tag = {k: v["calls"] for k, v in costs_by(cage, "tag").items()}
    assert by_tag == {"claude-sync": 1, "explicit": 1, "claude-async": 1, "-": 1}, by_tag
