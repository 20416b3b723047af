"""The Kimi K2 tokenizer: tiktoken BPE with K2's pre-tokenizer and 256 special slots, loaded without remote code.

`Tokenizer.from_pretrained(dir)` reads `tiktoken.model`, `tokenizer_config.json` and, when present,
`chat_template.jinja` (which wins over the config's `chat_template`, as in HF transformers). Encoding runs on
tiktoken's own `Encoding` (Rust BPE) with the official chunking (see `pretokenizer.py`); nothing here needs
`trust_remote_code`. Special ids follow the last BPE rank: with the official 163,584 ranks they are exactly
the official ids, with a smaller trained vocabulary they keep the official offsets (SPEC §4).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken

from kimi_k2.tokenizer import files
from kimi_k2.tokenizer.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
from kimi_k2.tokenizer.detokenizer import IncrementalDetokenizer
from kimi_k2.tokenizer.pretokenizer import K2_PATTERN, encoding_pieces
from kimi_k2.tokenizer.special_tokens import (
    BOS,
    EOS,
    IM_END,
    NUM_SPECIAL_TOKENS,
    PAD,
    UNK,
    default_special_tokens,
)

AllowSpecial = bool | Collection[str]


class Tokenizer:
    """K2 tokenizer: `encode`, `decode`, streaming detokenizer and chat-template rendering."""

    def __init__(
        self,
        mergeable_ranks: dict[bytes, int],
        special_tokens: Mapping[str, int] | None = None,
        *,
        pattern: str = K2_PATTERN,
        chat_template: str | None = None,
        bos_token: str = BOS,
        eos_token: str = EOS,
        pad_token: str = PAD,
        unk_token: str = UNK,
        model_max_length: int = files.DEFAULT_MODEL_MAX_LENGTH,
        name: str = "kimi_k2",
    ) -> None:
        base = len(mergeable_ranks)
        specials = default_special_tokens(base)
        if special_tokens:
            specials = _merge_special_tokens(specials, special_tokens, base)
        self.mergeable_ranks = mergeable_ranks
        self.special_tokens: dict[str, int] = specials
        self.pattern = pattern
        self.chat_template = chat_template if chat_template is not None else DEFAULT_CHAT_TEMPLATE
        self.has_own_chat_template = chat_template is not None
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        self.model_max_length = model_max_length
        self._id_to_special = {token_id: token for token, token_id in specials.items()}
        self._encoding = tiktoken.Encoding(
            name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=specials
        )
        for field, token in self.special_token_variables().items():
            if token not in specials:
                raise ValueError(f"{field} {token!r} is not one of the special tokens")

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Tokenizer:
        """Load from a checkpoint directory (`tiktoken.model` required; config and template optional)."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory not found: {directory}")
        ranks = files.read_tiktoken_model(directory / files.TIKTOKEN_MODEL_FILE)
        config_path = directory / files.TOKENIZER_CONFIG_FILE
        config = files.read_tokenizer_config(config_path)
        template_path = directory / files.CHAT_TEMPLATE_FILE
        if template_path.is_file():
            chat_template: str | None = template_path.read_text(encoding="utf-8")
        else:
            chat_template = files.chat_template_from_config(config, str(config_path))
        max_length = config.get("model_max_length", files.DEFAULT_MODEL_MAX_LENGTH)
        if not isinstance(max_length, int):
            raise ValueError(f"{config_path}: field 'model_max_length' must be an integer, got {max_length!r}")
        try:
            return cls(
                ranks,
                files.special_tokens_from_config(config, str(config_path)),
                chat_template=chat_template,
                bos_token=files.token_name_from_config(config, "bos_token", BOS),
                eos_token=files.token_name_from_config(config, "eos_token", EOS),
                pad_token=files.token_name_from_config(config, "pad_token", PAD),
                unk_token=files.token_name_from_config(config, "unk_token", UNK),
                model_max_length=max_length,
            )
        except ValueError as exc:
            if str(config_path) in str(exc):
                raise
            raise ValueError(f"{config_path}: {exc}") from exc

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `tiktoken.model` and `tokenizer_config.json` (with `chat_template` only if it is our own)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files.write_tiktoken_model(directory / files.TIKTOKEN_MODEL_FILE, self.mergeable_ranks)
        config = files.build_tokenizer_config(
            self.special_tokens,
            chat_template=self.chat_template if self.has_own_chat_template else None,
            model_max_length=self.model_max_length,
        )
        config.update(self.special_token_variables())
        files.write_tokenizer_config(directory / files.TOKENIZER_CONFIG_FILE, config)

    # ----------------------------------------------------------------------------------------------- sizes and ids
    @property
    def encoding(self) -> tiktoken.Encoding:
        """The underlying tiktoken `Encoding` (regex split and BPE only; chunking is done by `encode`)."""
        return self._encoding

    @property
    def base_vocab_size(self) -> int:
        """Number of BPE ranks; the first special id."""
        return len(self.mergeable_ranks)

    @property
    def vocab_size(self) -> int:
        """BPE ranks + 256 special slots (163,840 for K2): the embedding rows a model needs."""
        return self.base_vocab_size + NUM_SPECIAL_TOKENS

    def token_to_id(self, token: str) -> int:
        """Id of a special token by name (`tok.token_to_id("<|im_end|>")`)."""
        try:
            return self.special_tokens[token]
        except KeyError:
            raise KeyError(f"{token!r} is not a special token of this tokenizer") from None

    @property
    def bos_id(self) -> int:
        return self.special_tokens[self.bos_token]

    @property
    def eos_id(self) -> int:
        return self.special_tokens[self.eos_token]

    @property
    def pad_id(self) -> int:
        return self.special_tokens[self.pad_token]

    @property
    def unk_id(self) -> int:
        return self.special_tokens[self.unk_token]

    @property
    def im_end_id(self) -> int:
        return self.special_tokens[IM_END]

    @property
    def stop_token_ids(self) -> frozenset[int]:
        """Ids that end an assistant turn: `<|im_end|>` (what generation_config stops on) and the EOS token."""
        return frozenset({self.im_end_id, self.eos_id})

    def is_special(self, token_id: int) -> bool:
        return token_id in self._id_to_special

    # ----------------------------------------------------------------------------------------------- encode / decode
    def encode(self, text: str, allow_special: AllowSpecial = False) -> list[int]:
        """Token ids of `text` (no BOS/EOS added).

        `allow_special`: False encodes special-token strings as ordinary text; True turns every special-token
        string into its id; a collection of names allows just those.
        """
        if allow_special is True:
            allowed: Collection[str] | str = "all"
        elif allow_special is False:
            allowed = set()
        else:
            allowed = set(allow_special)
            unknown = allowed - self.special_tokens.keys()
            if unknown:
                raise ValueError(f"allow_special names tokens that are not special tokens: {sorted(unknown)}")
        ids: list[int] = []
        for piece in encoding_pieces(text):
            ids.extend(self._encoding.encode(piece, allowed_special=allowed, disallowed_special=()))
        return ids

    def decode_bytes(self, ids: Iterable[int], skip_special_tokens: bool = False) -> bytes:
        ids = self._checked_ids(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._id_to_special]
        return self._encoding.decode_bytes(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; special tokens appear as their names unless skipped; broken UTF-8 becomes U+FFFD."""
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's name in UTF-8)."""
        return self._encoding.decode_single_token_bytes(self._checked_ids([token_id])[0])

    def detokenizer(self, skip_special_tokens: bool = False, keep: Collection[str] = ()) -> IncrementalDetokenizer:
        """A streaming decoder: feed ids, get text that never ends in half a UTF-8 character.

        With `skip_special_tokens`, special tokens are dropped except the names in `keep` (e.g. the tool-call
        and think markers a parser needs to see).
        """
        skipped = frozenset()
        if skip_special_tokens:
            skipped = frozenset(i for t, i in self.special_tokens.items() if t not in keep)
        return IncrementalDetokenizer(self.token_bytes, skip_ids=skipped)

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        ids = [int(i) for i in ids]
        limit = self.vocab_size
        for i in ids:
            if not 0 <= i < limit:
                raise ValueError(f"token id {i} is out of range for this tokenizer (vocab_size {limit})")
        return ids

    # ----------------------------------------------------------------------------------------------- chat
    def special_token_variables(self) -> dict[str, str]:
        """The special-token variables HF passes to chat templates."""
        return {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
        }

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        chat_template: str | None = None,
        **template_kwargs: Any,
    ) -> list[int] | str:
        """Render a conversation with the checkpoint's template (HF semantics); ids when `tokenize`, else text.

        The rendered text is encoded with special tokens allowed, as HF does: the template's markers become
        their ids. `chat_template` overrides the tokenizer's template for this call.
        """
        variables = {**self.special_token_variables(), **template_kwargs}
        text = render_chat_template(
            chat_template if chat_template is not None else self.chat_template,
            messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            **variables,
        )
        return self.encode(text, allow_special=True) if tokenize else text

    def __repr__(self) -> str:
        return f"Tokenizer(base_vocab_size={self.base_vocab_size}, vocab_size={self.vocab_size})"


def _merge_special_tokens(defaults: dict[str, int], given: Mapping[str, int], base: int) -> dict[str, int]:
    """Special tokens from a config laid over the default slots; every id must be one of the 256 slots."""
    by_id = {token_id: token for token, token_id in defaults.items()}
    for token, token_id in given.items():
        if not base <= token_id < base + NUM_SPECIAL_TOKENS:
            raise ValueError(
                f"special token {token!r} has id {token_id}, outside the special slots "
                f"{base}..{base + NUM_SPECIAL_TOKENS - 1} that follow the {base} BPE ranks"
            )
        by_id[token_id] = token
    merged = {token: token_id for token_id, token in by_id.items()}
    if len(merged) != len(by_id):
        raise ValueError("two special-token slots have the same name")
    return merged
