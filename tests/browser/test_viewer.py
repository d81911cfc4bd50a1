"""The trace viewer in a real Chromium against a real gateway: what a person sees.

`tracegate serve` keeps its own spans and Sentry events in the store; the first test
makes traces with known `traceparent` headers (a message, an error, an RQ job run by a
real `tracegate worker`), opens `/traces` and `/traces/<id>` in headless Chromium and
asserts on the DOM: rows, nesting, services, error and Sentry markers, both trace id
spellings, the clipboard, lazily built details. The second seeds one trace of 1,000
spans through `gateway.store.TraceStore` and checks every row, in tree order. Every
page must load with no CSP violation, console error or request off the origin.
Screenshots land in `test-artifacts/` on every run; render times are reported, not
asserted.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from gateway.store import TraceStore
from gateway.web import CONTENT_SECURITY_POLICY
from tests.browser.driver import Browser, Facts, Visit
from tests.browser.served import WORKER_SERVICE, Served

TRACE_OK = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_ERROR = "5bf92f3577b34da6a3ce929d0e0e4736"
TRACE_JOB = "6bf92f3577b34da6a3ce929d0e0e4736"
TRACE_BIG = "7bf92f3577b34da6a3ce929d0e0e4736"
TRACE_MISSING = "8bf92f3577b34da6a3ce929d0e0e4736"
CALLER = "00f067aa0ba902b7"  # the caller's span: the parent of each server span, not stored
GATEWAY, WORKER = "tracegate", WORKER_SERVICE
_STORE_TIMEOUT = 30.0


def _uuid(trace_id: str) -> str:
    return str(uuid.UUID(trace_id))


def _call(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, raw.decode(errors="replace")


def _traced(trace_id: str) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{CALLER}-01"}


def _wait_for_trace(
    base: str, trace_id: str, complete: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The API's view of a trace once `complete` holds (span export is batched)."""
    deadline = time.monotonic() + _STORE_TIMEOUT
    status, body = _call(f"{base}/v1/traces/{trace_id}")
    while not (status == 200 and complete(body)):
        if time.monotonic() > deadline:
            pytest.fail(f"GET /v1/traces/{trace_id} never held the whole trace: {status} {body}")
        time.sleep(0.2)
        status, body = _call(f"{base}/v1/traces/{trace_id}")
    trace: dict[str, Any] = body
    return trace


def _assert_clean(facts: Facts, *, expect_404: bool = False) -> None:
    """No harness failure, script error, CSP violation or request that left the origin."""
    assert not facts.get("failure"), facts.get("failure")
    assert facts["status"] == 200
    assert facts["csp"] == CONTENT_SECURITY_POLICY
    assert facts["csp_violations"] == []
    assert facts["page_errors"] == []
    assert facts["external_requests"] == []
    # The browser logs the API's 404 for an unknown trace; nothing else may show up.
    console = [m for m in facts["console_errors"] if not (expect_404 and "404" in m)]
    assert console == []


def _percent(value: str) -> float:
    return float(value.rstrip("%"))


def test_viewer_shows_the_gateways_traces(
    served: Served,
    browser: Browser,
    artifacts: Path,
    tmp_path: Path,
    report_timing: Callable[[str], None],
) -> None:
    base = served.base_url
    empty = browser.visit(
        base,
        [Visit("empty", "/traces", screenshot=artifacts / "traces-empty.png")],
        tmp_path / "profile-empty",
    )["empty"]
    _assert_clean(empty)
    assert empty["state"] == "ready" and empty["rows"] == [] and not empty["table_visible"]
    assert "No traces yet" in empty["empty"]
    assert f"curl -si {base}/example" in empty["empty"]

    assert _call(base + "/example", headers=_traced(TRACE_OK))[0] == 200
    assert _call(base + "/example/error", headers=_traced(TRACE_ERROR))[0] == 500
    status, created = _call(
        base + "/v1/jobs", {"task": "echo", "args": ["hi"]}, headers=_traced(TRACE_JOB)
    )
    assert status == 202, created
    served.worker_burst()

    _wait_for_trace(base, TRACE_OK, lambda t: bool(t["spans"] and t["sentry_events"]))
    error = _wait_for_trace(
        base,
        TRACE_ERROR,
        lambda t: any(s["status"] == "ERROR" for s in t["spans"]) and bool(t["sentry_events"]),
    )
    job = _wait_for_trace(
        base,
        TRACE_JOB,
        lambda t: {"SERVER", "PRODUCER", "CONSUMER"} <= {s["kind"] for s in t["spans"]},
    )
    listed = _call(base + "/v1/traces?limit=100")[1]["traces"]

    server = next(s for s in error["spans"] if s["kind"] == "SERVER")
    assert server["parent_span_id"] == CALLER and server["status"] == "ERROR"
    linked = [e for e in error["sentry_events"] if e["span_id"] == server["span_id"]]
    assert linked, f"no Sentry event of the error trace names its server span: {error}"
    event = linked[0]
    job_spans = {s["kind"]: s for s in job["spans"] if s["kind"] != "INTERNAL"}

    facts = browser.visit(
        base,
        [
            Visit("list", "/traces", screenshot=artifacts / "traces-list.png"),
            Visit(
                "error",
                f"/traces/{_uuid(TRACE_ERROR)}",  # the UUID spelling opens the same page
                screenshot=artifacts / "trace-error-waterfall.png",
                spans=(server["span_id"],),
                copy=True,
                expand=server["span_id"],
            ),
            Visit(
                "job",
                f"/traces/{TRACE_JOB}",
                screenshot=artifacts / "trace-job-waterfall.png",
                spans=tuple(s["span_id"] for s in job_spans.values()),
            ),
            Visit("missing", f"/traces/{TRACE_MISSING}"),
        ],
        tmp_path / "profile",
    )

    page = facts["list"]
    _assert_clean(page)
    assert page["state"] == "ready" and page["table_visible"] and not page["empty"]
    assert [row["trace_id"] for row in page["rows"]] == [t["trace_id"] for t in listed]
    rows = {row["trace_id"]: row for row in page["rows"]}
    assert {TRACE_OK, TRACE_ERROR, TRACE_JOB} <= rows.keys()
    for summary in listed:
        row = rows[summary["trace_id"]]
        assert row["href"] == f"/traces/{summary['trace_id']}"
        assert row["root_name"] == summary["root_name"]
        assert row["service"] == summary["service"]
        assert row["span_count"] == str(summary["span_count"])
        assert row["error_count"].split()[-1] == str(summary["error_count"])
        assert row["event_count"] == str(summary["event_count"])
        assert row["error_highlighted"] == (summary["error_count"] > 0)
    assert rows[TRACE_ERROR]["error_highlighted"] and not rows[TRACE_OK]["error_highlighted"]
    assert rows[TRACE_JOB]["root_name"] == "POST /v1/jobs"

    page = facts["error"]
    _assert_clean(page)
    assert page["state"] == "ready" and page["error"] == ""
    assert page["hex_shown"] == TRACE_ERROR and page["uuid_shown"] == _uuid(TRACE_ERROR)
    assert page["copy"]["hex"] == {"button": "Copied", "clipboard": TRACE_ERROR}
    assert page["copy"]["uuid"] == {"button": "Copied", "clipboard": _uuid(TRACE_ERROR)}
    assert page["row_count"] == len(error["spans"])
    row = page["rows"][server["span_id"]]
    assert row["name"] == server["name"] and row["kind"] == "SERVER"
    assert row["service"] == server["service"]
    assert row["depth"] == 0 and row["orphan"]  # its parent is the caller's span
    assert row["is_error"] and row["error_icon"] and row["bar_color"] == "error-stripes"
    marker = {"event_id": event["event_id"], "title": f"Sentry {event['level']}: {event['title']}"}
    assert marker in row["sentry_markers"]
    assert {
        "level": event["level"],
        "title": event["title"],
        "span": server["name"],
        "event_id": event["event_id"],
    } in page["sentry_list"]
    assert page["rows_with_details"] == 0  # details are built on first expand only
    opened = page["expand"]
    assert opened["found"] and opened["expanded"] and opened["visible"]
    assert (opened["details_before"], opened["details_after"]) == (0, 1)
    assert opened["facts"]["Span id"] == server["span_id"]
    assert opened["facts"]["Parent span id"] == f"{CALLER} (not in this trace)"
    assert opened["facts"]["Status"] == "ERROR"
    assert opened["headings"][:3] == [
        "Attributes",
        f"Events ({len(server['events'])})",
        f"Links ({len(server['links'])})",
    ]
    assert sorted(server["attributes"]) == opened["attribute_keys"]

    page = facts["job"]
    _assert_clean(page)
    assert page["row_count"] == len(job["spans"])
    shown = {kind: page["rows"][span["span_id"]] for kind, span in job_spans.items()}
    server_row, producer_row, consumer_row = shown["SERVER"], shown["PRODUCER"], shown["CONSUMER"]
    assert server_row["depth"] == 0
    assert producer_row["depth"] == server_row["depth"] + 1
    assert consumer_row["depth"] == producer_row["depth"] + 1
    assert server_row["index"] < producer_row["index"] < consumer_row["index"]
    assert server_row["service"] == GATEWAY and consumer_row["service"] == WORKER
    assert server_row["bar_color"] != consumer_row["bar_color"]  # a color per service
    # One time axis for both processes: the job runs after it was sent.
    assert _percent(consumer_row["bar_left"]) >= _percent(producer_row["bar_left"])
    assert _percent(server_row["bar_left"]) == 0.0

    page = facts["missing"]
    _assert_clean(page, expect_404=True)
    assert page["state"] == "error" and page["row_count"] == 0
    assert f"Trace {TRACE_MISSING} was not found" in page["error"]

    for name in ("list", "error", "job"):
        report_timing(
            f"{name}: navigation to rows {facts[name].get('render_ms', '-')} ms, "
            f"goto to ready {facts[name]['harness_ms']} ms"
        )


def _thousand_spans(trace_id: str, t0: float) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """One job trace of exactly 1,000 spans from two services; the ids the test checks."""
    records: list[dict[str, Any]] = []
    counter = itertools.count(1)

    def add(
        name: str, parent: str, service: str, kind: str, start: float, duration: float
    ) -> dict[str, Any]:
        record = {
            "trace_id": trace_id,
            "span_id": f"{next(counter):016x}",
            "parent_span_id": parent,
            "parent_is_remote": False,
            "name": name,
            "kind": kind,
            "service": service,
            "start_ms": round(start, 3),
            "end_ms": round(start + duration, 3),
            "duration_ms": duration,
            "status": "UNSET",
            "status_message": "",
            "attributes": {"batch.step": name},
            "events": [],
            "links": [],
            "sentry_event_ids": [],
        }
        records.append(record)
        return record

    root = add("POST /v1/jobs", "", GATEWAY, "SERVER", t0, 3200.0)["span_id"]
    known = {"root": root}
    for batch in range(10):
        start = t0 + 1 + batch * 300
        stage = add(f"batch {batch}", root, GATEWAY, "INTERNAL", start, 290.0)["span_id"]
        send = add("send default", stage, GATEWAY, "PRODUCER", start + 1, 5.0)["span_id"]
        process = add("process default", send, WORKER, "CONSUMER", start + 10, 270.0)
        for step in range(96):
            span = add(f"step {step}", process["span_id"], WORKER, "INTERNAL",
                       start + 11 + step * 2.5, 2.0)  # fmt: skip
            if (batch, step) == (5, 7):
                span["status"], span["status_message"] = "ERROR", "StepFailed: bad input"
                span["events"] = [
                    {
                        "name": "exception",
                        "time_ms": span["end_ms"],
                        "attributes": {"exception.type": "StepFailed"},
                    }
                ]
                span["links"] = [{"trace_id": TRACE_JOB, "span_id": "0123456789abcdef"}]
                known["error"] = span["span_id"]
        if batch == 0:
            known["consumer"] = process["span_id"]
            parent = process["span_id"]
            for level in range(1, 9):  # a chain under the consumer: depth 4 .. 11
                parent = add(f"deep {level}", parent, WORKER, "INTERNAL",
                             start + 12 + level * 0.1, 9.0 - level)["span_id"]  # fmt: skip
            known["deepest"] = parent
    known["orphan"] = add("late callback", "00000000deadbeef", WORKER, "INTERNAL",
                          t0 + 3100, 20.0)["span_id"]  # fmt: skip
    assert len(records) == 1000
    random.Random(7).shuffle(records)  # the page orders them, not the writer
    return records, known


def _tree_order(records: list[dict[str, Any]]) -> list[str]:
    """Parents before children, siblings by start; a span with no stored parent is a root."""
    present = {r["span_id"] for r in records}
    children: dict[str, list[dict[str, Any]]] = defaultdict(list)
    roots = []
    for record in records:
        if record["parent_span_id"] in present:
            children[record["parent_span_id"]].append(record)
        else:
            roots.append(record)
    order: list[str] = []

    def walk(record: dict[str, Any]) -> None:
        order.append(record["span_id"])
        for child in sorted(children[record["span_id"]], key=lambda r: r["start_ms"]):
            walk(child)

    for root in sorted(roots, key=lambda r: r["start_ms"]):
        walk(root)
    return order


def test_waterfall_renders_a_trace_of_1000_spans(
    served: Served,
    redis_url: str,
    browser: Browser,
    artifacts: Path,
    tmp_path: Path,
    report_timing: Callable[[str], None],
) -> None:
    records, known = _thousand_spans(TRACE_BIG, time.time() * 1000 - 10_000)
    error = next(r for r in records if r["span_id"] == known["error"])
    event_id = uuid.uuid4().hex
    with redis.Redis.from_url(redis_url) as connection:
        store = TraceStore(connection)
        store.add_spans(records)
        store.add_event(
            {
                "event_id": event_id,
                "trace_id": TRACE_BIG,
                "span_id": known["error"],
                "level": "error",
                "title": "StepFailed: bad input",
                "timestamp_ms": error["end_ms"],
            }
        )
    stored = _wait_for_trace(served.base_url, TRACE_BIG, lambda t: len(t["spans"]) == 1000)
    assert len(stored["sentry_events"]) == 1

    page = browser.visit(
        served.base_url,
        [
            Visit(
                "big",
                f"/traces/{TRACE_BIG}",
                screenshot=artifacts / "trace-1000-spans.png",
                full_page=False,
                spans=tuple(known.values()),
                copy=True,
                expand=known["error"],
            )
        ],
        tmp_path / "profile",
    )["big"]

    _assert_clean(page)
    assert page["state"] == "ready" and page["error"] == ""
    assert page["row_count"] == 1000
    assert page["order"] == _tree_order(records)
    assert page["hex_shown"] == TRACE_BIG and page["uuid_shown"] == _uuid(TRACE_BIG)
    assert page["copy"]["hex"]["clipboard"] == TRACE_BIG
    rows = page["rows"]
    assert rows[known["root"]]["depth"] == 0
    assert rows[known["consumer"]]["depth"] == 3
    assert rows[known["consumer"]]["service"] == WORKER
    assert rows[known["deepest"]]["depth"] == 11
    assert rows[known["deepest"]]["indent"] == "11"
    assert rows[known["orphan"]]["depth"] == 0 and rows[known["orphan"]]["orphan"]
    assert page["error_rows"] == 1
    failed = rows[known["error"]]
    assert failed["is_error"] and failed["error_icon"] and failed["depth"] == 4
    assert [m["event_id"] for m in failed["sentry_markers"]] == [event_id]
    assert page["rows_with_details"] == 0
    opened = page["expand"]
    assert (opened["details_before"], opened["details_after"]) == (0, 1) and opened["visible"]
    assert opened["facts"]["Status message"] == "StepFailed: bad input"
    assert opened["headings"] == ["Attributes", "Events (1)", "Links (1)", "Sentry events"]

    report_timing(
        f"1,000 spans: navigation to rows {page['render_ms']} ms "
        f"(JSON to rows {page['build_ms']} ms), goto to ready {page['harness_ms']} ms, "
        f"expanding a row {opened['expand_ms']:.1f} ms"
    )
