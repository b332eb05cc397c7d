"""A raw OpenAI-SDK agent: answers a queue of support tickets, forever.

It knows nothing about Iron Cage: the daemon gives it OPENAI_BASE_URL (the
gateway) and a virtual OPENAI_API_KEY. Calls are tagged by task with the
X-Iron-Cage-Tag header, so `ironctl costs --by tag` shows where money went.
When its budget is spent the gateway answers 402 and the SDK raises; the agent
reports it and backs off, as a well-behaved agent would.
"""

import itertools
import time

import openai

client = openai.OpenAI(max_retries=0)
TICKETS = [
    ("triage", "Customer says the invoice PDF is blank. What should we check first?"),
    ("summarize", "Summarize: user cannot log in after password reset, tried twice."),
    ("reply", "Write a short, kind reply to a customer whose order is late."),
]

for n in itertools.count(1):
    task, text = TICKETS[n % len(TICKETS)]
    try:
        r = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": text}],
            max_tokens=64,
            extra_headers={"X-Iron-Cage-Tag": task},
        )
        print(f"ticket {n} [{task}]: {r.choices[0].message.content[:40]}... "
              f"({r.usage.total_tokens} tokens)")
    except openai.APIStatusError as e:
        print(f"ticket {n} [{task}]: refused ({e.status_code}): {e.message}")
        time.sleep(5)
    time.sleep(0.2)
