"""A LangChain agent (langchain-openai) under Iron Cage.

Nothing in it knows about the gateway or keys: ironcaged gives the process
OPENAI_BASE_URL (its loopback gateway) and a virtual OPENAI_API_KEY, which
ChatOpenAI reads like any other environment. The only Iron Cage line is
`iron_cage.tag(...)`, which bills the calls inside it to a task
(`ironctl costs --by tag`).

    [[agent]]
    name = "researcher-lc"
    python = "/srv/agents/researcher/.venv/bin/python"
    script = "agents/langchain_agent.py"
    args = ["--rounds", "0"]          # 0 = forever
"""

import argparse
import itertools
import time

import iron_cage
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

parser = argparse.ArgumentParser()
parser.add_argument("--rounds", type=int, default=0, help="research rounds (0: forever)")
parser.add_argument("--pause", type=float, default=1.0)
opts = parser.parse_args()

llm = ChatOpenAI(model="gpt-4o-mini", max_tokens=64, max_retries=0)
TOPICS = ["solid-state batteries", "coral reef restoration", "small modular reactors"]

for n in itertools.count(1):
    if opts.rounds and n > opts.rounds:
        break
    topic = TOPICS[n % len(TOPICS)]
    with iron_cage.tag("research"):
        notes = llm.invoke([SystemMessage("You are a careful researcher."),
                            HumanMessage(f"Three facts about {topic}.")])
    with iron_cage.tag("summarize"):
        summary = llm.invoke([HumanMessage(f"Summarize in one line: {notes.content}")])
    print(f"round {n} [{topic}]: {summary.content[:50]}...", flush=True)
    time.sleep(opts.pause)
print("langchain agent done", flush=True)
