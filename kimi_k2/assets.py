"""Files shipped inside the package: the built-in nano K2 demo model.

`nano-k2` is a ~3.5M-parameter model with K2's exact topology, trained here with our own tokenizer trainer,
chat template and MuonClip trainer on synthetic tool-use conversations (recipe: `recipes/nano_k2/build.py`).
It is what `kimi-k2 demo`, `kimi-k2 chat` and `kimi-k2 serve` run when no `--model` is given.
"""

from __future__ import annotations

from pathlib import Path

NANO_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "nano-k2"


def default_model_dir() -> Path:
    """The built-in nano model's checkpoint directory (official HF layout + tokenizer files)."""
    if not (NANO_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the built-in nano model is missing from {NANO_MODEL_DIR}; rebuild it with "
            "`python recipes/nano_k2/build.py` or pass --model DIR"
        )
    return NANO_MODEL_DIR
