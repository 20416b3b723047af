"""What both chat APIs share: tools and tool_choice, the K2 prompt, and the model's output as typed events.

Request side. Each API converts its messages into the K2 chat-template form (`role`, `content` string,
`tool_calls` [{id, type, function{name, arguments}}], `tool_call_id`, `name`); here tools are validated
(a function name K2 can write in `functions.{name}:{idx}`, a JSON-schema object for the arguments), tool
results are checked to answer an earlier call, client tool-call ids are mapped to K2's own form
(`kimi_k2.tokenizer.tool_call_ids`) and the conversation is rendered with the checkpoint's chat template.

tool_choice (K2 has no native switch, so it is enforced at decode time, `constraints.py`): `auto` lets the
model answer or call, but only a declared tool; `none` leaves the tools out of the prompt and masks the
tool-call markers; `required` allows only calls, a named function exactly one call to it; with parallel calls off
(`parallel_tool_calls: false`, `disable_parallel_tool_use`) a section holds one call. With no tools, no call
can start. `response_format` JSON is the body of the answer, tools with `strict` constrain their arguments.
The constraint travels to the engine in the request's SamplingParams (a grammar text, or masked token ids).

Output side. `OutputAssembler` runs the tokenizer's streaming `OutputParser` over the engine's text deltas
(tool and think markers kept) and makes every new tool-call id unique against the history: the model numbers
calls across the conversation, but if it repeats an id the client already holds, the next free
`functions.{name}:{idx}` is used, so the client can never confuse two calls.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kimi_k2.server.constraints import OutputConstraint, ToolSpec, output_constraint
from kimi_k2.server.errors import bad_request
from kimi_k2.tokenizer.events import (
    ContentDelta,
    OutputEvent,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
)
from kimi_k2.tokenizer.output_parser import OutputParser
from kimi_k2.tokenizer.special_tokens import IM_END, THINK_BEGIN, THINK_END
from kimi_k2.tokenizer.tool_call_ids import ToolCallIdMap, free_tool_call_id, is_k2_tool_call_id, map_tool_call_ids

log = logging.getLogger("kimi_k2")

TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
_JSON_TYPES = frozenset({"object", "array", "string", "number", "integer", "boolean", "null"})


# ----------------------------------------------------------------------------------------------------- tools
def validate_function(name: Any, parameters: Any, where: str, params_field: str) -> None:
    """Raise 400 unless `name` is writable in a K2 tool-call id and `parameters` is an object schema."""
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise bad_request(
            f"{where}.name: {name!r} is not a valid function name (1-128 characters from A-Z a-z 0-9 _ . -)", f"{where}.name"
        )
    if parameters is None:
        return
    at = f"{where}.{params_field}"
    if not isinstance(parameters, dict):
        raise bad_request(f"{at}: must be a JSON Schema object, got {type(parameters).__name__}", at)
    kind = parameters.get("type", "object")
    if kind != "object":
        raise bad_request(f"{at}.type: a function's arguments must be a JSON object (type 'object'), got {kind!r}", at)
    properties = parameters.get("properties", {})
    if not isinstance(properties, dict):
        raise bad_request(f"{at}.properties: must be an object mapping names to schemas, got {type(properties).__name__}", at)
    for prop, schema in properties.items():
        if not isinstance(schema, (dict, bool)):
            raise bad_request(f"{at}.properties.{prop}: must be a schema object, got {type(schema).__name__}", at)
        prop_type = schema.get("type") if isinstance(schema, dict) else None
        types = prop_type if isinstance(prop_type, list) else [prop_type] if prop_type is not None else []
        for t in types:
            if t not in _JSON_TYPES:
                raise bad_request(f"{at}.properties.{prop}.type: {t!r} is not a JSON Schema type ({', '.join(sorted(_JSON_TYPES))})", at)
    required = parameters.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise bad_request(f"{at}.required: must be a list of property names, got {required!r}", at)
    missing = [r for r in required if "properties" in parameters and r not in properties]
    if missing:
        raise bad_request(f"{at}.required: {missing} are not in properties {sorted(properties)}", at)


def check_unique_names(names: Sequence[str], where: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise bad_request(f"{where}[{i}].name: duplicate tool name {name!r}", where)
        seen.add(name)


@dataclass(frozen=True)
class ToolChoice:
    mode: str = "auto"  # auto | none | required | function
    name: str | None = None  # for mode == "function"
    parallel: bool = True

    def check(self, tool_names: Sequence[str], param: str) -> None:
        if self.mode in ("required", "function") and not tool_names:
            raise bad_request(f"{param}: {self.mode!r} needs tools, but the request declares none", param)
        if self.mode == "function" and self.name not in tool_names:
            raise bad_request(f"{param}: function {self.name!r} is not among the declared tools {list(tool_names)}", param)


# ----------------------------------------------------------------------------------------------------- history
def check_tool_results(messages: Sequence[Mapping[str, Any]], id_field: str = "tool_call_id") -> None:
    """Every tool result must answer a call made by an earlier assistant message."""
    calls: set[str] = set()
    for i, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            calls.add(call["id"])
        if message.get("role") == "tool" and message.get("tool_call_id") not in calls:
            raise bad_request(
                f"messages[{message.get('_source', i)}]: {id_field} {message.get('tool_call_id')!r} answers no tool call "
                f"of an earlier assistant message (known ids: {sorted(calls) or 'none'})",
                "messages",
            )


@dataclass
class ChatPrompt:
    """A rendered prompt plus what decoding and output parsing need to know about it."""

    prompt_ids: list[int]
    id_map: ToolCallIdMap
    history_ids: set[str]  # every tool-call id the client holds (K2 form and client form)
    choice: ToolChoice = field(default_factory=ToolChoice)
    constraint: OutputConstraint = field(default_factory=OutputConstraint)
    starts_in_reasoning: bool = False  # the prompt ends inside a prefilled <think>


RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt", "tokenize", "chat_template"})


def ends_inside_reasoning(tokenizer: Any, prompt_ids: Sequence[int]) -> bool:
    """True when the prompt's last `<think>` is open: no `</think>` or `<|im_end|>` after it."""
    think, closers = tokenizer.token_to_id(THINK_BEGIN), {tokenizer.token_to_id(THINK_END), tokenizer.token_to_id(IM_END)}
    for token in reversed(prompt_ids):
        if token == think:
            return True
        if token in closers:
            return False
    return False


def tool_specs(tools: Sequence[Mapping[str, Any]] | None, strict: Sequence[bool], where: str) -> list[ToolSpec]:
    """ToolSpecs of template-form tools; `strict[i]`: tool i's arguments must follow its parameter schema."""
    return [
        ToolSpec(t["function"]["name"], (t["function"].get("parameters") or {"type": "object"}) if s else None, f"{where}[{i}]")
        for i, (t, s) in enumerate(zip(tools or (), strict))
    ]


def build_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    choice: ToolChoice,
    continue_final: bool = False,
    template_kwargs: dict[str, Any] | None = None,
    *,
    specs: Sequence[ToolSpec] = (),
    body_schema: dict[str, Any] | None = None,
    reasoning: bool = True,
) -> ChatPrompt:
    """Map tool-call ids to K2 form, render the chat template, and work out what the reply may be.

    `continue_final`: the last message is a partial assistant turn to continue (rendered without its
    end-of-turn marker and without a new generation prompt). `template_kwargs`: extra template variables
    (vLLM's `chat_template_kwargs`); the ones this function sets itself are refused. `specs`: the declared
    tools for the output constraint (`tool_specs`); `body_schema`: the JSON schema of the answer
    (`response_format`); `reasoning`: the server splits reasoning (a reply may start with `<think>`).
    """
    reserved = sorted(set(template_kwargs or ()) & RESERVED_TEMPLATE_VARIABLES)
    if reserved:
        raise bad_request(f"chat_template_kwargs: {', '.join(map(repr, reserved))} cannot be set here (the server "
                          "sets it from the request)", "chat_template_kwargs")
    for message in messages:
        message.pop("_source", None)
    k2_messages, id_map = map_tool_call_ids(messages)
    rendered_tools = tools if tools and choice.mode != "none" else None
    try:
        prompt_ids = list(tokenizer.apply_chat_template(
            k2_messages, tools=rendered_tools, add_generation_prompt=not continue_final, **(template_kwargs or {})
        ))
    except Exception as exc:  # a template that raises (raise_exception) or chokes on odd input
        raise bad_request(f"the chat template could not render these messages: {exc}", "messages") from exc
    history_ids = set(id_map.client_to_k2) | set(id_map.k2_to_client)
    for message in k2_messages:
        for call in message.get("tool_calls") or ():
            history_ids.add(call["id"])
    in_reasoning = reasoning and ends_inside_reasoning(tokenizer, prompt_ids)
    allowed = [t for t in specs if choice.mode != "function" or t.name == choice.name]
    constraint = output_constraint(
        tokenizer, body_schema=body_schema, tools=allowed, mode=choice.mode, parallel=choice.parallel,
        reasoning="open" if in_reasoning else "optional" if reasoning else "off",
    )
    return ChatPrompt(prompt_ids, id_map, history_ids, choice, constraint, in_reasoning)


# ----------------------------------------------------------------------------------------------------- output
@dataclass
class AssembledCall:
    index: int
    id: str
    name: str
    arguments: str = ""
    error: str | None = None
    done: bool = False


class OutputAssembler:
    """Engine text deltas in, API-neutral events out (and the complete message, for non-streaming replies)."""

    def __init__(self, prompt: ChatPrompt, reasoning: bool = True) -> None:
        self.prompt = prompt
        self._parser = OutputParser(reasoning=reasoning, starts_in_reasoning=prompt.starts_in_reasoning)
        self._used = set(prompt.history_ids)
        self._next_index = prompt.id_map.history_calls
        self.content = ""
        self.reasoning = ""
        self.calls: list[AssembledCall] = []

    def feed(self, text: str) -> list[OutputEvent]:
        return self._rewrite(self._parser.feed(text))

    def finish(self) -> list[OutputEvent]:
        """Flush the parser."""
        return self._rewrite(self._parser.finish())

    def _rewrite(self, events: list[OutputEvent]) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        for event in events:
            if isinstance(event, ToolCallStart):
                call_id = event.id
                if call_id in self._used or not call_id:
                    fresh = free_tool_call_id(event.name, self._next_index, self._used)
                    log.warning("model repeated tool-call id %.80r already used in this conversation; sent as %r", call_id, fresh)
                    call_id = fresh
                self._used.add(call_id)
                if is_k2_tool_call_id(call_id):
                    self._next_index = max(self._next_index, int(call_id.rpartition(":")[2]) + 1)
                event = ToolCallStart(event.index, call_id, event.name)
                self.calls.append(AssembledCall(event.index, call_id, event.name))
            elif isinstance(event, ToolCallArgsDelta):
                self.calls[-1].arguments += event.fragment
            elif isinstance(event, ToolCallEnd):
                self.calls[-1].error, self.calls[-1].done = event.error, True
                if event.error:
                    log.warning("malformed tool call %.80r from the model: %s", self.calls[-1].id, event.error)
            elif isinstance(event, ContentDelta):
                self.content += event.text
            elif isinstance(event, ReasoningDelta):
                self.reasoning += event.text
            out.append(event)
        return out

    def finish_reason(self, engine_reason: str | None) -> str:
        """OpenAI finish_reason: `length` wins, then `tool_calls` if the message has calls, else `stop`."""
        if engine_reason == "length":
            return "length"
        return "tool_calls" if self.calls else "stop"
