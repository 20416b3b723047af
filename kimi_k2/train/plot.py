"""PNG charts of training runs from their `log.jsonl`: loss, max attention logit, expert load imbalance.

`plot_runs([run_dir, ...], out_dir)` overlays one or more runs (labelled by directory name) on shared axes,
so the same call draws one run's charts and an optimizer comparison. matplotlib is an optional dependency
(`pip install kimi-k2[plot]`), imported only here and only when plotting, with the Agg backend (no display).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kimi_k2.train.trainer import read_log


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'kimi-k2[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[float], list[float]]:
    rows = [r for r in records if r.get("kind") == kind and r.get(key) is not None]
    return [r["tokens"] / 1e6 for r in rows], [float(r[key]) for r in rows]


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` points (train loss is noisy per step)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_runs(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    labels: Sequence[str] | None = None,
    tau: float | None = None,
    smooth: int = 20,
    prefix: str = "",
) -> list[Path]:
    """Write {prefix}loss.png, {prefix}max_logit.png and {prefix}imbalance.png into `out_dir`; returns the paths.

    `tau`, when given, draws the QK-Clip threshold on the max-logit chart.
    """
    plt = _pyplot()
    runs = [(Path(d), read_log(d)) for d in run_dirs]
    names = list(labels) if labels else [d.name for d, _ in runs]
    if len(names) != len(runs):
        raise ValueError(f"{len(names)} labels for {len(runs)} runs")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    written = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, ((_, records), name) in enumerate(zip(runs, names)):
        color = colors[i % len(colors)]
        x, y = _series(records, "train", "loss")
        ax.plot(x, _smooth(y, smooth), color=color, alpha=0.5, lw=1, label=f"{name} train (mean of {smooth} steps)")
        x, y = _series(records, "eval", "eval_loss")
        ax.plot(x, y, color=color, marker="o", ms=3, lw=1.8, label=f"{name} held-out")
    ax.set(xlabel="training tokens (M)", ylabel="cross-entropy (nats/token)", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{prefix}loss.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, ((_, records), name) in enumerate(zip(runs, names)):
        x, y = _series(records, "train", "max_logit")
        ax.plot(x, y, color=colors[i % len(colors)], lw=1.2, label=name)
    if tau is not None:
        ax.axhline(tau, color="black", ls="--", lw=1, label=f"τ = {tau:g}")
    ax.set(xlabel="training tokens (M)", ylabel="max pre-softmax logit (all layers, heads)")
    ax.set_title("Max attention logit")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{prefix}max_logit.png", plt))

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, ((_, records), name) in enumerate(zip(runs, names)):
        x, y = _series(records, "train", "imbalance")
        if y:
            ax.plot(x, _smooth(y, smooth), color=colors[i % len(colors)], lw=1.2, label=name)
    ax.set(xlabel="training tokens (M)", ylabel="MaxVio = max load / mean load − 1")
    ax.set_title("Expert load imbalance (mean over MoE layers)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    written.append(_save(fig, out / f"{prefix}imbalance.png", plt))
    return written


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
