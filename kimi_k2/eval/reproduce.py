"""`kimi-k2 eval reproduce`: do the same seeded requests give the same output, alone and in company?

Every case's first request is sent with sampling on (temperature > 0) and a fixed seed per request, three times:
one at a time (`alone`), all at once in suite order (`together`), and all at once in reverse order
(`together-reversed`), so each request is batched with different neighbours at different positions. An output
is its finish reason, content and tool calls (id, name, arguments); any output that differs from the `alone`
pass is reported, with the first place it differs. An endpoint whose sampling is seeded per request and whose
arithmetic does not depend on the batch reports none (this project's server must report none).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kimi_k2.eval.client import Client
from kimi_k2.eval.suite import Suite
from kimi_k2.eval.tools import Sampling, package_version, request_body

RESULTS_FORMAT = "kimi-k2-eval-reproduce/1"
PASSES = ("alone", "together", "together-reversed")


def fingerprint(body: Any) -> dict[str, Any]:
    """What must be identical between two runs of one seeded request."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    calls = [[c.get("id"), (c.get("function") or {}).get("name"), (c.get("function") or {}).get("arguments")]
             for c in message.get("tool_calls") or []]  # fmt: skip
    return {"finish_reason": choice.get("finish_reason"), "content": message.get("content"), "tool_calls": calls}


def first_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    for key in ("finish_reason", "tool_calls", "content"):
        if a[key] != b[key]:
            if key == "content" and isinstance(a[key], str) and isinstance(b[key], str):
                at = next((i for i, (x, y) in enumerate(zip(a[key], b[key])) if x != y), min(len(a[key]), len(b[key])))
                return f"content differs from character {at}: {a[key][at:at + 40]!r} vs {b[key][at:at + 40]!r}"
            return f"{key}: {str(a[key])[:80]} vs {str(b[key])[:80]}"
    return "identical"


def run_reproduce(
    client: Client,
    suite: Suite,
    model: str,
    *,
    temperature: float = 1.0,
    seed: int = 1234,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The three passes and every difference; `progress(1)` after each request."""
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency}: must be >= 1")
    if not 0 < temperature <= 2:
        raise ValueError(f"--temperature {temperature}: must be in (0, 2] (greedy decoding would not test seeded sampling)")
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()
    # each request its own seed: equal seeds would hide a server that seeds per batch instead of per request
    bodies = [request_body(case, case.messages, model, Sampling(temperature, None, seed + i)) for i, case in enumerate(suite.cases)]
    keys = [case.id for case in suite.cases]

    def send(i: int) -> tuple[int, dict[str, Any] | str]:
        reply = client.post("chat/completions", bodies[i])
        if progress is not None:
            progress(1)
        if not reply.ok:
            return i, reply.error()
        try:
            return i, fingerprint(reply.body)
        except (KeyError, IndexError, TypeError, AttributeError):
            return i, f"HTTP 200 but malformed: {str(reply.body)[:120]}"

    outputs: dict[str, dict[int, dict[str, Any] | str]] = {}
    order = list(range(len(bodies)))
    outputs["alone"] = dict(send(i) for i in order)
    for name, sequence in (("together", order), ("together-reversed", order[::-1])):
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outputs[name] = dict(pool.map(send, sequence))
    differences, errors = [], []
    for i, key in enumerate(keys):
        base = outputs["alone"][i]
        for name in PASSES:
            out = outputs[name][i]
            if isinstance(out, str):
                errors.append({"request": key, "pass": name, "error": out})
            elif name != "alone" and isinstance(base, dict) and out != base:
                differences.append({"request": key, "pass": name, "difference": first_difference(base, out),
                                    "alone": base, "this_pass": out})  # fmt: skip
    return {
        "format": RESULTS_FORMAT,
        "manifest": {
            "command": "kimi-k2 eval reproduce",
            "endpoint": client.base_url,
            "model": model,
            "sampling": {"temperature": temperature, "seed": f"{seed} + the request's position in the suite"},
            "suite": suite.manifest(),
            "package": {"name": "kimi-k2", "version": package_version()},
            "passes": list(PASSES),
            "concurrency": concurrency,
            "started_utc": started,
            "seconds": round(time.monotonic() - t0, 2),
        },
        "requests": len(bodies),
        "differences": differences,
        "errors": errors,
        "outputs": {key: outputs["alone"][i] for i, key in enumerate(keys)},
    }


def summary(doc: dict[str, Any]) -> str:
    m = doc["manifest"]
    lines = [f"{m['endpoint']}  model {m['model']}  {doc['requests']} requests × {len(m['passes'])} passes "
             f"({', '.join(m['passes'])}), temperature {m['sampling']['temperature']}, {m['seconds']} s"]  # fmt: skip
    for d in doc["differences"]:
        lines.append(f"DIFFERS  {d['request']} ({d['pass']} vs alone): {d['difference']}")
    for e in doc["errors"]:
        lines.append(f"ERROR    {e['request']} ({e['pass']}): {e['error']}")
    if not doc["differences"] and not doc["errors"]:
        lines.append(f"every output identical in all {len(m['passes'])} passes")
    else:
        lines.append(f"{len(doc['differences'])} output(s) differ, {len(doc['errors'])} request(s) failed")
    return "\n".join(lines)
