"""Load an HF-layout checkpoint (unquantized, block FP8 or INT4) into a KimiK2ForCausalLM.

Order of work: validate the config, index and every shard header (`validate.py`, no weight bytes read, all
problems reported at once) → build the model on the meta device, swapping in `FP8Linear` / `Int4Linear` where
the chosen `weights` format keeps weights quantized → read each parameter's tensors with positioned reads,
convert them to the target (cast, dequantize, keep, or quantize) and assign, one parameter at a time. Peak
memory is the finished model plus one parameter in flight (plus its dequantization temporaries).

`weights` chooses what the linear layers hold:
  "dequantize" (default) every Linear dense in `dtype` (FP8 / INT4 checkpoints are dequantized on load)
  "fp8"        block-FP8 storage, dequantized on the fly (bf16 checkpoints are quantized on load)
  "int4"       routed experts int4 (K2-Thinking's scheme or the checkpoint's own ignore list), the rest dense
  "auto"       every Linear weight as the checkpoint stores it: FP8 and INT4 kept, a bf16 (or fp32) Linear weight
               in that dtype whatever `dtype` is (the product widens it exactly: `Linear`, `kimi_k2.kernels`),
               the embedding too (its rows are widened); norms and the router in `dtype`
Tensors the model does not use (`rotary_emb.inv_freq`, DeepSeek-V3's MTP layer) are skipped with a one-line
notice on the `kimi_k2` logger.

With a `ParallelConfig` of N ranks (`parallel=`), the model gets this rank's shapes (`kimi_k2.parallel.shard`)
and each parameter is cut to this rank's shard as it is read (`shards.cut`): a rank reads and holds its share,
another rank's routed experts are never read, and FP8 / INT4 stay as stored where the cut is block-aligned.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from kimi_k2.checkpoint.scheme import DEFAULT_SCHEMES, NO_QUANT, QuantScheme
from kimi_k2.checkpoint.shards import aligned, cut
from kimi_k2.checkpoint.sources import CheckpointReader, materialize
from kimi_k2.checkpoint.validate import ParamSpec, check_checkpoint, ignored_reason, model_inventory
from kimi_k2.config import ModelConfig
from kimi_k2.model.quant_linear import FP8Linear, Int4Linear
from kimi_k2.model.transformer import KimiK2ForCausalLM, build_model
from kimi_k2.parallel.config import SINGLE, ParallelConfig
from kimi_k2.parallel.layout import shard_of
from kimi_k2.parallel.shard import shard_model

__all__ = ["WEIGHT_FORMATS", "ignored_reason", "load_model", "quantize_linears", "target_scheme"]

log = logging.getLogger("kimi_k2")

WEIGHT_FORMATS = ("dequantize", "fp8", "int4", "auto")


def target_scheme(weights: str, stored: QuantScheme) -> QuantScheme:
    """The scheme the loaded model keeps, for a `weights` choice and the checkpoint's stored scheme."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(WEIGHT_FORMATS)}")
    if weights == "dequantize":
        return NO_QUANT
    if weights == "auto" or weights == stored.method:
        return stored
    return DEFAULT_SCHEMES[weights]


def quantize_linears(model: nn.Module, scheme: QuantScheme, dtype: torch.dtype) -> nn.Module:
    """Replace every Linear that `scheme` quantizes by an empty FP8Linear / Int4Linear on the same device."""
    if scheme.method == "none":
        return model
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or not scheme.quantizes(name):
            continue
        device = module.weight.device
        if scheme.method == "fp8":
            new: nn.Module = FP8Linear(
                module.in_features, module.out_features, module.bias is not None, block=scheme.block, dtype=dtype, device=device
            )
        else:
            new = Int4Linear(
                module.in_features, module.out_features, module.bias is not None, group_size=scheme.group_size, dtype=dtype, device=device
            )
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    attention: str = "naive",
    experts: str = "grouped",
    weights: str = "dequantize",
    mmap: bool = False,
    parallel: ParallelConfig = SINGLE,
) -> KimiK2ForCausalLM:
    """Load `config.json` and the safetensors weights of a checkpoint directory.

    Float weights are converted to `dtype` (the compute dtype of quantized layers too); the router's
    `e_score_correction_bias` stays float32. With `mmap=True`, every tensor used as stored (FP8 / INT4 kept,
    float tensors already in `dtype`) is a view into the memory-mapped shard instead of a copy in RAM: loading
    reads no weight bytes, the OS page cache holds the weights a run touches, and a model larger than RAM runs.
    `parallel`: load only this rank's shard of every tensor (see the module docstring).
    Raises CheckpointError (a ValueError) listing every problem found in the files before any weight is read.
    """
    root = Path(path)
    cfg = ModelConfig.from_pretrained(root)
    report = check_checkpoint(root, cfg)
    for reason, count in report.ignored.items():
        log.info("%s: ignoring %d tensors: %s", root, count, reason)
    assert report.scheme is not None
    target = target_scheme(weights, report.scheme)
    params = model_inventory(cfg)
    shards = {p.name: shard_of(p.name, cfg, parallel) for p in params}
    # A quantized weight whose shard does not fall on the format's block boundaries is loaded dequantized.
    misaligned = [p.linear for p in params if p.linear and target.quantizes(p.linear) and not aligned(p, shards[p.name], target)]
    if misaligned:
        log.info("%s: %d sharded weights do not start on a %s block: loaded dequantized", root, len(misaligned), target.method)
        target = replace(target, ignore=(*target.ignore, *misaligned))
    model = shard_model(build_model(cfg, device="meta", dtype=dtype, attention=attention, experts=experts), parallel)
    quantize_linears(model, target, dtype)

    def dense_dtype(p: ParamSpec, reader: CheckpointReader) -> torch.dtype:
        """`dtype`, except that "auto" keeps a Linear weight stored unquantized in a float dtype, and the
        embedding, in that dtype."""
        kept = p.linear is not None and not report.scheme.quantizes(p.linear) or p.name == "model.embed_tokens.weight"
        if weights == "auto" and kept:
            stored = reader.info(p.name).torch_dtype
            if stored.is_floating_point and stored.itemsize >= 2:
                return stored
        return dtype

    state: dict[str, torch.Tensor] = {}
    params = [p for p in params if shards[p.name] is not None]  # another rank's routed experts are not read
    # A rank cuts its shard out of a mapped tensor: only the shard's pages are read.
    with CheckpointReader(report, mmap=mmap or parallel.is_parallel) as reader:
        # Read in file order (shard, then offset) so the disk sees sequential reads and the bar moves by shard.
        shard_order = {shard: i for i, shard in enumerate(report.shards)}

        def location(p_index: int) -> tuple[int, int]:
            first = reader.source_names(params[p_index])[0]
            return shard_order[report.weight_map[first]], reader.info(first).start

        order = sorted(range(len(params)), key=location)
        total = sum(reader.info(n).nbytes for p in params for n in reader.source_names(p))
        with tqdm(
            total=total, unit="B", unit_scale=True, desc=f"loading {root.name}", disable=not sys.stderr.isatty()
        ) as bar:
            for i in order:
                p = params[i]
                names = reader.source_names(p)
                shard = report.weight_map[names[0]]
                bar.set_postfix_str(f"shard {shard_order[shard] + 1}/{len(shard_order)} {shard.name}", refresh=False)
                tensors = materialize(p, reader, target, dense_dtype(p, reader))
                part = shards[p.name]
                assert part is not None
                pieces = cut(tensors, p, part, target, keep_views=mmap)
                if part.dim is None and reader.mmap and not mmap:  # mapped only to cut shards: read whole ones in
                    pieces = {name: t.clone() for name, t in pieces.items()}
                for name, tensor in pieces.items():
                    state[name] = tensor.to(device)
                bar.update(sum(reader.info(n).nbytes for n in names))
    model.load_state_dict(state, assign=True, strict=True)
    return model.eval()
