"""OpenAI API against a live server (uvicorn, random port) with the official `openai` SDK, on the scripted model.

The model replays scripted token ids through the real engine, so tool-call markup, usage numbers and finish
reasons are exact; everything between the SDK and the engine is production code.
"""

from __future__ import annotations

import json
import pickle

import httpx
import openai
import pytest

from tests.server_helpers import MODEL_NAME, ScriptedServer, call_markup, scripted_server, trained_tokenizer

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tok = trained_tokenizer(tmp_path_factory.mktemp("tok"))
    with scripted_server(tok, max_model_len=512) as server:
        yield server


@pytest.fixture()
def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=30)


@pytest.fixture()
def prompts(srv, monkeypatch) -> list:
    """Every (prompt ids, SamplingParams) the server hands to the engine during the test."""
    seen: list = []
    original = srv.engine.generate

    def recording(request_id, prompt_ids, params):
        seen.append((list(prompt_ids), params))
        return original(request_id, prompt_ids, params)

    monkeypatch.setattr(srv.engine, "generate", recording)
    return seen


def user(text: str) -> dict:
    return {"role": "user", "content": text}


# ------------------------------------------------------------------------------------------------ chat
def test_plain_chat_returns_content_usage_and_stop(srv: ScriptedServer, client):
    srv.script("Hello there, I am Kimi.")
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("hi")])
    assert reply.choices[0].message.content == "Hello there, I am Kimi."
    assert reply.choices[0].finish_reason == "stop"
    expected_prompt = len(srv.tok.apply_chat_template([user("hi")]))
    assert reply.usage.prompt_tokens == expected_prompt
    assert reply.usage.completion_tokens == len(srv.tok.encode("Hello there, I am Kimi.")) + 1  # + <|im_end|>
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_repeated_prompt_reports_cached_tokens(srv, client):
    srv.script("Same answer.")
    messages = [{"role": "system", "content": "You are a helpful assistant. " * 8}, user("repeat")]
    first = client.chat.completions.create(model=MODEL_NAME, messages=messages)
    second = client.chat.completions.create(model=MODEL_NAME, messages=messages)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= 16 and cached % 16 == 0 and cached < second.usage.prompt_tokens  # whole blocks, last token recomputed


def test_streaming_chat_deltas_usage_and_done(srv, client):
    srv.script("Streaming works fine.")
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[user("stream")], stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming works fine."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(srv.tok.encode(text)) + 1
    assert all(c.usage is None for c in chunks[:-1])


def test_raw_stream_ends_with_done(srv):
    srv.script("Done marker.")
    body = {"model": MODEL_NAME, "messages": [user("x")], "stream": True}
    with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)


def test_max_tokens_gives_length(srv, client):
    srv.script("one two three four five six seven eight nine ten")
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("count")], max_tokens=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("count")], max_completion_tokens=2)
    assert reply.usage.completion_tokens == 2


def test_stop_string_cuts_the_text(srv, client):
    srv.script("alpha beta STOP gamma")
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], stop=["STOP"])
    assert reply.choices[0].message.content == "alpha beta "
    assert reply.choices[0].finish_reason == "stop"


def test_sampling_parameters_reach_the_engine(srv, client, prompts):
    srv.script("ok")
    client.chat.completions.create(
        model=MODEL_NAME, messages=[user("x")], temperature=0.3, top_p=0.9, seed=7, presence_penalty=0.5,
        frequency_penalty=0.25, max_tokens=5, stop="zz",
    )
    params = prompts[-1][1]
    assert (params.temperature, params.top_p, params.seed, params.max_tokens) == (0.3, 0.9, 7, 5)
    assert (params.presence_penalty, params.frequency_penalty, params.stop) == (0.5, 0.25, ["zz"])


def test_vllm_request_fields_are_honoured(srv, client, prompts):
    srv.script("a b c d")
    extras = {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.2, "skip_special_tokens": False}
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], max_tokens=8,
                                           extra_body={**extras, "ignore_eos": True})
    params = prompts[-1][1]
    assert (params.top_k, params.min_p, params.repetition_penalty, params.skip_special_tokens) == (5, 0.1, 1.2, False)
    # the end-of-turn token no longer stops the reply
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 8
    assert reply.choices[0].message.content == "a b c d"  # the chat parser drops end-of-turn markers
    raw = client.completions.create(model=MODEL_NAME, prompt="<|im_assistant|>assistant<|im_middle|>", max_tokens=6,
                                    extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert raw.choices[0].text == "a b c d<|im_end|><|im_end|>"  # special tokens kept in the text
    b_id = srv.tok.encode("a b c d")[1]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], extra_body={"stop_token_ids": [b_id]})
    assert reply.choices[0].message.content == "a" and reply.choices[0].finish_reason == "stop"
    srv.script("a")
    reply = client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=6, extra_body={"min_tokens": 4})
    assert reply.usage.completion_tokens >= 4 and prompts[-1][1].min_tokens == 4  # stops ignored before 4 tokens


def test_chat_template_kwargs_reach_the_template(srv):
    template = "{{ greeting | default('none') }}|{% for m in messages %}{{ m.content }}{% endfor %}<|im_assistant|>assistant<|im_middle|>"
    tok = pickle.loads(pickle.dumps(srv.tok))  # a copy with its own template (the server's workers copy theirs at start)
    tok.chat_template = template
    with scripted_server(tok, max_model_len=512) as own:
        own.script("ok")
        seen: list = []
        original = own.engine.generate
        own.engine.generate = lambda request_id, prompt_ids, params: seen.append(prompt_ids) or original(request_id, prompt_ids, params)
        client = openai.OpenAI(base_url=own.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], extra_body={"chat_template_kwargs": {"greeting": "hey"}})
        assert tok.decode(seen[-1]).startswith("hey|x")
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], extra_body={"chat_template_kwargs": {"tools": []}})
        assert info.value.body["param"] == "chat_template_kwargs" and "'tools'" in info.value.message


@pytest.mark.parametrize(
    ("extra", "param", "needle"),
    [({"guided_json": {"type": "object"}}, "guided_json", "unsupported parameter 'guided_json'"),
     ({"use_beam_search": True}, "use_beam_search", "unsupported parameter 'use_beam_search'"),
     ({"stop_token_ids": [10**9]}, "stop_token_ids", "outside the vocabulary"),
     ({"min_tokens": 9, "max_tokens": 4}, "min_tokens", "min_tokens=9")],
)
def test_vllm_fields_that_cannot_be_honoured_are_named(client, extra, param, needle):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], extra_body=extra)
    assert info.value.body["param"] == param and needle in info.value.message


def test_logprobs_are_returned_per_token(srv, client):
    srv.script("abc")
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(entry.token for entry in content[:-1]) == "abc"
    assert all(entry.logprob > -1e-3 and len(entry.top_logprobs) == 2 for entry in content)  # the forced token


def test_streamed_logprobs_cover_every_token(srv, client):
    srv.script("xyz w")
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], logprobs=True, top_logprobs=1,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert len(entries) == chunks[-1].usage.completion_tokens
    assert "".join(e.token for e in entries[:-1]) == "xyz w"


# ------------------------------------------------------------------------------------------------ tools
def test_tool_call_round_trip(srv, client, prompts):
    srv.script(
        "Let me check." + call_markup(("functions.get_weather:0", '{"city": "Beijing"}')),
        "It is sunny in Beijing.",
    )
    messages = [user("Weather in Beijing?")]
    first = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER_TOOL])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "functions.get_weather:0", "get_weather", {"city": "Beijing"})

    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": '{"weather": "Sunny"}'}]
    second = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "It is sunny in Beijing."
    assert second.choices[0].finish_reason == "stop"
    prompt_text = srv.tok.decode(prompts[-1][0])
    assert "<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>" in prompt_text
    assert "## Return of functions.get_weather:0" in prompt_text


def test_streamed_parallel_tool_calls(srv, client):
    srv.script(call_markup(("functions.get_weather:0", '{"city": "Paris"}'), ("functions.get_time:1", "{}")))
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[user("weather and time")], tools=[WEATHER_TOOL, TIME_TOOL], stream=True
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        choice = chunk.choices[0]
        finish = choice.finish_reason or finish
        for delta in choice.delta.tool_calls or []:
            entry = calls.setdefault(delta.index, {"id": None, "name": None, "arguments": ""})
            if delta.id:
                entry["id"], entry["name"] = delta.id, delta.function.name
            entry["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "functions.get_weather:0", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "functions.get_time:1", "name": "get_time", "arguments": "{}"},
    }


def test_tool_call_ids_round_trip_over_several_turns(srv, client, prompts):
    """Client ids (`call_…`) are shown to the model in K2 form, new calls keep the model's ids, and a repeated
    id is never handed out twice."""
    srv.script(
        "unused turn 1",
        call_markup(("functions.get_weather:1", '{"city": "Oslo"}')),
        call_markup(("functions.get_weather:0", '{"city": "Rome"}')),  # the model repeats an id the client holds
        "All done.",
    )
    messages = [
        user("Weather in Paris?"),
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": "rain"},
        user("And Oslo?"),
    ]
    second = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER_TOOL])
    text = srv.tok.decode(prompts[-1][0])
    assert "functions.get_weather:0<|tool_call_argument_begin|>" in text and "call_abc123" not in text
    (call,) = second.choices[0].message.tool_calls
    assert call.id == "functions.get_weather:1"

    messages += [second.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "snow"}, user("And Rome?")]
    third = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER_TOOL])
    text = srv.tok.decode(prompts[-1][0])
    assert "## Return of functions.get_weather:0" in text and "## Return of functions.get_weather:1" in text
    (call3,) = third.choices[0].message.tool_calls
    assert call3.id == "functions.get_weather:2"  # the repeated :0 is renumbered, never a duplicate

    messages += [third.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call3.id, "content": "sun"}]
    fourth = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=[WEATHER_TOOL])
    assert fourth.choices[0].message.content == "All done."
    text = srv.tok.decode(prompts[-1][0])
    for k2_id in ("functions.get_weather:0", "functions.get_weather:1", "functions.get_weather:2"):
        assert f"## Return of {k2_id}" in text


def test_tool_choice_named_forces_that_call(srv, client, prompts):
    # a grammar, not a prefill: the model writes the whole call, and only a call to get_time can be written
    srv.script(call_markup(("functions.get_time:0", '{"zone": "UTC"}')))
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=[user("x")], tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    prompt_ids, params = prompts[-1]
    assert srv.tok.decode(prompt_ids).endswith("<|im_assistant|>assistant<|im_middle|>")
    assert '"functions.get_time:"' in params.grammar and "get_weather" not in params.grammar
    (call,) = reply.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == ("functions.get_time:0", "get_time", '{"zone": "UTC"}')


def test_tool_choice_required_and_none(srv, client, prompts):
    srv.script(call_markup(("functions.get_weather:0", '{"city": "Rome"}')))
    required = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], tools=[WEATHER_TOOL], tool_choice="required")
    assert required.choices[0].finish_reason == "tool_calls" and prompts[-1][1].grammar is not None

    srv.script("Sure." + call_markup(("functions.get_weather:0", '{"city": "Rome"}')))
    none = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], tools=[WEATHER_TOOL], tool_choice="none")
    # the markers are masked: where the script wanted to open a call, the model had to write something else
    assert none.choices[0].message.content.startswith("Sure.") and none.choices[0].message.tool_calls is None
    assert "<|tool_call" not in none.choices[0].message.content
    assert none.choices[0].finish_reason in ("stop", "length")
    assert "tool_declare" not in srv.tok.decode(prompts[-1][0])
    assert prompts[-1][1].grammar is None and srv.tok.token_to_id("<|tool_calls_section_begin|>") in prompts[-1][1].masked_token_ids


def test_parallel_tool_calls_false_returns_one_call(srv, client):
    # the script's second call is refused by the grammar: after one call only the section end can follow
    srv.script(call_markup(("functions.get_weather:0", '{"city": "A"}'), ("functions.get_weather:1", '{"city": "B"}')))
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=[user("x")], tools=[WEATHER_TOOL], parallel_tool_calls=False)
    (call,) = reply.choices[0].message.tool_calls
    assert (call.id, call.function.arguments, reply.choices[0].finish_reason) == ("functions.get_weather:0", '{"city": "A"}', "tool_calls")


def test_undeclared_tool_name_cannot_be_produced(srv, client):
    # the script calls get_weather, but only get_time is declared: the name is forced to the declared one
    srv.script(call_markup(("functions.get_weather:0", '{"city": "A"}')))
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], tools=[TIME_TOOL], temperature=0,
                                           max_tokens=60)
    assert all(c.function.name == "get_time" for c in reply.choices[0].message.tool_calls or [])
    srv.script(call_markup(("functions.get_weather:0", '{"city": "A"}')))
    bare = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], temperature=0, max_tokens=20)
    assert bare.choices[0].message.tool_calls is None and "<|tool_call" not in (bare.choices[0].message.content or "")


def test_unclosed_think_then_call_comes_back_as_a_call(srv, client):
    reply_text = "<think>I need the weather" + call_markup(("functions.get_weather:0", '{"city": "Oslo"}'))
    srv.script(reply_text)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], tools=[WEATHER_TOOL])
    message = reply.choices[0].message
    assert message.model_extra["reasoning_content"] == "I need the weather" and not message.content
    (call,) = message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Oslo"}')
    srv.script(reply_text)
    reasoning, calls = "", {}
    for chunk in client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], tools=[WEATHER_TOOL], stream=True):
        delta = chunk.choices[0].delta
        reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
        assert not delta.content
        for c in delta.tool_calls or []:
            calls[c.index] = calls.get(c.index, "") + (c.function.arguments or "")
    assert reasoning == "I need the weather" and calls == {0: '{"city": "Oslo"}'}


def test_the_grammar_leaves_reasoning_free_and_constrains_the_answer(srv, client):
    srv.script('<think>free { "not json</think>{"city": "Rome"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    for stream in (False, True):
        kwargs = dict(model=MODEL_NAME, messages=[user("x")],
                      response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
        if not stream:
            message = client.chat.completions.create(**kwargs).choices[0].message
            reasoning, content = message.model_extra["reasoning_content"], message.content
        else:
            reasoning = content = ""
            for chunk in client.chat.completions.create(stream=True, **kwargs):
                delta = chunk.choices[0].delta
                reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
                content += delta.content or ""
        assert reasoning == 'free { "not json' and json.loads(content) == {"city": "Rome"}


def test_logit_bias_and_json_response_format(srv, client, prompts):
    srv.script('{"city": "Rome"}')
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    last = srv.tok.vocab_size - 1  # a reserved special token the script never writes
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("x")], logit_bias={str(last): -100},
                                           response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": schema}})
    assert json.loads(reply.choices[0].message.content) == {"city": "Rome"}
    assert prompts[-1][1].logit_bias == {last: -100.0} and "%json" in prompts[-1][1].grammar


def test_n_choices_chat_and_completions_streamed_or_not(srv, client):
    srv.script("Same words.")
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[user("n please")], n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert {c.message.content for c in reply.choices} == {"Same words."}
    one = len(srv.tok.encode("Same words.")) + 1
    assert reply.usage.completion_tokens == 3 * one and reply.usage.prompt_tokens == len(srv.tok.apply_chat_template([user("n please")]))
    texts, finishes = {}, {}
    for chunk in client.chat.completions.create(model=MODEL_NAME, messages=[user("n please")], n=2, stream=True,
                                                stream_options={"include_usage": True}):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            finishes[c.index] = c.finish_reason or finishes.get(c.index)
        if chunk.usage:
            assert chunk.usage.completion_tokens == 2 * one
    assert texts == {0: "Same words.", 1: "Same words."} and finishes == {0: "stop", 1: "stop"}
    prompt = "<|im_assistant|>assistant<|im_middle|>"
    completion = client.completions.create(model=MODEL_NAME, prompt=prompt, n=2, max_tokens=10)
    assert [c.text for c in completion.choices] == ["Same words.", "Same words."]
    streamed = {}
    for chunk in client.completions.create(model=MODEL_NAME, prompt=prompt, n=2, max_tokens=10, stream=True):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + c.text
    assert streamed == {0: "Same words.", 1: "Same words."}


def test_completions_take_logit_bias(srv, client, prompts):
    srv.script("the answer")
    prompt = "<|im_assistant|>assistant<|im_middle|>"
    banned = srv.tok.encode("the answer")[0]
    reply = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=3, temperature=0,
                                      logit_bias={str(banned): -100})
    assert prompts[-1][1].logit_bias == {banned: -100.0}
    assert not reply.choices[0].text.startswith("the answer")  # the scripted first token was pushed out


def test_n_choices_share_the_prompt_through_the_prefix_cache(srv, client):
    srv.script("ok")
    long_prompt = [{"role": "system", "content": "Share this prefix among the choices, please. " * 6}, user("go")]
    before = srv.stats().prefix_cache_hits
    reply = client.chat.completions.create(model=MODEL_NAME, messages=long_prompt, n=4)
    full_blocks = (reply.usage.prompt_tokens - 1) // 16 * 16
    assert full_blocks >= 32 and srv.stats().prefix_cache_hits - before >= 3 * full_blocks


# ------------------------------------------------------------------------------------------------ completions
def test_completions_with_text_and_token_ids(srv, client):
    srv.script("the answer")
    prompt = "<|im_assistant|>assistant<|im_middle|>"
    reply = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=10)
    assert reply.choices[0].text == "the answer" and reply.choices[0].finish_reason == "stop"
    ids = srv.tok.encode(prompt, allow_special=True)
    by_ids = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=2, logprobs=1)
    assert by_ids.choices[0].finish_reason == "length" and by_ids.usage.prompt_tokens == len(ids)
    assert "".join(by_ids.choices[0].logprobs.tokens) == by_ids.choices[0].text == "the answer"[: len(by_ids.choices[0].text)]
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=MODEL_NAME, prompt=prompt, stream=True) if c.choices)
    assert streamed == "the answer"


def test_models_endpoint(srv, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"model": "gpt-4"}, 404, "model 'gpt-4' not found"),
        ({"n": 17}, 400, "n=17: must be in [1, 16]"),
        ({"max_tokens": 10_000}, 400, "max_tokens=10000 is too large"),
        ({"max_tokens": 0}, 400, "max_tokens=0"),
        ({"temperature": 5}, 400, "temperature"),
        ({"logit_bias": {"x": 5}}, 400, "logit_bias: key 'x' is not a token id"),
        ({"logit_bias": {"1": 500}}, 400, "logit_bias"),
        ({"logit_bias": {"999999": 1}}, 400, "logit_bias: token id 999999 is outside the vocabulary"),
        ({"response_format": {"type": "json_schema"}}, 400, "response_format.json_schema.schema"),
        ({"response_format": {"type": "xml"}}, 400, "response_format.type"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "propertyNames": {}}}}},
         400, "cannot be enforced"),
        ({"top_logprobs": 2}, 400, "top_logprobs needs logprobs"),
        ({"tool_choice": "required"}, 400, "needs tools"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!", "parameters": {"type": "object"}}}]}, 400, "not a valid function name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, 400, "must be a JSON object"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": ["x"], "properties": {}}}}]}, 400, "not in properties"),
        ({"tools": [WEATHER_TOOL, WEATHER_TOOL]}, 400, "duplicate tool name"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, "'nope' is not among"),
        ({"extra_body": {"best_of": 3}}, 400, "unsupported parameter 'best_of'"),
        ({"messages": [{"role": "tool", "tool_call_id": "call_x", "content": "r"}]}, 400, "answers no tool call"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}, 400, "'image_url' is not supported"),
        ({"messages": []}, 400, "messages"),
    ],
)
def test_errors_use_the_openai_schema(srv, client, kwargs, status, needle):
    kwargs = {"model": MODEL_NAME, "messages": [user("x")], **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**kwargs)
    assert info.value.status_code == status
    error = info.value.body
    assert needle in error["message"], error
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")


def test_too_long_prompt_names_both_numbers(srv, client):
    long_text = "word " * 1000
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=[user(long_text)])
    n = len(srv.tok.apply_chat_template([user(long_text)]))
    message = info.value.body["message"]
    assert f"{n} tokens" in message and "512 tokens" in message
    assert info.value.body["code"] == "context_length_exceeded"


def test_malformed_bodies_get_400_and_the_server_survives(srv):
    url = srv.url + "/v1/chat/completions"
    bodies = [b"{", b"", b"null", b"[]", b'"text"', b"\xff\xfe\x00", b'{"model": 5, "messages": "no"}',
              b'{"model": "kimi-k2-test", "messages": [{"role": "user"}]}',
              b'{"model": "kimi-k2-test", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}',
              b'{"model": "kimi-k2-test", "messages": [{"role": "user", "content": "x"}], "stop": [1, 2]}',
              b'{"model": "kimi-k2-test", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
              b'{"model": "kimi-k2-test", "messages": [{"role": "user", "content": {"deep": [[[[]]]]}}]}',
              b'{"model": "kimi-k2-test", "messages": [{"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f"}}]}]}',
              json.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "\ud800"}]}).encode()]
    for body in bodies:
        response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
        assert response.status_code == 400, (body, response.text)
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
    assert httpx.get(srv.url + "/v1/nope").status_code == 404
    assert httpx.get(srv.url + "/v1/chat/completions").status_code == 405
