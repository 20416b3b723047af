"""Write tests/data/chat_template_golden.json: the official K2 chat templates' renderings of the test conversations.

Run once from the repository root where the official templates exist (../shared/kimi_k2_reference/):

    python -m tests.data.make_chat_template_golden

Each rendering comes from the official file in a plain HF-style jinja2 environment (`hf_style_render` in
tests/test_chat_template.py, independent of kimi_k2's renderer): for both templates, every (conversation, tools,
add_generation_prompt) case of CASES; for K2-0905 (the built-in default's original) also 100 random
conversations drawn here with a fixed seed, shaped like the hypothesis strategy of the same test file.
`test_goldens_are_the_official_renderings` re-renders them wherever the official files exist.
"""

from __future__ import annotations

import json
import random
from typing import Any

from tests.test_chat_template import (
    CASE_BY_ID,
    GOLDEN_FILE,
    INSTRUCT,
    INSTRUCT_0905,
    REFERENCE_DIR,
    TOOLS,
    hf_style_render,
)

ALPHABET = list("ab 中😀\n<|>{}\"'")


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(13)))


def _content(rng: random.Random) -> Any:
    kind = rng.randrange(3)
    if kind == 0:
        return None
    if kind == 1:
        return _text(rng)
    return [{"type": "text", "text": _text(rng)} if rng.random() < 0.7 else {"type": "image_url", "image_url": {"url": "u"}}
            for _ in range(rng.randrange(4))]


def _arguments(rng: random.Random) -> Any:
    if rng.random() < 0.5:
        return _text(rng)
    return {rng.choice(["city", "n", "ü"]): (_text(rng) if rng.random() < 0.5 else rng.randrange(-100, 100))
            for _ in range(rng.randrange(3))}


def _message(rng: random.Random) -> dict[str, Any]:
    kind = rng.randrange(3)
    if kind == 0:
        message = {"role": rng.choice(["user", "system", "assistant", "developer"]), "content": _content(rng)}
        if rng.random() < 0.3:
            message["name"] = rng.choice(["", "bob", "李"])
        return message
    if kind == 1:
        calls = [{"id": rng.choice(["functions.f:0", "call_x", "g:1"]), "type": "function",
                  "function": {"name": rng.choice(["f", "a.b-c"]), "arguments": _arguments(rng)}}
                 for _ in range(rng.randrange(3))]
        return {"role": "assistant", "content": _content(rng), "tool_calls": calls}
    message = {"role": "tool", "content": _content(rng), "tool_call_id": rng.choice(["functions.f:0", "call_x"])}
    if rng.random() < 0.3:
        message["name"] = rng.choice(["f", ""])
    return message


def random_samples(source_0905: str, n: int = 100, seed: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        messages = [_message(rng) for _ in range(rng.randrange(6))]
        tools = rng.choice([None, "TOOLS", []])
        add_generation_prompt = rng.random() < 0.5
        rendered = hf_style_render(source_0905, messages, TOOLS if tools == "TOOLS" else tools, add_generation_prompt)
        samples.append({"messages": messages, "tools": tools, "add_generation_prompt": add_generation_prompt,
                        INSTRUCT_0905: rendered})
    return samples


def main() -> None:
    sources = {name: (REFERENCE_DIR / name).read_text(encoding="utf-8") for name in (INSTRUCT, INSTRUCT_0905)}
    data = {
        "made_by": "tests/data/make_chat_template_golden.py from the official Kimi K2 chat templates "
                   f"({INSTRUCT}: Kimi-K2-Instruct, {INSTRUCT_0905}: Kimi-K2-Instruct-0905)",
        "templates": {
            name: {case: hf_style_render(source, messages, tools, agp) for case, (messages, tools, agp) in CASE_BY_ID.items()}
            for name, source in sources.items()
        },
        "random": random_samples(sources[INSTRUCT_0905]),
    }
    GOLDEN_FILE.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":
    main()
