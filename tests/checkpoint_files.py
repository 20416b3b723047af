"""Tiny checkpoints in exactly the official layouts, written by the tests themselves (not by kimi_k2's writer).

Quantization here is a deliberately separate, plain implementation of SPEC §3 (index arithmetic for the FP8
blocks, numpy uint32 words for the INT4 nibbles), so a shared bug in kimi_k2's quantizer and dequantizer cannot
make a test pass. Files are written with the `safetensors` package.

Layouts: K2-Instruct (`model-1-of-3.safetensors`, FP8, stray `rotary_emb.inv_freq`), K2-0905 / K2-Thinking
(`model-00001-of-000003.safetensors`), K2-Thinking INT4 (compressed-tensors, ignore list), DeepSeek-V3 (FP8,
group-limited routing, an MTP layer `model.layers.{L}.*`), bf16, and a single `model.safetensors`.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from kimi_k2.config import ModelConfig
from kimi_k2.model.transformer import random_model

# Dims chosen so FP8 128x128 blocks and INT4 8-column words / 32-column groups are partial at the edges.
K2_TINY: dict[str, Any] = dict(
    model_type="kimi_k2",
    architectures=["DeepseekV3ForCausalLM"],
    vocab_size=300,
    hidden_size=160,
    intermediate_size=272,
    moe_intermediate_size=44,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=2,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    topk_method="noaux_tc",
    scoring_func="sigmoid",
    norm_topk_prob=True,
    routed_scaling_factor=2.827,
    first_k_dense_replace=1,
    q_lora_rank=136,
    kv_lora_rank=40,
    qk_nope_head_dim=16,
    qk_rope_head_dim=8,
    v_head_dim=16,
    rope_theta=50000.0,
    rope_scaling={
        "type": "yarn",
        "factor": 8.0,
        "original_max_position_embeddings": 32,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
    num_nextn_predict_layers=0,
    torch_dtype="bfloat16",
)
DEEPSEEK_V3_TINY: dict[str, Any] = {
    **K2_TINY,
    "model_type": "deepseek_v3",
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "n_group": 4,
    "topk_group": 2,
    "num_nextn_predict_layers": 1,
}
K2_FP8_QUANT = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
K2_THINKING_QUANT = {
    "quant_method": "compressed-tensors",
    "format": "pack-quantized",
    "config_groups": {
        "group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32},
        }
    },
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
}
TOKENIZER_FILES = {
    "tiktoken.model": "YQ== 0\n",
    "tokenizer_config.json": '{"tokenizer_class": "TikTokenTokenizer"}\n',
    "chat_template.jinja": "{{ messages }}",
    "generation_config.json": '{"eos_token_id": 163586}\n',
}


def random_state(hf_config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """Official tensor names → float32 tensors with well-conditioned random values (and a non-zero router bias)."""
    cfg = ModelConfig.from_hf(hf_config)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, t in random_model(cfg, seed=seed).state_dict().items():
        if "norm" in name:
            value = 1.0 + 0.2 * torch.randn(t.shape, generator=generator)
        elif name.endswith("e_score_correction_bias"):
            value = torch.rand(t.shape, generator=generator) * 0.2
        else:
            value = torch.randn(t.shape, generator=generator) * (0.5 / t.shape[-1] ** 0.5)
        state[name] = value
    return state


def is_linear_weight(name: str) -> bool:
    return name.endswith(("_proj.weight", "_proj_with_mqa.weight")) or name == "lm_head.weight"


# ---------------------------------------------------------------------------------------------- FP8, plainly
def fp8_quantize_plain(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, cols = w.shape
    scale = torch.empty(math.ceil(rows / 128), math.ceil(cols / 128))
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            block = w[i * 128 : (i + 1) * 128, j * 128 : (j + 1) * 128]
            scale[i, j] = block.abs().max() / 448.0
    per_element = scale[torch.arange(rows) // 128][:, torch.arange(cols) // 128]
    return (w / per_element).clamp(-448, 448).to(torch.float8_e4m3fn), scale


def fp8_dequantize_plain(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    rows, cols = q.shape
    return q.float() * scale[torch.arange(rows) // 128][:, torch.arange(cols) // 128]


# ---------------------------------------------------------------------------------------------- INT4, plainly
def int4_quantize_plain(w: torch.Tensor, group: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """→ (weight_packed int32, weight_scale bf16, dequantized float32)."""
    rows, cols = w.shape
    groups = math.ceil(cols / group)
    scale = torch.stack([w[:, g * group : (g + 1) * group].abs().amax(dim=1) / 7.0 for g in range(groups)], dim=1)
    scale = scale.to(torch.bfloat16)
    per_element = scale.float()[:, torch.arange(cols) // group]
    q = torch.round(w / per_element).clamp(-8, 7).to(torch.int64)
    return int4_pack_plain(q), scale, q.float() * per_element


def int4_pack_plain(q: torch.Tensor) -> torch.Tensor:
    rows, cols = q.shape
    nibbles = (q.numpy() + 8).astype(np.uint32)
    words = np.zeros((rows, math.ceil(cols / 8)), dtype=np.uint32)
    for col in range(cols):
        words[:, col // 8] |= nibbles[:, col] << np.uint32(4 * (col % 8))
    return torch.from_numpy(words.view(np.int32).copy())


# ---------------------------------------------------------------------------------------------- writing
def shard_names(count: int, style: str) -> list[str]:
    if style == "k2":  # Kimi-K2-Instruct
        return [f"model-{i}-of-{count}.safetensors" for i in range(1, count + 1)]
    if style == "0905":  # K2-0905 / K2-Thinking
        return [f"model-{i:05d}-of-{count:06d}.safetensors" for i in range(1, count + 1)]
    raise ValueError(style)


def write_checkpoint(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    hf_config: dict[str, Any],
    *,
    shards: int = 3,
    style: str = "k2",
    quantization_config: dict[str, Any] | None = None,
    tokenizer: bool = False,
) -> Path:
    """Split `tensors` (in order) into `shards` files named in `style`, with an index; shards=0: one model.safetensors."""
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(hf_config)
    if quantization_config is not None:
        config["quantization_config"] = quantization_config
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    names = list(tensors)
    if shards == 0:
        save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    else:
        files = shard_names(shards, style)
        per = math.ceil(len(names) / shards)
        weight_map = {}
        for k, file in enumerate(files):
            part = {n: tensors[n].contiguous() for n in names[k * per : (k + 1) * per]}
            save_file(part, directory / file, metadata={"format": "pt"})
            weight_map.update({n: file for n in part})
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer:
        for name, text in TOKENIZER_FILES.items():
            (directory / name).write_text(text)
    return directory


def with_inv_freq(tensors: dict[str, torch.Tensor], hf_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        out[name] = t
        match = re.match(r"model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", name)
        if match:
            out[f"model.layers.{match.group(1)}.self_attn.rotary_emb.inv_freq"] = torch.rand(hf_config["qk_rope_head_dim"] // 2)
    return out


def fp8_tensors(dense: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official FP8 tensors (Linear weights but lm_head in F8 + scale_inv, rest bf16) and the dequantized reference."""
    stored, reference = {}, {}
    for name, w in dense.items():
        if is_linear_weight(name) and name != "lm_head.weight":
            q, scale = fp8_quantize_plain(w)
            stored[name], stored[f"{name}_scale_inv"] = q, scale
            reference[name] = fp8_dequantize_plain(q, scale)
        elif name.endswith("e_score_correction_bias"):
            stored[name] = reference[name] = w.float()
        else:
            stored[name] = w.to(torch.bfloat16)
            reference[name] = stored[name].float()
    return stored, reference


def int4_tensors(dense: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """K2-Thinking tensors (routed experts int4, the rest bf16) and the dequantized reference."""
    stored, reference = {}, {}
    for name, w in dense.items():
        if ".mlp.experts." in name:
            module = name.removesuffix(".weight")
            packed, scale, deq = int4_quantize_plain(w)
            stored[f"{module}.weight_packed"] = packed
            stored[f"{module}.weight_scale"] = scale
            stored[f"{module}.weight_shape"] = torch.tensor(list(w.shape), dtype=torch.int32)
            reference[name] = deq
        elif name.endswith("e_score_correction_bias"):
            stored[name] = reference[name] = w.float()
        else:
            stored[name] = w.to(torch.bfloat16)
            reference[name] = stored[name].float()
    return stored, reference


def mtp_tensors(dense: dict[str, torch.Tensor], hf_config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """DeepSeek-V3's MTP layer: a copy of the last layer's tensors as layer L, plus its extra heads."""
    last = hf_config["num_hidden_layers"]
    prefix = f"model.layers.{last - 1}."
    out = {f"model.layers.{last}." + n[len(prefix) :]: t.clone() for n, t in dense.items() if n.startswith(prefix)}
    d, v = hf_config["hidden_size"], hf_config["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    out[f"model.layers.{last}.embed_tokens.weight"] = torch.randn(v, d, generator=g)
    out[f"model.layers.{last}.enorm.weight"] = torch.ones(d)
    out[f"model.layers.{last}.hnorm.weight"] = torch.ones(d)
    out[f"model.layers.{last}.eh_proj.weight"] = torch.randn(d, 2 * d, generator=g) * 0.05
    out[f"model.layers.{last}.shared_head.head.weight"] = torch.randn(v, d, generator=g)
    out[f"model.layers.{last}.shared_head.norm.weight"] = torch.ones(d)
    return out


def reference_dir(directory: Path, reference: dict[str, torch.Tensor], hf_config: dict[str, Any]) -> Path:
    """The dequantized reference as an unquantized float32 single-file checkpoint (what HF transformers loads)."""
    config = {k: v for k, v in hf_config.items() if k != "num_nextn_predict_layers"}
    config["torch_dtype"] = "float32"
    config["model_type"] = "deepseek_v3"  # transformers maps per-expert tensors to its fused layout by model_type
    return write_checkpoint(directory, {n: t.float().contiguous() for n, t in reference.items()}, config, shards=0)


def hf_reference_model(directory: Path) -> Any:
    from transformers import DeepseekV3ForCausalLM

    model = DeepseekV3ForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    return model.eval()
