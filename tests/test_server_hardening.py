"""Hostile input and secure defaults on a live server: body size limits (413), JSON content types (415), browser
origins (403), a huge request that must not stall `/health` or other streams, validation before a stream starts,
`Retry-After`, shutdown that ends streams with the documented error event, the vLLM request fields, the
checkpoint's sampling defaults, and `serve`'s refusal to expose a keyless server.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time

import anyio.to_thread
import httpx
import openai
import pytest

from kimi_k2.server import cli as serve_cli
from kimi_k2.server.sse import parse_sse
from tests.server_helpers import MODEL_NAME, scripted_server, trained_tokenizer

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return trained_tokenizer(tmp_path_factory.mktemp("tok"))


def chat_body(text: str = "hi", **extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": text}], **extra}


def messages_body(text: str = "hi", **extra) -> dict:
    return {"model": MODEL_NAME, "max_tokens": 8, "messages": [{"role": "user", "content": text}], **extra}


def openai_error(response: httpx.Response) -> dict:
    payload = response.json()
    assert set(payload) == {"error"} and {"message", "type", "param", "code"} <= set(payload["error"])
    return payload["error"]


def anthropic_error(response: httpx.Response) -> dict:
    payload = response.json()
    assert payload["type"] == "error"
    return payload["error"]


# ------------------------------------------------------------------------------------------------ body, type, origin
def test_oversized_bodies_get_413_in_each_api_schema(tok):
    with scripted_server(tok, max_request_bytes=4096) as srv:
        srv.script("ok")
        big = chat_body("x" * 5000)
        response = httpx.post(srv.url + CHAT, json=big)
        assert response.status_code == 413
        error = openai_error(response)
        assert "4096 bytes" in error["message"] and "--max-request-bytes" in error["message"]
        assert error["code"] == "request_too_large"
        response = httpx.post(srv.url + MESSAGES, json=messages_body("x" * 5000))
        assert response.status_code == 413 and anthropic_error(response)["type"] == "request_too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            data = json.dumps(big).encode()
            for i in range(0, len(data), 1000):
                yield data[i : i + 1000]

        response = httpx.post(srv.url + CHAT, content=chunks(), headers=JSON)
        assert response.status_code == 413 and "more than 4096 bytes" in openai_error(response)["message"]
        with pytest.raises(openai.APIStatusError) as info:  # the SDK sees the status and the message
            openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0).chat.completions.create(**big)
        assert info.value.status_code == 413
        assert httpx.post(srv.url + CHAT, json=chat_body("small")).status_code == 200
        assert srv.state.admission.in_flight == 0


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None])
def test_bodies_not_declared_as_json_get_415(tok, content_type):
    with scripted_server(tok) as srv:
        srv.script("ok")
        headers = {"content-type": content_type} if content_type else {}
        for path, body, schema in ((CHAT, chat_body(), openai_error), (MESSAGES, messages_body(), anthropic_error)):
            data = json.dumps(body).encode()
            response = httpx.post(srv.url + path, content=data, headers=headers)  # raw bytes: no type added
            assert response.status_code == 415, (path, content_type)
            message = schema(response)["message"]
            assert "application/json" in message and (content_type or "no Content-Type") in message
        assert httpx.post(srv.url + CHAT, content=json.dumps(chat_body()).encode(),
                          headers={"content-type": "application/json; charset=utf-8"}).status_code == 200


def test_browser_origins_are_refused_unless_allowed(tok):
    with scripted_server(tok) as srv:
        srv.script("ok")
        evil = {"origin": "https://evil.example"}
        response = httpx.post(srv.url + CHAT, json=chat_body(), headers=evil)
        assert response.status_code == 403
        error = openai_error(response)
        assert "https://evil.example" in error["message"] and "--allowed-origins" in error["message"]
        assert httpx.get(srv.url + "/v1/models", headers=evil).status_code == 403
        response = httpx.post(srv.url + MESSAGES, json=messages_body(), headers=evil)
        assert response.status_code == 403 and anthropic_error(response)["type"] == "permission_error"
        assert httpx.post(srv.url + CHAT, json=chat_body()).status_code == 200  # SDKs and curl send no Origin
    app_origin = "http://localhost:3000"
    with scripted_server(tok, allowed_origins=[app_origin], api_key="sk") as srv:
        srv.script("ok")
        preflight = httpx.options(srv.url + CHAT, headers={
            "origin": app_origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == app_origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        ok = httpx.post(srv.url + CHAT, json=chat_body(), headers={"origin": app_origin, "authorization": "Bearer sk"})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == app_origin
        assert httpx.post(srv.url + CHAT, json=chat_body(), headers={"origin": app_origin}).status_code == 401
        other = httpx.post(srv.url + CHAT, json=chat_body(), headers={"origin": "http://localhost:3001",
                                                                      "authorization": "Bearer sk"})
        assert other.status_code == 403


# ------------------------------------------------------------------------------------------------ no stall
def _hostile_text(n_words: int) -> str:
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "délta", "ωmega", "数据", "x1", "y22", "foo_bar", "Baz"]
    return " ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(n_words))


def _hostile_body(kind: str) -> bytes:
    if kind == "text":  # one huge message: rendering and tokenizing it takes a second or more
        return json.dumps(chat_body(_hostile_text(400_000), max_tokens=4)).encode()
    # ~3 MB of tiny messages: pydantic validates them without releasing the GIL (0.8 s of it in a thread)
    return json.dumps({"model": MODEL_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": "a"}] * 100_000}).encode()


@pytest.mark.parametrize("kind", ["text", "structure"])
def test_a_huge_request_in_flight_does_not_stall_health_or_other_streams(tok, kind):
    """A hostile ~3 MB chat body takes a second or more to validate, render and tokenize (9-24 s froze the whole
    server before this work moved out of the event loop's process). Meanwhile /health and a running stream must
    stay responsive."""
    hostile = _hostile_body(kind)
    with scripted_server(tok, max_model_len=1024, delay_s=0.01) as srv:
        srv.script(" ".join(f"w{i % 10}" for i in range(300)))
        done: dict[str, float] = {}

        def send_hostile() -> None:
            response = httpx.post(srv.url + CHAT, content=hostile, headers=JSON, timeout=120)
            done["status"], done["at"] = response.status_code, time.monotonic()

        gaps: list[float] = []

        def stream() -> None:
            with httpx.stream("POST", srv.url + CHAT, json=chat_body("s", stream=True), timeout=120) as response:
                last = None
                for _ in response.iter_lines():
                    now = time.monotonic()
                    if last is not None and "at" not in done:
                        gaps.append(now - last)
                    last = now

        streamer = threading.Thread(target=stream)
        streamer.start()
        time.sleep(0.5)
        sender = threading.Thread(target=send_hostile)
        sender.start()
        latencies: list[float] = []
        with httpx.Client(base_url=srv.url, timeout=60) as client:
            client.get("/health")  # connect first: only the request's own latency is measured
            time.sleep(0.1)  # the body is on its way
            # probe densely: on a fast, quiet machine the hostile request is done in about half a second
            while "at" not in done and len(latencies) < 1000:
                start = time.monotonic()
                assert client.get("/health").status_code == 200
                latencies.append(time.monotonic() - start)
                time.sleep(0.005)
        sender.join()
        streamer.join()
        assert done["status"] == 400  # far beyond a 1024-token context: refused, after the work
        # measured here: 30-40 ms at worst (in a preparation thread instead of a process: 0.5 s and 0.9 s)
        assert latencies and max(latencies) < 0.3, sorted(latencies)[-5:]
        assert gaps and max(gaps) < 0.3, sorted(gaps)[-5:]
        assert len(latencies) >= 10, "the hostile request finished too fast to test anything"


# ------------------------------------------------------------------------------------------------ before the stream
def test_invalid_streaming_requests_get_400_before_the_stream_starts(tok):
    with scripted_server(tok) as srv:
        srv.script("ok")
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                client.chat.completions.create(**chat_body(), seed=2**64, stream=stream)
            assert info.value.body["param"] == "seed" and "seed=18446744073709551616" in info.value.message
            for prompt in ("", [""], []):
                with pytest.raises(openai.BadRequestError) as info:
                    client.completions.create(model=MODEL_NAME, prompt=prompt, stream=stream)
                assert info.value.body["param"] == "prompt" and "empty" in info.value.message
        response = httpx.post(srv.url + CHAT, json=chat_body(seed=-(2**63) - 1, stream=True))
        assert response.status_code == 400 and openai_error(response)["param"] == "seed"
        assert srv.stats().num_running == 0 and srv.state.admission.in_flight == 0
        seeded = client.chat.completions.create(**chat_body(), seed=2**64 - 1, temperature=1.0)  # the edge is valid
        assert seeded.choices[0].message.content == "ok"


# ------------------------------------------------------------------------------------------------ shutdown
def test_shutdown_ends_open_streams_with_the_error_event(tok):
    with scripted_server(tok, delay_s=0.02, max_model_len=2048, drain_s=0.5) as srv:
        srv.script(" ".join(f"w{i % 10}" for i in range(1000)))
        outcome: dict[str, object] = {}
        started = threading.Event()

        def openai_stream() -> None:
            client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=60)
            try:
                for _ in client.chat.completions.create(**chat_body("a"), stream=True):
                    started.set()
            except Exception as exc:  # what the SDK raises is what the user sees
                outcome["openai"] = exc

        def anthropic_stream() -> None:
            with httpx.stream("POST", srv.url + MESSAGES, json=messages_body("b", max_tokens=1000, stream=True),
                              timeout=60) as response:
                outcome["anthropic"] = parse_sse(response.read().decode())

        threads = [threading.Thread(target=openai_stream), threading.Thread(target=anthropic_stream)]
        for thread in threads:
            thread.start()
        assert started.wait(20)
        start = time.monotonic()
        srv.stop()
        for thread in threads:
            thread.join(30)
        assert time.monotonic() - start < 5  # cut after the 0.5 s drain, well before uvicorn's own deadline
        error = outcome["openai"]
        assert isinstance(error, openai.APIError) and not isinstance(error, openai.APIConnectionError), repr(error)
        assert "shutting down" in str(error)
        name, data = outcome["anthropic"][-1]
        assert name == "error" and json.loads(data)["error"]["type"] == "overloaded_error"
        assert "shutting down" in json.loads(data)["error"]["message"]


def test_a_full_queue_says_when_to_retry(tok):
    with scripted_server(tok, max_num_seqs=1, max_queue=0, delay_s=0.01) as srv:
        srv.script(" ".join(f"w{i % 10}" for i in range(200)))
        with httpx.stream("POST", srv.url + CHAT, json=chat_body(stream=True)) as held:
            assert held.status_code == 200
            for response in (httpx.post(srv.url + CHAT, json=chat_body()), httpx.post(srv.url + MESSAGES, json=messages_body())):
                assert response.status_code == 429 and int(response.headers["retry-after"]) >= 1


# ------------------------------------------------------------------------------------------------ checkpoint defaults
def test_generation_config_supplies_every_sampling_default(tok):
    defaults = {"temperature": 0.3, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1}
    with scripted_server(tok, generation_config=defaults) as srv:
        srv.script("ok")
        seen = []
        original = srv.engine.generate

        def recording(request_id, prompt_ids, params):
            seen.append(params)
            return original(request_id, prompt_ids, params)

        srv.engine.generate = recording
        assert httpx.post(srv.url + CHAT, json=chat_body()).status_code == 200
        assert httpx.post(srv.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "x"}).status_code == 200
        assert httpx.post(srv.url + MESSAGES, json=messages_body()).status_code == 200
        for params in seen:
            assert (params.top_p, params.top_k, params.min_p, params.repetition_penalty) == (0.9, 40, 0.05, 1.1)
        seen.clear()
        assert httpx.post(srv.url + CHAT, json=chat_body(top_p=0.5, top_k=0, repetition_penalty=1.0)).status_code == 200
        assert (seen[0].top_p, seen[0].top_k, seen[0].min_p, seen[0].repetition_penalty) == (0.5, 0, 0.05, 1.0)


# ------------------------------------------------------------------------------------------------ serve's exposure
def serve_args(*argv: str) -> argparse.Namespace:
    from kimi_k2.cli import build_parser

    return build_parser().parse_args(["serve", *argv])


def test_serve_refuses_a_keyless_server_beyond_loopback(tmp_path):
    with pytest.raises(ValueError, match="--host 0.0.0.0 .*no API key.*--insecure-no-api-key"):
        serve_cli.build(serve_args("--host", "0.0.0.0", "--model", str(tmp_path / "unused")))
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        serve_cli.check_exposure(host, None, insecure=False)
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(ValueError, match=f"--host {host}"):
            serve_cli.check_exposure(host, None, insecure=False)
        serve_cli.check_exposure(host, "sk", insecure=False)
        serve_cli.check_exposure(host, None, insecure=True)


def test_api_key_from_flag_file_or_environment(tmp_path):
    env = {serve_cli.API_KEY_ENV: " sk-env \n"}
    assert serve_cli.api_key(serve_args(), env) == "sk-env"
    assert serve_cli.api_key(serve_args(), {}) is None
    key_file = tmp_path / "key"
    key_file.write_text("sk-file\n")
    assert serve_cli.api_key(serve_args("--api-key-file", str(key_file)), env) == "sk-file"
    assert serve_cli.api_key(serve_args("--api-key", "sk-flag"), env) == "sk-flag"
    with pytest.raises(FileNotFoundError, match="--api-key-file .*missing"):
        serve_cli.api_key(serve_args("--api-key-file", str(tmp_path / "missing")), env)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="--api-key-file .*empty"):
        serve_cli.api_key(serve_args("--api-key-file", str(tmp_path / "empty")), env)
    with pytest.raises(SystemExit):  # one source on the command line at a time
        serve_args("--api-key", "a", "--api-key-file", str(key_file))
    serve_cli.check_exposure("0.0.0.0", serve_cli.api_key(serve_args(), env), insecure=False)  # env key: allowed


def test_requests_waiting_to_be_parsed_are_bounded(tok):
    with scripted_server(tok, max_num_seqs=1, max_queue=1) as srv:  # capacity 2
        srv.script("ok")
        gate = threading.Event()
        original = srv.state.preparer.run

        async def held_run(func, body):  # preparation blocks until the gate opens
            await anyio.to_thread.run_sync(gate.wait, 20)
            return await original(func, body)

        srv.state.preparer.run = held_run
        replies: list[httpx.Response] = []
        senders = [threading.Thread(target=lambda: replies.append(httpx.post(srv.url + CHAT, json=chat_body(), timeout=30)))
                   for _ in range(2)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 10
        while srv.state._preparing < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = httpx.post(srv.url + CHAT, json=chat_body())
        gate.set()
        for sender in senders:
            sender.join()
        assert refused.status_code == 429 and "being parsed" in openai_error(refused)["message"]
        assert refused.headers["retry-after"] == "1"
        assert [r.status_code for r in replies] == [200, 200] and srv.state._preparing == 0
