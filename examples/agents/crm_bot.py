"""A raw OpenAI-SDK agent that pastes customer details into its prompts, as
real agents do. Its PII policy (examples/demo.toml.in: [agent.pii]) redacts
emails and phone numbers before the prompt leaves the machine; the agent itself
is unchanged and never notices.
"""

import time

import openai

client = openai.OpenAI(max_retries=0)
NOTE = ("Draft a reply to Dana Whitfield (dana.whitfield@example.com, +1 415-555-2671) "
        "about the refund for order 88123.")

while True:
    try:
        r = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": NOTE}],
            max_tokens=32,
            extra_headers={"X-Iron-Cage-Tag": "crm"},
        )
        print(f"draft ready ({r.usage.total_tokens} tokens)")
    except openai.APIStatusError as e:
        print(f"refused ({e.status_code}): {e.message}")
    time.sleep(10)
