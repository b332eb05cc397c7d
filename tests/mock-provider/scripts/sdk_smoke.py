"""Drive the official `openai` and `anthropic` SDKs against the mock (or a gateway
in front of it) and check they parse every shape it produces.

Not run by CI (the SDKs are not a build dependency). Usage:

    python sdk_smoke.py http://127.0.0.1:PORT [OPENAI_KEY] [ANTHROPIC_KEY]
"""

import sys

import anthropic
import openai


def main() -> None:
    base = sys.argv[1].rstrip("/")
    openai_key = sys.argv[2] if len(sys.argv) > 2 else "sk-test"
    anthropic_key = sys.argv[3] if len(sys.argv) > 3 else "sk-ant-test"
    oai = openai.OpenAI(base_url=base + "/v1", api_key=openai_key, max_retries=0)
    ant = anthropic.Anthropic(base_url=base, api_key=anthropic_key, max_retries=0)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]

    chat = oai.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=5)
    assert chat.choices[0].message.content == "w1 w2 w3 w4 w5", chat
    assert chat.usage.prompt_tokens == 4 and chat.usage.completion_tokens == 5, chat.usage
    assert chat.choices[0].finish_reason == "stop"

    text, usage = "", None
    for chunk in oai.chat.completions.create(
        model="gpt-4o", messages=msgs, stream=True, stream_options={"include_usage": True}
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text == " ".join(f"w{i}" for i in range(1, 13)), text
    assert usage.completion_tokens == 12, usage

    with oai.chat.completions.stream(model="gpt-4o", messages=msgs, max_tokens=3) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "w1 w2 w3", final

    resp = oai.responses.create(model="gpt-4o", input="one two three", instructions="x", max_output_tokens=4)
    assert resp.output_text == "w1 w2 w3 w4", resp
    assert resp.usage.input_tokens == 4, resp.usage

    with oai.responses.stream(model="gpt-4o", input="one two", max_output_tokens=3) as stream:
        final = stream.get_final_response()
    assert final.output_text == "w1 w2 w3", final

    emb = oai.embeddings.create(model="text-embedding-3-small", input=["a b", "c"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens == 3, emb
    assert len(emb.data[0].embedding) == 8

    models = oai.models.list()
    assert any(m.id == "gpt-4o" for m in models), models

    try:
        oai.chat.completions.create(
            model="gpt-4o", messages=msgs, extra_headers={"x-mock-status": "429", "x-mock-retry-after": "3"}
        )
        raise AssertionError("expected RateLimitError")
    except openai.RateLimitError as err:
        assert err.response.headers["retry-after"] == "3"

    msg = ant.messages.create(
        model="claude-sonnet-4-20250514",
        max_tokens=6,
        system="be brief",
        messages=[{"role": "user", "content": "hello there"}],
        extra_headers={"x-mock-usage": "cache_read=40,cache_creation=10"},
    )
    assert msg.content[0].text == "w1 w2 w3 w4 w5 w6", msg
    assert msg.usage.input_tokens == 4 and msg.usage.cache_read_input_tokens == 40, msg.usage
    assert msg.stop_reason == "end_turn"

    with ant.messages.stream(
        model="claude-sonnet-4-20250514", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "w1 w2 w3 w4", final
    assert final.usage.output_tokens == 4 and final.usage.input_tokens == 1, final.usage

    count = ant.messages.count_tokens(model="claude-sonnet-4-20250514", messages=[{"role": "user", "content": "a b c"}])
    assert count.input_tokens == 3, count

    try:
        ant.messages.create(
            model="claude-sonnet-4-20250514",
            max_tokens=4,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "529"},
        )
        raise AssertionError("expected OverloadedError")
    except anthropic.APIStatusError as err:
        assert err.status_code == 529 and "overloaded" in type(err).__name__.lower() + str(err).lower(), err

    print("sdk smoke: all shapes parsed")


if __name__ == "__main__":
    main()
