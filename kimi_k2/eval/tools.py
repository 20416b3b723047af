"""`kimi-k2 eval tools`: run the tool-use suite against an OpenAI-compatible endpoint and score it.

Each case is one request (its `messages`, `tools`, `tool_choice`, ...) with the run's sampling (temperature,
top_p, seed); a case with `then` sends the calls' results back under the ids the endpoint returned and asks
again, so an endpoint that rewrites ids, or refuses its own ids in tool messages, shows it. Cases run on
`concurrency` threads, each case's rounds in order. A request that fails after its retries is recorded with its
error and scored in no other column.

Totals, over requests that got an answer: the call decision against the suite's expectation (true/false
positives and negatives → precision, recall, accuracy), whether the called tool names are the expected ones,
finish reasons, and the failure counts of `checks.COUNTS`; against a reference run, the same decision table
with the reference's decisions as the truth (`agreement`). The results file holds a manifest (endpoint, model,
sampling, seed, suite name/version/hash, package version, time) so a run can be compared and repeated.
"""

from __future__ import annotations

import json
import platform
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kimi_k2.eval.checks import COUNTS, check_response
from kimi_k2.eval.client import Client
from kimi_k2.eval.suite import Case, Expect, Suite

RESULTS_FORMAT = "kimi-k2-eval-tools/1"


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0
    top_p: float | None = None
    seed: int | None = 0
    max_tokens: int | None = None  # None: each case's own

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"--temperature {self.temperature}: must be in [0, 2]")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"--top-p {self.top_p}: must be in (0, 1]")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"--max-tokens {self.max_tokens}: must be >= 1")

    def fields(self, case_max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"temperature": self.temperature, "max_tokens": self.max_tokens or case_max_tokens}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.seed is not None:
            body["seed"] = self.seed
        return body


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kimi-k2")
    except PackageNotFoundError:
        return "unknown (not installed)"


def request_body(case: Case, messages: list[dict[str, Any]], model: str, sampling: Sampling) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, **sampling.fields(case.max_tokens)}
    if case.tools:
        body["tools"] = case.tools
    if case.tool_choice is not None:
        body["tool_choice"] = case.tool_choice
    if case.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = case.parallel_tool_calls
    return body


def _score(case: Case, round_no: int, expect: Expect, messages: list[dict[str, Any]], reply: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.id, "round": round_no, "key": f"{case.id}#{round_no}", "tags": list(case.tags),
                           "expected_call": expect.call, "expected_names": list(expect.names) if expect.names else None,
                           "http_status": reply.status, "attempts": reply.attempts, "seconds": round(reply.seconds, 3)}  # fmt: skip
    if not reply.ok:
        return {**row, "error": reply.error()}
    try:
        checked = check_response(reply.body, case.tools, messages)
    except ValueError as exc:
        return {**row, "error": f"HTTP 200 but malformed: {exc}"}
    names = [c["name"] for c in checked["calls"]]
    row.update(checked)
    row["made_call"] = bool(names)
    row["names_match"] = None if expect.names is None else sorted(names) == sorted(expect.names)
    row["error"] = None
    return row


def _follow_up_messages(case: Case, messages: list[dict[str, Any]], first: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation after round 1: the endpoint's reply as it came, then one result per call, under its id."""
    assistant: dict[str, Any] = {"role": "assistant", "content": first.get("content") or "",
                                 "tool_calls": [{"id": c["id"], "type": "function",
                                                 "function": {"name": c["name"], "arguments": c["arguments"]}}
                                                for c in first["calls"]]}  # fmt: skip
    results = []
    assert case.then is not None
    for c in first["calls"]:
        result = case.then.results.get(c["name"], {"error": f"unknown tool {c['name']!r}"})
        results.append({"role": "tool", "tool_call_id": c["id"], "content": json.dumps(result, ensure_ascii=False)})
    return [*messages, assistant, *results]


def run_case(client: Client, case: Case, model: str, sampling: Sampling) -> list[dict[str, Any]]:
    """Round 1, and round 2 when the case has `then` and round 1 made calls; one scored row per round sent."""
    messages = case.messages
    reply = client.post("chat/completions", request_body(case, messages, model, sampling))
    first = _score(case, 1, case.expect, messages, reply)
    rows = [first]
    if case.then is None:
        return rows
    if first["error"] is not None or not first["made_call"]:
        why = "round 1 failed" if first["error"] is not None else "round 1 made no call to answer"
        rows.append({"case": case.id, "round": 2, "key": f"{case.id}#2", "tags": list(case.tags), "skipped": why})
        return rows
    followed = _follow_up_messages(case, messages, first)
    reply = client.post("chat/completions", request_body(case, followed, model, sampling))
    second = _score(case, 2, case.then.expect, followed, reply)
    if second["error"] is not None and reply.status is not None and 400 <= reply.status < 500:
        second["follow_up_refused"] = True  # the endpoint refused a conversation carrying its own ids
    rows.append(second)
    return rows


def _decision_table(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """(truth, made) pairs → counts, precision, recall, accuracy (None where undefined)."""
    tp = sum(t and m for t, m in pairs)
    fp = sum(not t and m for t, m in pairs)
    fn = sum(t and not m for t, m in pairs)
    tn = sum(not t and not m for t, m in pairs)

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "accuracy": ratio(tp + tn, len(pairs))}  # fmt: skip


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    sent = [r for r in rows if "skipped" not in r]
    answered = [r for r in sent if r.get("error") is None]
    named = [r for r in answered if r.get("names_match") is not None]
    return {
        "requests": len(sent),
        "answered": len(answered),
        "failed_requests": len(sent) - len(answered),
        "skipped": len(rows) - len(sent),
        "follow_ups_refused": sum(1 for r in sent if r.get("follow_up_refused")),
        "calls": sum(len(r["calls"]) for r in answered),
        "decision": _decision_table([(r["expected_call"], r["made_call"]) for r in answered]),
        "names_match": sum(r["names_match"] for r in named),
        "names_checked": len(named),
        "finish_reasons": dict(sorted(Counter(str(r["finish_reason"]) for r in answered).items())),
        **{k: sum(r["counts"][k] for r in answered) for k in COUNTS},
    }


def agreement(rows: list[dict[str, Any]], reference: dict[str, Any]) -> dict[str, Any]:
    """This run's call decisions against a reference run's, request by request (the reference is the truth)."""
    ref = {r["key"]: r for r in reference.get("requests", []) if "skipped" not in r and r.get("error") is None}
    pairs, differ = [], []
    for r in rows:
        if "skipped" in r or r.get("error") is not None or r["key"] not in ref:
            continue
        pairs.append((ref[r["key"]]["made_call"], r["made_call"]))
        if ref[r["key"]]["made_call"] != r["made_call"]:
            differ.append(r["key"])
    manifest = reference.get("manifest", {})
    return {"reference": {"endpoint": manifest.get("endpoint"), "model": manifest.get("model"),
                          "suite_sha256": manifest.get("suite", {}).get("sha256")},
            "compared": len(pairs), **_decision_table(pairs), "decisions_differ": differ}  # fmt: skip


def run_tools_eval(
    client: Client,
    suite: Suite,
    model: str,
    sampling: Sampling = Sampling(),
    *,
    concurrency: int = 4,
    reference: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every case; returns the results document (manifest, totals, per-request rows, optional agreement).
    `progress(n)` is called with the number of requests each finished case sent."""
    if concurrency < 1:
        raise ValueError(f"--concurrency {concurrency}: must be >= 1")
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.monotonic()

    def one(case: Case) -> list[dict[str, Any]]:
        rows = run_case(client, case, model, sampling)
        if progress is not None:
            progress(sum(1 for r in rows if "skipped" not in r))
        return rows

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        rows = [row for case_rows in pool.map(one, suite.cases) for row in case_rows]
    doc: dict[str, Any] = {
        "format": RESULTS_FORMAT,
        "manifest": {
            "command": "kimi-k2 eval tools",
            "endpoint": client.base_url,
            "model": model,
            "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p, "seed": sampling.seed,
                         "max_tokens": sampling.max_tokens or "per case"},  # fmt: skip
            "suite": suite.manifest(),
            "package": {"name": "kimi-k2", "version": package_version()},
            "python": platform.python_version(),
            "concurrency": concurrency,
            "retries": client.retries,
            "started_utc": started,
            "seconds": round(time.monotonic() - t0, 2),
        },
        "totals": totals(rows),
        "requests": rows,
    }
    if reference is not None:
        doc["agreement"] = agreement(rows, reference)
        doc["agreement"]["same_suite"] = doc["agreement"]["reference"]["suite_sha256"] == suite.sha256
    return doc


def read_results(path: str) -> dict[str, Any]:
    """A results file written by `kimi-k2 eval tools --output`; ValueError names the file and what is wrong."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such results file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{path}: not a `kimi-k2 eval tools` results file (field 'format' must be {RESULTS_FORMAT!r})")
    return doc
