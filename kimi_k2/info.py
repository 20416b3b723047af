"""`kimi-k2 info`: a config summary and the exact parameter breakdown of a preset or checkpoint.

Nothing is allocated: the counts come from the config alone (`kimi_k2.planner.params`).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kimi_k2.config import ModelConfig, resolve_config
from kimi_k2.planner.params import count_params


def summary(cfg: ModelConfig) -> dict[str, Any]:
    counts = count_params(cfg)
    return {
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "dense_layers": cfg.num_hidden_layers - cfg.num_moe_layers,
        "moe_layers": cfg.num_moe_layers,
        "hidden_size": cfg.hidden_size,
        "attention": {
            "heads": cfg.num_attention_heads,
            "q_lora_rank": cfg.q_lora_rank,
            "kv_lora_rank": cfg.kv_lora_rank,
            "qk_head_dim": cfg.qk_head_dim,
            "v_head_dim": cfg.v_head_dim,
            "softmax_scale": cfg.softmax_scale,
            "kv_cache_values_per_token_per_layer": cfg.kv_cache_width,
        },
        "moe": {
            "routed_experts": cfg.n_routed_experts,
            "experts_per_token": cfg.num_experts_per_tok,
            "shared_experts": cfg.n_shared_experts,
            "n_group": cfg.n_group,
            "topk_group": cfg.topk_group,
            "routed_scaling_factor": cfg.routed_scaling_factor,
        },
        "rope": {"theta": cfg.rope_theta, "scaling": cfg.rope_scaling},
        "max_position_embeddings": cfg.max_position_embeddings,
        "vocab_size": cfg.vocab_size,
        "quantization": (cfg.quantization_config or {}).get("quant_method"),
        "parameters": counts.as_dict(),
    }


def format_summary(name: str, info: dict[str, Any]) -> str:
    p = info["parameters"]
    att, moe = info["attention"], info["moe"]
    lines = [
        f"{name}: {info['model_type']}, {info['layers']} layers ({info['dense_layers']} dense + {info['moe_layers']} MoE), "
        f"hidden {info['hidden_size']}, vocab {info['vocab_size']:,}",
        f"  attention  MLA, {att['heads']} heads, q_lora_rank {att['q_lora_rank']}, kv_lora_rank {att['kv_lora_rank']}, "
        f"qk {att['qk_head_dim']} / v {att['v_head_dim']}, softmax scale {att['softmax_scale']:.6f}, "
        f"KV cache {att['kv_cache_values_per_token_per_layer']} values/token/layer",
        f"  moe        {moe['routed_experts']} routed experts, {moe['experts_per_token']} active, "
        f"{moe['shared_experts']} shared, groups {moe['n_group']}/{moe['topk_group']}, scale {moe['routed_scaling_factor']}",
        f"  context    {info['max_position_embeddings']:,} positions, rope {info['rope']['scaling'] and info['rope']['scaling'].get('type')}",
        f"  quantized  {info['quantization'] or 'no'}",
        "  parameters",
    ]
    for key in ("embed_tokens", "lm_head", "attention", "norms", "dense_mlp", "routed_experts", "shared_experts", "routers"):
        lines.append(f"    {key:<16}{p[key]:>22,}")
    lines.append(f"    {'total':<16}{p['total']:>22,}")
    lines.append(f"    {'active/token':<16}{p['active']:>22,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args.model)
    info = summary(cfg)
    print(json.dumps(info, indent=2) if args.json else format_summary(str(args.model), info))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="config summary and exact parameter counts of a preset or checkpoint")
    p.add_argument("model", nargs="?", default="kimi-k2", help="preset (kimi-k2, tiny, medium) or checkpoint dir")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)
