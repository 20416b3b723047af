"""Check a checkpoint against its config before reading a single weight byte, and report every problem at once.

What is expected comes from the model itself: the decoder-layer modules are built on the meta device (one
template per layer kind, so the full K2 inventory takes a fraction of a second) and their state_dict keys and
shapes are the checkpoint's names and shapes. The quantization scheme of `config.json` then says which Linear
weights are stored as what (SPEC §3):

  unquantized  `<m>.weight` BF16/F16/F32 [O, I]
  fp8          `<m>.weight` F8_E4M3 [O, I] + `<m>.weight_scale_inv` F32 [ceil(O/128), ceil(I/128)]
  int4         `<m>.weight_packed` I32 [O, ceil(I/8)] + `<m>.weight_scale` BF16 [O, ceil(I/32)] + `<m>.weight_shape` I32 [2]

Checked: the config and its quantization_config, the index JSON, every shard file and header (parsed by hand),
index vs headers, missing / unexpected tensors, shapes, dtypes, scale tensors without their weight. Tensors the
model deliberately does not use (`rotary_emb.inv_freq`, MTP layers) are counted as ignored, not as problems.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kimi_k2.checkpoint.index import INDEX_NAME, SINGLE_NAME, read_index
from kimi_k2.checkpoint.safetensors_io import SafetensorsError, TensorInfo, read_header
from kimi_k2.checkpoint.scheme import CheckpointError, QuantScheme, scheme_from_config
from kimi_k2.config import ModelConfig
from kimi_k2.model.quant_linear import fp8_scale_shape, int4_packed_shape, int4_scale_shape

FLOAT_TAGS = frozenset({"BF16", "F16", "F32"})
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def ignored_reason(name: str, cfg: ModelConfig) -> str | None:
    """Why a checkpoint tensor is deliberately not loaded, or None if the model should have it."""
    if name.endswith("rotary_emb.inv_freq"):
        return "rotary inv_freq buffers (recomputed from the config)"
    match = _LAYER.match(name)
    if match and int(match.group(1)) >= cfg.num_hidden_layers:
        return "multi-token-prediction (MTP) layer weights (not used for generation)"
    return None


# ---------------------------------------------------------------------------------------------- inventory
@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One tensor of the unquantized model's state_dict."""

    name: str  # state_dict key = checkpoint name
    shape: tuple[int, ...]
    linear: str | None  # the Linear module this is the `.weight` of, if any
    fp32: bool  # kept float32 in every format (the router's e_score_correction_bias)


def _module_specs(module: nn.Module, prefix: str) -> list[ParamSpec]:
    linears = {f"{name}.weight": name for name, m in module.named_modules() if isinstance(m, nn.Linear)}
    return [
        ParamSpec(
            prefix + key,
            tuple(t.shape),
            prefix + linears[key] if key in linears else None,
            key.endswith("e_score_correction_bias"),
        )
        for key, t in module.state_dict().items()
    ]


def model_inventory(cfg: ModelConfig) -> list[ParamSpec]:
    """Every state_dict entry of `KimiK2ForCausalLM(cfg)`, in state_dict order, from meta-device templates."""
    from kimi_k2.model.transformer import DecoderLayer  # the model package is heavier than this module needs

    with torch.device("meta"):
        out = _module_specs(nn.Embedding(cfg.vocab_size, cfg.hidden_size), "model.embed_tokens.")
        templates: dict[bool, list[ParamSpec]] = {}
        for i in range(cfg.num_hidden_layers):
            moe = cfg.is_moe_layer(i)
            if moe not in templates:
                templates[moe] = _module_specs(DecoderLayer(cfg, i), "")
            out += [
                ParamSpec(f"model.layers.{i}.{p.name}", p.shape, p.linear and f"model.layers.{i}.{p.linear}", p.fp32)
                for p in templates[moe]
            ]
        out.append(ParamSpec("model.norm.weight", (cfg.hidden_size,), None, False))
        out.append(ParamSpec("lm_head.weight", (cfg.vocab_size, cfg.hidden_size), "lm_head", False))
    return out


@dataclass(frozen=True, slots=True)
class Expected:
    """One tensor the checkpoint must hold."""

    shape: tuple[int, ...]
    dtypes: frozenset[str]  # accepted safetensors tags
    param: str  # the dense state_dict key it stores (or part of)
    role: str  # "dense" | "fp8_weight" | "fp8_scale" | "int4_packed" | "int4_scale" | "int4_shape"


def expected_tensors(inventory: list[ParamSpec], scheme: QuantScheme) -> dict[str, Expected]:
    """Checkpoint tensor name → what it must be, for a model stored in `scheme`."""
    out: dict[str, Expected] = {}
    for p in inventory:
        if p.linear is None or not scheme.quantizes(p.linear):
            out[p.name] = Expected(p.shape, FLOAT_TAGS, p.name, "dense")
            continue
        shape = (p.shape[0], p.shape[1])
        if scheme.method == "fp8":
            out[p.name] = Expected(p.shape, frozenset({"F8_E4M3"}), p.name, "fp8_weight")
            out[f"{p.linear}.weight_scale_inv"] = Expected(
                fp8_scale_shape(shape, scheme.block), frozenset({"F32"}), p.name, "fp8_scale"
            )
        else:
            out[f"{p.linear}.weight_packed"] = Expected(int4_packed_shape(shape), frozenset({"I32"}), p.name, "int4_packed")
            out[f"{p.linear}.weight_scale"] = Expected(
                int4_scale_shape(shape, scheme.group_size), FLOAT_TAGS, p.name, "int4_scale"
            )
            out[f"{p.linear}.weight_shape"] = Expected((2,), frozenset({"I32", "I64"}), p.name, "int4_shape")
    return out


# ---------------------------------------------------------------------------------------------- the report
@dataclass
class CheckpointReport:
    root: Path
    cfg: ModelConfig | None = None
    scheme: QuantScheme | None = None
    weight_map: dict[str, Path] = field(default_factory=dict)
    headers: dict[Path, dict[str, TensorInfo]] = field(default_factory=dict)
    expected: dict[str, Expected] = field(default_factory=dict)
    ignored: dict[str, int] = field(default_factory=dict)  # reason → count
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def shards(self) -> list[Path]:
        return list(dict.fromkeys(self.weight_map.values()))

    def info(self, name: str) -> TensorInfo:
        return self.headers[self.weight_map[name]][name]

    def stored_tensors(self) -> list[TensorInfo]:
        return [h[n] for n, s in self.weight_map.items() if (h := self.headers.get(s)) is not None and n in h]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.stored_tensors())

    @property
    def dtype_counts(self) -> dict[str, int]:
        return dict(Counter(t.dtype for t in self.stored_tensors()).most_common())

    def raise_if_problems(self) -> CheckpointReport:
        if self.problems:
            raise CheckpointError(str(self.root), self.problems)
        return self


def inspect_checkpoint(path: str | Path, cfg: ModelConfig | None = None) -> CheckpointReport:
    """Validate a checkpoint directory from its config, index and headers only. Collects, never raises."""
    report = CheckpointReport(Path(path))
    root = report.root
    if cfg is None:
        try:
            cfg = ModelConfig.from_pretrained(root)
        except (ValueError, FileNotFoundError) as exc:
            report.problems.append(str(exc))
    report.cfg = cfg
    if cfg is not None:
        try:
            report.scheme = scheme_from_config(cfg.quantization_config, str(root / "config.json"))
        except CheckpointError as exc:
            report.problems += [f"{exc.source}: {p}" for p in exc.problems]

    weight_map, problems = read_index(root)
    report.weight_map = weight_map
    report.problems += problems
    _check_shards(report, single=not (root / INDEX_NAME).is_file())
    if cfg is not None and report.scheme is not None and weight_map:
        report.expected = expected_tensors(model_inventory(cfg), report.scheme)
        _check_tensors(report, cfg)
    return report


def check_checkpoint(path: str | Path, cfg: ModelConfig | None = None) -> CheckpointReport:
    """`inspect_checkpoint`, raising CheckpointError (a ValueError) listing every problem."""
    return inspect_checkpoint(path, cfg).raise_if_problems()


def _check_shards(report: CheckpointReport, single: bool) -> None:
    by_shard: dict[Path, list[str]] = defaultdict(list)
    for name, shard in report.weight_map.items():
        by_shard[shard].append(name)
    for shard, names in by_shard.items():
        if not shard.is_file():
            report.problems.append(
                f"{shard}: missing shard file (the index maps {len(names)} tensors to it, e.g. {names[0]})"
            )
            continue
        try:
            header = read_header(shard)
        except SafetensorsError as exc:
            report.problems.append(str(exc))
            continue
        report.headers[shard] = header
        if single:
            continue
        listed = set(names)
        for name in names:
            if name not in header:
                report.problems.append(f"{shard.name}: tensor {name}: the index maps it to this shard, which does not contain it")
        for name in header:
            if name not in listed:
                where = report.weight_map.get(name)
                also = f" (the index maps it to {where.name})" if where is not None else ""
                report.problems.append(f"{shard.name}: tensor {name}: in the shard but not in {INDEX_NAME}{also}")


def _check_tensors(report: CheckpointReport, cfg: ModelConfig) -> None:
    expected, weight_map, scheme = report.expected, report.weight_map, report.scheme
    assert scheme is not None
    ignored: Counter[str] = Counter()
    for name, shard in weight_map.items():
        reason = ignored_reason(name, cfg)
        if reason is not None:
            ignored[reason] += 1
            continue
        want = expected.get(name)
        if want is None:
            report.problems.append(f"{shard.name}: {_unexpected(name, weight_map, scheme, cfg, expected)}")
            continue
        info = report.headers.get(shard, {}).get(name)
        if info is None:  # shard missing or unreadable: already reported
            continue
        if info.dtype not in want.dtypes:
            report.problems.append(
                f"{shard.name}: tensor {name}: expected dtype {' or '.join(sorted(want.dtypes))} "
                f"({_role_text(want.role, scheme)}), found {info.dtype}"
            )
        if info.shape != want.shape:
            report.problems.append(
                f"{shard.name}: tensor {name}: expected shape {list(want.shape)}, found {list(info.shape)}"
            )
    for name, want in expected.items():
        if want.role in ("fp8_scale", "int4_scale", "int4_shape") and name in weight_map:
            partner = want.param if want.role == "fp8_scale" else want.param.removesuffix(".weight") + ".weight_packed"
            if partner not in weight_map:
                report.problems.append(
                    f"{weight_map[name].name}: scale tensor {name} has no weight {partner} in the checkpoint"
                )
        if name not in weight_map:
            index = INDEX_NAME if (report.root / INDEX_NAME).is_file() else SINGLE_NAME
            report.problems.append(
                f"{index}: missing tensor {name} (expected {'/'.join(sorted(want.dtypes))} {list(want.shape)}, "
                f"{_role_text(want.role, scheme)})"
            )
    report.ignored = dict(ignored)


def _role_text(role: str, scheme: QuantScheme) -> str:
    return {
        "dense": "an unquantized tensor",
        "fp8_weight": "block-FP8 weight per config.json's quantization_config",
        "fp8_scale": f"the float32 per-{scheme.block[0]}x{scheme.block[1]}-block scale of an FP8 weight",
        "int4_packed": "8 int4 values per int32 word",
        "int4_scale": f"one scale per {scheme.group_size} inputs",
        "int4_shape": "the unpacked [out, in]",
    }[role]


def _unexpected(name: str, weight_map: dict[str, Path], scheme: QuantScheme, cfg: ModelConfig, expected: dict[str, Expected]) -> str:
    for suffix, owner in (
        ("_scale_inv", ""),
        (".weight_scale", ".weight_packed"),
        (".weight_shape", ".weight_packed"),
        (".weight_packed", ".weight_scale"),
    ):
        if not name.endswith(suffix):
            continue
        base = name[: -len(suffix)]
        partner = base + owner if owner else base
        if partner not in weight_map:
            return f"scale tensor {name} has no weight {partner} in the checkpoint"
        return (
            f"unexpected tensor {name}: config.json's quantization_config ({scheme.describe()}) "
            f"does not quantize {base.removesuffix('.weight')}"
        )
    if name.endswith(".weight") and f"{name[:-7]}.weight_packed" in expected:
        return f"unexpected tensor {name}: config.json stores this module as int4 ({name[:-7]}.weight_packed/_scale/_shape)"
    expert = _EXPERT.search(name)
    if expert and int(expert.group(1)) >= cfg.n_routed_experts:
        return f"unexpected tensor {name}: expert {expert.group(1)} but config.json has n_routed_experts={cfg.n_routed_experts}"
    return f"unexpected tensor {name}: config.json describes no such tensor"
