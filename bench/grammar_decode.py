"""Decode tokens/s with and without a JSON-schema grammar, same model, same run (the target: under 10% slower).

The `medium` preset with random weights (fp32) and a synthetic tokenizer of the preset's vocabulary size
(`grammar_mask.synthetic_ranks`), batch 1 and 16, 64-token prompts. The grammar is a schema whose shortest
instance is longer than any run (an array of at least 1,000 strings), so every run decodes exactly
`--new-tokens` tokens under the grammar, like the free runs (`ignore_eos`). Both modes sample (temperature 1,
fixed seeds); rounds alternate free / grammar so a change of machine load hits both, and the best round of
each is reported (decode tok/s = tokens after the first ÷ time after the first, summed over the batch). On a
loaded machine the two columns move with the load more than with the grammar, so the grammar's own cost is
measured too: the time spent in the logits hook (masks, their application, feeding the grammar) per step.

Usage:  python bench/grammar_decode.py [--preset medium] [--threads N] [--rounds 3] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from grammar_mask import machine, synthetic_ranks  # noqa: E402

import kimi_k2.engine.core as engine_core  # noqa: E402
from kimi_k2.config import preset  # noqa: E402
from kimi_k2.engine.core import EngineCore  # noqa: E402
from kimi_k2.engine.sampling_params import SamplingParams  # noqa: E402
from kimi_k2.model.transformer import random_model  # noqa: E402
from kimi_k2.server.constraints import json_grammar  # noqa: E402
from kimi_k2.tokenizer.special_tokens import NUM_SPECIAL_TOKENS  # noqa: E402
from kimi_k2.tokenizer.tokenizer import Tokenizer  # noqa: E402

LONG_SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}, "minItems": 1000}},
               "required": ["items"], "additionalProperties": False}


HOOK_SECONDS = [0.0]  # time inside the logits hook's two calls (apply_hooks, advance)


def _timed(func):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            HOOK_SECONDS[0] += time.perf_counter() - start
    return wrapper


engine_core.apply_hooks = _timed(engine_core.apply_hooks)
engine_core.advance = _timed(engine_core.advance)


def decode_tok_s(core: EngineCore, prompts: list[list[int]], params: SamplingParams) -> float:
    for i, prompt in enumerate(prompts):
        core.add_request(f"r{time.monotonic_ns()}-{i}", prompt, params)
    first = None
    tokens_after_first = 0
    while core.has_unfinished():
        deltas = core.step()
        now = time.perf_counter()
        generated = sum(len(d.token_ids) for d in deltas)
        if first is None and generated:
            first = now  # the prompts' prefill ends here
        elif first is not None:
            tokens_after_first += generated
    return tokens_after_first / (time.perf_counter() - first)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="medium")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = preset(args.preset)
    tok = Tokenizer(synthetic_ranks(cfg.vocab_size - NUM_SPECIAL_TOKENS))
    core = EngineCore(random_model(cfg, seed=0).eval(), tokenizer=tok, max_num_seqs=16, max_num_batched_tokens=2048,
                      default_stop_token_ids=[tok.im_end_id, tok.eos_id], enable_prefix_caching=False)
    grammar = f"start: {json_grammar(LONG_SCHEMA)}\n"
    gen = torch.Generator().manual_seed(0)
    print(f"machine: {machine()} ({torch.get_num_threads()} torch threads)")
    print(f"model: {args.preset} preset, random fp32 weights, vocabulary {cfg.vocab_size}; {args.new_tokens} new tokens, "
          f"best of {args.rounds} alternating rounds\n")
    print(f"{'batch':>5} {'free tok/s':>11} {'grammar tok/s':>14} {'slower':>7} {'hook ms/step':>13} {'step ms':>8}")
    for batch in (1, 16):
        prompts = [torch.randint(0, tok.base_vocab_size, (64,), generator=gen).tolist() for _ in range(batch)]
        best = {"free": 0.0, "grammar": 0.0}
        steps_before, HOOK_SECONDS[0] = core.stats().num_steps, 0.0
        for rnd in range(args.rounds):
            for mode in ("free", "grammar"):
                params = SamplingParams(temperature=1.0, seed=rnd, max_tokens=args.new_tokens, ignore_eos=True,
                                        grammar=grammar if mode == "grammar" else None)
                best[mode] = max(best[mode], decode_tok_s(core, prompts, params))
        grammar_steps = (core.stats().num_steps - steps_before) / 2  # half the steps ran the grammar
        slower = 1 - best["grammar"] / best["free"]
        hook_ms = HOOK_SECONDS[0] / grammar_steps * 1e3
        print(f"{batch:5d} {best['free']:11.1f} {best['grammar']:14.1f} {slower:7.1%} {hook_ms:13.2f} "
              f"{batch / best['free'] * 1e3:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
