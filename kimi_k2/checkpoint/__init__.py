"""Files ↔ model: HF-layout sharded safetensors in the official unquantized, block-FP8 and INT4 formats.

`load_model` (validate, then read one tensor at a time), `save_model` / `convert_checkpoint` (stream shards in
the official layout), `inspect_checkpoint` / `check_checkpoint` (every problem, before any weight byte is read).
See docs/checkpoints.md.
"""

from kimi_k2.checkpoint.loader import load_model
from kimi_k2.checkpoint.scheme import CheckpointError, QuantScheme
from kimi_k2.checkpoint.validate import CheckpointReport, check_checkpoint, inspect_checkpoint
from kimi_k2.checkpoint.writer import convert_checkpoint, save_model

__all__ = [
    "CheckpointError",
    "CheckpointReport",
    "QuantScheme",
    "check_checkpoint",
    "convert_checkpoint",
    "inspect_checkpoint",
    "load_model",
    "save_model",
]
