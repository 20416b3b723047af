"""Chat templates: our renderer and our built-in default, byte for byte against the official K2 templates.

The official templates' renderings of a fixed set of conversations (CASES, and 100 fixed random ones) are
checked in as goldens (tests/data/chat_template_golden.json, made once by tests/data/make_chat_template_golden.py),
so every clone checks the built-in default against them. Where the official files themselves exist
(../shared/kimi_k2_reference/, next to the repository in this workspace), the tests also render them directly:
in a plain HF-style jinja2 environment built here, independently of our code, with our renderer, and (when it
is importable) with transformers' own renderer, and check that the goldens are exactly their output.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jinja2
import jinja2.ext
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kimi_k2.tokenizer.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template
from kimi_k2.tokenizer.tokenizer import Tokenizer
from tests.tokenizer_corpus import train_test_tokenizer

REFERENCE_DIR = Path(__file__).parents[1].parent / "shared" / "kimi_k2_reference"
INSTRUCT = "chat_template.jinja"
INSTRUCT_0905 = "chat_template.0905.jinja"


def reference_template(name: str) -> str:
    path = REFERENCE_DIR / name
    if not path.is_file():
        pytest.skip(f"reference template not found: {path}")
    return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=8)
def _hf_style_template(source: str) -> jinja2.Template:
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


def hf_style_render(source: str, messages, tools=None, add_generation_prompt=False) -> str:
    """A plain rendering with HF's settings, independent of kimi_k2."""
    return _hf_style_template(source).render(
        messages=messages, tools=tools, add_generation_prompt=add_generation_prompt,
        bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
    )


def transformers_render(source: str, messages, tools=None, add_generation_prompt=False) -> str | None:
    try:
        from transformers.utils.chat_template_utils import render_jinja_template
    except ImportError:  # older or newer transformers without this function
        return None
    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=source, add_generation_prompt=add_generation_prompt,
        bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
    )
    return rendered[0]


def ours(source: str, messages, tools=None, add_generation_prompt=False) -> str:
    return render_chat_template(
        source, messages, tools=tools, add_generation_prompt=add_generation_prompt,
        bos_token="[BOS]", eos_token="[EOS]", pad_token="[PAD]", unk_token="[UNK]",
    )


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather information. 查询天气。",
        "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string", "description": "City name"}}},
    },
}
MCP_TOOL = {"type": "function", "function": {"name": "github.create-issue", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER_TOOL, MCP_TOOL]


def _call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = {
    "empty": [],
    "single_user": [{"role": "user", "content": "Hello!"}],
    "with_system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    "multi_turn": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "and 3+3?"},
        {"role": "assistant", "content": "6"},
    ],
    "tool_round": [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Weather in Beijing?"},
        {"role": "assistant", "content": "", "tool_calls": [_call("functions.get_weather:0", "get_weather", '{"city": "Beijing"}')]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "name": "get_weather", "content": '{"weather": "Sunny"}'},
    ],
    "parallel_calls_and_results": [
        {"role": "user", "content": "北京和上海的天气？"},
        {"role": "assistant", "content": "Let me check both.", "tool_calls": [
            _call("functions.get_weather:0", "get_weather", '{"city": "北京"}'),
            _call("functions.get_weather:1", "get_weather", {"city": "上海", "units": ["c", None, 1.5, True]}),
        ]},
        {"role": "tool", "tool_call_id": "functions.get_weather:0", "content": "晴"},
        {"role": "tool", "tool_call_id": "functions.get_weather:1", "name": "get_weather", "content": "多云"},
        {"role": "assistant", "content": "北京晴，上海多云。"},
    ],
    "names": [
        {"role": "system", "name": "policy", "content": "Be nice."},
        {"role": "user", "name": "alice", "content": "Hi, I'm Alice"},
        {"role": "assistant", "name": "kimi", "content": "Hi Alice"},
        {"role": "user", "name": "", "content": "empty name falls back to the role"},
    ],
    "list_of_parts": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in "},
            {"type": "image_url", "image_url": {"url": "data:,"}},
            {"type": "text", "text": "this picture?"},
            {"type": "image", "image": "x"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    ],
    "list_content_in_tool_turns": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": [{"type": "text", "text": "calling"}], "tool_calls": [_call("c1", "f", {"a": 1})]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "done"}]},
    ],
    "none_and_missing_content": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [_call("call_abc123", "mcp.tool-x", "{}")]},
        {"role": "tool", "tool_call_id": "call_abc123", "content": None},
        {"role": "assistant"},
    ],
    "non_ascii_and_markup_like_text": [
        {"role": "system", "content": "Ünïcödé ✓ 😀 <|im_end|> {{ not jinja }} {% raw %}"},
        {"role": "user", "content": "  leading and trailing whitespace \n\n"},
        {"role": "assistant", "content": "<think>inner</think>answer"},
    ],
    "assistant_prefill_last": [
        {"role": "user", "content": "Write a haiku"},
        {"role": "assistant", "content": "Autumn moon"},
    ],
    "other_roles": [{"role": "developer", "content": "dev"}, {"role": "user", "content": "u"}],
}
def case_id(name: str, tools: list | None, add_generation_prompt: bool) -> str:
    return f"{name}-{'tools' if tools else 'notools'}-{'gen' if add_generation_prompt else 'nogen'}"


CASES = [
    pytest.param(conv, tools, agp, id=case_id(name, tools, agp))
    for name, conv in CONVERSATIONS.items()
    for tools in (None, TOOLS)
    for agp in (True, False)
]
GOLDEN_FILE = Path(__file__).parent / "data" / "chat_template_golden.json"


@functools.lru_cache(maxsize=1)
def golden() -> dict:
    """The official templates' renderings of CASES and of fixed random conversations, checked in (made once by
    tests/data/make_chat_template_golden.py from the official files): what runs without ../shared."""
    return json.loads(GOLDEN_FILE.read_text(encoding="utf-8"))


CASE_BY_ID = {p.id: p.values for p in CASES}  # id -> (messages, tools, add_generation_prompt)


# --------------------------------------------------------------------------------------------------- official files
# These render the official files themselves: they run where ../shared/kimi_k2_reference/ exists (one skip each
# elsewhere); the goldens below carry the same facts into every clone.
@pytest.mark.parametrize("template_name", [INSTRUCT, INSTRUCT_0905])
def test_renderer_matches_plain_hf_rendering_of_the_official_templates(template_name):
    source = reference_template(template_name)
    for case, (messages, tools, add_generation_prompt) in CASE_BY_ID.items():
        expected = hf_style_render(source, messages, tools, add_generation_prompt)
        assert ours(source, messages, tools, add_generation_prompt) == expected, case
        via_transformers = transformers_render(source, messages, tools, add_generation_prompt)
        if via_transformers is not None:
            assert via_transformers == expected, case


def test_default_template_is_byte_identical_to_the_official_0905():
    source = reference_template(INSTRUCT_0905)
    for case, (messages, tools, add_generation_prompt) in CASE_BY_ID.items():
        expected = hf_style_render(source, messages, tools, add_generation_prompt)
        assert ours(DEFAULT_CHAT_TEMPLATE, messages, tools, add_generation_prompt) == expected, case


# --------------------------------------------------------------------------------------------------- default template


@pytest.mark.parametrize("case", list(CASE_BY_ID))
def test_default_template_renders_the_0905_goldens(case):
    """Our renderer, a plain HF-style environment and transformers' renderer all give the official rendering."""
    messages, tools, add_generation_prompt = CASE_BY_ID[case]
    expected = golden()["templates"][INSTRUCT_0905][case]
    assert ours(DEFAULT_CHAT_TEMPLATE, messages, tools, add_generation_prompt) == expected
    assert hf_style_render(DEFAULT_CHAT_TEMPLATE, messages, tools, add_generation_prompt) == expected
    via_transformers = transformers_render(DEFAULT_CHAT_TEMPLATE, messages, tools, add_generation_prompt)
    if via_transformers is not None:
        assert via_transformers == expected


def test_default_template_renders_the_0905_goldens_of_random_conversations():
    samples = golden()["random"]
    assert len(samples) >= 100
    for sample in samples:
        tools = TOOLS if sample["tools"] == "TOOLS" else sample["tools"]
        rendered = ours(DEFAULT_CHAT_TEMPLATE, sample["messages"], tools, sample["add_generation_prompt"])
        assert rendered == sample[INSTRUCT_0905], sample["messages"]


@pytest.mark.parametrize("template_name", [INSTRUCT, INSTRUCT_0905])
def test_goldens_are_the_official_renderings(template_name):
    """Where the official files exist, the checked-in goldens must be exactly their renderings."""
    source = reference_template(template_name)
    expected = golden()["templates"][template_name]
    assert set(expected) == set(CASE_BY_ID)
    for case, (messages, tools, add_generation_prompt) in CASE_BY_ID.items():
        assert hf_style_render(source, messages, tools, add_generation_prompt) == expected[case], case
    if template_name == INSTRUCT_0905:
        for sample in golden()["random"]:
            tools = TOOLS if sample["tools"] == "TOOLS" else sample["tools"]
            assert hf_style_render(source, sample["messages"], tools, sample["add_generation_prompt"]) == sample[template_name]


def test_default_template_is_written_for_this_project():
    assert "Written for this project" in DEFAULT_CHAT_TEMPLATE


def test_default_template_is_not_a_copy_of_the_official_file():
    assert DEFAULT_CHAT_TEMPLATE.strip() != reference_template(INSTRUCT_0905).strip()


_text = st.text(alphabet=st.sampled_from(list("ab 中😀\n<|>{}\"'")), max_size=12)
_part = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": _text}),
    st.fixed_dictionaries({"type": st.just("image_url"), "image_url": st.just({"url": "u"})}),
)
_content = st.one_of(st.none(), _text, st.lists(_part, max_size=3))
_arguments = st.one_of(_text, st.dictionaries(st.sampled_from(["city", "n", "ü"]), st.one_of(_text, st.integers()), max_size=2))
_tool_call = st.builds(_call, st.sampled_from(["functions.f:0", "call_x", "g:1"]), st.sampled_from(["f", "a.b-c"]), _arguments)
_message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer"]), "content": _content},
                          optional={"name": st.sampled_from(["", "bob", "李"])}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": _content, "tool_calls": st.lists(_tool_call, max_size=2)}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": _content, "tool_call_id": st.sampled_from(["functions.f:0", "call_x"])},
                          optional={"name": st.sampled_from(["f", ""])}),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_message, max_size=5), st.one_of(st.none(), st.just(TOOLS), st.just([])), st.booleans())
def test_default_template_matches_0905_on_random_conversations(messages, tools, add_generation_prompt):
    expected = hf_style_render(reference_template(INSTRUCT_0905), messages, tools, add_generation_prompt)
    assert ours(DEFAULT_CHAT_TEMPLATE, messages, tools, add_generation_prompt) == expected


def test_default_renders_the_spec_example():
    messages = CONVERSATIONS["tool_round"]
    tools_json = json.dumps([WEATHER_TOOL], ensure_ascii=False)
    expected = (
        f"<|im_system|>tool_declare<|im_middle|>\n  # Tools\n  {tools_json}<|im_end|>"
        "<|im_system|>system<|im_middle|>S<|im_end|><|im_user|>user<|im_middle|>Weather in Beijing?<|im_end|>"
        "<|im_assistant|>assistant<|im_middle|><|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0"
        '<|tool_call_argument_begin|>{"city": "Beijing"}<|tool_call_end|><|tool_calls_section_end|><|im_end|>'
        '<|im_system|>get_weather<|im_middle|>## Return of functions.get_weather:0\n    {"weather": "Sunny"}<|im_end|>'
        "<|im_assistant|>assistant<|im_middle|>"
    )
    assert ours(DEFAULT_CHAT_TEMPLATE, messages, [WEATHER_TOOL], True) == expected


def test_the_two_official_templates_differ_as_documented():
    case = case_id("multi_turn", None, False)  # S, U, A, U, A without a generation prompt
    old, new = golden()["templates"][INSTRUCT][case], golden()["templates"][INSTRUCT_0905][case]
    # line-18 bug of the older template: system (and tool) turns get "\n" after <|im_middle|>
    assert old.startswith("<|im_system|>system<|im_middle|>\nS<|im_end|>")
    assert new.startswith("<|im_system|>system<|im_middle|>S<|im_end|>")
    # 0905 leaves the last turn open without a generation prompt (assistant prefill)
    assert old.endswith("6<|im_end|>")
    assert new.endswith("<|im_assistant|>assistant<|im_middle|>6")


# --------------------------------------------------------------------------------------------------- semantics
def test_tojson_keeps_non_ascii():
    out = render_chat_template("{{ x | tojson }}", [], x={"city": "北京", "emoji": "😀"})
    assert out == '{"city": "北京", "emoji": "😀"}'


def test_raise_exception_is_a_value_error():
    with pytest.raises(ValueError, match="no system allowed"):
        ours("{% if messages[0].role == 'system' %}{{ raise_exception('no system allowed') }}{% endif %}",
             [{"role": "system", "content": "x"}])


@pytest.mark.parametrize("source", ["{{ messages.__class__.__mro__ }}", "{% set _ = messages.append(1) %}"])
def test_template_cannot_escape_the_sandbox(source):
    with pytest.raises(ValueError, match="unsafe"):
        ours(source, [{"role": "user", "content": "x"}])


def test_special_token_variables_and_loopcontrols():
    source = "{{ bos_token }}{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}{{ eos_token }}"
    out = ours(source, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    assert out == "[BOS]a[EOS]"


def test_syntax_error_says_where():
    with pytest.raises(ValueError, match="line 2"):
        ours("ok\n{% if %}", [])


def test_caller_messages_are_not_mutated():
    messages = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    snapshot = json.dumps(messages)
    ours(DEFAULT_CHAT_TEMPLATE, messages, TOOLS, True)
    assert json.dumps(messages) == snapshot


# --------------------------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    plain = Tokenizer.from_pretrained(train_test_tokenizer(tmp_path_factory.mktemp("plain"), vocab_size=1024))
    with_template = Tokenizer.from_pretrained(
        train_test_tokenizer(tmp_path_factory.mktemp("own"), vocab_size=1024, chat_template="{% for m in messages %}[{{ m.content }}]{% endfor %}")
    )
    return plain, with_template


def test_tokenizer_uses_the_checkpoint_template_and_defaults_to_ours(tokenizers):
    plain, with_template = tokenizers
    messages = [{"role": "user", "content": "hi"}]
    assert with_template.apply_chat_template(messages, tokenize=False) == "[hi]"
    assert plain.apply_chat_template(messages, tokenize=False) == ours(DEFAULT_CHAT_TEMPLATE, messages, None, True)
    assert plain.apply_chat_template(messages, tokenize=False, add_generation_prompt=False).endswith("hi")


def test_tokenizer_renders_a_given_template_like_the_official_one(tokenizers):
    plain, _ = tokenizers
    source = "{% for m in messages %}({{ m.content }}){% endfor %}" + DEFAULT_CHAT_TEMPLATE  # not the tokenizer's own
    messages = CONVERSATIONS["parallel_calls_and_results"]
    text = plain.apply_chat_template(messages, tools=TOOLS, tokenize=False, chat_template=source)
    expected = golden()["templates"][INSTRUCT_0905][case_id("parallel_calls_and_results", TOOLS, True)]
    assert text == "(北京和上海的天气？)(Let me check both.)(晴)(多云)(北京晴，上海多云。)" + expected
    ids = plain.apply_chat_template(messages, tools=TOOLS, chat_template=source)
    assert plain.decode(ids) == text
    assert ids.count(plain.token_to_id("<|tool_call_begin|>")) == 2
