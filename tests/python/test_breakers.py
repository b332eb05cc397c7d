"""Circuit breakers and fallback chains, end to end with the real openai SDK.

Agents run under a real ironcaged whose providers point at the mock provider;
outages are the mock's per-model faults (POST /_mock/faults), and what reached
each model is read from GET /_mock/stats. Every wait is on a condition (a
result file, `ironctl --json circuits list`, the wall clock passing a
next-probe time the daemon reported), never a fixed sleep."""

import time

import pytest

from conftest import micros_from_picos, picos, price_table, wait_for

FALLBACK_FROM = "x-iron-cage-fallback-from"
MODEL = "x-iron-cage-model"


@pytest.fixture(autouse=True)
def clean_mock(mock):
    """Each test starts with no faults and zeroed stats, and leaves no faults."""
    mock.post("/_mock/faults", method="DELETE")
    mock.post("/_mock/reset")
    yield
    mock.post("/_mock/faults", method="DELETE")


def fault(mock, model, **spec):
    mock.post("/_mock/faults", {"model": model, **spec})


def hits(mock, model):
    return mock.get("/_mock/stats")["by_model"].get(model, 0)


def chat(model="gpt-4o", **kw):
    return {"kind": "openai_chat_raw", "model": model, **kw}


def circuit(cage, name):
    for c in cage.json("circuits", "list"):
        if c["circuit"] == name:
            return c
    return None


def wait_circuit(cage, name, what, cond):
    return wait_for(f"circuit {name} to be {what}", lambda: (c := circuit(cage, name)) and cond(c) and c)


def result(cage, name):
    """The agent's result; on failure, the daemon's log and the agent's output."""
    try:
        return cage.result(name)
    except AssertionError as e:
        time.sleep(1)  # failure path only: let the last output lines arrive
        logs = cage.ctl("agents", "logs", name, "-n", "200", check=False).stdout
        status = cage.ctl("--json", "agents", "status", name, check=False).stdout
        raise AssertionError(f"{e}\n--- agent status:\n{status}\n--- agent output:\n{logs}\n"
                             f"--- daemon log:\n{cage.read_log()[-6000:]}") from None


def wait_past(ms):
    """Waits until the wall clock reaches `ms` (Unix milliseconds): the daemon
    and the test read the same clock."""
    wait_for(f"the clock to pass {ms}", lambda: time.time() * 1000 >= ms + 20)


def test_five_failures_open_the_breaker_and_the_sixth_call_goes_straight_to_the_fallback(cage, mock):
    fault(mock, "gpt-4o", status=500)
    plan = [chat(usage="prompt=100,completion=10") for _ in range(6)]
    cage.write([cage.agent("a", plan, fallback=["openai/gpt-4o-mini"])], extra="[breaker]\nretries = 0\n")
    cage.start()
    steps = result(cage, "a")["steps"]
    assert all(s["ok"] for s in steps), steps
    for s in steps:
        assert s["headers"][MODEL] == "gpt-4o-mini", s
        assert s["headers"][FALLBACK_FROM] == "openai/gpt-4o", s
        assert s["models"] == ["gpt-4o-mini"], s
    # Five calls reached the failing model; the sixth did not.
    assert hits(mock, "gpt-4o") == 5
    assert hits(mock, "gpt-4o-mini") == 6
    c = circuit(cage, "openai/gpt-4o")
    assert c["state"] == "open", c
    assert (c["opens"], c["requests"], c["failures"], c["rejected"]) == (1, 5, 5, 1), c
    assert c["next_probe_ms"] - c["last_transition_ms"] == 60_000, c
    assert "5 failures within 60s (last: HTTP 500)" == c["last_reason"], c
    assert circuit(cage, "openai/gpt-4o-mini")["state"] == "closed"
    table = cage.ctl("circuits", "list").stdout
    assert table.splitlines()[0].split() == ["PROVIDER/MODEL", "STATE", "FAILURES", "OPENS", "NEXT-PROBE",
                                             "REQUESTS", "P50", "P99"], table
    row = next(l for l in table.splitlines() if l.startswith("openai/gpt-4o "))
    assert row.split()[1:4] == ["open", "0/5", "1"], table
    assert "circuit openai/gpt-4o opened" in cage.read_log()
    # The cost is booked on the model that answered.
    rows = wait_for("six calls booked", lambda: (r := {x["key"]: x for x in cage.json("costs", "--by", "model")["rows"]})
                    and r.get("openai/gpt-4o-mini", {}).get("calls") == 6 and r)
    assert set(rows) == {"openai/gpt-4o-mini"}, rows
    # An operator can close it again.
    out = cage.json("circuits", "reset", "openai/gpt-4o")
    assert out["ok"] and "was open" in out["message"], out
    assert circuit(cage, "openai/gpt-4o")["state"] == "closed"


def test_retries_with_backoff_before_falling_back(cage, mock):
    fault(mock, "gpt-4o", status=503, count=1)
    plan = [chat(), {"kind": "openai_chat_raw", "model": "gpt-4.1", "max_tokens": 5}]
    cage.write([cage.agent("r", plan, fallback=["openai/gpt-4o-mini"])], extra="[breaker]\nretry_backoff_ms = 10\n")
    fault(mock, "gpt-4.1", status=502, count=2)
    cage.start()
    first, second = result(cage, "r")["steps"]
    # One failure, then the retry on the same model answered: no fallback.
    assert first["ok"] and first["headers"][MODEL] == "gpt-4o" and FALLBACK_FROM not in first["headers"], first
    assert hits(mock, "gpt-4o") == 2
    # Two failures (the try and its one retry), then the fallback.
    assert second["ok"] and second["headers"][MODEL] == "gpt-4o-mini", second
    assert hits(mock, "gpt-4.1") == 2 and hits(mock, "gpt-4o-mini") == 1
    assert circuit(cage, "openai/gpt-4.1")["failures_in_window"] == 2


def test_after_the_cooldown_exactly_one_probe_goes_through_with_many_concurrent_agents(cage, mock):
    fault(mock, "gpt-4o", status=500)
    d = cage.dir
    probers = [f"p{i}" for i in range(6)]
    burst = {"kind": "concurrent", "n": 4, "call": {"model": "gpt-4o"}}
    agents = [cage.agent("opener", [chat() for _ in range(5)], fallback=["openai/gpt-4o-mini"])]
    agents += [cage.agent(p, [{"kind": "wait_file", "ready": str(d / f"{p}.ready"), "path": str(d / "go")}, burst],
                          fallback=["openai/gpt-4o-mini"]) for p in probers]
    agents.append(cage.agent("closer", [{"kind": "wait_file", "path": str(d / "go2")}, chat()],
                             fallback=["openai/gpt-4o-mini"]))
    cage.write(agents, extra="[breaker]\nretries = 0\ncooldown_secs = 4\n")
    cage.start()
    assert all(s["ok"] for s in result(cage, "opener")["steps"])
    c = wait_circuit(cage, "openai/gpt-4o", "open", lambda c: c["state"] == "open")
    assert c["opens"] == 1 and c["next_probe_ms"] - c["last_transition_ms"] == 4_000, c
    wait_for("every prober at the barrier", lambda: all((d / f"{p}.ready").exists() for p in probers))
    wait_past(c["next_probe_ms"])
    before = hits(mock, "gpt-4o")
    assert before == 5
    (d / "go").touch()
    results = [r for p in probers for r in result(cage, p)["steps"][1]["results"]]
    assert len(results) == 24 and all(r["ok"] for r in results), results
    # 24 calls from 6 agents at once, exactly one probe reached the model.
    assert hits(mock, "gpt-4o") == before + 1
    # ... and, failing, fell back like the 23 calls turned away.
    assert hits(mock, "gpt-4o-mini") == 5 + 24
    c = circuit(cage, "openai/gpt-4o")
    assert c["state"] == "open" and c["opens"] == 2, c
    assert c["last_reason"] == "the probe call failed: HTTP 500", c
    assert c["rejected"] == 23, c

    # The outage ends: the next probe succeeds and closes the circuit.
    mock.post("/_mock/faults", method="DELETE")
    wait_past(c["next_probe_ms"])
    (d / "go2").touch()
    step = result(cage, "closer")["steps"][1]
    assert step["ok"] and step["headers"][MODEL] == "gpt-4o" and FALLBACK_FROM not in step["headers"], step
    c = circuit(cage, "openai/gpt-4o")
    assert c["state"] == "closed" and c["next_probe_ms"] is None, c
    log = cage.read_log()
    assert "circuit openai/gpt-4o half-open" in log and "circuit openai/gpt-4o closed" in log


def test_429_with_retry_after_opens_the_circuit_for_that_long(cage, mock):
    fault(mock, "gpt-4o", status=429, retry_after=7, count=1)
    d = cage.dir
    cage.write([cage.agent("limited", [chat()], fallback=["openai/gpt-4o-mini"]),
                cage.agent("alone", [{"kind": "wait_file", "path": str(d / "go")}, chat()])],
               extra="[breaker]\nretries = 0\n")
    cage.start()
    step = result(cage, "limited")["steps"][0]
    assert step["ok"] and step["headers"][MODEL] == "gpt-4o-mini", step
    c = circuit(cage, "openai/gpt-4o")
    assert c["state"] == "open" and c["opens"] == 1, c
    # Held for exactly the provider's Retry-After (the Rust clock tests check
    # the hold itself), not the 60 s cooldown.
    assert c["next_probe_ms"] - c["last_transition_ms"] == 7_000, c
    assert c["last_reason"] == "HTTP 429, Retry-After 7s", c
    # An agent with no fallback gets a clear 503 naming the circuit and when it retries.
    (d / "go").touch()
    step = result(cage, "alone")["steps"][1]
    assert not step["ok"] and step["status"] == 503, step
    assert "circuit openai/gpt-4o is open (next probe in" in step["message"], step
    assert 1 <= int(step["headers"]["retry-after"]) <= 7, step
    assert hits(mock, "gpt-4o") == 1


def test_a_stream_falls_back_before_its_first_byte_but_not_after(cage, mock):
    fault(mock, "gpt-4o", drop_after=0)    # 200 and headers, then the connection dies
    fault(mock, "gpt-4.1", drop=True)      # no answer at all
    fault(mock, "o3", drop_after=3)        # three events reach the agent, then it dies
    fault(mock, "claude-sonnet-4-5", drop_after=0)
    plan = [chat("gpt-4o", stream=True, max_tokens=5), chat("gpt-4.1", stream=True, max_tokens=5),
            chat("o3", stream=True, max_tokens=5),
            {"kind": "anthropic_messages", "model": "claude-sonnet-4-5", "stream": True, "max_tokens": 5}]
    chain = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5"]
    cage.write([cage.agent("s", plan, fallback=chain)], extra="[breaker]\nretries = 0\n")
    cage.start()
    before, dropped, mid, claude = result(cage, "s")["steps"]
    for s in (before, dropped):
        assert s["ok"] and s["text"] == "w1 w2 w3 w4 w5", s
        assert s["models"] == ["gpt-4o-mini"] and s["headers"][MODEL] == "gpt-4o-mini", s
    # Mid-stream: the agent sees the break; nothing was retried elsewhere.
    assert not mid["ok"] and mid["broke"], mid
    assert mid["models"] == ["o3"] and 0 < mid["chunks"] < 7, mid
    # The chain stays within the API family: an Anthropic call falls back to the Anthropic entry.
    assert claude["ok"] and claude["text"] == "w1 w2 w3 w4 w5", claude
    assert hits(mock, "claude-haiku-4-5") == 1
    assert hits(mock, "gpt-4o-mini") == 2
    for m in ("gpt-4o", "gpt-4.1", "o3", "claude-sonnet-4-5"):
        assert hits(mock, m) == 1, m
    assert circuit(cage, "openai/gpt-4o")["failures_in_window"] == 1
    assert circuit(cage, "openai/gpt-4.1")["failures_in_window"] == 1
    # A stream that broke after its first event does not count against the model.
    assert circuit(cage, "openai/o3")["failures_in_window"] == 0


def test_fallback_never_picks_a_model_the_budget_cannot_afford(cage, mock):
    prices = price_table()
    fault(mock, "gpt-4o", status=500)
    d = cage.dir
    call = chat(max_tokens=1000, usage="prompt=100,completion=10")
    # Worst cases at 1000 output tokens: gpt-4o ~$0.01, o1 ~$0.06, gpt-4o-mini ~$0.0006.
    cage.write([cage.agent("thrifty", [call], fallback=["openai/o1", "openai/gpt-4o-mini"],
                           budget_usd=0.03, budget_period="total"),
                cage.agent("stuck", [{"kind": "wait_file", "path": str(d / "go")}, call], fallback=["openai/o1"],
                           budget_usd=0.03, budget_period="total")],
               extra="[breaker]\nretries = 0\n")
    cage.start()
    step = result(cage, "thrifty")["steps"][0]
    assert step["ok"] and step["headers"][MODEL] == "gpt-4o-mini", step
    assert hits(mock, "o1") == 0 and hits(mock, "gpt-4o") == 1 and hits(mock, "gpt-4o-mini") == 1
    p = prices["gpt-4o-mini"]
    cost = micros_from_picos(100 * picos(p["input_cost_per_token"]) + 10 * picos(p["output_cost_per_token"]))
    cage.wait_spent("thrifty", cost)
    # With only an unaffordable fallback left, the agent is told why.
    (d / "go").touch()
    step = result(cage, "stuck")["steps"][1]
    assert not step["ok"] and step["status"] == 503, step
    assert "openai/gpt-4o: failed (HTTP 500)" in step["message"], step
    assert "openai/o1: skipped:" in step["message"] and "cannot cover this call" in step["message"], step
    assert hits(mock, "o1") == 0
    assert cage.budget("stuck")["spent"] == 0


def test_401_does_not_open_the_breaker(cage, mock):
    fault(mock, "gpt-4o", status=401)
    cage.write([cage.agent("badkey", [chat() for _ in range(7)], fallback=["openai/gpt-4o-mini"])],
               extra="[breaker]\nretries = 0\n")
    cage.start()
    steps = result(cage, "badkey")["steps"]
    # A key problem goes to the agent as it is: no retry, no fallback.
    assert all(not s["ok"] and s["status"] == 401 and s["type"] == "AuthenticationError" for s in steps), steps
    assert hits(mock, "gpt-4o") == 7 and hits(mock, "gpt-4o-mini") == 0
    c = circuit(cage, "openai/gpt-4o")
    assert (c["state"], c["failures_in_window"], c["failures"], c["requests"]) == ("closed", 0, 0, 7), c
    # The operator is alerted once, not seven times.
    assert cage.read_log().count("the provider rejected the API key") == 1


def test_breakers_are_shared_across_agents(cage, mock):
    fault(mock, "gpt-4o", status=529)
    d = cage.dir
    cage.write([cage.agent("first", [chat() for _ in range(5)], fallback=["openai/gpt-4o-mini"]),
                cage.agent("second", [{"kind": "wait_file", "path": str(d / "go")}, chat()],
                           fallback=["openai/gpt-4o-mini"])],
               extra="[breaker]\nretries = 0\n")
    cage.start()
    assert all(s["ok"] for s in result(cage, "first")["steps"])
    assert circuit(cage, "openai/gpt-4o")["state"] == "open"
    (d / "go").touch()
    step = result(cage, "second")["steps"][1]
    # The second agent never touched the failing model: the first one's failures opened it for both.
    assert step["ok"] and step["headers"][MODEL] == "gpt-4o-mini", step
    assert hits(mock, "gpt-4o") == 5
    assert [c["circuit"] for c in cage.json("circuits", "list")].count("openai/gpt-4o") == 1
