"""The tool-use suite: versioned data in the repository, loaded and checked before anything is sent.

A suite is a directory with two files:

* `suite.json` — `{"name", "version", "description", "defaults": {"max_tokens"}, "tools": {NAME: OpenAI tool}}`:
  the tool definitions cases refer to by name, so one schema is written once.
* `cases.jsonl` — one case per line: `id` (unique), `messages` (OpenAI chat messages), `tools` (names from
  suite.json; omit for none), optional `tool_choice` / `parallel_tool_calls` / `max_tokens` / `tags`,
  `expect` (`{"call": bool, "names": [tool names, one per expected call, any order]}`) and optionally `then`
  (`{"results": {TOOL: result}, "expect": {...}}`: send each call's result back under the id the endpoint
  returned, then ask again).

The suite's identity in a results file is its name, version and the SHA-256 of both files' bytes: a changed
case changes the hash, so two runs compare only when they ran the same requests. Every error names the file,
the line and the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUITES_DIR = Path(__file__).resolve().parent / "suites"
DEFAULT_SUITE = SUITES_DIR / "tools-v1"
CASE_FIELDS = {"id", "tags", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "expect", "then"}
ROLES = {"system", "developer", "user", "assistant", "tool"}


class SuiteError(ValueError):
    """A suite file is malformed; the message names the file, line and field."""


@dataclass(frozen=True)
class Expect:
    call: bool
    names: tuple[str, ...] | None = None  # one per expected call, order-free; None: any


@dataclass(frozen=True)
class FollowUp:
    results: dict[str, Any]  # tool name -> the result sent back for each call to it
    expect: Expect


@dataclass(frozen=True)
class Case:
    id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]  # full OpenAI tool definitions ([] for none)
    expect: Expect
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_tokens: int = 256
    tags: tuple[str, ...] = ()
    then: FollowUp | None = None

    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    sha256: str
    path: str
    cases: list[Case] = field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "path": self.path,
                "cases": len(self.cases), "requests": sum(2 if c.then else 1 for c in self.cases)}  # fmt: skip


def _expect(raw: Any, where: str) -> Expect:
    if not isinstance(raw, dict) or not isinstance(raw.get("call"), bool):
        raise SuiteError(f"{where}: must be an object with a boolean 'call'")
    unknown = set(raw) - {"call", "names"}
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {sorted(unknown)} (allowed: call, names)")
    names = raw.get("names")
    if names is not None:
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SuiteError(f"{where}.names: must be a list of tool names")
        if bool(names) != raw["call"]:
            raise SuiteError(f"{where}.names: {'needs at least one name when call is true' if raw['call'] else 'must be empty when call is false'}")
        names = tuple(names)
    return Expect(raw["call"], names)


def _case(raw: Any, tools: dict[str, Any], default_max_tokens: int, where: str) -> Case:
    if not isinstance(raw, dict):
        raise SuiteError(f"{where}: a case must be a JSON object")
    unknown = set(raw) - CASE_FIELDS
    if unknown:
        raise SuiteError(f"{where}: unknown field(s) {sorted(unknown)} (allowed: {', '.join(sorted(CASE_FIELDS))})")
    case_id = raw.get("id")
    if not isinstance(case_id, str) or not case_id:
        raise SuiteError(f"{where}.id: must be a non-empty string")
    where = f"{where} (case {case_id!r})"
    messages = raw.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SuiteError(f"{where}.messages: must be a non-empty list of chat messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise SuiteError(f"{where}.messages[{i}].role: must be one of {sorted(ROLES)}")
    names = raw.get("tools", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SuiteError(f"{where}.tools: must be a list of tool names defined in suite.json")
    missing = [n for n in names if n not in tools]
    if missing:
        raise SuiteError(f"{where}.tools: {missing} not defined in suite.json's 'tools' (defined: {sorted(tools)})")
    expect = _expect(raw.get("expect"), f"{where}.expect")
    for n in expect.names or ():
        if n not in names:
            raise SuiteError(f"{where}.expect.names: {n!r} is not among the case's tools {names}")
    then = None
    if "then" in raw:
        t = raw["then"]
        if not isinstance(t, dict) or not isinstance(t.get("results"), dict) or set(t) - {"results", "expect"}:
            raise SuiteError(f"{where}.then: must be {{'results': {{TOOL: result}}, 'expect': {{...}}}}")
        if not expect.call:
            raise SuiteError(f"{where}.then: a follow-up needs a first round that expects a call")
        absent = [n for n in expect.names or () if n not in t["results"]]
        if absent:
            raise SuiteError(f"{where}.then.results: no result for the expected call(s) {absent}")
        then = FollowUp(dict(t["results"]), _expect(t.get("expect"), f"{where}.then.expect"))
    choice = raw.get("tool_choice")
    if choice is not None and choice not in ("auto", "none", "required"):
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if name not in names:
            raise SuiteError(f"{where}.tool_choice: must be auto/none/required or name one of the case's tools {names}")
    parallel = raw.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise SuiteError(f"{where}.parallel_tool_calls: must be true, false or absent")
    max_tokens = raw.get("max_tokens", default_max_tokens)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise SuiteError(f"{where}.max_tokens: must be a positive integer")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
        raise SuiteError(f"{where}.tags: must be a list of strings")
    return Case(case_id, messages, [tools[n] for n in names], expect, choice, parallel, max_tokens, tuple(tags), then)


def load_suite(directory: str | Path = DEFAULT_SUITE) -> Suite:
    """Read and check a suite directory (suite.json + cases.jsonl)."""
    directory = Path(directory)
    meta_path, cases_path = directory / "suite.json", directory / "cases.jsonl"
    for path in (meta_path, cases_path):
        if not path.is_file():
            raise SuiteError(f"{path}: no such file (a suite directory holds suite.json and cases.jsonl)")
    meta_bytes, cases_bytes = meta_path.read_bytes(), cases_path.read_bytes()
    try:
        meta = json.loads(meta_bytes)
    except json.JSONDecodeError as exc:
        raise SuiteError(f"{meta_path}: not valid JSON: {exc}") from None
    for key, kind in (("name", str), ("version", str), ("tools", dict)):
        if not isinstance(meta.get(key), kind):
            raise SuiteError(f"{meta_path}: field {key!r} must be a {kind.__name__}")
    from jsonschema import Draft202012Validator, SchemaError  # lazy: only loading a suite needs it

    for name, tool in meta["tools"].items():
        if not isinstance(tool, dict) or tool.get("function", {}).get("name") != name:
            raise SuiteError(f"{meta_path}: tools.{name}: must be an OpenAI tool whose function.name is {name!r}")
        try:
            Draft202012Validator.check_schema(tool["function"].get("parameters") or {})
        except SchemaError as exc:
            raise SuiteError(f"{meta_path}: tools.{name}.function.parameters: not a valid JSON Schema: {exc.message}") from None
    default_max_tokens = int(meta.get("defaults", {}).get("max_tokens", 256))
    cases: list[Case] = []
    seen: set[str] = set()
    for lineno, line in enumerate(cases_bytes.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{cases_path}:{lineno}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SuiteError(f"{where}: not valid JSON: {exc}") from None
        case = _case(raw, meta["tools"], default_max_tokens, where)
        if case.id in seen:
            raise SuiteError(f"{where}.id: {case.id!r} is used by an earlier case")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise SuiteError(f"{cases_path}: no cases")
    digest = hashlib.sha256()
    for part in (b"suite.json\0", meta_bytes, b"\0cases.jsonl\0", cases_bytes):
        digest.update(part)
    return Suite(meta["name"], meta["version"], digest.hexdigest(), str(directory), cases)
