"""A raw OpenAI-SDK agent that uses iron_cage: it tags its LLM calls by task,
checks its budget before each ticket, and books the cost of a paid lookup tool.

Run under ironcaged as a Python agent (see examples/demo.toml.in):

    [[agent]]
    name = "triage"
    python = "/srv/agents/triage/.venv/bin/python"
    script = "agents/triage_agent.py"
    args = ["--rounds", "0"]          # 0 = forever

`ironctl costs --by tag` then shows the money per task, the lookup tool
included (`ironctl costs --by model` lists it as tool/kb-lookup).
"""

import argparse
import itertools
import time

import iron_cage
import openai

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=0, help="tickets to answer (0: forever)")
parser.add_argument("--pause", type=float, default=0.5)
opts = parser.parse_args()

client = openai.OpenAI(max_retries=0)
TICKETS = [
    ("triage", "Customer says the invoice PDF is blank. What should we check first?"),
    ("reply", "Write a short, kind reply to a customer whose order is late."),
]

for n in itertools.count(1):
    if opts.rounds and n > opts.rounds:
        break
    task, text = TICKETS[n % len(TICKETS)]
    b = iron_cage.budget()
    if b.remaining is not None and b.remaining < 0.001:
        print(f"ticket {n}: budget nearly spent ({b.remaining:.6f} USD left this {b.period}); waiting")
        time.sleep(5)
        continue
    with iron_cage.tag(task):
        # A paid knowledge-base lookup: not an LLM call, so the agent reports it.
        iron_cage.report_cost(0.0001, "kb-lookup")
        r = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": iron_cage.redact(text)}],
            max_tokens=64,
        )
    print(f"ticket {n} [{task}]: {r.choices[0].message.content[:40]}... "
          f"({iron_cage.budget().spent:.6f} USD spent today)", flush=True)
    time.sleep(opts.pause)
