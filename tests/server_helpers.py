"""Shared set-up of the server tests: a trained tokenizer, the scripted model on the real engine, a live server.

`ScriptedServer` starts uvicorn on 127.0.0.1 (random free port) in a background thread, serving `AsyncLLM` over
`LLM(ScriptedModel, runner="reference")` — the production engine and HTTP code; only the model's logits are
scripted. `reply_ids(text)` turns a reply written with K2 markup (`call_markup(...)` writes tool calls) into the
token ids the model should emit.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from kimi_k2.engine.async_engine import AsyncLLM
from kimi_k2.engine.llm import LLM, sampling_defaults
from kimi_k2.server.app import create_app, server_state
from kimi_k2.server.background import BackgroundServer
from tests.scripted_model import ScriptedModel, scripted_config
from kimi_k2.server.state import ServerState
from kimi_k2.tokenizer.tokenizer import Tokenizer
from tests.tokenizer_corpus import train_test_tokenizer

MODEL_NAME = "kimi-k2-test"
ASSISTANT_HEADER = "<|im_assistant|>assistant<|im_middle|>"


def trained_tokenizer(directory: Path) -> Tokenizer:
    train_test_tokenizer(directory)
    return Tokenizer.from_pretrained(directory)


def reply_ids(tok: Tokenizer, text: str, end: bool = True) -> list[int]:
    """Ids of a scripted reply (markup allowed), ending with `<|im_end|>` unless `end=False`."""
    return tok.encode(text, allow_special=True) + ([tok.im_end_id] if end else [])


def call_markup(*calls: tuple[str, str]) -> str:
    """K2 tool-call markup for (id, JSON arguments) pairs, as the model writes it."""
    body = "".join(f"<|tool_call_begin|>{cid}<|tool_call_argument_begin|>{args}<|tool_call_end|>" for cid, args in calls)
    return f"<|tool_calls_section_begin|>{body}<|tool_calls_section_end|>"


@dataclass
class ScriptedServer:
    url: str
    model: ScriptedModel
    engine: AsyncLLM
    state: ServerState
    tok: Tokenizer
    server: BackgroundServer

    def stop(self) -> None:
        """Shut the HTTP server down as Ctrl-C does (open requests get the drain time, then are cut)."""
        self.server.stop()

    def script(self, *replies: str | list[int], delay_s: float | None = None) -> None:
        """Set the replies for turn 1, 2, ... (text with markup, or ids)."""
        self.model.set_script([r if isinstance(r, list) else reply_ids(self.tok, r) for r in replies], delay_s)

    def stats(self) -> Any:
        return self.engine.stats()


@contextmanager
def scripted_server(
    tok: Tokenizer,
    *,
    delay_s: float = 0.0,
    **options: Any,
) -> Iterator[ScriptedServer]:
    """`options`: `model_server` keywords (limits, generation_config, more `server_state` keywords)."""
    trigger = tok.encode(ASSISTANT_HEADER, allow_special=True)
    model = ScriptedModel(scripted_config(tok.vocab_size), trigger, [], tok.im_end_id, delay_s).eval()
    with model_server(tok, model, runner="reference", **options) as server:
        yield server


@contextmanager
def model_server(
    tok: Tokenizer,
    model: Any,
    *,
    runner: str = "fast",
    api_key: str | None = None,
    max_queue: int = 16,
    max_num_seqs: int = 8,
    num_kv_blocks: int = 256,
    max_model_len: int = 1024,
    drain_s: float = 2.0,
    generation_config: dict[str, Any] | None = None,
    **state_options: Any,
) -> Iterator[ScriptedServer]:
    """A live server over `model` (the scripted one, or random weights). `state_options`: more `server_state`
    keywords (max_request_bytes, allowed_origins, reasoning, ...)."""
    llm = LLM(
        model,
        tokenizer=tok,
        runner=runner,
        num_kv_blocks=num_kv_blocks,
        block_size=16,
        max_num_seqs=max_num_seqs,
        max_model_len=max_model_len,
    )
    if generation_config is not None:  # as LLM reads it from a checkpoint directory's generation_config.json
        llm.sampling_defaults = sampling_defaults(generation_config)
    engine = AsyncLLM(llm)
    state = server_state(engine, MODEL_NAME, api_key=api_key, max_queue=max_queue, **state_options)
    try:
        with BackgroundServer(create_app(state), drain_s=drain_s) as server:
            yield ScriptedServer(server.url, model, engine, state, tok, server)
    finally:
        engine.shutdown()
