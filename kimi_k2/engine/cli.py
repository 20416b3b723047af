"""`kimi-k2 generate` and `kimi-k2 chat`: run a checkpoint from the command line, streaming.

`generate` answers one prompt. On a chat model (a checkpoint that ships a chat template, or `--chat-template
FILE`) the prompt is sent as a user message through the template, as `chat` does; `--raw` completes the text
as it is instead (and `--chat` forces the template on a checkpoint without one: K2's built-in template).
`--prompt-ids` (token ids, for a checkpoint without a tokenizer) is always raw. `chat` is an interactive
conversation through the chat template; assistant output goes through the tokenizer's streaming output parser,
so reasoning and tool calls are shown as such (`[tool call functions.get_weather:0] get_weather({...})`).

The model options (`--model`, `--dtype`, `--kv-memory`, `--max-model-len`, `--threads`, `--chat-template`) are
`serve`'s, with the same names and units (`kimi_k2/cli_options.py`). Sampling options left out take the
checkpoint's defaults (`generation_config.json`: temperature, top_p, top_k, min_p, repetition_penalty; else
K2's temperature 0.6 and no filters).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kimi_k2.cli_options import (
    add_model_options,
    parallel_kwargs,
    positive_int,
    read_chat_template,
    resolve_dtype,
    resolve_model,
    run_worker_rank,
)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_options(parser)
    parser.add_argument("--max-tokens", type=positive_int, default=512, help="most tokens to generate per reply (512)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the checkpoint's, else 0.6)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling (default: the checkpoint's, else 1 = off)")
    parser.add_argument("--top-k", type=int, help="0 = off (default: the checkpoint's, else off)")
    parser.add_argument("--min-p", type=float, help="0 = off (default: the checkpoint's, else off)")
    parser.add_argument("--repetition-penalty", type=float, help="1 = off (default: the checkpoint's, else off)")
    parser.add_argument("--seed", type=int, help="fix the sampling seed")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="answer one prompt with a checkpoint, streaming the text")
    _add_common(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (needs the checkpoint's tokenizer)")
    source.add_argument("--prompt-ids", help="comma-separated prompt token ids (raw completion)")
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--raw", action="store_true", help="complete the prompt text as is, without the chat template")
    mode.add_argument("--chat", action="store_true",
                      help="use the chat template even if the checkpoint has none of its own (K2's built-in one)")
    gen.add_argument("--system", help="system message (chat rendering only)")
    gen.set_defaults(func=_generate)

    chat = subparsers.add_parser("chat", help="interactive streaming chat with a checkpoint (shows tool calls)")
    _add_common(chat)
    chat.add_argument("--system", help="system message")
    chat.set_defaults(func=_chat)


def _sampling_params(args: argparse.Namespace, defaults: dict[str, float]) -> Any:
    from kimi_k2.engine.sampling_params import SamplingParams

    def pick(name: str, neutral: float) -> Any:
        value = getattr(args, name)
        return value if value is not None else defaults.get(name, neutral)

    try:
        return SamplingParams(
            temperature=args.temperature,
            top_p=pick("top_p", 1.0),
            top_k=int(pick("top_k", 0)),
            min_p=pick("min_p", 0.0),
            repetition_penalty=pick("repetition_penalty", 1.0),
            max_tokens=args.max_tokens,
            seed=args.seed,
            stop=list(args.stop),
        )
    except ValueError as exc:  # "SamplingParams.top_p=2.0: must be in (0, 1]" -> "--top-p 2.0: must be in (0, 1]"
        field = getattr(exc, "field", None)
        if field is None:
            raise
        message = str(exc).split(": ", 1)[-1]
        raise ValueError(f"--{field.replace('_', '-')} {getattr(args, field)}: {message}") from None


def _load(args: argparse.Namespace) -> Any:
    import torch

    from kimi_k2.config import ModelConfig
    from kimi_k2.engine.llm import LLM

    model_dir = resolve_model(args.model)
    template = read_chat_template(args.chat_template) if args.chat_template else None
    dtype = resolve_dtype(args, ModelConfig.from_pretrained(model_dir))
    print(f"loading {model_dir} ({dtype}) ...", file=sys.stderr, flush=True)
    llm = LLM(model_dir, dtype=getattr(torch, dtype), weights=args.weights, mmap=not args.no_mmap,
              int8_activations=args.int8_activations, num_threads=args.threads, kv_cache_memory=args.kv_memory,
              max_model_len=args.max_model_len, **parallel_kwargs(args))
    if template is not None:
        if llm.tokenizer is None:
            raise ValueError(f"--chat-template: {model_dir} has no tokenizer (tiktoken.model) to render it with")
        llm.tokenizer.chat_template = template
        llm.tokenizer.has_own_chat_template = True
    return llm


def renders_chat(args: argparse.Namespace, tokenizer: Any) -> bool:
    """Whether `generate` sends the prompt through the chat template (the default on a chat model)."""
    if args.prompt_ids is not None or args.raw or tokenizer is None:
        return False
    return bool(args.chat or getattr(tokenizer, "has_own_chat_template", False))


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--prompt-ids: expected comma-separated integers, got {text!r}") from None


def _generate(args: argparse.Namespace) -> int:
    if args.prompt_ids is not None and args.chat:
        raise ValueError("--chat needs --prompt text, not --prompt-ids")
    _sampling_params(args, {})  # a bad value fails before the model loads
    worker = run_worker_rank(args)  # torchrun's ranks 1..N-1 run steps, rank 0 answers
    if worker is not None:
        return worker
    with _load(args) as llm:
        return _answer(args, llm)


def _answer(args: argparse.Namespace, llm: Any) -> int:
    params = _sampling_params(args, llm.sampling_defaults)
    chat = renders_chat(args, llm.tokenizer)
    if args.system and not chat:
        raise ValueError("--system needs the chat template: drop --raw / --prompt-ids, or add --chat")
    if args.prompt_ids is not None:
        prompt: Any = _parse_ids(args.prompt_ids)
    elif chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": args.prompt}
        ]
        prompt = llm.encode_chat(messages)
    else:
        prompt = args.prompt
    final = None
    for delta in llm.stream(prompt, params):
        if llm.tokenizer is not None:
            print(delta.text, end="", flush=True)
        else:
            print(" ".join(map(str, delta.token_ids)), end=" " if delta.token_ids else "", flush=True)
        final = delta
    print()
    if final is not None:
        print(
            f"[{final.num_completion_tokens} tokens, finish_reason={final.finish_reason}, "
            f"prompt {final.num_prompt_tokens} tokens]",
            file=sys.stderr,
        )
    return 0


def _chat(args: argparse.Namespace) -> int:
    _sampling_params(args, {})  # a bad value fails before the model loads
    worker = run_worker_rank(args)
    if worker is not None:
        return worker
    with _load(args) as llm:
        return _converse(args, llm)


def _converse(args: argparse.Namespace, llm: Any) -> int:
    from kimi_k2.tokenizer.events import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
    from kimi_k2.tokenizer.output_parser import OutputParser

    params = _sampling_params(args, llm.sampling_defaults)
    if llm.tokenizer is None:
        raise ValueError(f"{args.model}: chat needs a tokenizer (tiktoken.model) in the checkpoint directory")
    messages: list[dict[str, Any]] = [{"role": "system", "content": args.system}] if args.system else []
    print("chat: empty line or Ctrl-D to quit, /reset to start over", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        if not line.strip():
            return 0
        if line.strip() == "/reset":
            messages = messages[:1] if args.system else []
            continue
        messages.append({"role": "user", "content": line})
        parser = OutputParser()
        content, calls = "", []
        for delta in llm.stream(llm.encode_chat(messages), params):
            for event in parser.feed(delta.text) + (parser.finish() if delta.finished else []):
                if isinstance(event, ContentDelta):
                    content += event.text
                    print(event.text, end="", flush=True)
                elif isinstance(event, ReasoningDelta):
                    print(f"\033[2m{event.text}\033[0m", end="", flush=True)
                elif isinstance(event, ToolCallStart):
                    calls.append({"id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}})
                    print(f"\n[tool call {event.id}] {event.name}(", end="", flush=True)
                elif isinstance(event, ToolCallArgsDelta):
                    calls[event.index]["function"]["arguments"] += event.fragment
                    print(event.fragment, end="", flush=True)
                elif isinstance(event, ToolCallEnd):
                    print(")" + (f"  [malformed: {event.error}]" if event.error else ""), flush=True)
            if delta.finished:
                print(f"\n[{delta.num_completion_tokens} tokens, {delta.finish_reason}]", file=sys.stderr)
        reply: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            reply["tool_calls"] = calls
        messages.append(reply)
