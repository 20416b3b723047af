"""Behaviour under load and bad input: bounded queue, client disconnects free KV blocks, batching, slow clients,
fuzzed bodies, and the Prometheus metrics — on a live server over the scripted model and the real engine."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import time

import httpx
import pytest

from tests.server_helpers import MODEL_NAME, scripted_server, trained_tokenizer

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return trained_tokenizer(tmp_path_factory.mktemp("tok"))


def body(text: str = "hi", stream: bool = False, **extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": text}], "stream": stream, **extra}


def long_reply(n_words: int) -> str:
    return " ".join(f"w{i % 10}" for i in range(n_words))


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def metric(text: str, name: str) -> float:
    """The value of series `name` (`metric` or `metric{labels}`), whose labels come after the model_name label."""
    base, _, labels = name.partition("{")
    series = f'{base}{{model_name="{MODEL_NAME}"' + (f",{labels}" if labels else "}")
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.M)
    assert match, f"{series} not in /metrics"
    return float(match[1])


def test_queue_overflow_gets_429_at_once(tok):
    with scripted_server(tok, max_num_seqs=2, max_queue=1, delay_s=0.005) as srv:
        srv.script(long_reply(400))

        async def scenario() -> None:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                async with contextlib.AsyncExitStack() as held:  # 2 running + 1 queued streams, held open
                    for i in range(3):
                        response = await held.enter_async_context(client.stream("POST", CHAT, json=body(f"q{i}", stream=True)))
                        assert response.status_code == 200
                    assert srv.state.admission.in_flight == 3
                    start = time.monotonic()
                    refused = await client.post(CHAT, json=body("one too many"))
                    assert time.monotonic() - start < 1.0  # refused at once, not after the others finish
                    assert refused.status_code == 429
                    error = refused.json()["error"]
                    assert error["type"] == "rate_limit_error" and "--max-queue 1" in error["message"]
                    anthropic = await client.post("/v1/messages", json={
                        "model": MODEL_NAME, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
                    assert anthropic.status_code == 429 and anthropic.json()["error"]["type"] == "rate_limit_error"

        asyncio.run(scenario())
        assert metric(httpx.get(srv.url + "/metrics").text, "kimi_k2_requests_rejected_total") == 2
        assert wait_until(lambda: srv.state.admission.in_flight == 0 and srv.stats().num_running == 0)
        srv.script("room again")
        assert httpx.post(srv.url + CHAT, json=body()).status_code == 200


def test_client_disconnect_mid_stream_aborts_and_frees_kv_blocks(tok):
    with scripted_server(tok, delay_s=0.01, max_model_len=2048) as srv:
        srv.script(long_reply(600))
        assert srv.stats().kv_blocks_used == 0
        with httpx.stream("POST", srv.url + CHAT, json=body(stream=True), timeout=30) as response:
            received = 0
            for line in response.iter_lines():
                received += line.startswith("data: ")
                if received == 20:
                    break
            assert srv.stats().kv_blocks_used > 0 and srv.stats().num_running == 1
        # the connection is closed here, mid-stream
        assert wait_until(lambda: srv.stats().num_running == 0 and srv.stats().kv_blocks_used == 0)
        text = httpx.get(srv.url + "/metrics").text
        assert metric(text, "kimi_k2_kv_blocks_used") == 0 and metric(text, "kimi_k2_requests_running") == 0
        assert metric(text, 'kimi_k2_request_finish_total{reason="abort"}') == 1
        assert metric(text, "kimi_k2_kv_blocks_free") == srv.stats().kv_blocks_total
        assert metric(text, "kimi_k2_generation_tokens_total") < 600  # stopped long before the script's end

        # a non-streaming client that gives up is detected too
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/messages", timeout=0.5, json={
                "model": MODEL_NAME, "max_tokens": 1000, "messages": [{"role": "user", "content": "x"}]})
        assert wait_until(lambda: srv.stats().num_running == 0 and srv.stats().kv_blocks_used == 0)
        assert srv.state.admission.in_flight == 0


def test_clients_that_vanish_at_once_leak_nothing(tok):
    with scripted_server(tok, delay_s=0.005) as srv:
        srv.script(long_reply(200))
        port = int(srv.url.rsplit(":", 1)[1])
        for stream in (True, False, True, False, True, False):
            payload = json.dumps(body("bye", stream=stream)).encode()
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        assert wait_until(lambda: srv.state.admission.in_flight == 0 and srv.stats().num_running == 0
                          and srv.stats().kv_blocks_used == 0)


def test_concurrent_requests_are_batched(tok):
    with scripted_server(tok, max_num_seqs=8) as srv:
        srv.script(long_reply(30), delay_s=0.005)
        calls_before = srv.model.forward_calls

        async def run() -> list[dict]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                replies = await asyncio.gather(*(client.post(CHAT, json=body(f"q{i}")) for i in range(6)))
            return [r.json() for r in replies]

        replies = asyncio.run(run())
        tokens = sum(r["usage"]["completion_tokens"] for r in replies)
        assert all(r["choices"][0]["message"]["content"] == long_reply(30) for r in replies)
        forward_calls = srv.model.forward_calls - calls_before
        assert forward_calls < tokens / 2, (forward_calls, tokens)  # one step serves many requests


def test_slow_client_does_not_block_others(tok):
    with scripted_server(tok, max_model_len=4096, num_kv_blocks=512) as srv:
        srv.script(long_reply(800))
        finished_before = srv.model.forward_calls
        slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
        payload = json.dumps(body("slow", stream=True)).encode()
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        try:
            assert wait_until(lambda: srv.stats().num_running == 1)
            start = time.monotonic()
            for i in range(3):
                reply = httpx.post(srv.url + CHAT, timeout=30, json=body(f"fast {i}", max_tokens=10)).json()
                assert reply["usage"]["completion_tokens"] == 10
            assert time.monotonic() - start < 15
            # the engine finishes the slow request although its client has read (almost) nothing
            assert wait_until(lambda: srv.stats().num_running == 0, timeout=60)
            assert srv.model.forward_calls - finished_before >= 800
        finally:
            slow.close()
        assert wait_until(lambda: srv.state.admission.in_flight == 0)


def _mutations(rng: random.Random, valid: dict) -> list[bytes]:
    out = []
    text = json.dumps(valid)
    for _ in range(20):
        kind = rng.randrange(4)
        if kind == 0:  # truncate
            out.append(text[: rng.randrange(len(text))].encode())
        elif kind == 1:  # flip a byte
            data = bytearray(text.encode())
            data[rng.randrange(len(data))] = rng.randrange(256)
            out.append(bytes(data))
        elif kind == 2:  # replace a top-level value with a random JSON value
            mutated = dict(valid)
            key = rng.choice(list(mutated))
            mutated[key] = rng.choice([None, -1, 10**30, 1.5, "", "x" * 50, [], {}, [None], {"a": [1]}, True])
            out.append(json.dumps(mutated).encode())
        else:  # random bytes
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    return out


def test_fuzzed_bodies_never_crash_the_server(tok):
    rng = random.Random(0)
    with scripted_server(tok, max_model_len=256) as srv:
        srv.script("ok")
        cases = {
            CHAT: body("hello", max_tokens=4, tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]),
            "/v1/messages": {"model": MODEL_NAME, "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
            "/v1/completions": {"model": MODEL_NAME, "prompt": [1, 2, 3], "max_tokens": 4},
            "/v1/messages/count_tokens": {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}]},
        }
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            for path, valid in cases.items():
                assert client.post(path, json=valid).status_code == 200
                for data in _mutations(rng, valid):
                    response = client.post(path, content=data, headers={"content-type": "application/json"})
                    assert response.status_code in (200, 400, 404), (path, data, response.text)
                    if response.status_code != 200:
                        payload = response.json()
                        assert ("error" in payload) and (payload.get("type") == "error") == path.startswith("/v1/messages")
            assert client.get("/health").status_code == 200
        assert srv.state.admission.in_flight == 0


def test_metrics_exposition(tok):
    with scripted_server(tok) as srv:
        srv.script("a b c d")
        httpx.post(srv.url + CHAT, json=body())
        with httpx.stream("POST", srv.url + CHAT, json=body(stream=True)) as response:
            response.read()
        httpx.post(srv.url + CHAT, json=body(model="nope"))
        response = httpx.get(srv.url + "/metrics")
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.text
        for line in text.splitlines():
            assert line.startswith("# ") or re.fullmatch(r'[a-z_:][a-z0-9_:]*(\{[^}]*\})? [-+0-9.eInf]+', line), line
        assert metric(text, 'kimi_k2_requests_total{endpoint="/v1/chat/completions",status="200"}') == 2
        assert metric(text, 'kimi_k2_requests_total{endpoint="/v1/chat/completions",status="404"}') == 1
        completion = 2 * (len(tok.encode("a b c d")) + 1)
        assert metric(text, "kimi_k2_generation_tokens_total") == completion
        assert metric(text, "kimi_k2_time_to_first_token_seconds_count") == 2
        assert metric(text, "kimi_k2_inter_token_latency_seconds_count") == completion - 2
        for name in ("kimi_k2_prompt_tokens_total", "kimi_k2_queue_length", "kimi_k2_kv_blocks_used", "kimi_k2_kv_blocks_free",
                     "kimi_k2_e2e_request_latency_seconds_count", "kimi_k2_requests_in_flight"):
            metric(text, name)
        assert metric(text, "kimi_k2_kv_cache_usage_ratio") == 0  # idle: every block free
