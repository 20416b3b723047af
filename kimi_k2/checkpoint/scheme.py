"""Which weights of a checkpoint are quantized, and how: read from `config.json`'s `quantization_config`.

The format is always decided by the config, never guessed from file names or dtypes (DESIGN: every behaviour
switch is an explicit field). Two official schemes (SPEC §3):

* `{"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}`
  (Kimi-K2-Instruct, DeepSeek-V3): every Linear except `lm_head` (and any `modules_to_not_convert`) is block FP8.
  The router (`mlp.gate`) and the embeddings are not Linear layers, so they stay bf16.
* compressed-tensors `pack-quantized` (Kimi-K2-Thinking): one config group targeting `Linear` with 4-bit
  symmetric int weights in groups, and an `ignore` list of module names or `re:` regexes (matched with
  `re.match`, as compressed-tensors does). K2-Thinking ignores attention, shared experts, dense MLPs and lm_head,
  so only routed experts are int4.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kimi_k2.model.quant_linear import FP8_BLOCK, INT4_GROUP

METHODS = ("none", "fp8", "int4")


class CheckpointError(ValueError):
    """Everything wrong with a checkpoint, found in one pass: `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source, self.problems = source, list(problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"{source}: {len(problems)} {noun}:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class QuantScheme:
    method: str = "none"  # "none" | "fp8" | "int4"
    block: tuple[int, int] = FP8_BLOCK  # fp8 weight block (rows, cols)
    group_size: int = INT4_GROUP  # int4 group along the input dimension
    ignore: tuple[str, ...] = ()  # Linear modules left unquantized: exact names or "re:<regex>"

    def quantizes(self, module: str) -> bool:
        """Whether the Linear module `module` (e.g. `model.layers.1.mlp.experts.3.up_proj`) is stored quantized."""
        if self.method == "none":
            return False
        return not any(_matches(pattern, module) for pattern in self.ignore)

    def describe(self) -> str:
        if self.method == "fp8":
            return f"fp8 (float8_e4m3fn, {self.block[0]}x{self.block[1]} blocks)"
        if self.method == "int4":
            return f"int4 (compressed-tensors pack-quantized, symmetric, group {self.group_size})"
        return "unquantized"

    def to_config(self) -> dict[str, Any] | None:
        """The `quantization_config` to write into `config.json` (None: none)."""
        if self.method == "fp8":
            out: dict[str, Any] = {
                "activation_scheme": "dynamic",
                "fmt": "e4m3",
                "quant_method": "fp8",
                "weight_block_size": list(self.block),
            }
            extra = [p for p in self.ignore if p != "lm_head"]
            if extra:
                out["modules_to_not_convert"] = extra
            return out
        if self.method == "int4":
            return {
                "config_groups": {
                    "group_0": {
                        "input_activations": None,
                        "output_activations": None,
                        "targets": ["Linear"],
                        "weights": {
                            "actorder": None,
                            "block_structure": None,
                            "dynamic": False,
                            "group_size": self.group_size,
                            "num_bits": 4,
                            "observer": "minmax",
                            "observer_kwargs": {},
                            "strategy": "group",
                            "symmetric": True,
                            "type": "int",
                        },
                    }
                },
                "format": "pack-quantized",
                "ignore": list(self.ignore),
                "kv_cache_scheme": None,
                "quant_method": "compressed-tensors",
                "quantization_status": "compressed",
            }
        return None


NO_QUANT = QuantScheme()
K2_FP8 = QuantScheme("fp8", ignore=("lm_head",))
K2_THINKING_INT4 = QuantScheme(
    "int4",
    ignore=("lm_head", r"re:.*self_attn.*", r"re:.*shared_experts.*", r"re:.*mlp\.(gate|up|gate_up|down)_proj.*"),
)
DEFAULT_SCHEMES = {"none": NO_QUANT, "fp8": K2_FP8, "int4": K2_THINKING_INT4}


def _matches(pattern: str, module: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], module) is not None
    return pattern == module


def scheme_from_config(qc: Any, source: str = "config.json") -> QuantScheme:
    """Parse `quantization_config` (None → unquantized). Raises CheckpointError naming every bad field."""
    if qc is None:
        return NO_QUANT
    where = f"{source}: quantization_config"
    if not isinstance(qc, dict):
        raise CheckpointError(source, [f"quantization_config: expected an object, found {type(qc).__name__}"])
    method = qc.get("quant_method")
    problems: list[str] = []

    def expect(field: str, found: Any, wanted: Any) -> None:
        if found != wanted:
            problems.append(f"quantization_config.{field}: expected {wanted!r}, found {found!r}")

    if method == "fp8":
        expect("fmt", qc.get("fmt", "e4m3"), "e4m3")
        block = qc.get("weight_block_size")
        if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
            problems.append(f"quantization_config.weight_block_size: expected [rows, cols] of positive ints, found {block!r}")
            block = list(FP8_BLOCK)
        skip = qc.get("modules_to_not_convert") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            problems.append(f"quantization_config.modules_to_not_convert: expected a list of names, found {skip!r}")
            skip = []
        if problems:
            raise CheckpointError(where, problems)
        return QuantScheme("fp8", block=(block[0], block[1]), ignore=("lm_head", *[s for s in skip if s != "lm_head"]))
    if method == "compressed-tensors":
        groups = qc.get("config_groups")
        if not isinstance(groups, dict) or len(groups) != 1:
            count = len(groups) if isinstance(groups, dict) else groups
            raise CheckpointError(where, [f"quantization_config.config_groups: expected exactly one group, found {count!r}"])
        (group_name, group), = groups.items()
        prefix = f"config_groups.{group_name}"
        if not isinstance(group, dict):
            raise CheckpointError(where, [f"quantization_config.{prefix}: expected an object, found {group!r}"])
        expect("format", group.get("format", qc.get("format")), "pack-quantized")
        expect(f"{prefix}.targets", group.get("targets"), ["Linear"])
        weights = group.get("weights")
        if not isinstance(weights, dict):
            raise CheckpointError(where, [*problems, f"quantization_config.{prefix}.weights: expected an object, found {weights!r}"])
        for field, wanted in (("num_bits", 4), ("type", "int"), ("symmetric", True), ("strategy", "group")):
            expect(f"{prefix}.weights.{field}", weights.get(field), wanted)
        group_size = weights.get("group_size")
        if not isinstance(group_size, int) or group_size <= 0:
            problems.append(f"quantization_config.{prefix}.weights.group_size: expected a positive int, found {group_size!r}")
        if group.get("input_activations") is not None:
            problems.append(
                f"quantization_config.{prefix}.input_activations: expected null (weight-only), "
                f"found {group.get('input_activations')!r}"
            )
        ignore = qc.get("ignore") or []
        if not isinstance(ignore, list) or not all(isinstance(s, str) for s in ignore):
            problems.append(f"quantization_config.ignore: expected a list of names / 're:' patterns, found {ignore!r}")
            ignore = []
        for pattern in ignore:
            if pattern.startswith("re:"):
                try:
                    re.compile(pattern[3:])
                except re.error as exc:
                    problems.append(f"quantization_config.ignore: bad regex {pattern!r}: {exc}")
        if problems:
            raise CheckpointError(where, problems)
        return QuantScheme("int4", group_size=group_size, ignore=tuple(ignore))
    raise CheckpointError(
        where, [f"quantization_config.quant_method: expected 'fp8' or 'compressed-tensors', found {method!r}"]
    )
