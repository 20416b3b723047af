"""The plain greedy decoding loop: the reference every faster generator is checked against.

`greedy_decode(..., use_cache=False)` runs a full forward over the whole sequence for every new token (no
cache, no tricks); `use_cache=True` prefills once and then decodes one token at a time through a contiguous
latent cache on the model's current attention path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kimi_k2.model.cache import ContiguousLatentCache
from kimi_k2.model.transformer import KimiK2ForCausalLM


@torch.no_grad()
def greedy_decode(
    model: KimiK2ForCausalLM,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    stop_ids: Sequence[int] = (),
) -> list[int]:
    """Return the generated ids (without the prompt), stopping after a stop id or `max_new_tokens`."""
    if not prompt_ids:
        raise ValueError("greedy_decode needs a non-empty prompt")
    device = next(model.parameters()).device
    ids = list(prompt_ids)
    out: list[int] = []
    cache = None
    if use_cache:
        cache = ContiguousLatentCache(
            model.config, 1, len(ids) + max_new_tokens, dtype=model.compute_dtype, device=device
        )
    step_ids = ids
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(torch.tensor([ids], device=device))
        else:
            start = len(ids) - len(step_ids)
            positions = torch.arange(start, len(ids), device=device).unsqueeze(0)
            cache.prepare(positions)
            logits = model(torch.tensor([step_ids], device=device), positions=positions, cache=cache)
        token = int(logits[0, -1].argmax())
        ids.append(token)
        out.append(token)
        step_ids = [token]
        if token in stop_ids:
            break
    return out
