"""Kimi K2's 256 special-token slots and the markup strings of its chat and tool-call format.

Source: SPEC §4 (ids of the official `tokenizer_config.json`). The official vocabulary has 163,584 BPE ranks
and the special slots 163,584..163,839 follow them; a tokenizer trained by us with `base` ranks puts the same
names at the same offsets from `base`, so `<|im_end|>` is always `base + 2`. Unnamed slots are
`<|reserved_token_{id}|>` with the absolute id, as in the official file.
"""

from __future__ import annotations

K2_BASE_VOCAB_SIZE = 163_584
NUM_SPECIAL_TOKENS = 256

BOS = "[BOS]"
EOS = "[EOS]"
IM_END = "<|im_end|>"
IM_USER = "<|im_user|>"
IM_ASSISTANT = "<|im_assistant|>"
IM_SYSTEM = "<|im_system|>"
IM_MIDDLE = "<|im_middle|>"
TOOL_CALLS_SECTION_BEGIN = "<|tool_calls_section_begin|>"
TOOL_CALLS_SECTION_END = "<|tool_calls_section_end|>"
TOOL_CALL_BEGIN = "<|tool_call_begin|>"
TOOL_CALL_ARGUMENT_BEGIN = "<|tool_call_argument_begin|>"
TOOL_CALL_END = "<|tool_call_end|>"
# Seen in real deployments: the singular spelling of the section markers (plain text, not special tokens).
TOOL_CALL_SECTION_BEGIN_SINGULAR = "<|tool_call_section_begin|>"
TOOL_CALL_SECTION_END_SINGULAR = "<|tool_call_section_end|>"
THINK_BEGIN = "<think>"
THINK_END = "</think>"
UNK = "[UNK]"
PAD = "[PAD]"

# Offset from the first special id -> official name (SPEC §4; <think>/</think> from the later K2 tokenizers).
NAMED_SPECIAL_OFFSETS: dict[int, str] = {
    0: BOS,
    1: EOS,
    2: IM_END,
    3: IM_USER,
    4: IM_ASSISTANT,
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "[EOT]",
    10: IM_SYSTEM,
    11: TOOL_CALLS_SECTION_BEGIN,
    12: TOOL_CALLS_SECTION_END,
    13: TOOL_CALL_BEGIN,
    14: TOOL_CALL_ARGUMENT_BEGIN,
    15: TOOL_CALL_END,
    17: IM_MIDDLE,
    22: THINK_BEGIN,
    23: THINK_END,
    254: UNK,
    255: PAD,
}


def reserved_token_name(token_id: int) -> str:
    """The name of an unnamed special slot, with its absolute id (`<|reserved_token_163589|>`)."""
    return f"<|reserved_token_{token_id}|>"


def default_special_tokens(base: int) -> dict[str, int]:
    """All 256 special tokens (name -> id) for a vocabulary whose BPE ranks are 0..base-1."""
    if base < 256:
        raise ValueError(f"base vocabulary size must be at least 256 (one rank per byte), got {base}")
    tokens: dict[str, int] = {}
    for offset in range(NUM_SPECIAL_TOKENS):
        token_id = base + offset
        tokens[NAMED_SPECIAL_OFFSETS.get(offset, reserved_token_name(token_id))] = token_id
    return tokens
