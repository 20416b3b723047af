"""Questions a new user types first, asked of the nano K2 model: what it calls and what it answers.

The held-out evaluation (`evaluate.py`) measures copying over hundreds of generated questions; this is the
first-impression check the README reports: plain questions as people write them (the issue's own examples among
them: Paris, London, San Francisco, New York, 999 * 999, "how warm is it in Tokyo"), every place name one the
recipe holds out of training. Each is judged as `evaluate.py` judges a held-out question: decoded greedily with
the four demo tools declared, the call must be the expected tool, id and arguments, and the answer, given the
expected call and the tool's result, must state it. The result is sent as `kimi-k2 demo` sends it: JSON with its
letters as they are (`"São Paulo"`), the form the model was trained on; it does not decode `\\u00e3`-style
escapes (`json.dumps`' default), see docs/nano_k2.md.

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

import make_data  # noqa: E402  (beside this file)
from evaluate import judge  # noqa: E402

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


def conversation(question: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The question in the held-out file's form (`make_data.py`), the demo tools' own result as the tool's."""
    from kimi_k2.demo_tools import TOOLS, run_tool

    result = run_tool(tool, arguments)
    task = {"question": question, "name": tool, "arguments": arguments, "result": result, "answer": "",
            "facts": result_facts(tool, arguments, result)}  # fmt: skip
    return {"kind": "tool", "messages": make_data.tool_turn(task, 0)[:3], "tools": TOOLS, "expect": task}


def shown_call(output: str) -> str:
    from kimi_k2.tokenizer import parse_output

    return ", ".join(f"{c.name}({c.arguments})" for c in parse_output(output, reasoning=False).tool_calls) or "(no call)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the built-in nano model)")
    args = parser.parse_args()
    from kimi_k2 import LLM
    from kimi_k2.assets import default_model_dir

    rows = judge(LLM(args.model or default_model_dir()), [conversation(*q) for q in QUESTIONS])
    mark = lambda ok: "✓" if ok else "✗"  # noqa: E731
    print("| question | the model's call | | its answer to the result | |")
    print("|---|---|:-:|---|:-:|")
    for r in rows:
        answer = r["answer"].strip()
        print(f"| {r['question']} | `{shown_call(r['output'])}` | {mark(r['correct_call'])} | {answer} | {mark(r['correct_answer'])} |")
    calls, answers = sum(r["correct_call"] for r in rows), sum(r["correct_answer"] for r in rows)
    print(f"\n{calls} of {len(rows)} calls right, {answers} of {len(rows)} answers right")


if __name__ == "__main__":
    main()
