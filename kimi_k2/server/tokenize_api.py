"""vLLM-compatible tokenizer endpoints: `GET /tokenizer_info`, `POST /tokenize`, `POST /detokenize`.

They let a client count and split text exactly as the served model does without a copy of the tokenizer:
lm-evaluation-harness's `local-completions` detects them (its "remote" tokenizer backend) and then sends
token-id prompts whose context length it knows, which its log-likelihood tasks need. Same shapes as vLLM's:
`/tokenize` takes `{"prompt": text}` (special-token markup in the text is encoded as the special tokens, as
`/v1/completions` does; `add_special_tokens` is accepted, and adds nothing: K2's template adds no BOS) and
returns `{"count", "max_model_len", "tokens"}`; `/detokenize` takes `{"tokens": [...]}` and returns
`{"prompt": text}`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from kimi_k2.server import schemas as s
from kimi_k2.server.prep import RequestChecks
from kimi_k2.server.state import ServerState


class TokenizeRequest(s.Strict):
    prompt: str
    model: str | None = None
    add_special_tokens: bool = True


class DetokenizeRequest(s.Strict):
    tokens: list[int]
    model: str | None = None


async def tokenizer_info(request: Request) -> Response:
    state: ServerState = request.app.state.server
    tok = state.tokenizer
    return JSONResponse({
        "tokenizer_class": "TikTokenTokenizer",
        "eos_token": tok.eos_token, "bos_token": tok.bos_token, "pad_token": tok.pad_token,
        "chat_template": tok.chat_template, "model_max_length": state.max_model_len, "vocab_size": tok.vocab_size,
    })  # fmt: skip


def prepare_tokenize(checks: RequestChecks, body: bytes) -> list[int]:
    """Parse and tokenize (in a preparation process, off the event loop, like every request's text work)."""
    req = s.parse_body(TokenizeRequest, body)
    if req.model is not None:
        checks.check_model(req.model)
    return checks.tokenizer.encode(req.prompt, allow_special=True)


def prepare_detokenize(checks: RequestChecks, body: bytes) -> str:
    req = s.parse_body(DetokenizeRequest, body)
    if req.model is not None:
        checks.check_model(req.model)
    checks.check_token_ids(req.tokens, "tokens")
    return checks.tokenizer.decode(req.tokens)


async def tokenize(request: Request) -> Response:
    state: ServerState = request.app.state.server
    ids = await state.prepare(prepare_tokenize, await request.body())
    return JSONResponse({"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids, "token_strs": None})


async def detokenize(request: Request) -> Response:
    state: ServerState = request.app.state.server
    return JSONResponse({"prompt": await state.prepare(prepare_detokenize, await request.body())})
