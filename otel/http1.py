"""A small keep-alive HTTP/1.1 client for POSTing telemetry to one origin.

sentry-sdk posts every envelope through urllib3, about 210 µs of CPU per POST on this
machine; `http.client` costs about 85 µs, most of it in its email-parser header
parsing. Telemetry POSTs are simple: one origin, one request at a time, a small answer.
`Origin.post` writes the request in one send and reads the status line, the headers
and a Content-Length or chunked body itself: about 25 µs.

- One connection, reused while the server keeps it alive (HTTP/1.1 default, or
  `Connection: keep-alive` from an HTTP/1.0 server); closed on `Connection: close`,
  a body that runs to end of stream, or any error.
- A reused connection that the server closed while it was idle fails on the next
  request before any answer arrives: that request is sent once more on a fresh
  connection. Nothing else is retried here (the caller decides).
- https with the `ssl.SSLContext` that `make_tls` makes on the first connection
  (certificate and host name checked).
- Bounded: a status line or header over 64 KiB, more than 100 headers or an answer
  body over `max_body` bytes is an error, not memory.
- Fork-safe: a forked child starts with a fresh lock and no connection (it opens its
  own; the parent's stays the parent's), even when the fork came mid-answer.
- `post_many` pipelines (RFC 9112 §9.3.2): the requests go out in one write and the
  answers are read in order, so a batch costs the sender one wake-up and one write
  instead of a round trip each. Only on a connection whose server has already
  answered in HTTP/1.1 and kept it alive; the first request of a fresh connection
  goes alone. Requests the server did not answer (it closed after an earlier answer,
  or the connection broke) are sent again on a fresh connection, once: callers post
  only what is safe to repeat (Sentry drops a second envelope with the same event id).
  A server (or a proxy in front of it) that drops a pipelined connection without
  saying `Connection: close`, or answers one unreadably, gets one request at a time
  for the next five minutes: some close on pipelined requests and expect them again.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from otel.forks import at_fork

__all__ = ["Answer", "Origin", "ProtocolError"]

logger = logging.getLogger(__name__)

_LINE = 65536
_MAX_HEADERS = 100
_NO_PIPELINING_S = 300.0  # after a pipelined connection broke
# A forked child's copies of its parent's connections (see `Origin._renew`).
_INHERITED: list[tuple[Any, Any]] = []


class ProtocolError(OSError):
    """The server's answer is not HTTP/1.x as this client reads it."""


class _Headers(dict[str, str]):
    """Answer headers by lower-case name; `get` takes any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


class Answer:
    """A read answer: `status`, `headers` (case-insensitive `get`) and `data`."""

    __slots__ = ("data", "headers", "status")

    def __init__(self, status: int, headers: _Headers, data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data

    def close(self) -> None:
        """Nothing to release: the body is read. (urllib3's answers have it.)"""


class _Stale(Exception):
    """A reused connection ended before any byte of the answer."""


class Origin:
    """POSTs to `scheme://host:port`, one request at a time (callers are serialised)."""

    def __init__(
        self,
        scheme: str,
        host: str,
        port: int,
        *,
        timeout_s: float = 30.0,
        make_tls: Callable[[], ssl.SSLContext] = ssl.create_default_context,
        socket_options: Iterable[tuple[int, int, Any]] = (),
        max_body: int = 1 << 20,
    ) -> None:
        if scheme not in ("http", "https"):
            raise ValueError(f"not an http(s) origin: {scheme!r}")
        self.host, self.port = host, port
        # Made on the first connection: loading a CA bundle costs milliseconds, and a
        # forked work horse that makes a transport may never send anything.
        self._https = scheme == "https"
        self._make_tls = make_tls
        self._tls: ssl.SSLContext | None = None
        self._timeout_s = timeout_s
        self._socket_options = tuple(socket_options)
        self._max_body = max_body
        default_port = 443 if scheme == "https" else 80
        name = f"[{host}]" if ":" in host else host
        self._host_header = name if port == default_port else f"{name}:{port}"
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._file: Any = None
        # The live connection's server answered in HTTP/1.1 and kept it open.
        self._pipelining = False
        self._pipeline_after = 0.0  # monotonic time before which nothing is pipelined
        self._closed = False  # `close` was called: no new connection
        at_fork(self, after_in_child="_renew")

    def _renew(self) -> None:
        """In a forked child: the parent's lock may have been held at the fork, and so
        may the connection's buffered reader's (a thread of the parent reading an
        answer). The child's copy of the connection is set aside, never closed or
        collected: closing it would wait for that lock forever."""
        self._lock = threading.Lock()
        if self._sock is not None:
            _INHERITED.append((self._sock, self._file))
        self._sock = self._file = None
        self._pipelining = False

    def post(self, target: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST `body` to `target` (a path and query); the answer, read whole.

        Raises OSError (or ssl.SSLError, ProtocolError) when no answer arrives."""
        request = self._request(target, body, headers)
        with self._lock:
            return self._post_one(request)

    def post_many(
        self, requests: Iterable[tuple[str, bytes, Mapping[str, str]]]
    ) -> list[Answer | Exception]:
        """POST each `(target, body, headers)`, pipelined where the connection allows;
        each one's answer, or the error that kept it from one, in the same order.

        Every request is written at most twice (see the module docstring)."""
        wire: list[bytes] = []
        results: list[Answer | Exception | None] = []
        for target, body, headers in requests:
            try:
                wire.append(self._request(target, body, headers))
                results.append(None)
            except ValueError as error:  # a header with a line break: never sent
                wire.append(b"")
                results.append(error)
        sent = [0] * len(wire)
        pending = [index for index, result in enumerate(results) if result is None]
        with self._lock:
            while pending:
                if (
                    not self._pipelining
                    or len(pending) == 1
                    or time.monotonic() < self._pipeline_after
                ):
                    index = pending.pop(0)
                    sent[index] += 1
                    try:
                        results[index] = self._post_one(wire[index])
                    except Exception as error:
                        results[index] = error
                    continue
                batch, pending = pending, []
                for index in batch:
                    sent[index] += 1
                unanswered = self._pipeline([wire[i] for i in batch], batch, results)
                for index in unanswered:
                    if sent[index] < 2:
                        pending.append(index)
                    else:
                        results[index] = ConnectionError("the connection ended before an answer")
        return [r if r is not None else ConnectionError("no answer") for r in results]

    def _stop_pipelining(self, what: str) -> None:
        if time.monotonic() >= self._pipeline_after:
            logger.warning(
                "tracegate: %s:%s %s during pipelined requests; sending one at a time for %.0f s",
                self.host,
                self.port,
                what,
                _NO_PIPELINING_S,
            )
        self._pipeline_after = time.monotonic() + _NO_PIPELINING_S

    def _request(self, target: str, body: bytes, headers: Mapping[str, str]) -> bytes:
        lines = [f"POST {target} HTTP/1.1", f"Host: {self._host_header}"]
        for name, value in headers.items():
            if "\n" in name or "\r" in name or "\n" in value or "\r" in value:
                raise ValueError(f"a header with a line break: {name!r}")
            lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}\r\n\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _post_one(self, request: bytes) -> Answer:
        reused = self._sock is not None
        try:
            try:
                return self._exchange(request, reused)
            except _Stale:
                return self._exchange(request, reused=False)
        except BaseException:
            self._drop()
            raise

    def _pipeline(
        self, wire: list[bytes], indexes: list[int], results: list[Answer | Exception | None]
    ) -> list[int]:
        """Write `wire` at once on the live connection and read the answers in order
        into `results`; the indexes of the requests left without an answer."""
        assert self._sock is not None
        try:
            self._sock.sendall(b"".join(wire))
        except OSError:
            self._drop()  # whatever the server took is answered on a connection now gone
            return indexes
        for position, index in enumerate(indexes):
            try:
                line = self._file.readline(_LINE + 1)
                if not line:
                    raise _Stale()
                answer, keep = self._read_answer(line)
            except (_Stale, ConnectionError, ssl.SSLEOFError):
                self._drop()  # closed before this answer: it and the rest go again
                self._stop_pipelining("closed the connection")
                return indexes[position:]
            except Exception as error:
                results[index] = error  # this answer is unreadable; the rest go again
                self._drop()
                self._stop_pipelining(f"answered in a way not read ({error})")
                return indexes[position + 1 :]
            results[index] = answer
            if not keep:
                self._drop()
                return indexes[position + 1 :]
        return []

    def close(self) -> None:
        """Close the connection for good; a request waiting on it fails at once (the
        shutdown wakes its read) instead of holding the caller for the timeout, and so
        does every later one."""
        self._closed = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            self._drop()

    def _exchange(self, request: bytes, reused: bool) -> Answer:
        if not reused:
            self._connect()
        assert self._sock is not None
        try:
            self._sock.sendall(request)
            line = self._file.readline(_LINE + 1)
        except (ConnectionError, ssl.SSLEOFError) as error:
            if reused:
                raise _Stale() from error
            raise
        if not line and reused:
            raise _Stale()
        answer, keep = self._read_answer(line)
        if not keep:
            self._drop()
        else:
            self._pipelining = line.startswith(b"HTTP/1.1")
        return answer

    def _connect(self) -> None:
        self._drop()
        if self._closed:
            raise ConnectionError("the client was closed")
        sock = socket.create_connection((self.host, self.port), timeout=self._timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for level, option, value in self._socket_options:
                sock.setsockopt(level, option, value)
            if self._https:
                if self._tls is None:
                    self._tls = self._make_tls()
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._sock, self._file = sock, sock.makefile("rb")

    def _drop(self) -> None:
        self._pipelining = False
        sock, file, self._sock, self._file = self._sock, self._file, None, None
        if sock is not None:
            file.close()
            sock.close()

    def _read_answer(self, line: bytes) -> tuple[Answer, bool]:
        while True:
            version, status = _status_line(line)
            headers = self._read_headers()
            if status >= 200 or status == 101:
                break
            line = self._file.readline(_LINE + 1)  # 100 Continue and other 1xx: skip
        if status == 101:
            raise ProtocolError("the server switched protocols")
        connection = headers.get("connection", "").lower()
        keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        if status in (204, 304):
            data = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            data = self._read_chunked()
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError("a malformed Content-Length") from None
            if length < 0 or length > self._max_body:
                raise ProtocolError(f"an answer body of {length} bytes")
            data = self._read_exactly(length)
        else:  # the body runs to the end of the stream
            data = self._file.read(self._max_body + 1)
            if len(data) > self._max_body:
                raise ProtocolError("an answer body over the limit")
            keep = False
        return Answer(status, headers, data), keep

    def _read_headers(self) -> _Headers:
        headers = _Headers()
        for _ in range(_MAX_HEADERS + 1):
            line = self._file.readline(_LINE + 1)
            if len(line) > _LINE:
                raise ProtocolError("a header line over 64 KiB")
            if line in (b"\r\n", b"\n"):
                return headers
            if not line:
                raise ProtocolError("the answer ended inside its headers")
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon:
                raise ProtocolError(f"a malformed header line: {line[:80]!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raise ProtocolError(f"more than {_MAX_HEADERS} headers")

    def _read_exactly(self, length: int) -> bytes:
        data = self._file.read(length)
        if len(data) != length:
            raise ProtocolError("the answer ended inside its body")
        return bytes(data)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self._file.readline(_LINE + 1)
            if not line.endswith(b"\n"):
                raise ProtocolError("a malformed chunk size line")
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError("a malformed chunk size") from None
            if size == 0:
                self._read_headers()  # trailers
                return b"".join(parts)
            total += size
            if size < 0 or total > self._max_body:
                raise ProtocolError("an answer body over the limit")
            parts.append(self._read_exactly(size))
            if self._file.readline(3) not in (b"\r\n", b"\n"):
                raise ProtocolError("a chunk without its line end")


def _status_line(line: bytes) -> tuple[str, int]:
    if not line:
        raise ConnectionError("the server closed the connection without an answer")
    if len(line) > _LINE:
        raise ProtocolError("a status line over 64 KiB")
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or parts[0] not in ("HTTP/1.1", "HTTP/1.0"):
        raise ProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    try:
        status = int(parts[1])
    except ValueError:
        raise ProtocolError(f"a malformed status: {line[:80]!r}") from None
    if not 100 <= status <= 999:
        raise ProtocolError(f"a malformed status: {line[:80]!r}")
    return parts[0], status
