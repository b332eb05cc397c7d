"""A test agent: runs a JSON plan of SDK calls through the gateway with the real
openai/anthropic SDKs, writes what it saw to RESULT_FILE, and exits 0.

It uses only what ironcaged put in its environment (base URLs, virtual keys)."""

import asyncio
import json
import os
import sys

import anthropic
import openai


def usage_header(step):
    h = {}
    if "usage" in step:
        h["x-mock-usage"] = step["usage"]
    if "tag" in step:
        h["X-Iron-Cage-Tag"] = step["tag"]
    for k, v in step.get("headers", {}).items():
        h[k] = v
    return h


def err(e):
    return {"ok": False, "status": getattr(e, "status_code", None), "message": str(e),
            "type": type(e).__name__}


def openai_chat(client, step):
    kw = dict(model=step.get("model", "gpt-4o-mini"),
              messages=[{"role": "user", "content": step.get("prompt", "hello there agent")}],
              max_tokens=step.get("max_tokens", 10), extra_headers=usage_header(step))
    try:
        if step.get("stream"):
            if step.get("include_usage"):
                kw["stream_options"] = {"include_usage": True}
            chunks = list(client.chat.completions.create(stream=True, **kw))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            usage_chunks = [c.usage.model_dump() for c in chunks if c.usage is not None]
            return {"ok": True, "text": text, "chunks": len(chunks), "usage_chunks": usage_chunks}
        r = client.chat.completions.create(**kw)
        return {"ok": True, "text": r.choices[0].message.content, "usage": r.usage.model_dump()}
    except openai.APIStatusError as e:
        return err(e)


async def openai_chat_async(client, step):
    kw = dict(model=step.get("model", "gpt-4o-mini"),
              messages=[{"role": "user", "content": step.get("prompt", "hello there agent")}],
              max_tokens=step.get("max_tokens", 10), extra_headers=usage_header(step))
    try:
        r = await client.chat.completions.create(**kw)
        return {"ok": True, "text": r.choices[0].message.content, "usage": r.usage.model_dump()}
    except openai.APIStatusError as e:
        return err(e)


def openai_responses(client, step):
    try:
        kw = dict(model=step.get("model", "gpt-4o-mini"), input=step.get("prompt", "hello there"),
                  max_output_tokens=step.get("max_tokens", 10), extra_headers=usage_header(step))
        if step.get("stream"):
            events = list(client.responses.create(stream=True, **kw))
            done = [e for e in events if e.type == "response.completed"]
            return {"ok": True, "events": len(events), "usage": done[0].response.usage.model_dump() if done else None}
        r = client.responses.create(**kw)
        return {"ok": True, "text": r.output_text, "usage": r.usage.model_dump()}
    except openai.APIStatusError as e:
        return err(e)


def openai_embeddings(client, step):
    try:
        r = client.embeddings.create(model=step.get("model", "text-embedding-3-small"),
                                     input=step.get("prompt", "embed these words"),
                                     extra_headers=usage_header(step))
        return {"ok": True, "dims": len(r.data[0].embedding), "usage": r.usage.model_dump()}
    except openai.APIStatusError as e:
        return err(e)


def anthropic_messages(client, step):
    kw = dict(model=step.get("model", "claude-haiku-4-5"), max_tokens=step.get("max_tokens", 10),
              messages=[{"role": "user", "content": step.get("prompt", "hello there agent")}],
              extra_headers=usage_header(step))
    try:
        if step.get("stream"):
            with client.messages.stream(**kw) as s:
                text = "".join(s.text_stream)
                m = s.get_final_message()
            return {"ok": True, "text": text, "usage": m.usage.model_dump()}
        m = client.messages.create(**kw)
        return {"ok": True, "text": m.content[0].text, "usage": m.usage.model_dump()}
    except anthropic.APIStatusError as e:
        return err(e)


def iron_headers(h):
    """The gateway's own response headers (and Retry-After)."""
    return {k.lower(): v for k, v in h.items() if k.lower().startswith("x-iron-cage-") or k.lower() == "retry-after"}


def openai_chat_raw(client, step):
    """Like openai_chat, through with_raw_response: also reports the HTTP status,
    the gateway's headers, the model of every chunk, and a stream that breaks
    part-way (what arrived before the error)."""
    stream = bool(step.get("stream"))
    kw = dict(model=step.get("model", "gpt-4o-mini"),
              messages=[{"role": "user", "content": step.get("prompt", "hello there agent")}],
              max_tokens=step.get("max_tokens", 10), extra_headers=usage_header(step))
    try:
        raw = client.chat.completions.with_raw_response.create(stream=stream, **kw)
    except openai.APIStatusError as e:
        r = err(e)
        r["headers"] = iron_headers(e.response.headers)
        return r
    except openai.APIConnectionError as e:
        return err(e)
    out = {"ok": True, "status": raw.status_code, "headers": iron_headers(raw.headers)}
    if stream:
        texts, models = [], []
        try:
            for c in raw.parse():
                models.append(c.model)
                if c.choices:
                    texts.append(c.choices[0].delta.content or "")
        except Exception as e:  # a stream broken mid-way surfaces while iterating
            out.update(ok=False, broke=True, message=str(e), type=type(e).__name__)
        out.update(text="".join(texts), chunks=len(models), models=sorted(set(models)))
    else:
        r = raw.parse()
        out.update(text=r.choices[0].message.content, models=[r.model])
    return out


def wait_file(step):
    """A barrier: touches step["ready"] (if given), then waits for step["path"]."""
    import time
    if "ready" in step:
        open(step["ready"], "w").close()
    deadline = time.monotonic() + step.get("timeout", 120)
    while not os.path.exists(step["path"]):
        if time.monotonic() > deadline:
            return {"ok": False, "message": f"timed out waiting for {step['path']}"}
        time.sleep(0.005)
    return {"ok": True}


async def concurrent(step):
    client = openai.AsyncOpenAI(max_retries=0)
    inner = dict(step["call"])
    results = await asyncio.gather(*[openai_chat_async(client, inner) for _ in range(step["n"])])
    await client.close()
    return {"ok": True, "results": results}


def main():
    plan = json.loads(os.environ.get("PLAN", "[]"))
    oa = openai.OpenAI(max_retries=0)
    an = anthropic.Anthropic(max_retries=0)
    out = {"env": dict(os.environ), "steps": []}
    for step in plan:
        kind = step["kind"]
        if kind == "openai_chat":
            r = openai_chat(oa, step)
        elif kind == "openai_chat_async":
            async def one():
                c = openai.AsyncOpenAI(max_retries=0)
                try:
                    return await openai_chat_async(c, step)
                finally:
                    await c.close()
            r = asyncio.run(one())
        elif kind == "openai_responses":
            r = openai_responses(oa, step)
        elif kind == "openai_embeddings":
            r = openai_embeddings(oa, step)
        elif kind == "anthropic_messages":
            r = anthropic_messages(an, step)
        elif kind == "concurrent":
            r = asyncio.run(concurrent(step))
        elif kind == "openai_chat_raw":
            r = openai_chat_raw(oa, step)
        elif kind == "wait_file":
            r = wait_file(step)
        else:
            r = {"ok": False, "message": f"unknown step kind {kind}"}
        out["steps"].append(r)
    tmp = os.environ["RESULT_FILE"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.rename(tmp, os.environ["RESULT_FILE"])
    print(f"plan done: {len(out['steps'])} steps", file=sys.stderr)
    if os.environ.get("LINGER"):
        import time
        while True:
            time.sleep(3600)


main()
