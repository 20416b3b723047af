"""Where each tensor of an HF-layout checkpoint lives.

A checkpoint directory holds either `model.safetensors.index.json` (`{"metadata": ..., "weight_map": {tensor:
shard}}`) or a single `model.safetensors`. Shard names are always taken from the index, never guessed: K2 uses
`model-1-of-61.safetensors`, K2-0905 `model-00001-of-000062.safetensors`.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def read_weight_map(checkpoint_dir: str | Path) -> dict[str, Path]:
    """tensor name → shard file, from the index or the single file's header."""
    root = Path(checkpoint_dir)
    index = root / INDEX_NAME
    if index.is_file():
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{index}: malformed JSON: {exc}") from None
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError(f"{index}: expected an object with a 'weight_map' of tensor name → shard file name")
        return {name: root / shard for name, shard in weight_map.items()}
    single = root / SINGLE_NAME
    if single.is_file():
        with safe_open(single, "pt") as f:
            return {name: single for name in f.keys()}
    raise FileNotFoundError(f"{root}: no {INDEX_NAME} and no {SINGLE_NAME}: not an HF-layout checkpoint")
