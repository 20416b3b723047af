"""`kimi-k2 eval` and lm-eval's needs against this project's server on the built-in nano model.

The server is `kimi-k2 serve`'s own app (built by `server.cli.build`) on a loopback port in this process. The
eval figures are checked against a hand check through the official openai SDK; the echoed prompt logprobs
(`/v1/completions` with `echo`, `logprobs`, `max_tokens: 0`, what lm-eval's `local-completions` sends) are
checked against the engine's own logprobs of the same tokens when it generated them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import httpx
import pytest

from kimi_k2.eval.client import Client
from kimi_k2.eval.reproduce import run_reproduce
from kimi_k2.eval.suite import load_suite
from kimi_k2.eval.tools import run_tools_eval
from kimi_k2.server.background import BackgroundServer
from kimi_k2.server.cli import build, register

MODEL = "nano-k2"


@pytest.fixture(scope="module")
def server():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--served-model-name", MODEL, "--max-num-seqs", "8", "--kv-memory", "64MiB"])
    app, engine = build(args)
    try:
        with BackgroundServer(app) as background:
            yield background
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def results(server):
    with Client(f"{server.url}/v1") as client:
        return run_tools_eval(client, load_suite(), MODEL, concurrency=4)


def test_tools_eval_on_the_built_in_model(results):
    t = results["totals"]
    assert t["failed_requests"] == 0 and t["follow_ups_refused"] == 0
    # what the endpoint does wrong: nothing. The model's own mistakes are with tools it never learned: it was
    # trained to decline what its four tools cannot do, so mostly it makes no call (a follow-up round then has
    # nothing to answer: skipped); a call it is made to make (tool_choice required) names the declared tool,
    # as the grammar allows no other, with arguments off that tool's schema
    assert (t["json_errors"], t["undeclared"], t["id_errors"], t["finish_mismatch"]) == (0, 0, 0, 0)
    demo_tools = {"get_weather", "calculator", "convert_units", "get_time"}
    off_schema = [c["name"] for r in results["requests"] for c in r.get("calls", []) if "schema_errors" in c["problems"]]
    assert len(off_schema) == t["schema_errors"] and not set(off_schema) & demo_tools
    demo = [r for r in results["requests"] if "demo" in r["tags"] and r.get("skipped") is None]
    assert all(r["made_call"] == r["expected_call"] for r in demo if r["expected_call"])  # recall 1 on its own tools
    assert all(r["key"].endswith("#2") for r in results["requests"] if r.get("skipped"))
    assert t["decision"]["precision"] == 1.0
    rows = {r["key"]: r for r in results["requests"]}
    first = rows["weather-single#1"]["calls"]
    assert [(c["id"], c["name"], json.loads(c["arguments"])) for c in first] == [("functions.get_weather:0", "get_weather", {"city": "Genova"})]
    # K2 numbers calls across the conversation: the history's one call makes the next one :1, also when the
    # client's history used a foreign id (the server showed the model K2's form)
    assert [c["id"] for c in rows["history-k2-ids-next-call#1"]["calls"]] == ["functions.get_time:1"]
    assert [c["id"] for c in rows["history-foreign-ids-next-call#1"]["calls"]] == ["functions.convert_units:1"]
    assert rows["weather-then-answer#2"]["finish_reason"] == "stop" and "foggy" in rows["weather-then-answer#2"]["content"]
    assert rows["choice-none#1"]["calls"] == [] and rows["choice-named#1"]["calls"][0]["name"] == "get_time"


@pytest.mark.parametrize("case_id", ["weather-single", "choice-none", "no-call-greeting", "calendar-nested", "parallel-off-one-call"])
def test_figures_match_a_hand_check_with_the_openai_sdk(results, openai_client, case_id):
    case = next(c for c in load_suite().cases if c.id == case_id)
    extra = {k: v for k, v in (("tool_choice", case.tool_choice), ("parallel_tool_calls", case.parallel_tool_calls)) if v is not None}
    reply = openai_client.chat.completions.create(model=MODEL, messages=case.messages, tools=case.tools, temperature=0,
                                                  seed=0, max_tokens=case.max_tokens, **extra)  # fmt: skip
    choice = reply.choices[0]
    calls = choice.message.tool_calls or []
    row = next(r for r in results["requests"] if r["key"] == f"{case_id}#1")
    assert row["finish_reason"] == choice.finish_reason
    assert row["made_call"] == bool(calls)
    assert [(c["id"], c["name"], c["arguments"]) for c in row["calls"]] == [(c.id, c.function.name, c.function.arguments) for c in calls]
    declared = set(case.tool_names())
    assert row["counts"]["undeclared"] == sum(c.function.name not in declared for c in calls)
    assert row["counts"]["json_errors"] == 0 and row["counts"]["id_errors"] == 0


def test_reproduce_reports_no_difference_on_our_server(server):
    suite = load_suite()
    suite = dataclasses.replace(suite, cases=suite.cases[:16])  # the CLI runs all 28; 16 keep the test short
    with Client(f"{server.url}/v1") as client:
        doc = run_reproduce(client, suite, MODEL, concurrency=8)
    assert doc["requests"] == 16
    assert doc["errors"] == [] and doc["differences"] == []
    assert len({json.dumps(o, sort_keys=True) for o in doc["outputs"].values()}) > 8  # real, varied outputs


def test_echoed_prompt_logprobs_equal_the_engines_own(server, openai_client):
    """lm-eval's log-likelihood request: echo + logprobs + max_tokens 0 on token ids. The engine's logprobs of
    the tokens it generated (fast runner, paged cache) must equal what the server reports for the same tokens
    echoed back as a prompt (one full forward of the model)."""
    from kimi_k2.assets import default_model_dir
    from kimi_k2.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(default_model_dir())
    messages = [{"role": "user", "content": "Who are you?"}]
    reply = openai_client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16, logprobs=True)
    generated = reply.choices[0].logprobs.content
    gen_ids = [tok.encoding.encode_single_token(bytes(e.bytes)) for e in generated]
    prompt_ids = list(tok.apply_chat_template(messages, add_generation_prompt=True))
    assert reply.usage.prompt_tokens == len(prompt_ids) and len(gen_ids) >= 5
    ids = prompt_ids + gen_ids
    scored = openai_client.completions.create(model=MODEL, prompt=ids, echo=True, logprobs=1, max_tokens=0)
    choice = scored.choices[0]
    lp = choice.logprobs
    assert choice.finish_reason == "length" and scored.usage.completion_tokens == 0 and scored.usage.prompt_tokens == len(ids)
    assert choice.text == tok.decode(ids) and len(lp.tokens) == len(lp.token_logprobs) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None and lp.text_offset[0] == 0
    served = lp.token_logprobs[len(prompt_ids):]
    assert max(abs(a - e.logprob) for a, e in zip(served, generated)) < 1e-4
    # greedy tokens are the top-1 alternative of their own position
    assert all(list(top.values())[0] == pytest.approx(x, abs=1e-6) for top, x in zip(lp.top_logprobs[len(prompt_ids):], served))


def test_echo_with_generation_and_streaming(server, openai_client):
    ids = [int(t) for t in httpx.post(f"{server.url}/tokenize", json={"prompt": "What is 2 + 3?"}).json()["tokens"]]
    full = openai_client.completions.create(model=MODEL, prompt=ids, echo=True, logprobs=0, max_tokens=3, temperature=0)
    lp = full.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + full.usage.completion_tokens
    only = openai_client.completions.create(model=MODEL, prompt=ids, echo=True, logprobs=0, max_tokens=0)
    assert only.choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(ids)]
    chunks = list(openai_client.completions.create(model=MODEL, prompt=ids, echo=True, logprobs=0, max_tokens=0, stream=True))
    assert chunks[0].choices[0].text == "What is 2 + 3?" and chunks[0].choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(ids)]
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tokenizer_endpoints_and_errors(server):
    info = httpx.get(f"{server.url}/tokenizer_info").json()
    assert info["eos_token"] == "[EOS]" and "chat_template" in info and info["model_max_length"] > 0
    from kimi_k2.assets import default_model_dir
    from kimi_k2.tokenizer import Tokenizer

    im_end = Tokenizer.from_pretrained(default_model_dir()).im_end_id
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello<|im_end|>"}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["tokens"][-1] == im_end  # the special token, not its text
    assert httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json() == {"prompt": "Hello<|im_end|>"}
    bad = httpx.post(f"{server.url}/detokenize", json={"tokens": [10**6]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"
    no_echo = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 0})
    assert no_echo.status_code == 400 and no_echo.json()["error"]["param"] == "max_tokens"
    assert "needs echo=true" in no_echo.json()["error"]["message"]


def test_engine_prompt_logprobs_equal_a_plain_forward_and_name_bad_input():
    import torch

    from kimi_k2 import LLM
    from kimi_k2.assets import NANO_MODEL_DIR

    llm = LLM(NANO_MODEL_DIR, num_kv_blocks=16)
    ids = llm.encode("What is 652 + 17? It is 669.")
    scored = llm.engine.prompt_logprobs(ids, top=2, rows_per_chunk=5)  # several LM-head chunks
    with torch.inference_mode():
        logp = llm.engine.model(torch.tensor([ids]))[0, :-1].float().log_softmax(-1)
    assert [s.token_id for s in scored] == ids[1:]
    assert max(abs(s.logprob - float(logp[i, t])) for i, (s, t) in enumerate(zip(scored, ids[1:]))) < 1e-5
    assert all(len(s.top) == 2 and s.top[0][1] >= s.top[1][1] and s.top[0][1] >= s.logprob - 1e-6 for s in scored)
    assert llm.engine.stats().kv_blocks_used == 0 and llm.engine.prompt_logprobs(ids[:1]) == []
    vocab = llm.engine.model.config.vocab_size
    with pytest.raises(ValueError, match=rf"prompt_logprobs: token id 99999 is outside the vocabulary \[0, {vocab}\)"):
        llm.engine.prompt_logprobs([1, 99999])
    with pytest.raises(ValueError, match=r"prompt_logprobs: top=21 must be in \[0, 20\]"):
        llm.engine.prompt_logprobs(ids, top=21)
