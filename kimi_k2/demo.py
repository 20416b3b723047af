"""`kimi-k2 demo`: the whole system end to end on the built-in nano K2 model.

Starts `kimi-k2 serve` on the nano model (a real subprocess on a free loopback port), then acts as an ordinary
client with the official `openai` SDK: it sends a question with the four demo tools declared, executes the tool
call the model makes, sends the result back under the model's own tool-call id, and prints the final answer and
the whole transcript. The server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kimi_k2.ports import free_port

# Questions a new user types first: cities the nano model never saw in training (one with a non-ASCII letter), a
# computed result. Ask anything else with --question.
DEFAULT_QUESTIONS = ["What's the weather in Paris?", "What time is it in São Paulo?", "Compute 999 * 999"]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before it became healthy")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer {url}/health within {timeout_s:.0f} s")


def converse(client: Any, model: str, question: str, max_rounds: int = 4) -> list[dict[str, Any]]:
    """One user question through as many tool rounds as the model asks for; returns the transcript."""
    from kimi_k2.demo_tools import TOOLS, run_tool

    messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
    for _ in range(max_rounds):
        response = client.chat.completions.create(model=model, messages=messages, tools=TOOLS, temperature=0.0, max_tokens=128)
        choice = response.choices[0]
        message = choice.message
        entry: dict[str, Any] = {"role": "assistant", "content": message.content or ""}
        if message.tool_calls:
            entry["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
                for c in message.tool_calls
            ]
        messages.append(entry)
        if choice.finish_reason != "tool_calls" or not message.tool_calls:
            break
        for call in message.tool_calls:
            try:
                arguments = json.loads(call.function.arguments)
            except json.JSONDecodeError as exc:
                result: dict[str, Any] = {"error": f"arguments are not valid JSON: {exc}"}
            else:
                result = run_tool(call.function.name, arguments)
            # letters as they are ("São Paulo", not "S\u00e3o Paulo"): the nano model was trained on that form
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result, ensure_ascii=False)})
    return messages


def heldout_summary(model_dir: Path) -> str | None:
    """One line of the model's held-out figures from the `eval.json` beside its weights (the nano model ships
    one, written by `recipes/nano_k2/evaluate.py`), or None where there is none in that form."""
    try:
        figures = json.loads((model_dir / "eval.json").read_text(encoding="utf-8"))
        parts = [
            f"place names copied {figures['name_copy']:.1%} of {figures['heldout_place_names']}",
            f"numbers {figures['number_copy']:.1%} of {figures['heldout_number_prompts']}",
            f"right tool {figures['tool_choice']:.1%} of {figures['heldout_tool_prompts']}",
            f"answers {figures['answer_accuracy']:.1%}",
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return "held-out   " + ", ".join(parts) + " (never seen in training; eval.json)"


def print_transcript(messages: list[dict[str, Any]]) -> None:
    for m in messages:
        if m["role"] == "user":
            print(f"  user       {m['content']}")
        elif m["role"] == "tool":
            print(f"  tool       [{m['tool_call_id']}] {m['content']}")
        else:
            for call in m.get("tool_calls", []):
                print(f"  assistant  calls {call['function']['name']}({call['function']['arguments']})  id={call['id']}")
            if m["content"]:
                print(f"  assistant  {m['content']}")


def run(args: argparse.Namespace) -> int:
    try:
        from openai import OpenAI
    except ImportError:
        print("kimi-k2 demo: the demo client uses the official `openai` SDK: pip install openai", file=sys.stderr)
        return 1
    from kimi_k2.assets import default_model_dir

    model_dir = Path(args.model) if args.model else default_model_dir()
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "kimi_k2.cli", "serve", "--model", str(model_dir), "--port", str(port),
               "--served-model-name", "nano-k2", "--max-num-seqs", "4", "--log-level", "warning"]  # fmt: skip
    print(f"model      {model_dir}")
    summary = heldout_summary(model_dir)
    if summary:
        print(summary)
    print(f"server     {' '.join(['kimi-k2', *command[3:]])}")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    server = subprocess.Popen(command, env=env)
    try:
        wait_healthy(url, server, args.timeout)
        # a KIMI_K2_API_KEY in the environment is the server's key too (kimi-k2 serve reads it)
        client = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("KIMI_K2_API_KEY", "").strip() or "not-needed")
        print(f"client     openai SDK → {url}/v1, model nano-k2, tools: get_weather, calculator, convert_units, get_time\n")
        for question in args.question or DEFAULT_QUESTIONS:
            transcript = converse(client, "nano-k2", question)
            print_transcript(transcript)
            final = transcript[-1]
            print(f"  → final answer: {final['content']!r}\n" if final["role"] == "assistant" else "  → no final answer\n")
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        print("server stopped")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="serve the built-in nano K2 model and run a tool-calling conversation with the openai SDK")
    p.add_argument("--question", action="append", help="ask this instead of the default questions (repeatable)")
    p.add_argument("--model", default=None, help="checkpoint directory (default: the built-in nano K2 model)")
    p.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the server to start")
    p.set_defaults(func=run)
