"""Options that `generate`, `chat` and `serve` share: one name, one unit and one error message each.

`--model` takes a checkpoint directory or a Hugging Face Hub id (`moonshotai/Kimi-K2-Instruct`), resolved
through the local Hugging Face cache only (`kimi_k2/hub.py`): nothing is downloaded; an id that is not cached
is an error that says how to download it. `--dtype auto` is float32 activations over weights kept as stored
(the default `--weights auto`: bf16, FP8 and INT4 weights stay so), or the checkpoint's own dtype
(`torch_dtype` in `config.json`; bf16 for the official bf16 and FP8 checkpoints) when `--weights` converts them. Sizes take units
(`--kv-memory 2GiB`) and a bad value says what is expected, through argparse's own error path.

No torch import here: `kimi-k2 --help` and every subcommand's `--help` stay fast.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kimi_k2.hub import resolve_checkpoint

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
DTYPES = ("auto", "float32", "bfloat16", "float16")
# kimi_k2.checkpoint.loader.WEIGHT_FORMATS, spelled here so `--help` imports no torch
WEIGHT_CHOICES = ("auto", "dequantize", "fp8", "int4")


def parse_bytes(text: str, option: str = "--kv-memory") -> int:
    """`"2GiB"` -> 2147483648; plain numbers are bytes. ValueError names the option and the accepted units."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match[2].lower() not in _UNITS:
        raise ValueError(f"{option} {text!r}: expected a size like 512MiB, 2GiB, 4GB or a number of bytes")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def size_type(option: str) -> Callable[[str], int]:
    """An argparse `type` for a size option: a bad value prints `argument OPTION: expected a size like …`."""

    def parse(text: str) -> int:
        try:
            value = parse_bytes(text, option)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{option} ")) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1 byte")
        return value

    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model, --dtype, --weights, --int8-activations, --no-mmap, --kv-memory, --max-model-len, --threads,
    --chat-template (generate, chat and serve)."""
    parser.add_argument("--model", default=None, metavar="DIR_OR_HUB_ID",
                        help="checkpoint directory, or a Hub id found in the local Hugging Face cache "
                             "(default: the built-in nano K2 demo model)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto",
                        help="activations and KV cache dtype (auto: float32 while the weights stay as stored, the "
                             "default; the checkpoint's own, bf16 for the official ones, when --weights converts them)")
    parser.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                        help="auto (default): every weight as stored (FP8 / INT4 kept, bf16 bf16); dequantize: convert "
                             "them to --dtype on load; fp8 / int4: quantize on load")
    parser.add_argument("--int8-activations", action="store_true",
                        help="INT4 weights against activations quantized to int8 per 32 values (faster, not exact)")
    parser.add_argument("--no-mmap", action="store_true",
                        help="read the weights into RAM instead of using them memory-mapped from the checkpoint files")
    parser.add_argument("--kv-memory", type=size_type("--kv-memory"), default=None, metavar="SIZE",
                        help="KV cache budget, e.g. 512MiB or 2GiB (default: what --max-num-seqs full-context sequences "
                             "need, at most a fifth of free memory and 4 GiB)")
    parser.add_argument("--max-model-len", type=positive_int, default=None, metavar="TOKENS",
                        help="context limit in tokens (default: the model's max_position_embeddings)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--chat-template", default=None, metavar="FILE",
                        help="a jinja chat template to use instead of the checkpoint's")
    add_parallel_options(parser)


def add_parallel_options(parser: argparse.ArgumentParser) -> None:
    """--tensor-parallel-size, --enable-expert-parallel, --moe-combine, --device, --distributed-backend,
    --distributed-timeout (docs/parallel.md)."""
    group = parser.add_argument_group("parallelism (docs/parallel.md)")
    group.add_argument("--tensor-parallel-size", "-tp", type=positive_int, default=1, metavar="N",
                       help="shard the model over N ranks: this process and N-1 workers it starts on this host, or "
                            "the N ranks torchrun started (default: 1)")
    group.add_argument("--enable-expert-parallel", action="store_true",
                       help="each rank holds E/N whole routed experts instead of 1/N of every expert")
    group.add_argument("--moe-combine", choices=("allreduce", "alltoall"), default="allreduce",
                       help="with expert parallelism: one all-reduce per MoE layer (default), or dispatch and combine "
                            "by all-to-all")
    group.add_argument("--device", default="cpu", help="cpu (default) or cuda (each rank its own GPU)")
    group.add_argument("--distributed-backend", choices=("gloo", "nccl"), default=None,
                       help="torch.distributed backend (default: gloo on cpu, nccl on cuda)")
    group.add_argument("--distributed-timeout", type=positive_int, default=600, metavar="SECONDS",
                       help="a collective waiting longer than this on a silent rank fails (default: 600)")


def parallel_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`LLM`'s parallel keywords from the parsed options."""
    return dict(tensor_parallel_size=args.tensor_parallel_size, enable_expert_parallel=args.enable_expert_parallel,
                moe_combine=args.moe_combine, device=args.device, distributed_backend=args.distributed_backend,
                distributed_timeout_s=float(args.distributed_timeout))


def run_worker_rank(args: argparse.Namespace) -> int | None:
    """Under torchrun, ranks other than 0 load their shard and run steps here (the exit code); None on rank 0 and
    outside torchrun, where the command goes on."""
    if args.tensor_parallel_size == 1:
        return None
    from kimi_k2.parallel.launch import torchrun_rank

    launched = torchrun_rank()
    if launched is None or launched[0] == 0:
        return None
    import torch

    from kimi_k2.config import ModelConfig
    from kimi_k2.engine.lockstep import LoadOptions, run_worker
    from kimi_k2.parallel.config import ParallelConfig
    from kimi_k2.parallel.launch import default_backend, init_group

    rank, world_size, local_rank = launched
    if world_size != args.tensor_parallel_size:
        raise ValueError(f"torchrun started {world_size} ranks but --tensor-parallel-size is "
                         f"{args.tensor_parallel_size}")
    model_dir = resolve_model(args.model)
    dtype = resolve_dtype(args, ModelConfig.from_pretrained(model_dir))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    init_group(rank, world_size, init_method="env://", backend=args.distributed_backend or default_backend(args.device),
               timeout_s=float(args.distributed_timeout))
    layout = ParallelConfig(world_size, 0, args.enable_expert_parallel, args.moe_combine)
    run_worker(rank, local_rank, layout,
               LoadOptions(str(model_dir), getattr(torch, dtype), args.weights, not args.no_mmap, args.device))
    return 0


def resolve_model(model: str | Path | None) -> Path:
    """A checkpoint directory for `--model`: the directory itself, a Hub id from the local HF cache, or the
    built-in nano model when None. FileNotFoundError says what was looked for and where."""
    if model is None:
        from kimi_k2.assets import default_model_dir

        return default_model_dir()
    return resolve_checkpoint(model, "--model")


def auto_dtype(config: Any, weights: str = "auto") -> str:
    """The dtype `--dtype auto` means. With the weights kept as stored (`--weights auto`) they keep the checkpoint's
    dtype and format whatever the activations' dtype, so the activations are float32: on the CPU, bf16 arithmetic
    is slower and less exact, and float32 activations cost no weight memory. When `--weights` converts them, the
    checkpoint's `torch_dtype` (float32, bfloat16 or float16); quantized checkpoints (FP8, INT4) bfloat16."""
    if weights == "auto":
        return "float32"
    if getattr(config, "quantization_config", None):
        return "bfloat16"
    name = str(getattr(config, "torch_dtype", "") or "").removeprefix("torch.")
    return name if name in DTYPES[1:] else "bfloat16"


def resolve_dtype(args: argparse.Namespace, config: Any) -> str:
    """The dtype name `--dtype` means for this checkpoint's config (`auto_dtype` when it is "auto")."""
    return auto_dtype(config, args.weights) if args.dtype == "auto" else args.dtype


def read_chat_template(path: str | Path) -> str:
    """The text of `--chat-template FILE`; a missing or empty file is an error naming it."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"--chat-template {path}: no such file")
    text = file.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"--chat-template {path}: the file is empty")
    return text
