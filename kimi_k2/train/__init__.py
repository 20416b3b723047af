"""Training K2-architecture models the way K2 was trained: MuonClip, aux-loss-free balancing, WSD, a trainer.

`MuonClip` (Muon + AdamW + QK-Clip), the pure update functions in `muon.py`, `qk_clip_`, the router-bias rule in
`balance.py`, and `train(TrainConfig(...))`. Names are imported lazily so `import kimi_k2.train` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "MuonClip": "kimi_k2.train.muonclip",
    "param_groups": "kimi_k2.train.muonclip",
    "zeropower_via_newtonschulz5": "kimi_k2.train.muon",
    "muon_update": "kimi_k2.train.muon",
    "adamw_update": "kimi_k2.train.muon",
    "qk_clip_": "kimi_k2.train.qk_clip",
    "update_router_bias_": "kimi_k2.train.balance",
    "wsd_lr": "kimi_k2.train.schedule",
    "TrainConfig": "kimi_k2.train.trainer",
    "Trainer": "kimi_k2.train.trainer",
    "train": "kimi_k2.train.trainer",
    "latest_checkpoint": "kimi_k2.train.trainer",
    "read_log": "kimi_k2.train.trainer",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kimi_k2.train' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
