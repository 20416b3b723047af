"""Tokenizer: file loading, tiktoken parity, the official chunking, special slots, streaming decode, BPE training."""

from __future__ import annotations

import argparse
import json
import random
import re
import sys

import pytest
import tiktoken
import tiktoken.load
from hypothesis import given, settings
from hypothesis import strategies as st

from kimi_k2.tokenizer import cli as tokenizer_cli
from kimi_k2.tokenizer import files
from kimi_k2.tokenizer.bpe_trainer import count_pieces, train_bpe, train_tokenizer_ranks
from kimi_k2.tokenizer.pretokenizer import K2_PATTERN, MAX_RUN_CHARS, encoding_pieces, pretokenize, split_long_runs
from kimi_k2.tokenizer.special_tokens import NUM_SPECIAL_TOKENS, default_special_tokens
from kimi_k2.tokenizer.tokenizer import Tokenizer
from tests.tokenizer_corpus import corpus_texts, train_test_tokenizer

VARIED_TEXTS = [
    "Hello, world! It's a test; we've got 12345 numbers and CamelCaseWords like XMLHttpRequest.",
    "月之暗面 Kimi 是一个大语言模型。今天天气很好！混合English和中文123。",
    "東京タワー と ひらがな、Привет мир, café naïve, Ελληνικά, العربية, हिन्दी",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\r\n\n\n    indented\n",
    "emoji 😀👍🏽👨‍👩‍👧‍👦🇯🇵❤️ and symbols ∑∫≠≤ ½",
    " " * 300 + "x" + "\n" * 50 + "\t\t  \n\n y",
    "looks special: <|im_end|> [BOS] <|tool_call_begin|> <think> <|reserved_token_163600|> <|im_end",
    "I'M SHOUTING, you're WHISPERING, they'LL see. don'T",
    "",
    "a",
    "\u0301\u0308 combining marks, \u200b zero width, \ufeff bom, \x00 nul, \x1c\x1d sep",
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return train_test_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.from_pretrained(tok_dir)


@pytest.fixture(scope="module")
def reference_encoding(tok_dir, tok) -> tiktoken.Encoding:
    """tiktoken's own Encoding over the same file (read by tiktoken's loader), regex and special tokens."""
    ranks = tiktoken.load.load_tiktoken_bpe(str(tok_dir / "tiktoken.model"))
    specials = default_special_tokens(len(ranks))
    return tiktoken.Encoding("reference", pat_str=K2_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


# --------------------------------------------------------------------------------------------------- pre-tokenizer
@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_python_split_matches_tiktoken_split(text):
    # Give tiktoken every substring of every Python piece as a token: each piece then encodes to exactly one
    # token, so tiktoken's output equals "one token per Python piece" only if both engines split alike.
    pieces = pretokenize(text)
    assert "".join(pieces) == text
    substrings = {p.encode()[i:j] for p in pieces for i in range(len(p.encode())) for j in range(i + 1, len(p.encode()) + 1)}
    substrings |= {bytes([b]) for b in range(256)}
    ordered = sorted(substrings, key=lambda b: (len(b), b))
    ranks = {b: i for i, b in enumerate(ordered)}
    enc = tiktoken.Encoding("split", pat_str=K2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    assert enc.encode_ordinary(text) == [ranks[p.encode()] for p in pieces]


def test_pattern_splits_han_from_other_letters():
    assert pretokenize("Kimi是月之暗面的model") == ["Kimi", "是月之暗面的", "model"]
    assert pretokenize("He's HERE's") == ["He's", " HERE's"]


def test_re_whitespace_is_str_isspace():
    # split_long_runs uses `re`'s \s; the official splitter uses str.isspace(). They must be the same class.
    space = re.compile(r"\s")
    mismatches = [c for c in map(chr, range(sys.maxunicode + 1)) if bool(space.fullmatch(c)) != c.isspace()]
    assert mismatches == []


def _official_style_split(s: str, max_len: int) -> list[str]:
    """The official splitter's behaviour, written as a plain character loop (the reference)."""
    out, start, run, is_space = [], 0, 0, s[0].isspace() if s else False
    for i, c in enumerate(s):
        if c.isspace() != is_space:
            is_space, run = c.isspace(), 1
        else:
            run += 1
            if run > max_len:
                out.append(s[start:i])
                start, run = i, 1
    out.append(s[start:])
    return out


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab \n\t")), max_size=60), st.integers(1, 6))
def test_split_long_runs_matches_official_loop(text, max_len):
    assert list(split_long_runs(text, max_len)) == _official_style_split(text, max_len)


def test_long_whitespace_run_is_chunked_like_official(tok):
    text = "a" + " " * (MAX_RUN_CHARS * 2 + 17) + "b" + "x" * (MAX_RUN_CHARS + 3)
    pieces = list(encoding_pieces(text))
    # cuts every 25,000 chars from the start of each run: the space run starts at 1; "b" starts the x run
    assert [len(p) for p in pieces] == [MAX_RUN_CHARS + 1, MAX_RUN_CHARS, MAX_RUN_CHARS + 17, 4]
    assert pieces == _official_style_split(text, MAX_RUN_CHARS)
    assert tok.encode(text) == [i for p in pieces for i in tok.encoding.encode_ordinary(p)]
    assert tok.decode(tok.encode(text)) == text


# --------------------------------------------------------------------------------------------------- tiktoken parity
@pytest.mark.parametrize("text", VARIED_TEXTS)
def test_encode_matches_tiktoken_encoding(tok, reference_encoding, text):
    assert tok.encode(text) == reference_encoding.encode(text, disallowed_special=())
    assert tok.encode(text, allow_special=True) == reference_encoding.encode(text, allowed_special="all")
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200))
def test_encode_matches_tiktoken_on_random_text(tok, reference_encoding, text):
    assert tok.encode(text) == reference_encoding.encode(text, disallowed_special=())
    assert tok.decode(tok.encode(text)) == text


def _reference_bpe(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Rank-based BPE in plain Python: repeatedly merge the adjacent pair whose bytes have the lowest rank."""
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        candidates = [(ranks.get(parts[i] + parts[i + 1]), i) for i in range(len(parts) - 1)]
        candidates = [(r, i) for r, i in candidates if r is not None]
        if not candidates:
            break
        _, i = min(candidates)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return [ranks[p] for p in parts]


@pytest.mark.parametrize("text", VARIED_TEXTS[:5])
def test_trained_ranks_encode_like_reference_bpe(tok, text):
    expected = [i for p in pretokenize(text) for i in _reference_bpe(p.encode(), tok.mergeable_ranks)]
    assert tok.encode(text) == expected


def test_trained_tokenizer_compresses_its_corpus(tok):
    text = corpus_texts(seed=1, repeats=2)[0]
    assert len(tok.encode(text)) < 0.45 * len(text.encode())


# --------------------------------------------------------------------------------------------------- special tokens
def test_special_slots_follow_the_base_ranks(tok):
    base = tok.base_vocab_size
    assert base == 2048 - NUM_SPECIAL_TOKENS and tok.vocab_size == 2048
    expected = {"[BOS]": 0, "[EOS]": 1, "<|im_end|>": 2, "<|im_user|>": 3, "<|im_assistant|>": 4,
                "<|start_header_id|>": 6, "<|end_header_id|>": 7, "[EOT]": 9, "<|im_system|>": 10,
                "<|tool_calls_section_begin|>": 11, "<|tool_calls_section_end|>": 12, "<|tool_call_begin|>": 13,
                "<|tool_call_argument_begin|>": 14, "<|tool_call_end|>": 15, "<|im_middle|>": 17,
                "<think>": 22, "</think>": 23, "[UNK]": 254, "[PAD]": 255}
    for name, offset in expected.items():
        assert tok.token_to_id(name) == base + offset
    assert tok.decode([base + 5]) == f"<|reserved_token_{base + 5}|>"
    assert len(tok.special_tokens) == NUM_SPECIAL_TOKENS
    assert (tok.bos_id, tok.eos_id, tok.im_end_id, tok.unk_id, tok.pad_id) == (base, base + 1, base + 2, base + 254, base + 255)
    assert tok.stop_token_ids == {base + 1, base + 2}


def test_official_ids_for_the_full_vocabulary():
    specials = default_special_tokens(163_584)
    assert specials["[BOS]"] == 163584 and specials["<|im_end|>"] == 163586 and specials["<|im_middle|>"] == 163601
    assert specials["<|tool_calls_section_begin|>"] == 163595 and specials["[PAD]"] == 163839
    assert specials["<|reserved_token_163589|>"] == 163589 and specials["<think>"] == 163606


def test_special_strings_are_text_unless_allowed(tok):
    text = "a<|im_end|>b"
    assert tok.im_end_id not in tok.encode(text)
    assert tok.encode(text, allow_special=True) == tok.encode("a") + [tok.im_end_id] + tok.encode("b")
    assert tok.encode(text, allow_special={"<|im_end|>"}) == tok.encode(text, allow_special=True)
    assert tok.im_end_id not in tok.encode(text, allow_special={"[BOS]"})
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allow_special={"<|nope|>"})
    assert tok.decode(tok.encode(text, allow_special=True)) == text
    assert tok.decode(tok.encode(text, allow_special=True), skip_special_tokens=True) == "ab"


def test_encode_adds_no_bos_or_eos(tok):
    assert tok.bos_id not in tok.encode("hello") and tok.eos_id not in tok.encode("hello")


def test_decode_rejects_out_of_range_ids(tok):
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


# --------------------------------------------------------------------------------------------------- files
def test_save_and_load_round_trip(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = Tokenizer.from_pretrained(tmp_path)
    assert again.mergeable_ranks == tok.mergeable_ranks and again.special_tokens == tok.special_tokens
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "TikTokenTokenizer"
    assert config["bos_token"] == "[BOS]" and config["eos_token"] == "[EOS]"
    assert config["pad_token"] == "[PAD]" and config["unk_token"] == "[UNK]"
    assert config["added_tokens_decoder"][str(tok.im_end_id)]["content"] == "<|im_end|>"
    assert config["added_tokens_decoder"][str(tok.im_end_id)]["special"] is True
    assert len(config["added_tokens_decoder"]) == NUM_SPECIAL_TOKENS
    assert "chat_template" not in config  # the built-in default is not written into checkpoints


def test_config_names_override_the_default_slots(tok_dir, tmp_path):
    (tmp_path / "tiktoken.model").write_bytes((tok_dir / "tiktoken.model").read_bytes())
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    base = 2048 - NUM_SPECIAL_TOKENS
    config["added_tokens_decoder"][str(base + 5)]["content"] = "<|custom|>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    loaded = Tokenizer.from_pretrained(tmp_path)
    assert loaded.token_to_id("<|custom|>") == base + 5
    assert loaded.encode("<|custom|>", allow_special=True) == [base + 5]


def test_missing_tiktoken_model_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "tiktoken.model"))):
        Tokenizer.from_pretrained(tmp_path)


def test_missing_directory_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        Tokenizer.from_pretrained(tmp_path / "nope")


def test_malformed_config_names_the_file(tok_dir, tmp_path):
    (tmp_path / "tiktoken.model").write_bytes((tok_dir / "tiktoken.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer_config.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_special_token_outside_the_slots_is_an_error(tok_dir, tmp_path):
    (tmp_path / "tiktoken.model").write_bytes((tok_dir / "tiktoken.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": {"5": {"content": "<x>"}}}))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: .*outside the special slots"):
        Tokenizer.from_pretrained(tmp_path)


def test_bad_tiktoken_line_names_file_and_line(tmp_path):
    path = tmp_path / "tiktoken.model"
    path.write_text("QQ== 0\nnot-base64!! 1\n")
    with pytest.raises(ValueError, match=r"tiktoken.model:2"):
        files.read_tiktoken_model(path)
    path.write_text("QQ== 0\nQg== 2\n")
    with pytest.raises(ValueError, match="no gaps"):
        files.read_tiktoken_model(path)


def test_chat_template_file_wins_over_config(tok_dir, tmp_path):
    (tmp_path / "tiktoken.model").write_bytes((tok_dir / "tiktoken.model").read_bytes())
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    config["chat_template"] = "from-config"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert Tokenizer.from_pretrained(tmp_path).chat_template == "from-config"
    (tmp_path / "chat_template.jinja").write_text("from-file")
    assert Tokenizer.from_pretrained(tmp_path).chat_template == "from-file"


def test_apply_chat_template_tokenizes_markers_as_special_ids(tok):
    messages = [{"role": "user", "content": "hi <|im_end|>"}]
    text = tok.apply_chat_template(messages, tokenize=False)
    ids = tok.apply_chat_template(messages)
    assert ids == tok.encode(text, allow_special=True)
    assert ids[0] == tok.token_to_id("<|im_system|>") and ids[-1] == tok.token_to_id("<|im_middle|>")
    assert ids.count(tok.im_end_id) == 3  # system turn, user turn, and the user's own "<|im_end|>" (as HF does)


# --------------------------------------------------------------------------------------------------- streaming decode
@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab 中文月😀👍🏽é\n")), max_size=40))
def test_detokenizer_never_emits_a_broken_character(tok, text):
    ids = tok.encode(text)
    detok = tok.detokenizer()
    chunks = [detok.feed(i) for i in ids] + [detok.finish()]
    assert "".join(chunks) == text
    assert all("\ufffd" not in c for c in chunks)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2047), max_size=30), st.randoms())
def test_detokenizer_equals_decode_for_any_ids(tok, ids, rnd):
    detok = tok.detokenizer()
    out, i = [], 0
    while i < len(ids):
        n = rnd.randint(1, 4)
        out.append(detok.feed(ids[i : i + n]))
        i += n
    out.append(detok.finish())
    assert "".join(out) == tok.decode(ids)


def test_detokenizer_can_skip_special_tokens_but_keep_markers(tok):
    ids = tok.encode("<|im_user|>x<|tool_call_begin|>y", allow_special=True)
    detok = tok.detokenizer(skip_special_tokens=True, keep={"<|tool_call_begin|>"})
    assert detok.feed(ids) + detok.finish() == "x<|tool_call_begin|>y"


# --------------------------------------------------------------------------------------------------- training
def test_training_is_deterministic_and_starts_with_bytes():
    counts = count_pieces(corpus_texts(repeats=5))
    a, b = train_bpe(counts, 300), train_bpe(counts, 300)
    assert a.ranks == b.ranks and a.merges == 300 and not a.stopped_early
    assert all(a.ranks[bytes([i])] == i for i in range(256))
    assert sorted(a.ranks.values()) == list(range(556))


def test_first_merge_is_the_most_frequent_pair():
    result = train_bpe({"ab": 5, "abc": 3, "bc": 1, "xy": 2}, 1)
    assert result.ranks[b"ab"] == 256 and len(result.ranks) == 257


def test_training_stops_when_pairs_run_out():
    result = train_tokenizer_ranks(["aaaa bbbb"], 1024)
    assert result.stopped_early and result.merges < result.requested_merges


def test_vocab_size_below_minimum_is_an_error():
    with pytest.raises(ValueError, match="at least 512"):
        train_tokenizer_ranks(["x"], 300)


def test_cli_train_writes_a_loadable_tokenizer(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(corpus_texts(repeats=3)), encoding="utf-8")
    parser = argparse.ArgumentParser()
    tokenizer_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer", "train", str(corpus), "--vocab-size", "700", "--out", str(tmp_path / "t")])
    assert args.func(args) == 0
    assert "vocab_size 700" in capsys.readouterr().out
    loaded = Tokenizer.from_pretrained(tmp_path / "t")
    assert loaded.vocab_size == 700 and loaded.decode(loaded.encode("Kimi K2 月之暗面")) == "Kimi K2 月之暗面"
    args = parser.parse_args(["tokenizer", "encode", str(tmp_path / "t"), "hi"])
    assert args.func(args) == 0 and json.loads(capsys.readouterr().out) == loaded.encode("hi")


def test_cli_train_missing_corpus_names_the_file(tmp_path):
    parser = argparse.ArgumentParser()
    tokenizer_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tokenizer", "train", str(tmp_path / "missing.txt"), "--vocab-size", "600", "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        args.func(args)


def test_random_text_round_trips(tok):
    rng = random.Random(0)
    alphabet = "abcXYZ 中文😀\n\t'sé<|>"
    for _ in range(50):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        assert tok.decode(tok.encode(text, allow_special=True)) == text


def test_long_runs_below_the_limit_are_split_in_linear_time():
    import time

    text = ("x" * 20_000 + " ") * 5
    start = time.perf_counter()
    assert list(split_long_runs(text)) == [text]
    assert time.perf_counter() - start < 0.5  # a naive `\S{25001,}` search takes seconds here


def test_copy_friendly_tokens_never_cross_letter_or_digit_boundaries(tmp_path):
    import regex

    from kimi_k2.tokenizer.bpe_trainer import copy_friendly_units, train_and_save
    from kimi_k2.tokenizer.pretokenizer import pretokenize

    texts = corpus_texts(repeats=5)
    result = train_and_save(texts, 1024, tmp_path, copy_friendly=True)
    assert result.merges == 1024 - 512
    tok = Tokenizer.from_pretrained(tmp_path)
    letter = regex.compile(r"\p{L}")
    for token in result.ranks:
        text = token.decode("utf-8", errors="ignore")
        if letter.search(text):  # a token with a letter has only letters (and marks) in it
            assert regex.fullmatch(r"[\p{L}\p{M}]+", text), token
        assert len(regex.findall(r"\p{N}", text)) <= 1, token
    # the same word is the same tokens after a space, a quote, a bracket or nothing; numbers are digit by digit
    word = tok.encode("Thezal")
    for prefix in (" ", '"', "(", "'"):
        assert tok.encode(prefix + "Thezal") == tok.encode(prefix) + word
    assert tok.encode("423") == tok.encode("4") + tok.encode("2") + tok.encode("3")
    # tiktoken's encoding of a whole piece is the concatenation of its units' encodings, on the whole corpus
    for text in texts[:3]:
        for piece in pretokenize(text[:4000]):
            assert tok.encode(piece) == [i for unit in copy_friendly_units(piece) for i in tok.encode(unit)], piece


def test_copy_friendly_units_split():
    from kimi_k2.tokenizer.bpe_trainer import copy_friendly_units

    assert copy_friendly_units(" Paris") == [" ", "Paris"]
    assert copy_friendly_units('"Paris') == ['"', "Paris"]
    assert copy_friendly_units("2025") == ["2", "0", "2", "5"]
    assert copy_friendly_units("You're") == ["You", "'", "re"]
    assert copy_friendly_units(' "') == [' "']
