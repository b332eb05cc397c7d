"""A test agent for the PII policy: runs a JSON plan of raw SDK calls (messages
given verbatim, so tool calls and content parts can be sent) through the gateway
with the real openai/anthropic SDKs, and writes what came back to RESULT_FILE."""

import json
import os
import sys

import anthropic
import openai


def err(e):
    body = getattr(e, "body", None)
    code = None
    if isinstance(body, dict):
        code = body.get("code")
        if code is None and isinstance(body.get("error"), dict):
            code = body["error"].get("code")
    return {"ok": False, "status": getattr(e, "status_code", None), "message": str(e),
            "type": type(e).__name__, "code": code}


def chat(client, step):
    kw = dict(model=step.get("model", "gpt-4o-mini"), messages=step["messages"],
              max_tokens=step.get("max_tokens", 10), extra_headers=step.get("headers", {}))
    try:
        if step.get("stream"):
            text, args = [], []
            for c in client.chat.completions.create(stream=True, **kw):
                if not c.choices:
                    continue
                d = c.choices[0].delta
                text.append(d.content or "")
                for tc in d.tool_calls or []:
                    args.append(tc.function.arguments or "")
            return {"ok": True, "text": "".join(text), "args": "".join(args)}
        r = client.chat.completions.create(**kw)
        return {"ok": True, "text": r.choices[0].message.content}
    except (openai.APIStatusError, openai.APIError) as e:
        return err(e)


def legacy(client, step):
    """The legacy completions API: not one the gateway meters (an unmetered path)."""
    try:
        r = client.completions.create(model=step.get("model", "gpt-3.5-turbo-instruct"),
                                      prompt=step["prompt"], max_tokens=5)
        return {"ok": True, "text": r.choices[0].text}
    except (openai.APIStatusError, openai.APIError) as e:
        return err(e)


def responses(client, step):
    kw = dict(model=step.get("model", "gpt-4o-mini"), input=step["input"],
              max_output_tokens=step.get("max_tokens", 10), extra_headers=step.get("headers", {}))
    if "instructions" in step:
        kw["instructions"] = step["instructions"]
    try:
        if step.get("stream"):
            deltas, final = [], None
            for e in client.responses.create(stream=True, **kw):
                if e.type == "response.output_text.delta":
                    deltas.append(e.delta)
                if e.type == "response.completed":
                    final = e.response.output_text
            return {"ok": True, "text": "".join(deltas), "final": final}
        r = client.responses.create(**kw)
        return {"ok": True, "text": r.output_text}
    except (openai.APIStatusError, openai.APIError) as e:
        return err(e)


def messages(client, step):
    kw = dict(model=step.get("model", "claude-haiku-4-5"), max_tokens=step.get("max_tokens", 10),
              messages=step["messages"], extra_headers=step.get("headers", {}))
    if "system" in step:
        kw["system"] = step["system"]
    try:
        if step.get("stream"):
            text, thinking = [], []
            with client.messages.stream(**kw) as s:
                for e in s:
                    if e.type == "content_block_delta" and e.delta.type == "text_delta":
                        text.append(e.delta.text)
                    if e.type == "content_block_delta" and e.delta.type == "thinking_delta":
                        thinking.append(e.delta.thinking)
                final = s.get_final_message()
            return {"ok": True, "text": "".join(text), "thinking": "".join(thinking),
                    "final_thinking": "".join(b.thinking for b in final.content if b.type == "thinking")}
        m = client.messages.create(**kw)
        return {"ok": True, "text": "".join(b.text for b in m.content if b.type == "text"),
                "thinking": "".join(b.thinking for b in m.content if b.type == "thinking")}
    except (anthropic.APIStatusError, anthropic.APIError) as e:
        return err(e)


def main():
    plan = json.loads(os.environ.get("PLAN", "[]"))
    oa = openai.OpenAI(max_retries=0)
    an = anthropic.Anthropic(max_retries=0)
    out = {"steps": []}
    for step in plan:
        kind = step["kind"]
        if kind == "chat":
            r = chat(oa, step)
        elif kind == "legacy":
            r = legacy(oa, step)
        elif kind == "responses":
            r = responses(oa, step)
        elif kind == "messages":
            r = messages(an, step)
        elif kind == "print":
            print(step["text"], file=sys.stderr if step.get("stderr") else sys.stdout, flush=True)
            r = {"ok": True}
        else:
            r = {"ok": False, "message": f"unknown step kind {kind}"}
        out["steps"].append(r)
    tmp = os.environ["RESULT_FILE"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, os.environ["RESULT_FILE"])
    print("plan done", flush=True)


if __name__ == "__main__":
    main()
