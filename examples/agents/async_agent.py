"""An asyncio agent: workers run concurrently, each tagged with its own task
(contextvars: every asyncio task sees its own tag), and all of them await the
budget before each call with `await iron_cage.abudget()`.

    [[agent]]
    name = "async-workers"
    python = "/srv/agents/workers/.venv/bin/python"
    script = "agents/async_agent.py"
    args = ["--workers", "4", "--rounds", "0"]    # 0 = forever
"""

import argparse
import asyncio
import json

import iron_cage
import openai

parser = argparse.ArgumentParser()
parser.add_argument("--workers", type=int, default=3)
parser.add_argument("--rounds", type=int, default=0, help="calls per worker (0: forever)")
parser.add_argument("--budget-checks", type=int, default=1, help="abudget() awaited per call")
parser.add_argument("--pause", type=float, default=0.5)
parser.add_argument("--result", help="write a JSON summary here when done")
opts = parser.parse_args()


async def worker(n, client, seen):
    async with iron_cage.tag(f"worker-{n}"):
        r = 0
        while not opts.rounds or r < opts.rounds:
            r += 1
            budgets = await asyncio.gather(*[iron_cage.abudget() for _ in range(opts.budget_checks)])
            seen.extend(b.spent_micros for b in budgets)
            if budgets[-1].remaining is not None and budgets[-1].remaining < 0.001:
                print(f"worker {n}: budget spent; stopping", flush=True)
                return
            resp = await client.chat.completions.create(
                model="gpt-4o-mini", max_tokens=16,
                messages=[{"role": "user", "content": f"worker {n}, step {r}: say hi"}])
            assert iron_cage.current_tag() == f"worker-{n}"
            print(f"worker {n} step {r}: {resp.choices[0].message.content[:30]}", flush=True)
            await asyncio.sleep(opts.pause)


async def main():
    client = openai.AsyncOpenAI(max_retries=0)
    seen = []
    await asyncio.gather(*[worker(n, client, seen) for n in range(1, opts.workers + 1)])
    await client.close()
    final = await iron_cage.abudget()
    if opts.result:
        with open(opts.result + ".tmp", "w") as f:
            json.dump({"budget_checks": len(seen), "spent_seen": seen,
                       "final_spent_micros": final.spent_micros, "agent": iron_cage.agent_name()}, f)
        import os
        os.rename(opts.result + ".tmp", opts.result)
    print(f"async agent done: {len(seen)} budget checks, {final.spent:.6f} USD spent", flush=True)


asyncio.run(main())
