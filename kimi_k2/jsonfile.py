"""Reading the small JSON files of a checkpoint directory (`config.json`, `generation_config.json`,
`tokenizer_config.json`) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json_object(path: str | Path, *, missing_ok: bool = False) -> dict[str, Any]:
    """The JSON object in `path`; {} for a missing file when `missing_ok`, else FileNotFoundError naming it."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return {}
        raise FileNotFoundError(f"no {path.name} at {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: malformed JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return raw
