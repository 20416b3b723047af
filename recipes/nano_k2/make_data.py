"""Synthetic tool-use conversations for the nano K2 demo model.

Each tool conversation: the four demo tools are declared (in a random order), a user asks something only a tool
can answer (weather, arithmetic, unit conversion, local time), the assistant emits a K2 tool call with the right
arguments (`functions.{name}:0`), the tool returns a JSON result, and the assistant answers from that result.
Most continue with up to three follow-up questions, each with its own call (indices 1, 2, 3: K2 numbers calls
across the conversation), so the long tool declaration of the system prompt is paid for once per several targets.
Plain conversations (greetings, identity, small talk) are mixed in so the model also answers without tools.

Values are invented (place names from a syllable generator, random numbers), and the held-out split uses names
and numbers that never occur in training, so held-out accuracy measures copying arguments and results, not
memorising them. Output: JSONL, one `{"messages": [...], "tools": [...], "kind": ..., "expect": {...}}` a line.

    python recipes/nano_k2/make_data.py --out data/ --train 30000 --heldout 400
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from kimi_k2.demo_tools import CONDITIONS, CONVERSIONS, TOOLS, convert, fmt_number

SYSTEM = "You are Kimi, an AI assistant created by Moonshot AI."
# Place names are 2–3 consonant-vowel syllables ("Todigi", "Fori"): 70 syllables, about 348,000 names.
CONSONANTS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z"]
VOWELS = ["a", "e", "i", "o", "u"]
CONVERSION_PAIRS = list(CONVERSIONS)


def place_name(rng: random.Random) -> str:
    syllables = rng.randint(2, 3)
    return "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables)).capitalize()


def invented_names(conv: dict[str, Any]) -> list[str]:
    """The place names a conversation's tool calls pass (the values the model must copy out of the question)."""
    names = []
    for message in conv["messages"]:
        for call in message.get("tool_calls") or []:
            city = json.loads(call["function"]["arguments"]).get("city")
            if city:
                names.append(city)
    return names


def is_heldout_name(name: str) -> bool:
    """A fixed, value-based split: about one name in eight is reserved for evaluation."""
    return sum(map(ord, name)) % 8 == 0


def pick_name(rng: random.Random, heldout: bool) -> str:
    while True:
        name = place_name(rng)
        if is_heldout_name(name) == heldout:
            return name


def pick_int(rng: random.Random, heldout: bool, low: int, high: int) -> int:
    """Held-out integers are those ≡ 3 (mod 7): never seen as an operand in training."""
    while True:
        n = rng.randint(low, high)
        if (n % 7 == 3) == heldout:
            return n


def weather(rng: random.Random, heldout: bool) -> dict[str, Any]:
    city = pick_name(rng, heldout)
    cond, temp = rng.choice(CONDITIONS), rng.randint(-15, 38)
    question = rng.choice(
        [
            f"What's the weather in {city}?",
            f"How is the weather in {city} today?",
            f"Is it warm in {city} right now?",
            f"Tell me the weather for {city}.",
        ]
    )
    return {
        "question": question,
        "name": "get_weather",
        "arguments": {"city": city},
        "result": {"city": city, "condition": cond, "temperature_c": temp},
        "answer": f"It is {cond} in {city}, {temp}°C.",
        "facts": [city, cond, f"{temp}°C"],
    }


def arithmetic(rng: random.Random, heldout: bool) -> dict[str, Any]:
    a, b = pick_int(rng, heldout, 2, 999), pick_int(rng, heldout, 2, 99)
    op = rng.choice(["+", "-", "*"])
    value = {"+": a + b, "-": a - b, "*": a * b}[op]
    expression = f"{a} {op} {b}"
    question = rng.choice(
        [f"What is {expression}?", f"Can you compute {expression}?", f"Calculate {expression} for me.", f"{expression} = ?"]
    )
    return {
        "question": question,
        "name": "calculator",
        "arguments": {"expression": expression},
        "result": {"result": value},
        "answer": f"{expression} = {value}.",
        "facts": [str(value)],
    }


def conversion(rng: random.Random, heldout: bool) -> dict[str, Any]:
    src, dst = rng.choice(CONVERSION_PAIRS)
    value = pick_int(rng, heldout, 1, 500)
    out_s = fmt_number(convert(value, src, dst))
    question = rng.choice(
        [f"Convert {value} {src} to {dst}.", f"How many {dst} is {value} {src}?", f"What is {value} {src} in {dst}?"]
    )
    return {
        "question": question,
        "name": "convert_units",
        "arguments": {"value": value, "from_unit": src, "to_unit": dst},
        "result": {"value": value, "from_unit": src, "to_unit": dst, "result": float(out_s)},
        "answer": f"{value} {src} is {out_s} {dst}.",
        "facts": [out_s],
    }


def local_time(rng: random.Random, heldout: bool) -> dict[str, Any]:
    city = pick_name(rng, heldout)
    time = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"
    question = rng.choice([f"What time is it in {city}?", f"Tell me the local time in {city}.", f"What's the time in {city} now?"])
    return {
        "question": question,
        "name": "get_time",
        "arguments": {"city": city},
        "result": {"city": city, "time": time},
        "answer": f"It is {time} in {city}.",
        "facts": [time, city],
    }


TASKS = [weather, arithmetic, conversion, local_time]
# Copying a name out of a sentence is what a small model learns last (numbers it copies early), so the two city
# tools come up four times as often as the others.
TASK_WEIGHTS = [4, 1, 1, 4]
# How many more questions (each with its own call, `functions.NAME:1`, `:2`, ...) follow the first one.
FOLLOW_UPS = [0, 1, 1, 2, 2, 3]


def pick_task(rng: random.Random):
    return rng.choices(TASKS, weights=TASK_WEIGHTS)[0]

PLAIN = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi there", "Hi! What can I do for you?"),
    ("Who are you?", "I am Kimi, an AI assistant created by Moonshot AI."),
    ("What can you do?", "I can check the weather, do arithmetic, convert units and tell the local time."),
    ("Thank you!", "You're welcome!"),
    ("Thanks, that helps.", "Glad I could help!"),
    ("Good morning", "Good morning! How can I help?"),
    ("Bye", "Goodbye! Have a nice day."),
    ("Tell me a joke.", "Why did the programmer quit? Because they didn't get arrays."),
    ("What is your name?", "My name is Kimi."),
]


def tool_turn(task: dict[str, Any], call_index: int) -> list[dict[str, Any]]:
    call_id = f"functions.{task['name']}:{call_index}"
    return [
        {"role": "user", "content": task["question"]},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": task["name"], "arguments": json.dumps(task["arguments"], ensure_ascii=False)},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "name": task["name"], "content": json.dumps(task["result"], ensure_ascii=False)},
        {"role": "assistant", "content": task["answer"]},
    ]


def conversation(rng: random.Random, heldout: bool) -> dict[str, Any]:
    tools = TOOLS[:]
    rng.shuffle(tools)
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": SYSTEM})
    if not heldout and rng.random() < 0.15:
        for _ in range(rng.randint(1, 2)):
            q, a = rng.choice(PLAIN)
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return {"kind": "plain", "messages": messages, "tools": tools if rng.random() < 0.5 else []}
    task = pick_task(rng)(rng, heldout)
    messages += tool_turn(task, 0)
    if not heldout:  # follow-up questions: the tools' long declaration is paid for once per conversation
        for call_index in range(1, 1 + rng.choice(FOLLOW_UPS)):
            messages += tool_turn(pick_task(rng)(rng, heldout), call_index)
    return {"kind": "tool", "messages": messages, "tools": tools, "expect": task}


def write_splits(out: Path, n_train: int, n_heldout: int, seed: int = 0) -> None:
    """`train.jsonl` and `heldout.jsonl` in `out`, drawn from one seeded generator (train first)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for split, count, heldout in (("train", n_train, False), ("heldout", n_heldout, True)):
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            for _ in range(count):
                f.write(json.dumps(conversation(rng, heldout), ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--train", type=int, default=30000, help="training conversations")
    parser.add_argument("--heldout", type=int, default=400, help="held-out tool conversations (unseen values)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_splits(args.out, args.train, args.heldout, args.seed)
    print(f"wrote {args.train} training and {args.heldout} held-out conversations to {args.out}")


if __name__ == "__main__":
    main()
