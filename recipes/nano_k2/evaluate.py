"""Held-out evaluation of the nano K2 demo model: does it call the right tool with the right arguments, and
does it answer from the tool's result?

For every held-out tool conversation (names and numbers never seen in training) the model is given the
declared tools and the user's question and decodes greedily through the engine. The output is parsed with the
project's K2 tool-call parser; a call counts as correct when it parses, names the expected tool, has the
expected call id form and its JSON arguments equal the expected ones. Then the expected tool result is sent
back (as the conversation continues in `make_data.py`) and the final answer counts as correct when it
states every fact of the result, each as a whole word: the city with its condition and temperature or its time,
the number.

    python recipes/nano_k2/evaluate.py --model kimi_k2/assets/nano-k2 --data runs/nano_k2/data/heldout.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any


def tool_turn_prefix(conv: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages up to and including the (first) user question."""
    messages = conv["messages"]
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: first_user + 1]


def same_arguments(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    if set(got) != set(expected):
        return False
    for key, value in expected.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not isinstance(got[key], (int, float)) or float(got[key]) != float(value):
                return False
        elif got[key] != value:
            return False
    return True


def states(answer: str, fact: str) -> bool:
    """Whether `fact` occurs in `answer` as a whole word ("Kata" is not stated by "Katana", "5°C" not by "15°C")."""
    return re.search(rf"(?<![A-Za-z0-9]){re.escape(fact)}(?![A-Za-z0-9])", answer) is not None


def evaluate(model_dir: Path, data: Path, limit: int | None = None) -> dict[str, Any]:
    from kimi_k2 import LLM, SamplingParams
    from kimi_k2.tokenizer import parse_output

    llm = LLM(model_dir)
    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    conversations = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    conversations = [c for c in conversations if c["kind"] == "tool"][:limit]

    prompts = [llm.encode_chat(tool_turn_prefix(c), c["tools"]) for c in conversations]
    first = llm.generate(prompts, greedy)
    records: list[dict[str, Any]] = []
    followups: list[list[int]] = []
    for conv, out in zip(conversations, first):
        expect = conv["expect"]
        parsed = parse_output(out.text, reasoning=False)
        call = parsed.tool_calls[0] if parsed.tool_calls else None
        arguments = None
        if call is not None and call.error is None:
            try:
                arguments = json.loads(call.arguments)
            except json.JSONDecodeError:
                arguments = None
        correct_call = (
            call is not None
            and len(parsed.tool_calls) == 1
            and call.name == expect["name"]
            and call.id == f"functions.{expect['name']}:0"
            and isinstance(arguments, dict)
            and same_arguments(arguments, expect["arguments"])
        )
        records.append(
            {"question": expect["question"], "expected": {"name": expect["name"], "arguments": expect["arguments"]},
             "output": out.text, "correct_call": correct_call}
        )  # fmt: skip
        # Continue the conversation with the expected call and its result, as a client running the tool would.
        history = tool_turn_prefix(conv) + conv["messages"][len(tool_turn_prefix(conv)) : len(tool_turn_prefix(conv)) + 2]
        followups.append(llm.encode_chat(history, conv["tools"]))
    answers = llm.generate(followups, greedy)
    for record, conv, out in zip(records, conversations, answers):
        answer = parse_output(out.text, reasoning=False).content
        record["answer"] = answer
        record["correct_answer"] = all(states(answer, fact) for fact in conv["expect"]["facts"])
    n = len(records)
    by_tool: dict[str, list[bool]] = {}
    for r in records:
        by_tool.setdefault(r["expected"]["name"], []).append(r["correct_call"])
    return {
        "heldout_tool_prompts": n,
        "tool_call_accuracy": sum(r["correct_call"] for r in records) / n,
        "answer_accuracy": sum(r["correct_answer"] for r in records) / n,
        "tool_call_accuracy_by_tool": {k: sum(v) / len(v) for k, v in sorted(by_tool.items())},
        "examples": records[:5],
        "failures": [r for r in records if not (r["correct_call"] and r["correct_answer"])][:20],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    result = evaluate(args.model, args.data, args.limit)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(
        f"held-out tool prompts: {result['heldout_tool_prompts']}  "
        f"tool-call accuracy: {result['tool_call_accuracy']:.1%}  answer accuracy: {result['answer_accuracy']:.1%}"
    )
    for name, acc in result["tool_call_accuracy_by_tool"].items():
        print(f"  {name:<14} {acc:.1%}")


if __name__ == "__main__":
    main()
