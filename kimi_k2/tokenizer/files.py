"""Reading and writing the two tokenizer files of a K2 checkpoint: `tiktoken.model` and `tokenizer_config.json`.

`tiktoken.model` is tiktoken's BPE format: one line per rank, `base64(token bytes) rank`, ranks 0..n-1.
`tokenizer_config.json` follows the official file's shape (HF `added_tokens_decoder` with every special slot,
`bos_token` / `eos_token` / `pad_token` / `unk_token`, `tokenizer_class: "TikTokenTokenizer"`,
`model_max_length`, optionally `chat_template`). We write no `auto_map`: loading needs no remote code.
Errors name the file and the line or field, so a broken checkpoint is easy to fix.
"""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from kimi_k2.jsonfile import read_json_object
from kimi_k2.tokenizer.special_tokens import BOS, EOS, PAD, UNK

TIKTOKEN_MODEL_FILE = "tiktoken.model"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
DEFAULT_MODEL_MAX_LENGTH = 131_072


def parse_tiktoken_model(text: str, source: str = TIKTOKEN_MODEL_FILE) -> dict[bytes, int]:
    """Parse the `base64 rank` lines of a tiktoken BPE file; ranks must be exactly 0..n-1, tokens unique."""
    ranks: dict[bytes, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{source}:{line_no}: expected 'base64 rank', got {line[:80]!r}")
        try:
            token = base64.b64decode(parts[0], validate=True)
            rank = int(parts[1])
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{source}:{line_no}: cannot parse {line[:80]!r}: {exc}") from exc
        if token in ranks:
            raise ValueError(f"{source}:{line_no}: token {token!r} appears twice (ranks {ranks[token]} and {rank})")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{source}: ranks must be exactly 0..{len(ranks) - 1} with no gaps or repeats")
    return ranks


def read_tiktoken_model(path: Path) -> dict[bytes, int]:
    """Load `tiktoken.model`; FileNotFoundError names the missing path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return parse_tiktoken_model(path.read_text(encoding="ascii"), source=str(path))


def write_tiktoken_model(path: Path, ranks: dict[bytes, int]) -> None:
    """Write ranks as `base64 rank` lines in rank order (the format tiktoken and the official file use)."""
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n" for token, rank in ordered]
    Path(path).write_text("".join(lines), encoding="ascii")


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    """Load `tokenizer_config.json` as a dict; a missing file gives {} (the defaults), malformed JSON a ValueError."""
    return read_json_object(path, missing_ok=True)


def special_tokens_from_config(config: dict[str, Any], source: str) -> dict[str, int]:
    """The `added_tokens_decoder` of a config as name -> id (empty when the field is absent)."""
    decoder = config.get("added_tokens_decoder", {})
    if not isinstance(decoder, dict):
        raise ValueError(f"{source}: field 'added_tokens_decoder' must be an object")
    tokens: dict[str, int] = {}
    for key, entry in decoder.items():
        content = entry.get("content") if isinstance(entry, dict) else entry
        if not isinstance(content, str):
            raise ValueError(f"{source}: added_tokens_decoder[{key!r}] has no string 'content'")
        try:
            tokens[content] = int(key)
        except ValueError as exc:
            raise ValueError(f"{source}: added_tokens_decoder key {key!r} is not a token id") from exc
    return tokens


def token_name_from_config(config: dict[str, Any], field: str, default: str) -> str:
    """A special-token field (`bos_token`, ...), which HF writes either as a string or as {"content": ...}."""
    value = config.get(field, default)
    if isinstance(value, dict):
        value = value.get("content", default)
    return value if isinstance(value, str) else default


def chat_template_from_config(config: dict[str, Any], source: str) -> str | None:
    """`chat_template` of a config: a string, or HF's list of {"name", "template"} (the "default" one is used)."""
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise ValueError(f"{source}: field 'chat_template' must be a string or a list with a 'default' entry")


def build_tokenizer_config(
    special_tokens: dict[str, int],
    *,
    chat_template: str | None = None,
    model_max_length: int = DEFAULT_MODEL_MAX_LENGTH,
) -> dict[str, Any]:
    """A `tokenizer_config.json` dict in the official layout for the given special tokens (name -> id)."""
    decoder = {
        str(token_id): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for name, token_id in sorted(special_tokens.items(), key=lambda kv: kv[1])
    }
    config: dict[str, Any] = {
        "added_tokens_decoder": decoder,
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": model_max_length,
        "pad_token": PAD,
        "tokenizer_class": "TikTokenTokenizer",
        "unk_token": UNK,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def write_tokenizer_config(path: Path, config: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
