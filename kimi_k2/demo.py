"""`kimi-k2 demo`: what the package does with no weights at hand.

Prints the exact size of Kimi K2 from its config, then builds a *randomly initialised* tiny K2-architecture
model and decodes a few tokens with the cached absorbed-attention path, checking them against the plain
full-forward loop. The tokens are meaningless by construction: the point is the machinery, not the text.
"""

from __future__ import annotations

import argparse
import time

from kimi_k2.config import preset
from kimi_k2.info import format_summary, summary


def run(args: argparse.Namespace) -> int:
    import torch

    from kimi_k2.model import random_model
    from kimi_k2.model.generate import greedy_decode

    print(format_summary("kimi-k2", summary(preset("kimi-k2"))))
    print()
    cfg = preset("tiny")
    model = random_model(cfg, seed=args.seed).eval()
    prompt = torch.randint(0, cfg.vocab_size, (16,), generator=torch.Generator().manual_seed(args.seed)).tolist()
    print(f"RANDOM WEIGHTS: a tiny K2-architecture model ({sum(p.numel() for p in model.parameters()):,} parameters, "
          "untrained) decoding greedily; the token ids are meaningless.")
    start = time.perf_counter()
    cached = greedy_decode(model.set_paths(attention="absorbed"), prompt, args.tokens, use_cache=True)
    elapsed = time.perf_counter() - start
    reference = greedy_decode(model.set_paths(attention="naive"), prompt, args.tokens, use_cache=False)
    print(f"  prompt ids : {prompt}")
    print(f"  generated  : {cached}")
    print(f"  {len(cached)} tokens in {elapsed * 1000:.0f} ms with the latent cache; "
          f"identical to the full-forward reference loop: {cached == reference}")
    return 0 if cached == reference else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="show the package working with no weights (random tiny model)")
    p.add_argument("--tokens", type=int, default=24, help="tokens to generate")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)
