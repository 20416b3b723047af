"""How fast a full-size Kimi-K2-Instruct checkpoint is validated, and how fast a broken one fails.

Writes the official layout of K2-Instruct at full size — `model-1-of-61.safetensors` … `model-61-of-61`, the
index, every header with the real names, dtypes and shapes (FP8 weights + `weight_scale_inv`, bf16 rest, fp32
router bias, the stray `rotary_emb.inv_freq`) — as *sparse* files, so 958 GiB of declared data take no disk
space. Then times `inspect_checkpoint` (what `kimi-k2 verify` and every `load_model` run first) on the valid
checkpoint and on broken copies (a shard missing, a wrong dtype, a truncated header), and checks the tensor
count and byte total against the published figures (SPEC §3: 139,644 tensors, 958.5 GiB).

Usage:  python bench/checkpoint_verify_k2.py [--dir /tmp/k2-sparse]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import struct
import tempfile
import time
from pathlib import Path

import torch

from kimi_k2.checkpoint.safetensors_io import TAGS
from kimi_k2.checkpoint.scheme import K2_FP8
from kimi_k2.checkpoint.validate import inspect_checkpoint, model_inventory
from kimi_k2.checkpoint.sources import target_tensors
from kimi_k2.config import preset

SHARDS = 61


def write_sparse_k2(root: Path) -> tuple[int, int]:
    cfg = preset("kimi-k2")
    config = cfg.replace(quantization_config=K2_FP8.to_config()).to_hf()
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    tensors = []
    for p in model_inventory(cfg):
        for t in target_tensors(p, K2_FP8, torch.bfloat16):
            tensors.append((t.name, TAGS[t.dtype], t.shape, t.nbytes))
        if p.name.endswith("self_attn.o_proj.weight"):
            layer = p.name.split(".")[2]
            tensors.append((f"model.layers.{layer}.self_attn.rotary_emb.inv_freq", "F32", (32,), 128))
    per = math.ceil(len(tensors) / SHARDS)
    weight_map = {}
    for k in range(SHARDS):
        name = f"model-{k + 1}-of-{SHARDS}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for tensor, tag, shape, nbytes in tensors[k * per : (k + 1) * per]:
            header[tensor] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[tensor] = name
        encoded = json.dumps(header).encode()
        encoded += b" " * (-len(encoded) % 8)
        with open(root / name, "wb") as f:
            f.write(struct.pack("<Q", len(encoded)) + encoded)
            f.truncate(8 + len(encoded) + offset)  # sparse: the data section is a hole
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return len(tensors), sum(t[3] for t in tensors)


def _drop_shard(d: Path) -> None:
    (d / "model-17-of-61.safetensors").unlink()


def _truncate_header(d: Path) -> None:
    shard = d / "model-40-of-61.safetensors"
    head = shard.open("rb").read(4096)
    shard.unlink()
    shard.write_bytes(head)


def _wrong_experts(d: Path) -> None:
    config = json.loads((d / "config.json").read_text())
    config["n_routed_experts"] = 256
    (d / "config.json").write_text(json.dumps(config))


CASES = {"shard 17 missing": _drop_shard, "truncated header (shard 40)": _truncate_header, "config says 256 experts": _wrong_experts}


def timed(root: Path) -> tuple[float, list[str], int]:
    start = time.perf_counter()
    report = inspect_checkpoint(root)
    return time.perf_counter() - start, report.problems, report.total_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=None, help="where to write the sparse checkpoint (default: a temp dir)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="k2-sparse-")) / "valid"
    start = time.perf_counter()
    count, nbytes = write_sparse_k2(root)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"wrote {count:,} tensor headers in {SHARDS} sparse shards ({nbytes / 2**30:.1f} GiB declared) in {time.perf_counter() - start:.1f} s")
    print("published: 139,644 tensors, 958.5 GiB (SPEC §3)")
    print("| case | seconds | problems | first problem |")
    print("|---|---|---|---|")
    seconds, problems, total = timed(root)
    print(f"| valid | {seconds:.2f} | {len(problems)} | {total / 2**30:.1f} GiB checked |")
    for label, breaker in CASES.items():
        broken = root.parent / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        broken.mkdir()
        for file in root.iterdir():  # shards by symlink (sparse files stay untouched), small files copied
            if file.suffix == ".safetensors":
                (broken / file.name).symlink_to(file)
            else:
                shutil.copy(file, broken / file.name)
        breaker(broken)
        seconds, problems, _ = timed(broken)
        print(f"| {label} | {seconds:.2f} | {len(problems):,} | {problems[0][:110] if problems else ''} |")
    shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
