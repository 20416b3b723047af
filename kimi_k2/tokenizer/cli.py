"""`kimi-k2 tokenizer …`: train a K2-format tokenizer, and encode / decode with one for inspection."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("tokenizer", help="train or inspect a K2-format tokenizer")
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train",
        help="train a byte-level BPE tokenizer and write tiktoken.model + tokenizer_config.json",
        description="Train byte-level BPE with K2's pre-tokenizer. The vocabulary is 256 byte tokens, then merges, "
        "then K2's 256 special slots; --vocab-size counts all of them (the model's vocab_size).",
    )
    train.add_argument("corpus", nargs="+", help="UTF-8 text files")
    train.add_argument("--vocab-size", type=int, required=True, help="total ids incl. 256 special slots (>= 512)")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--min-frequency", type=int, default=2, help="stop when the best pair occurs less often")
    train.add_argument("--chat-template", help="a .jinja file to store as the tokenizer's chat_template")
    train.add_argument(
        "--copy-friendly",
        action="store_true",
        help="no merge joins a letter to another character or two digits: a word or number is the same tokens "
        "after a space, a quote or nothing (longer sequences; small models copy values verbatim more easily)",
    )
    train.add_argument("--model-max-length", type=int, help="model_max_length written to tokenizer_config.json")
    train.set_defaults(func=_train)

    encode = sub.add_parser("encode", help="print the token ids of a text")
    encode.add_argument("tokenizer_dir")
    encode.add_argument("text")
    encode.add_argument("--allow-special", action="store_true", help="turn special-token strings into their ids")
    encode.set_defaults(func=_encode)

    decode = sub.add_parser("decode", help="print the text of token ids")
    decode.add_argument("tokenizer_dir")
    decode.add_argument("ids", nargs="+", type=int)
    decode.set_defaults(func=_decode)


def _train(args: argparse.Namespace) -> int:
    from kimi_k2.tokenizer.bpe_trainer import read_corpus, train_and_save

    template = None
    if args.chat_template:
        path = Path(args.chat_template)
        if not path.is_file():
            raise FileNotFoundError(f"chat template not found: {path}")
        template = path.read_text(encoding="utf-8")
    texts = read_corpus(args.corpus)
    result = train_and_save(
        texts,
        args.vocab_size,
        args.out,
        min_frequency=args.min_frequency,
        chat_template=template,
        model_max_length=args.model_max_length,
        copy_friendly=args.copy_friendly,
        progress=sys.stderr.isatty(),
    )
    total = len(result.ranks) + 256
    print(f"wrote {args.out}: {len(result.ranks)} BPE ranks + 256 special slots = vocab_size {total} "
          f"({result.distinct_pieces} distinct pieces)")
    if result.stopped_early:
        print(f"note: stopped after {result.merges} of {result.requested_merges} merges "
              f"(no pair occurs {args.min_frequency}+ times); use vocab_size {total}", file=sys.stderr)
    return 0


def _encode(args: argparse.Namespace) -> int:
    from kimi_k2.tokenizer.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(args.tokenizer_dir)
    print(json.dumps(tokenizer.encode(args.text, allow_special=args.allow_special)))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from kimi_k2.tokenizer.tokenizer import Tokenizer

    print(Tokenizer.from_pretrained(args.tokenizer_dir).decode(args.ids))
    return 0
