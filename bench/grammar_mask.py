"""Per-token cost of a grammar's token mask on K2's 163,840-token vocabulary: llguidance against xgrammar.

For one JSON schema (a tool call's arguments with nested objects, arrays, enums, numbers and strings), both
libraries walk the same token sequence (a valid instance, tokenized greedily) and compute the next-token bitmask
before every token, for 1 and 16 sequences at once (16 matchers in one call: llguidance's `LLExecutor`,
xgrammar's `BatchGrammarMatcher`). Reported: the grammar's compile time, and per step the mean, median and worst
mask time; plus this engine's `apply_token_bitmask` (unpack + masked fill of the logits) for the same rows.

The vocabulary: the official `tiktoken.model` when given (`--tiktoken PATH`; it is not in this repository), else a
synthetic one of the same size — 256 bytes plus 163,328 tokens drawn like a BPE vocabulary's (words with and
without a leading space, capitalised, digits, CJK, punctuation runs such as `":` and `"},`, whitespace runs) and
K2's 256 special tokens. Mask cost depends on how the tokens share prefixes, so the official file is the
number to trust; the synthetic one keeps the size and the kinds of tokens.

Usage:  python bench/grammar_mask.py [--tiktoken PATH] [--steps 64] [--threads 1]   (needs `pip install .[grammar-bench]`)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_name import cpu_name  # noqa: E402

from kimi_k2.engine.token_bitmask import allocate_bitmask, apply_token_bitmask  # noqa: E402
from kimi_k2.server.constraints import json_grammar  # noqa: E402
from kimi_k2.tokenizer.special_tokens import K2_BASE_VOCAB_SIZE, NUM_SPECIAL_TOKENS  # noqa: E402
from kimi_k2.tokenizer.tokenizer import Tokenizer  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {
        "user": {"type": "object", "properties": {
            "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
            "emails": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
            "role": {"enum": ["admin", "developer", "viewer"]}}, "required": ["name", "role"]},
        "scores": {"type": "array", "items": {"type": "number"}},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "active": {"type": "boolean"},
    },
    "required": ["user", "active"],
}
INSTANCE = {"user": {"name": "Zhang Wei 张伟 \"the admin\"", "age": 41, "emails": ["zw@example.com", "w.zhang@k2.ai"],
                     "role": "admin"}, "scores": [0.5, 12.25, -3.0, 1e3], "note": "a note with\nnew lines and ünïcödé",
            "active": True}


def synthetic_ranks(size: int, seed: int = 0) -> dict[bytes, int]:
    """`size` distinct byte strings, 256 single bytes first, the rest shaped like a BPE vocabulary's tokens."""
    rng = random.Random(seed)
    tokens = [bytes([i]) for i in range(256)]
    seen = set(tokens)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    punct = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    weights = [c for c in letters for _ in range(27 - letters.index(c))]
    while len(tokens) < size:
        kind = rng.random()
        if kind < 0.62:  # word pieces
            word = "".join(rng.choice(weights) for _ in range(rng.randint(2, 11)))
            word = word.capitalize() if rng.random() < 0.2 else word
            text = (" " + word) if rng.random() < 0.55 else word
        elif kind < 0.72:
            text = str(rng.randint(0, 999))
        elif kind < 0.86:
            text = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3)))
        elif kind < 0.95:
            text = "".join(rng.choice(punct) for _ in range(rng.randint(2, 4)))
        else:
            text = rng.choice(["\n", " ", "\t", "\n\n"]) * rng.randint(2, 16) + " " * rng.randint(0, 8)
        data = text.encode()
        if data not in seen:
            seen.add(data)
            tokens.append(data)
    return {t: i for i, t in enumerate(tokens)}


def k2_sized_tokenizer(tiktoken_path: str | None, vocab_size: int = K2_BASE_VOCAB_SIZE + NUM_SPECIAL_TOKENS) -> Tokenizer:
    """The official tokenizer (a directory or tiktoken.model path), else a synthetic one of `vocab_size` ids."""
    if tiktoken_path:
        path = Path(tiktoken_path)
        return Tokenizer.from_pretrained(path if path.is_dir() else path.parent)
    return Tokenizer(synthetic_ranks(vocab_size - NUM_SPECIAL_TOKENS))


def machine() -> str:
    cpu = cpu_name()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, load average at start {load:.1f}"


def _stats(times: list[float]) -> str:
    us = [t * 1e6 for t in times]
    return f"{statistics.mean(us):9.0f} {statistics.median(us):9.0f} {max(us):9.0f}"


def bench_llguidance(tok: Tokenizer, tokens: list[int], batch: int) -> tuple[float, list[float]]:
    import llguidance
    import llguidance.tiktoken

    ll = llguidance.tiktoken.lltokenizer_from_encoding(tok.encoding, n_vocab=tok.vocab_size, eos_token=[tok.im_end_id])
    grammar = f"start: {json_grammar(SCHEMA)}\n"
    start = time.perf_counter()
    template = llguidance.LLMatcher(ll, grammar, log_level=0)
    compile_s = time.perf_counter() - start
    assert not template.is_error(), template.get_error()
    matchers = [template.deep_copy() for _ in range(batch)]
    executor = llguidance.LLExecutor()
    bitmask = allocate_bitmask(batch, tok.vocab_size)
    times = []
    for token in tokens:
        start = time.perf_counter()
        executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bitmask.data_ptr(),
                                         bitmask.shape[1] * 4, batch)
        times.append(time.perf_counter() - start)
        assert (int(bitmask[0, token // 32]) >> (token % 32)) & 1, "the instance's token was masked"
        for m in matchers:
            assert m.consume_token(token), m.get_error()
    return compile_s, times


def bench_xgrammar(tok: Tokenizer, tokens: list[int], batch: int) -> tuple[float, list[float]]:
    import xgrammar

    specials = set(tok.special_tokens.values())
    vocab = [b"" if i in specials else tok.token_bytes(i) for i in range(tok.vocab_size)]  # "" marks a special token
    info = xgrammar.TokenizerInfo(vocab, xgrammar.VocabType.RAW, vocab_size=tok.vocab_size, stop_token_ids=[tok.im_end_id])
    compiler = xgrammar.GrammarCompiler(info, max_threads=max(1, os.cpu_count() or 1))
    start = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False, separators=(", ", ": "))
    compile_s = time.perf_counter() - start
    matchers = [xgrammar.GrammarMatcher(compiled) for _ in range(batch)]
    batcher = xgrammar.BatchGrammarMatcher()
    bitmask = allocate_bitmask(batch, tok.vocab_size)
    times = []
    for token in tokens:
        start = time.perf_counter()
        if batch == 1:
            matchers[0].fill_next_token_bitmask(bitmask, 0)
        else:
            batcher.batch_fill_next_token_bitmask(matchers, bitmask)
        times.append(time.perf_counter() - start)
        assert (int(bitmask[0, token // 32]) >> (token % 32)) & 1, "the instance's token was masked"
        for m in matchers:
            assert m.accept_token(token)
    return compile_s, times


def bench_apply(vocab: int, batch: int, repeats: int = 50) -> list[float]:
    bitmask = torch.randint(-(2**31), 2**31 - 1, (batch, (vocab + 31) // 32), dtype=torch.int64).to(torch.int32)
    logits = torch.randn(batch, vocab)
    times = []
    for _ in range(repeats):
        rows = logits.clone()
        start = time.perf_counter()
        apply_token_bitmask(rows, bitmask)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiktoken", help="the official tiktoken.model (or its directory); default: a synthetic vocabulary")
    ap.add_argument("--steps", type=int, default=64, help="tokens of the instance to walk (at most its length)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the mask apply; the libraries use their own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok = k2_sized_tokenizer(args.tiktoken)
    text = json.dumps(INSTANCE, ensure_ascii=False)
    tokens = tok.encode(text)[: args.steps]
    source = args.tiktoken or "synthetic (no official tiktoken.model given)"
    print(f"machine: {machine()}\nvocabulary: {tok.vocab_size} ids, {source}; {len(tokens)} steps of a JSON instance\n")
    print(f"{'library':12} {'batch':>5} {'compile ms':>10} {'mean us':>9} {'p50 us':>9} {'max us':>9}   (mask per step, all rows)")
    for name, run in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        for batch in (1, 16):
            compile_s, times = run(tok, tokens, batch)
            print(f"{name:12} {batch:5d} {compile_s * 1e3:10.1f} {_stats(times)}")
    for batch in (1, 16):
        print(f"{'apply mask':12} {batch:5d} {'':>10} {_stats(bench_apply(tok.vocab_size, batch))}   (this engine's apply_token_bitmask)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
