"""kimi-k2: Moonshot AI's Kimi K2 in pure PyTorch.

The public names are imported lazily so that `import kimi_k2` stays cheap (the tokenizer and the planner do
not need the model, the CLI starts fast).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ModelConfig": "kimi_k2.config",
    "load_model": "kimi_k2.checkpoint.loader",
    "KimiK2ForCausalLM": "kimi_k2.model.transformer",
    "Tokenizer": "kimi_k2.tokenizer.tokenizer",
    "LLM": "kimi_k2.engine.llm",
    "SamplingParams": "kimi_k2.engine.sampling_params",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kimi_k2' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
