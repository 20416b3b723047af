"""Plain-text tables of evaluation results: one run (per request and totals) and two runs side by side.

Pure string building (the CLI prints). Column headings are the names used in the results file, so a figure on
the terminal can be found in the JSON.
"""

from __future__ import annotations

from typing import Any

from kimi_k2.eval.checks import COUNTS

SHORT = {"json_errors": "json", "schema_errors": "schema", "undeclared": "undecl", "id_errors": "ids",
         "id_index_off": "idx", "finish_mismatch": "finish?"}  # fmt: skip


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _yn(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def request_rows(doc: dict[str, Any]) -> str:
    header = ["request", "finish", "expect", "called", "names ok", *[SHORT[k] for k in COUNTS], "note"]
    rows = []
    for r in doc["requests"]:
        if "skipped" in r:
            rows.append([r["key"], "-", "-", "-", "-", *["-"] * len(COUNTS), f"skipped: {r['skipped']}"])
        elif r.get("error") is not None:
            rows.append([r["key"], "-", _yn(r["expected_call"]), "-", "-", *["-"] * len(COUNTS), r["error"][:70]])
        else:
            called = ",".join(c["name"] for c in r["calls"]) or "no"
            notes = [f"{h}: {why}" for c in r["calls"] for h, why in c["problems"].items()]
            notes += [r["finish_problem"]] if r.get("finish_problem") else []
            rows.append([r["key"], str(r["finish_reason"]), _yn(r["expected_call"]), called, _yn(r["names_match"]),
                         *[str(r["counts"][k] or "") for k in COUNTS], (notes[0][:70] + (" …" if len(notes) > 1 else "")) if notes else ""])  # fmt: skip
    return table(header, rows)


def totals_lines(doc: dict[str, Any]) -> list[tuple[str, str]]:
    t = doc["totals"]
    d = t["decision"]
    lines = [
        ("requests (answered / failed / skipped)", f"{t['requests']} ({t['answered']} / {t['failed_requests']} / {t['skipped']})"),
        ("calls made", str(t["calls"])),
        ("call when expected: precision / recall", f"{_pct(d['precision'])} / {_pct(d['recall'])}"),
        ("call decision accuracy (tp fp fn tn)", f"{_pct(d['accuracy'])} ({d['tp']} {d['fp']} {d['fn']} {d['tn']})"),
        ("expected tool names called", f"{t['names_match']} / {t['names_checked']}"),
        ("finish reasons", ", ".join(f"{k} {v}" for k, v in t["finish_reasons"].items()) or "-"),
        ("arguments not JSON (json_errors)", str(t["json_errors"])),
        ("arguments break the schema (schema_errors)", str(t["schema_errors"])),
        ("undeclared tool names (undeclared)", str(t["undeclared"])),
        ("ids not echoed back correctly (id_errors)", str(t["id_errors"])),
        ("K2 ids with an unexpected index (id_index_off)", str(t["id_index_off"])),
        ("finish_reason contradicts the calls (finish_mismatch)", str(t["finish_mismatch"])),
        ("follow-ups refused (own ids sent back)", str(t["follow_ups_refused"])),
    ]
    a = doc.get("agreement")
    if a is not None:
        lines.append(("agreement with reference: precision / recall",
                      f"{_pct(a['precision'])} / {_pct(a['recall'])} over {a['compared']} requests"))
        lines.append(("decisions that differ from the reference", ", ".join(a["decisions_differ"]) or "none"))
        if not a.get("same_suite", True):
            lines.append(("warning", "the reference ran another suite (its sha256 differs): only requests with the same key count"))
    return lines


def summary(doc: dict[str, Any]) -> str:
    m = doc["manifest"]
    head = (f"{m['endpoint']}  model {m['model']}  suite {m['suite']['name']} v{m['suite']['version']} "
            f"({m['suite']['sha256'][:12]})  temperature {m['sampling']['temperature']} seed {m['sampling']['seed']}  "
            f"{m['seconds']} s")  # fmt: skip
    width = max(len(k) for k, _ in totals_lines(doc))
    return "\n".join([head, "", request_rows(doc), "", *(f"{k.ljust(width)}  {v}" for k, v in totals_lines(doc))])


def compare(a: dict[str, Any], b: dict[str, Any], name_a: str = "A", name_b: str = "B") -> str:
    """Manifests, totals and the requests whose outcome differs, side by side."""
    out: list[str] = []
    ma, mb = a["manifest"], b["manifest"]
    if ma["suite"]["sha256"] != mb["suite"]["sha256"]:
        out.append(f"warning: the runs used different suites ({ma['suite']['sha256'][:12]} vs {mb['suite']['sha256'][:12]}):"
                   " only requests with the same key are compared")  # fmt: skip
    fields = [("endpoint", lambda m: m["endpoint"]), ("model", lambda m: m["model"]),
              ("suite", lambda m: f"{m['suite']['name']} v{m['suite']['version']} {m['suite']['sha256'][:12]}"),
              ("sampling", lambda m: ", ".join(f"{k}={v}" for k, v in m["sampling"].items())),
              ("package", lambda m: m["package"]["version"]), ("started (UTC)", lambda m: m["started_utc"])]  # fmt: skip
    out.append(table(["manifest", name_a, name_b], [[k, str(f(ma)), str(f(mb))] for k, f in fields]))
    la, lb = dict(totals_lines(a)), dict(totals_lines(b))
    out += ["", table(["total", name_a, name_b], [[k, la[k], lb.get(k, "-")] for k in la if not k.startswith("agreement")])]
    rows_a = {r["key"]: r for r in a["requests"]}
    rows_b = {r["key"]: r for r in b["requests"]}

    def outcome(r: dict[str, Any] | None) -> str:
        if r is None:
            return "absent"
        if "skipped" in r:
            return "skipped"
        if r.get("error") is not None:
            return "error"
        calls = ",".join(c["name"] for c in r["calls"]) or "no call"
        bad = [SHORT[k] for k in COUNTS if r["counts"][k]]
        return f"{r['finish_reason']} {calls}" + (f" [{' '.join(bad)}]" if bad else "")

    diff = [[k, outcome(rows_a.get(k)), outcome(rows_b.get(k))] for k in [*rows_a, *(k for k in rows_b if k not in rows_a)]
            if outcome(rows_a.get(k)) != outcome(rows_b.get(k))]  # fmt: skip
    out += ["", table(["request that differs", name_a, name_b], diff) if diff else "every request has the same outcome"]
    return "\n".join(out)
