"""The gateway and the budget ledger, end to end with the real SDKs.

Each test runs agents under a real ironcaged whose providers point at the mock
provider; the mock reports exactly the usage a test asks for (x-mock-usage), and
the test prices it by hand from the built-in price table."""

import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from conftest import REAL_ANTHROPIC_KEY, REAL_OPENAI_KEY, micros_from_picos, picos, price_table, wait_for

PRICES = price_table()


def price(model, field, fallback=None):
    e = PRICES[model]
    if field in e and e[field] is not None:
        return picos(e[field])
    return picos(e[fallback]) if fallback else 0


def openai_cost(model, prompt, completion, cached=0, reasoning=0):
    """OpenAI: prompt_tokens INCLUDE cached tokens; completion_tokens INCLUDE reasoning."""
    p = ((prompt - cached) * price(model, "input_cost_per_token")
         + cached * price(model, "cache_read_input_token_cost", "input_cost_per_token")
         + (completion - reasoning) * price(model, "output_cost_per_token")
         + reasoning * price(model, "output_cost_per_reasoning_token", "output_cost_per_token"))
    return micros_from_picos(p)


def anthropic_cost(model, inp, out, cache_write=0, cache_read=0):
    """Anthropic: input_tokens EXCLUDE cache writes and reads."""
    p = (inp * price(model, "input_cost_per_token")
         + out * price(model, "output_cost_per_token")
         + cache_write * price(model, "cache_creation_input_token_cost", "input_cost_per_token")
         + cache_read * price(model, "cache_read_input_token_cost", "input_cost_per_token"))
    return micros_from_picos(p)


def test_sync_async_and_streaming_calls_are_metered_to_the_micro_dollar(cage):
    plan = [
        {"kind": "openai_chat", "model": "gpt-4o", "usage": "prompt=1200,completion=300", "tag": "sync"},
        {"kind": "openai_chat_async", "model": "gpt-4o", "usage": "prompt=800,completion=200", "tag": "async"},
        {"kind": "openai_chat", "model": "gpt-4o-mini", "stream": True, "usage": "prompt=5000,completion=7",
         "max_tokens": 7, "tag": "stream"},
        {"kind": "openai_chat", "model": "gpt-4o-mini", "stream": True, "include_usage": True,
         "usage": "prompt=4000,completion=5", "max_tokens": 5, "tag": "stream"},
        {"kind": "openai_responses", "model": "gpt-4o", "usage": "prompt=1000,completion=100", "tag": "responses"},
        {"kind": "openai_responses", "model": "gpt-4o", "stream": True, "usage": "prompt=2000,completion=10",
         "max_tokens": 10, "tag": "responses"},
        {"kind": "openai_embeddings", "model": "text-embedding-3-small", "usage": "prompt=3000", "tag": "embed"},
        {"kind": "anthropic_messages", "model": "claude-sonnet-4-5", "usage": "prompt=1500,completion=400",
         "max_tokens": 400, "tag": "claude"},
        {"kind": "anthropic_messages", "model": "claude-sonnet-4-5", "stream": True,
         "usage": "prompt=900,completion=8", "max_tokens": 8, "tag": "claude"},
    ]
    cage.write([cage.agent("meter", plan)])
    cage.start()
    res = cage.result("meter")
    steps = res["steps"]
    assert all(s["ok"] for s in steps), steps
    # The agent that did not ask for stream usage never saw the injected usage chunk;
    # the one that asked got exactly one.
    assert steps[2]["usage_chunks"] == []
    assert len(steps[3]["usage_chunks"]) == 1 and steps[3]["usage_chunks"][0]["prompt_tokens"] == 4000
    assert steps[2]["text"] == "w1 w2 w3 w4 w5 w6 w7"

    expected = {
        "sync": openai_cost("gpt-4o", 1200, 300),
        "async": openai_cost("gpt-4o", 800, 200),
        "stream": openai_cost("gpt-4o-mini", 5000, 7) + openai_cost("gpt-4o-mini", 4000, 5),
        "responses": openai_cost("gpt-4o", 1000, 100) + openai_cost("gpt-4o", 2000, 10),
        "embed": openai_cost("text-embedding-3-small", 3000, 0),
        "claude": anthropic_cost("claude-sonnet-4-5", 1500, 400) + anthropic_cost("claude-sonnet-4-5", 900, 8),
    }
    total = sum(expected.values())
    cage.wait_spent("meter", total)
    costs = cage.json("costs", "--by", "tag")
    got = {r["key"]: r["cost"] for r in costs["rows"]}
    assert got == expected, (got, expected)
    assert costs["total"] == total
    assert all(r["estimated_calls"] == 0 for r in costs["rows"])
    by_provider = {r["key"]: r["calls"] for r in cage.json("costs", "--by", "provider")["rows"]}
    assert by_provider == {"openai": 7, "anthropic": 2}


def test_invoice_regressions_cached_and_reasoning_tokens(cage):
    plan = [
        # OpenAI: 10,000 prompt tokens of which 8,000 cached; 2,000 completion of which 1,500 reasoning.
        {"kind": "openai_chat", "model": "o4-mini", "usage": "prompt=10000,completion=2000,cached=8000,reasoning=1500",
         "max_tokens": 2000, "tag": "openai-cache"},
        # Anthropic: 100 uncached input, 20,000 written to cache, 50,000 read from cache, 500 out.
        {"kind": "anthropic_messages", "model": "claude-sonnet-4-5",
         "usage": "prompt=100,completion=500,cache_creation=20000,cache_read=50000", "max_tokens": 500,
         "tag": "anthropic-cache"},
    ]
    cage.write([cage.agent("invoice", plan)])
    cage.start()
    steps = cage.result("invoice")["steps"]
    assert all(s["ok"] for s in steps), steps
    want_openai = openai_cost("o4-mini", 10000, 2000, cached=8000, reasoning=1500)
    want_anthropic = anthropic_cost("claude-sonnet-4-5", 100, 500, cache_write=20000, cache_read=50000)
    cage.wait_spent("invoice", want_openai + want_anthropic)
    rows = {r["key"]: r for r in cage.json("costs", "--by", "tag")["rows"]}
    assert rows["openai-cache"]["cost"] == want_openai
    assert rows["openai-cache"]["cache_read_tokens"] == 8000
    assert rows["openai-cache"]["input_tokens"] == 2000
    assert rows["openai-cache"]["reasoning_tokens"] == 1500
    assert rows["anthropic-cache"]["cost"] == want_anthropic
    assert rows["anthropic-cache"]["cache_write_tokens"] == 20000
    assert rows["anthropic-cache"]["cache_read_tokens"] == 50000
    assert rows["anthropic-cache"]["input_tokens"] == 100


def test_concurrent_calls_never_spend_past_the_budget(cage):
    # Each call: ~worst case of a short prompt + 100 output tokens on gpt-4o.
    # The mock holds every response 300 ms so all twenty are in flight together.
    call = {"model": "gpt-4o", "max_tokens": 100, "usage": "prompt=50,completion=100",
            "headers": {"x-mock-delay-ms": "300"}}
    one = openai_cost("gpt-4o", 50, 100)
    budget_micros = one * 5
    plan = [{"kind": "concurrent", "n": 20, "call": call}]
    cage.write([cage.agent("burst", plan, budget_usd=budget_micros / 1e6, budget_period="total")])
    cage.start()
    results = cage.result("burst")["steps"][0]["results"]
    ok = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert len(ok) + len(refused) == 20
    assert 1 <= len(ok) <= 5, results
    assert refused and all(r["status"] == 402 for r in refused), refused
    msg = refused[0]["message"]
    assert "burst" in msg and "budget" in msg and "spent" in msg and "reserved" in msg, msg
    b = cage.wait_spent("burst", one * len(ok))
    assert b["spent"] <= budget_micros
    assert b["reserved"] == 0
    # The cutoff is on the audit trail once for the period, not once per refused call.
    cut = cage.wait_audit("the budget cutoff entry",
                          lambda e: e["action"] == "budget cutoff" and e["target"] == "burst")
    cut = [e for e in cage.audit() if e["action"] == "budget cutoff" and e["target"] == "burst"]
    assert len(cut) == 1, cut
    assert cut[0]["outcome"] == "denied" and "spent" in cut[0]["detail"], cut


def test_a_sigkilled_daemon_keeps_every_settled_cost(cage):
    plan = [{"kind": "openai_chat", "model": "gpt-4o", "usage": f"prompt={100 * i},completion={10 * i}",
             "max_tokens": 10 * i, "tag": "persist"} for i in range(1, 6)]
    cage.write([cage.agent("persist", plan, budget_usd=5.0, budget_period="month")])
    cage.start()
    assert all(s["ok"] for s in cage.result("persist")["steps"])
    want = sum(openai_cost("gpt-4o", 100 * i, 10 * i) for i in range(1, 6))
    cage.wait_spent("persist", want)
    before = cage.json("costs", "--by", "agent")
    cage.kill9()
    os.remove(cage.dir / "persist.json")
    cage.start()
    b = cage.budget("persist")
    assert b["spent"] == want
    assert b["calls"] == 5
    assert cage.json("costs", "--by", "agent") == before


def test_threshold_alerts_fire_once_each(cage):
    alerts = cage.dir / "alerts.jsonl"
    one = openai_cost("gpt-4o", 1000, 100)
    # Budget of 10 calls; 6 calls cross 50 %; 3 more cross 80 %; none reach 100 %.
    plan = [{"kind": "openai_chat", "model": "gpt-4o", "usage": "prompt=1000,completion=100", "max_tokens": 100}] * 9
    cmd = [sys.executable, "-c", f"import sys; open({str(alerts)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"]
    cage.write([cage.agent("alerty", plan, budget_usd=one * 10 / 1e6, budget_period="day")],
               extra="[budget]\nalert_thresholds = [50, 80, 100]\nalert_command = " + json.dumps(cmd))
    cage.start()
    assert all(s["ok"] for s in cage.result("alerty")["steps"])
    cage.wait_spent("alerty", one * 9)
    lines = wait_for("two alerts", lambda: alerts.exists() and len(alerts.read_text().splitlines()) >= 2 and alerts.read_text().splitlines())
    got = [json.loads(l) for l in lines]
    assert sorted(a["threshold_percent"] for a in got) == [50, 80]
    assert all(a["agent"] == "alerty" and a["kind"] == "budget_alert" for a in got)
    assert cage.budget("alerty")["alerts_fired"] == [50, 80]
    entries = wait_for("two budget alert audit entries", lambda: (lambda es: len(es) >= 2 and es)(
        [e for e in cage.audit() if e["action"] == "budget alert" and e["target"] == "alerty"]))
    assert len(entries) == 2 and all("alerty" in e["detail"] for e in entries), entries


def test_agents_never_see_the_real_keys_and_the_provider_does(cage, mock):
    cage.write([cage.agent("envcheck", [{"kind": "openai_chat", "tag": "keycheck-openai"},
                                        {"kind": "anthropic_messages", "tag": "keycheck-anthropic"}])])
    cage.start()
    res = cage.result("envcheck")
    assert all(s["ok"] for s in res["steps"]), res["steps"]
    env_text = json.dumps(res["env"])
    assert REAL_OPENAI_KEY not in env_text and REAL_ANTHROPIC_KEY not in env_text
    assert "TEST_OPENAI_KEY" not in res["env"]
    assert res["env"]["OPENAI_API_KEY"].startswith("ic-vk-")
    assert res["env"]["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    seen = mock.get("/_mock/requests")
    mine = [r for r in seen if r["headers"].get("x-mock-usage") is None and
            r["path"] in ("/v1/chat/completions", "/v1/messages")]
    auths = {r["headers"].get("authorization") or r["headers"].get("x-api-key") for r in mine}
    assert f"Bearer {REAL_OPENAI_KEY}" in auths and REAL_ANTHROPIC_KEY in auths
    assert not any("ic-vk-" in json.dumps(r["headers"]) for r in seen)
    # Nor does the daemon's log carry a real key.
    assert REAL_OPENAI_KEY not in cage.read_log() and REAL_ANTHROPIC_KEY not in cage.read_log()


def test_unknown_virtual_key_gets_a_clear_401(cage):
    cage.write([cage.agent("idle", [])])
    cage.start()
    addr = cage.json("daemon", "status")["gateway_addr"]
    client = openai.OpenAI(base_url=addr + "/v1", api_key="ic-vk-not-a-real-one", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert "virtual API key" in str(e.value)


def test_on_exhausted_stop_stops_the_agent(cage):
    call = {"kind": "openai_chat", "model": "gpt-4o", "usage": "prompt=100,completion=10", "max_tokens": 10}
    cage.write([cage.agent("stopper", [call] * 3, budget_usd=0.000001, on_exhausted="stop",
                           env={"LINGER": "1"})])
    cage.start()

    def stopped():
        st = cage.json("agents", "status", "stopper")
        return st["state"] == "stopped" and st
    st = wait_for("the agent to be stopped by its budget", stopped)
    assert st["stop_reason"] == "budget_exhausted"


def test_budget_set_and_reset_from_ironctl(cage):
    call = {"kind": "openai_chat", "model": "gpt-4o", "usage": "prompt=1000,completion=100", "max_tokens": 100}
    one = openai_cost("gpt-4o", 1000, 100)
    cage.write([cage.agent("ops", [call] * 2, budget_usd=1.0, budget_period="day", env={"LINGER": "1"})])
    cage.start()
    assert all(s["ok"] for s in cage.result("ops")["steps"])
    cage.wait_spent("ops", one * 2)
    # Lower the budget below what is spent: the next call is refused.
    out = cage.ctl("budget", "set", "ops", "--usd", "0.000001", "--period", "day").stdout
    assert "ops" in out
    b = cage.budget("ops")
    assert b["limit"] == 1 and b["overridden"] is True and b["remaining"] == 0
    # A reset zeroes the period's spend; history stays in `costs`.
    cage.ctl("budget", "reset", "ops")
    b = cage.budget("ops")
    assert b["spent"] == 0 and b["calls"] == 0
    assert cage.json("costs", "--agent", "ops")["total"] == one * 2
    # A viewer-only action is fine; a bad amount is a usage error (exit 2).
    r = cage.ctl("budget", "set", "ops", "--usd", "-5", check=False)
    assert r.returncode == 2, r
