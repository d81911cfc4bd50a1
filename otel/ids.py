"""Parsing and formatting of trace identifiers carried in request headers.

This module owns the wire formats of every trace id tracegate accepts or emits:

* W3C ``traceparent`` and ``tracestate`` (Trace Context Level 2 and the editor's draft,
  https://www.w3.org/TR/trace-context-2/ and https://w3c.github.io/trace-context/),
* Sentry's ``sentry-trace`` header,
* a plain ``X-Trace-ID`` header (UUID or 32 hex digits),
* conversions between the integer, hex and UUID spellings of an id.

Ids are plain ``int`` values (128-bit trace ids, 64-bit span ids) so that they can be handed
to the OpenTelemetry SDK and to Sentry without further conversion.

It is pure: standard library only, no I/O, no logging. Header parsers never raise; they
return ``None`` (or ``()`` for ``tracestate``) for anything they do not accept, because
header values are attacker-controlled and a bad header must never fail a request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

__all__ = [
    "INVALID_SPAN_ID",
    "INVALID_TRACE_ID",
    "RANDOM_FLAG",
    "SAMPLED_FLAG",
    "SentryTrace",
    "TraceParent",
    "TraceStateMembers",
    "format_sentry_trace",
    "format_traceparent",
    "format_tracestate",
    "hex_to_uuid",
    "is_valid_tracestate_key",
    "is_valid_tracestate_value",
    "parse_sentry_trace",
    "parse_traceparent",
    "parse_tracestate",
    "parse_x_trace_id",
    "span_id_hex",
    "trace_id_hex",
    "trace_id_uuid",
    "uuid_to_hex",
]

INVALID_TRACE_ID: Final = 0
INVALID_SPAN_ID: Final = 0

# trace-flags bits (W3C Trace Context Level 2, "trace-flags": "Sampled flag" and
# "Random Trace ID Flag").
SAMPLED_FLAG: Final = 0x01
RANDOM_FLAG: Final = 0x02

_TRACE_ID_LIMIT: Final = 1 << 128
_SPAN_ID_LIMIT: Final = 1 << 64

# RFC 7230 OWS is SP / HTAB only; str.strip() with no argument would also eat CR/LF and
# Unicode spaces, which must keep a header invalid rather than be silently repaired.
_OWS: Final = " \t"

# Only the version-00 prefix is matched: the "Versioning of traceparent" rules say a
# higher version is parsed by reading exactly these four fields and looking at the one
# character after them, so anything past index 55 is checked by hand, never scanned.
_TRACEPARENT_RE: Final = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACEPARENT_00_LEN: Final = 55

# Key grammar of Trace Context Level 2 "Key" (tracestate list-members), unchanged in the
# editor's draft and enforced by the W3C test suite since w3c/trace-context#584:
#     key     = ( lcalpha / DIGIT ) 0*255 ( keychar )
#     keychar = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
# Level 1's separate tenant@system form is gone: "@" is an ordinary character anywhere
# but first, may repeat, and may end the key.
_KEY: Final = r"[a-z0-9][a-z0-9_\-*/@]{0,255}"
# Level 2 "Value": value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr;
# nblk-chr = %x21-2B / %x2D-3C / %x3E-7E. So 1 to 256 characters, never empty, never
# ending in a space.
_VALUE: Final = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_KEY_RE: Final = re.compile(_KEY)
_VALUE_RE: Final = re.compile(_VALUE)
# One fullmatch per list-member, OWS included, so parsing never strips or slices; the
# trailing [ \t]* also absorbs the trailing spaces that "Value" calls optional whitespace.
_MEMBER_RE: Final = re.compile(rf"[ \t]*({_KEY})=({_VALUE})[ \t]*")

# "tracestate Header Field Values": at most 32 list-members.
_TRACESTATE_MAX_MEMBERS: Final = 32
# "tracestate Limits": vendors SHOULD propagate at least 512 characters; truncation
# removes entries over 128 characters first, then entries from the end.
_TRACESTATE_MAX_LEN: Final = 512
_TRACESTATE_LARGE_MEMBER: Final = 128

# Sentry's SDK (sentry_sdk.tracing_utils.SENTRY_TRACE_REGEX) allows [ \t]* around the value
# but also makes every part optional; we require both ids because a sentry-trace without
# them cannot continue a trace. fullmatch, unlike Sentry's "$", rejects a trailing "\n".
_SENTRY_TRACE_RE: Final = re.compile(r"[ \t]*([0-9a-f]{32})-([0-9a-f]{16})(?:-([01]))?[ \t]*")

_HEX32_RE: Final = re.compile(r"[0-9a-fA-F]{32}")
_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)

TraceStateMembers: TypeAlias = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class TraceParent:
    """A parsed ``traceparent``.

    ``version`` is the version the sender used. Fields a higher version may add are
    dropped, and :func:`format_traceparent` always writes version ``00``, which is the
    "Downgrade the version" mutation the spec requires.
    """

    trace_id: int
    span_id: int
    flags: int
    version: int = 0

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED_FLAG)

    @property
    def random(self) -> bool:
        return bool(self.flags & RANDOM_FLAG)


@dataclass(frozen=True, slots=True)
class SentryTrace:
    """A parsed ``sentry-trace``; ``sampled`` is ``None`` when the sender deferred."""

    trace_id: int
    span_id: int
    sampled: bool | None


def parse_traceparent(value: str | None) -> TraceParent | None:
    """Parse a ``traceparent`` header value; ``None`` if it must be ignored.

    Version ``00`` must be exactly 55 characters. A higher version (not ``ff``) is read by
    the version-00 layout and accepted only if the flags end the value or are followed by
    ``-``. All flag bits are kept as sent.
    """
    if not isinstance(value, str):
        return None
    # The W3C test suite (test_traceparent_ows_handling) sends leading and trailing
    # spaces and tabs and expects the trace to be continued.
    value = value.strip(_OWS)
    match = _TRACEPARENT_RE.match(value)
    if match is None:
        return None
    version_hex, trace_hex, span_hex, flags_hex = match.groups()
    version = int(version_hex, 16)
    if version == 0xFF:
        return None
    if len(value) != _TRACEPARENT_00_LEN and (version == 0 or value[_TRACEPARENT_00_LEN] != "-"):
        return None
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == INVALID_TRACE_ID or span_id == INVALID_SPAN_ID:
        return None
    return TraceParent(trace_id, span_id, int(flags_hex, 16), version)


def format_traceparent(trace_id: int, span_id: int, flags: int) -> str:
    """Format a version ``00`` ``traceparent``.

    Raises ``ValueError`` for a zero or out-of-range id or flags outside one byte: that is
    a bug in the caller, and sending the header anyway would make every receiver restart
    the trace.
    """
    _check_id(trace_id, _TRACE_ID_LIMIT, "trace_id")
    _check_id(span_id, _SPAN_ID_LIMIT, "span_id")
    if not 0 <= flags <= 0xFF:
        raise ValueError(f"flags out of range: {flags!r}")
    return f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"


def parse_tracestate(values: str | Sequence[str] | None) -> TraceStateMembers:
    """Parse one or more ``tracestate`` header values into ordered ``(key, value)`` pairs.

    Several header lines are combined as if joined with ``,`` (RFC 7230 field order, as
    the spec requires). Empty and whitespace-only members are skipped. Invalid members and
    later duplicates of a key are dropped, the rest is kept; after 32 kept members the
    remainder is ignored. Returns ``()`` when nothing valid is left.
    """
    if values is None:
        return ()
    if isinstance(values, str):
        combined = values
    else:
        combined = ",".join(v for v in values if isinstance(v, str))
    if not combined:
        return ()
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    # The processing model ("A traceparent is received") lets a vendor discard either the
    # whole header or only invalid entries. Dropping only the bad entry keeps every other
    # vendor's state flowing, which is the point of propagating tracestate at all.
    for raw in combined.split(","):
        match = _MEMBER_RE.fullmatch(raw)
        if match is None:
            continue
        key = match.group(1)
        # "Only one entry per key is allowed" and new entries go on the left, so the
        # leftmost occurrence is the most recent position; later ones are stale.
        if key in seen:
            continue
        seen.add(key)
        members.append((key, match.group(2)))
        # Past 32 members the list is invalid; keeping the leftmost (most recently
        # updated) 32 mirrors the spec's own truncation order for oversize headers.
        if len(members) == _TRACESTATE_MAX_MEMBERS:
            break
    return tuple(members)


def format_tracestate(members: Iterable[tuple[str, str]]) -> str:
    """Format ``tracestate`` list-members; ``''`` when there is nothing to send.

    Invalid members and later duplicate keys are dropped, at most 32 members are kept, and
    the result is cut to 512 characters by removing whole entries as "tracestate Limits"
    says: entries longer than 128 characters go first (rightmost first), then entries from
    the right.
    """
    entries: list[str] = []
    seen: set[str] = set()
    for key, value in members:
        if key in seen or _KEY_RE.fullmatch(key) is None or _VALUE_RE.fullmatch(value) is None:
            continue
        seen.add(key)
        entries.append(f"{key}={value}")
        if len(entries) == _TRACESTATE_MAX_MEMBERS:
            break
    total = sum(map(len, entries)) + len(entries) - 1
    if total > _TRACESTATE_MAX_LEN:
        for i in range(len(entries) - 1, -1, -1):
            if len(entries[i]) > _TRACESTATE_LARGE_MEMBER:
                total -= len(entries.pop(i)) + 1
                if total <= _TRACESTATE_MAX_LEN:
                    break
        while total > _TRACESTATE_MAX_LEN:
            total -= len(entries.pop()) + 1
    return ",".join(entries)


def is_valid_tracestate_key(key: str) -> bool:
    """Whether ``key`` matches the Trace Context Level 2 ``tracestate`` key grammar."""
    return _KEY_RE.fullmatch(key) is not None


def is_valid_tracestate_value(value: str) -> bool:
    """Whether ``value`` matches the Trace Context Level 2 ``tracestate`` value grammar."""
    return _VALUE_RE.fullmatch(value) is not None


def parse_sentry_trace(value: str | None) -> SentryTrace | None:
    """Parse ``<trace id>-<span id>[-0|-1]``; ``None`` if invalid or an id is all zeros."""
    if not isinstance(value, str):
        return None
    match = _SENTRY_TRACE_RE.fullmatch(value)
    if match is None:
        return None
    trace_hex, span_hex, sampled = match.groups()
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if trace_id == INVALID_TRACE_ID or span_id == INVALID_SPAN_ID:
        return None
    return SentryTrace(trace_id, span_id, None if sampled is None else sampled == "1")


def format_sentry_trace(trace_id: int, span_id: int, sampled: bool | None) -> str:
    """Format ``sentry-trace``; no sampled suffix when the decision is deferred (``None``).

    Raises ``ValueError`` for a zero or out-of-range id, as :func:`format_traceparent`.
    """
    _check_id(trace_id, _TRACE_ID_LIMIT, "trace_id")
    _check_id(span_id, _SPAN_ID_LIMIT, "span_id")
    if sampled is None:
        return f"{trace_id:032x}-{span_id:016x}"
    return f"{trace_id:032x}-{span_id:016x}-{'1' if sampled else '0'}"


def parse_x_trace_id(value: str | None) -> int | None:
    """Parse ``X-Trace-ID``: a hyphenated UUID or 32 hex digits, any case, not all zeros.

    Braced, URN and other UUID spellings are rejected on purpose: accepting more forms
    than callers need only widens what a client can smuggle into a trace id.
    """
    if not isinstance(value, str):
        return None
    value = value.strip(_OWS)
    if _HEX32_RE.fullmatch(value) is not None:
        trace_id = int(value, 16)
    elif _UUID_RE.fullmatch(value) is not None:
        trace_id = int(value.replace("-", ""), 16)
    else:
        return None
    return None if trace_id == INVALID_TRACE_ID else trace_id


def trace_id_hex(trace_id: int) -> str:
    """32 lowercase hex digits. ``ValueError`` outside ``0 <= trace_id < 2**128``."""
    _check_range(trace_id, _TRACE_ID_LIMIT, "trace_id")
    return f"{trace_id:032x}"


def span_id_hex(span_id: int) -> str:
    """16 lowercase hex digits. ``ValueError`` outside ``0 <= span_id < 2**64``."""
    _check_range(span_id, _SPAN_ID_LIMIT, "span_id")
    return f"{span_id:016x}"


def trace_id_uuid(trace_id: int) -> str:
    """Lowercase 8-4-4-4-12 UUID form. ``ValueError`` outside ``0 <= trace_id < 2**128``."""
    _check_range(trace_id, _TRACE_ID_LIMIT, "trace_id")
    return _hex_to_uuid(f"{trace_id:032x}")


def uuid_to_hex(value: str) -> str:
    """Hyphenated UUID (any case) to 32 lowercase hex digits; ``ValueError`` otherwise.

    For programmer use, not headers: it raises, and it accepts the nil UUID.
    """
    if not isinstance(value, str) or _UUID_RE.fullmatch(value) is None:
        raise ValueError(f"not a hyphenated UUID: {value!r}")
    return value.replace("-", "").lower()


def hex_to_uuid(value: str) -> str:
    """32 hex digits (any case) to a lowercase hyphenated UUID; ``ValueError`` otherwise.

    For programmer use, not headers: it raises, and it accepts all zeros.
    """
    if not isinstance(value, str) or _HEX32_RE.fullmatch(value) is None:
        raise ValueError(f"not 32 hex digits: {value!r}")
    return _hex_to_uuid(value.lower())


def _hex_to_uuid(h: str) -> str:
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _check_range(value: int, limit: int, name: str) -> None:
    # Format specs would happily render a negative or over-wide int as a longer string,
    # producing a malformed header instead of an error.
    if not 0 <= value < limit:
        raise ValueError(f"{name} out of range: {value!r}")


def _check_id(value: int, limit: int, name: str) -> None:
    if not 0 < value < limit:
        raise ValueError(f"{name} must be non-zero and fit in {limit.bit_length() - 1} bits")
