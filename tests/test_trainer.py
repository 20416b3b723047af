"""The trainer end to end on tiny models: data, logs, HF-layout checkpoints, exact resume, CLI and plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kimi_k2.checkpoint.loader import load_model
from kimi_k2.train import cli as train_cli
from kimi_k2.train.data import PackedBatches, prepare_splits, split_holdout
from kimi_k2.train.trainer import TrainConfig, Trainer, latest_checkpoint, read_log, train

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n    def push(self, x):\n        self.items.append(x)\n",
    "import os\nfor name in os.listdir('.'):\n    print(name.upper())\n",
    "while True:\n    line = input()\n    if not line:\n        break\n    print(line[::-1])\n",
]
SMALL = {"num_hidden_layers": 2}  # dense layer 0 + one MoE layer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A directory of small text files and a K2-format BPE tokenizer trained on them."""
    from kimi_k2.tokenizer.bpe_trainer import train_and_save

    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs"
    docs.mkdir()
    for i in range(8):
        (docs / f"doc{i}.txt").write_text("\n".join(TEXT[(i + j) % 4] for j in range(12)), encoding="utf-8")
    train_and_save(TEXT * 4, 600, root / "tokenizer")
    return docs, root / "tokenizer"


@pytest.fixture(scope="module")
def arrays(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(0)
    np.save(root / "train.npy", rng.integers(0, 512, 4000).astype(np.uint16))
    np.save(root / "eval.npy", rng.integers(0, 512, 600).astype(np.uint16))
    return root / "train.npy", root / "eval.npy"


def _array_config(run_dir: Path, arrays: tuple[Path, Path], **changes) -> TrainConfig:
    base = dict(
        run_dir=str(run_dir), data=[str(arrays[0])], eval_data=[str(arrays[1])], model="tiny", model_overrides=SMALL,
        seq_len=16, batch_size=2, max_steps=4, warmup_steps=1, eval_interval=2, eval_batches=2, ns_dtype="float32",
        qk_clip_tau=0.05,
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})


def test_text_run_logs_and_saves_a_loadable_hf_checkpoint(tmp_path, corpus):
    docs, tokenizer = corpus
    cfg = TrainConfig(
        run_dir=str(tmp_path / "run"), data=[str(docs)], tokenizer=str(tokenizer), model_overrides=SMALL,
        holdout_fraction=0.25, seq_len=32, batch_size=2, grad_accum=2, max_steps=4, warmup_steps=1,
        eval_interval=2, eval_batches=1, qk_clip_tau=0.05, ns_dtype="float32",
    )  # fmt: skip
    trainer = Trainer(cfg)
    run_dir = trainer.run()
    records = read_log(run_dir)
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [2, 4]
    assert steps[-1]["tokens"] == 4 * 2 * 2 * 32
    for key in ("loss", "lr", "tokens_per_s", "optimizer_s", "grad_norm", "max_logit", "clipped_fraction", "imbalance"):
        assert all(np.isfinite(r[key]) for r in steps), key
    assert len(steps[0]["max_logit_per_layer"]) == 2 and len(steps[0]["imbalance_per_layer"]) == 1
    assert any(r["clipped_fraction"] > 0 for r in steps)  # τ = 0.05 bites
    meta = json.loads((run_dir / "data" / "source.json").read_text())
    assert (meta["train_files"], meta["eval_files"]) == (6, 2)  # held out by file

    ckpt = latest_checkpoint(run_dir)
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "config.json", "tiktoken.model", "tokenizer_config.json"}
    config = json.loads((ckpt / "config.json").read_text())
    from kimi_k2.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(ckpt)  # self-contained: the tokenizer loads from the checkpoint
    assert config["vocab_size"] == tok.vocab_size and config["eos_token_id"] == tok.eos_id
    loaded = load_model(ckpt, attention=trainer.model.attention_path)  # the same path: bit-exact weights
    ids = torch.tensor([tok.encode("def add(a, b):")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), trainer.model(ids), rtol=0, atol=0)
    assert not torch.equal(loaded.model.layers[1].mlp.gate.e_score_correction_bias, torch.zeros(8))  # balancing ran


def test_resume_continues_exactly_where_it_stopped(tmp_path, arrays):
    straight = train(_array_config(tmp_path / "straight", arrays))

    interrupted = Trainer(_array_config(tmp_path / "resumed", arrays))
    interrupted.run(stop_at=2)
    interrupted._log({"kind": "train", "step": 3, "note": "logged after the checkpoint: a resume must drop it"})
    with pytest.raises(ValueError, match="resume"):
        Trainer(_array_config(tmp_path / "resumed", arrays))
    resumed = train(_array_config(tmp_path / "resumed", arrays, resume=True))

    a, b = read_log(straight), read_log(resumed)
    assert [r["step"] for r in a] == [r["step"] for r in b]
    assert [r.get("loss") for r in a] == [r.get("loss") for r in b]
    assert [r.get("eval_loss") for r in a if r["kind"] == "eval"][-1] == [r.get("eval_loss") for r in b if r["kind"] == "eval"][-1]
    wa, wb = load_file(latest_checkpoint(straight) / "model.safetensors"), load_file(latest_checkpoint(resumed) / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_grad_accumulation_matches_one_big_batch(tmp_path, arrays):
    big = Trainer(_array_config(tmp_path / "big", arrays, batch_size=4, max_steps=1, warmup_steps=0, decay_fraction=0))
    small = Trainer(_array_config(tmp_path / "small", arrays, batch_size=2, grad_accum=2, max_steps=1, warmup_steps=0, decay_fraction=0))
    rb, rs = big.train_step(), small.train_step()
    assert rb["loss"] == pytest.approx(rs["loss"], rel=1e-5) and rb["tokens"] == rs["tokens"]
    for (name, p), q in zip(big.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert torch.equal(big.model.state_dict()[bias], small.model.state_dict()[bias])


def test_packing_split_and_batch_order(tmp_path):
    stream = np.arange(100)
    batches = PackedBatches(stream, seq_len=10, batch_size=3, seed=0)
    assert batches.windows == 9
    x, y = batches.next()
    assert x.shape == (3, 10) and torch.equal(x[:, 1:], y[:, :-1]) and torch.all(x % 10 == torch.arange(10))
    batches.next(), batches.next()
    state = batches.state()
    after = batches.next()  # 9 windows / 3 per batch: this one starts epoch 1
    assert batches.epoch == 1
    again = PackedBatches(stream, seq_len=10, batch_size=3, seed=0)
    again.load_state(state)
    assert torch.equal(again.next()[0], after[0])

    files = [tmp_path / f"f{i}.txt" for i in range(20)]
    train_files, eval_files = split_holdout(files, 0.1, seed=0)
    assert len(eval_files) == 2 and not set(train_files) & set(eval_files)
    single = tmp_path / "one.npy"
    np.save(single, np.arange(1000, dtype=np.uint32))
    splits = prepare_splits([single], None, holdout_fraction=0.1)
    assert len(splits.train) == 900 and splits.eval[0] == 900


def test_errors_name_the_problem(tmp_path, arrays, corpus):
    big = tmp_path / "big.npy"
    np.save(big, np.full(100, 9999, dtype=np.uint16))
    with pytest.raises(ValueError, match="token id 9999 >= the model's vocab_size=512"):
        Trainer(_array_config(tmp_path / "r1", (big, arrays[1])))
    with pytest.raises(ValueError, match="needs a tokenizer directory"):
        Trainer(_array_config(tmp_path / "r2", (corpus[0], corpus[0]), eval_data=None, text_glob="*.txt"))
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        Trainer(_array_config(tmp_path / "r3", arrays, optimizer="sgd"))
    with pytest.raises(ValueError, match="attention='absorbed': choose one of fused, naive"):
        Trainer(_array_config(tmp_path / "r3", arrays, attention="absorbed"))  # it records no max logits
    with pytest.raises(FileNotFoundError, match="data path not found"):
        Trainer(_array_config(tmp_path / "r4", (tmp_path / "missing.npy", arrays[1])))


def test_cli_trains_and_plots(tmp_path, arrays, capsys):
    import matplotlib  # noqa: F401  (the dev extra installs it: a missing plot dependency fails, not skips)
    parser = argparse.ArgumentParser()
    train_cli.register(parser.add_subparsers(dest="command"))
    run_dir = tmp_path / "cli_run"
    args = parser.parse_args([
        "train", "--run-dir", str(run_dir), "--data", str(arrays[0]), "--eval-data", str(arrays[1]),
        "--set", "num_hidden_layers=2", "--set", "q_lora_rank=null", "--seq-len", "16", "--batch-size", "2",
        "--max-steps", "2", "--warmup-steps", "1", "--optimizer", "adamw", "--eval-batches", "1",
    ])  # fmt: skip
    assert args.func(args) == 0
    assert json.loads((latest_checkpoint(run_dir) / "config.json").read_text())["q_lora_rank"] is None
    assert "held-out loss at step 2" in capsys.readouterr().out
    args = parser.parse_args(["plot", str(run_dir), "--tau", "5"])
    assert args.func(args) == 0
    for name in ("loss.png", "max_logit.png", "imbalance.png"):
        assert (run_dir / "plots" / name).read_bytes()[:4] == b"\x89PNG"


def test_loss_mask_beside_token_array_labels_only_targets(tmp_path):
    import numpy as np

    from kimi_k2.train.data import IGNORE_LABEL, PackedBatches, find_files, prepare_splits

    tokens = np.arange(1, 42, dtype=np.uint16)
    mask = (np.arange(41) % 3 == 0).astype(np.uint8)
    np.save(tmp_path / "chat.npy", tokens)
    np.save(tmp_path / "chat.mask.npy", mask)
    assert find_files([tmp_path], "*.npy") == [tmp_path / "chat.npy"]  # the mask is not data of its own
    splits = prepare_splits([tmp_path / "chat.npy"], None, holdout_fraction=0.25)
    assert splits.train_mask is not None and len(splits.train_mask) == len(splits.train)
    inputs, targets = PackedBatches(splits.train, 4, 2, seed=0, loss_mask=splits.train_mask).next()
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        for x, y in zip(row_in, row_t):
            label_pos = x  # token k (value k+1 at index k) predicts index k+1
            assert y == (x + 1 if mask[label_pos] else IGNORE_LABEL)
    np.save(tmp_path / "other.npy", tokens)
    np.save(tmp_path / "held.npy", tokens)
    with pytest.raises(ValueError, match="other.npy has none"):
        prepare_splits([tmp_path / "chat.npy", tmp_path / "other.npy"], None, eval_paths=[tmp_path / "held.npy"])
