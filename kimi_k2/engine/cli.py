"""`kimi-k2 generate` and `kimi-k2 chat`: run a checkpoint from the command line, streaming.

`generate` completes one prompt (text, or `--prompt-ids` for a checkpoint without a tokenizer), optionally
wrapped in the chat template (`--chat`). `chat` is an interactive conversation through the checkpoint's chat
template; assistant output goes through the tokenizer's streaming output parser, so reasoning and tool calls
are shown as such (`[tool call functions.get_weather:0] get_weather({...})`). Sampling defaults are the
checkpoint's (temperature from generation_config.json, else K2's 0.6).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# kimi_k2.checkpoint.loader.WEIGHT_FORMATS, spelled here so `--help` imports no torch; serve uses the same list.
WEIGHT_CHOICES = ("auto", "dequantize", "fp8", "int4")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="checkpoint directory (HF layout; default: the built-in nano K2 demo model)")
    parser.add_argument("--max-tokens", type=int, default=512, help="most tokens to generate per reply (512)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the checkpoint's, else 0.6)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, help="fix the sampling seed")
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights and compute")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                        help="auto (default): keep FP8 / INT4 checkpoints in their stored format; dequantize: convert "
                        "them to --dtype on load; fp8 / int4: quantize on load")
    parser.add_argument("--int8-activations", action="store_true",
                        help="INT4 weights against activations quantized to int8 per 32 values (faster, not exact)")
    parser.add_argument("--no-mmap", action="store_true",
                        help="read the weights into RAM instead of using them memory-mapped from the checkpoint files")
    parser.add_argument("--kv-cache-memory", type=float, help="KV cache budget in GiB (default: what max-num-seqs full-context sequences need, at most 1/5 of free RAM and 4 GiB)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = subparsers.add_parser("generate", help="complete a prompt with a checkpoint, streaming the text")
    _add_common(gen)
    source = gen.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="prompt text (needs the checkpoint's tokenizer)")
    source.add_argument("--prompt-ids", help="comma-separated prompt token ids")
    gen.add_argument("--chat", action="store_true", help="send the prompt as a user message via the chat template")
    gen.add_argument("--system", help="system message (with --chat)")
    gen.set_defaults(func=_generate)

    chat = subparsers.add_parser("chat", help="interactive streaming chat with a checkpoint (shows tool calls)")
    _add_common(chat)
    chat.add_argument("--system", help="system message")
    chat.set_defaults(func=_chat)


def _sampling_params(args: argparse.Namespace) -> Any:
    from kimi_k2.engine.sampling_params import SamplingParams

    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        max_tokens=args.max_tokens,
        seed=args.seed,
        stop=list(args.stop),
    )


def _load(args: argparse.Namespace) -> Any:
    import torch

    from kimi_k2.assets import default_model_dir
    from kimi_k2.engine.llm import LLM

    if args.model is None:
        args.model = str(default_model_dir())
    kwargs: dict[str, Any] = {}
    if args.kv_cache_memory is not None:
        kwargs["kv_cache_memory"] = int(args.kv_cache_memory * 2**30)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    return LLM(args.model, dtype=dtype, weights=args.weights, mmap=not args.no_mmap, num_threads=args.threads,
               int8_activations=args.int8_activations, **kwargs)


def _parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise ValueError(f"--prompt-ids: expected comma-separated integers, got {text!r}") from None


def _generate(args: argparse.Namespace) -> int:
    params = _sampling_params(args)
    llm = _load(args)
    if args.prompt_ids is not None:
        if args.chat:
            raise ValueError("--chat needs --prompt text, not --prompt-ids")
        prompt: Any = _parse_ids(args.prompt_ids)
    elif args.chat:
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
    from kimi_k2.tokenizer.events import ContentDelta, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart
    from kimi_k2.tokenizer.output_parser import OutputParser

    params = _sampling_params(args)
    llm = _load(args)
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
