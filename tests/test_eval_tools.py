"""`kimi-k2 eval` against a deliberately broken endpoint: every failure is counted under its own heading.

The fake endpoint (tests/eval_fake_server.py) shows one defect per case; the suite here is written into a
temporary directory in the shipped format, so these tests also cover loading and checking a suite.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from kimi_k2.eval.checks import COUNTS
from kimi_k2.eval.client import Client
from kimi_k2.eval.report import compare, summary
from kimi_k2.eval.reproduce import run_reproduce
from kimi_k2.eval.suite import SuiteError, load_suite
from kimi_k2.eval.tools import run_tools_eval
from tests.eval_fake_server import FakeEndpoint

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}}}  # fmt: skip
CALL = {"call": True, "names": ["get_weather"]}
NO_CALL = {"call": False}
# case id -> (the defect the fake shows, expectation, extra case fields)
CASES = {
    "good": ("good", CALL, {"then": {"results": {"get_weather": {"condition": "sunny"}}, "expect": NO_CALL}}),
    "drop-id": ("drop-id", CALL, {}),
    "rewrite-id": ("rewrite-id", CALL, {}),
    "duplicate-id": ("duplicate-id", CALL, {}),
    "index-off": ("index-off", CALL, {}),
    "invalid-json": ("invalid-json", CALL, {}),
    "schema": ("schema", CALL, {}),
    "undeclared": ("undeclared", CALL, {}),
    "finish-stop": ("finish-stop", CALL, {}),
    "no-call": ("no-call", NO_CALL, {}),
    "missed-call": ("no-call", CALL, {}),
    "unwanted-call": ("good", NO_CALL, {}),
    "flaky": ("flaky", CALL, {}),
    "bad-request": ("bad-request", CALL, {}),
    "refuse-ids": ("refuse-ids", CALL, {"then": {"results": {"get_weather": {"condition": "sunny"}}, "expect": NO_CALL}}),
}
# request key -> the only non-zero heading it must have
HEADINGS = {"drop-id#1": "id_errors", "rewrite-id#1": "id_errors", "duplicate-id#1": "id_errors",
            "index-off#1": "id_index_off", "invalid-json#1": "json_errors", "schema#1": "schema_errors",
            "undeclared#1": "undeclared", "finish-stop#1": "finish_mismatch"}  # fmt: skip


def write_suite(directory: Path, cases: dict[str, tuple[str, dict, dict]], version: str = "1") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"name": "fake-defects", "version": version, "defaults": {"max_tokens": 32}, "tools": {"get_weather": WEATHER}}
    (directory / "suite.json").write_text(json.dumps(meta))
    lines = [json.dumps({"id": cid, "tools": ["get_weather"], "messages": [{"role": "user", "content": defect}],
                         "expect": expect, **extra}) for cid, (defect, expect, extra) in cases.items()]  # fmt: skip
    (directory / "cases.jsonl").write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="module")
def fake():
    with FakeEndpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def results(fake, tmp_path_factory):
    suite = load_suite(write_suite(tmp_path_factory.mktemp("suite"), CASES))
    with Client(fake.base_url, retries=1, backoff_s=0.01) as client:
        return run_tools_eval(client, suite, "fake-k2", concurrency=4)


def test_every_defect_is_counted_under_its_heading_and_no_other(results):
    rows = {r["key"]: r for r in results["requests"]}
    for key, heading in HEADINGS.items():
        assert rows[key]["error"] is None, key
        assert {k: v for k, v in rows[key]["counts"].items() if v} == {heading: 1}, key
    for key in ("good#1", "good#2", "no-call#1", "flaky#1", "refuse-ids#1", "missed-call#1", "unwanted-call#1"):
        assert not any(rows[key]["counts"].values()), key
    assert rows["rewrite-id#1"]["calls"][0]["problems"]["id_errors"].startswith("id 'call_abc123' is not the model's own")
    assert rows["drop-id#1"]["calls"][0]["problems"]["id_errors"] == "no id"
    assert "already used" in rows["duplicate-id#1"]["calls"][1]["problems"]["id_errors"]
    assert "city" in rows["schema#1"]["calls"][0]["problems"]["schema_errors"]


def test_totals_failures_retries_and_follow_ups(results, fake):
    t = results["totals"]
    assert {k: t[k] for k in COUNTS} == {"json_errors": 1, "schema_errors": 1, "undeclared": 1, "id_errors": 3,
                                         "id_index_off": 1, "finish_mismatch": 1}  # fmt: skip
    assert (t["requests"], t["answered"], t["failed_requests"], t["skipped"]) == (17, 15, 2, 0)
    assert t["follow_ups_refused"] == 1
    rows = {r["key"]: r for r in results["requests"]}
    assert rows["flaky#1"]["attempts"] == 2 and rows["flaky#1"]["http_status"] == 200
    assert rows["bad-request#1"]["error"] == "HTTP 400: this endpoint refuses everything"
    assert rows["bad-request#1"]["attempts"] == 1  # a 400 is an answer, not retried
    assert rows["refuse-ids#2"]["follow_up_refused"] and "functions.get_weather:0" in rows["refuse-ids#2"]["error"]
    # the follow-up carried the endpoint's own id back, and the next id continues K2's counter
    assert rows["good#2"]["finish_reason"] == "stop" and not rows["good#2"]["made_call"]
    # decisions: 11 calls where expected (tp), unwanted-call (fp), missed-call (fn), no-call and good#2 (tn)
    assert {k: t["decision"][k] for k in ("tp", "fp", "fn", "tn")} == {"tp": 11, "fp": 1, "fn": 1, "tn": 2}
    assert t["decision"]["precision"] == round(11 / 12, 4) and t["decision"]["recall"] == round(11 / 12, 4)
    assert (t["names_match"], t["names_checked"]) == (9, 12)  # duplicate-id, undeclared, missed-call miss


def test_manifest_and_reference_agreement(results, fake, tmp_path):
    m = results["manifest"]
    assert m["endpoint"] == fake.base_url and m["model"] == "fake-k2" and m["sampling"]["seed"] == 0
    assert m["suite"]["name"] == "fake-defects" and len(m["suite"]["sha256"]) == 64 and m["suite"]["requests"] == 17
    assert m["package"]["name"] == "kimi-k2" and m["started_utc"].endswith("Z")
    flipped = copy.deepcopy(results)
    row = next(r for r in flipped["requests"] if r["key"] == "no-call#1")
    row["made_call"] = True  # the reference called here; this run did not
    suite = load_suite(Path(m["suite"]["path"]))
    with Client(fake.base_url, retries=1, backoff_s=0.01) as client:
        again = run_tools_eval(client, suite, "fake-k2", reference=flipped)
    a = again["agreement"]
    assert a["compared"] == 15 and a["decisions_differ"] == ["no-call#1"]
    assert (a["tp"], a["fn"], a["recall"]) == (12, 1, round(12 / 13, 4))
    assert a["same_suite"] and "decisions that differ from the reference" in summary(again)


def test_compare_shows_what_differs(results):
    assert "every request has the same outcome" in compare(results, results)
    other = copy.deepcopy(results)
    other["manifest"]["suite"]["sha256"] = "0" * 64
    row = next(r for r in other["requests"] if r["key"] == "schema#1")
    row["counts"]["schema_errors"], row["calls"] = 0, []
    text = compare(results, other, "vendor-a.json", "vendor-b.json")
    assert "warning: the runs used different suites" in text
    assert "schema#1" in text and "[schema]" in text and "vendor-b.json" in text


def test_reproduce_reports_outputs_that_change(fake, tmp_path):
    cases = {"steady": ("good", CALL, {}), "changes": ("random", NO_CALL, {})}
    suite = load_suite(write_suite(tmp_path / "suite", cases))
    with Client(fake.base_url, retries=0) as client:
        doc = run_reproduce(client, suite, "fake-k2", concurrency=2)
    assert [(d["request"], d["pass"]) for d in doc["differences"]] == [("changes", "together"), ("changes", "together-reversed")]
    assert doc["differences"][0]["difference"].startswith("content differs from character 1")  # "reply number N"
    assert not doc["errors"]


def test_cli_writes_results_and_compares(fake, tmp_path, capsys):
    from kimi_k2.cli import main

    suite = write_suite(tmp_path / "suite", {k: CASES[k] for k in ("good", "rewrite-id", "invalid-json")})
    out = tmp_path / "run.json"
    argv = ["eval", "tools", "--base-url", fake.base_url, "--model", "fake-k2", "--suite", str(suite), "--output", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert re.search(r"ids not echoed back correctly \(id_errors\) +1\n", text)
    assert re.search(r"arguments not JSON \(json_errors\) +1\n", text)
    doc = json.loads(out.read_text())
    assert doc["format"] == "kimi-k2-eval-tools/1" and doc["totals"]["requests"] == 4
    assert main(["eval", "compare", str(out), str(out)]) == 0
    assert "every request has the same outcome" in capsys.readouterr().out


def test_user_errors_name_the_file_line_and_field(tmp_path, capsys):
    from kimi_k2.cli import main

    directory = write_suite(tmp_path / "s", {"a": ("good", CALL, {})})
    with (directory / "cases.jsonl").open("a") as f:
        f.write(json.dumps({"id": "b", "tools": ["get_wether"], "messages": [{"role": "user", "content": "x"}], "expect": NO_CALL}) + "\n")
    with pytest.raises(SuiteError, match=r"cases.jsonl:2 \(case 'b'\)\.tools: \['get_wether'\] not defined"):
        load_suite(directory)
    lines = (directory / "cases.jsonl").read_text().splitlines()
    (directory / "cases.jsonl").write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(SuiteError, match=r"cases.jsonl:2\.id: 'a' is used by an earlier case"):
        load_suite(directory)
    (directory / "cases.jsonl").write_text(json.dumps({"id": "c", "tools": ["get_weather"], "messages": [{"role": "user", "content": "x"}],
                                                       "expect": {"call": True, "names": ["calculator"]}}) + "\n")  # fmt: skip
    with pytest.raises(SuiteError, match=r"expect\.names: 'calculator' is not among the case's tools"):
        load_suite(directory)
    meta = json.loads((directory / "suite.json").read_text())
    meta["tools"]["get_weather"]["function"]["parameters"]["properties"]["city"]["type"] = "text"
    (directory / "suite.json").write_text(json.dumps(meta))
    with pytest.raises(SuiteError, match=r"suite.json: tools\.get_weather\.function\.parameters: not a valid JSON Schema"):
        load_suite(directory)
    base = ["eval", "tools", "--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    assert main([*base, "--suite", str(tmp_path / "none")]) == 1
    assert f"{tmp_path / 'none' / 'suite.json'}: no such file" in capsys.readouterr().err
    assert main([*base, "--max-tokens", "0"]) == 1
    assert "--max-tokens 0: must be >= 1" in capsys.readouterr().err
    assert main(["eval", "compare", str(directory / "suite.json"), str(directory / "suite.json")]) == 1
    assert "not a `kimi-k2 eval tools` results file (field 'format'" in capsys.readouterr().err


def test_the_shipped_suite_loads_and_covers_the_issue():
    suite = load_suite()
    tags = {t for c in suite.cases for t in c.tags}
    assert {"single", "parallel", "multi-turn", "tool_choice", "nested", "enum", "optional", "no-call"} <= tags
    choices = {c.tool_choice if c.tool_choice is None or isinstance(c.tool_choice, str) else "named" for c in suite.cases}
    assert choices >= {None, "none", "required", "named"}
    assert any(c.then for c in suite.cases) and any(c.parallel_tool_calls is False for c in suite.cases)
    assert suite.manifest()["requests"] == len(suite.cases) + sum(1 for c in suite.cases if c.then)
