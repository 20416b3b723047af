"""A small, deterministic, multilingual corpus and a helper that trains a real K2-format tokenizer on it.

Shared by the tokenizer, chat-template and tool-call tests (imported as a plain module: pytest puts tests/ on
sys.path). Training takes well under a second, so each test module trains its own in a module fixture.
"""

from __future__ import annotations

import inspect
import json
import random
import textwrap
from pathlib import Path

_PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog. It's a sentence that we've used, and they'll use it again; "
    "I'd say it's the most famous pangram. THE QUICK BROWN FOX doesn't CARE. McDonald's iPhone XMLHttpRequest.",
    "Kimi K2 is a mixture-of-experts language model with 1.04 trillion parameters, 32 billion of them active per "
    "token, 384 experts and 61 layers. It was trained on 15.5T tokens with the MuonClip optimizer.",
    "月之暗面发布了新的大语言模型。今天北京的天气晴朗，气温二十五度。我们一起去公园散步吧！中文分词很重要。",
    "東京は日本の首都です。カタカナとひらがなと漢字を使います。ありがとうございました。",
    "Привет, мир! Это тестовый текст на русском языке. Ёжик в тумане.",
    "Emoji: 😀😃😄 👍🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️ — café, naïve, résumé, Zürich, São Paulo, ½ ¾ ∑ ∫ ≠ ≤.",
    "def get_weather(city: str) -> dict:\n    \"\"\"Return the weather.\"\"\"\n    return {\"city\": city, \"temp\": 21.5}\n\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n// done\r\n",
    '{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}',
    "Numbers 1234567890 3.14159 2025-08-11 0xFF 1e-6 100,000,000 and 42!",
]


def corpus_texts(seed: int = 0, repeats: int = 40) -> list[str]:
    """~300 KB: shuffled paragraphs with random numbers and whitespace, plus some stdlib source for volume."""
    rng = random.Random(seed)
    texts = []
    for _ in range(repeats):
        parts = _PARAGRAPHS[:]
        rng.shuffle(parts)
        joiners = ["\n", "\n\n", " ", "  \n", "\t"]
        texts.append("".join(p + rng.choice(joiners) + str(rng.randint(0, 10**6)) + " " for p in parts))
    for module in (json.decoder, json.encoder, textwrap, random):
        texts.append(inspect.getsource(module))
    return texts


def train_test_tokenizer(out_dir: Path, vocab_size: int = 2048, chat_template: str | None = None) -> Path:
    from kimi_k2.tokenizer.bpe_trainer import train_and_save

    train_and_save(corpus_texts(), vocab_size, out_dir, chat_template=chat_template)
    return out_dir
