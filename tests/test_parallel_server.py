"""The server on a model sharded over two ranks (gloo, CPU): the same tool-call round trip as one process, and a
worker killed mid-generation ends the request with an error and the server with a non-zero exit (no hang)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from kimi_k2.assets import default_model_dir
from kimi_k2.cli import build_parser
from kimi_k2.demo_tools import TOOLS, run_tool
from kimi_k2.ports import free_port
from kimi_k2.server import cli as serve_cli
from kimi_k2.server.background import BackgroundServer

QUESTION = "What's the weather in Paris?"


def round_trip(url: str) -> list[dict]:
    """A tool-call conversation with the openai SDK: question → tool call → tool result → answer."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    messages: list = [{"role": "user", "content": QUESTION}]
    transcript = []
    for _ in range(3):
        reply = client.chat.completions.create(model="nano-k2", messages=messages, tools=TOOLS, temperature=0,
                                               max_tokens=64)
        message = reply.choices[0].message
        transcript.append(message.model_dump(exclude_none=True))
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            break
        for call in message.tool_calls:
            result = run_tool(call.function.name, json.loads(call.function.arguments))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    return transcript


def serve(*extra: str):
    args = build_parser().parse_args(["serve", "--model", str(default_model_dir()), "--kv-memory", "16MiB",
                                      "--max-model-len", "1024", "--served-model-name", "nano-k2", "--threads", "1",
                                      *extra])
    return serve_cli.build(args)


def test_tool_call_round_trip_on_two_ranks_equals_one_process():
    transcripts = []
    for extra in ([], ["--tensor-parallel-size", "2", "--distributed-timeout", "120"]):
        app, engine = serve(*extra)
        try:
            with BackgroundServer(app) as running:
                transcripts.append(round_trip(running.url))
        finally:
            engine.shutdown()
    single, sharded = transcripts
    assert single[0].get("tool_calls"), "the demo model calls a tool for this question"
    assert sharded == single


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_killing_a_worker_fails_the_request_and_exits_the_server():
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "kimi_k2.cli", "serve", "--model", str(default_model_dir()), "--port", str(port),
         "--tensor-parallel-size", "2", "--distributed-timeout", "60", "--kv-memory", "16MiB", "--threads", "1",
         "--prep-processes", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        deadline = time.monotonic() + 120
        for line in server.stdout:
            if line.startswith("serving ") or time.monotonic() > deadline:
                break
        assert server.poll() is None, "the server did not start"
        while time.monotonic() < deadline:  # "serving" is printed before uvicorn listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        # with --prep-processes 0 the server's only spawned children are its worker ranks
        workers = [p for p in _children(server.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")]
        assert len(workers) == 1
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.completions.create(model="nano-k2", prompt="Once upon a time", max_tokens=3000, stream=True,
                                           extra_body={"ignore_eos": True})
        got = 0
        with pytest.raises((openai.APIError, openai.APIConnectionError)):
            for _ in stream:
                got += 1
                if got == 5:  # mid-generation: kill every child process of the server (the worker rank)
                    for pid in workers:
                        os.kill(pid, signal.SIGKILL)
        assert got >= 5
        assert server.wait(timeout=60) != 0
        log = server.stdout.read()
        assert "a rank of the sharded model failed" in log and "rank 1 exited with code -9" in log, log[-2000:]
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=30)


def test_torchrun_ranks_answer_like_one_process():
    """The multi-host entry point on one host: `torchrun --nproc-per-node 2 -m kimi_k2.cli generate
    --tensor-parallel-size 2` (rank 0 answers, rank 1 runs steps) prints what one process prints."""
    common = ["generate", "--prompt", QUESTION, "--max-tokens", "24", "--temperature", "0", "--threads", "1"]
    single = subprocess.run([sys.executable, "-m", "kimi_k2.cli", *common], capture_output=True, text=True, timeout=120)
    torchrun = Path(sys.executable).with_name("torchrun")
    ranks = subprocess.run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(free_port()), "-m",
                            "kimi_k2.cli", *common, "--tensor-parallel-size", "2"],
                           capture_output=True, text=True, timeout=240)
    assert single.returncode == 0 and ranks.returncode == 0, ranks.stderr[-2000:]
    assert ranks.stdout == single.stdout and single.stdout.strip()
