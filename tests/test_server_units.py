"""Server building blocks without a server: validation messages, error bodies, SSE, metrics, auth, admission,
request conversion for both APIs, and the output assembler's tool-call ids."""

from __future__ import annotations

import pytest

from kimi_k2.server import schemas as s
from kimi_k2.server.anthropic_api import anthropic_messages, anthropic_tool_choice, anthropic_tools
from kimi_k2.server.auth import check_api_key, presented_key
from kimi_k2.server.chat import ChatPrompt, OutputAssembler, ToolChoice, check_tool_results, validate_function
from kimi_k2.server.errors import APIError, anthropic_error_body, error_body, openai_error_body
from kimi_k2.server.metrics import Histogram, ServerMetrics
from kimi_k2.server.openai_api import openai_messages, openai_tool_choice
from kimi_k2.server.queue import AdmissionQueue
from kimi_k2.server.sse import OPENAI_DONE, parse_sse, sse_data, sse_event
from kimi_k2.tokenizer.events import ContentDelta, ToolCallStart
from kimi_k2.tokenizer.tool_call_ids import ToolCallIdMap


def parse_error(model, body: bytes) -> APIError:
    with pytest.raises(APIError) as info:
        s.parse_body(model, body)
    assert info.value.status == 400
    return info.value


def test_validation_messages_name_the_field_and_value():
    error = parse_error(s.ChatCompletionRequest, b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}')
    assert error.param == "max_tokens" and "max_tokens: Input should be a valid integer (got '5')" in error.message
    error = parse_error(s.ChatCompletionRequest, b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "foo": 1}')
    assert error.message == "unsupported parameter 'foo': this server does not implement it"
    error = parse_error(s.ChatCompletionRequest, b'{"model": "m", "messages": [{"role": "user"}]}')
    assert "missing required parameter 'messages[0].content'" in error.message
    assert "malformed JSON" in parse_error(s.MessagesRequest, b'{"model": ').message
    assert "must be a JSON object" in parse_error(s.MessagesRequest, b"[1, 2]").message
    assert "empty request body" in parse_error(s.MessagesRequest, b"  ").message


def test_error_bodies_follow_each_api():
    error = APIError(429, "full", code="queue_full")
    assert openai_error_body(error) == {"error": {"message": "full", "type": "rate_limit_error", "param": None, "code": "queue_full"}}
    assert anthropic_error_body(error) == {"type": "error", "error": {"type": "rate_limit_error", "message": "full"}}
    assert error_body(APIError(401, "k"), "/v1/messages/count_tokens")["error"]["type"] == "authentication_error"
    assert error_body(APIError(500, "x"), "/v1/chat/completions")["error"]["type"] == "server_error"
    assert error_body(APIError(500, "x"), "/v1/messages")["error"]["type"] == "api_error"


def test_sse_framing_round_trips():
    text = sse_data({"a": "ü\nx"}) + sse_event("message_stop", {"type": "message_stop"}) + OPENAI_DONE
    assert parse_sse(text) == [(None, '{"a":"ü\\nx"}'), ("message_stop", '{"type":"message_stop"}'), (None, "[DONE]")]


def test_histogram_is_cumulative_with_inf_bucket():
    h = Histogram("h_seconds", "help", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    lines = list(h.render())
    assert 'h_seconds_bucket{le="0.1"} 2' in lines and 'h_seconds_bucket{le="1"} 3' in lines
    assert 'h_seconds_bucket{le="+Inf"} 4' in lines and "h_seconds_count 4" in lines and "h_seconds_sum 3.65" in lines


def test_latency_histograms_from_token_times():
    metrics = ServerMetrics(lambda: {"waiting": 3, "kv_blocks_used": 3, "kv_blocks_free": 9}, model_name='k2"x')
    metrics.observe_tokens([10.5, 10.5, 10.7], arrival=10.0)
    assert metrics.ttft.count == 1 and metrics.itl.count == 2 and metrics.e2e.count == 1
    text = metrics.render()
    assert 'kimi_k2_queue_length{model_name="k2\\"x"} 3' in text  # every series carries the escaped model name
    assert 'kimi_k2_kv_cache_usage_ratio{model_name="k2\\"x"} 0.25' in text
    assert 'kimi_k2_time_to_first_token_seconds_bucket{model_name="k2\\"x",le="0.5"} 1' in text
    assert 'kimi_k2_e2e_request_latency_seconds_count{model_name="k2\\"x"} 1' in text
    empty = ServerMetrics(lambda: {"kv_blocks_used": 0, "kv_blocks_free": 0}).render()
    assert 'kimi_k2_kv_cache_usage_ratio{model_name=""} 0' in empty  # no pool yet: 0, not a division by zero


def test_api_key_headers():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None
    check_api_key("/v1/messages", {"x-api-key": "k"}, "k")
    check_api_key("/health", {}, "k")
    check_api_key("/v1/messages", {}, None)
    with pytest.raises(APIError, match="missing API key") as info:
        check_api_key("/v1/models", {}, "k")
    assert info.value.status == 401
    with pytest.raises(APIError, match="invalid API key"):
        check_api_key("/v1/models", {"authorization": "Bearer nope"}, "k")


def test_admission_queue_bounds_in_flight_requests():
    queue = AdmissionQueue(max_running=2, max_queue=1)
    slots = [queue.admit() for _ in range(3)]
    assert queue.waiting == 1
    with pytest.raises(APIError) as info:
        queue.admit()
    assert info.value.status == 429 and "--max-queue 1" in info.value.message
    slots[0].release()
    slots[0].release()  # idempotent
    assert queue.in_flight == 2
    with queue.admit():
        assert queue.in_flight == 3
    assert queue.in_flight == 2


def test_openai_messages_convert_to_k2_form():
    req = s.ChatCompletionRequest.model_validate({
        "model": "m",
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "kind."}]},
            {"role": "user", "content": "hi", "name": "ann"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": {"x": "é"}}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "r"}]},
        ],
    })
    assert [{k: v for k, v in m.items() if k != "_source"} for m in openai_messages(req.messages)] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"x": "é"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "r"},
    ]
    assert openai_tool_choice("none", None) == ToolChoice("none")
    assert openai_tool_choice(s.NamedToolChoice.model_validate({"type": "function", "function": {"name": "f"}}), False) == \
        ToolChoice("function", "f", parallel=False)


def test_anthropic_blocks_convert_to_k2_form():
    req = s.MessagesRequest.model_validate({
        "model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}],
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "toolu_2", "name": "g", "input": {}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "here:"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "one"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True, "content": [{"type": "text", "text": "boom"}]}]},
        ],
    })
    messages = [{k: v for k, v in m.items() if k != "_source"} for m in anthropic_messages(req.system, req.messages)]
    assert messages == [
        {"role": "system", "content": "A\nB"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Let me look.", "reasoning_content": "hmm", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "one"},  # results first, right after the calls
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: boom"},
        {"role": "user", "content": "here:"},
    ]
    check_tool_results(messages)
    tools = anthropic_tools([s.AnthropicTool(name="f", description="d", input_schema={"type": "object"})])
    assert tools == [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    assert anthropic_tool_choice(s.AnthropicToolChoice(type="any", disable_parallel_tool_use=True)) == ToolChoice("required", parallel=False)


@pytest.mark.parametrize(
    ("name", "parameters", "needle"),
    [
        ("has space", None, "not a valid function name"),
        ("ns:tool", None, "not a valid function name"),  # ':' would break functions.{name}:{idx}
        ("f", [], "must be a JSON Schema object"),
        ("f", {"type": "object", "properties": {"a": {"type": "strin"}}}, "'strin' is not a JSON Schema type"),
        ("f", {"type": "object", "properties": []}, "properties"),
        ("f", {"type": "object", "required": "a"}, "required"),
    ],
)
def test_invalid_tool_schemas_are_refused(name, parameters, needle):
    with pytest.raises(APIError, match=needle):
        validate_function(name, parameters, "tools[0].function", "parameters")
    validate_function("github.create-issue", {"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, "t", "p")


def test_assembler_renumbers_a_repeated_tool_call_id():
    prompt = ChatPrompt([1], ToolCallIdMap(history_calls=1), {"functions.f:0", "call_x"})
    assembled = OutputAssembler(prompt)
    events = assembled.feed("<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argument_begin|>{}"
                            "<|tool_call_end|><|tool_call_begin|>functions.f:1<|tool_call_argument_begin|>{}<|tool_call_end|>")
    events += assembled.finish()
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [e.id for e in starts] == ["functions.f:1", "functions.f:2"]  # :0 is the client's; :1 then taken by the first
    assert assembled.finish_reason("stop") == "tool_calls" and assembled.finish_reason("length") == "length"


def test_assembler_starts_in_reasoning_after_a_prefilled_think():
    assembled = OutputAssembler(ChatPrompt([1], ToolCallIdMap(), set(), starts_in_reasoning=True))
    events = assembled.feed("let me think</think>Answer.") + assembled.finish()
    assert (assembled.reasoning, assembled.content) == ("let me think", "Answer.")
    assert not any(isinstance(e, ToolCallStart) for e in events)