"""Write checkpoints in the official HF layout, and convert between bf16 / fp32 / FP8 / INT4 with bounded memory.

Layout written: `model-00001-of-0000N.safetensors` shards filled in state_dict order up to `max_shard_bytes`
(a quantized weight and its scales always share a shard), `model.safetensors.index.json` (`metadata.total_size`
and the `weight_map`) — or a single `model.safetensors` when everything fits one shard, as `save_pretrained`
does — and `config.json` with the matching `quantization_config` (scheme.py). Tokenizer and generation files
found in `tokenizer_dir` are copied.

Every output tensor's name, dtype and shape is known from the config before any data is produced, so each
shard's header is written first and tensors are streamed into it one parameter at a time: memory stays at one
parameter in flight whatever the shard size. Formats: `bf16` and `fp32` (unquantized), `fp8` (K2-Instruct:
every Linear but lm_head, 128x128 blocks), `int4` (K2-Thinking: routed experts only, with its ignore list).
A source already in the target scheme is copied bit-exactly, never requantized.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from kimi_k2.checkpoint.index import INDEX_NAME, SINGLE_NAME
from kimi_k2.checkpoint.safetensors_io import PlannedTensor, ShardWriter
from kimi_k2.checkpoint.scheme import DEFAULT_SCHEMES, NO_QUANT, QuantScheme
from kimi_k2.checkpoint.sources import CheckpointReader, StateSource, WeightSource, materialize, target_tensors
from kimi_k2.checkpoint.validate import ParamSpec, check_checkpoint, model_inventory
from kimi_k2.config import ModelConfig

log = logging.getLogger("kimi_k2")

FORMATS = ("bf16", "fp32", "fp8", "int4")
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # transformers' default "5GB"
TOKENIZER_FILES = (
    "tiktoken.model",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "generation_config.json",
)
TOKENIZER_PATTERNS = ("chat_template*.jinja", "tokenization_*.py")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str | int) -> int:
    """"5GB" → 5_000_000_000, "512MiB" → 536_870_912, 1000 → 1000."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"size {text!r}: expected a number of bytes with an optional unit (e.g. 5GB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])


def format_target(fmt: str) -> tuple[QuantScheme, torch.dtype]:
    """An output format name → (quantization scheme, dtype of the unquantized tensors)."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "fp32":
        return NO_QUANT, torch.float32
    return DEFAULT_SCHEMES["none" if fmt == "bf16" else fmt], torch.bfloat16


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def plan_shards(groups: list[list[PlannedTensor]], max_shard_bytes: int) -> list[list[int]]:
    """Greedy in order: group indices per shard, never splitting a group, a new shard when the next would overflow."""
    shards: list[list[int]] = [[]]
    size = 0
    for i, group in enumerate(groups):
        nbytes = sum(t.nbytes for t in group)
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += nbytes
    return shards


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer / generation files found in `src` into `dst`; returns the names copied."""
    names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    for pattern in TOKENIZER_PATTERNS:
        names += sorted(p.name for p in src.glob(pattern) if p.is_file() and p.name not in names)
    for name in names:
        if (src / name).resolve() != (dst / name).resolve():
            shutil.copyfile(src / name, dst / name)
    return names


def _output_config(cfg: ModelConfig, scheme: QuantScheme, dtype: torch.dtype) -> dict[str, object]:
    changes: dict[str, object] = {"quantization_config": scheme.to_config(), "torch_dtype": str(dtype).removeprefix("torch.")}
    if cfg.num_nextn_predict_layers:
        log.info("not writing the %d multi-token-prediction layer(s): num_nextn_predict_layers set to 0", cfg.num_nextn_predict_layers)
        changes["num_nextn_predict_layers"] = 0
    return cfg.replace(**changes).to_hf()


def write_checkpoint(
    source: WeightSource,
    cfg: ModelConfig,
    directory: str | Path,
    scheme: QuantScheme,
    dtype: torch.dtype,
    *,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Stream every parameter of `cfg`'s model from `source` into HF-layout shards in `scheme` / `dtype`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    params: list[ParamSpec] = model_inventory(cfg)
    groups = [target_tensors(p, scheme, dtype) for p in params]
    plan = plan_shards(groups, max_shard_bytes)
    names = shard_names(len(plan))
    total = sum(t.nbytes for g in groups for t in g)
    for stale in [out / INDEX_NAME, out / SINGLE_NAME, *out.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    weight_map: dict[str, str] = {}
    with tqdm(total=total, unit="B", unit_scale=True, desc=f"writing {out.name}", disable=not sys.stderr.isatty()) as bar:
        for shard_name, members in zip(names, plan):
            bar.set_postfix_str(shard_name, refresh=False)
            planned = [t for i in members for t in groups[i]]
            with ShardWriter(out / shard_name, planned) as writer:
                for i in members:
                    tensors = materialize(params[i], source, scheme, dtype)
                    for t in groups[i]:
                        writer.write(t.name, tensors[t.name])
                        weight_map[t.name] = shard_name
                        bar.update(t.nbytes)
                    del tensors
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    (out / "config.json").write_text(json.dumps(_output_config(cfg, scheme, dtype), indent=2) + "\n", encoding="utf-8")
    if tokenizer_dir is not None:
        copy_tokenizer_files(Path(tokenizer_dir), out)
    return out


def save_model(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    directory: str | Path,
    cfg: ModelConfig | None = None,
    *,
    fmt: str = "bf16",
    max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Save a model (or its state dict) as an HF-layout checkpoint that `load_model` and transformers read.

    `fmt` is "bf16" | "fp32" | "fp8" | "int4"; `cfg` defaults to `model.config`. The model may hold FP8Linear /
    Int4Linear layers: they are copied as stored when `fmt` matches, dequantized (or requantized) otherwise.
    """
    if cfg is None:
        cfg = getattr(model_or_state, "config", None)
        if not isinstance(cfg, ModelConfig):
            raise ValueError("save_model: pass cfg= (a ModelConfig) when saving a plain state dict")
    scheme, dtype = format_target(fmt)
    return write_checkpoint(
        StateSource(model_or_state),
        cfg,
        directory,
        scheme,
        dtype,
        max_shard_bytes=parse_size(max_shard_bytes),
        tokenizer_dir=tokenizer_dir,
    )


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    to: str,
    *,
    max_shard_bytes: int | str = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> Path:
    """Convert the checkpoint in `src` to format `to` in `dst`, shard by shard with bounded memory.

    `src` is validated first (every problem reported before any byte is written); `dst` must not already hold
    a checkpoint unless `overwrite`. The result is validated again after writing.
    """
    src, dst = Path(src), Path(dst)
    scheme, dtype = format_target(to)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: the destination must differ from the source")
    if not overwrite and dst.is_dir() and ((dst / "config.json").exists() or any(dst.glob("*.safetensors"))):
        raise ValueError(f"{dst}: already holds a checkpoint (pass --overwrite to replace it)")
    report = check_checkpoint(src)
    assert report.cfg is not None and report.scheme is not None
    if report.scheme.method == scheme.method:
        scheme = report.scheme  # same format: keep the source's blocks / ignore list, copy bit-exactly
    for reason, count in report.ignored.items():
        log.info("%s: not converting %d tensors: %s", src, count, reason)
    with CheckpointReader(report) as reader:
        write_checkpoint(reader, report.cfg, dst, scheme, dtype, max_shard_bytes=parse_size(max_shard_bytes), tokenizer_dir=src)
    check_checkpoint(dst)
    return dst
