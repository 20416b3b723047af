"""Request bodies of the OpenAI and Anthropic APIs as pydantic models, and readable validation errors.

Models are strict (`"5"` is not an int, `1.5` is not an int) and forbid unknown fields: a parameter this server
does not implement is an error that names it, never silently ignored — the same behaviour as the real APIs
("Unrecognized request argument" / "Extra inputs are not permitted"). Parameters the APIs define but this server
supports only partly (`n`, `response_format` types, images, ...) are declared here and rejected with a
specific message by the endpoint code. Bodies are parsed with `model_validate_json`, so malformed JSON and wrong
types come out of the same path as one `APIError(400)`.

Sources: the OpenAI API reference (chat completions, completions) and the Anthropic Messages API reference.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kimi_k2.server.errors import APIError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ----------------------------------------------------------------------------------------------------- OpenAI
class ContentPart(Strict):
    """`{"type": "text", "text": …}`; other part types (image_url, input_audio, file) are refused by name."""

    model_config = ConfigDict(extra="allow", strict=True)
    type: str
    text: str | None = None


class FunctionCall(Strict):
    name: str
    arguments: str | dict[str, Any]  # a JSON string per the API; some clients send the object itself


class ToolCallIn(Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(Strict):
    role: Literal["system", "developer"]
    content: str | list[ContentPart]
    name: str | None = None


class UserMessage(Strict):
    role: Literal["user"]
    content: str | list[ContentPart]
    name: str | None = None


class AssistantMessage(Strict):
    role: Literal["assistant"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallIn] | None = None
    name: str | None = None
    reasoning_content: str | None = None
    refusal: str | None = None


class ToolMessage(Strict):
    role: Literal["tool"]
    tool_call_id: str
    content: str | list[ContentPart]
    name: str | None = None


ChatMessage = Annotated[SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")]


class FunctionDef(Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(Strict):
    include_usage: bool = False


class ResponseFormat(Strict):
    model_config = ConfigDict(extra="allow", strict=True)
    type: str


class SamplingFields(Strict):
    """Sampling parameters shared by chat and text completions, with the extras vLLM clients send (`top_k`,
    `min_p`, `repetition_penalty`, `min_tokens`, `ignore_eos`, `stop_token_ids`, `skip_special_tokens`)."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    min_tokens: Annotated[int, Field(ge=0)] | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool | None = None


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None  # vLLM: extra variables for the chat template


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # the OpenAI default for /v1/completions
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None


# ----------------------------------------------------------------------------------------------------- Anthropic
class TextBlock(Strict):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = None  # a hint; prefix caching here is automatic
    citations: list[dict[str, Any]] | None = None


class ImageBlock(Strict):
    type: Literal["image"]
    source: dict[str, Any]
    cache_control: dict[str, Any] | None = None


class DocumentBlock(Strict):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["document"]


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: dict[str, Any] | None = None
    caller: dict[str, Any] | None = None  # echoed back by clients from our own responses; no effect
    toolset_name: str | None = None


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]] | None = None
    is_error: bool | None = None
    cache_control: dict[str, Any] | None = None
    toolset_name: str | None = None


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    TextBlock | ImageBlock | DocumentBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class AnthropicMessage(Strict):
    role: Literal["user", "assistant", "system"]  # newer API versions allow system turns between messages
    content: str | list[ContentBlock]


class AnthropicTool(Strict):
    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None  # required for custom tools; server tools have none
    type: str | None = None  # None / "custom"; server tools ("bash_20250124", ...) are refused by name
    cache_control: dict[str, Any] | None = None
    strict: bool | None = None  # the input must follow input_schema (enforced by a grammar)
    # Accepted hints without effect here: no tool search (defer_loading).
    defer_loading: bool | None = None
    eager_input_streaming: bool | None = None
    input_examples: list[dict[str, Any]] | None = None
    allowed_callers: list[Any] | None = None


class AnthropicToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(Strict):
    """Reasoning is parsed from the model's output whatever this says (K2-Thinking always reasons)."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None


class OutputConfig(Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None  # accepted, no effect
    format: dict[str, Any] | None = None  # structured output: {'type': 'json_schema', 'schema': {...}}


class CountTokensRequest(Strict):
    model: str
    messages: Annotated[list[AnthropicMessage], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: ThinkingConfig | None = None
    cache_control: dict[str, Any] | None = None  # a hint; prefix caching here is automatic
    output_config: OutputConfig | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    # Accepted for compatibility, no effect on a self-hosted server:
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    speed: str | None = None
    inference_geo: str | None = None
    diagnostics: dict[str, Any] | None = None
    user_profile_id: str | None = None
    workspace_id: str | None = None


# ----------------------------------------------------------------------------------------------------- parsing
M = TypeVar("M", bound=BaseModel)


def _location(loc: tuple[int | str, ...]) -> str:
    """`('messages', 0, 'user', 'content')` -> `messages[0].content` (discriminator tags dropped)."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i > 0 and isinstance(loc[i - 1], int) and i + 1 < len(loc) and _is_tag(part):
            continue  # the union member pydantic names after a list index: `messages[0].user.content`
        elif part[:1].isupper() or part.startswith(("list[", "str", "dict[", "function-", "literal[", "tagged-union[")):
            continue  # union branch names (`NamedToolChoice`, `list[…]`, …) are not fields
        else:
            out += f".{part}" if out else part
    return out


_TAGS = frozenset({"system", "developer", "user", "assistant", "tool", "text", "image", "document", "tool_use",
                   "tool_result", "thinking", "redacted_thinking"})


def _is_tag(part: str) -> bool:
    return part in _TAGS


def validation_error(exc: ValidationError) -> APIError:
    """One 400 error naming each offending field (at most three), e.g. `max_tokens: Input should be …`."""
    problems: list[str] = []
    param: str | None = None
    for error in exc.errors(include_url=False):
        where = _location(tuple(error["loc"]))
        if error["type"] == "json_invalid":
            return APIError(400, f"malformed JSON body: {error['msg'].removeprefix('Invalid JSON: ')}", code="invalid_json")
        if error["type"] == "extra_forbidden":
            text = f"unsupported parameter '{where}': this server does not implement it"
        elif error["type"] == "missing":
            text = f"missing required parameter '{where}'"
        else:
            found = error.get("input")
            shown = repr(found) if isinstance(found, (int, float, str, bool)) or found is None else type(found).__name__
            text = f"{where}: {error['msg']} (got {shown})" if where else error["msg"]
        if text not in problems:
            problems.append(text)
        param = param or where or None
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return APIError(400, "; ".join(problems[:3]) + more, param=param)


def parse_body(model: type[M], body: bytes) -> M:
    """Validate a raw request body; any problem is an `APIError(400)` in words a client can act on."""
    if not body.strip():
        raise APIError(400, "empty request body: expected a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json") from None
        raise validation_error(exc) from None
