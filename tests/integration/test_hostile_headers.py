"""Hostile trace headers against the real gateway, and the limits of what it carries on.

The fuzzing half drives `create_app` through werkzeug's test client, putting values
straight into the WSGI environ (`environ_base`), so CR, LF, NUL, Latin-1 and huge values
reach the app exactly as written. Per case it checks the response: no 5xx, nothing
logged as an error, well-formed `traceresponse` / `X-Trace-ID` with no CR/LF, the trace
continued exactly when DESIGN.md's precedence says so (the expectation is computed here
from the W3C and Sentry rules, never by calling the code under test), and no stretch of
an inbound value that must not be echoed showing up in any response header.

The limits half enqueues a job through `POST /v1/jobs` into a real redis-server and reads
the carrier the job was stored with (`job.meta["otel"]`): an 8 KiB+ `tracestate` must be
cut as W3C Trace Context Level 2 "tracestate Limits" says, a 1,000-member `baggage` to
W3C Baggage's 64 members / 8192 bytes, with the head's Sentry `sentry-*` members kept.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import unquote

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from rq.job import Job
from werkzeug.test import TestResponse

from tests.harness import gateways
from tests.peers.envelope import EnvelopeReceiver

Headers = dict[str, str | None]
HEX = "0123456789abcdef"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"

# PEP 3333: environ values are "native strings" holding the request's bytes decoded as
# Latin-1, so a real server can only ever hand the app code points up to U+00FF.
ENVIRON_CHARS = st.characters(max_codepoint=0xFF)
# A reflected stretch this long is no accident: a fresh random id shares 10 characters
# with a few hundred characters of inbound hex about once in 10**7 cases.
REFLECTION_WINDOW = 10
# What responses say whatever the request: the header names tracegate lists in CORS
# headers. A request may send one of them as a value (Hypothesis found `X-Trace-ID:
# X-Trace-ID`); its appearing in Access-Control-Expose-Headers is no reflection.
OWN_TEXT = (
    "traceresponse",
    "X-Trace-ID",
    "traceparent",
    "tracestate",
    "baggage",
    "sentry-trace",
    "Content-Type",
    "Authorization",
)

TRACERESPONSE_RE = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Header names the injection payloads below try to smuggle into the response.
SMUGGLED_NAMES = {"x-evil", "set-cookie"}
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
ENVIRON_KEYS = {
    "traceparent": "HTTP_TRACEPARENT",
    "tracestate": "HTTP_TRACESTATE",
    "baggage": "HTTP_BAGGAGE",
    "sentry-trace": "HTTP_SENTRY_TRACE",
    "x-trace-id": "HTTP_X_TRACE_ID",
}

# --- the rules, written out from the specifications ------------------------------------
#
# W3C Trace Context Level 2, "traceparent Header Field Values" and "Versioning of
# traceparent": OWS (space, tab) around the value is tolerated (the W3C test suite sends
# it); version is 2 lowercase hex digits and ff is invalid; version 00 is exactly
# version-traceid-parentid-flags (55 characters); a higher version is read by the same
# layout and is valid if the value ends after the flags or continues with "-"; trace id
# and parent id are lowercase hex and not all zeros.


def w3c_trace_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip(" \t")
    if len(value) < 55:
        return None
    fields = value[:55].split("-")
    if len(fields) != 4 or [len(f) for f in fields] != [2, 32, 16, 2]:
        return None
    if any(ch not in HEX for ch in "".join(fields)):
        return None
    version, trace_id, parent_id, _flags = fields
    if version == "ff":
        return None
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    if set(trace_id) == {"0"} or set(parent_id) == {"0"}:
        return None
    return int(trace_id, 16)


# Sentry's `sentry-trace`: <32 lowercase hex>-<16 lowercase hex>[-0|-1], space/tab around
# it tolerated as sentry-sdk does; DESIGN.md requires both ids, neither all zeros.
def sentry_trace_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip(" \t")
    parts = value.split("-")
    if len(parts) == 3 and parts[2] in ("0", "1"):
        parts = parts[:2]
    if len(parts) != 2 or [len(p) for p in parts] != [32, 16]:
        return None
    if any(ch not in HEX for ch in "".join(parts)):
        return None
    if set(parts[0]) == {"0"} or set(parts[1]) == {"0"}:
        return None
    return int(parts[0], 16)


# DESIGN.md: `X-Trace-ID` is a UUID (8-4-4-4-12) or 32 hex digits, any case, not all
# zeros; OWS around it tolerated like the other headers.
def x_trace_id(value: str | None) -> int | None:
    if value is None:
        return None
    value = value.strip(" \t")
    groups = value.split("-")
    if [len(g) for g in groups] not in ([32], [8, 4, 4, 4, 12]):
        return None
    digits = "".join(groups)
    if any(ch not in HEX + HEX.upper() for ch in digits) or set(digits) == {"0"}:
        return None
    return int(digits, 16)


def winner(headers: Headers) -> tuple[str, int | None]:
    """DESIGN.md "Inbound: which header wins": the header and its trace id, or a new trace."""
    for parse, name in (
        (w3c_trace_id, "traceparent"),
        (sentry_trace_id, "sentry-trace"),
        (x_trace_id, "x-trace-id"),
    ):
        found = parse(headers.get(name))
        if found is not None:
            return name, found
    return "new trace", None


def expected_trace_id(headers: Headers) -> int | None:
    return winner(headers)[1]


# --- strategies ------------------------------------------------------------------------

# Non-zero ids (all-zero ones are drawn on purpose below): drawn as text, hypothesis
# would favour "000…0" and rarely produce a valid header at all.
trace_hex = st.integers(1, (1 << 128) - 1).map(lambda i: f"{i:032x}")
span_hex = st.integers(1, (1 << 64) - 1).map(lambda i: f"{i:016x}")
flags_hex = st.text(HEX, min_size=2, max_size=2)
ows = st.sampled_from(["", "", "", " ", "\t", " \t "])
# The characters a header value is most often broken with: line breaks and NUL (header
# splitting), Latin-1 look-alikes, separators, and hex in the wrong case.
nasty_chars = st.sampled_from(
    list('\r\n\x00\x0b\x0c\x7f\x85\xa0\xb2\xff-_ ,;=:.{}"\\') + list("ABCDEFG") + list(HEX)
)
garbage = st.one_of(
    st.text(ENVIRON_CHARS, max_size=80),
    st.text(st.sampled_from(HEX + "-\r\n \t,;="), max_size=120),
)


@st.composite
def one_char_off(draw: st.DrawFn, valid: st.SearchStrategy[str]) -> str:
    """A valid value with one character replaced, inserted, deleted or upper-cased."""
    value = draw(valid)
    index = draw(st.integers(0, len(value) - 1))
    how = draw(st.sampled_from(["replace", "insert", "delete", "upper", "append"]))
    char = draw(nasty_chars)
    if how == "replace":
        return value[:index] + char + value[index + 1 :]
    if how == "insert":
        return value[:index] + char + value[index:]
    if how == "delete":
        return value[:index] + value[index + 1 :]
    if how == "upper":
        return value[:index] + value[index].upper() + value[index + 1 :]
    return value + char


def injected(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value followed by an attempt to start another header or a second value."""
    tails = st.sampled_from(
        [
            "\r\nX-Evil: injected-by-header",
            "\nSet-Cookie: session=stolen-by-header",
            "\r\n\r\n<html>smuggled-body</html>",
            "\x00nul-terminated-tail",
            "\n",
            "\r\n",
            ", 00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        ]
    )
    return st.builds(lambda v, t: v + t, valid, tails)


def huge(piece: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value of 8 KiB and more, repeating a small piece (valid or not)."""
    return st.builds(
        lambda p, n: (p * (n // max(len(p), 1) + 1))[:n], piece, st.integers(8192, 20000)
    )


@st.composite
def valid_traceparent(draw: st.DrawFn) -> str:
    version = draw(st.sampled_from(["00", "00", "00", "01", "cc", "fe"]))
    value = f"{version}-{draw(trace_hex)}-{draw(span_hex)}-{draw(flags_hex)}"
    if version != "00" and draw(st.booleans()):
        value += "-" + draw(st.text(HEX + "-", max_size=40))  # a future version's fields
    return draw(ows) + value + draw(ows)


def near_valid_traceparent() -> st.SearchStrategy[str]:
    tp = st.builds(lambda t, s, f: f"00-{t}-{s}-{f}", trace_hex, span_hex, flags_hex)
    return st.one_of(
        one_char_off(tp),
        st.builds(lambda t, s: f"ff-{t}-{s}-01", trace_hex, span_hex),
        st.builds(lambda t, s, x: f"ff-{t}-{s}-01-{x}", trace_hex, span_hex, st.text(HEX)),
        st.builds(lambda s: f"00-{'0' * 32}-{s}-01", span_hex),
        st.builds(lambda t: f"00-{t}-{'0' * 16}-01", trace_hex),
        st.builds(lambda t, s, x: f"00-{t}-{s}-01-{x}", trace_hex, span_hex, st.text(HEX)),
        st.builds(lambda t, s, f: f"00-{t}-{s}-{f}", trace_hex, span_hex, garbage),
        st.builds(lambda t, s: f"00-{t.upper()}-{s}-01", trace_hex, span_hex),
        st.builds(lambda t, s: f"cc-{t}-{s}-01x", trace_hex, span_hex),
        injected(tp),
    )


@st.composite
def valid_sentry_trace(draw: st.DrawFn) -> str:
    suffix = draw(st.sampled_from(["", "-0", "-1"]))
    return draw(ows) + f"{draw(trace_hex)}-{draw(span_hex)}{suffix}" + draw(ows)


def near_valid_sentry_trace() -> st.SearchStrategy[str]:
    plain = st.builds(lambda t, s: f"{t}-{s}-1", trace_hex, span_hex)
    return st.one_of(
        one_char_off(plain),
        st.builds(lambda s: f"{'0' * 32}-{s}-1", span_hex),
        st.builds(lambda t: f"{t}-{'0' * 16}", trace_hex),
        st.builds(
            lambda t, s, f: f"{t}-{s}-{f}",
            trace_hex,
            span_hex,
            st.sampled_from(["2", "01", "true", ""]),
        ),
        st.builds(lambda t, s: f"00-{t}-{s}-01", trace_hex, span_hex),
        injected(plain),
    )


def _uuid_text(value: int) -> str:
    return str(uuid.UUID(int=value))


ids128 = st.integers(1, (1 << 128) - 1)
valid_x_trace_id = st.one_of(
    ids128.map(_uuid_text),
    ids128.map(lambda i: _uuid_text(i).upper()),
    ids128.map(lambda i: f"{i:032x}"),
    ids128.map(lambda i: f"{i:032X}"),
).flatmap(lambda v: st.builds(lambda a, b: a + v + b, ows, ows))


def near_valid_x_trace_id() -> st.SearchStrategy[str]:
    u = ids128.map(_uuid_text)
    return st.one_of(
        one_char_off(u),
        one_char_off(ids128.map(lambda i: f"{i:032x}")),
        u.map(lambda v: "{" + v + "}"),
        u.map(lambda v: "urn:uuid:" + v),
        st.just("00000000-0000-0000-0000-000000000000"),
        st.just("0" * 32),
        injected(u),
    )


tracestate_key = st.from_regex(r"[a-z0-9][a-z0-9_\-*/@]{0,20}", fullmatch=True)
tracestate_value = st.from_regex(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,30}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", fullmatch=True
)
tracestate_member = st.builds(lambda k, v: f"{k}={v}", tracestate_key, tracestate_value)
tracestate_values = st.one_of(
    st.lists(tracestate_member, max_size=40).map(",".join),
    st.lists(
        st.one_of(tracestate_member, one_char_off(tracestate_member), garbage), max_size=10
    ).map(",".join),
    injected(tracestate_member),
    huge(st.sampled_from(["vendor=" + "v" * 250 + ",", "k=v,", "\r\n", "a" * 300])),
    garbage,
)

baggage_member = st.one_of(
    st.builds(
        lambda k, v: f"{k}={v}",
        st.from_regex(r"[A-Za-z0-9_.!#$&'*+^`|~-]{1,12}", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9%._-]{0,20}", fullmatch=True),
    ),
    st.builds(lambda t: f"sentry-trace_id={t}", trace_hex),
    st.sampled_from(
        [
            "sentry-sampled=true",
            "sentry-sampled=false",
            "sentry-public_key=upstream",
            "sentry-sample_rand=0.5",
        ]
    ),
    st.builds(lambda v: f"k={v}", garbage),
    st.sampled_from(["k=%0d%0aX-Evil:%201", "k%0aX=1", "=v", "k", "k=v;prop;p2=x", 'k="quoted"']),
)
baggage_values = st.one_of(
    st.lists(baggage_member, max_size=20).map(",".join),
    st.integers(0, 1200).map(lambda n: ",".join(f"m{i}=v{i}" for i in range(n))),
    injected(baggage_member),
    huge(st.sampled_from(["k=" + "v" * 100 + ",", "sentry-x=1,", "\x00", "é"])),
    garbage,
)


def header(
    valid: st.SearchStrategy[str], near: st.SearchStrategy[str]
) -> st.SearchStrategy[str | None]:
    # Explicit shares (one_of's own are uneven): absent 1, valid 3, near-valid 3, garbage 2,
    # huge 1 in 10.
    kinds: list[st.SearchStrategy[str | None]] = [
        st.none(),
        *[valid] * 3,
        *[near] * 3,
        *[garbage] * 2,
        huge(garbage.filter(bool)),
    ]
    return st.sampled_from(kinds).flatmap(lambda kind: kind)


all_headers = st.fixed_dictionaries(
    {
        "traceparent": header(valid_traceparent(), near_valid_traceparent()),
        "tracestate": st.one_of(st.none(), tracestate_values),
        "baggage": st.one_of(st.none(), baggage_values),
        "sentry-trace": header(valid_sentry_trace(), near_valid_sentry_trace()),
        "x-trace-id": header(valid_x_trace_id, near_valid_x_trace_id()),
    }
)
ROUTES = st.sampled_from([("GET", "/example"), ("GET", "/no/such/route"), ("POST", "/v1/jobs")])


# --- the checks --------------------------------------------------------------------------


class _ErrorLog(logging.Handler):
    """Collects what the app logged as an error or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@contextmanager
def _error_log() -> Iterator[_ErrorLog]:
    handler = _ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def _spellings(trace_id: int) -> list[str]:
    h = f"{trace_id:032x}"
    return [h, _uuid_text(trace_id)]


def _must_not_echo(headers: Headers) -> list[str]:
    """Inbound values no response header may repeat: every invalid id header, and
    tracestate and baggage, which never belong in a response."""
    checks = {
        "traceparent": w3c_trace_id,
        "sentry-trace": sentry_trace_id,
        "x-trace-id": x_trace_id,
    }
    values = []
    for name, value in headers.items():
        if value is None:
            continue
        if name in checks and checks[name](value) is not None:
            continue
        values.append(value)
    return values


def check_response(headers: Headers, status: int, response_headers: list[tuple[str, str]]) -> None:
    assert status < 500, (status, headers)
    names = {name.lower() for name, _ in response_headers}
    assert not names & SMUGGLED_NAMES, names
    assert all(TOKEN_RE.fullmatch(name) for name in names), names
    for name, value in response_headers:
        assert not set(value) & {"\r", "\n", "\x00"}, (name, value)
        assert len(value) <= 256, (name, len(value))
    by_name = {name.lower(): value for name, value in response_headers}
    match = TRACERESPONSE_RE.fullmatch(by_name["traceresponse"])
    assert match is not None, by_name["traceresponse"]
    trace_id, span_id, flags = (int(g, 16) for g in match.groups())
    assert trace_id != 0 and span_id != 0
    # Level 2 defines the sampled and random bits only; the others are sent as zero.
    assert flags & ~0x03 == 0, by_name["traceresponse"]
    assert UUID_RE.fullmatch(by_name["x-trace-id"]) is not None, by_name["x-trace-id"]
    assert by_name["x-trace-id"] == _uuid_text(trace_id)

    expected = expected_trace_id(headers)
    if expected is not None:
        assert trace_id == expected, (f"{trace_id:032x}", f"{expected:032x}", headers)
    else:
        # A new trace: none of the ids the request offered (all invalid) was taken up.
        for value in (v for v in headers.values() if v):
            assert f"{trace_id:032x}" not in value.lower(), (f"{trace_id:032x}", headers)

    allowed = [*(_spellings(expected) if expected is not None else []), *OWN_TEXT]
    forbidden = _must_not_echo(headers)
    for name, value in response_headers:
        for spelling in allowed:
            value = value.replace(spelling, "#")
        for start in range(len(value) - REFLECTION_WINDOW + 1):
            window = value[start : start + REFLECTION_WINDOW]
            assert not any(window in bad for bad in forbidden), (name, window, headers)


Exchange = Callable[[tuple[str, str], Headers], TestResponse]


@pytest.fixture
def exchange() -> Iterator[Exchange]:
    """Send one request and check its response; Sentry is on (its DSN a real local
    envelope receiver), so the bridge and the sampling context see every value too."""
    receiver = EnvelopeReceiver()
    receiver.start()
    try:
        with gateways({"SENTRY_DSN": receiver.dsn}) as make, _error_log() as errors:
            client = make().client

            def send(route: tuple[str, str], headers: Headers) -> TestResponse:
                environ = {ENVIRON_KEYS[k]: v for k, v in headers.items() if v is not None}
                errors.records.clear()
                method, path = route
                if method == "POST":  # invalid JSON: a 400 envelope, no Redis needed
                    response = client.post(
                        path, data=b"{", content_type="application/json", environ_base=environ
                    )
                else:
                    response = client.get(path, environ_base=environ)
                assert not errors.records, [r.getMessage()[:300] for r in errors.records]
                check_response(headers, response.status_code, list(response.headers.items()))
                return response

            yield send
    finally:
        receiver.stop()


FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)


def test_hostile_trace_headers(exchange: Exchange) -> None:
    @settings(FUZZ, max_examples=2000)
    @given(headers=all_headers, route=ROUTES)
    def run(headers: Headers, route: tuple[str, str]) -> None:
        event(f"trace from: {winner(headers)[0]}")
        exchange(route, headers)

    run()


@pytest.mark.parametrize(
    ("name", "near"),
    [
        ("traceparent", near_valid_traceparent()),
        ("sentry-trace", near_valid_sentry_trace()),
        ("x-trace-id", near_valid_x_trace_id()),
    ],
)
def test_one_char_off_ids(exchange: Exchange, name: str, near: st.SearchStrategy[str]) -> None:
    """Each id header alone, near-valid: continued only if the change left it valid."""

    @settings(FUZZ, max_examples=300)
    @given(value=near)
    def run(value: str) -> None:
        exchange(("GET", "/no/such/route"), {name: value})

    run()


def test_a_header_name_sent_as_a_value_is_not_taken_for_a_reflection(
    exchange: Exchange,
) -> None:
    """Found by the fuzzer: `X-Trace-ID: X-Trace-ID` is invalid (a new trace starts);
    the response lists the name in Access-Control-Expose-Headers, as it always does."""
    response = exchange(("GET", "/example"), {"x-trace-id": "X-Trace-ID"})
    assert "X-Trace-ID" in response.headers["Access-Control-Expose-Headers"]


def test_invalid_traceparent_yields_to_sentry_trace(exchange: Exchange) -> None:
    """Found by the fuzzer: a `traceparent` ending in a line break is invalid to W3C, but
    OpenTelemetry's own `tracecontext` propagator (configured by default, run before
    tracegate's) matched it with `$`, and its parent outranked a valid `sentry-trace`."""
    sentry = "a" * 32
    for bad in (f"00-{TRACE}-{PARENT}-01\n", f"00-{TRACE}-{PARENT}-01 \n"):
        both = exchange(
            ("GET", "/example"), {"traceparent": bad, "sentry-trace": f"{sentry}-{PARENT}-1"}
        )
        assert both.headers["traceresponse"].startswith(f"00-{sentry}-")
        alone = exchange(("GET", "/example"), {"traceparent": bad})
        assert TRACE not in alone.headers["traceresponse"]


# --- outbound limits, read back from Redis --------------------------------------------------


@pytest.fixture
def enqueue(redis_url: str) -> Iterator[Callable[[dict[str, str]], dict[str, str]]]:
    """POST a demo job with the given headers; return the carrier Redis stored with it."""
    with (
        gateways({"REDIS_URL": redis_url, "TRACEGATE_DEMO_TASKS": "1"}) as make,
        redis.Redis.from_url(redis_url) as connection,
    ):
        client = make().client

        def run(headers: dict[str, str]) -> dict[str, str]:
            environ = {ENVIRON_KEYS[name]: value for name, value in headers.items()}
            response = client.post(
                "/v1/jobs", json={"task": "echo", "args": [1]}, environ_base=environ
            )
            assert response.status_code == 202, response.get_data(as_text=True)
            assert response.json is not None
            for name, value in response.headers.items():
                assert len(value) <= 256 and "\n" not in value and "\r" not in value, name
            assert sum(len(n) + len(v) for n, v in response.headers.items()) < 1024
            job = Job.fetch(response.json["job_id"], connection=connection)
            carrier = job.meta["otel"]
            assert isinstance(carrier, dict)
            return carrier

        yield run


def _members(header: str) -> list[str]:
    return [m for m in header.split(",") if m]


def test_oversized_tracestate_is_cut_by_whole_entries(
    enqueue: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    # 16 entries of 400+ characters first, then 40 of exactly 40; 8 KiB and more in all,
    # plus one 9 KiB member that is not valid at all.
    big = [f"{'k' * 200}{i:02d}=" + chr(97 + i) * 250 for i in range(16)]
    small = [f"s{i:02d}=" + f"{i:02d}" * 18 for i in range(40)]
    assert all(len(b) > 128 for b in big) and all(len(s) == 40 for s in small)
    inbound = ",".join([*big, *small, "huge=" + "h" * 9000])
    assert len(inbound) > 8192
    carrier = enqueue({"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": inbound})

    assert carrier["traceparent"].startswith(f"00-{TRACE}-")
    carried = _members(carrier["tracestate"])
    # "tracestate Header Field Values": at most 32 list-members.
    assert len(carried) <= 32
    # "tracestate Limits": 512 characters propagated; truncation removes whole entries,
    # those over 128 characters first, then entries from the end.
    assert len(carrier["tracestate"]) <= 512
    assert all(m in inbound.split(",") for m in carried)
    assert not any(len(m) > 128 for m in carried)
    # The first 32 list-members hold 16 small ones (655 characters joined): with every
    # large one gone, small ones leave from the end until the rest fits in 512.
    assert carried == small[:12]
    assert len(",".join(small[:13])) > 512


def test_oversized_tracestate_of_small_entries_keeps_the_leftmost(
    enqueue: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    inbound = ",".join(f"v{i:03d}=" + "z" * 250 for i in range(40))  # 40 x 255: 10 KiB
    carrier = enqueue({"traceparent": f"00-{TRACE}-{PARENT}-00", "tracestate": inbound})
    carried = _members(carrier["tracestate"]) if "tracestate" in carrier else []
    # Every entry is over 128 characters, so none goes first; entries leave from the end
    # (the spec's order for the rest, taken for large ones too) until two, 511, remain.
    assert carried == inbound.split(",")[:2]


def test_thousand_member_baggage_is_cut_and_keeps_the_sentry_context(
    enqueue: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    w3c = [f"member{i:04d}=value-{i:04d}" for i in range(1000)]
    # The trace head's Sentry context comes last, behind all 1,000 other members.
    dsc = [f"sentry-trace_id={TRACE}", "sentry-public_key=upstream", "sentry-sample_rand=0.25"]
    inbound = ",".join([*w3c, *dsc])
    carrier = enqueue({"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": inbound})

    baggage = carrier["baggage"]
    members = _members(baggage)
    # W3C Baggage "Limits": at least 64 members and 8192 bytes must be propagated.
    assert len(baggage.encode()) <= 8192
    assert len(members) == 64
    pairs = [m.split("=", 1) for m in members]
    sentry = {k: unquote(v) for k, v in pairs if k.startswith("sentry-")}
    others = [m for m in members if not m.startswith("sentry-")]
    # The W3C members carried are the inbound ones, verbatim and in order.
    assert others == w3c[: len(others)] and len(others) >= 32
    # The head's context is kept, not replaced; the sampled flag is the trace's own.
    assert sentry["sentry-trace_id"] == TRACE
    assert sentry["sentry-public_key"] == "upstream"
    assert sentry["sentry-sample_rand"] == "0.25"
    assert sentry["sentry-sampled"] == "true"
    assert carrier["sentry-trace"] == f"{TRACE}-{carrier['traceparent'][36:52]}-1"


def test_thousand_member_baggage_without_a_sentry_context_gets_ours(
    enqueue: Callable[[dict[str, str]], dict[str, str]],
) -> None:
    inbound = ",".join(f"m{i}={'v' * 150}" for i in range(1000))  # 150 KiB
    carrier = enqueue({"sentry-trace": f"{TRACE}-{PARENT}-0", "baggage": inbound})
    members = _members(carrier["baggage"])
    assert len(carrier["baggage"].encode()) <= 8192 and len(members) <= 64
    sentry = dict(m.split("=", 1) for m in members if m.startswith("sentry-"))
    assert sentry["sentry-trace_id"] == TRACE and sentry["sentry-sampled"] == "false"
    others = [m for m in members if not m.startswith("sentry-")]
    assert others and all(m == f"m{i}={'v' * 150}" for i, m in enumerate(others))
