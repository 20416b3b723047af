"""Hugging Face Hub ids as local directories: `moonshotai/Kimi-K2-Instruct` -> its snapshot in the local HF cache.

Wherever a checkpoint directory is accepted (`LLM`, `kimi-k2 serve/generate/chat --model`, `info`, `plan`,
`verify`, `convert`'s source), a Hub id may stand in for it. It is resolved through the local cache only (`huggingface_hub.snapshot_download` with
`local_files_only=True`: `HF_HOME` / `HF_HUB_CACHE` and offline mode respected); nothing is ever downloaded —
K2's weights are a terabyte, and fetching them is the user's explicit decision (`hf download ID`). An existing
path always wins over a Hub id of the same spelling.
"""

from __future__ import annotations

import re
from pathlib import Path

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def looks_like_hub_id(text: str) -> bool:
    """`org/name` with no leading `.`, `/` or `~`, and not an existing path."""
    return bool(HUB_ID.fullmatch(text)) and not Path(text).exists()


def cached_snapshot(repo_id: str, what: str = "model") -> Path:
    """The cached snapshot directory of a Hub model (revision `main`), without any network access.

    FileNotFoundError when it is not cached: the message names the id, the cache it looked in and the command
    that downloads it. `what` prefixes the message (e.g. `--model`)."""
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{what} {repo_id}: no such directory (a Hub id is looked up in the Hugging Face "
                                "cache, which needs the huggingface_hub package)") from None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as exc:  # LocalEntryNotFoundError, a malformed id, ...: say where we looked
        raise FileNotFoundError(
            f"{what} {repo_id}: no such directory, and not in the Hugging Face cache {constants.HF_HUB_CACHE} "
            f"({type(exc).__name__}); nothing is downloaded automatically: fetch it with `hf download {repo_id}` "
            "(or pass a directory)"
        ) from None


def resolve_checkpoint(model: str | Path, what: str = "model") -> Path:
    """A checkpoint directory: `model` itself when it is one, else the cached snapshot of the Hub id `model`."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise FileNotFoundError(f"{what} {model}: not a directory (a checkpoint is a directory with config.json)")
    if isinstance(model, str) and looks_like_hub_id(model):
        return cached_snapshot(model, what)
    raise FileNotFoundError(f"{what} {model}: no such directory")
