"""An Anthropic-SDK agent that streams its answers.

Streaming calls are metered too: the gateway relays the stream event by event
and books the usage from Anthropic's message_start + message_delta events.
"""

import time

import anthropic

client = anthropic.Anthropic(max_retries=0)
topics = ["solar panels", "tide pools", "bread starters", "comet tails"]
i = 0
while True:
    topic = topics[i % len(topics)]
    i += 1
    try:
        with client.messages.stream(
            model="claude-haiku-4-5",
            max_tokens=48,
            messages=[{"role": "user", "content": f"Three facts about {topic}."}],
            extra_headers={"X-Iron-Cage-Tag": "research"},
        ) as stream:
            text = "".join(stream.text_stream)
            msg = stream.get_final_message()
        print(f"{topic}: {len(text.split())} words, "
              f"{msg.usage.input_tokens}+{msg.usage.output_tokens} tokens")
    except anthropic.APIStatusError as e:
        print(f"{topic}: refused ({e.status_code}): {e.message}")
        time.sleep(5)
    time.sleep(1)
