"""Both SDKs, sync and async, inside iron_cage.tag(): one call each; an explicit
X-Iron-Cage-Tag header wins over the tag in effect."""

import asyncio

import anthropic
import iron_cage
import openai

with iron_cage.tag("claude-sync"):
    anthropic.Anthropic(max_retries=0).messages.create(
        model="claude-haiku-4-5", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    openai.OpenAI(max_retries=0).chat.completions.create(
        model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}],
        extra_headers={"X-Iron-Cage-Tag": "explicit"})


async def main():
    async with iron_cage.tag("claude-async"):
        c = anthropic.AsyncAnthropic(max_retries=0)
        await c.messages.create(model="claude-haiku-4-5", max_tokens=8,
                                messages=[{"role": "user", "content": "hi"}])
        await c.close()

asyncio.run(main())
# Outside any tag: untagged.
openai.OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
print("sdk calls done", flush=True)
