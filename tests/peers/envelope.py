"""Sentry envelopes: the data model, the parser, and a local receiver for sentry-sdk.

Owns everything about Sentry envelopes that the test peers share:

* ``Envelope`` / ``Item`` and ``parse_envelope`` (the wire format: a JSON header line,
  then per item a JSON header line and a payload that is either ``length`` bytes or
  runs to the next newline), plus ``envelope_from_json`` for the already-parsed
  ``[headers, [[item_headers, payload], ...]]`` form that the Spotlight sidecar streams;
* ``EnvelopeInbox``: the query/wait API (``events()``, ``transactions()``,
  ``wait_for()``) used by both this receiver and ``peers.spotlight``;
* ``EnvelopeReceiver``: a threaded HTTP server on 127.0.0.1 that accepts what the real
  sentry-sdk ``HttpTransport`` posts to ``/api/<project>/envelope/`` (and legacy
  ``/store/``), gzip/deflate/br encoded or not.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import (
    Collector,
    Faults,
    LoopbackHTTPServer,
    PeerContext,
    decode_body,
    head,
    matches,
)

Payload = dict[str, Any]

# Item types whose payload is not JSON (same set as Sentry's relay and Spotlight treat raw).
RAW_ITEM_TYPES = frozenset({"attachment", "replay_recording", "replay_video", "statsd"})
_TEXT_CONTENT_TYPES = frozenset(
    {
        "text/plain",
        "text/css",
        "text/csv",
        "text/html",
        "text/javascript",
        "text/json",
        "text/x-json",
        "application/json",
        "application/ld+json",
    }
)


@dataclass(frozen=True)
class Item:
    """One envelope item: its header and a JSON object payload (or raw bytes)."""

    headers: dict[str, Any]
    payload: Payload | bytes

    @property
    def type(self) -> str:
        return str(self.headers.get("type", ""))

    @property
    def json(self) -> Payload | None:
        return self.payload if isinstance(self.payload, dict) else None


@dataclass(frozen=True)
class Envelope:
    """A received envelope; ``project_id`` is the one from the request path, if any."""

    headers: dict[str, Any]
    items: list[Item] = field(default_factory=list)
    project_id: str = ""


def make_item(headers: dict[str, Any], payload: bytes) -> Item:
    """Build an Item, decoding a JSON-object payload unless the type is a raw one."""
    if str(headers.get("type", "")) not in RAW_ITEM_TYPES:
        try:
            decoded = json.loads(payload)
        except ValueError:
            decoded = None
        if isinstance(decoded, dict):
            return Item(headers=headers, payload=decoded)
    return Item(headers=headers, payload=payload)


def _json_object(line: bytes, what: str) -> dict[str, Any]:
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError(f"envelope {what} is not a JSON object: {line[:80]!r}")
    return value


def parse_envelope(raw: bytes, project_id: str = "") -> Envelope:
    """Parse the Sentry envelope wire format; raise ValueError if it is malformed."""
    header_line, _, rest = raw.partition(b"\n")
    headers = _json_object(header_line, "header")
    items: list[Item] = []
    pos = 0
    while pos < len(rest):
        line_end = _line_end(rest, pos)
        line = rest[pos:line_end]
        pos = line_end + 1
        if not line.strip():  # tolerate blank separator / trailing lines
            continue
        item_headers = _json_object(line, "item header")
        length = item_headers.get("length")
        if length is None:
            end = _line_end(rest, pos)
            payload, pos = rest[pos:end], end + 1
        else:
            if not isinstance(length, int) or length < 0 or pos + length > len(rest):
                raise ValueError(f"envelope item length {length!r} exceeds the body")
            payload, pos = rest[pos : pos + length], pos + length
            if rest[pos : pos + 1] == b"\n":
                pos += 1
        items.append(make_item(item_headers, payload))
    return Envelope(headers=headers, items=items, project_id=project_id)


def _line_end(data: bytes, start: int) -> int:
    end = data.find(b"\n", start)
    return len(data) if end == -1 else end


def envelope_from_json(parsed: Any) -> Envelope:
    """Build an Envelope from Spotlight's ``[headers, [[item_headers, payload], ...]]``.

    Spotlight already parsed the wire format; raw item payloads arrive as
    ``{"data": <utf-8 text or base64>}`` and are turned back into bytes here.
    """
    if not (isinstance(parsed, list) and len(parsed) == 2 and isinstance(parsed[0], dict)):
        raise ValueError(f"not a parsed envelope: {str(parsed)[:120]}")
    items: list[Item] = []
    for item_headers, payload in parsed[1]:
        if str(item_headers.get("type", "")) in RAW_ITEM_TYPES and isinstance(payload, dict):
            data = str(payload.get("data", ""))
            if item_headers.get("content_type") in _TEXT_CONTENT_TYPES:
                items.append(Item(headers=item_headers, payload=data.encode()))
            else:
                items.append(Item(headers=item_headers, payload=base64.b64decode(data)))
        elif isinstance(payload, dict):
            items.append(Item(headers=item_headers, payload=payload))
        else:
            items.append(Item(headers=item_headers, payload=json.dumps(payload).encode()))
    return Envelope(headers=parsed[0], items=items)


def describe_item(item: Item) -> str:
    """One line saying what an item is, for failure messages."""
    payload = item.json
    if payload is None:
        return f"{item.type or '?'} ({len(item.payload)} raw bytes)"
    if item.type == "transaction":
        return f"transaction {payload.get('transaction')!r}"
    if item.type == "event":
        return f"event {_event_title(payload)!r}"
    return item.type or "?"


def _event_title(event: Payload) -> str:
    logentry = event.get("logentry")
    if isinstance(logentry, dict) and logentry.get("message"):
        return str(logentry.get("formatted") or logentry["message"])
    if event.get("message"):
        return str(event["message"])
    exceptions = (event.get("exception") or {}).get("values") or []
    if exceptions:
        last = exceptions[-1]
        return f"{last.get('type')}: {last.get('value')}"
    return str(event.get("event_id", "?"))


class EnvelopeInbox:
    """Envelopes received by a peer, with the query and wait API tests use."""

    def __init__(self) -> None:
        self._received: Collector[Envelope] = Collector()
        self._rejected: list[str] = []

    @property
    def envelopes(self) -> list[Envelope]:
        return self._received.snapshot()

    def items(self, item_type: str | None = None) -> list[Item]:
        return [
            item
            for envelope in self._received.snapshot()
            for item in envelope.items
            if item_type is None or item.type == item_type
        ]

    def events(self) -> list[Payload]:
        """Error and message events (items of type ``event``)."""
        return [i.payload for i in self.items("event") if isinstance(i.payload, dict)]

    def transactions(self) -> list[Payload]:
        return [i.payload for i in self.items("transaction") if isinstance(i.payload, dict)]

    def clear(self) -> None:
        self._received.clear()
        self._rejected.clear()

    def wait_for(
        self,
        predicate: Callable[[Payload], bool],
        timeout: float = 10.0,
        item_type: str | None = None,
    ) -> Payload:
        """Wait for a JSON item payload (of ``item_type``, if given) matching ``predicate``.

        Returns the first match; raises AssertionError listing what was received.
        A predicate raising KeyError/TypeError/AttributeError counts as no match.
        """

        def select(envelopes: Sequence[Envelope]) -> list[Payload]:
            return [
                item.payload
                for envelope in envelopes
                for item in envelope.items
                if isinstance(item.payload, dict)
                and (item_type is None or item.type == item_type)
                and matches(predicate, item.payload)
            ]

        return self._received.wait_until(select, 1, timeout, self._describe)[0]

    def _add(self, envelope: Envelope) -> None:
        self._received.add(envelope)

    def _reject(self, reason: str) -> None:
        self._rejected.append(reason)

    def _describe(self, envelopes: Sequence[Envelope]) -> str:
        lines = [
            f"envelope {index}: " + (", ".join(describe_item(i) for i in env.items) or "no items")
            for index, env in enumerate(envelopes)
        ]
        lines += [f"rejected: {reason}" for reason in self._rejected]
        return head(lines)


_PATH = re.compile(r"^/api/(?P<project>[^/]+)/(?P<kind>envelope|store)/?$")


class EnvelopeReceiver(EnvelopeInbox, PeerContext):
    """A local stand-in for Sentry's ingest endpoint: point a DSN at ``.dsn``."""

    def __init__(
        self, project_id: int = 42, public_key: str = "public", faults: Faults | None = None
    ) -> None:
        super().__init__()
        self.project_id = project_id
        self.public_key = public_key
        handle = faults.wrap(self._handle) if faults is not None else self._handle
        self._http = LoopbackHTTPServer("sentry-envelopes", handle)

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def dsn(self) -> str:
        return f"http://{self.public_key}@127.0.0.1:{self.port}/{self.project_id}"

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        route = _PATH.match(path)
        if route is None:
            return 404, "text/plain", b"not a Sentry ingest path"
        try:
            raw = decode_body(body, headers.get("content-encoding"))
            if route["kind"] == "envelope":
                envelope = parse_envelope(raw, project_id=route["project"])
            else:
                event = _json_object(raw, "store payload")
                envelope = Envelope(
                    headers={"event_id": event.get("event_id")},
                    items=[Item(headers={"type": "event"}, payload=event)],
                    project_id=route["project"],
                )
        except ValueError as exc:
            self._reject(f"{path}: {exc}")
            raise
        self._add(envelope)
        reply = {"id": _event_id(envelope)}
        return 200, "application/json", json.dumps(reply).encode()


def _event_id(envelope: Envelope) -> str:
    for source in (envelope.headers, *(item.json or {} for item in envelope.items)):
        if source.get("event_id"):
            return str(source["event_id"])
    return uuid.uuid4().hex
