"""K2 tokenizer, chat template, and output parsing (reasoning and tool calls).

The public names below are imported lazily (the submodules pull in tiktoken and jinja2 only when used).
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "Tokenizer": "kimi_k2.tokenizer.tokenizer",
    "IncrementalDetokenizer": "kimi_k2.tokenizer.detokenizer",
    "DEFAULT_CHAT_TEMPLATE": "kimi_k2.tokenizer.chat_template",
    "render_chat_template": "kimi_k2.tokenizer.chat_template",
    "OutputParser": "kimi_k2.tokenizer.output_parser",
    "parse_output": "kimi_k2.tokenizer.output_parser",
    "ToolCallParser": "kimi_k2.tokenizer.tool_calls",
    "parse_tool_calls": "kimi_k2.tokenizer.tool_calls",
    "ReasoningParser": "kimi_k2.tokenizer.reasoning",
    "split_reasoning": "kimi_k2.tokenizer.reasoning",
    "map_tool_call_ids": "kimi_k2.tokenizer.tool_call_ids",
    "ToolCallIdMap": "kimi_k2.tokenizer.tool_call_ids",
    "ContentDelta": "kimi_k2.tokenizer.events",
    "ReasoningDelta": "kimi_k2.tokenizer.events",
    "ToolCallStart": "kimi_k2.tokenizer.events",
    "ToolCallArgsDelta": "kimi_k2.tokenizer.events",
    "ToolCallEnd": "kimi_k2.tokenizer.events",
    "ToolCall": "kimi_k2.tokenizer.events",
    "ParsedOutput": "kimi_k2.tokenizer.events",
    "collect_events": "kimi_k2.tokenizer.events",
}

__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kimi_k2.tokenizer' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
