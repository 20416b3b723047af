"""The Anthropic-compatible API: `POST /v1/messages` and `POST /v1/messages/count_tokens` (what Claude Code uses).

Request mapping to K2 chat-template messages: `system` (string or text blocks, joined by newlines) is the system
message, as is a `system`-role turn between messages (newer API versions); a user turn's `tool_result` blocks become `tool` messages placed before the turn's text (K2 expects
results right after the calls); an assistant turn's text blocks are its content, `thinking` its
reasoning_content, `tool_use` blocks its tool_calls (input serialised as JSON). `is_error` results are prefixed
with "Error: " since K2's format has no error flag. `redacted_thinking` is encrypted for Anthropic's own models
and cannot be shown to this one: it is skipped (logged). A final assistant message is a prefill: the reply
continues it. Images and documents are refused (text-only model); so are server tools (`bash_20250124`, ...).
Structured outputs (`output_config.format` json_schema), tools with `strict` and every `tool_choice` are
enforced by a grammar while decoding (`constraints.py`). Hints that mean nothing to a self-hosted server (`metadata`,
`cache_control`, `service_tier`, `speed`, `output_config.effort`, `thinking`, ...) are accepted without effect;
reasoning is parsed from the output whatever `thinking` says. `temperature`, `top_p`, `top_k` are honoured.

Responses: content blocks `thinking` (when the model reasons), `text`, `tool_use`; `stop_reason` `end_turn`,
`tool_use`, `max_tokens` or `stop_sequence`; usage with `input_tokens` (uncached), `cache_read_input_tokens`
(served by the prefix cache), `output_tokens`. A tool call whose arguments are not a JSON object cannot be a
`tool_use` block (its `input` must be an object, and the SDK parses `input_json_delta` as it streams), so the
model's raw call is returned as a text block that says what was wrong — never dropped, never half-parsed. For
the same reason a streamed call's `input_json_delta` events are sent once the call is complete.

Streaming event sequence: `message_start` (sent once the prompt is processed, so its usage is exact),
then per block `content_block_start` / `content_block_delta` (`text_delta`, `thinking_delta`,
`input_json_delta`) / `content_block_stop`, then `message_delta` (stop_reason, usage) and `message_stop`.
"""

from __future__ import annotations

import decimal
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kimi_k2.engine.sampling_params import SamplingParams
from kimi_k2.server import schemas as s
from kimi_k2.server.chat import (
    AssembledCall,
    ChatPrompt,
    OutputAssembler,
    ToolChoice,
    build_prompt,
    check_tool_results,
    check_unique_names,
    tool_specs,
    validate_function,
)
from kimi_k2.server.constraints import check_schema
from kimi_k2.server.errors import anthropic_error_body, bad_request
from kimi_k2.server.prep import RequestChecks
from kimi_k2.server.sse import sse_event
from kimi_k2.server.state import (
    EngineStreamingResponse,
    ServerState,
    cancel_on_disconnect,
    final_output,
    generate,
    make_params,
    new_request_id,
    stream_with_errors,
)
from kimi_k2.tokenizer.events import ContentDelta, OutputEvent, ReasoningDelta, ToolCallEnd

if TYPE_CHECKING:  # the preparation processes import this module: no torch at import time
    from kimi_k2.engine.core import RequestOutput

log = logging.getLogger("kimi_k2")


# ----------------------------------------------------------------------------------------------------- requests
def _text_of(blocks: str | list[Any] | None, where: str) -> str:
    if blocks is None or isinstance(blocks, str):
        return blocks or ""
    texts = []
    for j, block in enumerate(blocks):
        if not isinstance(block, s.TextBlock):
            raise bad_request(f"{where}[{j}]: {block.type!r} blocks are not supported: this server's model reads text only", where)
        texts.append(block.text)
    return "\n".join(texts)


def anthropic_messages(system: str | list[s.TextBlock] | None, messages: list[s.AnthropicMessage]) -> list[dict[str, Any]]:
    """Anthropic system + messages -> K2 chat-template messages (each tagged `_source` with its message index)."""
    out: list[dict[str, Any]] = []
    if system:
        out.append({"role": "system", "content": _text_of(system, "system"), "_source": "system"})
    for i, m in enumerate(messages):
        blocks = [s.TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        where = f"messages[{i}].content"
        if m.role == "system":
            out.append({"role": "system", "content": _text_of(blocks, where), "_source": i})
        elif m.role == "user":
            texts: list[str] = []
            for j, block in enumerate(blocks):
                if isinstance(block, s.ToolResultBlock):
                    content = _text_of(block.content, f"{where}[{j}].content")
                    if block.is_error:
                        content = f"Error: {content}"
                    out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": content, "_source": i})
                elif isinstance(block, s.TextBlock):
                    texts.append(block.text)
                else:
                    raise bad_request(f"{where}[{j}]: {block.type!r} blocks are not supported in a user message", where)
            if texts or not any(isinstance(b, s.ToolResultBlock) for b in blocks):
                out.append({"role": "user", "content": "\n".join(texts), "_source": i})
        else:
            message: dict[str, Any] = {"role": "assistant", "content": "", "_source": i}
            calls, reasoning = [], []
            for j, block in enumerate(blocks):
                if isinstance(block, s.TextBlock):
                    message["content"] += block.text
                elif isinstance(block, s.ToolUseBlock):
                    arguments = json.dumps(block.input, ensure_ascii=False)
                    calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
                elif isinstance(block, s.ThinkingBlock):
                    reasoning.append(block.thinking)
                elif isinstance(block, s.RedactedThinkingBlock):
                    log.info("%s[%d]: skipping a redacted_thinking block (readable only by Anthropic's models)", where, j)
                else:
                    raise bad_request(f"{where}[{j}]: {block.type!r} blocks are not supported in an assistant message", where)
            if calls:
                message["tool_calls"] = calls
            if reasoning:
                message["reasoning_content"] = "\n".join(reasoning)
            out.append(message)
    return out


def anthropic_tools(tools: list[s.AnthropicTool] | None) -> list[dict[str, Any]] | None:
    """Anthropic tool definitions -> the OpenAI function form K2's chat template declares."""
    if not tools:
        return None
    out = []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise bad_request(f"tools[{i}]: tool type {tool.type!r} is not supported (server tools run at Anthropic); "
                              "declare a custom tool with input_schema", f"tools[{i}].type")
        if tool.input_schema is None:
            raise bad_request(f"tools[{i}].input_schema: required for a custom tool", f"tools[{i}].input_schema")
        validate_function(tool.name, tool.input_schema, f"tools[{i}]", "input_schema")
        if tool.strict:
            check_schema(tool.input_schema, f"tools[{i}].input_schema")
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        function["parameters"] = tool.input_schema
        out.append({"type": "function", "function": function})
    check_unique_names([t.name for t in tools], "tools")
    return out


def anthropic_tool_choice(choice: s.AnthropicToolChoice | None) -> ToolChoice:
    if choice is None:
        return ToolChoice()
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise bad_request("tool_choice: type 'tool' needs a 'name'", "tool_choice.name")
        return ToolChoice("function", choice.name, parallel)
    return ToolChoice({"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel=parallel)


def _prompt(checks: RequestChecks, req: s.CountTokensRequest) -> ChatPrompt:
    checks.check_model(req.model)
    tools = anthropic_tools(req.tools)
    choice = anthropic_tool_choice(req.tool_choice)
    choice.check([t["function"]["name"] for t in tools or []], "tool_choice")
    messages = anthropic_messages(req.system, req.messages)
    check_tool_results(messages, "tool_result.tool_use_id")
    prefill = messages[-1]["role"] == "assistant"
    if prefill and (messages[-1].get("tool_calls") or choice.mode in ("required", "function")):
        raise bad_request("a final assistant message (prefill) cannot contain tool_use blocks or be combined with a "
                          "tool_choice that forces a call", "messages")
    specs = tool_specs(tools, [bool(t.strict) for t in req.tools or ()], "tools")
    return build_prompt(checks.tokenizer, messages, tools, choice, continue_final=prefill, specs=specs,
                        body_schema=output_schema(req.output_config), reasoning=checks.reasoning)


def output_schema(config: s.OutputConfig | None) -> dict[str, Any] | None:
    """Structured outputs: `output_config.format` `{"type": "json_schema", "schema": {...}}`, else None."""
    fmt = config.format if config is not None else None
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        raise bad_request("output_config.format: expected {'type': 'json_schema', 'schema': {...}}", "output_config.format")
    check_schema(fmt["schema"], "output_config.format.schema")
    return fmt["schema"]


# ----------------------------------------------------------------------------------------------------- output
def _usage(out: RequestOutput) -> dict[str, Any]:
    return {
        "input_tokens": out.num_prompt_tokens - out.num_cached_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": out.num_cached_tokens,
        "output_tokens": out.num_completion_tokens,
    }


def _call_input(call: AssembledCall) -> dict[str, Any] | None:
    """The call's input object, or None when it cannot be a tool_use block."""
    return _parse_input(call)[0]


def _parse_input(call: AssembledCall) -> tuple[dict[str, Any] | None, str]:
    """(input object, "") or (None, why it cannot be a tool_use block)."""
    if call.error:
        return None, call.error
    try:
        value = json.loads(call.arguments, parse_float=_json_float)
    except json.JSONDecodeError as exc:
        return None, f"arguments are not valid JSON ({exc.msg})"
    except (ValueError, ArithmeticError):  # decimal.InvalidOperation is an ArithmeticError
        return None, NUMBER_TOO_LARGE
    return (value, "") if isinstance(value, dict) else (None, "arguments are not a JSON object")


MAX_EXACT_DIGITS = 4000  # Python writes ints of up to 4300 digits
NUMBER_TOO_LARGE = f"a number in the arguments has more than {MAX_EXACT_DIGITS} digits: no JSON response can carry it"


def _json_float(text: str) -> float | int:
    """A JSON number with a fraction or exponent; one too large for a float (`1e400`, valid JSON) is a whole
    number, kept exactly as a Python int (a float would be inf, which no JSON response can carry). Beyond
    MAX_EXACT_DIGITS digits it raises ValueError: the call is then returned as text (`_broken_call_text`)."""
    value = float(text)
    if math.isfinite(value):
        return value
    exact = decimal.Decimal(text)  # raises decimal.InvalidOperation past its own exponent limit
    if exact.adjusted() > MAX_EXACT_DIGITS:
        raise ValueError(NUMBER_TOO_LARGE)
    return int(exact)


def _broken_call_text(call: AssembledCall) -> str:
    return f"[unparsable tool call {call.id} to {call.name!r}: {_parse_input(call)[1]}] {call.arguments}"


def _stop_reason(assembled: OutputAssembler, last: RequestOutput) -> tuple[str, str | None]:
    if last.finish_reason == "length":
        return "max_tokens", None
    if any(_call_input(c) is not None for c in assembled.calls):
        return "tool_use", None
    if isinstance(last.stop_reason, str):
        return "stop_sequence", last.stop_reason
    return "end_turn", None


def _content_blocks(assembled: OutputAssembler) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if assembled.reasoning:
        blocks.append({"type": "thinking", "thinking": assembled.reasoning, "signature": ""})
    text = assembled.content
    broken = [_broken_call_text(c) for c in assembled.calls if _call_input(c) is None]
    if broken:
        text = "\n".join([text, *broken]) if text else "\n".join(broken)
    if text:
        blocks.append({"type": "text", "text": text})
    for call in assembled.calls:
        value = _call_input(call)
        if value is not None:
            blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": value})
    return blocks


# ----------------------------------------------------------------------------------------------------- routes
def count_prompt_tokens(checks: RequestChecks, body: bytes) -> int:
    """The prompt length of a count_tokens request (in a preparation process)."""
    return len(_prompt(checks, s.parse_body(s.CountTokensRequest, body)).prompt_ids)


async def count_tokens(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return JSONResponse({"input_tokens": await state.prepare(count_prompt_tokens, await request.body())})


@dataclass(frozen=True)
class PreparedMessages:
    """What a Messages request needs to run, as the preparation process returns it."""

    prompt: ChatPrompt
    params: SamplingParams
    stream: bool


def prepare_messages(checks: RequestChecks, body: bytes) -> PreparedMessages:
    """Parse, validate, render and tokenize a Messages request (in a preparation process)."""
    req = s.parse_body(s.MessagesRequest, body)
    prompt = _prompt(checks, req)
    checks.check_lengths(len(prompt.prompt_ids), req.max_tokens, "max_tokens")
    stops = list(req.stop_sequences or [])
    if any(not x for x in stops):
        raise bad_request("stop_sequences: stop sequences must be non-empty", "stop_sequences")
    params = make_params(
        temperature=req.temperature,
        top_p=checks.sampling_default("top_p", req.top_p, 1.0),
        top_k=int(checks.sampling_default("top_k", req.top_k, 0)),
        min_p=checks.sampling_default("min_p", None, 0.0),
        repetition_penalty=checks.sampling_default("repetition_penalty", None, 1.0),
        max_tokens=req.max_tokens,
        stop=stops,
        masked_token_ids=list(prompt.constraint.masked_token_ids),
        grammar=prompt.constraint.grammar,
    )
    checks.check_engine_request(prompt.prompt_ids, params)
    return PreparedMessages(prompt, params, req.stream)


async def messages(request: Request) -> Response:
    arrival = time.monotonic()
    state: ServerState = request.app.state.server
    job = await state.prepare(prepare_messages, await request.body())
    slot = state.admit()
    message_id = new_request_id("msg_")
    outputs = generate(state, slot, message_id, job.prompt.prompt_ids, job.params, arrival)
    if job.stream:
        events = _stream(state, message_id, job.prompt, outputs)
        body = stream_with_errors(events, lambda e: sse_event("error", anthropic_error_body(e)))
        return EngineStreamingResponse(body, slot)
    return JSONResponse(await cancel_on_disconnect(request, _full(state, message_id, job.prompt, outputs), slot))


def _message_shell(state: ServerState, message_id: str) -> dict[str, Any]:
    return {"id": message_id, "type": "message", "role": "assistant", "model": state.model_name, "content": [],
            "stop_reason": None, "stop_sequence": None}


async def _full(
    state: ServerState, message_id: str, prompt: ChatPrompt, outputs: AsyncIterator[tuple[RequestOutput, float]]
) -> dict[str, Any]:
    assembled = OutputAssembler(prompt, state.reasoning)
    last: RequestOutput | None = None
    try:
        async for out, _ in outputs:
            assembled.feed(out.text)
            last = out
    finally:
        await outputs.aclose()
    last = final_output(last)
    assembled.finish()
    stop_reason, stop_sequence = _stop_reason(assembled, last)
    message = _message_shell(state, message_id)
    message.update(content=_content_blocks(assembled), stop_reason=stop_reason, stop_sequence=stop_sequence, usage=_usage(last))
    return message


@dataclass
class _Block:
    kind: str  # "text" | "thinking"
    index: int


async def _stream(
    state: ServerState, message_id: str, prompt: ChatPrompt, outputs: AsyncIterator[tuple[RequestOutput, float]]
) -> AsyncIterator[str]:
    assembled = OutputAssembler(prompt, state.reasoning)
    open_block: _Block | None = None
    next_index = 0
    started = False
    last: RequestOutput | None = None

    def start(kind: str, content_block: dict[str, Any]) -> list[str]:
        nonlocal open_block, next_index
        events = close()
        open_block = _Block(kind, next_index)
        next_index += 1
        events.append(sse_event("content_block_start", {"type": "content_block_start", "index": open_block.index, "content_block": content_block}))
        return events

    def close() -> list[str]:
        nonlocal open_block
        if open_block is None:
            return []
        event = sse_event("content_block_stop", {"type": "content_block_stop", "index": open_block.index})
        open_block = None
        return [event]

    def delta(delta_payload: dict[str, Any]) -> str:
        assert open_block is not None
        return sse_event("content_block_delta", {"type": "content_block_delta", "index": open_block.index, "delta": delta_payload})

    def translate(event: OutputEvent) -> list[str]:
        events: list[str] = []
        if isinstance(event, ContentDelta) and event.text:
            if open_block is None or open_block.kind != "text":
                events += start("text", {"type": "text", "text": ""})
            events.append(delta({"type": "text_delta", "text": event.text}))
        elif isinstance(event, ReasoningDelta) and event.text:
            if open_block is None or open_block.kind != "thinking":
                events += start("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            events.append(delta({"type": "thinking_delta", "thinking": event.text}))
        elif isinstance(event, ToolCallEnd):
            call = assembled.calls[-1]
            value = _call_input(call)
            if value is None:
                events += start("text", {"type": "text", "text": ""})
                events.append(delta({"type": "text_delta", "text": _broken_call_text(call)}))
            else:
                events += start("tool_use", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
                events.append(delta({"type": "input_json_delta", "partial_json": call.arguments}))
            events += close()
        return events  # ToolCallStart / ToolCallArgsDelta: buffered by the assembler until ToolCallEnd

    try:
        async for out, _ in outputs:
            last = out
            if not started:
                started = True
                shell = _message_shell(state, message_id)
                shell["usage"] = {**_usage(out), "output_tokens": 0}
                yield sse_event("message_start", {"type": "message_start", "message": shell})
            events = assembled.feed(out.text)
            if out.finished:
                events += assembled.finish()
            for event in events:
                for line in translate(event):
                    yield line
    finally:
        await outputs.aclose()
    last = final_output(last)
    for line in close():
        yield line
    stop_reason, stop_sequence = _stop_reason(assembled, last)
    yield sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                      "usage": _usage(last)})
    yield sse_event("message_stop", {"type": "message_stop"})
