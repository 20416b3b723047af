"""ModelConfig: the one description of a K2-family model.

Field names are the `config.json` keys of the official checkpoints (Kimi-K2-Instruct, K2-0905, K2-Thinking,
DeepSeek-V3, Moonlight), so `from_hf` is a filter plus validation, not a renaming table. Both the classic
(`rope_theta` + `rope_scaling`) and the transformers-5 (`rope_parameters`) rope layouts are read.

Everything here is pure Python: no torch, so the planner and the CLI's `info` import it for free.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kimi_k2.jsonfile import read_json_object

log = logging.getLogger("kimi_k2")

SUPPORTED_MODEL_TYPES = ("kimi_k2", "deepseek_v3", "deepseek_v2")
SUPPORTED_SCORING = ("sigmoid",)
SUPPORTED_TOPK_METHODS = ("noaux_tc",)
SUPPORTED_ROPE_TYPES = ("yarn", "default")
SUPPORTED_ACTIVATIONS = ("silu",)
SUPPORTED_QUANT_METHODS = ("fp8", "compressed-tensors")


@dataclass(slots=True)
class ModelConfig:
    """A K2 / DeepSeek-V3-architecture model. Defaults are Kimi-K2-Instruct's `config.json`."""

    vocab_size: int = 163840
    hidden_size: int = 7168
    intermediate_size: int = 18432
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 61
    num_attention_heads: int = 64
    num_key_value_heads: int = 64
    # MoE
    n_routed_experts: int = 384
    n_shared_experts: int = 1
    num_experts_per_tok: int = 8
    n_group: int = 1
    topk_group: int = 1
    topk_method: str = "noaux_tc"
    scoring_func: str = "sigmoid"
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.827
    first_k_dense_replace: int = 1
    moe_layer_freq: int = 1
    # MLA
    q_lora_rank: int | None = 1536
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    attention_bias: bool = False
    # RoPE
    rope_theta: float = 50000.0
    rope_scaling: dict[str, Any] | None = field(
        default_factory=lambda: {
            "type": "yarn",
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "beta_fast": 1.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        }
    )
    max_position_embeddings: int = 131072
    # the rest
    rms_norm_eps: float = 1e-6
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 163584
    eos_token_id: int | list[int] | None = 163585
    num_nextn_predict_layers: int = 0
    initializer_range: float = 0.02
    torch_dtype: str = "bfloat16"
    model_type: str = "kimi_k2"
    quantization_config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def qk_head_dim(self) -> int:
        """Width of one head's query/key: nope part + rope part (192 for K2)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_cache_width(self) -> int:
        """Values cached per token per layer by absorbed MLA: latent c_kv + shared roped key (576 for K2)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return str(self.rope_scaling.get("type", self.rope_scaling.get("rope_type", "default")))

    @property
    def softmax_scale(self) -> float:
        """`qk_head_dim ** -0.5 * mscale ** 2` with YaRN's mscale (SPEC §2); 0.13086… for K2."""
        scale = self.qk_head_dim**-0.5
        if self.rope_type == "yarn":
            assert self.rope_scaling is not None
            mscale_all_dim = float(self.rope_scaling.get("mscale_all_dim", 0.0) or 0.0)
            factor = float(self.rope_scaling["factor"])
            if mscale_all_dim and factor > 1:
                mscale = 0.1 * mscale_all_dim * math.log(factor) + 1.0
                scale = scale * mscale * mscale
        return scale

    def is_moe_layer(self, layer_idx: int) -> bool:
        """DeepSeek-V3's rule: MoE from `first_k_dense_replace` on, every `moe_layer_freq`-th layer."""
        return (
            self.n_routed_experts > 0
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    @property
    def num_moe_layers(self) -> int:
        return sum(self.is_moe_layer(i) for i in range(self.num_hidden_layers))

    @property
    def stop_token_ids(self) -> list[int]:
        """The EOS id(s) from the config (generation adds `<|im_end|>` from the tokenizer)."""
        if self.eos_token_id is None:
            return []
        return list(self.eos_token_id) if isinstance(self.eos_token_id, list) else [self.eos_token_id]

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the offending field and value."""

        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"invalid config: {name}={getattr(self, name)!r}: {why}")

        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "qk_rope_head_dim",
            "v_head_dim",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "must be a positive integer")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise bad("q_lora_rank", "must be a positive integer or null (plain q_proj)")
        if self.qk_rope_head_dim % 2:
            raise bad("qk_rope_head_dim", "must be even (rotary pairs)")
        if self.num_key_value_heads != self.num_attention_heads:
            raise bad(
                "num_key_value_heads",
                f"MLA expands keys/values per head, so it must equal num_attention_heads={self.num_attention_heads}",
            )
        if self.hidden_act not in SUPPORTED_ACTIVATIONS:
            raise bad("hidden_act", f"supported: {', '.join(SUPPORTED_ACTIVATIONS)}")
        if self.first_k_dense_replace < 0:
            raise bad("first_k_dense_replace", "must be >= 0")
        if self.first_k_dense_replace > 0 or self.n_routed_experts == 0:
            if self.intermediate_size <= 0:
                raise bad("intermediate_size", "dense layers need a positive intermediate_size")
        if self.n_routed_experts < 0:
            raise bad("n_routed_experts", "must be >= 0")
        if self.n_routed_experts > 0:
            if self.scoring_func not in SUPPORTED_SCORING:
                raise bad("scoring_func", f"supported: {', '.join(SUPPORTED_SCORING)} (K2 and DeepSeek-V3 use sigmoid)")
            if self.topk_method not in SUPPORTED_TOPK_METHODS:
                raise bad("topk_method", f"supported: {', '.join(SUPPORTED_TOPK_METHODS)}")
            if self.moe_intermediate_size <= 0:
                raise bad("moe_intermediate_size", "must be a positive integer")
            if self.moe_layer_freq <= 0:
                raise bad("moe_layer_freq", "must be a positive integer")
            if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
                raise bad("num_experts_per_tok", f"must be in [1, n_routed_experts={self.n_routed_experts}]")
            if self.n_group <= 0 or self.n_routed_experts % self.n_group:
                raise bad("n_group", f"must divide n_routed_experts={self.n_routed_experts}")
            if not 1 <= self.topk_group <= self.n_group:
                raise bad("topk_group", f"must be in [1, n_group={self.n_group}]")
            per_group = self.n_routed_experts // self.n_group
            if self.n_group > 1 and per_group < 2:
                raise bad("n_group", "group scores sum the top-2 experts of a group: groups need >= 2 experts")
            if self.topk_group * per_group < self.num_experts_per_tok:
                raise bad(
                    "topk_group",
                    f"{self.topk_group} groups of {per_group} experts cannot supply "
                    f"num_experts_per_tok={self.num_experts_per_tok}",
                )
        if self.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"invalid config: rope_scaling.type={self.rope_type!r}: supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.rope_type == "yarn":
            assert self.rope_scaling is not None
            for key in ("factor", "original_max_position_embeddings"):
                if key not in self.rope_scaling:
                    raise ValueError(f"invalid config: rope_scaling.{key} is required for yarn")
            if float(self.rope_scaling["factor"]) < 1:
                raise ValueError(f"invalid config: rope_scaling.factor={self.rope_scaling['factor']!r}: must be >= 1")
        if self.rope_theta <= 0:
            raise bad("rope_theta", "must be positive")
        if self.quantization_config is not None:
            method = self.quantization_config.get("quant_method")
            if method not in SUPPORTED_QUANT_METHODS:
                raise ValueError(
                    f"invalid config: quantization_config.quant_method={method!r}: "
                    f"supported: {', '.join(SUPPORTED_QUANT_METHODS)}"
                )

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_hf(cls, raw: dict[str, Any], *, source: str = "config") -> ModelConfig:
        """Build from an HF `config.json` dict. Unknown keys are ignored (they do not change the math)."""
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: expected a JSON object, found {type(raw).__name__}")
        model_type = raw.get("model_type", "kimi_k2")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{source}: model_type={model_type!r} is not a K2-family model "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in names}
        if "dtype" in raw and "torch_dtype" not in raw:
            kwargs["torch_dtype"] = raw["dtype"]
        rope = raw.get("rope_parameters")
        if isinstance(rope, dict):  # transformers >= 5 layout: theta and scaling in one dict
            if "rope_theta" in rope:
                kwargs["rope_theta"] = rope["rope_theta"]
            rope_type = rope.get("rope_type", rope.get("type", "default"))
            scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "rope_type")}
            kwargs["rope_scaling"] = None if rope_type == "default" else {**scaling, "type": rope_type}
        elif "rope_scaling" in raw and raw["rope_scaling"] is not None:
            scaling = dict(raw["rope_scaling"])
            scaling.setdefault("type", scaling.get("rope_type", "default"))
            kwargs["rope_scaling"] = scaling
        elif "rope_scaling" in raw:
            kwargs["rope_scaling"] = None
        try:
            cfg = cls(**kwargs)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise ValueError(f"{source}: {exc}") from None
        if cfg.num_nextn_predict_layers:
            log.info(
                "%s: num_nextn_predict_layers=%d: the multi-token-prediction layer is not used for generation; "
                "its weights will be skipped",
                source,
                cfg.num_nextn_predict_layers,
            )
        return cfg

    @classmethod
    def from_pretrained(cls, path: str | Path) -> ModelConfig:
        """Read `config.json` from a checkpoint directory (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}")
        return cls.from_hf(read_json_object(file), source=str(file))

    def to_hf(self) -> dict[str, Any]:
        """The `config.json` dict in the official layout (what `save_pretrained` writes)."""
        out: dict[str, Any] = {"architectures": ["DeepseekV3ForCausalLM"]}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "quantization_config" and value is None:
                continue
            out[f.name] = value
        out["num_key_value_heads"] = self.num_attention_heads
        out["rope_interleave"] = True  # transformers' flag for the interleaved rotary layout K2 uses
        return out

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------- presets
def _tiny() -> ModelConfig:
    """A few-MB model with every K2 feature switched on (q LoRA, groups, YaRN that bites, dense first layer)."""
    return ModelConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=8,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=2,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        rope_scaling={
            "type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 128,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
        torch_dtype="float32",
    )


def _medium() -> ModelConfig:
    """~444M total / ~135M active parameters with K2's shape ratios: the benchmark model.

    Heads, head dims and expert counts scale like K2 (64→8 heads, 384→64 experts, 8 active, one shared expert,
    one dense layer, YaRN factor 32); the vocabulary is 32,768 so that, as in K2, the layers and not the
    embedding table hold most of the weights.
    """
    return ModelConfig(
        vocab_size=32768,
        hidden_size=1024,
        intermediate_size=2816,
        moe_intermediate_size=256,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        n_routed_experts=64,
        n_shared_experts=1,
        num_experts_per_tok=8,
        n_group=1,
        topk_group=1,
        q_lora_rank=384,
        kv_lora_rank=128,
        qk_nope_head_dim=64,
        qk_rope_head_dim=32,
        v_head_dim=64,
        max_position_embeddings=131072,
        torch_dtype="float32",
    )


K2_FP8_QUANTIZATION = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}


def _kimi_k2() -> ModelConfig:
    """Kimi-K2-Instruct's config.json, field for field (including its block-FP8 quantization_config)."""
    return ModelConfig(quantization_config=dict(K2_FP8_QUANTIZATION))


PRESETS = {
    "kimi-k2": _kimi_k2,
    "tiny": _tiny,
    "medium": _medium,
}


def preset(name: str) -> ModelConfig:
    """A named configuration: `kimi-k2` (exactly the official config), `tiny` (tests), `medium` (benchmarks)."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    return factory()


def resolve_config(name_or_path: str | Path) -> ModelConfig:
    """A preset name, a checkpoint directory, a config.json path, or a Hub id in the local HF cache."""
    if isinstance(name_or_path, str) and name_or_path in PRESETS:
        return preset(name_or_path)
    path = Path(name_or_path)
    if path.exists():
        return ModelConfig.from_pretrained(path)
    from kimi_k2.hub import cached_snapshot, looks_like_hub_id

    if isinstance(name_or_path, str) and looks_like_hub_id(name_or_path):
        return ModelConfig.from_pretrained(cached_snapshot(name_or_path))
    raise ValueError(
        f"{str(name_or_path)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing checkpoint directory"
    )
