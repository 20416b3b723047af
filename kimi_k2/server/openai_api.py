"""The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions`.

Messages (system/developer, user, assistant with tool_calls, tool) become K2 chat-template messages; content
parts are concatenated text (the official template joins parts with no separator); images, audio and files are
refused (the model reads text). Tool-call ids the client sent are mapped to K2's form for the model and new
calls come back with the ids the model wrote (`functions.{name}:{idx}`), which the client sends back unchanged.

Streaming follows the OpenAI wire format: a first chunk with `delta.role`, then `delta.content` /
`delta.reasoning_content` / `delta.tool_calls[i]` (id, type and name first, then `function.arguments`
fragments), a last chunk with `finish_reason`, an optional usage-only chunk (`stream_options.include_usage`,
with `usage: null` on every other chunk), then `data: [DONE]`. Errors after the stream started are sent as one
`data: {"error": …}` event.

Text completions score prompts the way lm-evaluation-harness's `local-completions` needs: `echo` with
`logprobs` returns the prompt's tokens with their teacher-forced logprobs (the first one `null`), and
`max_tokens: 0` (only with `echo`) generates nothing.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kimi_k2.engine.sampling_params import SEED_RANGE, SamplingParams
from kimi_k2.server import schemas as s
from kimi_k2.server.chat import (
    ChatPrompt,
    OutputAssembler,
    ToolChoice,
    build_prompt,
    check_tool_results,
    check_unique_names,
    tool_specs,
    validate_function,
)
from kimi_k2.server.constraints import ANY_OBJECT, check_schema
from kimi_k2.server.errors import bad_request, openai_error_body
from kimi_k2.server.prep import RequestChecks
from kimi_k2.server.sse import OPENAI_DONE, sse_data
from kimi_k2.server.state import (
    EngineStreamingResponse,
    ServerState,
    cancel_on_disconnect,
    final_output,
    generate,
    generate_choices,
    make_params,
    new_request_id,
    stream_with_errors,
)
from kimi_k2.tokenizer.events import ContentDelta, OutputEvent, ReasoningDelta, ToolCallArgsDelta, ToolCallStart

if TYPE_CHECKING:  # the preparation processes import this module: no torch at import time
    from kimi_k2.engine.core import RequestOutput
    from kimi_k2.engine.sampler import TokenLogprob


# ----------------------------------------------------------------------------------------------------- requests
def _parts_text(content: str | list[s.ContentPart] | None, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type != "text":
            raise bad_request(
                f"{where}[{j}]: content part type {part.type!r} is not supported: this server's model reads text only",
                where,
            )
        if part.text is None:
            raise bad_request(f"{where}[{j}]: a 'text' content part needs a 'text' string", where)
        texts.append(part.text)
    return "".join(texts)


def openai_messages(messages: list[s.ChatMessage]) -> list[dict[str, Any]]:
    """OpenAI chat messages -> K2 chat-template messages."""
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}].content"
        message: dict[str, Any]
        if isinstance(m, s.SystemMessage):
            message = {"role": "system", "content": _parts_text(m.content, where)}
        elif isinstance(m, s.UserMessage):
            message = {"role": "user", "content": _parts_text(m.content, where)}
        elif isinstance(m, s.AssistantMessage):
            message = {"role": "assistant", "content": _parts_text(m.content, where) or (m.refusal or "")}
            if m.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.function.name, "arguments": _arguments_text(call.function.arguments)},
                    }
                    for call in m.tool_calls
                ]
            if m.reasoning_content:
                message["reasoning_content"] = m.reasoning_content
        else:
            message = {"role": "tool", "tool_call_id": m.tool_call_id, "content": _parts_text(m.content, where)}
        if getattr(m, "name", None):
            message["name"] = m.name
        message["_source"] = i
        out.append(message)
    return out


def _arguments_text(arguments: str | dict[str, Any]) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def openai_tools(tools: list[s.ToolDef] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    for i, tool in enumerate(tools):
        validate_function(tool.function.name, tool.function.parameters, f"tools[{i}].function", "parameters")
        if tool.function.strict:
            check_schema(tool.function.parameters or ANY_OBJECT, f"tools[{i}].function.parameters")
    check_unique_names([t.function.name for t in tools], "tools")
    return [tool.model_dump(exclude_none=True) for tool in tools]


def response_schema(response_format: s.ResponseFormat | None) -> dict[str, Any] | None:
    """The JSON schema the reply must follow (`json_object`: any object), or None for free text."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return ANY_OBJECT
    if response_format.type != "json_schema":
        raise bad_request(f"response_format.type: {response_format.type!r} is not one of 'text', 'json_object', "
                          "'json_schema'", "response_format.type")
    spec = (response_format.model_extra or {}).get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise bad_request("response_format.json_schema.schema: a json_schema response format needs "
                          "{'json_schema': {'name': ..., 'schema': {...}}}", "response_format.json_schema.schema")
    check_schema(spec["schema"], "response_format.json_schema.schema")
    return spec["schema"]


def logit_bias_ids(bias: dict[str, float] | None) -> dict[int, float]:
    """OpenAI's logit_bias (token ids as strings) -> {id: bias}."""
    out: dict[int, float] = {}
    for key, value in (bias or {}).items():
        if not key.strip().isdigit():
            raise bad_request(f"logit_bias: key {key!r} is not a token id (a non-negative integer)", "logit_bias")
        out[int(key)] = value
    return out


def openai_tool_choice(choice: str | s.NamedToolChoice | None, parallel: bool | None) -> ToolChoice:
    parallel_ok = parallel is not False
    if choice is None:
        return ToolChoice("auto", parallel=parallel_ok)
    if isinstance(choice, str):
        return ToolChoice(choice, parallel=parallel_ok)
    return ToolChoice("function", choice.function.name, parallel=parallel_ok)


MAX_CHOICES = 16  # n: independent samples of one prompt (each one engine sequence)


def _reject_unsupported(req: s.SamplingFields) -> None:
    if req.n is not None and not 1 <= req.n <= MAX_CHOICES:
        raise bad_request(f"n={req.n}: must be in [1, {MAX_CHOICES}] (choices of one request)", "n")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true", "stream_options")


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not x for x in stops):
        raise bad_request("stop: stop strings must be non-empty", "stop")
    return stops


def _sampling(checks: RequestChecks, req: s.SamplingFields, max_tokens: int | None, logprobs: int | None,
              prompt: ChatPrompt | None = None) -> SamplingParams:
    """SamplingParams of a request; fields it leaves out take the checkpoint's defaults (generation_config.json)."""
    if req.stop_token_ids:
        checks.check_token_ids(req.stop_token_ids, "stop_token_ids")
    return make_params(
        temperature=req.temperature,
        top_p=checks.sampling_default("top_p", req.top_p, 1.0),
        top_k=int(checks.sampling_default("top_k", req.top_k, 0)),
        min_p=checks.sampling_default("min_p", req.min_p, 0.0),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=checks.sampling_default("repetition_penalty", req.repetition_penalty, 1.0),
        max_tokens=max_tokens,
        min_tokens=req.min_tokens or 0,
        stop=_stops(req.stop),
        stop_token_ids=list(req.stop_token_ids or []),
        ignore_eos=bool(req.ignore_eos),
        skip_special_tokens=req.skip_special_tokens is not False,
        seed=req.seed,
        logprobs=logprobs,
        logit_bias=logit_bias_ids(req.logit_bias),
        masked_token_ids=list(prompt.constraint.masked_token_ids) if prompt else [],
        grammar=prompt.constraint.grammar if prompt else None,
    )


# ----------------------------------------------------------------------------------------------------- output
def _usage(out: RequestOutput) -> dict[str, Any]:
    return {
        "prompt_tokens": out.num_prompt_tokens,
        "completion_tokens": out.num_completion_tokens,
        "total_tokens": out.num_prompt_tokens + out.num_completion_tokens,
        "prompt_tokens_details": {"cached_tokens": out.num_cached_tokens},
    }


def _token_entry(tokenizer: Any, token_id: int, logprob: float) -> dict[str, Any]:
    data = tokenizer.token_bytes(token_id)
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> dict[str, Any]:
    return {
        "content": [
            {
                **_token_entry(tokenizer, lp.token_id, lp.logprob),
                "top_logprobs": [_token_entry(tokenizer, t, p) for t, p in lp.top],
            }
            for lp in logprobs
        ]
    }


def _delta(event: OutputEvent) -> dict[str, Any]:
    if isinstance(event, ContentDelta):
        return {"content": event.text}
    if isinstance(event, ReasoningDelta):
        return {"reasoning_content": event.text}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{"index": event.index, "id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}]}
    if isinstance(event, ToolCallArgsDelta):
        return {"tool_calls": [{"index": event.index, "function": {"arguments": event.fragment}}]}
    return {}  # ToolCallEnd: nothing to send


def _message(assembled: OutputAssembler) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": assembled.content or (None if assembled.calls else "")}
    if assembled.reasoning:
        message["reasoning_content"] = assembled.reasoning
    if assembled.calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in assembled.calls
        ]
    return message


# ----------------------------------------------------------------------------------------------------- routes
async def list_models(request: Request) -> Response:
    state: ServerState = request.app.state.server
    if "anthropic-version" in request.headers:  # the Anthropic SDK's models.list() shares the path
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.created))
        entry = {"type": "model", "id": state.model_name, "display_name": state.model_name, "created_at": created}
        return JSONResponse({"data": [entry], "has_more": False, "first_id": state.model_name, "last_id": state.model_name})
    entry = {
        "id": state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "kimi-k2",
        "max_model_len": state.max_model_len,
    }
    return JSONResponse({"object": "list", "data": [entry]})


@dataclass(frozen=True)
class PreparedChat:
    """What a chat request needs to run, as the preparation process returns it."""

    prompt: ChatPrompt
    params: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool
    n: int = 1


def prepare_chat(checks: RequestChecks, body: bytes) -> PreparedChat:
    """Parse, validate, render and tokenize a chat request (in a preparation process)."""
    req = s.parse_body(s.ChatCompletionRequest, body)
    checks.check_model(req.model)
    _reject_unsupported(req)
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", "top_logprobs")
    tools = openai_tools(req.tools)
    choice = openai_tool_choice(req.tool_choice, req.parallel_tool_calls)
    choice.check([t["function"]["name"] for t in tools or []], "tool_choice")
    messages = openai_messages(req.messages)
    check_tool_results(messages)
    strict = [bool(t.function.strict) for t in req.tools or ()]
    prompt = build_prompt(checks.tokenizer, messages, tools, choice, template_kwargs=req.chat_template_kwargs,
                          specs=tool_specs(tools, strict, "tools"), body_schema=response_schema(req.response_format),
                          reasoning=checks.reasoning)
    max_field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    checks.check_lengths(len(prompt.prompt_ids), max_tokens, max_field)
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    params = _sampling(checks, req, max_tokens, logprobs, prompt)
    checks.check_engine_request(prompt.prompt_ids, params)
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return PreparedChat(prompt, params, req.stream, include_usage, bool(req.logprobs), req.n or 1)


async def chat_completions(request: Request) -> Response:
    arrival = time.monotonic()
    state: ServerState = request.app.state.server
    job = await state.prepare(prepare_chat, await request.body())
    slot = state.admit()
    request_id = new_request_id("chatcmpl-")
    outputs = generate_choices(state, slot, request_id, job.prompt.prompt_ids, choice_params(job.params, job.n), arrival)
    if job.stream:
        chunks = _chat_stream(state, request_id, job.prompt, outputs, job.n, job.include_usage, job.logprobs)
        body = stream_with_errors(chunks, lambda e: sse_data(openai_error_body(e)) + OPENAI_DONE)
        return EngineStreamingResponse(body, slot)
    return JSONResponse(await cancel_on_disconnect(request, _chat_full(state, request_id, job.prompt, outputs, job.n), slot))


def choice_params(params: SamplingParams, n: int) -> list[SamplingParams]:
    """The params of n independent choices: with a seed, choice i draws from seed + i (so choice 0 is what n=1
    gives); without one, each gets its own seed from the engine."""
    if n == 1 or params.seed is None:
        return [params] * n
    low, high = SEED_RANGE
    return [dataclasses.replace(params, seed=(params.seed + i - low) % (high - low) + low) for i in range(n)]


def _total_usage(lasts: list[RequestOutput]) -> dict[str, Any]:
    """Usage of n choices: the prompt once (as choice 0 read it), the completions summed."""
    usage = _usage(lasts[0])
    usage["completion_tokens"] = sum(out.num_completion_tokens for out in lasts)
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


async def _chat_full(
    state: ServerState, request_id: str, prompt: ChatPrompt, outputs: AsyncIterator[tuple[int, RequestOutput]], n: int
) -> dict[str, Any]:
    assembled = [OutputAssembler(prompt, state.reasoning) for _ in range(n)]
    logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
    last: list[RequestOutput | None] = [None] * n
    try:
        async for i, out in outputs:
            assembled[i].feed(out.text)
            logprobs[i] += out.logprobs or []
            last[i] = out
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
    lasts = [final_output(out) for out in last]
    choices = []
    for i, (asm, out) in enumerate(zip(assembled, lasts)):
        asm.finish()
        choices.append({
            "index": i,
            "message": _message(asm),
            "logprobs": chat_logprobs(state.tokenizer, logprobs[i]) if out.logprobs is not None else None,
            "finish_reason": asm.finish_reason(out.finish_reason),
        })
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": state.model_name,
        "choices": choices,
        "usage": _total_usage(lasts),
        "system_fingerprint": None,
    }


async def _chat_stream(
    state: ServerState,
    request_id: str,
    prompt: ChatPrompt,
    outputs: AsyncIterator[tuple[int, RequestOutput]],
    n: int,
    include_usage: bool,
    want_logprobs: bool,
) -> AsyncIterator[str]:
    created = int(time.time())
    usage_field: dict[str, Any] = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, logprobs: Any = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        payload = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                   "system_fingerprint": None, "choices": [choice], **usage_field}
        return sse_data(payload)

    assembled = [OutputAssembler(prompt, state.reasoning) for _ in range(n)]
    for i in range(n):
        yield chunk(i, {"role": "assistant", "content": ""})
    last: list[RequestOutput | None] = [None] * n
    try:
        async for i, out in outputs:
            last[i] = out
            events = assembled[i].feed(out.text)
            if out.finished:
                events += assembled[i].finish()
            logprobs = chat_logprobs(state.tokenizer, out.logprobs) if want_logprobs and out.logprobs else None
            deltas = [d for d in map(_delta, events) if d]
            if not deltas and logprobs is not None:
                deltas = [{}]
            for j, delta in enumerate(deltas):
                yield chunk(i, delta, logprobs=logprobs if j == 0 else None)
            if out.finished:
                yield chunk(i, {}, assembled[i].finish_reason(final_output(out).finish_reason))
    finally:
        await outputs.aclose()  # type: ignore[attr-defined]
    lasts = [final_output(out) for out in last]
    if include_usage:
        yield sse_data({"id": request_id, "object": "chat.completion.chunk", "created": created, "model": state.model_name,
                        "system_fingerprint": None, "choices": [], "usage": _total_usage(lasts)})
    yield OPENAI_DONE


# ----------------------------------------------------------------------------------------------------- completions
def completion_prompt_ids(checks: RequestChecks, prompt: str | list[int] | list[str] | list[list[int]]) -> list[int]:
    if isinstance(prompt, str):
        ids = checks.tokenizer.encode(prompt, allow_special=True)
        if not ids:
            raise bad_request("prompt: must not be empty", "prompt")
        return ids
    if not prompt:
        raise bad_request("prompt: must not be empty", "prompt")
    if isinstance(prompt[0], int):
        ids = list(prompt)  # type: ignore[arg-type]
    elif len(prompt) == 1:
        return completion_prompt_ids(checks, prompt[0])  # type: ignore[arg-type]
    else:
        raise bad_request(f"prompt: a batch of {len(prompt)} prompts is not supported; send one prompt per request", "prompt")
    checks.check_token_ids(ids, "prompt")
    return ids


def completion_logprobs(
    tokenizer: Any, logprobs: list[TokenLogprob], offset: int, echoed: dict[str, Any] | None = None
) -> dict[str, Any]:
    """OpenAI's legacy logprobs object; `echoed` (from `echo_logprobs`) comes first when the prompt is echoed."""
    tokens, token_logprobs, top, offsets = [], [], [], []
    if echoed is not None:
        tokens, token_logprobs = list(echoed["tokens"]), list(echoed["token_logprobs"])
        top, offsets = list(echoed["top_logprobs"]), list(echoed["text_offset"])
    for lp in logprobs:
        text = tokenizer.token_bytes(lp.token_id).decode("utf-8", errors="replace")
        tokens.append(text)
        token_logprobs.append(lp.logprob)
        top.append({tokenizer.token_bytes(t).decode("utf-8", errors="replace"): p for t, p in lp.top})
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets}


def echo_logprobs(tokenizer: Any, prompt_ids: list[int], scored: list[TokenLogprob]) -> dict[str, Any]:
    """The echoed prompt's part of the logprobs object: the first token has none (nothing precedes it), as in
    OpenAI's API; `scored` holds tokens 1..n-1 (`AsyncLLM.prompt_logprobs`)."""
    if not prompt_ids:
        return {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    first = tokenizer.token_bytes(prompt_ids[0]).decode("utf-8", errors="replace")
    rest = completion_logprobs(tokenizer, scored, len(first))
    return {"tokens": [first, *rest["tokens"]], "token_logprobs": [None, *rest["token_logprobs"]],
            "top_logprobs": [None, *rest["top_logprobs"]], "text_offset": [0, *rest["text_offset"]]}


@dataclass(frozen=True)
class PreparedCompletion:
    """What a completion request needs to run, as the preparation process returns it."""

    prompt_ids: list[int]
    params: SamplingParams
    echo: str  # the prompt's text when `echo`, else ""
    stream: bool
    include_usage: bool
    logprobs: bool
    echo_logprobs: int | None  # top-n of the prompt's own logprobs to return (echo with logprobs), else None
    score_only: bool  # max_tokens 0: score the prompt, generate nothing
    n: int = 1


def prepare_completion(checks: RequestChecks, body: bytes) -> PreparedCompletion:
    """Parse, validate and tokenize a completion request (in a preparation process)."""
    req = s.parse_body(s.CompletionRequest, body)
    checks.check_model(req.model)
    _reject_unsupported(req)
    if req.suffix:
        raise bad_request("suffix is not supported by this server", "suffix")
    if req.best_of not in (None, 1):
        raise bad_request(f"best_of={req.best_of} is not supported (only 1)", "best_of")
    prompt_ids = completion_prompt_ids(checks, req.prompt)
    # max_tokens=0 scores the prompt and generates nothing (log-likelihood requests: echo + logprobs)
    if req.max_tokens == 0 and not req.echo:
        raise bad_request("max_tokens=0 needs echo=true: it returns the prompt (and its logprobs) and generates nothing",
                          "max_tokens")
    max_tokens = None if req.max_tokens == 0 else req.max_tokens
    checks.check_lengths(len(prompt_ids), max_tokens, "max_tokens", "prompt")
    params = _sampling(checks, req, max_tokens, req.logprobs)
    checks.check_engine_request(prompt_ids, params)
    echo = checks.tokenizer.decode(prompt_ids) if req.echo else ""
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    return PreparedCompletion(prompt_ids, params, echo, req.stream, include_usage, req.logprobs is not None,
                              req.logprobs if req.echo else None, req.max_tokens == 0, req.n or 1)


async def completions(request: Request) -> Response:
    arrival = time.monotonic()
    state: ServerState = request.app.state.server
    job = await state.prepare(prepare_completion, await request.body())
    slot = state.admit()
    request_id = new_request_id("cmpl-")
    echoed = None
    if job.echo_logprobs is not None:
        try:
            scored = await state.engine.prompt_logprobs(job.prompt_ids, job.echo_logprobs)
        except ValueError as exc:  # the engine re-checks ids and length
            slot.release()
            raise bad_request(f"prompt: {exc}", "prompt") from None
        except BaseException:
            slot.release()
            raise
        echoed = echo_logprobs(state.tokenizer, job.prompt_ids, scored)
    outputs = None
    if not job.score_only:
        outputs = generate_choices(state, slot, request_id, job.prompt_ids, choice_params(job.params, job.n), arrival)
    else:
        slot.release()
    if job.stream:
        events = _completion_stream(state, request_id, outputs, job, echoed)
        body = stream_with_errors(events, lambda e: sse_data(openai_error_body(e)) + OPENAI_DONE)
        return EngineStreamingResponse(body, slot)

    async def full() -> dict[str, Any]:
        texts, logprobs = [job.echo] * job.n, [[] for _ in range(job.n)]
        last: list[RequestOutput | None] = [_prompt_only(request_id, len(job.prompt_ids))] * job.n
        if outputs is not None:
            last = [None] * job.n
            try:
                async for i, out in outputs:
                    texts[i] += out.text
                    logprobs[i] += out.logprobs or []
                    last[i] = out
            finally:
                await outputs.aclose()  # type: ignore[attr-defined]
        lasts = [final_output(out) for out in last]
        choices = [{
            "index": i,
            "text": texts[i],
            "logprobs": completion_logprobs(state.tokenizer, logprobs[i], len(job.echo), echoed) if job.logprobs else None,
            "finish_reason": lasts[i].finish_reason,
        } for i in range(job.n)]
        return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": state.model_name,
                "choices": choices, "usage": _total_usage(lasts)}

    return JSONResponse(await cancel_on_disconnect(request, full(), slot))


def _prompt_only(request_id: str, num_prompt_tokens: int) -> RequestOutput:
    """The outcome of a `max_tokens: 0` request: nothing generated, stopped by the length limit."""
    from kimi_k2.engine.core import RequestOutput  # here, not at import: the preparation processes import no torch

    return RequestOutput(request_id, [], finished=True, finish_reason="length", num_prompt_tokens=num_prompt_tokens)


async def _completion_stream(
    state: ServerState,
    request_id: str,
    outputs: AsyncIterator[tuple[int, RequestOutput]] | None,
    job: PreparedCompletion,
    echoed: dict[str, Any] | None,
) -> AsyncIterator[str]:
    created = int(time.time())
    usage_field: dict[str, Any] = {"usage": None} if job.include_usage else {}
    offsets = [len(job.echo)] * job.n

    def chunk(index: int, text: str, finish_reason: str | None = None, logprobs: Any = None) -> str:
        return sse_data({"id": request_id, "object": "text_completion", "created": created, "model": state.model_name,
                         "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}],
                         **usage_field})

    if job.echo:
        for i in range(job.n):
            yield chunk(i, job.echo, logprobs=echoed)
    last: list[RequestOutput | None] = [_prompt_only(request_id, len(job.prompt_ids))] * job.n
    if outputs is not None:
        last = [None] * job.n
        try:
            async for i, out in outputs:
                last[i] = out
                logprobs = completion_logprobs(state.tokenizer, out.logprobs or [], offsets[i]) if job.logprobs else None
                if out.text or logprobs:
                    yield chunk(i, out.text, logprobs=logprobs)
                offsets[i] += len(out.text)
                if out.finished:
                    yield chunk(i, "", final_output(out).finish_reason)
        finally:
            await outputs.aclose()  # type: ignore[attr-defined]
    else:
        for i in range(job.n):
            yield chunk(i, "", "length")
    lasts = [final_output(out) for out in last]
    if job.include_usage:
        yield sse_data({"id": request_id, "object": "text_completion", "created": created, "model": state.model_name,
                        "choices": [], "usage": _total_usage(lasts)})
    yield OPENAI_DONE
