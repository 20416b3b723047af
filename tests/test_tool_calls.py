"""Tool-call and reasoning parsing (complete and streaming), every SPEC §6 failure mode, and id mapping."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kimi_k2.tokenizer.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
from kimi_k2.tokenizer.events import (
    ContentDelta,
    ParsedOutput,
    ReasoningDelta,
    ToolCall,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    collect_events,
)
from kimi_k2.tokenizer.output_parser import OutputParser, parse_output
from kimi_k2.tokenizer.reasoning import ReasoningParser, split_reasoning
from kimi_k2.tokenizer.tokenizer import Tokenizer
from kimi_k2.tokenizer.tool_call_ids import is_k2_tool_call_id, map_tool_call_ids
from kimi_k2.tokenizer.tool_calls import TOOL_MARKERS, ToolCallParser, parse_tool_calls, tool_name_from_id
from tests.tokenizer_corpus import train_test_tokenizer

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"


def call(call_id: str, arguments: str) -> str:
    return f"{CB}{call_id}{AB}{arguments}{CE}"


def stream(text_chunks, parser=None):
    parser = parser or OutputParser()
    events = []
    for chunk in text_chunks:
        events.extend(parser.feed(chunk))
    return events + parser.finish()


# --------------------------------------------------------------------------------------------------- well-formed
def test_content_then_parallel_calls():
    text = "Checking both." + SB + call("functions.get_weather:0", '{"city": "北京"}') + call("functions.get_weather:1", '{"city": "上海"}') + SE
    out = parse_output(text)
    assert out.content == "Checking both."
    assert [c.to_openai() for c in out.tool_calls] == [
        {"id": "functions.get_weather:0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "北京"}'}},
        {"id": "functions.get_weather:1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "上海"}'}},
    ]
    assert out.errors == [] and out.tool_calls[1].parsed_arguments() == {"city": "上海"}
    assert out.to_openai_message()["content"] == "Checking both."


def test_plain_answer_has_no_tool_calls():
    out = parse_output("Just text, with <angle> brackets and <| pipes |>.")
    assert out == ParsedOutput("Just text, with <angle> brackets and <| pipes |>.", "", [])
    assert out.to_openai_message() == {"role": "assistant", "content": out.content}


MOONSHOT_SECTION = re.compile(r"<\|tool_calls_section_begin\|>(.*?)<\|tool_calls_section_end\|>", re.DOTALL)
MOONSHOT_CALL = re.compile(
    r"<\|tool_call_begin\|>\s*(?P<tool_call_id>[\w\.]+:\d+)\s*<\|tool_call_argument_begin\|>\s*(?P<function_arguments>.*?)\s*<\|tool_call_end\|>",
    re.DOTALL,
)


def moonshot_reference(text: str) -> list[tuple[str, str, str]]:
    """Moonshot's own guidance (SPEC §6): section regex, call regex, name between the first '.' and the ':'."""
    calls = []
    for section in MOONSHOT_SECTION.findall(text):
        for m in MOONSHOT_CALL.finditer(section):
            call_id = m["tool_call_id"]
            calls.append((call_id, call_id.split(".", 1)[1].split(":")[0], m["function_arguments"]))
    return calls


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet=st.sampled_from(list('ab 中"\\\n<|>')), max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(["a", "city", "ü"]), children, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab 中\n<>")), max_size=20),
    st.lists(st.tuples(st.sampled_from(["get_weather", "search", "a_b"]), _json_value, st.sampled_from(["", " ", "\n"])), min_size=1, max_size=3),
)
def test_well_formed_output_agrees_with_moonshot_regex(content, calls):
    body = "".join(call(f"functions.{name}:{i}", ws + json.dumps(args, ensure_ascii=False) + ws) for i, (name, args, ws) in enumerate(calls))
    text = content + SB + body + SE
    out = parse_tool_calls(text)
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == moonshot_reference(text)
    assert out.content == content and out.errors == []


# --------------------------------------------------------------------------------------------------- failure modes
def test_missing_section_end_keeps_finished_calls():
    out = parse_output("Hi" + SB + call("functions.f:0", '{"a": 1}'))
    assert out.content == "Hi" and [(c.id, c.arguments, c.error) for c in out.tool_calls] == [("functions.f:0", '{"a": 1}', None)]


def test_output_cut_inside_arguments_is_surfaced_not_dropped():
    out = parse_output(SB + CB + "functions.f:0" + AB + '{"a": ')
    (c,) = out.tool_calls
    assert c.arguments == '{"a":' and "ended inside the tool call" in c.error and "not valid JSON" in c.error


def test_output_cut_inside_the_id():
    out = parse_output("x" + SB + CB + "functions.get_wea")
    assert [(c.id, c.name, c.arguments) for c in out.tool_calls] == [("functions.get_wea", "get_wea", "")]
    assert "ended inside" in out.tool_calls[0].error
    assert parse_output("x" + SB + CB).tool_calls == []  # nothing to surface: no id, no arguments


def test_call_without_section():
    out = parse_output("text " + call("functions.f:0", "{}") + " more")
    assert out.content == "text  more" and [c.name for c in out.tool_calls] == ["f"]


def test_singular_section_markers():
    out = parse_output("a<|tool_call_section_begin|>" + call("functions.f:0", "{}") + "<|tool_call_section_end|>b")
    assert out.content == "ab" and out.tool_calls[0].id == "functions.f:0"


def test_names_with_dots_and_hyphens():
    out = parse_output(SB + call("functions.github.create-issue:0", '{"title": "x"}') + call("functions.mcp-server.tool.v2:1", "{}") + SE)
    assert [c.name for c in out.tool_calls] == ["github.create-issue", "mcp-server.tool.v2"]


def test_ids_without_functions_prefix():
    out = parse_output(SB + call("get_weather:0", "{}") + call(" search ", "{}") + call("github.create-issue:3", "{}") + SE)
    assert [(c.id, c.name) for c in out.tool_calls] == [("get_weather:0", "get_weather"), ("search", "search"), ("github.create-issue:3", "github.create-issue")]


@pytest.mark.parametrize(("call_id", "name"), [
    ("functions.get_weather:0", "get_weather"), ("functions.a.b-c:12", "a.b-c"), ("get_weather:1", "get_weather"),
    ("functions.f", "f"), ("f:x", "f:x"), ("functions.ns:tool:2", "ns:tool"),
])
def test_tool_name_from_id(call_id, name):
    assert tool_name_from_id(call_id) == name


def test_invalid_json_arguments_are_surfaced_verbatim():
    out = parse_output(SB + call("functions.f:0", "{'single': quotes}") + call("functions.g:1", '{"ok": true}') + SE)
    bad, good = out.tool_calls
    assert bad.arguments == "{'single': quotes}" and "not valid JSON" in bad.error
    assert good.error is None and len(out.errors) == 1
    with pytest.raises(ValueError, match="functions.f:0"):
        bad.parsed_arguments()


def test_text_after_the_section_is_content():
    out = parse_output("before" + SB + call("functions.f:0", "{}") + SE + "\n\nafter")
    assert out.content == "before\n\nafter"


def test_merged_calls_are_split_at_the_next_call():
    out = parse_output(SB + CB + "functions.a:0" + AB + '{"x": 1}' + CB + "functions.b:1" + AB + '{"y": 2}' + CE + SE)
    assert [(c.name, c.arguments, c.error) for c in out.tool_calls] == [("a", '{"x": 1}', None), ("b", '{"y": 2}', None)]


def test_two_json_objects_in_one_call_are_an_error():
    (c,) = parse_output(SB + call("functions.a:0", '{"x": 1}{"y": 2}') + SE).tool_calls
    assert c.arguments == '{"x": 1}{"y": 2}' and "not valid JSON" in c.error


def test_call_without_argument_marker():
    out = parse_output(SB + CB + "functions.a:0" + CE + call("functions.b:1", "{}") + SE)
    assert [(c.id, c.arguments, c.error is None) for c in out.tool_calls] == [("functions.a:0", "", False), ("functions.b:1", "{}", True)]


def test_stray_markers_never_reach_content():
    text = "a" + CE + "b" + AB + "c" + SE + "d" + SB + SB + "   " + SE + "e"
    out = parse_output(text)
    assert out.content == "abcde" and out.tool_calls == []


def test_whitespace_between_tool_markup_is_dropped_and_arguments_are_stripped():
    text = "Hi\n" + SB + "\n  " + CB + "  functions.f:0 \n" + AB + '\n  {"a": "  x  "}  \n' + CE + "\n" + SE + "\n"
    out = parse_output(text)
    assert out.content == "Hi\n" and out.tool_calls[0].id == "functions.f:0" and out.tool_calls[0].arguments == '{"a": "  x  "}'


def test_im_end_ends_the_message():
    out = parse_output("done<|im_end|>garbage" + SB + call("functions.f:0", "{}"))
    assert out == ParsedOutput("done", "", [])
    out = parse_output(SB + CB + "functions.f:0" + AB + '{"a": 1}<|im_end|>')
    assert out.tool_calls[0].arguments == '{"a": 1}' and out.tool_calls[0].error is None


def test_empty_content_with_tool_calls_maps_to_openai_null():
    message = parse_output(SB + call("functions.f:0", "{}") + SE).to_openai_message()
    assert message["content"] is None and message["tool_calls"][0]["id"] == "functions.f:0"


# --------------------------------------------------------------------------------------------------- streaming
def test_marker_prefix_is_held_back_until_known():
    parser = ToolCallParser()
    assert parser.feed("Hello <|tool_ca") == [ContentDelta("Hello ")]
    assert parser.feed("ll_begin|>functions.f:0") == []
    assert parser.feed(AB + '{"a"') == [ToolCallStart(0, "functions.f:0", "f"), ToolCallArgsDelta(0, '{"a"')]
    assert parser.feed(": 1}  ") == [ToolCallArgsDelta(0, ": 1}")]
    assert parser.feed(CE) == [ToolCallEnd(0, None)]
    assert parser.finish() == []


def test_text_that_only_looked_like_a_marker_is_released():
    parser = ToolCallParser()
    assert parser.feed("a <|tool") == [ContentDelta("a ")]
    assert parser.feed("box|>") == [ContentDelta("<|toolbox|>")]
    assert parser.feed("<|tool_call") == []
    assert parser.finish() == [ContentDelta("<|tool_call")]


def test_event_order_per_call():
    text = "x" + SB + call("functions.a:0", '{"k": [1, 2]}') + call("functions.b:1", "oops") + SE
    events = stream(list(text))
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    ends = [e for e in events if isinstance(e, ToolCallEnd)]
    assert [s.index for s in starts] == [0, 1] and [e.index for e in ends] == [0, 1]
    for index in (0, 1):
        positions = [i for i, e in enumerate(events) if getattr(e, "index", None) == index]
        kinds = [type(events[i]) for i in positions]
        assert kinds[0] is ToolCallStart and kinds[-1] is ToolCallEnd and set(kinds[1:-1]) <= {ToolCallArgsDelta}
    assert ends[0].error is None and "not valid JSON" in ends[1].error


PIECES = [
    # text, including things that look like the start of markers
    "Hello", " ", "\n", "中文", "😀", "<", "<|", "|>", "<|tool", "<|im_", "<thi", "</", "{", "}", '"', ":", "a.b-c",
    # markers and their singular variants
    SB, SE, CB, AB, CE, "<|tool_call_section_begin|>", "<|tool_call_section_end|>", "<think>", "</think>", "<|im_end|>",
    # ids and arguments
    "functions.get_weather:0", "github.create-issue:1", " functions.x:2 ", '{"city": "北京"}', " {\"a\": [1, 2]} ", "{bad",
]
_structured = st.lists(st.sampled_from(PIECES), max_size=25).map("".join)
_well_formed = st.builds(
    lambda reasoning, content, calls, tail: (f"<think>{reasoning}</think>" if reasoning else "") + content + SB
    + "".join(call(f"functions.{n}:{i}", a) for i, (n, a) in enumerate(calls)) + SE + tail,
    st.text(alphabet=st.sampled_from(list("ab <\n")), max_size=10),
    st.text(alphabet=st.sampled_from(list("ab <|>\n")), max_size=10),
    st.lists(st.tuples(st.sampled_from(["f", "a.b-c"]), st.sampled_from(['{"x": 1}', " {} ", "{bad", "[]"])), max_size=3),
    st.sampled_from(["", " tail", "<|im_end|>"]),
)


def _random_chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_structured, _well_formed), st.lists(st.integers(0, 10_000), max_size=12), st.booleans(), st.booleans())
def test_any_chunking_gives_the_complete_result(text, cuts, reasoning, starts_in_reasoning):
    expected = parse_output(text, reasoning=reasoning, starts_in_reasoning=starts_in_reasoning)
    events = stream(_random_chunks(text, cuts), OutputParser(reasoning, starts_in_reasoning))
    assert collect_events(events) == expected
    content = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert not any(marker in content for marker in TOOL_MARKERS)
    if reasoning:
        thought = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
        assert not any(marker in thought for marker in _REASONING_MARKERS)
    assert all(e.text for e in events if isinstance(e, (ContentDelta, ReasoningDelta)))  # no empty deltas


@settings(max_examples=200, deadline=None)
@given(_structured, st.lists(st.integers(0, 10_000), max_size=12))
def test_any_chunking_tool_parser_alone(text, cuts):
    parser = ToolCallParser()
    events = [e for chunk in _random_chunks(text, cuts) for e in parser.feed(chunk)] + parser.finish()
    assert collect_events(events) == parse_tool_calls(text)


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer.from_pretrained(train_test_tokenizer(tmp_path_factory.mktemp("tok"), vocab_size=1024))


def test_token_by_token_streaming_through_the_detokenizer(tok):
    text = ("<think>用户想知道天气 😀</think>我来查一下。" + SB + call("functions.get_weather:0", '{"city": "北京"}')
            + call("functions.github.create-issue:1", '{"title": "bug 🐛"}') + SE)
    ids = tok.encode(text, allow_special=True)
    assert tok.token_to_id(CB) in ids
    detok, parser = tok.detokenizer(), OutputParser()
    events = [e for i in ids for e in parser.feed(detok.feed(i))]
    events += parser.feed(detok.finish()) + parser.finish()
    out = collect_events(events)
    assert out == parse_output(text)
    assert out.reasoning_content == "用户想知道天气 😀" and out.content == "我来查一下。"
    assert [c.name for c in out.tool_calls] == ["get_weather", "github.create-issue"]


# --------------------------------------------------------------------------------------------------- reasoning
def test_split_reasoning():
    assert split_reasoning("<think>let me think</think>\n\nThe answer is 4.") == ("let me think", "\n\nThe answer is 4.")
    assert split_reasoning("  \n<think>r</think>a") == ("r", "a")
    assert split_reasoning("no reasoning here") == ("", "no reasoning here")
    assert split_reasoning("  ") == ("", "  ")


def test_prefilled_think_starts_in_reasoning():
    assert split_reasoning("thinking...</think>answer", starts_in_reasoning=True) == ("thinking...", "answer")


def test_reasoning_cut_off_stays_reasoning():
    assert split_reasoning("<think>still thinking") == ("still thinking", "")


def test_think_tags_never_reach_content():
    assert split_reasoning("a</think>b<think>c</think>d") == ("c", "abd")


def test_reasoning_disabled_leaves_tags_in_content():
    assert parse_output("<think>x</think>y", reasoning=False).content == "<think>x</think>y"


def test_reasoning_streams_deltas():
    parser = ReasoningParser()
    assert parser.feed("<thi") == []
    assert parser.feed("nk>abc</th") == [ReasoningDelta("abc")]
    assert parser.feed("ink>answer") == [ContentDelta("answer")]
    assert parser.finish() == []


_REASONING_MARKERS = (*TOOL_MARKERS, "<think>", "</think>")
_unclosed_thinking = st.builds(
    lambda prefix, reasoning, opener, calls, tail: prefix + reasoning + opener
    + "".join(call(f"functions.{n}:{i}", a) for i, (n, a) in enumerate(calls)) + SE + tail,
    st.sampled_from(["<think>", " <think>", ""]),
    st.text(alphabet=st.sampled_from(list("ab <|>/\n思")), max_size=12),
    st.sampled_from([SB, "<|tool_call_section_begin|>", ""]),  # "": the call marker itself ends the reasoning
    st.lists(st.tuples(st.sampled_from(["get_weather", "a.b-c"]), st.sampled_from(['{"x": 1}', "{}"])), min_size=1,
             max_size=3),
    st.sampled_from(["", "<|im_end|>", "<think>more"]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_unclosed_thinking, st.lists(st.integers(0, 10_000), max_size=12))
def test_calls_after_an_unclosed_think_are_calls_with_any_chunking(text, cuts):
    starts_in_reasoning = not text.lstrip().startswith("<think>")  # the prompt ended inside a prefilled <think>
    complete = parse_output(text, starts_in_reasoning=starts_in_reasoning)
    events = stream(_random_chunks(text, cuts), OutputParser(True, starts_in_reasoning))
    assert collect_events(events) == complete
    expected = [(n, json.loads(a)) for n, a in re.findall(r"functions\.([\w.-]+):\d+<\|tool_call_argument_begin\|>(\{[^}]*\})", text)]
    assert [(c.name, json.loads(c.arguments)) for c in complete.tool_calls] == expected
    assert all(c.error is None for c in complete.tool_calls)
    for field in (complete.content, complete.reasoning_content):
        assert not any(marker in field for marker in _REASONING_MARKERS)


def test_unclosed_think_then_call_is_a_call_not_reasoning():
    out = parse_output("<think>I should look it up" + SB + call("functions.get_weather:0", '{"city": "Oslo"}') + SE)
    assert out.reasoning_content == "I should look it up" and out.content == ""
    assert [(c.name, c.arguments) for c in out.tool_calls] == [("get_weather", '{"city": "Oslo"}')]
    bare = parse_output("checking" + call("functions.f:0", "{}"), starts_in_reasoning=True)
    assert bare.reasoning_content == "checking" and [c.name for c in bare.tool_calls] == ["f"]


def test_reasoning_then_tool_calls():
    out = parse_output("<think>need weather</think>" + SB + call("functions.get_weather:0", '{"city": "Paris"}') + SE)
    assert out.reasoning_content == "need weather" and out.content == "" and out.tool_calls[0].name == "get_weather"
    assert out.to_openai_message()["reasoning_content"] == "need weather"


# --------------------------------------------------------------------------------------------------- id mapping
def _history():
    return [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc123", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_def456", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_def456", "content": "rain"},
        {"role": "tool", "tool_call_id": "call_abc123", "content": "sun"},
        {"role": "assistant", "content": "Sun in Paris, rain in Rome."},
        {"role": "user", "content": "Open an issue about it."},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "toolu_01XYZ", "type": "function", "function": {"name": "github.create-issue", "arguments": {"title": "weather"}}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_01XYZ", "name": "github", "content": "created #1"},
    ]


def test_client_ids_become_k2_ids_with_a_conversation_wide_counter():
    mapped, id_map = map_tool_call_ids(_history())
    ids = [c["id"] for m in mapped if m.get("tool_calls") for c in m["tool_calls"]]
    assert ids == ["functions.get_weather:0", "functions.get_weather:1", "functions.github.create-issue:2"]
    assert [m["tool_call_id"] for m in mapped if m["role"] == "tool"] == ["functions.get_weather:1", "functions.get_weather:0", "functions.github.create-issue:2"]
    assert id_map.history_calls == 3
    assert id_map.to_client("functions.get_weather:1") == "call_def456" and id_map.to_k2("toolu_01XYZ") == "functions.github.create-issue:2"
    assert id_map.to_client("functions.unknown:9") == "functions.unknown:9"


def test_tool_result_names_are_filled_from_the_call():
    mapped, _ = map_tool_call_ids(_history())
    assert [m.get("name") for m in mapped if m["role"] == "tool"] == ["get_weather", "get_weather", "github"]
    unfilled, _ = map_tool_call_ids(_history(), fill_tool_names=False)
    assert [m.get("name") for m in unfilled if m["role"] == "tool"] == [None, None, "github"]


def test_mapping_is_stateless_and_does_not_mutate_input():
    history = _history()
    snapshot = json.dumps(history)
    assert map_tool_call_ids(history)[0] == map_tool_call_ids(history)[0]
    assert json.dumps(history) == snapshot


def test_k2_ids_are_kept_and_never_collide():
    history = [
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "function": {"name": "f", "arguments": "{}"}},
            {"id": "functions.f:0", "function": {"name": "f", "arguments": "{}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a"},
        {"role": "tool", "tool_call_id": "functions.f:0", "content": "b"},
        {"role": "tool", "tool_call_id": "orphan", "content": "c"},
    ]
    mapped, id_map = map_tool_call_ids(history)
    assert [c["id"] for c in mapped[0]["tool_calls"]] == ["functions.f:1", "functions.f:0"]
    assert [m["tool_call_id"] for m in mapped[1:]] == ["functions.f:1", "functions.f:0", "orphan"]
    assert id_map.to_client("functions.f:1") == "call_1"


def test_id_with_wrong_function_name_is_rewritten():
    mapped, _ = map_tool_call_ids([{"role": "assistant", "tool_calls": [{"id": "functions.other:0", "function": {"name": "f", "arguments": "{}"}}]}])
    assert mapped[0]["tool_calls"][0]["id"] == "functions.f:0"
    assert is_k2_tool_call_id("functions.a.b-c:3", "a.b-c") and not is_k2_tool_call_id("call_x")


def test_rendered_history_shows_the_model_only_its_own_ids():
    mapped, _ = map_tool_call_ids(_history())
    text = render_chat_template(DEFAULT_CHAT_TEMPLATE, mapped, add_generation_prompt=True)
    assert "call_abc" not in text and "call_def" not in text and "toolu_" not in text
    assert "<|tool_call_begin|>functions.get_weather:1<|tool_call_argument_begin|>" in text
    assert "<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:1\n    rain<|im_end|>" in text
    assert '<|tool_call_argument_begin|>{"title": "weather"}<|tool_call_end|>' in text


def test_model_output_ids_go_back_to_the_client_verbatim():
    out = parse_output(SB + call("functions.get_weather:3", '{"city": "Oslo"}') + SE)
    assert out.tool_calls == [ToolCall("functions.get_weather:3", "get_weather", '{"city": "Oslo"}', None)]


def test_call_with_empty_arguments_means_no_arguments():
    from kimi_k2.tokenizer.tool_calls import parse_tool_calls

    text = (
        "<|tool_calls_section_begin|><|tool_call_begin|>functions.list_files:0<|tool_call_argument_begin|>"
        "<|tool_call_end|><|tool_calls_section_end|>"
    )
    parsed = parse_tool_calls(text)
    assert parsed.errors == []
    assert [(c.id, c.name, c.arguments, c.error) for c in parsed.tool_calls] == [("functions.list_files:0", "list_files", "{}", None)]
    # chunked: the same result
    from kimi_k2.tokenizer.events import collect_events
    from kimi_k2.tokenizer.tool_calls import ToolCallParser

    parser = ToolCallParser()
    events = [e for i in range(0, len(text), 7) for e in parser.feed(text[i : i + 7])] + parser.finish()
    assert collect_events(events).tool_calls == parsed.tool_calls
