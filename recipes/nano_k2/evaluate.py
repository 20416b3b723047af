"""Held-out evaluation of the nano K2 demo model: does it copy the place names and numbers it is given into the
right tool's arguments, does it answer from the tool's result, and does it decline or chat when no tool fits?

Every held-out conversation (`make_data.py`: real place names and numbers never seen in training, asked with
phrase combinations never seen in training) is given to the model with the declared tools and decoded greedily
through the engine. Outputs are parsed with the project's K2 tool-call parser. For a tool question:
- `name_copy` / `number_copy`: the call's `city` (weather, time) is the name exactly as the user typed it, or the
  call's `expression` (calculator) / `value` (conversion) is the user's number;
- `tool_choice`: the call names the expected tool (the questions are held-out paraphrases);
- `tool_call_accuracy`: one call, the expected tool, id `functions.NAME:0` and arguments equal to the expected;
- `answer_accuracy`: given the expected call and the tool's result, the reply states every fact of the result
  as a whole word (the city with its condition and temperature or its time, the number).
For a request no tool answers, `decline_accuracy` counts replies without a tool call that apologise ("Sorry");
for small talk, `chat_accuracy` counts replies without a tool call that are neither empty nor a refusal.

    python recipes/nano_k2/evaluate.py --model kimi_k2/assets/nano-k2 --data runs/nano_k2/data/heldout.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any


def question_prefix(conv: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages up to and including the (first) user question."""
    messages = conv["messages"]
    first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: first_user + 1]


def same_value(got: Any, expected: Any) -> bool:
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        return isinstance(got, (int, float)) and not isinstance(got, bool) and float(got) == float(expected)
    return got == expected


def same_arguments(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    return set(got) == set(expected) and all(same_value(got[k], v) for k, v in expected.items())


def states(answer: str, fact: str) -> bool:
    """Whether `fact` occurs in `answer` as a whole word ("Kata" is not stated by "Katana", "5°C" not by "15°C")."""
    return re.search(rf"(?<![\w.-]){re.escape(fact)}(?![\w]|\.\d)", answer) is not None


def copied_key(expected_arguments: dict[str, Any]) -> str:
    """The argument holding the value copied from the question."""
    return next(k for k in ("city", "expression", "value") if k in expected_arguments)


def name_shape(name: str) -> list[str]:
    shapes = [s for s, hit in (("multi-word", " " in name), ("hyphen", "-" in name), ("apostrophe", "'" in name),
                               ("non-ASCII", not name.isascii()), ("lower case", name == name.lower()),
                               ("upper case", name == name.upper())) if hit]  # fmt: skip
    return shapes


def rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def judge(llm, conversations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per conversation (the held-out file's form): the greedy reply to its question, judged; for a
    tool question also the reply to the expected call's result (`answer`, `correct_answer`)."""
    from kimi_k2 import SamplingParams
    from kimi_k2.tokenizer import parse_output

    greedy = SamplingParams(temperature=0.0, max_tokens=96)
    first = llm.generate([llm.encode_chat(question_prefix(c), c["tools"]) for c in conversations], greedy)
    records: list[dict[str, Any]] = []
    followups: list[list[int]] = []
    for conv, out in zip(conversations, first):
        expect = conv["expect"]
        parsed = parse_output(out.text, reasoning=False)
        record: dict[str, Any] = {"kind": conv["kind"], "question": expect["question"], "output": out.text}
        if conv["kind"] != "tool":
            record["reply"] = parsed.content
            if conv["kind"] == "decline":
                record["correct"] = not parsed.tool_calls and parsed.content.strip().startswith("Sorry")
            else:
                record["correct"] = not parsed.tool_calls and bool(parsed.content.strip()) and "Sorry" not in parsed.content
            records.append(record)
            continue
        call = parsed.tool_calls[0] if parsed.tool_calls else None
        arguments = None
        if call is not None and call.error is None:
            try:
                arguments = json.loads(call.arguments)
            except json.JSONDecodeError:
                arguments = None
        key = copied_key(expect["arguments"])
        record.update(
            expected={"name": expect["name"], "arguments": expect["arguments"]},
            correct_tool=call is not None and call.name == expect["name"],
            copied=isinstance(arguments, dict) and key in arguments and same_value(arguments[key], expect["arguments"][key]),
            correct_call=(call is not None and len(parsed.tool_calls) == 1 and call.name == expect["name"]
                          and call.id == f"functions.{expect['name']}:0" and isinstance(arguments, dict)
                          and same_arguments(arguments, expect["arguments"])),
        )  # fmt: skip
        records.append(record)
        # Continue with the expected call and its result, as a client running the tool would.
        prefix = question_prefix(conv)
        followups.append(llm.encode_chat(conv["messages"][: len(prefix) + 2], conv["tools"]))
    tool_records = [r for r in records if r["kind"] == "tool"]
    tool_convs = [c for c in conversations if c["kind"] == "tool"]
    for record, conv, out in zip(tool_records, tool_convs, llm.generate(followups, greedy)):
        answer = parse_output(out.text, reasoning=False).content
        record["answer"] = answer
        record["correct_answer"] = all(states(answer, fact) for fact in conv["expect"]["facts"])
    return records


def evaluate(model_dir: Path, data: Path, limit: int | None = None) -> dict[str, Any]:
    from kimi_k2 import LLM

    conversations = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()][:limit]
    records = judge(LLM(model_dir), conversations)
    tool_records = [r for r in records if r["kind"] == "tool"]
    names = [r for r in tool_records if "city" in r["expected"]["arguments"]]
    numbers = [r for r in tool_records if "city" not in r["expected"]["arguments"]]
    by_shape: dict[str, list[bool]] = {}
    for r in names:
        for shape in name_shape(r["expected"]["arguments"]["city"]):
            by_shape.setdefault(shape, []).append(r["copied"])
    by_tool: dict[str, list[bool]] = {}
    for r in tool_records:
        by_tool.setdefault(r["expected"]["name"], []).append(r["correct_call"])
    declines = [r["correct"] for r in records if r["kind"] == "decline"]
    chats = [r["correct"] for r in records if r["kind"] == "chat"]
    return {
        "heldout_tool_prompts": len(tool_records),
        "heldout_place_names": len(names),
        "heldout_number_prompts": len(numbers),
        "name_copy": rate([r["copied"] for r in names]),
        "number_copy": rate([r["copied"] for r in numbers]),
        "tool_choice": rate([r["correct_tool"] for r in tool_records]),
        "answer_accuracy": rate([r["correct_answer"] for r in tool_records]),
        "tool_call_accuracy": rate([r["correct_call"] for r in tool_records]),
        "decline_accuracy": rate(declines),
        "chat_accuracy": rate(chats),
        "heldout_declines": len(declines),
        "heldout_chats": len(chats),
        "name_copy_by_shape": {k: {"n": len(v), "accuracy": rate(v)} for k, v in sorted(by_shape.items())},
        "tool_call_accuracy_by_tool": {k: rate(v) for k, v in sorted(by_tool.items())},
        "examples": records[:14],  # the showcase names come first in the held-out file
        "failures": [r for r in records if not r.get("correct", r.get("correct_call") and r.get("correct_answer"))][:40],
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

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"

    print(f"held-out: {result['heldout_place_names']} place names, {result['heldout_number_prompts']} number prompts, "
          f"{result['heldout_declines']} declines, {result['heldout_chats']} chats")  # fmt: skip
    for key in ("name_copy", "number_copy", "tool_choice", "answer_accuracy", "tool_call_accuracy", "decline_accuracy",
                "chat_accuracy"):  # fmt: skip
        print(f"  {key:<20} {pct(result[key])}")
    for shape, v in result["name_copy_by_shape"].items():
        print(f"  name_copy {shape:<11} {pct(v['accuracy'])} of {v['n']}")


if __name__ == "__main__":
    main()
