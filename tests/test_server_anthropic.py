"""Anthropic Messages API against a live server with the official `anthropic` SDK, on the scripted model."""

from __future__ import annotations

import json

import anthropic
import httpx
import pytest

from kimi_k2.server.sse import parse_sse
from tests.server_helpers import MODEL_NAME, call_markup, scripted_server, trained_tokenizer

WEATHER = {
    "name": "get_weather",
    "description": "Current weather of a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tok = trained_tokenizer(tmp_path_factory.mktemp("tok"))
    with scripted_server(tok, max_model_len=512, api_key="sk-test") as server:
        yield server


@pytest.fixture()
def client(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="sk-test", max_retries=0, timeout=30)


@pytest.fixture()
def prompts(srv, monkeypatch) -> list:
    seen: list = []
    original = srv.engine.generate

    def recording(request_id, prompt_ids, params):
        seen.append((list(prompt_ids), params))
        return original(request_id, prompt_ids, params)

    monkeypatch.setattr(srv.engine, "generate", recording)
    return seen


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_plain_message_with_usage(srv, client, prompts):
    srv.script("Hello from Kimi.")
    message = client.messages.create(model=MODEL_NAME, max_tokens=50, system="Be brief.", messages=[user("hi")])
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Hello from Kimi."
    assert message.stop_reason == "end_turn" and message.role == "assistant" and message.model == MODEL_NAME
    prompt_ids = prompts[-1][0]
    assert srv.tok.decode(prompt_ids).startswith("<|im_system|>system<|im_middle|>Be brief.<|im_end|>")
    assert message.usage.input_tokens + message.usage.cache_read_input_tokens == len(prompt_ids)
    assert message.usage.output_tokens == len(srv.tok.encode("Hello from Kimi.")) + 1


def test_streaming_event_sequence(srv, client):
    srv.script("Streamed text.")
    with client.messages.stream(model=MODEL_NAME, max_tokens=50, messages=[user("hi")]) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_message()
    assert types[0] == "message_start" and types[-1] == "message_stop"
    assert types[1] == "content_block_start" and "content_block_stop" in types and types[-2] == "message_delta"
    assert final.content[0].text == "Streamed text." and final.stop_reason == "end_turn"
    assert final.usage.output_tokens == len(srv.tok.encode("Streamed text.")) + 1


def test_tool_use_round_trip_streaming_and_not(srv, client, prompts):
    srv.script(
        "Checking." + call_markup(("functions.get_weather:0", '{"city": "Beijing"}')),
        "Sunny in Beijing.",
    )
    with client.messages.stream(model=MODEL_NAME, max_tokens=100, tools=[WEATHER], messages=[user("Weather?")]) as stream:
        events = list(stream)
        first = stream.get_final_message()
    assert any(e.type == "content_block_delta" and e.delta.type == "input_json_delta" for e in events)
    assert first.stop_reason == "tool_use"
    text, tool_use = first.content
    assert text.text == "Checking."
    assert (tool_use.type, tool_use.id, tool_use.name, tool_use.input) == (
        "tool_use", "functions.get_weather:0", "get_weather", {"city": "Beijing"})

    messages = [
        user("Weather?"),
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny"}]},
    ]
    second = client.messages.create(model=MODEL_NAME, max_tokens=100, tools=[WEATHER], messages=messages)
    assert second.content[0].text == "Sunny in Beijing." and second.stop_reason == "end_turn"
    text = srv.tok.decode(prompts[-1][0])
    assert '<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{"city": "Beijing"}' in text
    assert "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\n    sunny<|im_end|>" in text


def test_toolu_ids_round_trip_over_several_turns(srv, client, prompts):
    srv.script("unused", call_markup(("functions.get_weather:1", '{"city": "Oslo"}')), "Done.")
    messages = [
        user("Paris?"),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": [{"type": "text", "text": "rain"}]},
                                     {"type": "text", "text": "And Oslo?"}]},
    ]
    second = client.messages.create(model=MODEL_NAME, max_tokens=100, tools=[WEATHER], messages=messages)
    text = srv.tok.decode(prompts[-1][0])
    assert "toolu_01A" not in text and "## Return of functions.get_weather:0\n    rain<|im_end|><|im_user|>user<|im_middle|>And Oslo?" in text
    (call,) = [b for b in second.content if b.type == "tool_use"]
    assert call.id == "functions.get_weather:1"
    messages += [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in second.content]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "snow", "is_error": False}]}]
    third = client.messages.create(model=MODEL_NAME, max_tokens=100, tools=[WEATHER], messages=messages)
    assert third.content[0].text == "Done."
    text = srv.tok.decode(prompts[-1][0])
    assert "## Return of functions.get_weather:0" in text and "## Return of functions.get_weather:1\n    snow" in text


def test_tool_choice_any_and_named(srv, client, prompts):
    srv.script(call_markup(("functions.get_weather:0", '{"city": "Rome"}')))
    message = client.messages.create(model=MODEL_NAME, max_tokens=50, tools=[WEATHER], messages=[user("x")],
                                     tool_choice={"type": "tool", "name": "get_weather"})
    assert '"functions.get_weather:"' in prompts[-1][1].grammar  # a grammar, not a prefill
    assert message.content[0].input == {"city": "Rome"} and message.stop_reason == "tool_use"
    message = client.messages.create(model=MODEL_NAME, max_tokens=50, tools=[WEATHER], messages=[user("x")],
                                     tool_choice={"type": "any"})
    assert message.stop_reason == "tool_use"


def test_broken_tool_call_becomes_text_not_tool_use(srv, client):
    # under the grammar a call can only be broken by max_tokens: cut two tokens after '"Ro' (too few to close it)
    cut = call_markup(("functions.get_weather:0", '{"city": "Ro'))
    srv.script(cut)
    max_tokens = len(srv.tok.encode(cut.removesuffix("<|tool_call_end|><|tool_calls_section_end|>"), allow_special=True)) + 2
    for stream in (False, True):
        if stream:
            with client.messages.stream(model=MODEL_NAME, max_tokens=max_tokens, tools=[WEATHER], messages=[user("x")]) as s:
                message = s.get_final_message()
        else:
            message = client.messages.create(model=MODEL_NAME, max_tokens=max_tokens, tools=[WEATHER], messages=[user("x")])
        assert [b.type for b in message.content] == ["text"] and message.stop_reason == "max_tokens"
        assert "unparsable tool call functions.get_weather:0" in message.content[0].text
        assert '{"city": "Ro' in message.content[0].text


def test_structured_output_and_none_in_the_anthropic_api(srv, client, prompts):
    srv.script('{"n": 4}')
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    message = client.messages.create(model=MODEL_NAME, max_tokens=20, messages=[user("x")],
                                     output_config={"format": {"type": "json_schema", "schema": schema}})
    assert json.loads(message.content[0].text) == {"n": 4} and "%json" in prompts[-1][1].grammar
    srv.script("Fine." + call_markup(("functions.get_weather:0", '{"city": "Rome"}')))
    none = client.messages.create(model=MODEL_NAME, max_tokens=20, tools=[WEATHER], messages=[user("x")],
                                  tool_choice={"type": "none"})
    assert [b.type for b in none.content] == ["text"] and none.content[0].text.startswith("Fine.")
    assert "<|tool_call" not in none.content[0].text


def test_thinking_block_from_reasoning(srv, client):
    srv.script("<think>Let me think.</think>The answer is 4.")
    with client.messages.stream(model=MODEL_NAME, max_tokens=50, messages=[user("2+2")]) as stream:
        message = stream.get_final_message()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think." and message.content[1].text == "The answer is 4."


def test_max_tokens_and_stop_sequences(srv, client):
    srv.script("one two three four five six")
    message = client.messages.create(model=MODEL_NAME, max_tokens=2, messages=[user("x")])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 2
    message = client.messages.create(model=MODEL_NAME, max_tokens=50, messages=[user("x")], stop_sequences=["four"])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "four"
    assert message.content[0].text == "one two three "


def test_prefill_continues_the_assistant_message(srv, client, prompts):
    srv.script("The answer: 42")
    message = client.messages.create(model=MODEL_NAME, max_tokens=50,
                                     messages=[user("x"), {"role": "assistant", "content": "The answer:"}])
    assert srv.tok.decode(prompts[-1][0]).endswith("<|im_assistant|>assistant<|im_middle|>The answer:")
    assert message.content[0].text == " 42"


def test_prefill_ending_inside_think_continues_as_reasoning(srv, client, prompts):
    srv.script('<think>still { weighing</think>{"n": 4}')
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    message = client.messages.create(model=MODEL_NAME, max_tokens=50, output_config={"format": {"type": "json_schema", "schema": schema}},
                                     messages=[user("x"), {"role": "assistant", "content": "<think>"}])
    assert srv.tok.decode(prompts[-1][0]).endswith("<|im_middle|><think>")
    assert prompts[-1][1].grammar.startswith("start: REASONING? ")  # the grammar starts inside the reasoning
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "still { weighing" and json.loads(message.content[1].text) == {"n": 4}


def test_newer_request_fields_are_accepted(srv, client, prompts):
    srv.script("fine")
    message = client.messages.create(
        model=MODEL_NAME, max_tokens=20, cache_control={"type": "ephemeral"}, output_config={"effort": "low"},
        thinking={"type": "adaptive"}, metadata={"user_id": "u1"},
        messages=[user("a"), {"role": "assistant", "content": "b"}, {"role": "system", "content": "Now be terse."}, user("c")],
        extra_body={"temperature": 0.2, "top_k": 5},
    )
    assert message.content[0].text == "fine"
    assert "<|im_system|>system<|im_middle|>Now be terse.<|im_end|>" in srv.tok.decode(prompts[-1][0])
    assert (prompts[-1][1].temperature, prompts[-1][1].top_k) == (0.2, 5)


def test_models_list_in_the_anthropic_shape(srv, client):
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


def test_count_tokens_matches_the_prompt(srv, client, prompts):
    srv.script("ok")
    kwargs = {"model": MODEL_NAME, "system": "S", "tools": [WEATHER], "messages": [user("How many tokens?")]}
    counted = client.messages.count_tokens(**kwargs)
    client.messages.create(max_tokens=5, **kwargs)
    assert counted.input_tokens == len(prompts[-1][0])


@pytest.mark.parametrize(
    ("kwargs", "status", "error_type", "needle"),
    [
        ({"model": "claude-3"}, 404, "not_found_error", "model 'claude-3' not found"),
        ({"max_tokens": 100_000}, 400, "invalid_request_error", "max_tokens=100000 is too large"),
        ({"extra_body": {"temperature": 1.5}}, 400, "invalid_request_error", "temperature"),
        ({"output_config": {"format": {"type": "json_schema"}}}, 400, "invalid_request_error", "output_config.format"),
        ({"tools": [{"name": "f", "input_schema": {"type": "object", "propertyNames": {}}, "strict": True}]}, 400,
         "invalid_request_error", "tools[0].input_schema: this JSON schema cannot be enforced"),
        ({"tools": [{"name": "f", "input_schema": {"type": "array"}}]}, 400, "invalid_request_error", "must be a JSON object"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, 400, "invalid_request_error", "not supported"),
        ({"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "r"}]}]},
         400, "invalid_request_error", "answers no tool call"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]},
         400, "invalid_request_error", "'image' blocks are not supported"),
        ({"extra_body": {"frobnicate": True}}, 400, "invalid_request_error", "unsupported parameter 'frobnicate'"),
    ],
)
def test_errors_use_the_anthropic_schema(srv, client, kwargs, status, error_type, needle):
    kwargs = {"model": MODEL_NAME, "max_tokens": 10, "messages": [user("x")], **kwargs}
    with pytest.raises(anthropic.APIStatusError) as info:
        client.messages.create(**kwargs)
    assert info.value.status_code == status
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == error_type and needle in body["error"]["message"], body


def test_api_key_is_enforced_for_both_headers(srv):
    body = {"model": MODEL_NAME, "max_tokens": 5, "messages": [user("x")]}
    missing = httpx.post(srv.url + "/v1/messages", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    wrong = httpx.post(srv.url + "/v1/chat/completions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    srv.script("ok")
    assert httpx.post(srv.url + "/v1/messages", json=body, headers={"x-api-key": "sk-test"}).status_code == 200
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=srv.url, api_key="wrong", max_retries=0).messages.create(**body)
    assert httpx.get(srv.url + "/health").status_code == 200  # health and metrics stay open


def test_raw_stream_frames_and_malformed_json(srv):
    srv.script("abc")
    headers = {"x-api-key": "sk-test"}
    body = {"model": MODEL_NAME, "max_tokens": 20, "stream": True, "messages": [user("x")]}
    with httpx.stream("POST", srv.url + "/v1/messages", json=body, headers=headers) as response:
        events = parse_sse(response.read().decode())
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert all(json.loads(data)["type"] == name for name, data in events)
    bad = httpx.post(srv.url + "/v1/messages", content=b'{"model": ', headers={**headers, "content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert "malformed JSON" in bad.json()["error"]["message"]
