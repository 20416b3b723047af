"""Pure arithmetic on ModelConfig + a hardware table: parameters, weight and KV bytes, fit, speed bounds.

No torch anywhere in this package, so `kimi-k2 plan` answers instantly. The engine sizes its KV pool with
`kv_pool_blocks`, and `weight_bytes` is what `load_model` should allocate for a format.
"""

from kimi_k2.planner.formats import weight_bytes
from kimi_k2.planner.kv import kv_bytes, kv_bytes_per_token, kv_pool_blocks
from kimi_k2.planner.params import count_params
from kimi_k2.planner.plan import make_plan

__all__ = ["count_params", "kv_bytes", "kv_bytes_per_token", "kv_pool_blocks", "make_plan", "weight_bytes"]
