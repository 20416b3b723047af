"""Rebuild the built-in nano K2 demo model from nothing, with the project's own stack.

    python recipes/nano_k2/build.py            # or: make nano (about an hour on 2 quiet cores)

Stages (each writes into --work, default `runs/nano_k2/`; the result goes to `kimi_k2/assets/nano-k2/`):
1. data       tool-use conversations with real and invented place names and numbers as users type them, declines
              and small talk (`make_data.py`), with a held-out split of unseen values and sentences
2. tokenizer  our BPE trainer on the rendered conversations (less the copied values), K2 format with the official
              special tokens
3. tokens     every conversation rendered with the official chat template (our built-in default, byte-identical
              to Kimi-K2-Instruct-0905's) and tokenized; assistant turns are the training targets; packed
              first-fit into windows of --seq-len, each conversation whole inside one
4. train      the project's trainer with MuonClip on a model of K2's exact topology (MLA with q LoRA, YaRN,
              a dense first layer, sigmoid-routed MoE with a shared expert), scaled down
5. package    the final checkpoint in the official layout, plus its training log and charts
6. evaluate   held-out tool-call accuracy and answer accuracy (`evaluate.py`), written to `eval.json`

Beside it: `check_rebuild.py` (does a rebuild end where this build did?) and `showcase.py` (what a new user sees).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ASSET = ROOT / "kimi_k2" / "assets" / "nano-k2"
sys.path.insert(0, str(HERE))

import make_data  # noqa: E402  (the recipe's own data generator, beside this file)

# K2's topology at a size that trains in about an hour on 2 CPU cores.
NANO_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 640,
    "moe_intermediate_size": 160,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "n_routed_experts": 8,
    "num_experts_per_tok": 2,
    "n_shared_experts": 1,
    "n_group": 1,
    "topk_group": 1,
    "first_k_dense_replace": 1,
    "q_lora_rank": 96,
    "kv_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "v_head_dim": 32,
    "routed_scaling_factor": 2.827,
    "rope_theta": 50000.0,
    "rope_scaling": {
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 1024,
        "beta_fast": 1.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    "max_position_embeddings": 4096,
}
TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json")


def stage_data(work: Path, n_train: int, seed: int) -> None:
    make_data.write_splits(work / "data", n_train, seed=seed)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_tokenizer(work: Path, vocab_size: int) -> None:
    from kimi_k2.tokenizer import DEFAULT_CHAT_TEMPLATE, render_chat_template
    from kimi_k2.tokenizer.bpe_trainer import MIN_VOCAB_SIZE, train_and_save

    # The copied values (place names, expressions) are left out of the tokenizer's corpus, as a real tokenizer
    # never saw a user's name: a name is then spelled with the pieces the rest of the text uses (single letters
    # and common pairs, each seen thousands of times), not with merges fitted to the names (`'Pato'`, `'ege'`:
    # a few dozen occurrences), which a model this small does not learn to copy.
    texts = []
    for conv in read_jsonl(work / "data" / "train.jsonl"):
        rendered = render_chat_template(DEFAULT_CHAT_TEMPLATE, conv["messages"], tools=conv["tools"] or None)
        for name in make_data.copied_values(conv):
            rendered = rendered.replace(name, "")
        texts.append(rendered)
    result = train_and_save(
        texts, vocab_size, work / "tokenizer", chat_template=DEFAULT_CHAT_TEMPLATE, model_max_length=4096, copy_friendly=True
    )
    vocabulary = MIN_VOCAB_SIZE + result.merges  # 256 bytes + 256 special slots + the merges
    stopped = f" (the corpus has no pair left occurring twice: {vocab_size} requested)" if result.stopped_early else ""
    print(f"tokenizer: {result.merges} merges, vocabulary {vocabulary}{stopped}")


def render_ids_and_mask(tokenizer, conv: dict) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and a 0/1 mask marking the assistant replies (the training targets).

    The mask is derived by rendering growing prefixes: the tokens a prefix ending in an assistant message adds
    beyond the same prefix with a generation prompt are that reply (its content, tool calls and `<|im_end|>`).
    """
    messages, tools = conv["messages"], conv["tools"] or None
    ids = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=False, tokenize=True)
    # The 0905 template leaves <|im_end|> off the last message (assistant prefill); a finished conversation
    # ends with it, and the model must learn to stop.
    ids.append(tokenizer.im_end_id)
    mask = [0] * len(ids)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(tokenizer.apply_chat_template(messages[:i], tools=tools, add_generation_prompt=True, tokenize=True))
        end = len(tokenizer.apply_chat_template(messages[: i + 1], tools=tools, add_generation_prompt=False, tokenize=True))
        end += 1  # rendered as the last message it lacks its <|im_end|>: that token is a target too
        for j in range(start, min(end, len(ids))):
            mask[j] = 1
    return ids, mask


def pack_whole(conversations: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> tuple[list[int], list[int], int]:
    """One token stream (and its loss mask) in which every conversation lies whole inside one training window.

    The trainer reads window i as tokens [i·S, i·S + S] (inputs i·S.., labels i·S+1..). Each conversation goes
    into the first window with room for it (first fit, in the data's order), the windows' ends filled with
    `pad_id` (mask 0). So every reply the model is trained on has its whole conversation in view: the tools, the
    question whose name it copies, the result it restates. Cut at fixed offsets instead, a window that starts
    mid-conversation asks the model for a name whose question it cannot see, which teaches it to invent names.
    A conversation longer than S keeps its first S tokens (every reply it keeps still sees all that came before).
    Returns (ids, mask, how many conversations were cut to S)."""
    windows: list[tuple[list[int], list[int]]] = []
    open_windows: list[int] = []  # indices of windows with room left for the shortest conversation
    shortest = min((len(ids) for ids, _ in conversations), default=0)
    cut = 0
    for conv_ids, conv_mask in conversations:
        if len(conv_ids) > seq_len:
            conv_ids, conv_mask, cut = conv_ids[:seq_len], conv_mask[:seq_len], cut + 1
        target = next((w for w in open_windows if len(windows[w][0]) + len(conv_ids) <= seq_len), None)
        if target is None:
            windows.append(([], []))
            open_windows.append(target := len(windows) - 1)
        windows[target][0].extend(conv_ids)
        windows[target][1].extend(conv_mask)
        if seq_len - len(windows[target][0]) < shortest:
            open_windows.remove(target)
        elif len(open_windows) > 64:  # a few dozen candidates fill the windows as well as all of them, and fast
            open_windows.pop(0)
    ids: list[int] = []
    mask: list[int] = []
    for window_ids, window_mask in windows:
        room = seq_len - len(window_ids)
        ids += window_ids + [pad_id] * room
        mask += window_mask + [0] * room
    ids.append(pad_id)  # the last window's final label position
    mask.append(0)
    return ids, mask, cut


_worker_tokenizer = None


def _render_with_worker_tokenizer(conv: dict) -> tuple[list[int], list[int]]:
    return render_ids_and_mask(_worker_tokenizer, conv)


def _load_worker_tokenizer(path: str) -> None:
    global _worker_tokenizer
    from kimi_k2.tokenizer import Tokenizer

    _worker_tokenizer = Tokenizer.from_pretrained(path)


def stage_tokens(work: Path, seq_len: int) -> None:
    import multiprocessing

    from kimi_k2.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(work / "tokenizer")
    for split in ("train", "heldout"):
        data = read_jsonl(work / "data" / f"{split}.jsonl")
        # rendering every reply's prefixes through the template is the slow part: one process per core
        with multiprocessing.get_context("spawn").Pool(
            os.cpu_count(), initializer=_load_worker_tokenizer, initargs=(str(work / "tokenizer"),)
        ) as pool:
            conversations = pool.map(_render_with_worker_tokenizer, data, chunksize=256)
        ids, mask, cut = pack_whole(conversations, seq_len, tokenizer.pad_id)
        np.save(work / f"{split}.npy", np.asarray(ids, dtype=np.uint16))
        np.save(work / f"{split}.mask.npy", np.asarray(mask, dtype=np.uint8))
        lengths = sorted(len(c[0]) for c in conversations)
        padding = len(ids) - sum(min(n, seq_len) for n in lengths)  # what pack_whole added around the kept tokens
        print(
            f"{split}: {len(conversations):,} conversations (median {lengths[len(lengths) // 2]} tokens, longest "
            f"{lengths[-1]}) in {len(ids) // seq_len:,} windows of {seq_len}: {len(ids):,} tokens, "
            f"{sum(mask):,} of them assistant targets, {padding:,} padding"
            + (f"; {cut} conversations longer than {seq_len} keep their first {seq_len} tokens" if cut else "")
        )
    (work / "windows.json").write_text(json.dumps({"seq_len": seq_len}) + "\n")


def phase_run_dir(work: Path, phase: int) -> Path:
    """Where training phase `phase` (1, 2, ...) writes its log and checkpoints: `run`, `run2`, `run3`, ..."""
    return work / ("run" if phase == 1 else f"run{phase}")


def stage_train(
    work: Path, steps: int, batch_size: int, seq_len: int, lr: float, tau: float, *, phase: int = 1
) -> Path:
    """Phase 1 trains from random weights; each later phase continues from the previous one's final checkpoint
    (same data in another order, a fresh WSD schedule at 2/3 of the peak). Each phase ends decayed, so each
    phase's checkpoint is a finished model: the shipped recipe is the phases that made the shipped weights."""
    from kimi_k2.train.trainer import TrainConfig, Trainer, latest_checkpoint

    packed = json.loads((work / "windows.json").read_text())["seq_len"]
    if packed != seq_len:
        raise ValueError(f"the tokens stage packed conversations into windows of {packed} tokens, not --seq-len {seq_len}: "
                         "rerun from --from-stage tokens")  # fmt: skip
    run_dir = phase_run_dir(work, phase)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    model_args: dict = (
        {"model": "tiny", "model_overrides": NANO_CONFIG}
        if phase == 1
        else {"init_from": str(latest_checkpoint(phase_run_dir(work, phase - 1)))}
    )
    cfg = TrainConfig(
        run_dir=str(run_dir),
        data=[str(work / "train.npy")],
        eval_data=[str(work / "heldout.npy")],
        tokenizer=str(work / "tokenizer"),
        **model_args,
        seq_len=seq_len,
        batch_size=batch_size,
        max_steps=steps,
        optimizer="muonclip",
        lr=lr,
        qk_clip_tau=tau,
        warmup_steps=max(1, steps // 50),
        decay_fraction=0.3,
        eval_interval=max(1, steps // 10),
        eval_batches=10,
        ns_dtype="float32",  # bf16 Newton–Schulz is 10× slower on CPUs without bf16 units; same math
        attention="fused",  # training's fast attention path (SDPA); the same math as the naive reference
        bias_update_speed=1e-2,  # a short run needs faster aux-loss-free balancing than K2's schedule
        seed=phase - 1,  # phase 2 sees the windows in another order
    )
    return Trainer(cfg).run()


def stage_package(work: Path, run_dirs: list[Path]) -> None:
    from kimi_k2.tokenizer import DEFAULT_CHAT_TEMPLATE, Tokenizer
    from kimi_k2.train.trainer import latest_checkpoint

    checkpoint = latest_checkpoint(run_dirs[-1])
    if ASSET.exists():
        shutil.rmtree(ASSET)
    ASSET.mkdir(parents=True)
    shutil.copy2(checkpoint / "model.safetensors", ASSET / "model.safetensors")
    tokenizer = Tokenizer.from_pretrained(work / "tokenizer")
    config = json.loads((checkpoint / "config.json").read_text())
    config.update({"model_type": "kimi_k2", "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id})
    (ASSET / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copy2(work / "tokenizer" / name, ASSET / name)
    (ASSET / "chat_template.jinja").write_text(DEFAULT_CHAT_TEMPLATE)
    (ASSET / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [tokenizer.im_end_id, tokenizer.eos_id], "temperature": 0.6}, indent=2) + "\n"
    )
    # One log for the whole training: phase 2's steps continue phase 1's count.
    records = []
    offset_steps = offset_tokens = 0
    for phase_dir in run_dirs:
        phase_records = [json.loads(line) for line in (phase_dir / "log.jsonl").read_text().splitlines() if line.strip()]
        for r in phase_records:
            r["step"] += offset_steps
            r["tokens"] += offset_tokens
            records.append(r)
        offset_steps, offset_tokens = records[-1]["step"], records[-1]["tokens"]
    combined = work / "nano-k2"  # the directory name is the charts' legend
    combined.mkdir(exist_ok=True)
    (combined / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copy2(combined / "log.jsonl", ASSET / "training_log.jsonl")
    subprocess.run([sys.executable, "-m", "kimi_k2.cli", "plot", str(combined), "--out", str(ASSET)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the nano K2 demo model.")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "nano_k2")
    parser.add_argument("--train-conversations", type=int, default=30000)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=4000, help="phase 1 steps (from random weights)")
    parser.add_argument(
        "--continue-steps", type=int, nargs="*", default=[],
        help="steps of each further phase, each from the previous phase's weights (phases 2, 3, ...)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=1024, help="training window; every conversation lies whole in one")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--tau", type=float, default=30.0, help="QK-Clip threshold")
    parser.add_argument("--seed", type=int, default=0)
    stages = ["data", "tokenizer", "tokens", "train", "train2", "package", "evaluate"]
    parser.add_argument("--from-stage", choices=stages, default="data", help="resume the recipe at this stage")
    parser.add_argument("--to-stage", choices=stages, default="evaluate", help="stop after this stage")
    args = parser.parse_args()
    todo = stages[stages.index(args.from_stage) : stages.index(args.to_stage) + 1]
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    if "data" in todo:
        stage_data(args.work, args.train_conversations, args.seed)
    if "tokenizer" in todo:
        stage_tokenizer(args.work, args.vocab_size)
    if "tokens" in todo:
        stage_tokens(args.work, args.seq_len)
    if "train" in todo:
        stage_train(args.work, args.steps, args.batch_size, args.seq_len, args.lr, args.tau)
    if "train2" in todo:
        for phase, steps in enumerate(args.continue_steps, start=2):
            stage_train(args.work, steps, args.batch_size, args.seq_len, args.lr * 2 / 3, args.tau, phase=phase)
    if "package" in todo:
        runs = [phase_run_dir(args.work, phase) for phase in range(1, 2 + len(args.continue_steps))]
        stage_package(args.work, runs)
    if "evaluate" in todo:
        subprocess.run(
            [sys.executable, str(HERE / "evaluate.py"), "--model", str(ASSET), "--data", str(args.work / "data" / "heldout.jsonl"),
             "--out", str(ASSET / "eval.json")],
            check=True,
        )
    print(f"done in {(time.time() - started) / 60:.1f} min" + (f": {ASSET}" if "package" in todo else f": {args.work}"))


if __name__ == "__main__":
    main()
