"""Convert one of our checkpoints into llama.cpp GGUF files (F32, F16, Q8_0, Q4_0) of the very same weights, and
check that llama.cpp computes the same logits as our model on them.

`bench/formats.py --gguf-dir OUT` times llama.cpp on these files against the engine on the same weights.

Usage:
    # the benchmark model: writes OUT/bf16 (the random `medium` checkpoint, exactly as bench/formats.py builds it)
    python bench/make_gguf.py --preset medium --seed 0 --out OUT --llama-cpp-src SRC --check
    # any checkpoint of ours, unquantized (bf16 / fp32 safetensors, HF layout, DeepseekV3 config.json)
    python bench/make_gguf.py --checkpoint CKPT --out OUT --llama-cpp-src SRC [--types F32,Q4_0] [--check]
    # only the check, on GGUFs already in OUT
    python bench/make_gguf.py --checkpoint CKPT --out OUT --check-only

What it needs:
* llama-cpp-python installed (`pip install llama-cpp-python`, a source build): Q4_0 is made by its
  `llama_model_quantize`, and `--check` runs the GGUFs through `llama_cpp.Llama`.
* llama.cpp's converter, `convert_hf_to_gguf.py` with its `conversion/` package and `gguf-py/`. It ships in the
  llama-cpp-python sdist; take the version matching the installed package and extract it:
      pip download --no-deps --no-binary :all: llama-cpp-python==VERSION -d SRC && tar xzf SRC/*.tar.gz -C SRC
  then pass `--llama-cpp-src SRC/llama_cpp_python-VERSION` (or its `vendor/llama.cpp`). Nothing of llama.cpp is
  copied into this repository and this script downloads nothing.
* transformers, tokenizers, numpy, torch (already ours).

How (and the pitfalls it handles):
* The converter reads a staging directory OUT/hf: our safetensors shards linked in, config.json rewritten as
  DeepseekV3 (`architectures: [DeepseekV3ForCausalLM]`, `model_type: deepseek_v3`) with `scoring_func: sigmoid`
  and `topk_method: noaux_tc` spelled out (without them llama.cpp silently falls back to softmax gating),
  no bos/eos ids (ours point past a small vocabulary), and a tokenizer.
* The tokenizer is a small byte-level BPE trained with `tokenizers` on a fixed synthetic corpus and saved as a
  `PreTrainedTokenizerFast` (at most `vocab_size` entries; the converter pads the rest). Token ids are what we
  compare, the text side does not matter. The converter rejects unknown pre-tokenizers (it hashes an encoding),
  so it runs in a subprocess whose `TextModel.get_vocab_base_pre` is patched to return "gpt-2".
* F32 / F16 / Q8_0 come from the converter (`--outtype f32|f16|q8_0`), Q4_0 from `llama_model_quantize` of the
  F32 file with llama.cpp's default recipe for that type (most tensors Q4_0; `output.weight` gets Q6_K, and
  tensors whose rows are not a multiple of 32 fall back to a wider type).
* llama.cpp ignores the GGUF's YaRN beta values: `Llama(...)` needs `yarn_beta_fast` / `yarn_beta_slow` from the
  config (the `medium` preset: 1.0 and 1.0; llama.cpp's default 32 gives drifting logits), and an F32 KV cache
  (`type_k=0, type_v=0`) for an exact comparison. `llama_kwargs(cfg)` gives them; bench/formats.py uses it.

The check (`--check`): a fixed random prompt (16 tokens) through our model (fp32, the checkpoint's weights) and
through llama.cpp on each GGUF; it compares the last row's logits (max |difference| over max |logit|), then
decodes 8 greedy tokens, feeding both the same (our) tokens and counting the steps where llama.cpp's argmax agrees.
F32 must match to `--tol` (1e-4) relative with all greedy tokens agreeing (exit status 1 otherwise); the
other files are reported for information. This random-weight model is very sensitive to rounding anywhere: F16
holds our bf16 weights essentially exactly (our model with its matrices rounded to f16 moves 1e-6), so F16's drift
comes from llama.cpp rounding activations to f16 in its F16 products; our own model run with bf16 activations
drifts as much (0.02-0.31 relative over the same 9 rows, greedy 6/8).

Measured (2026-12-07, AMD EPYC, 2 threads, llama-cpp-python 0.3.36, `--preset medium --seed 0`): conversion
F32 31-42 s (1702.6 MiB), F16 19-35 s (852.6 MiB), Q8_0 26-29 s (454.2 MiB), Q4_0 3 s from F32 (250.0 MiB: 94
tensors Q4_0, output.weight Q6_K, 47 norms/biases F32); the whole run with --check about 3 minutes. Check: F32
max |logit diff| / max |logit| 1.45e-06 on the prompt and over all 9 rows, greedy 8/8; F16 8.4e-04 on the prompt
(1.2e-01 at worst over the rows), 8/8; Q8_0 1.4e-01, 5/8; Q4_0 5.8e-01, 2/8.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kimi_k2.config import ModelConfig, preset  # noqa: E402

TYPES = ("F32", "F16", "Q8_0", "Q4_0")
CONVERTER_OUTTYPE = {"F32": "f32", "F16": "f16", "Q8_0": "q8_0"}
LLAMA_FTYPE_MOSTLY_Q4_0 = 2  # llama_ftype in llama.h (llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0)

# Runs in a subprocess: the converter with the pre-tokenizer check patched to accept our tokenizer.
WRAPPER = r"""
import runpy, sys
src = sys.argv[1]
sys.path.insert(0, src)
sys.path.insert(1, src + "/gguf-py")
import conversion.base
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def installed_llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def find_converter(src: Path | None) -> Path:
    """The llama.cpp directory holding `convert_hf_to_gguf.py` (an extracted sdist or its vendor/llama.cpp)."""
    version = installed_llama_cpp_version() or "VERSION"
    hint = (
        "llama.cpp's converter ships in the llama-cpp-python sdist; get the one matching the installed package:\n"
        f"    pip download --no-deps --no-binary :all: llama-cpp-python=={version} -d SRC\n"
        f"    tar xzf SRC/llama_cpp_python-{version}.tar.gz -C SRC\n"
        f"and pass --llama-cpp-src SRC/llama_cpp_python-{version}"
    )
    if src is None:
        raise SystemExit("make_gguf: --llama-cpp-src is required to convert.\n" + hint)
    for candidate in (src, src / "vendor" / "llama.cpp"):
        if (candidate / "convert_hf_to_gguf.py").is_file() and (candidate / "gguf-py").is_dir():
            if not (candidate / "conversion").is_dir():
                raise SystemExit(f"make_gguf: {candidate} holds an older converter without its conversion/ package; "
                                 "use a recent llama-cpp-python sdist (0.3.36 was tested).\n" + hint)
            return candidate
    raise SystemExit(f"make_gguf: no convert_hf_to_gguf.py (with gguf-py/) in {src} or {src}/vendor/llama.cpp.\n" + hint)


def llama_kwargs(cfg: ModelConfig) -> dict[str, object]:
    """The `llama_cpp.Llama` arguments that make llama.cpp compute this config's model as we do.

    llama.cpp ignores the YaRN beta values stored in the GGUF (defaults 32 / 1), so they are passed explicitly;
    the KV cache is F32 (`type_k=0, type_v=0`) so that cached keys and values are not rounded to F16.
    """
    rope = cfg.rope_scaling or {}
    kwargs: dict[str, object] = {"type_k": 0, "type_v": 0}
    if rope.get("type", rope.get("rope_type")) == "yarn":
        kwargs["yarn_beta_fast"] = float(rope.get("beta_fast", 32.0))
        kwargs["yarn_beta_slow"] = float(rope.get("beta_slow", 1.0))
    return kwargs


# ---------------------------------------------------------------------------------------------- the checkpoint
def write_random_checkpoint(cfg: ModelConfig, seed: int, directory: Path) -> Path:
    """`save_model(random_model(cfg, seed), directory, fmt="bf16")`: the very weights bench/formats.py builds."""
    from kimi_k2.checkpoint.writer import save_model
    from kimi_k2.model.transformer import random_model

    if (directory / "config.json").is_file():
        stamp = directory / "make_gguf_seed.json"
        if stamp.is_file() and json.loads(stamp.read_text()) == {"config": cfg.to_hf(), "seed": seed}:
            print(f"reusing {directory} (same preset config and seed)", file=sys.stderr)
            return directory
        raise SystemExit(f"make_gguf: {directory} already holds a checkpoint not written by this preset and seed; "
                         "remove it or pass it with --checkpoint")
    start = time.perf_counter()
    with torch.no_grad():
        save_model(random_model(cfg, seed=seed), directory, fmt="bf16")
    (directory / "make_gguf_seed.json").write_text(json.dumps({"config": cfg.to_hf(), "seed": seed}) + "\n")
    print(f"wrote the random bf16 checkpoint {directory} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return directory


def train_tokenizer(vocab_size: int, directory: Path) -> None:
    """A byte-level BPE of at most `vocab_size` entries saved as a `PreTrainedTokenizerFast` in `directory`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(1, 9))) for _ in range(4000)]
    corpus = [" ".join(rng.choice(words) for _ in range(24)) for _ in range(4000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus, trainer=trainer)
    assert tok.get_vocab_size() <= vocab_size, (tok.get_vocab_size(), vocab_size)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(directory))


def stage(checkpoint: Path, cfg: ModelConfig, directory: Path) -> Path:
    """The converter's input: our shards linked in, a DeepseekV3 config.json, a tokenizer."""
    raw = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    quant = raw.get("quantization_config")
    if quant:
        raise SystemExit(f"make_gguf: {checkpoint} is quantized ({quant.get('quant_method')}); convert it to bf16 "
                         "first (kimi_k2.checkpoint.writer.convert_checkpoint(src, dst, 'bf16'))")
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    shards = sorted(checkpoint.glob("*.safetensors"))
    if not shards:
        raise SystemExit(f"make_gguf: no safetensors in {checkpoint}")
    for path in shards + sorted(checkpoint.glob("model.safetensors.index.json")):
        os.symlink(path.resolve(), directory / path.name)
    raw.pop("quantization_config", None)
    raw.update({
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "scoring_func": "sigmoid",
        "topk_method": "noaux_tc",
        "bos_token_id": None,
        "eos_token_id": None,
    })
    (directory / "config.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    train_tokenizer(cfg.vocab_size, directory)
    return directory


# ---------------------------------------------------------------------------------------------- conversion
def run_converter(src: Path, staged: Path, outtype: str, outfile: Path, log: Path, name: str) -> None:
    cmd = [sys.executable, "-c", WRAPPER, str(src), str(staged), "--outtype", outtype, "--outfile", str(outfile),
           "--model-name", name]
    with open(log, "w", encoding="utf-8") as f:
        result = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if result.returncode != 0 or not outfile.is_file():
        tail = "".join(log.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"make_gguf: the converter failed ({outtype}, exit {result.returncode}); log {log}:\n{tail}")


def quantize(src: Path, dst: Path, ftype: int, threads: int) -> None:
    try:
        import llama_cpp
    except ImportError:
        raise SystemExit("make_gguf: Q4_0 needs llama-cpp-python (pip install llama-cpp-python); "
                         "or leave Q4_0 out of --types") from None

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    if rc != 0 or not dst.is_file():
        raise SystemExit(f"make_gguf: llama_model_quantize({src} -> {dst}) failed with {rc}")


def gguf_tensor_types(path: Path, src: Path | None) -> dict[str, int]:
    """How many tensors of each type the GGUF holds (through the converter's own gguf-py)."""
    if src is not None and str(src / "gguf-py") not in sys.path:
        sys.path.insert(0, str(src / "gguf-py"))
    try:
        import gguf
    except ImportError:
        return {}
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts


def convert(checkpoint: Path, cfg: ModelConfig, out: Path, types: list[str], src: Path, threads: int) -> list[tuple[str, float, int]]:
    staged = stage(checkpoint, cfg, out / "hf")
    (out / "logs").mkdir(exist_ok=True)
    done: list[tuple[str, float, int]] = []
    # Q4_0 is quantized from an F32 GGUF: F32.gguf when asked for, else a temporary one removed afterwards.
    f32 = out / ("F32.gguf" if "F32" in types else "F32.q4_source.gguf")
    for name in [t for t in TYPES if t in types or (t == "F32" and "Q4_0" in types)]:
        target = f32 if name == "F32" else out / f"{name}.gguf"
        start = time.perf_counter()
        if name in CONVERTER_OUTTYPE:
            run_converter(src, staged, CONVERTER_OUTTYPE[name], target, out / "logs" / f"convert_{name}.log",
                          f"kimi-k2 {checkpoint.resolve().name}")
        else:
            quantize(f32, target, LLAMA_FTYPE_MOSTLY_Q4_0, threads)
        seconds = time.perf_counter() - start
        done.append((target.stem, seconds, target.stat().st_size))
        print(f"{target.name}: {target.stat().st_size / 2**20:.1f} MiB in {seconds:.1f} s "
              f"{gguf_tensor_types(target, src)}", file=sys.stderr, flush=True)
    if "F32" not in types and f32.is_file():
        f32.unlink()
    return done


# ---------------------------------------------------------------------------------------------- the check
def llama_logits(llm, n_vocab: int) -> np.ndarray:
    """The last evaluated row's logits, copied out of llama.cpp's buffer."""
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,)).copy()


def check(checkpoint: Path, cfg: ModelConfig, out: Path, types: list[str], threads: int, prompt_len: int,
          steps: int, tol: float) -> bool:
    try:
        from llama_cpp import Llama
    except ImportError:
        raise SystemExit("make_gguf: --check needs llama-cpp-python (pip install llama-cpp-python)") from None

    from kimi_k2.checkpoint.loader import load_model

    torch.set_grad_enabled(False)
    model = load_model(checkpoint, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1234)
    prompt = torch.randint(0, cfg.vocab_size, (prompt_len,), generator=gen).tolist()
    # Ours: the whole sequence through the forward at each step (greedy), fp32 throughout.
    ids = list(prompt)
    ours: list[np.ndarray] = []
    for _ in range(steps + 1):
        logits = model(torch.tensor([ids]))[0, -1].double().numpy()
        ours.append(logits)
        ids.append(int(logits.argmax()))
    tokens = ids[prompt_len:]
    print(f"ours: prompt {prompt_len} tokens, greedy {tokens[:steps]} ; |logit| max {np.abs(ours[0]).max():.4f}",
          file=sys.stderr)
    ok = True
    rows = []
    for name in [t for t in TYPES if t in types]:
        path = out / f"{name}.gguf"
        if not path.is_file():
            print(f"{name}: {path} missing, skipped", file=sys.stderr)
            continue
        llm = Llama(str(path), n_ctx=max(256, prompt_len + steps + 8), n_threads=threads, n_threads_batch=threads,
                    logits_all=False, verbose=False, **llama_kwargs(cfg))
        n_vocab = llm.n_vocab()
        assert n_vocab == cfg.vocab_size, (n_vocab, cfg.vocab_size)
        llm.eval(prompt)
        rel: list[float] = []
        agree = 0
        for step in range(steps + 1):
            theirs = llama_logits(llm, n_vocab).astype(np.float64)
            rel.append(float(np.abs(theirs - ours[step]).max() / np.abs(ours[step]).max()))
            if step < steps:
                agree += int(theirs.argmax()) == tokens[step]
                llm.eval([tokens[step]])  # both continue with our token, so every row compares like with like
        del llm
        rows.append((name, rel[0], max(rel), agree))
        passed = max(rel) <= tol and agree == steps
        if name == "F32":
            ok = ok and passed
        print(f"{name}: prompt logits max rel diff {rel[0]:.2e}, over {steps + 1} rows {max(rel):.2e}; greedy "
              f"agreement {agree}/{steps}" + ("" if name != "F32" else (" PASS" if passed else f" FAIL (tol {tol:g})")),
              flush=True)
    if "F32" in types and not any(r[0] == "F32" for r in rows):
        ok = False
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = ap.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", type=Path, help="our checkpoint (bf16 or fp32 safetensors, HF layout)")
    which.add_argument("--preset", help="write the random checkpoint of this preset to OUT/bf16 and convert it")
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed with --preset (bench/formats.py: 0)")
    ap.add_argument("--out", type=Path, required=True, help="output directory (F32.gguf, F16.gguf, ...)")
    ap.add_argument("--types", default=",".join(TYPES), help=f"comma-separated, of {', '.join(TYPES)}")
    ap.add_argument("--llama-cpp-src", type=Path, help="an extracted llama-cpp-python sdist (or its vendor/llama.cpp)")
    ap.add_argument("--check", action="store_true", help="after converting, compare llama.cpp's logits with ours")
    ap.add_argument("--check-only", action="store_true", help="only the check, on GGUFs already in OUT")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8, help="greedy steps compared")
    ap.add_argument("--tol", type=float, default=1e-4, help="F32: max |logit difference| / max |logit|")
    ap.add_argument("--keep-staging", action="store_true", help="keep OUT/hf (the converter's input)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    types = [t.strip() for t in args.types.split(",") if t.strip()]
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        ap.error(f"--types: unknown {unknown}; choose from {', '.join(TYPES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.preset is not None:
        cfg = preset(args.preset)
        checkpoint = args.out / "bf16"
        if not args.check_only:
            checkpoint = write_random_checkpoint(cfg, args.seed, checkpoint)
    else:
        checkpoint = args.checkpoint
        cfg = ModelConfig.from_pretrained(checkpoint)
    if not args.check_only:
        src = find_converter(args.llama_cpp_src)
        version = installed_llama_cpp_version()
        if version is None:
            print("make_gguf: llama-cpp-python is not installed: F32/F16/Q8_0 only (no Q4_0, no --check)",
                  file=sys.stderr)
        elif version not in str(src.resolve()):
            print(f"make_gguf: note: llama-cpp-python {version} is installed; make sure {src} is the same version",
                  file=sys.stderr)
        done = convert(checkpoint, cfg, args.out, types, src, args.threads)
        if not args.keep_staging:
            shutil.rmtree(args.out / "hf", ignore_errors=True)
        print("| file | MiB | conversion s |\n|---|---:|---:|")
        for name, seconds, size in done:
            print(f"| {name}.gguf | {size / 2**20:.1f} | {seconds:.1f} |")
    if args.check or args.check_only:
        return 0 if check(checkpoint, cfg, args.out, types, args.threads, args.prompt_len, args.steps, args.tol) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
