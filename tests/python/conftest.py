"""Fixtures for the SDK tests: the real mock provider, the real ironcaged and
ironctl binaries, and agents that run the real openai/anthropic SDKs under the
daemon. Every wait is on a condition, with a generous upper bound."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("IRONCAGE_BIN_DIR", ROOT / "target" / "debug"))
AGENTS = Path(__file__).resolve().parent / "agents"
WAIT = 60.0

REAL_OPENAI_KEY = "sk-proj-REAL-openai-key-never-in-agents-0123456789"
REAL_ANTHROPIC_KEY = "sk-ant-REAL-anthropic-key-never-in-agents-0123456789"


def wait_for(what, cond, timeout=WAIT):
    """Polls cond() until it returns a truthy value; fails after timeout."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def binary(name):
    p = BIN / name
    if not p.exists():
        raise RuntimeError(f"{p} is not built; run `cargo build --workspace --bins` first")
    return str(p)


class Mock:
    def __init__(self, tmp):
        self.addr_file = Path(tmp) / "mock.addr"
        self.proc = subprocess.Popen(
            [binary("ironcage-mock-provider"), "--listen", "127.0.0.1:0",
             "--addr-file", str(self.addr_file), "--openai-key", REAL_OPENAI_KEY,
             "--anthropic-key", REAL_ANTHROPIC_KEY, "--record"],
            stdout=subprocess.DEVNULL,
        )
        self.url = wait_for("the mock provider", lambda: self.addr_file.exists() and self.addr_file.read_text().strip())

    def get(self, path):
        import urllib.request
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path, body=None, method="POST"):
        import urllib.request
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def mock():
    with tempfile.TemporaryDirectory() as tmp:
        m = Mock(tmp)
        yield m
        m.stop()


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


class Cage:
    """One ironcaged on a private temp dir, with providers pointing at the mock."""

    def __init__(self, mock, tmp):
        self.mock = mock
        self.dir = Path(tmp)
        self.socket = self.dir / "ironcaged.sock"
        self.state = self.dir / "state"
        self.config = self.dir / "ironcaged.toml"
        self.proc = None
        self.log = None
        self.extra = ""

    def agent(self, name, plan=None, script="sdk_agent.py", **keys):
        """A TOML [[agent]] running tests/python/agents/<script> with this
        interpreter; `plan` is handed over as JSON in its environment, and the
        agent writes its results to <dir>/<name>.json."""
        env = dict(keys.pop("env", {}))
        env["RESULT_FILE"] = str(self.dir / f"{name}.json")
        if plan is not None:
            env["PLAN"] = json.dumps(plan)
        lines = ["[[agent]]", f"name = {toml_value(name)}",
                 f"command = {toml_value([sys.executable, str(AGENTS / script)])}",
                 f"env = {toml_value(env)}", 'restart = "never"']
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        return "\n".join(lines) + "\n"

    def py_agent(self, name, script, args=(), python=None, working_dir=None, **keys):
        """A TOML [[agent]] run as a Python agent (`python`/`script`/`args`, the
        iron_cage module loaded first), with this venv's interpreter unless
        `python` is given. RESULT_FILE is <dir>/<name>.json."""
        env = dict(keys.pop("env", {}))
        env["RESULT_FILE"] = str(self.dir / f"{name}.json")
        lines = ["[[agent]]", f"name = {toml_value(name)}",
                 f"python = {toml_value(python or sys.executable)}",
                 f"script = {toml_value(str(script))}", f"args = {toml_value(list(args))}",
                 f"env = {toml_value(env)}"]
        if working_dir is not None:
            lines.append(f"working_dir = {toml_value(str(working_dir))}")
        keys.setdefault("restart", "never")
        lines += [f"{k} = {toml_value(v)}" for k, v in keys.items()]
        return "\n".join(lines) + "\n"

    def logs(self, name, n=500):
        return self.ctl("agents", "logs", name, "-n", str(n)).stdout

    def write(self, agents, extra=""):
        text = f"""
[gateway]
upstream_timeout_secs = 30
{extra}

[[provider]]
name = "openai"
kind = "openai"
base_url = "{self.mock.url}/v1"
api_key_env = "TEST_OPENAI_KEY"

[[provider]]
name = "anthropic"
kind = "anthropic"
base_url = "{self.mock.url}"
api_key_env = "TEST_ANTHROPIC_KEY"
""" + "\n".join(agents)
        self.config.write_text(text)

    def start(self, env=None):
        """Starts ironcaged; `env` adds to its environment (e.g. a master key)."""
        env = dict(os.environ, TEST_OPENAI_KEY=REAL_OPENAI_KEY, TEST_ANTHROPIC_KEY=REAL_ANTHROPIC_KEY,
                   RUST_LOG="info") | dict(env or {})
        env.pop("NOTIFY_SOCKET", None)
        self.log = open(self.dir / "ironcaged.log", "ab")
        self.proc = subprocess.Popen(
            [binary("ironcaged"), "--config", str(self.config), "--socket", str(self.socket),
             "--state-dir", str(self.state), "--log-format", "text"],
            stdout=self.log, stderr=self.log, env=env,
        )

        def up():
            assert self.proc.poll() is None, f"ironcaged exited: {self.read_log()}"
            return self.ctl("daemon", "ping", check=False).returncode == 0

        wait_for("ironcaged to answer", up)

    def read_log(self):
        return (self.dir / "ironcaged.log").read_text(errors="replace")

    def ctl(self, *args, check=True):
        r = subprocess.run([binary("ironctl"), "--socket", str(self.socket), *args],
                           capture_output=True, text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"ironctl {args} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r

    def json(self, *args):
        return json.loads(self.ctl("--json", *args).stdout)

    def audit(self):
        """Every audit entry (`ironctl --json audit export`: JSON lines)."""
        out = self.ctl("--json", "audit", "export").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait_audit(self, what, pred):
        """Entries matching `pred`, once there is at least one (entries of
        daemon events are group-committed shortly after the event)."""
        return wait_for(what, lambda: [e for e in self.audit() if pred(e)])

    def result(self, name):
        """Waits for the agent's result file and returns it."""
        path = self.dir / f"{name}.json"

        def done():
            if path.exists():
                return json.loads(path.read_text())
            st = self.json("agents", "status", name)
            if st["state"] in ("exited", "failed", "stopped") and not path.exists():
                logs = self.ctl("agents", "logs", name, "-n", "200").stdout
                raise AssertionError(f"agent {name} ended without a result:\n{logs}")
            return None

        return wait_for(f"agent {name}'s result", done)

    def budget(self, name):
        return self.json("budget", "show", name)[0]

    def wait_spent(self, name, micros):
        return wait_for(f"{name}'s durable spend to reach {micros}",
                        lambda: (b := self.budget(name))["spent"] == micros and b)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            finally:
                self.proc = None
        if self.log:
            self.log.close()


@pytest.fixture
def cage(mock):
    with tempfile.TemporaryDirectory(prefix="ironcage-py-") as tmp:
        os.chmod(tmp, 0o755)
        c = Cage(mock, tmp)
        yield c
        c.stop()


def price_table():
    """The built-in price table, read from the repository (the test prices by hand)."""
    return json.loads((ROOT / "shared" / "prices" / "default.json").read_text())


def picos(usd_per_token):
    """USD per token (a JSON float) as integer pico-dollars, as the daemon does."""
    return round(usd_per_token * 1e12)


def micros_from_picos(p):
    """Round half up to the micro-dollar (the daemon's documented rule)."""
    return (p + 500_000) // 1_000_000
