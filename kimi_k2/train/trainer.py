"""The trainer: `train(TrainConfig(...))` trains a K2-architecture model the way K2 was trained, returns the run dir.

One step = `grad_accum` micro-batches of packed sequences (forward on the naive attention path with
`ForwardStats`, cross-entropy, backward), gradient-norm clipping, the WSD learning rate, an optimizer step
(`muonclip`, `muon` = MuonClip without QK-Clip, or `adamw` = the same optimizer with every matrix on AdamW), then
QK-Clip from the step's max logits (elementwise max over the micro-batches) and the aux-loss-free router-bias
update from its expert loads (summed over the micro-batches).

A run directory holds:
    run.json                  the TrainConfig, model size, device and library versions
    log.jsonl                 one JSON object per step ("kind": "train") and per evaluation ("kind": "eval")
    data/{train,eval}.npy     the tokenized splits (made once; a resume reuses them)
    checkpoints/step-NNNNNNN/ the official HF layout written by `kimi_k2.checkpoint.save_model` (model.safetensors,
                              or shards + index for big models, config.json, the tokenizer files; loadable by
                              `kimi_k2.load_model`) and trainer_state.pt (optimizer, step, data position, RNG)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm

from kimi_k2.config import ModelConfig, resolve_config
from kimi_k2.model.attention import MAX_LOGIT_PATHS
from kimi_k2.model.transformer import ForwardStats, KimiK2ForCausalLM, random_model
from kimi_k2.train.balance import update_router_bias_
from kimi_k2.train.data import IGNORE_LABEL, PackedBatches, TokenSplits, eval_batches, prepare_splits
from kimi_k2.train.muonclip import MuonClip
from kimi_k2.train.schedule import wsd_lr

log = logging.getLogger("kimi_k2")

OPTIMIZERS = ("muonclip", "muon", "adamw")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CHECKPOINT_PREFIX = "step-"


def _f(default: Any, help: str, **cli: Any) -> Any:
    """A TrainConfig field with its `kimi-k2 train` help text (the CLI is generated from these)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **cli})
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    """Everything a run needs. Only `run_dir` and `data` are required."""

    run_dir: str = _f("", "output directory (log, checkpoints, tokenized data)")
    data: list[str] = _f([], "text files/directories (with --tokenizer) or pre-tokenized .npy/.bin arrays")
    # model
    model: str = _f("tiny", "preset name (tiny, medium, kimi-k2) or a config.json / checkpoint directory")
    model_overrides: dict[str, Any] = _f({}, "model config fields to change (config.json keys)")
    vocab_size: int | None = _f(None, "model vocabulary; default: the tokenizer's vocab size (else the config's)")
    init_from: str | None = _f(None, "start from this checkpoint's weights instead of random ones")
    attention: str = _f("fused", "MLA path: fused (SDPA, fast) or naive (the reference); both record QK-Clip's max logits")
    # data
    tokenizer: str | None = _f(None, "K2-format tokenizer directory (tiktoken.model + tokenizer_config.json)")
    eval_data: list[str] | None = _f(None, "held-out files (default: a held-out split of --data by file)")
    text_glob: str = _f("*.txt", "which files to read from data directories")
    bin_dtype: str = _f("uint16", "dtype of raw .bin token arrays (uint16 or uint32)")
    holdout_fraction: float = _f(0.05, "fraction of the files held out for evaluation")
    seq_len: int = _f(256, "tokens per packed sequence")
    batch_size: int = _f(8, "sequences per micro-batch")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    # optimisation
    max_steps: int = _f(1000, "optimizer steps")
    optimizer: str = _f("muonclip", "muonclip | muon (no QK-Clip) | adamw (every parameter on AdamW)")
    lr: float = _f(2e-3, "peak learning rate (shared by Muon and AdamW: Muon's update is RMS-matched)")
    weight_decay: float = _f(0.1, "decoupled weight decay (matrices, embedding, lm_head; not norms)")
    momentum: float = _f(0.95, "Muon momentum (Nesterov)")
    adam_betas: list[float] = _f([0.9, 0.95], "AdamW betas")
    ns_dtype: str = _f("bfloat16", "Newton–Schulz dtype: bfloat16 (K2) or float32 (much faster on CPUs without bf16)")
    qk_clip_tau: float = _f(100.0, "QK-Clip threshold tau on the max attention logit (muonclip only)")
    bias_update_speed: float = _f(1e-3, "router bias update speed u (aux-loss-free balancing; 0 = off)")
    warmup_steps: int = _f(50, "linear warm-up steps")
    decay_fraction: float = _f(0.2, "fraction of max_steps spent in the final cosine decay")
    min_lr_ratio: float = _f(0.1, "final learning rate / peak")
    grad_clip: float = _f(1.0, "clip the global gradient norm to this (0 = off)")
    # evaluation, checkpoints, hardware
    eval_interval: int = _f(100, "evaluate every N steps (and at the end; 0 = only at the end)")
    eval_batches: int = _f(20, "held-out batches per evaluation")
    save_interval: int = _f(0, "checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _f(2, "how many step checkpoints to keep (older ones are deleted)")
    device: str = _f("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    dtype: str = _f("float32", "parameter and compute dtype (float32, bfloat16, float16)")
    seed: int = _f(0, "seed for the weights, the held-out split and the data order")
    resume: bool = _f(False, "continue from the latest checkpoint in run_dir")

    def validate(self) -> None:
        """Raise ValueError naming the field."""
        if not self.run_dir:
            raise ValueError("TrainConfig.run_dir is required")
        if not self.data:
            raise ValueError("TrainConfig.data: give at least one data file or directory")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.attention not in MAX_LOGIT_PATHS:  # QK-Clip needs the max logits
            raise ValueError(f"attention={self.attention!r}: choose one of {', '.join(MAX_LOGIT_PATHS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r}: choose one of {', '.join(DTYPES)}")
        for name in ("seq_len", "batch_size", "grad_accum", "max_steps", "eval_batches", "keep_checkpoints"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        for name in ("warmup_steps", "eval_interval", "save_interval", "grad_clip", "bias_update_speed", "lr"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction={self.decay_fraction} must be in [0, 1]")
        if len(self.adam_betas) != 2:
            raise ValueError(f"adam_betas={self.adam_betas}: expected two numbers")
        if self.init_from and (self.model_overrides or self.vocab_size):
            raise ValueError("init_from takes the model config from the checkpoint: drop model_overrides/vocab_size")
        if self.warmup_steps + self.decay_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps={self.warmup_steps} + decay ({self.decay_steps} steps) exceed max_steps={self.max_steps}"
            )

    @property
    def decay_steps(self) -> int:
        return round(self.max_steps * self.decay_fraction)

    def lr_at(self, step: int) -> float:
        return wsd_lr(
            step, peak_lr=self.lr, total_steps=self.max_steps, warmup_steps=self.warmup_steps,
            decay_steps=self.decay_steps, min_lr_ratio=self.min_lr_ratio,
        )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- checkpoints
def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """The run's step checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The newest checkpoint directory of a run (load it with `kimi_k2.load_model`)."""
    found = checkpoint_dirs(run_dir)
    if not found:
        raise FileNotFoundError(f"no checkpoints in {Path(run_dir) / 'checkpoints'}")
    return found[-1]


def save_checkpoint(
    model: KimiK2ForCausalLM,
    directory: Path,
    *,
    tokenizer_dir: str | Path | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write the model in the official HF layout (`kimi_k2.checkpoint.save_model`: safetensors + config.json +
    the tokenizer files) into `directory`, plus `trainer_state.pt` for resuming.

    Weights are saved in the training dtype (float16 training is saved as float32: there is no fp16 format).
    Written to a temporary sibling and renamed, so an interrupted save never leaves a half checkpoint behind.
    """
    from kimi_k2.checkpoint.writer import save_model  # the writer pulls in the quantization code: import on use

    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    fmt = "bf16" if model.lm_head.weight.dtype == torch.bfloat16 else "fp32"
    save_model(model, tmp, fmt=fmt, tokenizer_dir=tokenizer_dir)
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


# ---------------------------------------------------------------------- the trainer
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_tokenizer(path: str | None) -> Any:
    if path is None:
        return None
    from kimi_k2.tokenizer.tokenizer import Tokenizer  # text data only: keeps array-only runs free of tiktoken

    return Tokenizer.from_pretrained(path)


class Trainer:
    """Holds a run's model, optimizer, data and position; `run()` trains to `max_steps` and returns the run dir."""

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.device = torch.device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        previous = checkpoint_dirs(self.run_dir)
        if previous and not cfg.resume:
            raise ValueError(
                f"{self.run_dir} already has checkpoints ({previous[-1].name}): "
                "pass resume=True (--resume) or use a new run_dir"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = _load_tokenizer(cfg.tokenizer)
        self.model = self._build_model()
        self.splits = self._load_data()
        self.batches = PackedBatches(
            self.splits.train, cfg.seq_len, cfg.batch_size, seed=cfg.seed, loss_mask=self.splits.train_mask
        )
        self.eval_set = eval_batches(
            self.splits.eval, cfg.seq_len, cfg.batch_size, cfg.eval_batches, loss_mask=self.splits.eval_mask
        )
        self.optimizer = MuonClip.for_model(
            self.model,
            use_muon=cfg.optimizer != "adamw",
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            momentum=cfg.momentum,
            betas=(float(cfg.adam_betas[0]), float(cfg.adam_betas[1])),
            qk_clip_tau=cfg.qk_clip_tau if cfg.optimizer == "muonclip" else None,
            ns_dtype=cfg.ns_dtype,
        )
        self.step, self.tokens = 0, 0
        if cfg.resume and previous:
            self._resume(previous[-1])
        self._write_run_info()

    # ------------------------------------------------------------------ setup
    def _model_config(self) -> ModelConfig:
        cfg = self.cfg
        model_cfg = resolve_config(cfg.model)
        changes = dict(cfg.model_overrides)
        if cfg.vocab_size is not None:
            changes["vocab_size"] = cfg.vocab_size
        elif self.tokenizer is not None and "vocab_size" not in changes:
            changes["vocab_size"] = self.tokenizer.vocab_size
        if self.tokenizer is not None:  # the saved config.json should name this tokenizer's BOS/EOS
            changes.setdefault("bos_token_id", self.tokenizer.bos_id)
            changes.setdefault("eos_token_id", self.tokenizer.eos_id)
        changes["torch_dtype"] = cfg.dtype
        unknown = set(changes) - {f.name for f in dataclasses.fields(ModelConfig)}
        if unknown:
            raise ValueError(f"model_overrides: unknown config fields {sorted(unknown)}")
        return model_cfg.replace(**changes)

    def _build_model(self) -> KimiK2ForCausalLM:
        cfg = self.cfg
        if cfg.init_from:
            from kimi_k2.checkpoint.loader import load_model

            model = load_model(cfg.init_from, dtype=self.dtype, device=self.device)
        else:
            model = random_model(self._model_config(), seed=cfg.seed, dtype=self.dtype, device=self.device)
        model.set_paths(attention=cfg.attention)  # both training paths record QK-Clip's max logits
        mcfg = model.config
        if self.tokenizer is not None and mcfg.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(
                f"model vocab_size={mcfg.vocab_size} is smaller than the tokenizer's {self.tokenizer.vocab_size}"
            )
        if cfg.seq_len > mcfg.max_position_embeddings:
            raise ValueError(
                f"seq_len={cfg.seq_len} exceeds the model's max_position_embeddings={mcfg.max_position_embeddings}"
            )
        return model.train()

    def _load_data(self) -> TokenSplits:
        cfg = self.cfg
        data_dir = self.run_dir / "data"
        source = {
            "data": [str(Path(p).resolve()) for p in cfg.data],
            "eval_data": [str(Path(p).resolve()) for p in cfg.eval_data] if cfg.eval_data else None,
            "tokenizer": str(Path(cfg.tokenizer).resolve()) if cfg.tokenizer else None,
            "text_glob": cfg.text_glob, "holdout_fraction": cfg.holdout_fraction, "seed": cfg.seed,
        }  # fmt: skip
        meta_path = data_dir / "source.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            changed = [key for key in source if meta["source"].get(key) != source[key]]
            if changed:
                raise ValueError(
                    f"{meta_path}: this run's tokenized data was made with different {', '.join(changed)}: "
                    "use a new run_dir (or the original data settings)"
                )
            train_tokens, eval_tokens = np.load(data_dir / "train.npy"), np.load(data_dir / "eval.npy")
            masks = [np.load(p) if p.is_file() else None for p in (data_dir / "train.mask.npy", data_dir / "eval.mask.npy")]
            splits = TokenSplits(
                train_tokens, eval_tokens, meta["train_files"], meta["eval_files"], train_mask=masks[0], eval_mask=masks[1]
            )
        else:
            splits = prepare_splits(
                cfg.data, self.tokenizer, eval_paths=cfg.eval_data, holdout_fraction=cfg.holdout_fraction,
                seed=cfg.seed, text_glob=cfg.text_glob, bin_dtype=cfg.bin_dtype,
            )  # fmt: skip
            data_dir.mkdir(parents=True, exist_ok=True)
            np.save(data_dir / "train.npy", splits.train)
            np.save(data_dir / "eval.npy", splits.eval)
            for name, mask in (("train.mask.npy", splits.train_mask), ("eval.mask.npy", splits.eval_mask)):
                if mask is not None:
                    np.save(data_dir / name, mask)
            meta = {"source": source, "train_files": splits.train_files, "eval_files": splits.eval_files,
                    "train_tokens": int(len(splits.train)), "eval_tokens": int(len(splits.eval))}  # fmt: skip
            meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        vocab = self.model.config.vocab_size
        for name, stream in (("training", splits.train), ("held-out", splits.eval)):
            if len(stream) and int(stream.max()) >= vocab:
                raise ValueError(f"{name} data has token id {int(stream.max())} >= the model's vocab_size={vocab}")
        return splits

    def _write_run_info(self) -> None:
        info = {
            "config": self.cfg.to_dict(),
            "model_config": self.model.config.to_hf(),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "train_tokens": int(len(self.splits.train)),
            "eval_tokens": int(len(self.splits.eval)),
            "train_files": self.splits.train_files,
            "eval_files": self.splits.eval_files,
            "device": str(self.device),
            "cpu": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        }
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ checkpoint / resume
    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "optimizer": self.optimizer.state_dict(),
            "data": self.batches.state(),
            "torch_rng": torch.get_rng_state(),
        }

    def save(self) -> Path:
        path = self.run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:07d}"
        save_checkpoint(self.model, path, tokenizer_dir=self.cfg.tokenizer, trainer_state=self.trainer_state())
        for old in checkpoint_dirs(self.run_dir)[: -self.cfg.keep_checkpoints]:
            shutil.rmtree(old)
        log.info("saved checkpoint %s", path)
        return path

    def _resume(self, checkpoint: Path) -> None:
        state_file = checkpoint / "trainer_state.pt"
        if not state_file.is_file():
            raise FileNotFoundError(f"cannot resume: {state_file} is missing")
        from kimi_k2.checkpoint.index import read_weight_map

        weights: dict[str, torch.Tensor] = {}
        for shard in sorted(set(read_weight_map(checkpoint).values())):  # one file or an index of shards
            weights.update(load_file(shard, device=str(self.device)))
        self.model.load_state_dict(weights, strict=True)
        state = torch.load(state_file, map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state(state["data"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.step, self.tokens = int(state["step"]), int(state["tokens"])
        log_path = self.run_dir / "log.jsonl"
        if log_path.is_file():  # drop records of steps after the checkpoint: they are about to be redone
            lines = log_path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line and json.loads(line).get("step", 0) <= self.step]
            log_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        log.info("resumed from %s at step %d", checkpoint, self.step)

    # ------------------------------------------------------------------ steps
    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns its log record."""
        cfg = self.cfg
        lr = cfg.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        _sync(self.device)
        start = time.perf_counter()
        loss_sum = 0.0
        max_logits: list[torch.Tensor] = []
        expert_counts: list[torch.Tensor] = []
        for _ in range(cfg.grad_accum):
            inputs, targets = (t.to(self.device) for t in self.batches.next())
            stats = ForwardStats()
            logits = self.model(inputs, stats=stats)
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
            (loss / cfg.grad_accum).backward()
            loss_sum += loss.item()
            # QK-Clip needs the step's max over all micro-batches; balancing needs the step's total load
            max_logits = [torch.maximum(a, b) for a, b in zip(max_logits, stats.max_logits)] or stats.max_logits
            expert_counts = [a + b for a, b in zip(expert_counts, stats.expert_counts)] or stats.expert_counts
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip or math.inf)
        _sync(self.device)
        opt_start = time.perf_counter()
        self.optimizer.step(max_logits=max_logits)
        imbalance = update_router_bias_(self.model, expert_counts, cfg.bias_update_speed) if expert_counts else []
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        end = time.perf_counter()
        step_tokens = cfg.grad_accum * cfg.batch_size * cfg.seq_len
        self.step += 1
        self.tokens += step_tokens
        per_layer = [float(m.max()) for m in max_logits]
        factors = self.optimizer.last_clip_factors
        clipped = sum(int((g < 1).sum()) for g in factors)
        heads = sum(m.numel() for m in max_logits)
        return {
            "kind": "train",
            "step": self.step,
            "tokens": self.tokens,
            "loss": loss_sum / cfg.grad_accum,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "tokens_per_s": step_tokens / (end - start),
            "step_s": end - start,
            "optimizer_s": end - opt_start,
            "max_logit": max(per_layer) if per_layer else None,
            "max_logit_per_layer": per_layer,
            "clipped_fraction": clipped / heads if heads else 0.0,
            "imbalance": sum(imbalance) / len(imbalance) if imbalance else None,
            "imbalance_per_layer": imbalance,
        }

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean next-token cross-entropy over the held-out batches."""
        self.model.eval()
        total, count = 0.0, 0
        for inputs, targets in self.eval_set:
            logits = self.model(inputs.to(self.device))
            flat_targets = targets.to(self.device).flatten()
            total += F.cross_entropy(logits.float().flatten(0, 1), flat_targets, reduction="sum").item()
            count += int((targets != IGNORE_LABEL).sum())  # the loss mask's targets only
        self.model.train()
        return total / count

    def run(self, stop_at: int | None = None) -> Path:
        """Train to `max_steps` (or only up to step `stop_at`, with a checkpoint there); returns the run dir."""
        cfg = self.cfg
        end = cfg.max_steps if stop_at is None else min(stop_at, cfg.max_steps)
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", disable=not sys.stderr.isatty())
        while self.step < end:
            record = self.train_step()
            self._log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", max_logit=f"{record['max_logit']:.1f}")
            last = self.step == cfg.max_steps
            if last or (cfg.eval_interval and self.step % cfg.eval_interval == 0):
                eval_loss = self.evaluate()
                self._log({"kind": "eval", "step": self.step, "tokens": self.tokens, "eval_loss": eval_loss})
                log.info("step %d: train loss %.4f, held-out loss %.4f", self.step, record["loss"], eval_loss)
            if last or self.step == end or (cfg.save_interval and self.step % cfg.save_interval == 0):
                self.save()
        bar.close()
        return self.run_dir


def train(cfg: TrainConfig) -> Path:
    """Train per `cfg`; returns the run directory (final weights: `latest_checkpoint(run_dir)`)."""
    return Trainer(cfg).run()


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of a run's log.jsonl."""
    path = Path(run_dir) / "log.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


__all__ = ["TrainConfig", "Trainer", "train", "latest_checkpoint", "checkpoint_dirs", "save_checkpoint", "read_log"]
