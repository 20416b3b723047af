"""End to end on a real checkpoint: `kimi-k2 serve` arguments -> checkpoint directory (random tiny K2 weights in
safetensors, config.json, a BPE tokenizer trained here) -> engine (fast runner) -> HTTP -> the official SDKs.

The weights are random, so the text is noise; what is checked is that the served tokens are exactly the
reference greedy loop's (`kimi_k2.model.generate.greedy_decode` on the same weights) and that usage and
finish reasons add up.
"""

from __future__ import annotations

import json
import shutil

import anthropic
import openai
import pytest
import torch
from safetensors.torch import save_file

from kimi_k2.cli import build_parser
from kimi_k2.config import preset
from kimi_k2.model.generate import greedy_decode
from kimi_k2.model.transformer import random_model
from kimi_k2.server import cli as serve_cli
from kimi_k2.server.background import BackgroundServer
from tests.server_helpers import trained_tokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-k2")
    tok_dir = tmp_path_factory.mktemp("tok")
    tok = trained_tokenizer(tok_dir)
    for name in ("tiktoken.model", "tokenizer_config.json"):
        shutil.copy(tok_dir / name, directory / name)
    cfg = preset("tiny")
    cfg.vocab_size = tok.vocab_size
    model = random_model(cfg, seed=3)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps(cfg.to_hf()))
    return directory, model.eval(), tok


@pytest.fixture(scope="module")
def server(checkpoint):
    directory, _, _ = checkpoint
    args = build_parser().parse_args(["serve", "--model", str(directory), "--kv-memory", "8MiB", "--max-model-len", "256",
                                      "--served-model-name", "tiny-k2", "--api-key", "secret"])
    app, engine = serve_cli.build(args)
    try:
        with BackgroundServer(app) as running:
            yield running.url, app.state.server
    finally:
        engine.shutdown()


def reference_tokens(model, tok, prompt_ids: list[int], n: int) -> list[int]:
    """Greedy tokens of the plain reference loop, cut after the first stop token like the engine."""
    with torch.no_grad():
        out = greedy_decode(model, prompt_ids, n, use_cache=False)
    for i, token in enumerate(out):
        if token in tok.stop_token_ids:
            return out[: i + 1]
    return out


def test_completions_match_the_reference_greedy_loop(server, checkpoint):
    url, state = server
    _, model, tok = checkpoint
    client = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0, timeout=60)
    prompt_ids = tok.encode("The quick brown fox jumps over the lazy dog.")
    reply = client.completions.create(model="tiny-k2", prompt=prompt_ids, max_tokens=12, temperature=0, logprobs=0)
    expected = reference_tokens(model, tok, prompt_ids, 12)
    served = reply.choices[0].logprobs.tokens
    assert served == [tok.token_bytes(t).decode("utf-8", errors="replace") for t in expected]
    assert reply.usage.prompt_tokens == len(prompt_ids) and reply.usage.completion_tokens == len(expected)
    assert reply.choices[0].finish_reason == ("length" if len(expected) == 12 else "stop")
    assert state.model_name == "tiny-k2" and state.max_model_len == 256


def test_chat_and_messages_on_the_real_model(server, checkpoint):
    url, _ = server
    _, model, tok = checkpoint
    client = openai.OpenAI(base_url=url + "/v1", api_key="secret", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Weather in Beijing?"}]
    stream = client.chat.completions.create(model="tiny-k2", messages=messages, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    usage = chunks[-1].usage
    expected = reference_tokens(model, tok, list(tok.apply_chat_template(messages)), 6)
    assert usage.prompt_tokens == len(tok.apply_chat_template(messages)) and usage.completion_tokens == len(expected)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop", "tool_calls")

    anthropic_client = anthropic.Anthropic(base_url=url, api_key="secret", max_retries=0, timeout=60)
    with anthropic_client.messages.stream(model="tiny-k2", max_tokens=6, messages=messages) as events:
        kinds = [event.type for event in events]
        final = events.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.usage.output_tokens == len(expected)
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == usage.prompt_tokens
    assert final.stop_reason == ("max_tokens" if len(expected) == 6 else final.stop_reason)

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()


def test_serve_rejects_bad_arguments(checkpoint, tmp_path):
    directory, _, _ = checkpoint
    parse = build_parser().parse_args
    with pytest.raises(FileNotFoundError, match="no such directory"):
        serve_cli.build(parse(["serve", "--model", str(tmp_path / "missing")]))
    with pytest.raises(ValueError, match="--max-model-len 100000"):
        serve_cli.build(parse(["serve", "--model", str(directory), "--max-model-len", "100000"]))
    assert serve_cli.parse_bytes("2GiB") == 2 * 2**30 and serve_cli.parse_bytes("512") == 512
    with pytest.raises(ValueError, match="expected a size"):
        serve_cli.parse_bytes("lots")


@pytest.mark.parametrize("command", ["serve", "generate", "chat"])
@pytest.mark.parametrize(("argv", "needle"), [
    (["--kv-memory", "2XB"], "argument --kv-memory: '2XB': expected a size like 512MiB, 2GiB"),
    (["--max-model-len", "lots"], "argument --max-model-len: 'lots': expected a whole number"),
    (["--threads", "0"], "argument --threads: '0': must be at least 1"),
])
def test_bad_option_values_say_what_is_expected(command, argv, needle, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *argv])
    assert needle in capsys.readouterr().err


def test_serve_takes_a_hub_id_from_the_local_cache_a_chat_template_and_the_checkpoint_dtype(checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    directory, _, _ = checkpoint
    cache = tmp_path / "hub"
    snapshot = cache / "models--test-org--tiny-k2" / "snapshots" / "0123abcd"
    shutil.copytree(directory, snapshot)
    (cache / "models--test-org--tiny-k2" / "refs").mkdir()
    (cache / "models--test-org--tiny-k2" / "refs" / "main").write_text("0123abcd")
    config = json.loads((snapshot / "config.json").read_text())
    (snapshot / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16"}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    template = tmp_path / "template.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}<|im_assistant|>assistant<|im_middle|>")
    parse = build_parser().parse_args
    app, engine = serve_cli.build(parse(["serve", "--model", "test-org/tiny-k2", "--kv-memory", "4MiB",
                                         "--chat-template", str(template)]))
    try:
        state = app.state.server
        assert state.model_name == "test-org/tiny-k2"  # the id clients know it by
        assert engine.llm.model.compute_dtype == torch.float32  # --dtype auto over weights kept as stored
        assert state.tokenizer.chat_template == template.read_text()
        assert state.tokenizer.decode(state.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])) == \
            "hi<|im_assistant|>assistant<|im_middle|>"
    finally:
        engine.shutdown()
    app, engine = serve_cli.build(parse(["serve", "--model", "test-org/tiny-k2", "--kv-memory", "4MiB", "--weights",
                                         "dequantize"]))
    try:  # weights converted on load: --dtype auto is the checkpoint's torch_dtype
        assert engine.llm.model.compute_dtype == torch.bfloat16
        assert engine.llm.model.lm_head.weight.dtype == torch.bfloat16
    finally:
        engine.shutdown()
    with pytest.raises(FileNotFoundError, match="test-org/absent: no such directory, and not in the Hugging Face cache .*hf download"):
        serve_cli.build(parse(["serve", "--model", "test-org/absent"]))
    with pytest.raises(FileNotFoundError, match="--chat-template .*missing.jinja: no such file"):
        serve_cli.build(parse(["serve", "--model", str(directory), "--chat-template", str(tmp_path / "missing.jinja")]))
    template.write_text("{% for m in messages %}")
    with pytest.raises(ValueError, match="--chat-template .*template.jinja: chat template syntax error"):
        serve_cli.build(parse(["serve", "--model", str(directory), "--chat-template", str(template)]))
