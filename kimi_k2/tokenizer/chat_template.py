"""Chat-template rendering with HF transformers' semantics, and the built-in default K2 template.

A checkpoint's `chat_template.jinja` is untrusted code, rendered the way HF renders it: jinja2
`ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])`, `tojson` =
`json.dumps(x, ensure_ascii=False)` (default separators, so `{"a": 1}`), `raise_exception`, `strftime_now`,
and the variables `messages`, `tools`, `add_generation_prompt` plus the special tokens. Inputs are copied to
plain JSON-like data first, so a template can neither mutate the caller's messages nor reach into objects.

`DEFAULT_CHAT_TEMPLATE` (`default_chat_template.jinja`) is our own template, written for this project, whose
output is byte-identical to the official Kimi-K2-Instruct-0905 template (tests prove it against the reference
file); see docs/tokenizer.md for why 0905 and not the earlier Instruct template.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def make_environment() -> ImmutableSandboxedEnvironment:
    """The jinja2 environment HF transformers renders chat templates in."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def compile_chat_template(source: str) -> jinja2.Template:
    """Compile (and cache) a chat template; a syntax error is a ValueError that says where."""
    try:
        return make_environment().from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"chat template syntax error at line {exc.lineno}: {exc.message}") from exc


def _plain(value: Any) -> Any:
    """A deep copy made of dict/list/str/int/float/bool/None only (what a template should see)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):  # pydantic models (OpenAI SDK messages)
        return _plain(value.model_dump())
    raise TypeError(f"chat messages and tools must be JSON-like data, got {type(value).__name__}")


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = False,
    **variables: Any,
) -> str:
    """Render `source` over a conversation; template errors (incl. `raise_exception`) become ValueError."""
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) and not callable(getattr(message, "model_dump", None)):
            raise TypeError(f"messages[{i}] must be a dict, got {type(message).__name__}")
    template = compile_chat_template(source)
    try:
        return template.render(
            messages=_plain(list(messages)),
            tools=_plain(list(tools)) if tools is not None else None,
            add_generation_prompt=add_generation_prompt,
            **{k: _plain(v) for k, v in variables.items()},
        )
    except jinja2.TemplateError as exc:
        raise ValueError(f"chat template failed: {exc}") from exc


def _load_default_template() -> str:
    return resources.files("kimi_k2.tokenizer").joinpath("default_chat_template.jinja").read_text(encoding="utf-8")


DEFAULT_CHAT_TEMPLATE: str = _load_default_template()
