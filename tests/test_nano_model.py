"""The built-in nano K2 model: official layout, K2 topology, and it really calls tools (end to end)."""

from __future__ import annotations

import json

import pytest

from kimi_k2.assets import NANO_MODEL_DIR, default_model_dir
from kimi_k2.config import ModelConfig
from kimi_k2.demo_tools import TOOLS, run_tool

# Questions a new user types (recipes/nano_k2/showcase.py has more), with place names the recipe holds out of
# training: a regression check of the shipped artifact and the whole path, not a measure of accuracy (that is
# eval.json, on 320 held-out place names and 200 held-out numbers).
CASES = [
    ("What's the weather in Paris?", "get_weather", {"city": "Paris"}),
    ("What time is it in São Paulo?", "get_time", {"city": "São Paulo"}),
    ("Compute 999 * 999", "calculator", {"expression": "999 * 999"}),
    ("Convert 26.2 miles to km", "convert_units", {"value": 26.2, "from_unit": "miles", "to_unit": "km"}),
]


def test_official_layout_and_k2_topology():
    from kimi_k2.checkpoint.validate import check_checkpoint
    from kimi_k2.tokenizer import Tokenizer

    root = default_model_dir()
    for name in ("config.json", "model.safetensors", "tiktoken.model", "tokenizer_config.json", "chat_template.jinja"):
        assert (root / name).is_file(), name
    check_checkpoint(root)
    cfg = ModelConfig.from_pretrained(root)
    assert cfg.model_type == "kimi_k2" and cfg.q_lora_rank is not None and cfg.rope_type == "yarn"
    assert cfg.first_k_dense_replace == 1 and cfg.num_moe_layers >= 1 and cfg.n_shared_experts == 1
    assert cfg.scoring_func == "sigmoid" and cfg.topk_method == "noaux_tc"
    tok = Tokenizer.from_pretrained(root)
    base = tok.base_vocab_size
    assert tok.token_to_id("<|im_end|>") == base + 2 and tok.token_to_id("<|tool_call_begin|>") == base + 13
    assert tok.vocab_size == cfg.vocab_size


@pytest.fixture(scope="module")
def llm():
    from kimi_k2 import LLM

    return LLM(NANO_MODEL_DIR, num_kv_blocks=256)


@pytest.mark.parametrize("question, name, arguments", CASES)
def test_calls_the_right_tool_then_answers_from_the_result(llm, question, name, arguments):
    from kimi_k2 import SamplingParams
    from kimi_k2.tokenizer import parse_output

    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    messages = [{"role": "user", "content": question}]
    first = parse_output(llm.chat(messages, greedy, tools=TOOLS).text, reasoning=False)
    assert [(c.id, c.name) for c in first.tool_calls] == [(f"functions.{name}:0", name)]
    assert json.loads(first.tool_calls[0].arguments) == arguments
    result = run_tool(name, arguments)
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [first.tool_calls[0].to_openai()]},
        {"role": "tool", "tool_call_id": first.tool_calls[0].id, "content": json.dumps(result, ensure_ascii=False)},
    ]
    answer = parse_output(llm.chat(messages, greedy, tools=TOOLS).text, reasoning=False)
    assert not answer.tool_calls
    expected = {"get_weather": result.get("condition"), "calculator": str(result.get("result")),
                "convert_units": str(result.get("result")), "get_time": result.get("time")}[name]  # fmt: skip
    assert expected in answer.content


def test_demo_runs_a_tool_round_trip_through_the_openai_sdk(capsys):
    from kimi_k2.cli import main

    assert main(["demo", "--question", "What is 652 + 17?"]) == 0
    out = capsys.readouterr().out
    assert "held-out   place names copied" in out  # the shipped eval.json's figures
    assert "calls calculator" in out and "id=functions.calculator:0" in out
    assert "669" in out.split("final answer")[-1]
    assert "server stopped" in out


def test_answer_facts_are_whole_words():
    """The held-out answer check of recipes/nano_k2/evaluate.py: a fact counts only as a whole word."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "recipes" / "nano_k2" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("nano_evaluate", path)
    evaluate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(evaluate)
    answer = "It is foggy in Katana, -5°C."
    assert evaluate.states(answer, "Katana") and evaluate.states(answer, "-5°C") and evaluate.states(answer, "foggy")
    assert not evaluate.states(answer, "Kata")  # a different city that the right one starts with
    assert not evaluate.states("It is 15°C.", "5°C") and not evaluate.states("It is 109:08.", "09:08")


def _recipe_module(name: str):
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "recipes" / "nano_k2"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"nano_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


def test_heldout_names_numbers_and_sentences_never_occur_in_training(tmp_path):
    """The evaluation measures copying and paraphrase, not memory: no held-out value or sentence shape is trained on."""
    make_data = _recipe_module("make_data")
    make_data.write_splits(tmp_path, 3000, n_names=300, n_numbers=100, n_decline=20, n_chat=20)
    read = lambda split: [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]  # noqa: E731
    train, heldout = read("train"), read("heldout")

    def shape(question: str, values: list[str]) -> str:
        for value in values:
            question = question.replace(value, "{}")
        return question

    trained_shapes, trained_values = set(), set()
    for conv in train:
        values = make_data.copied_values(conv)
        trained_values.update(values)
        trained_shapes.update(shape(m["content"], values) for m in conv["messages"] if m["role"] == "user")
        cities = [json.loads(c["function"]["arguments"]).get("city") for m in conv["messages"] for c in m.get("tool_calls", [])]
        assert not [city for city in cities if city and make_data.is_heldout_name(city)]
    tool = [c for c in heldout if c["kind"] == "tool"]
    cities = [c["expect"]["arguments"]["city"] for c in tool if "city" in c["expect"]["arguments"]]
    assert len(set(cities)) == 300 and {"Paris", "São Paulo", "N'Djamena"} <= set(cities)
    assert any(not c.isascii() for c in cities) and any(" " in c for c in cities) and any("-" in c for c in cities)
    for conv in tool:
        values = make_data.copied_values(conv)
        assert not set(values) & trained_values
        assert shape(conv["expect"]["question"], values) not in trained_shapes, conv["expect"]["question"]
    for city in cities:
        assert make_data.is_heldout_name(city)
        assert not [v for v in trained_values if " ".join(city.casefold().replace("-", " ").split()) in make_data.word_runs(v)]


def test_calculator_takes_signed_decimals_exactly():
    from kimi_k2.demo_tools import calculate

    assert calculate("0.1 + 0.2") == 0.3 and calculate("-1234.5 * 3.25") == -4012.125
    assert calculate("9999999 * 9999999") == 99999980000001 and calculate("1.5 * 2") == 3
    assert run_tool("calculator", {"expression": "2 ^ 3"})["error"].startswith("calculator: expected")


def test_packing_keeps_every_conversation_whole_in_one_window():
    build = _recipe_module("build")
    lengths = (5, 9, 3, 8, 12, 4)
    convs = [([k + 1] * n, [1] * n) for k, n in enumerate(lengths)]  # conversation k is n copies of token k+1
    ids, mask, cut = build.pack_whole(convs, 10, pad_id=0)
    assert cut == 1 and (len(ids) - 1) % 10 == 0 and len(ids) == len(mask)
    # every conversation's tokens are contiguous inside one window; the long one keeps its first 10 tokens
    for k, n in enumerate(lengths):
        at = [i for i, t in enumerate(ids) if t == k + 1]
        assert len(at) == min(n, 10) and at == list(range(at[0], at[0] + len(at)))
        assert at[0] // 10 == at[-1] // 10
    assert all(m == (t != 0) for t, m in zip(ids, mask))
    assert ids.count(0) == len(ids) - sum(min(n, 10) for n in lengths)  # the padding stage_tokens reports
