"""Where each tensor of an HF-layout checkpoint lives.

A checkpoint directory holds either `model.safetensors.index.json` (`{"metadata": ..., "weight_map": {tensor:
shard}}`) or a single `model.safetensors`. Shard names are always taken from the index, never guessed: K2 uses
`model-1-of-61.safetensors`, K2-0905 `model-00001-of-000062.safetensors`.

`read_index` returns the problems it finds instead of raising on the first, so validation can report them all;
`read_weight_map` is the raising form.
"""

from __future__ import annotations

import json
from pathlib import Path

from kimi_k2.checkpoint.safetensors_io import SafetensorsError, read_header

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def read_index(checkpoint_dir: str | Path) -> tuple[dict[str, Path], list[str]]:
    """tensor name → shard file, and the problems found (malformed index JSON, bad entries, no weights at all).

    Shard files named by the index are not opened here; a single `model.safetensors` is (its header only).
    """
    root = Path(checkpoint_dir)
    index = root / INDEX_NAME
    if index.is_file():
        try:
            raw = json.loads(index.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return {}, [f"{index}: malformed index JSON: {exc}"]
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict):
            found = "no 'weight_map'" if isinstance(raw, dict) else f"a JSON {type(raw).__name__}"
            return {}, [f"{index}: expected an object with a 'weight_map' of tensor name → shard file name, found {found}"]
        out: dict[str, Path] = {}
        problems: list[str] = []
        shard_paths: dict[str, Path] = {}  # one Path per shard: 139,644 entries name only 61 files
        for name, shard in weight_map.items():
            path = shard_paths.get(shard) if isinstance(shard, str) else None
            if path is None:
                if not isinstance(shard, str) or not shard or Path(shard).name != shard:
                    problems.append(f"{index}: tensor {name}: shard must be a file name in the checkpoint directory, found {shard!r}")
                    continue
                path = shard_paths[shard] = root / shard
            out[name] = path
        if not out and not problems:
            problems.append(f"{index}: the weight_map is empty")
        return out, problems
    single = root / SINGLE_NAME
    if single.is_file():
        try:
            return {name: single for name in read_header(single)}, []
        except SafetensorsError as exc:
            return {}, [str(exc)]
    if not root.is_dir():
        return {}, [f"{root}: no such checkpoint directory"]
    return {}, [f"{root}: no {INDEX_NAME} and no {SINGLE_NAME}: not an HF-layout checkpoint"]


def read_weight_map(checkpoint_dir: str | Path) -> dict[str, Path]:
    """tensor name → shard file, from the index or the single file's header. Raises ValueError on any problem."""
    root = Path(checkpoint_dir)
    if not (root / INDEX_NAME).is_file() and not (root / SINGLE_NAME).is_file():
        raise FileNotFoundError(f"{root}: no {INDEX_NAME} and no {SINGLE_NAME}: not an HF-layout checkpoint")
    weight_map, problems = read_index(root)
    if problems:
        raise ValueError("\n".join(problems))
    return weight_map
