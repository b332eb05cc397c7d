"""The PII policy through the gateway, with the real openai/anthropic SDKs.

Agents run tests/python/agents/pii_agent.py under a real ironcaged whose providers
point at the mock provider; the mock records every request it received
(/_mock/requests), so each test asserts what reached the provider, and, with
x-mock-reply, what the provider said versus what the agent saw."""

import json
import os
import re
import subprocess

import pytest

from conftest import binary, wait_for

EMAIL = "jane.doe@example.com"
OPENAI_KEY = "sk-proj-Q2x9Lm4Tz8Kp1Rw7Yb3Nc6Vd5Fg0Hj2Kl4Mn6Pq8Rs"
IP = "203.0.113.7"
NOBODY = 65534


def user(text):
    return [{"role": "user", "content": text}]


def recorded(mock, marker):
    """Recorded requests whose body mentions marker."""
    return [r for r in mock.get("/_mock/requests") if marker in json.dumps(r["body"])]


def only(mock, marker):
    found = recorded(mock, marker)
    assert len(found) == 1, f"{marker}: {len(found)} recorded requests"
    return found[0]["body"]


def run(cage, name, plan, pii, extra=""):
    cage.write([cage.agent(name, plan, script="pii_agent.py", pii=pii)], extra=extra)
    cage.start()
    return cage.result(name)["steps"]


def test_prompt_policy_matrix_redacts_blocks_and_allows(cage, mock):
    mock.post("/_mock/reset")
    tool_messages = [
        {"role": "user", "content": "m4 look the customer up"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "lookup", "arguments": json.dumps({"email": EMAIL})}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": f"found {EMAIL}"},
    ]
    plan = [
        {"kind": "chat", "messages": user(f"m1 please email {EMAIL} about the refund")},
        {"kind": "chat", "messages": user(f"m2 use key {OPENAI_KEY} now")},
        {"kind": "chat", "messages": user(f"m3 server {IP} is down")},
        {"kind": "chat", "messages": tool_messages},
        {"kind": "chat", "stream": True, "messages": [
            {"role": "user", "content": [{"type": "text", "text": f"m5 parts {EMAIL}"}]}]},
        {"kind": "messages", "system": f"m6 system {EMAIL}", "messages": user(f"m6 hi {EMAIL}")},
        {"kind": "responses", "instructions": f"m7 ins {EMAIL}", "input": f"m7 input {EMAIL}"},
    ]
    steps = run(cage, "p", plan, {"prompt": {"email": "redact", "secrets": "block", "ip": "allow"}})
    for i in (0, 2, 3, 4, 5, 6):
        assert steps[i]["ok"], steps[i]

    # Redacted before it reached the provider.
    assert only(mock, "m1 ")["messages"][0]["content"] == "m1 please email [EMAIL] about the refund"
    # Blocked: the SDK raises a 400 naming the kind, never the value; nothing reached the provider.
    b = steps[1]
    assert (b["ok"], b["status"], b["code"]) == (False, 400, "pii_blocked"), b
    assert "openai_key" in b["message"] and OPENAI_KEY not in b["message"], b
    assert recorded(mock, "m2 ") == [] and recorded(mock, OPENAI_KEY) == []
    # Allowed: the IP address passes unchanged.
    assert only(mock, "m3 ")["messages"][0]["content"] == f"m3 server {IP} is down"
    # Tool-call arguments and tool results.
    body = only(mock, "m4 ")
    assert json.loads(body["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"email": "[EMAIL]"}
    assert body["messages"][2]["content"] == "found [EMAIL]"
    # Content parts.
    assert only(mock, "m5 ")["messages"][0]["content"][0]["text"] == "m5 parts [EMAIL]"
    # Anthropic system and messages.
    body = only(mock, "m6 ")
    system = body["system"] if isinstance(body["system"], str) else body["system"][0]["text"]
    assert system == "m6 system [EMAIL]"
    assert body["messages"][0]["content"] in ("m6 hi [EMAIL]", [{"type": "text", "text": "m6 hi [EMAIL]"}])
    # Responses API instructions and input.
    body = only(mock, "m7 ")
    assert body["instructions"] == "m7 ins [EMAIL]" and body["input"] == "m7 input [EMAIL]"

    everything = json.dumps(mock.get("/_mock/requests"))
    assert EMAIL not in everything
    log = cage.read_log()
    assert "jane" not in log and OPENAI_KEY not in log
    assert "openai_key" in log  # the block is logged by kind
    # ... and is on the audit trail, by kind, with the agent as actor.
    blocks = cage.wait_audit("the PII block entry", lambda e: e["action"] == "pii block")
    assert [(e["actor_agent"], e["outcome"]) for e in blocks] == [("p", "denied")], blocks
    assert blocks[0]["detail"].startswith("prompt: ") and "openai_key" in blocks[0]["detail"], blocks
    assert OPENAI_KEY not in json.dumps(cage.audit()) and EMAIL not in json.dumps(cage.audit())


def test_output_is_redacted_even_when_split_across_stream_events(cage, mock):
    reply = {"x-mock-reply": f"Contact {EMAIL} for details", "x-mock-reply-chunk": "3"}
    secret = {"x-mock-reply": f"the key is {OPENAI_KEY} ok", "x-mock-reply-chunk": "4"}
    plan = [
        {"kind": "chat", "stream": True, "messages": user("o1"), "headers": reply},
        {"kind": "chat", "messages": user("o2"), "headers": reply},
        {"kind": "messages", "stream": True, "messages": user("o3"), "headers": reply},
        {"kind": "messages", "messages": user("o4"), "headers": reply},
        {"kind": "responses", "stream": True, "input": "o5", "headers": reply},
        {"kind": "responses", "input": "o6", "headers": reply},
        {"kind": "chat", "stream": True, "messages": user("o7"), "headers": secret},
        {"kind": "chat", "messages": user("o8"), "headers": secret},
        {"kind": "messages", "stream": True, "messages": user("o9"), "headers": secret},
    ]
    steps = run(cage, "o", plan, {"output": {"email": "redact", "secrets": "block"}})
    want = "Contact [EMAIL] for details"
    for i in range(6):
        assert steps[i]["ok"] and steps[i]["text"] == want, (i, steps[i])
    assert steps[4]["final"] == want, steps[4]

    # A blocked kind in a stream ends it with an error the SDK raises; the
    # value never reached the agent.
    for i in (6, 8):
        s = steps[i]
        assert not s["ok"] and "openai_key" in s["message"] and OPENAI_KEY not in s["message"], s
    assert steps[6]["code"] == "pii_blocked_output", steps[6]
    s = steps[7]
    assert (s["ok"], s["status"], s["code"]) == (False, 422, "pii_blocked_output"), s
    log = cage.read_log()
    assert EMAIL not in log and OPENAI_KEY not in log


def test_tool_call_history_and_streamed_answer_are_both_redacted(cage, mock):
    # The mock streams plain text; a tool call's arguments are covered by the
    # Rust tests of the stream filter. Here: tool-call arguments in a
    # non-streamed *request* history, under the output policy too (nothing to
    # redact in the answer), so both directions are active at once.
    plan = [{"kind": "chat", "stream": True, "messages": [
        {"role": "user", "content": "t1 go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "mail", "arguments": json.dumps({"to": EMAIL})}}]},
        {"role": "tool", "tool_call_id": "c", "content": "sent"}],
        "headers": {"x-mock-reply": f"mailed {EMAIL}", "x-mock-reply-chunk": "2"}}]
    steps = run(cage, "t", plan, {"prompt": {"email": "redact"}, "output": {"email": "redact"}})
    assert steps[0]["ok"] and steps[0]["text"] == "mailed [EMAIL]", steps[0]
    body = only(mock, "t1 go")
    assert json.loads(body["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"to": "[EMAIL]"}


def test_anthropic_thinking_and_documents_are_scanned_both_ways(cage, mock):
    # Answers: the model's visible reasoning (a thinking block, plain and
    # streamed in small pieces) passes the output policy like its text.
    thinking = {"x-mock-thinking": f"The user is {EMAIL}.", "x-mock-reply-chunk": "3"}
    secret = {"x-mock-thinking": f"use {OPENAI_KEY} here", "x-mock-reply-chunk": "4"}
    # Requests: thinking sent back in the history and a plain-text document.
    history = [
        {"role": "user", "content": [
            {"type": "document", "title": "Notes",
             "source": {"type": "text", "media_type": "text/plain", "data": f"h1 contact {EMAIL}"}},
            {"type": "text", "text": "h1 summarise"}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": f"h1 they wrote from {EMAIL}", "signature": "EqQBmock"},
            {"type": "text", "text": "Done."}]},
        {"role": "user", "content": "h1 thanks"},
    ]
    plan = [
        {"kind": "messages", "messages": user("k1"), "headers": thinking},
        {"kind": "messages", "stream": True, "messages": user("k2"), "headers": thinking},
        {"kind": "messages", "stream": True, "messages": user("k3"), "headers": secret},
        {"kind": "messages", "messages": user("k4"), "headers": secret},
        {"kind": "messages", "messages": history},
    ]
    steps = run(cage, "k", plan, {"prompt": {"email": "redact"},
                                  "output": {"email": "redact", "secrets": "block"}})
    want = "The user is [EMAIL]."
    assert steps[0]["ok"] and steps[0]["thinking"] == want, steps[0]
    assert steps[1]["ok"] and steps[1]["thinking"] == want, steps[1]
    assert steps[1]["final_thinking"] == want, steps[1]
    assert steps[0]["text"] and steps[1]["text"], steps[:2]
    s = steps[2]
    assert not s["ok"] and "openai_key" in s["message"] and OPENAI_KEY not in s["message"], s
    s = steps[3]
    assert (s["ok"], s["status"]) == (False, 422), s
    assert "openai_key" in s["message"] and OPENAI_KEY not in s["message"], s

    assert steps[4]["ok"], steps[4]
    body = only(mock, "h1 summarise")
    assert body["messages"][0]["content"][0]["source"]["data"] == "h1 contact [EMAIL]"
    assert body["messages"][1]["content"][0] == {
        "type": "thinking", "thinking": "h1 they wrote from [EMAIL]", "signature": "EqQBmock"}
    log = cage.read_log()
    assert EMAIL not in log and OPENAI_KEY not in log


def test_scanning_that_cannot_complete_blocks_the_call(cage, mock):
    # Reversible tokens with a damaged key file: the email cannot be tokenized,
    # so the call is blocked (fail closed) and nothing reaches the provider.
    cage.state.mkdir(parents=True, exist_ok=True)
    key = cage.state / "pii-vault.key"
    key.write_bytes(b"short")
    os.chmod(key, 0o600)
    plan = [
        {"kind": "chat", "messages": user(f"f1 write to {EMAIL}")},
        {"kind": "chat", "messages": user("f2 nothing personal here")},
        {"kind": "legacy", "prompt": "f3 an unmetered path"},
    ]
    steps = run(cage, "f", plan, {"prompt": {"email": "redact"}, "style": "token"},
                extra="allow_unmetered_paths = true")
    s = steps[0]
    assert (s["ok"], s["status"], s["code"]) == (False, 400, "pii_scan_failed"), s
    assert "pii-vault.key" in s["message"] and EMAIL not in s["message"], s
    assert recorded(mock, "f1 ") == []
    # A prompt with nothing to redact needs no token and goes through.
    assert steps[1]["ok"], steps[1]
    assert len(recorded(mock, "f2 ")) == 1
    # A body on a path whose text fields the policy does not know is blocked too.
    s = steps[2]
    assert (s["ok"], s["status"], s["code"]) == (False, 400, "pii_scan_failed"), s
    assert recorded(mock, "f3 ") == []


def run_as(cage, uid, *args):
    return subprocess.run([binary("ironctl"), "--socket", str(cage.socket), *args],
                          capture_output=True, text=True, timeout=60, user=uid, group=uid, extra_groups=[])


def test_a_log_policy_passes_the_prompt_and_logs_kinds_and_spans_never_values(cage, mock):
    mock.post("/_mock/reset")
    plan = [{"kind": "chat", "messages": user(f"l1 mail {EMAIL} now")}]
    steps = run(cage, "l", plan, {"prompt": {"email": "log"}})
    assert steps[0]["ok"], steps[0]
    assert only(mock, "l1 ")["messages"][0]["content"] == f"l1 mail {EMAIL} now"
    log = re.sub(r"\x1b\[[0-9;]*m", "", cage.read_log())
    found = [line for line in log.splitlines() if "PII found: " in line and "agent=l " in line]
    assert len(found) == 1 and "email:log field 1 bytes 8..28" in found[0] and "findings=1" in found[0], found
    assert "jane" not in log


MASTER_KEY = "pytest master key for the PII token key, long enough"


def test_with_a_master_key_tokens_are_sealed_with_it_and_the_key_file_goes(cage, mock):
    mock.post("/_mock/reset")
    plan = [{"kind": "chat", "messages": user(f"k1 customer {EMAIL} called")}]
    steps = run(cage, "k", plan, {"prompt": {"email": "redact"}, "style": "token"})
    assert steps[0]["ok"], steps[0]

    def tokens():
        return [re.fullmatch(r"k1 customer \[EMAIL:(tok_[0-9a-f]{24})\] called",
                             r["body"]["messages"][0]["content"]).group(1)
                for r in recorded(mock, "k1 ")]

    [before] = tokens()
    key_file = cage.state / "pii-vault.key"
    assert key_file.exists()
    cage.stop()

    # Started with a master key: the older token moves under it, the file goes,
    # and the agent's second run mints under the master key at once.
    cage.start(env={"IRON_SECRETS_MASTER_KEY": MASTER_KEY})
    after = wait_for("the agent's second call", lambda: (t := tokens()) and len(t) == 2 and t[1])
    assert not key_file.exists()
    for t in (before, after):
        assert cage.ctl("pii", "reveal", t).stdout == EMAIL + "\n"
    log = re.sub(r"\x1b\[[0-9;]*m", "", cage.read_log())
    assert "tokens=1" in log and "PII tokens re-sealed with the secrets master key" in log, log
    assert "jane" not in log and MASTER_KEY not in log
    [entry] = cage.wait_audit("the re-seal's audit entry", lambda e: e["action"] == "pii_tokens_resealed")
    assert entry["target"] == "pii-vault.key" and "1 tokens re-sealed" in entry["detail"] \
        and "was deleted" in entry["detail"], entry
    cage.stop()

    # Without the master key, neither opens, and the error says what to do.
    cage.start()
    for t in (before, after):
        r = cage.ctl("pii", "reveal", t, check=False)
        assert r.returncode == 1 and "master key" in r.stderr and EMAIL not in r.stdout + r.stderr, r


def test_reversible_token_is_revealed_to_admins_only(cage, mock):
    plan = [{"kind": "chat", "messages": user(f"r1 customer {EMAIL} called")}]
    extra = f'\n[daemon]\nsocket_group = "nogroup"\n\n[access]\nviewers = ["uid:{NOBODY}"]\n'
    steps = run(cage, "r", plan, {"prompt": {"email": "redact"}, "style": "token"}, extra=extra)
    assert steps[0]["ok"], steps[0]
    sent = only(mock, "r1 ")["messages"][0]["content"]
    m = re.fullmatch(r"r1 customer \[EMAIL:(tok_[0-9a-f]{24})\] called", sent)
    assert m, sent
    token = m.group(1)
    key = cage.state / "pii-vault.key"
    assert oct(key.stat().st_mode & 0o777) == "0o600"

    assert cage.ctl("pii", "reveal", token).stdout == EMAIL + "\n"
    j = cage.json("pii", "reveal", f"[EMAIL:{token}]")
    assert j == {"token": token, "kind": "email", "value": EMAIL}
    missing = cage.ctl("pii", "reveal", "tok_" + "0" * 24, check=False)
    assert missing.returncode == 1 and "no PII token" in missing.stderr, missing
    bad = cage.ctl("pii", "reveal", EMAIL, check=False)
    assert bad.returncode == 1 and "not a PII token" in bad.stderr and "jane" not in bad.stderr, bad

    if os.geteuid() == 0:
        v = run_as(cage, NOBODY, "pii", "reveal", token)
        assert v.returncode == 1 and "admin" in v.stderr and EMAIL not in v.stdout + v.stderr, v
        # The viewer can still read.
        assert run_as(cage, NOBODY, "daemon", "ping").returncode == 0
    else:
        print("SKIP viewer part: needs root to run ironctl as another uid")

    log = re.sub(r"\x1b\[[0-9;]*m", "", cage.read_log())
    assert "jane" not in log
    reveals = [line for line in log.splitlines() if 'event="pii_reveal"' in line]
    assert len(reveals) == 2 and all(f'uid=0 token="{token}" kind="email"' in line for line in reveals), reveals
    failed = [line for line in log.splitlines() if 'event="pii_reveal_failed"' in line]
    assert len(failed) == 2 and 'token="(not a token)"' in failed[1], failed
