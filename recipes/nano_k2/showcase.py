"""Questions a new user types first, asked of the nano K2 model: what it calls and what it answers.

The held-out evaluation (`evaluate.py`) measures copying over hundreds of generated questions; this is the
first-impression check the README reports: plain questions as people write them (the issue's own examples among
them: Paris, London, San Francisco, New York, 999 * 999, "how warm is it in Tokyo"), every place name one the
recipe holds out of training. Each question is decoded greedily with the four demo tools declared; the call must
be the expected tool with the expected arguments, and the answer, given the tool's result, must state it. The
result is sent as `kimi-k2 demo` sends it: JSON with its letters as they are (`"São Paulo"`), the form the model
was trained on; it does not decode `\\u00e3`-style escapes (`json.dumps`' default), see docs/nano_k2.md.

    python recipes/nano_k2/showcase.py                       # the shipped model; a markdown table
    python recipes/nano_k2/showcase.py --model DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate import same_arguments, states  # noqa: E402  (beside this file)

# (question, tool, arguments): what a new user types, and the call that answers it.
QUESTIONS: list[tuple[str, str, dict[str, Any]]] = [
    ("What's the weather in Paris?", "get_weather", {"city": "Paris"}),
    ("Is it raining in London?", "get_weather", {"city": "London"}),
    ("How warm is it in Tokyo?", "get_weather", {"city": "Tokyo"}),
    ("What's the weather like in San Francisco today?", "get_weather", {"city": "San Francisco"}),
    ("weather in new york", "get_weather", {"city": "new york"}),
    ("What time is it in São Paulo?", "get_time", {"city": "São Paulo"}),
    ("Do I need an umbrella in Kraków?", "get_weather", {"city": "Kraków"}),
    ("what's the hour in Nuuk?", "get_time", {"city": "Nuuk"}),
    ("How hot is it in Ho Chi Minh City right now?", "get_weather", {"city": "Ho Chi Minh City"}),
    ("What time is it in N'Djamena?", "get_time", {"city": "N'Djamena"}),
    ("Reykjavík weather?", "get_weather", {"city": "Reykjavík"}),
    ("Local time in Addis Ababa please", "get_time", {"city": "Addis Ababa"}),
    ("Compute 999 * 999", "calculator", {"expression": "999 * 999"}),
    ("What is 1234567 + 7654321?", "calculator", {"expression": "1234567 + 7654321"}),
    ("what's -12.5 times 8", "calculator", {"expression": "-12.5 * 8"}),
    ("Convert 26.2 miles to km", "convert_units", {"value": 26.2, "from_unit": "miles", "to_unit": "km"}),
    ("How many pounds is 72 kg?", "convert_units", {"value": 72, "from_unit": "kg", "to_unit": "lb"}),
    ("What is -40 °C in Fahrenheit?", "convert_units", {"value": -40, "from_unit": "celsius", "to_unit": "fahrenheit"}),
]


def result_facts(tool: str, arguments: dict[str, Any], result: dict[str, Any]) -> list[str]:
    """What an answer must state: the city with its condition and temperature or its time, or the number."""
    if tool == "get_weather":
        return [arguments["city"], result["condition"], f"{result['temperature_c']}°C"]
    if tool == "get_time":
        return [arguments["city"], result["time"]]
    return [json.dumps(result["result"])]


def ask(llm, question: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    from kimi_k2 import SamplingParams
    from kimi_k2.demo_tools import TOOLS, run_tool
    from kimi_k2.tokenizer import parse_output

    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    first = parse_output(llm.chat(messages, greedy, tools=TOOLS).text, reasoning=False)
    calls = [(c.name, c.arguments) for c in first.tool_calls]
    try:
        got = [(name, json.loads(args)) for name, args in calls]
    except json.JSONDecodeError:
        got = []
    call_ok = len(got) == 1 and got[0][0] == tool and same_arguments(got[0][1], arguments)
    result = run_tool(tool, arguments)
    messages += [
        {"role": "assistant", "content": "", "tool_calls": [{"id": f"functions.{tool}:0", "type": "function",
                                                             "function": {"name": tool, "arguments": json.dumps(arguments)}}]},
        {"role": "tool", "tool_call_id": f"functions.{tool}:0", "content": json.dumps(result, ensure_ascii=False)},
    ]  # fmt: skip
    answer = parse_output(llm.chat(messages, greedy, tools=TOOLS).text, reasoning=False).content.strip()
    answer_ok = all(states(answer, fact) for fact in result_facts(tool, arguments, result))
    shown = ", ".join(f"{name}({args})" for name, args in calls) or "(no call)"
    return {"question": question, "call": shown, "call_ok": call_ok, "answer": answer, "answer_ok": answer_ok}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the built-in nano model)")
    args = parser.parse_args()
    from kimi_k2 import LLM
    from kimi_k2.assets import default_model_dir

    llm = LLM(args.model or default_model_dir())
    rows = [ask(llm, *q) for q in QUESTIONS]
    mark = lambda ok: "✓" if ok else "✗"  # noqa: E731
    print("| question | the model's call | | its answer to the result | |")
    print("|---|---|:-:|---|:-:|")
    for r in rows:
        print(f"| {r['question']} | `{r['call']}` | {mark(r['call_ok'])} | {r['answer']} | {mark(r['answer_ok'])} |")
    calls, answers = sum(r["call_ok"] for r in rows), sum(r["answer_ok"] for r in rows)
    print(f"\n{calls} of {len(rows)} calls right, {answers} of {len(rows)} answers right")


if __name__ == "__main__":
    main()
