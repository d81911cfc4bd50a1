"""Unit and property tests for otel.ids (header id parsing and formatting)."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel.ids import (
    INVALID_TRACE_ID,
    RANDOM_FLAG,
    SAMPLED_FLAG,
    SentryTrace,
    TraceParent,
    format_sentry_trace,
    format_traceparent,
    format_tracestate,
    hex_to_uuid,
    is_valid_tracestate_key,
    is_valid_tracestate_value,
    parse_sentry_trace,
    parse_traceparent,
    parse_tracestate,
    parse_x_trace_id,
    span_id_hex,
    trace_id_hex,
    trace_id_uuid,
    uuid_to_hex,
)

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_HEX = "00f067aa0ba902b7"
TRACE_INT = 0x4BF92F3577B34DA6A3CE929D0E0E4736
SPAN_INT = 0x00F067AA0BA902B7
VALID_TP = f"00-{TRACE_HEX}-{SPAN_HEX}-01"
# The ids the W3C test suite (w3c/trace-context test/test.py) sends.
SUITE_TRACE = "12345678901234567890123456789012"
SUITE_SPAN = "1234567890123456"

trace_ids = st.integers(min_value=1, max_value=(1 << 128) - 1)
span_ids = st.integers(min_value=1, max_value=(1 << 64) - 1)
keys = st.from_regex(r"[a-z0-9][a-z0-9_\-*/@]{0,255}", fullmatch=True)
values = st.from_regex(
    r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]", fullmatch=True
)
header_chars = st.text(alphabet="0123456789abcdefABCDEFxyz-_.@*/=, \t\n{}", max_size=120)


# --- traceparent -----------------------------------------------------------------------


def test_traceparent_valid_sampled() -> None:
    tp = parse_traceparent(VALID_TP)
    assert tp == TraceParent(trace_id=TRACE_INT, span_id=SPAN_INT, flags=1, version=0)
    assert tp is not None and tp.sampled is True and tp.random is False


def test_traceparent_valid_not_sampled() -> None:
    tp = parse_traceparent(f"00-{TRACE_HEX}-{SPAN_HEX}-00")
    assert tp == TraceParent(TRACE_INT, SPAN_INT, 0)
    assert tp is not None and not tp.sampled and not tp.random


@pytest.mark.parametrize(
    ("flags_hex", "flags", "sampled", "random"),
    [
        ("00", 0x00, False, False),
        ("01", 0x01, True, False),
        ("02", 0x02, False, True),
        ("03", 0x03, True, True),
        ("09", 0x09, True, False),
        ("0a", 0x0A, False, True),
        ("fe", 0xFE, False, True),
        ("ff", 0xFF, True, True),
    ],
)
def test_traceparent_flags_kept_verbatim(
    flags_hex: str, flags: int, sampled: bool, random: bool
) -> None:
    tp = parse_traceparent(f"00-{TRACE_HEX}-{SPAN_HEX}-{flags_hex}")
    assert tp is not None
    assert tp.flags == flags
    assert tp.sampled is sampled
    assert tp.random is random


def test_flag_constants() -> None:
    assert SAMPLED_FLAG == 0x01
    assert RANDOM_FLAG == 0x02
    assert INVALID_TRACE_ID == 0


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE_HEX.upper()}-{SPAN_HEX}-01",
        f"00-{TRACE_HEX}-{SPAN_HEX.upper()}-01",
        f"00-{TRACE_HEX}-{SPAN_HEX}-0A",
        f"0A-{TRACE_HEX}-{SPAN_HEX}-01",
        f"00-4BF92f3577b34da6a3ce929d0e0e4736-{SPAN_HEX}-01",
    ],
)
def test_traceparent_uppercase_hex_is_invalid(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [
        # version too short / too long (test_traceparent_version_too_short/_too_long)
        f"0-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"000-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"0000-{SUITE_TRACE}-{SUITE_SPAN}-01",
        # trace id
        f"00-{SUITE_TRACE[:-1]}-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}3-{SUITE_SPAN}-01",
        # parent id
        f"00-{SUITE_TRACE}-{SUITE_SPAN[:-1]}-01",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}7-01",
        # flags
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-1",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-001",
        # truncated
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}",
        f"00-{SUITE_TRACE}",
        "00",
    ],
)
def test_traceparent_wrong_lengths(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [
        f"00-{'0' * 32}-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}-{'0' * 16}-01",
        f"00-{'0' * 32}-{'0' * 16}-01",
        f"cc-{'0' * 32}-{SUITE_SPAN}-01",
        f"cc-{SUITE_TRACE}-{'0' * 16}-01-future",
    ],
)
def test_traceparent_all_zero_ids_are_invalid(value: str) -> None:
    assert parse_traceparent(value) is None


def test_traceparent_version_ff_is_invalid() -> None:
    assert parse_traceparent(f"ff-{SUITE_TRACE}-{SUITE_SPAN}-01") is None
    assert parse_traceparent(f"ff-{SUITE_TRACE}-{SUITE_SPAN}-01-future") is None


@pytest.mark.parametrize(
    "value",
    [
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01.",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01-what-the-future-will-be-like",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01-",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01 x",
    ],
)
def test_traceparent_version_00_allows_nothing_after_flags(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}-01-what-the-future-will-be-like",
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}-01-",
        f"01-{SUITE_TRACE}-{SUITE_SPAN}-01-00",
    ],
)
def test_traceparent_future_version_is_downgraded(value: str) -> None:
    tp = parse_traceparent(value)
    assert tp is not None
    assert tp.trace_id == int(SUITE_TRACE, 16)
    assert tp.span_id == int(SUITE_SPAN, 16)
    assert tp.flags == 0x01
    assert tp.version == int(value[:2], 16)
    assert format_traceparent(tp.trace_id, tp.span_id, tp.flags) == (
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01"
    )


def test_traceparent_future_version_keeps_all_flag_bits() -> None:
    tp = parse_traceparent(f"cc-{SUITE_TRACE}-{SUITE_SPAN}-07-extra")
    assert tp == TraceParent(int(SUITE_TRACE, 16), int(SUITE_SPAN, 16), 0x07, 0xCC)


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}-01.what-the-future-will-be-like",
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}-01x",
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}-011",
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}",
        f"cc-{SUITE_TRACE}1-{SUITE_SPAN}-01",
        f"cc-{SUITE_TRACE}-{SUITE_SPAN}1-01",
        f"cc-{TRACE_HEX.upper()}-{SPAN_HEX}-01-x",
    ],
)
def test_traceparent_future_version_invalid(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [
        f"00_{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}_{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}_01",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01".replace("-", ":"),
        f"00 {SUITE_TRACE} {SUITE_SPAN} 01",
        f"00--{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}--{SUITE_SPAN}-01",
    ],
)
def test_traceparent_bad_separators(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [
        # test_traceparent_{version,trace_id,parent_id,trace_flags}_illegal_characters
        f".0-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"0.-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"00-.{SUITE_TRACE[1:]}-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE[:-1]}.-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}-.{SUITE_SPAN[1:]}-01",
        f"00-{SUITE_TRACE}-{SUITE_SPAN[:-1]}.-01",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-.0",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-0.",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-0g",
        f"00-{'g' * 32}-{SUITE_SPAN}-01",
        # Unicode digits must not pass as hex.
        f"00-{SUITE_TRACE[:-1]}\u0663-{SUITE_SPAN}-01",
        f"0x-{SUITE_TRACE}-{SUITE_SPAN}-01",
    ],
)
def test_traceparent_non_hex(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [
        f" 00-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"\t00-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01 ",
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01\t",
        f"\t 00-{SUITE_TRACE}-{SUITE_SPAN}-01 \t",
    ],
)
def test_traceparent_ows_tolerated(value: str) -> None:
    assert parse_traceparent(value) == TraceParent(int(SUITE_TRACE, 16), int(SUITE_SPAN, 16), 1)


@pytest.mark.parametrize(
    "value",
    [
        f"00-{SUITE_TRACE}-{SUITE_SPAN}-01\n",
        f"\r\n00-{SUITE_TRACE}-{SUITE_SPAN}-01",
        f"\u00a000-{SUITE_TRACE}-{SUITE_SPAN}-01",
    ],
)
def test_traceparent_only_space_and_tab_are_ows(value: str) -> None:
    assert parse_traceparent(value) is None


@pytest.mark.parametrize("value", [None, "", " ", "\t", b"00-x", 55, object()])
def test_traceparent_missing_or_not_text(value: object) -> None:
    assert parse_traceparent(value) is None  # type: ignore[arg-type]


def test_format_traceparent() -> None:
    assert format_traceparent(TRACE_INT, SPAN_INT, 1) == VALID_TP
    assert format_traceparent(1, 1, 0) == f"00-{'0' * 31}1-{'0' * 15}1-00"
    assert format_traceparent((1 << 128) - 1, (1 << 64) - 1, 0xFF) == (
        f"00-{'f' * 32}-{'f' * 16}-ff"
    )
    assert format_traceparent(TRACE_INT, SPAN_INT, 0x03).endswith("-03")


@pytest.mark.parametrize(
    ("trace_id", "span_id", "flags"),
    [
        (0, SPAN_INT, 1),
        (TRACE_INT, 0, 1),
        (1 << 128, SPAN_INT, 1),
        (-1, SPAN_INT, 1),
        (TRACE_INT, 1 << 64, 1),
        (TRACE_INT, -5, 1),
        (TRACE_INT, SPAN_INT, 256),
        (TRACE_INT, SPAN_INT, -1),
    ],
)
def test_format_traceparent_rejects_bad_input(trace_id: int, span_id: int, flags: int) -> None:
    with pytest.raises(ValueError):
        format_traceparent(trace_id, span_id, flags)


def test_traceparent_is_frozen() -> None:
    tp = TraceParent(1, 2, 3)
    with pytest.raises(AttributeError):
        tp.flags = 0  # type: ignore[misc]
    assert not hasattr(tp, "__dict__")


@given(trace_ids, span_ids, st.integers(min_value=0, max_value=0xFF))
def test_traceparent_round_trip(trace_id: int, span_id: int, flags: int) -> None:
    header = format_traceparent(trace_id, span_id, flags)
    assert len(header) == 55
    assert parse_traceparent(header) == TraceParent(trace_id, span_id, flags, 0)


@given(
    trace_ids,
    span_ids,
    st.integers(min_value=0, max_value=0xFF),
    st.integers(min_value=1, max_value=0xFE),
    st.text(alphabet="0123456789abcdef-", max_size=40),
)
def test_traceparent_future_version_round_trip(
    trace_id: int, span_id: int, flags: int, version: int, tail: str
) -> None:
    header = f"{version:02x}" + format_traceparent(trace_id, span_id, flags)[2:] + "-" + tail
    assert parse_traceparent(header) == TraceParent(trace_id, span_id, flags, version)


# --- tracestate ------------------------------------------------------------------------


def test_tracestate_simple() -> None:
    assert parse_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == (
        ("rojo", "00f067aa0ba902b7"),
        ("congo", "t61rcWkgMzE"),
    )


@pytest.mark.parametrize("value", [None, "", " ", ",", " , \t ,", [], [""], ["", " "], ()])
def test_tracestate_nothing(value: str | list[str] | tuple[str, ...] | None) -> None:
    assert parse_tracestate(value) == ()


@pytest.mark.parametrize(
    "value",
    [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
        " foo=1,bar=2,baz=3 ",
        "\tfoo=1,bar=2,baz=3\t",
    ],
)
def test_tracestate_ows(value: str) -> None:
    assert parse_tracestate(value) == (("foo", "1"), ("bar", "2"), ("baz", "3"))


def test_tracestate_value_leading_spaces_kept_trailing_spaces_dropped() -> None:
    assert parse_tracestate("foo=  a b  ,bar= 2") == (("foo", "  a b"), ("bar", " 2"))


@pytest.mark.parametrize(
    "value",
    [",foo=1,bar=2", "foo=1,,bar=2", "foo=1,bar=2,", "foo=1, ,bar=2", ",,foo=1,\t,bar=2,,"],
)
def test_tracestate_empty_members_skipped(value: str) -> None:
    assert parse_tracestate(value) == (("foo", "1"), ("bar", "2"))


def test_tracestate_multiple_header_lines_combined_in_order() -> None:
    lines = ["foo=1,bar=2", "rojo=1,congo=2", "baz=3"]
    expected = (("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"), ("baz", "3"))
    assert parse_tracestate(lines) == expected
    assert parse_tracestate(tuple(lines)) == expected


@pytest.mark.parametrize("lines", [["foo=1", ""], ["", "foo=1"], ["", "foo=1", " "]])
def test_tracestate_empty_header_line(lines: list[str]) -> None:
    assert parse_tracestate(lines) == (("foo", "1"),)


def test_tracestate_header_lines_do_not_merge_members() -> None:
    # Joining with "," (RFC 7230) means the end of one line never glues onto the next.
    assert parse_tracestate(["foo=1", "2,bar=3"]) == (("foo", "1"), ("bar", "3"))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("foo=1,foo=1", (("foo", "1"),)),
        ("foo=1,foo=2", (("foo", "1"),)),
        ("foo=1,bar=2,foo=3,bar=4,baz=5", (("foo", "1"), ("bar", "2"), ("baz", "5"))),
        (["foo=1", "foo=2"], (("foo", "1"),)),
        (["bar=0,foo=1", "foo=2,baz=3"], (("bar", "0"), ("foo", "1"), ("baz", "3"))),
    ],
)
def test_tracestate_duplicate_keys_keep_first(
    value: str | list[str], expected: tuple[tuple[str, str], ...]
) -> None:
    assert parse_tracestate(value) == expected


def test_tracestate_invalid_duplicate_does_not_shadow_later_valid_one() -> None:
    assert parse_tracestate("foo=,foo=2") == (("foo", "2"),)


@pytest.mark.parametrize(
    "member",
    [
        "foo =1",
        "FOO=1",
        "foo.bar=1",
        "@foo=1",
        "_foo=1",
        "-foo=1",
        "*foo=1",
        "/foo=1",
        "=1",
        "foo",
        "foo=",
        "foo= ",
        "foo=a\tb",
        "foo=1=2",
        "f\u00f6o=1",
        "foo=\u00e9",
        "foo=\x7f",
        "foo=\x00",
        f"{'k' * 257}=1",
        f"foo={'v' * 257}",
    ],
)
def test_tracestate_invalid_member_dropped_others_kept(member: str) -> None:
    assert parse_tracestate(f"a=1,{member},b=2") == (("a", "1"), ("b", "2"))


def test_tracestate_all_allowed_characters() -> None:
    key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
    key_at = key + "@a-z0-9_-*/"
    value = (
        "".join(map(chr, range(0x20, 0x2B + 1)))
        + "".join(map(chr, range(0x2D, 0x3C + 1)))
        + "".join(map(chr, range(0x3E, 0x7E + 1)))
    )
    assert parse_tracestate(f"{key}={value}") == ((key, value),)
    assert parse_tracestate(f"{key_at}={value}") == ((key_at, value),)


def test_tracestate_32_members_kept() -> None:
    members = tuple((f"k{i}", str(i)) for i in range(32))
    header = ",".join(f"{k}={v}" for k, v in members)
    assert parse_tracestate(header) == members


def test_tracestate_33_members_keeps_first_32() -> None:
    header = ",".join(f"k{i}={i}" for i in range(33))
    parsed = parse_tracestate(header)
    assert len(parsed) == 32
    assert parsed[0] == ("k0", "0")
    assert parsed[-1] == ("k31", "31")
    assert ("k32", "32") not in parsed


def test_tracestate_invalid_and_duplicate_members_do_not_count_toward_32() -> None:
    header = "BAD=1,k0=dup," + ",".join(f"k{i}={i}" for i in range(32)) + ",late=1"
    parsed = parse_tracestate(header)
    assert len(parsed) == 32
    assert parsed[0] == ("k0", "dup")
    assert parsed[-1] == ("k31", "31")


# Trace Context Level 2 "Key": key = ( lcalpha / DIGIT ) 0*255 ( keychar ),
# keychar includes "@" with no positional rule beyond "not first".
@pytest.mark.parametrize(
    "key",
    [
        "a",
        "0",
        "9abc",
        "foo",
        "foo@bar",
        "fw529a3039@dt",
        "001@xyz",
        "foo@",
        "foo@@bar",
        "foo@bar@baz",
        "a@",
        "0@0",
        "a/b*c-d_e",
        "t" * 242 + "@v",
        "t@" + "v" * 15,
        "k" * 256,
        "k" * 254 + "@x",
    ],
)
def test_tracestate_key_valid(key: str) -> None:
    assert is_valid_tracestate_key(key)
    assert parse_tracestate(f"{key}=1") == ((key, "1"),)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "@",
        "@foo",
        "_a",
        "-a",
        "*a",
        "/a",
        "Foo",
        "fOo",
        "foo.bar",
        "foo bar",
        "foo=",
        "foo,",
        "k" * 257,
        "k" * 256 + "@",
        "é",
        "a\n",
    ],
)
def test_tracestate_key_invalid(key: str) -> None:
    assert not is_valid_tracestate_key(key)


@pytest.mark.parametrize(
    "value",
    ["1", " 1", "  a b", "a" * 256, " " * 255 + "x", "!", "~", "a+b-c<d>e", '"quoted"'],
)
def test_tracestate_value_valid(value: str) -> None:
    assert is_valid_tracestate_value(value)


@pytest.mark.parametrize(
    "value",
    ["", " ", "a ", "a" * 257, "a,b", "a=b", "a\tb", "\t", "a\n", "\x7f", "\x1f", "é"],
)
def test_tracestate_value_invalid(value: str) -> None:
    assert not is_valid_tracestate_value(value)


def test_tracestate_max_key_and_value_member() -> None:
    key, value = "k" * 256, "v" * 256
    assert parse_tracestate(f"{key}={value}") == ((key, value),)


def test_tracestate_non_str_lines_ignored() -> None:
    assert parse_tracestate(["foo=1", None, b"bar=2", "baz=3"]) == (  # type: ignore[list-item]
        ("foo", "1"),
        ("baz", "3"),
    )


def test_format_tracestate_empty() -> None:
    assert format_tracestate([]) == ""
    assert format_tracestate(()) == ""
    assert format_tracestate([("BAD", "1"), ("ok", "")]) == ""


def test_format_tracestate_simple() -> None:
    members = [("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")]
    assert format_tracestate(members) == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"
    assert format_tracestate(iter(members)) == "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_format_tracestate_keeps_leading_spaces_in_value() -> None:
    assert format_tracestate([("foo", "  bar")]) == "foo=  bar"


def test_format_tracestate_drops_invalid_and_duplicate_members() -> None:
    members = [("a", "1"), ("B", "2"), ("c", "x,y"), ("a", "3"), ("d", "4 "), ("e", "5")]
    assert format_tracestate(members) == "a=1,e=5"


def test_format_tracestate_caps_at_32_members() -> None:
    members = [(f"k{i}", "v") for i in range(40)]
    out = format_tracestate(members)
    assert out == ",".join(f"k{i}=v" for i in range(32))


def _member(key: str, size: int) -> tuple[str, str]:
    """A member whose ``key=value`` text is exactly ``size`` characters."""
    return key, "v" * (size - len(key) - 1)


def test_format_tracestate_exactly_512_untouched() -> None:
    # 128 + 128 + 128 + 125 characters + 3 commas = 512, and no entry is over 128.
    members = [_member("a", 128), _member("b", 128), _member("c", 128), _member("d", 125)]
    out = format_tracestate(members)
    assert len(out) == 512
    assert [m.split("=")[0] for m in out.split(",")] == ["a", "b", "c", "d"]


def test_format_tracestate_drops_from_the_right_to_fit_512() -> None:
    members = [_member(f"k{i:02d}", 100) for i in range(6)]  # 6*100 + 5 = 605
    out = format_tracestate(members)
    assert out == ",".join(f"{k}={v}" for k, v in members[:5])  # 5*100 + 4 = 504
    assert len(out) == 504


def test_format_tracestate_drops_large_members_first() -> None:
    members = [
        _member("a", 100),
        _member("big", 200),
        _member("b", 100),
        _member("c", 100),
        _member("d", 100),
    ]  # 600 + 4 = 604 > 512; removing "big" (>128) alone gives 403.
    out = format_tracestate(members)
    assert [m.split("=")[0] for m in out.split(",")] == ["a", "b", "c", "d"]
    assert len(out) == 403


def test_format_tracestate_drops_large_members_rightmost_first_and_stops_when_it_fits() -> None:
    members = [
        _member("big1", 200),
        _member("a", 100),
        _member("big2", 200),
        _member("b", 100),
    ]  # 600 + 3 = 603; dropping big2 gives 402, so big1 stays.
    out = format_tracestate(members)
    assert [m.split("=")[0] for m in out.split(",")] == ["big1", "a", "b"]


def test_format_tracestate_then_drops_small_from_the_right() -> None:
    members = [_member("big", 200)] + [_member(f"s{i}", 60) for i in range(8)]
    # 200 + 480 + 8 = 688; without big: 480 + 7 = 487 fits.
    out = format_tracestate(members)
    assert out.split(",")[0].startswith("s0=")
    assert len(out.split(",")) == 8
    members = [_member("big", 129)] + [_member(f"s{i:02d}", 60) for i in range(10)]
    # without big: 600 + 9 = 609 > 512; then drop from the right: 8 members = 487.
    out = format_tracestate(members)
    assert [m.split("=")[0] for m in out.split(",")] == [f"s{i:02d}" for i in range(8)]


def test_format_tracestate_single_oversize_member_dropped() -> None:
    key, value = "k" * 256, "v" * 256  # 513 characters on its own
    assert format_tracestate([(key, value)]) == ""
    assert format_tracestate([(key, value), ("a", "1")]) == "a=1"


@given(
    st.lists(st.tuples(keys, values), max_size=40, unique_by=lambda kv: kv[0]),
)
def test_tracestate_format_parse_round_trip(members: list[tuple[str, str]]) -> None:
    header = format_tracestate(members)
    assert len(header) <= 512
    parsed = parse_tracestate(header)
    # What survives is an order-preserving subsequence of the input...
    it = iter(members)
    assert all(m in it for m in parsed)
    assert len(parsed) <= 32
    # ...exactly the input when no limit applied...
    untruncated = ",".join(f"{k}={v}" for k, v in members)
    if len(members) <= 32 and len(untruncated) <= 512:
        assert parsed == tuple(members)
        assert header == untruncated
    # ...and formatting is stable.
    assert format_tracestate(parsed) == header


@given(st.lists(st.tuples(keys, values), min_size=1, max_size=5, unique_by=lambda kv: kv[0]))
def test_tracestate_parse_tolerates_ows_and_empty_members(members: list[tuple[str, str]]) -> None:
    header = " ,\t".join(f" {k}={v} \t" for k, v in members) + ", ,"
    assert parse_tracestate(header) == tuple(members)


# --- sentry-trace ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "sampled"),
    [
        (f"{TRACE_HEX}-{SPAN_HEX}-1", True),
        (f"{TRACE_HEX}-{SPAN_HEX}-0", False),
        (f"{TRACE_HEX}-{SPAN_HEX}", None),
        (f"  {TRACE_HEX}-{SPAN_HEX}-1\t", True),
        (f"\t{TRACE_HEX}-{SPAN_HEX} ", None),
    ],
)
def test_sentry_trace_valid(value: str, sampled: bool | None) -> None:
    assert parse_sentry_trace(value) == SentryTrace(TRACE_INT, SPAN_INT, sampled)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "-",
        f"{TRACE_HEX}",
        f"{TRACE_HEX}-",
        f"-{SPAN_HEX}-1",
        f"{SPAN_HEX}-1",
        f"{TRACE_HEX}-{SPAN_HEX}-",
        f"{TRACE_HEX}-{SPAN_HEX}-2",
        f"{TRACE_HEX}-{SPAN_HEX}-01",
        f"{TRACE_HEX}-{SPAN_HEX}-true",
        f"{TRACE_HEX}-{SPAN_HEX}-1-x",
        f"{TRACE_HEX.upper()}-{SPAN_HEX}-1",
        f"{TRACE_HEX}-{SPAN_HEX.upper()}-1",
        f"{TRACE_HEX}1-{SPAN_HEX}-1",
        f"{TRACE_HEX}-{SPAN_HEX}1-1",
        f"{TRACE_HEX}{SPAN_HEX}1",
        f"{'0' * 32}-{SPAN_HEX}-1",
        f"{TRACE_HEX}-{'0' * 16}-1",
        f"{TRACE_HEX}-{SPAN_HEX}-1\n",
        f"00-{TRACE_HEX}-{SPAN_HEX}-01",
        b"x",
    ],
)
def test_sentry_trace_invalid(value: object) -> None:
    assert parse_sentry_trace(value) is None  # type: ignore[arg-type]


def test_format_sentry_trace() -> None:
    assert format_sentry_trace(TRACE_INT, SPAN_INT, True) == f"{TRACE_HEX}-{SPAN_HEX}-1"
    assert format_sentry_trace(TRACE_INT, SPAN_INT, False) == f"{TRACE_HEX}-{SPAN_HEX}-0"
    assert format_sentry_trace(TRACE_INT, SPAN_INT, None) == f"{TRACE_HEX}-{SPAN_HEX}"
    assert format_sentry_trace(1, 2, None) == f"{'0' * 31}1-{'0' * 15}2"


@pytest.mark.parametrize(
    ("trace_id", "span_id"), [(0, 1), (1, 0), (1 << 128, 1), (1, 1 << 64), (-1, 1)]
)
def test_format_sentry_trace_rejects_bad_ids(trace_id: int, span_id: int) -> None:
    with pytest.raises(ValueError):
        format_sentry_trace(trace_id, span_id, True)


@given(trace_ids, span_ids, st.sampled_from([True, False, None]))
def test_sentry_trace_round_trip(trace_id: int, span_id: int, sampled: bool | None) -> None:
    assert parse_sentry_trace(format_sentry_trace(trace_id, span_id, sampled)) == SentryTrace(
        trace_id, span_id, sampled
    )


# --- X-Trace-ID ------------------------------------------------------------------------

UUID_LOWER = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"


@pytest.mark.parametrize(
    "value",
    [
        UUID_LOWER,
        UUID_LOWER.upper(),
        "4BF92f35-77B3-4da6-A3CE-929d0e0e4736",
        TRACE_HEX,
        TRACE_HEX.upper(),
        f" {UUID_LOWER}\t",
        f"\t{TRACE_HEX} ",
    ],
)
def test_x_trace_id_valid(value: str) -> None:
    assert parse_x_trace_id(value) == TRACE_INT


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"{{{UUID_LOWER}}}",
        f"urn:uuid:{UUID_LOWER}",
        "00000000-0000-0000-0000-000000000000",
        "0" * 32,
        TRACE_HEX[:-1],
        TRACE_HEX + "0",
        "4bf92f3577b3-4da6-a3ce-929d0e0e4736",
        "4bf92f35-77b34da6-a3ce-929d0e0e4736",
        "4bf92f3-577b3-4da6-a3ce-929d0e0e4736",
        "4bf92f35-77b3-4da6-a3ce-929d0e0e473",
        "4bf92f35_77b3_4da6_a3ce_929d0e0e4736",
        "4bf92f35-77b3-4da6-a3ce-929d0e0e473g",
        f"{UUID_LOWER}\n",
        "0x" + TRACE_HEX[2:],
        "12345",
        b"x",
    ],
)
def test_x_trace_id_invalid(value: object) -> None:
    assert parse_x_trace_id(value) is None  # type: ignore[arg-type]


# --- conversions -----------------------------------------------------------------------


def test_conversions_concrete() -> None:
    assert trace_id_hex(TRACE_INT) == TRACE_HEX
    assert trace_id_hex(1) == "0" * 31 + "1"
    assert trace_id_hex(0) == "0" * 32
    assert span_id_hex(SPAN_INT) == SPAN_HEX
    assert span_id_hex(0) == "0" * 16
    assert trace_id_uuid(TRACE_INT) == UUID_LOWER
    assert trace_id_uuid(1) == "00000000-0000-0000-0000-000000000001"
    assert uuid_to_hex(UUID_LOWER) == TRACE_HEX
    assert uuid_to_hex(UUID_LOWER.upper()) == TRACE_HEX
    assert hex_to_uuid(TRACE_HEX) == UUID_LOWER
    assert hex_to_uuid(TRACE_HEX.upper()) == UUID_LOWER


@pytest.mark.parametrize("value", [-1, 1 << 128])
def test_trace_id_conversions_reject_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        trace_id_hex(value)
    with pytest.raises(ValueError):
        trace_id_uuid(value)


@pytest.mark.parametrize("value", [-1, 1 << 64])
def test_span_id_hex_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        span_id_hex(value)


@pytest.mark.parametrize(
    "value",
    ["", TRACE_HEX, f"{{{UUID_LOWER}}}", f"urn:uuid:{UUID_LOWER}", UUID_LOWER[:-1], "x" * 36],
)
def test_uuid_to_hex_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        uuid_to_hex(value)


@pytest.mark.parametrize("value", ["", UUID_LOWER, TRACE_HEX[:-1], TRACE_HEX + "0", "g" * 32])
def test_hex_to_uuid_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        hex_to_uuid(value)


@given(st.integers(min_value=0, max_value=(1 << 128) - 1))
def test_trace_id_int_hex_uuid_round_trips(trace_id: int) -> None:
    h = trace_id_hex(trace_id)
    u = trace_id_uuid(trace_id)
    assert len(h) == 32 and h == h.lower()
    assert int(h, 16) == trace_id
    assert u == str(uuid.UUID(int=trace_id))
    assert hex_to_uuid(h) == u
    assert uuid_to_hex(u) == h
    assert hex_to_uuid(h.upper()) == u
    assert uuid_to_hex(u.upper()) == h
    expected = None if trace_id == INVALID_TRACE_ID else trace_id
    assert parse_x_trace_id(u) == expected
    assert parse_x_trace_id(u.upper()) == expected
    assert parse_x_trace_id(h) == expected


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
def test_span_id_hex_round_trip(span_id: int) -> None:
    h = span_id_hex(span_id)
    assert len(h) == 16 and h == h.lower()
    assert int(h, 16) == span_id


# --- parsers never raise ---------------------------------------------------------------


@given(st.one_of(st.text(), header_chars))
def test_parsers_never_raise(value: str) -> None:
    tp = parse_traceparent(value)
    assert tp is None or (0 < tp.trace_id < 1 << 128 and 0 < tp.span_id < 1 << 64)
    st_ = parse_sentry_trace(value)
    assert st_ is None or (st_.trace_id > 0 and st_.span_id > 0)
    x = parse_x_trace_id(value)
    assert x is None or 0 < x < 1 << 128
    members = parse_tracestate(value)
    assert len(members) <= 32
    assert len({k for k, _ in members}) == len(members)
    assert all(is_valid_tracestate_key(k) and is_valid_tracestate_value(v) for k, v in members)


@given(st.lists(st.one_of(st.text(), header_chars), max_size=5))
def test_tracestate_lines_never_raise(lines: list[str]) -> None:
    members = parse_tracestate(lines)
    assert len(members) <= 32
    assert all(is_valid_tracestate_key(k) and is_valid_tracestate_value(v) for k, v in members)


@given(trace_ids, span_ids, st.integers(0, 0xFF), st.integers(0, 54), st.characters())
def test_traceparent_single_char_mutation(
    trace_id: int, span_id: int, flags: int, index: int, char: str
) -> None:
    header = format_traceparent(trace_id, span_id, flags)
    mutated = header[:index] + char + header[index + 1 :]
    tp = parse_traceparent(mutated)
    if tp is not None:
        assert format_traceparent(tp.trace_id, tp.span_id, tp.flags)[2:] == mutated.strip(" \t")[2:]
