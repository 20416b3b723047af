"""Output valid by construction, proven on a random-weight model (its unconstrained output is noise): every reply
under a JSON schema parses and validates (jsonschema is the oracle), and every tool_choice of both APIs holds —
a call names only declared tools, `none` and no-tools replies hold no call. The model is made eager to call:
its logit of `<|tool_calls_section_begin|>` is raised by 100 at every position, so without the grammar every
reply would open a tool section at once (and `logit_bias` pushes further through the OpenAI API)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import jsonschema
import openai
import pytest
import torch

from kimi_k2.config import preset
from kimi_k2.model.transformer import KimiK2ForCausalLM
from kimi_k2.server.anthropic_api import NUMBER_TOO_LARGE
from kimi_k2.tokenizer.special_tokens import TOOL_CALL_BEGIN, TOOL_CALLS_SECTION_BEGIN
from tests.json_schema_corpus import SCHEMAS
from tests.server_helpers import MODEL_NAME, model_server, trained_tokenizer

MAX_TOKENS = 400
UNBOUNDED_MAX_TOKENS = 600  # any JSON object: keys and strings of any length, so noise may not finish in time
CALCULATOR = {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 16}},
              "required": ["expression"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1,
           "maximum": 7}}, "required": ["city"], "additionalProperties": False}
TOOL_MARKERS = ("<|tool_calls_section_begin|>", "<|tool_call_begin|>", "<|tool_call_argument_begin|>",
                "<|tool_call_end|>", "<|tool_calls_section_end|>")
MARKER_NAMES = (*TOOL_MARKERS, "<think>", "</think>")


class EagerCaller(KimiK2ForCausalLM):
    """Random weights, plus `push` added to the logits of the `pushed` token ids at every position."""

    pushed: list[int] = []
    push = 100.0

    def forward(self, *args, **kwargs):  # type: ignore[override]
        logits = super().forward(*args, **kwargs)  # (B, S, V)
        logits[..., self.pushed] += self.push
        return logits


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tok = trained_tokenizer(tmp_path_factory.mktemp("tok"))
    cfg = preset("tiny")
    cfg.vocab_size = tok.vocab_size
    model = EagerCaller(cfg).init_weights(torch.Generator().manual_seed(7)).eval()
    model.pushed = [tok.token_to_id(TOOL_CALLS_SECTION_BEGIN)]
    # the reference runner calls the model's forward (the fast one reads the weights itself)
    with model_server(tok, model, runner="reference", max_model_len=2048, reasoning=False) as server:
        yield server


@pytest.fixture()
def oai(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture()
def claude(srv) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=srv.url, api_key="unused", max_retries=0, timeout=120)


def _push(srv, *markers: str) -> dict[str, int]:
    """logit_bias that makes the model want these markers at every step."""
    return {str(srv.tok.token_to_id(m)): 100 for m in markers}


def _openai_json(oai, schema: dict, seed: int, stream: bool) -> tuple[str, str]:
    kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Reply in JSON."}], max_tokens=MAX_TOKENS,
                  temperature=1.0, seed=seed,
                  response_format={"type": "json_schema", "json_schema": {"name": f"s{seed}", "schema": schema, "strict": True}})
    if not stream:
        reply = oai.chat.completions.create(**kwargs)
        return reply.choices[0].message.content, reply.choices[0].finish_reason
    text, finish = "", None
    for chunk in oai.chat.completions.create(stream=True, **kwargs):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_every_json_schema_reply_parses_and_validates(srv, oai):
    assert len(SCHEMAS) >= 30
    jobs = [(schema, seed, seed % 2 == 1) for seed, schema in enumerate(SCHEMAS)]
    with ThreadPoolExecutor(8) as pool:  # concurrent: the engine batches constrained rows together
        results = list(pool.map(lambda job: _openai_json(oai, *job), jobs))
    for (schema, seed, stream), (text, finish) in zip(jobs, results):
        assert finish == "stop", (seed, text)
        jsonschema.validate(json.loads(text), schema)
        assert not any(m in text for m in MARKER_NAMES)


def _finished_objects(texts_and_finishes) -> int:
    """Every finished reply is a JSON object (noise may run out of tokens in an unbounded string: those are cut)."""
    finished = [text for text, finish in texts_and_finishes if finish in ("stop", "tool_calls")]
    assert all(isinstance(json.loads(text), dict) for text in finished)
    return len(finished)


def test_json_object_and_the_schema_grammar_is_compiled_once(srv, oai):
    replies = oai.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], seed=0, n=4,
                                          temperature=1.0, max_tokens=UNBOUNDED_MAX_TOKENS,
                                          response_format={"type": "json_object"}).choices
    assert _finished_objects([(r.message.content, r.finish_reason) for r in replies]) >= 2
    compiler = srv.engine.llm.engine.grammar_compiler()
    before = compiler.compiled
    for seed in range(2):
        _openai_json(oai, SCHEMAS[0], seed, stream=False)
    assert compiler.compiled - before <= 1


def _openai_calls(oai, srv, tools, choice, *, parallel=None, stream=False, seed=0, bias=(TOOL_CALLS_SECTION_BEGIN,),
                  max_tokens=MAX_TOKENS):
    kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "Use a tool."}], max_tokens=max_tokens,
                  temperature=1.0, seed=seed, tools=tools, tool_choice=choice)
    if parallel is not None:
        kwargs["parallel_tool_calls"] = parallel
    if bias:
        kwargs["logit_bias"] = _push(srv, *bias)
    if not tools:
        kwargs.pop("tools"), kwargs.pop("tool_choice")
    if not stream:
        choice0 = oai.chat.completions.create(**kwargs).choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice0.message.tool_calls or []]
        return choice0.message.content or "", calls, choice0.finish_reason
    content, calls, finish = "", {}, None
    for chunk in oai.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            name, args = calls.get(call.index, ("", ""))
            calls[call.index] = (name + (call.function.name or ""), args + (call.function.arguments or ""))
        finish = chunk.choices[0].finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


def _tool(name: str, schema: dict, strict: bool = True) -> dict:
    return {"type": "function", "function": {"name": name, "parameters": schema, "strict": strict}}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_tool_choice_values(srv, oai, stream):
    calc, weather = _tool("calculator", CALCULATOR), _tool("get_weather", WEATHER)
    named = {"type": "function", "function": {"name": "get_weather"}}
    cases = {
        "auto_calc_only": ([calc], "auto", {}),  # the model pushed to call: a call can only name calculator
        "no_tools": (None, None, {}),  # no call can start, however hard the model is pushed
        "none": ([calc, weather], "none", {}),  # an answer in text
        "required": ([calc, weather], "required", {"bias": ()}),  # no push: still at least one call
        "named": ([calc, weather], named, {"bias": (TOOL_CALL_BEGIN,)}),  # exactly one call to it, pushed for more
        "one_call": ([calc, weather], "required", {"parallel": False, "bias": (TOOL_CALL_BEGIN,)}),
    }
    with ThreadPoolExecutor(6) as pool:  # concurrent: one batch
        futures = {k: pool.submit(_openai_calls, oai, srv, tools, choice, stream=stream, **kw)
                   for k, (tools, choice, kw) in cases.items()}
        out = {k: f.result() for k, f in futures.items()}
    schemas = {"calculator": CALCULATOR, "get_weather": WEATHER}
    content, calls, finish = out["auto_calc_only"]
    assert calls and {n for n, _ in calls} == {"calculator"} and finish == "tool_calls"
    for key in ("no_tools", "none"):
        content, calls, finish = out[key]
        assert calls == [] and finish in ("stop", "length") and not any(m in content for m in TOOL_MARKERS), key
    content, calls, finish = out["required"]
    assert calls and finish == "tool_calls" and content == ""
    content, calls, finish = out["named"]
    assert [n for n, _ in calls] == ["get_weather"] and finish == "tool_calls"
    content, calls, finish = out["one_call"]
    assert len(calls) == 1 and finish == "tool_calls"
    for key in ("auto_calc_only", "required", "named", "one_call"):
        for name, args in out[key][1]:
            jsonschema.validate(json.loads(args), schemas[name])


def test_openai_non_strict_tool_arguments_are_a_json_object(srv, oai):
    loose = {"type": "function", "function": {"name": "anything", "parameters": {"type": "object"}}}
    with ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda seed: _openai_calls(oai, srv, [loose], "required", seed=seed, bias=(),
                                                           max_tokens=UNBOUNDED_MAX_TOKENS, parallel=False), range(4)))
    assert all(calls and {n for n, _ in calls} == {"anything"} for _, calls, _ in replies)
    assert _finished_objects([(args, finish) for _, calls, finish in replies for _, args in calls[:1]]) >= 2


@pytest.mark.parametrize("stream", [False, True])
def test_strict_tool_arguments_validate_over_the_corpus_in_both_apis(srv, oai, claude, stream):
    objects = [s for s in SCHEMAS if s.get("type") == "object" and "$ref" not in s][:10]

    def run(job):
        i, schema = job
        if i % 2:  # Anthropic
            kwargs = dict(model=MODEL_NAME, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": "go"}],
                          tools=[{"name": f"tool_{i}", "input_schema": schema, "strict": True}], tool_choice={"type": "any"})
            if stream:
                with claude.messages.stream(**kwargs) as events:
                    message = events.get_final_message()
            else:
                message = claude.messages.create(**kwargs)
            calls = [(b.name, b.input) for b in message.content if b.type == "tool_use"]
            texts = "".join(b.text for b in message.content if b.type == "text")
            if not calls and NUMBER_TOO_LARGE in texts:  # noise wrote 1e<thousands of digits>: valid JSON, no Python value
                return [(f"tool_{i}", None)], "tool_use"
            return calls, message.stop_reason
        _, calls, finish = _openai_calls(oai, srv, [_tool(f"tool_{i}", schema)], "required", stream=stream, seed=i, bias=())
        return [(n, json.loads(a)) for n, a in calls], {"tool_calls": "tool_use"}.get(finish, finish)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, enumerate(objects)))
    for (i, schema), (calls, stop) in zip(enumerate(objects), results):
        assert calls and stop == "tool_use", (i, calls)
        for name, value in calls:
            assert name == f"tool_{i}"
            if value is not None:
                jsonschema.validate(value, schema)


def _anthropic(claude, srv, tools, choice):
    kwargs = dict(model=MODEL_NAME, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": "go"}])
    if tools:
        kwargs["tools"] = tools
    if choice:
        kwargs["tool_choice"] = choice
    return claude.messages.create(**kwargs)


def test_anthropic_tool_choice_values(srv, claude):
    calc = {"name": "calculator", "input_schema": CALCULATOR, "strict": True}
    weather = {"name": "get_weather", "input_schema": WEATHER, "strict": True}
    uses = lambda m: [(b.name, b.input) for b in m.content if b.type == "tool_use"]  # noqa: E731
    any_call = _anthropic(claude, srv, [calc, weather], {"type": "any"})
    assert uses(any_call) and any_call.stop_reason == "tool_use"
    for name, value in uses(any_call):
        jsonschema.validate(value, {"calculator": CALCULATOR, "get_weather": WEATHER}[name])
    named = _anthropic(claude, srv, [calc, weather], {"type": "tool", "name": "calculator", "disable_parallel_tool_use": True})
    assert [n for n, _ in uses(named)] == ["calculator"]
    none = _anthropic(claude, srv, [calc, weather], {"type": "none"})
    assert uses(none) == [] and none.stop_reason in ("end_turn", "max_tokens")
    text = "".join(b.text for b in none.content if b.type == "text")
    assert not any(m in text for m in TOOL_MARKERS)
    auto = _anthropic(claude, srv, [calc], {"type": "auto"})  # the eager model calls: only calculator exists
    assert uses(auto) and all(n == "calculator" for n, _ in uses(auto))
    no_tools = _anthropic(claude, srv, None, None)
    assert uses(no_tools) == [] and not any(m in b.text for b in no_tools.content if b.type == "text" for m in TOOL_MARKERS)


def test_n_samples_are_independent_and_each_one_valid(srv, oai):
    schema = SCHEMAS[7]  # tags: 1-3 bounded strings
    kwargs = dict(model=MODEL_NAME, messages=[{"role": "user", "content": "n"}], max_tokens=MAX_TOKENS, temperature=1.0,
                  seed=11, response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}})
    many = oai.chat.completions.create(n=4, **kwargs)
    texts = [c.message.content for c in many.choices]
    for text in texts:
        jsonschema.validate(json.loads(text), schema)
    assert len(set(texts)) >= 3  # noise: independent samples differ
    assert oai.chat.completions.create(**kwargs).choices[0].message.content == texts[0]  # choice 0 is the n=1 sample
