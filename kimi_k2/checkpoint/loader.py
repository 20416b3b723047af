"""Load an HF-layout checkpoint into a KimiK2ForCausalLM.

The model is built on the meta device and each tensor is read lazily from its memory-mapped shard, converted
to the target dtype and assigned, one at a time: nothing but the result and the tensor in flight is resident.
Tensors the model does not use (the stray `rotary_emb.inv_freq`, DeepSeek-V3's MTP layer) are skipped with a
one-line notice on the `kimi_k2` logger; anything else that does not fit is an error naming the tensor.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from pathlib import Path

import torch
from safetensors import safe_open

from kimi_k2.checkpoint.index import read_weight_map
from kimi_k2.config import ModelConfig
from kimi_k2.model.transformer import KimiK2ForCausalLM, build_model

log = logging.getLogger("kimi_k2")

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def ignored_reason(name: str, cfg: ModelConfig) -> str | None:
    """Why a checkpoint tensor is deliberately not loaded, or None if the model should have it."""
    if name.endswith("rotary_emb.inv_freq"):
        return "rotary inv_freq buffers (recomputed from the config)"
    match = _LAYER.match(name)
    if match and int(match.group(1)) >= cfg.num_hidden_layers:
        return "multi-token-prediction (MTP) layer weights (not used for generation)"
    return None


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    attention: str = "naive",
    experts: str = "grouped",
) -> KimiK2ForCausalLM:
    """Load `config.json` and the safetensors weights of a checkpoint directory.

    Float weights are converted to `dtype`; the router's `e_score_correction_bias` stays float32.
    """
    root = Path(path)
    cfg = ModelConfig.from_pretrained(root)
    weight_map = read_weight_map(root)
    model = build_model(cfg, device="meta", dtype=dtype, attention=attention, experts=experts)
    expected = dict(model.state_dict())

    by_shard: dict[Path, list[str]] = defaultdict(list)
    ignored: dict[str, int] = defaultdict(int)
    unexpected: list[str] = []
    for name, shard in weight_map.items():
        reason = ignored_reason(name, cfg)
        if reason is not None:
            ignored[reason] += 1
        elif name in expected:
            by_shard[shard].append(name)
        else:
            unexpected.append(name)
    missing = sorted(set(expected) - {n for names in by_shard.values() for n in names})
    problems = [f"missing tensor {n} (expected shape {list(expected[n].shape)})" for n in missing]
    problems += [f"unexpected tensor {n} in {weight_map[n].name}" for n in sorted(unexpected)]
    for shard in by_shard:
        if not shard.is_file():
            problems.append(f"missing shard file {shard} (named by the index)")
    if problems:
        raise ValueError(f"{root}: checkpoint does not match config.json:\n  " + "\n  ".join(problems))
    for reason, count in ignored.items():
        log.info("ignoring %d tensors: %s", count, reason)

    state: dict[str, torch.Tensor] = {}
    for shard, names in by_shard.items():
        with safe_open(shard, "pt", device="cpu") as f:
            for name in names:
                tensor = f.get_tensor(name)
                want = expected[name]
                if tuple(tensor.shape) != tuple(want.shape):
                    raise ValueError(
                        f"{shard.name}: tensor {name} has shape {list(tensor.shape)}, expected {list(want.shape)}"
                    )
                state[name] = tensor.to(device=device, dtype=want.dtype)
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()
