"""A raw OpenAI-SDK agent that prefers gpt-4o.

Its config gives it a fallback chain (`fallback = ["openai/gpt-4o-mini"]`):
when gpt-4o fails or its circuit is open, the gateway answers from gpt-4o-mini
instead, and says so in the `x-iron-cage-model` response header. The agent
itself has no retry or fallback logic at all.
"""

import time

import openai

client = openai.OpenAI(max_retries=0)
n = 0
while True:
    n += 1
    try:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": f"Summarize report #{n} in one line."}],
            max_tokens=16,
            extra_headers={"X-Iron-Cage-Tag": "summaries"},
        )
        answered = raw.headers.get("x-iron-cage-model", "?")
        r = raw.parse()
        print(f"report {n}: answered by {answered}: {r.choices[0].message.content[:30]}...")
    except openai.APIStatusError as e:
        print(f"report {n}: failed ({e.status_code}): {e.message}")
    time.sleep(0.5)
