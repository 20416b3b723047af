"""lm-evaluation-harness, as published, evaluates this project's server through its OpenAI-compatible models.

    pip install 'lm_eval[api]'          # or: pip install -e '.[harness]'
    python bench/lm_eval_proof.py       # the built-in nano model, served in this process on a free port
    python bench/lm_eval_proof.py --model DIR

Two tasks defined in local files (`bench/lm_eval_tasks/`: YAML + JSONL, loaded with the `datasets` json builder;
nothing is downloaded, the script sets the HF offline switches):

* `kimi_k2_nano_mc` — multiple choice, run by `local-completions`: log-likelihoods from `/v1/completions` with
  `echo`, prompt `logprobs` and token-id prompts, the tokenizer read through the server's vLLM-style
  `/tokenize` endpoints (lm-eval's "remote" tokenizer backend).
* `kimi_k2_nano_chat` — generation, run by `local-chat-completions` against `/v1/chat/completions`.

Then every log-likelihood lm-eval got is recomputed in this process from the model itself (one plain forward,
`log_softmax`, no server, no engine), with lm-eval's own context/continuation split of the token ids, and the
largest difference is reported; the script fails if it exceeds `--tolerance`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
TASKS = {"kimi_k2_nano_mc": "nano_mc.yaml", "kimi_k2_nano_chat": "nano_chat.yaml"}


def write_tasks(directory: Path) -> None:
    """The shipped YAML files with their data paths made absolute (lm-eval resolves them from the cwd)."""
    for yaml_name in TASKS.values():
        text = (TASKS_DIR / yaml_name).read_text(encoding="utf-8").replace("DATA_DIR", str(TASKS_DIR))
        (directory / yaml_name).write_text(text, encoding="utf-8")


def serve(model_dir: str | None, name: str) -> tuple[Any, Any]:
    """(BackgroundServer, engine) for `kimi-k2 serve` on a free loopback port, in this process."""
    from kimi_k2.server.background import BackgroundServer
    from kimi_k2.server.cli import build, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    argv = ["serve", "--served-model-name", name, "--max-num-seqs", "8", "--log-level", "warning"]
    args = parser.parse_args(argv + (["--model", model_dir] if model_dir else []))
    app, engine = build(args)
    return BackgroundServer(app).start(), engine


def own_loglikelihoods(model_dir: Path, pairs: list[tuple[str, str]]) -> list[tuple[float, bool]]:
    """(sum of the continuation's logprobs, greedy?) per (context, continuation), straight from the model."""
    import torch

    from kimi_k2 import load_model
    from kimi_k2.tokenizer import Tokenizer

    tok = Tokenizer.from_pretrained(model_dir)
    model = load_model(model_dir, dtype=torch.float32).eval()
    out = []
    for context, continuation in pairs:
        # lm-eval's split: encode context + continuation whole, the context alone, the rest is the continuation
        # (trailing spaces of the context move to the continuation first)
        spaces = len(context) - len(context.rstrip())
        context, continuation = context[: len(context) - spaces], context[len(context) - spaces :] + continuation
        whole = tok.encode(context + continuation, allow_special=True)
        n_ctx = len(tok.encode(context, allow_special=True))
        with torch.inference_mode():
            logp = model(torch.tensor([whole]))[0].float().log_softmax(-1)  # (S, V)
        rows = logp[n_ctx - 1 : len(whole) - 1]
        targets = torch.tensor(whole[n_ctx:])
        out.append((float(rows.gather(1, targets[:, None]).sum()), bool((rows.argmax(-1) == targets).all())))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the built-in nano model)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |Δ log-likelihood| (default 1e-4)")
    args = parser.parse_args()
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        print("this proof runs the real lm-evaluation-harness: pip install 'lm_eval[api]'", file=sys.stderr)
        return 1
    from kimi_k2.assets import default_model_dir

    model_dir = Path(args.model) if args.model else default_model_dir()
    name = "nano-k2" if args.model is None else model_dir.name
    server, engine = serve(args.model, name)
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            write_tasks(Path(tmp))
            tasks = TaskManager(include_path=tmp)
            mc = lm_eval.simple_evaluate(
                model="local-completions",
                model_args={"base_url": f"{server.url}/v1/completions", "model": name, "tokenizer_backend": "remote",
                            "num_concurrent": 1, "max_retries": 1},  # fmt: skip
                tasks=["kimi_k2_nano_mc"], task_manager=tasks, log_samples=True, batch_size=1,
            )  # fmt: skip
            chat = lm_eval.simple_evaluate(
                model="local-chat-completions",
                model_args={"base_url": f"{server.url}/v1/chat/completions", "model": name, "num_concurrent": 1,
                            "max_retries": 1},  # fmt: skip
                tasks=["kimi_k2_nano_chat"], task_manager=tasks, apply_chat_template=True, log_samples=True,
            )  # fmt: skip
    finally:
        server.stop()
        engine.shutdown()
    seconds = time.monotonic() - t0
    samples = mc["samples"]["kimi_k2_nano_mc"]
    pairs = [tuple(arg) for s in samples for arg in s["arguments"]]
    served = [tuple(r[0]) for s in samples for r in s["resps"]]
    own = own_loglikelihoods(model_dir, pairs)  # type: ignore[arg-type]
    worst = max(abs(a[0] - b[0]) for a, b in zip(served, own))
    greedy_agree = sum(a[1] == b[1] for a, b in zip(served, own))
    print(f"lm_eval {lm_eval.__version__ if hasattr(lm_eval, '__version__') else ''} against {name}: {seconds:.1f} s")
    for task, res in ((("kimi_k2_nano_mc"), mc), ("kimi_k2_nano_chat", chat)):
        metrics = {k: v for k, v in res["results"][task].items() if isinstance(v, float) and "stderr" not in k}
        print(f"  {task}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    print(f"  log-likelihoods: {len(own)} (context, continuation) pairs; largest |served - model| = {worst:.2e} "
          f"(tolerance {args.tolerance:g}); greedy flags agree on {greedy_agree}/{len(own)}")  # fmt: skip
    ok = worst <= args.tolerance and not any(math.isnan(x[0]) for x in served)
    print("OK" if ok else "FAILED: the served log-likelihoods differ from the model's")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
