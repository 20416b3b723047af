"""Random transformers `DeepseekV3ForCausalLM` models for parity tests, saved in the HF layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BASE: dict[str, Any] = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    moe_intermediate_size=24,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=3,
    n_group=1,
    topk_group=1,
    q_lora_rank=24,
    kv_lora_rank=16,
    qk_nope_head_dim=8,
    qk_rope_head_dim=8,
    v_head_dim=12,
    first_k_dense_replace=1,
    routed_scaling_factor=2.827,
    rope_theta=50000.0,
    max_position_embeddings=256,  # = factor × original, as transformers expects
    rope_scaling={
        "type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=None,
)

# Named variants: each switches on a feature the parity tests must cover.
VARIANTS: dict[str, dict[str, Any]] = {
    "q_lora": {},
    "plain_q_proj": {"q_lora_rank": None},
    "grouped_routing": {"n_routed_experts": 16, "n_group": 4, "topk_group": 2, "num_experts_per_tok": 4},
    "two_dense_layers": {"num_hidden_layers": 4, "first_k_dense_replace": 2},
    "no_yarn": {"rope_scaling": None},
}


def make_hf_model(variant: str, seed: int = 0) -> Any:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    kwargs = {**BASE, **VARIANTS[variant]}
    cfg = DeepseekV3Config(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.2 * torch.randn_like(param))
            else:
                param.copy_(torch.randn_like(param) * (0.5 / param.shape[-1] ** 0.5))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.rand_like(buf) * 0.2)  # non-zero: selection must use it, weights must not
    return model


def save_hf_model(model: Any, directory: Path) -> Path:
    model.save_pretrained(directory, safe_serialization=True)
    return directory
