"""The local trace store: finished spans and Sentry event summaries, kept in Redis.

Every process (gateway workers, RQ workers) writes through `StoreExporter`, an
OpenTelemetry exporter behind a batch processor, and through `record_event` for the
Sentry events it sends, so a trace's spans from all processes meet in one place.
Bounded by count (`TRACEGATE_STORE_MAX_TRACES`, spans per trace) and age
(`TRACEGATE_STORE_MAX_AGE_S`): keys expire and the index is trimmed on every write.

Keys (prefix `tracegate:store`): `index` (sorted set: trace id → last write, ms),
`t:<trace>:spans` and `t:<trace>:events` (lists of JSON records), `t:<trace>:summary`
(hash: counts, start/end, root span), all updated atomically by one Lua script.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from gateway.redisconn import reconnect
from otel import ids

__all__ = ["StoreExporter", "StoreLimits", "TraceStore", "span_record"]

logger = logging.getLogger(__name__)

_PREFIX = "tracegate:store"
_FIELDS_PER_SPAN = 7

# KEYS: spans, summary, index. ARGV: trace id, now ms, ttl s, max spans, then per span
# (record, start ms, end ms, error 0/1, root 0/1, name, service).
_ADD_SPANS = """
local n = redis.call('LLEN', KEYS[1])
for i = 5, #ARGV, 7 do
  if n < tonumber(ARGV[4]) then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    n = n + 1
    local s, e = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    local cs = tonumber(redis.call('HGET', KEYS[2], 'start_ms'))
    if not cs or s < cs then redis.call('HSET', KEYS[2], 'start_ms', ARGV[i + 1]) end
    local ce = tonumber(redis.call('HGET', KEYS[2], 'end_ms'))
    if not ce or e > ce then redis.call('HSET', KEYS[2], 'end_ms', ARGV[i + 2]) end
    redis.call('HINCRBY', KEYS[2], 'span_count', 1)
    if ARGV[i + 3] == '1' then redis.call('HINCRBY', KEYS[2], 'error_count', 1) end
    if ARGV[i + 4] == '1' then
      local rs = tonumber(redis.call('HGET', KEYS[2], 'root_start_ms'))
      if not rs or s < rs then
        redis.call('HSET', KEYS[2], 'root_start_ms', ARGV[i + 1],
                   'root_name', ARGV[i + 5], 'service', ARGV[i + 6])
      end
    end
  else
    redis.call('HINCRBY', KEYS[2], 'dropped_spans', 1)
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return n
"""

# KEYS: events, summary, index. ARGV: trace id, now ms, ttl s, max events, event JSON.
_ADD_EVENT = """
redis.call('RPUSH', KEYS[1], ARGV[5])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[4]), -1)
redis.call('HSET', KEYS[2], 'event_count', redis.call('LLEN', KEYS[1]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
"""

# KEYS: index. ARGV: key prefix, oldest score kept, max traces. Atomic, so a trace that
# another process writes at the same moment is never deleted as stale. (The per-trace
# keys are derived here, so the store wants a standalone Redis, not a cluster.)
_TRIM = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local excess = redis.call('ZCARD', KEYS[1]) - #stale - tonumber(ARGV[3])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[1], #stale, #stale + excess - 1)) do
    table.insert(stale, id)
  end
end
for _, id in ipairs(stale) do
  redis.call('ZREM', KEYS[1], id)
  local base = ARGV[1] .. ':t:' .. id .. ':'
  redis.call('DEL', base .. 'spans', base .. 'events', base .. 'summary')
end
return #stale
"""

_KINDS = {0: "INTERNAL", 1: "SERVER", 2: "CLIENT", 3: "PRODUCER", 4: "CONSUMER"}


@dataclass(frozen=True)
class StoreLimits:
    max_traces: int = 1000
    max_age_s: int = 24 * 3600
    max_spans_per_trace: int = 5000
    max_events_per_trace: int = 500


def _ms(ns: int | None) -> float:
    return round((ns or 0) / 1e6, 3)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value)


def _attributes(attributes: Mapping[str, Any] | None) -> dict[str, Any]:
    return {str(k): _jsonable(v) for k, v in (attributes or {}).items()}


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as the store keeps it (and `GET /v1/traces/<id>` returns it)."""
    context = span.get_span_context()
    assert context is not None
    parent = span.parent
    event_id = (span.attributes or {}).get("sentry.event_id")
    return {
        "trace_id": ids.trace_id_hex(context.trace_id),
        "span_id": ids.span_id_hex(context.span_id),
        "parent_span_id": ids.span_id_hex(parent.span_id) if parent else "",
        "parent_is_remote": bool(parent and parent.is_remote),
        "name": span.name,
        "kind": _KINDS.get(span.kind.value, "INTERNAL"),
        "service": str(span.resource.attributes.get("service.name", "")),
        "start_ms": _ms(span.start_time),
        "end_ms": _ms(span.end_time),
        "duration_ms": round(_ms(span.end_time) - _ms(span.start_time), 3),
        "status": span.status.status_code.name,
        "status_message": span.status.description or "",
        "attributes": _attributes(span.attributes),
        "events": [
            {"name": e.name, "time_ms": _ms(e.timestamp), "attributes": _attributes(e.attributes)}
            for e in span.events
        ],
        "links": [
            {
                "trace_id": ids.trace_id_hex(link.context.trace_id),
                "span_id": ids.span_id_hex(link.context.span_id),
            }
            for link in span.links
        ],
        "sentry_event_ids": [str(event_id)] if event_id else [],
    }


class TraceStore:
    """Reads and writes the local trace store in Redis."""

    # After a failed write, writes are skipped for this long: a Sentry event captured in
    # a request or job must not wait on a Redis that is down, again and again.
    PAUSE_AFTER_FAILURE_S = 5.0

    def __init__(self, connection: redis.Redis, limits: StoreLimits | None = None) -> None:
        self.limits = limits or StoreLimits()
        self._connection = connection
        self._pid = os.getpid()
        self._paused_until = 0.0
        self.skipped = 0

    @property
    def redis(self) -> redis.Redis:
        """This process's client. A forked child gets a new pool instead of resetting the
        inherited one: a span-export thread of the parent may have held that pool's lock
        at the fork, and redis-py's reset would then wait for it forever."""
        if self._pid != os.getpid():
            self._connection = reconnect(self._connection)
            self._pid = os.getpid()
        return self._connection

    @staticmethod
    def _key(trace_id: str, part: str) -> str:
        return f"{_PREFIX}:t:{trace_id}:{part}"

    # -- writing ------------------------------------------------------------------

    def add_spans(self, records: Sequence[Mapping[str, Any]]) -> None:
        by_trace: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for record in records:
            by_trace[str(record["trace_id"])].append(record)
        now = str(int(time.time() * 1000))
        with self.redis.pipeline(transaction=False) as pipe:
            for trace_id, spans in by_trace.items():
                args: list[Any] = [
                    trace_id,
                    now,
                    self.limits.max_age_s,
                    self.limits.max_spans_per_trace,
                ]
                for record in spans:
                    is_root = not record.get("parent_span_id") or record.get("parent_is_remote")
                    args += [
                        json.dumps(record, separators=(",", ":")),
                        record["start_ms"],
                        record["end_ms"],
                        "1" if record.get("status") == "ERROR" else "0",
                        "1" if is_root else "0",
                        record.get("name", ""),
                        record.get("service", ""),
                    ]
                keys = [
                    self._key(trace_id, "spans"),
                    self._key(trace_id, "summary"),
                    f"{_PREFIX}:index",
                ]
                pipe.eval(_ADD_SPANS, len(keys), *keys, *args)
            pipe.execute()
        self._trim()

    def add_event(self, summary: Mapping[str, Any]) -> None:
        if time.monotonic() < self._paused_until:
            self.skipped += 1
            return
        try:
            self._add_event(summary)
        except (redis.RedisError, OSError):
            self._paused_until = time.monotonic() + self.PAUSE_AFTER_FAILURE_S
            raise

    def _add_event(self, summary: Mapping[str, Any]) -> None:
        trace_id = str(summary["trace_id"])
        keys = [self._key(trace_id, "events"), self._key(trace_id, "summary"), f"{_PREFIX}:index"]
        args: list[str | int] = [
            trace_id,
            int(time.time() * 1000),
            self.limits.max_age_s,
            self.limits.max_events_per_trace,
            json.dumps(summary, separators=(",", ":")),
        ]
        self.redis.eval(_ADD_EVENT, len(keys), *keys, *args)
        self._trim()

    def _trim(self) -> None:
        oldest_kept = int((time.time() - self.limits.max_age_s) * 1000)
        self.redis.eval(_TRIM, 1, f"{_PREFIX}:index", _PREFIX, oldest_kept, self.limits.max_traces)

    # -- reading ------------------------------------------------------------------

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        scored: list[tuple[bytes, float]] = self.redis.zrevrange(  # type: ignore[assignment]
            f"{_PREFIX}:index", 0, max(0, limit - 1), withscores=True
        )
        ids_ = [raw.decode() for raw, _ in scored]
        updated = [float(score) for _, score in scored]
        with self.redis.pipeline(transaction=False) as pipe:
            for trace_id in ids_:
                pipe.hgetall(self._key(trace_id, "summary"))
            summaries = pipe.execute()
        traces = []
        for trace_id, raw, updated_ms in zip(ids_, summaries, updated, strict=True):
            fields = {k.decode(): v.decode() for k, v in raw.items()}
            if not fields:
                continue
            start = float(fields.get("start_ms", 0) or 0)
            end = float(fields.get("end_ms", start) or start)
            traces.append(
                {
                    "trace_id": trace_id,
                    "trace_id_uuid": ids.hex_to_uuid(trace_id),
                    "root_name": fields.get("root_name", ""),
                    "service": fields.get("service", ""),
                    "start_ms": start,
                    "duration_ms": round(end - start, 3),
                    "span_count": int(fields.get("span_count", 0)),
                    "error_count": int(fields.get("error_count", 0)),
                    "event_count": int(fields.get("event_count", 0)),
                    "updated_ms": updated_ms,
                }
            )
        return traces

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.lrange(self._key(trace_id, "spans"), 0, -1)
            pipe.lrange(self._key(trace_id, "events"), 0, -1)
            raw_spans, raw_events = pipe.execute()
        if not raw_spans and not raw_events:
            return None
        spans = [json.loads(raw) for raw in raw_spans]
        events = [json.loads(raw) for raw in raw_events]
        by_span: dict[str, list[str]] = defaultdict(list)
        for event in events:
            by_span[event.get("span_id", "")].append(event["event_id"])
        for span in spans:
            known = set(span.get("sentry_event_ids", []))
            span["sentry_event_ids"] = sorted(known | set(by_span.get(span["span_id"], [])))
        spans.sort(key=lambda s: s["start_ms"])
        return {
            "trace_id": trace_id,
            "trace_id_uuid": ids.hex_to_uuid(trace_id),
            "spans": spans,
            "sentry_events": events,
        }


class StoreExporter(SpanExporter):
    """Exports finished spans into the local trace store (behind a batch processor)."""

    def __init__(self, store: TraceStore) -> None:
        self.store = store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self.store.add_spans([span_record(span) for span in spans])
        except (redis.RedisError, OSError):
            logger.warning(
                "tracegate: the local trace store is unreachable; %d spans lost", len(spans)
            )
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def event_summary(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the store keeps of a Sentry error or message event; None for other items."""
    if event.get("type") not in (None, "error", "default"):
        return None
    trace_context = (event.get("contexts") or {}).get("trace") or {}
    trace_id = trace_context.get("trace_id")
    if not trace_id:
        return None
    title = ""
    values = (event.get("exception") or {}).get("values") or []
    if values:
        last = values[-1]
        title = f"{last.get('type', 'Error')}: {last.get('value', '')}".strip(": ")
    else:
        message = (
            event.get("message")
            or (event.get("logentry") or {}).get("formatted")
            or (event.get("logentry") or {}).get("message")
        )
        title = str(message or "")
    timestamp = event.get("timestamp")
    if isinstance(timestamp, (int, float)):
        timestamp_ms = float(timestamp) * 1000
    else:
        timestamp_ms = time.time() * 1000
    return {
        "event_id": str(event.get("event_id", "")),
        "trace_id": str(trace_id),
        "span_id": str(trace_context.get("span_id", "")),
        "level": str(event.get("level", "error")),
        "title": title[:300],
        "timestamp_ms": round(timestamp_ms, 3),
    }
