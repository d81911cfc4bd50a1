"""Shared plumbing for the test peers.

Owns what every peer needs and nothing peer-specific: the free-port helper, the
error raised when a peer cannot run on this machine, a thread-safe collector that
tests wait on with a condition variable, and a loopback-only threaded HTTP server.
"""

from __future__ import annotations

import gzip
import socket
import threading
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, TypeVar

try:
    import brotli  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # brotli is optional: sentry-sdk only sends "br" when it is importable
    brotli = None

_DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error) + (
    (brotli.error,) if brotli is not None else ()
)

LOOPBACK = "127.0.0.1"

T = TypeVar("T")
R = TypeVar("R")


class PeerUnavailableError(RuntimeError):
    """A peer cannot run here (binary or toolchain missing); tests must fail, not skip."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is released before returning, so a peer that binds it later can lose a
    race; peers that take a port number retry with a fresh one when binding fails.
    """
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def matches(predicate: Callable[[T], bool], value: T) -> bool:
    """Apply a test predicate, treating a lookup/type error on an unrelated value as no match."""
    try:
        return bool(predicate(value))
    except (LookupError, TypeError, AttributeError):
        return False


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """Undo a request's Content-Encoding (gzip, deflate, and br when brotli is importable)."""
    encoding = (content_encoding or "identity").strip().lower()
    try:
        if encoding in ("", "identity"):
            return body
        if encoding in ("gzip", "x-gzip"):
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        if encoding == "br" and brotli is not None:
            data: bytes = brotli.decompress(body)
            return data
    except _DECODE_ERRORS as exc:
        raise ValueError(f"cannot decode {encoding} body: {exc}") from exc
    raise ValueError(f"unsupported Content-Encoding: {content_encoding}")


class Collector(Generic[T]):
    """Thread-safe list of received things that tests can wait on."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._cond = threading.Condition()

    def add(self, *items: T) -> None:
        with self._cond:
            self._items.extend(items)
            self._cond.notify_all()

    def snapshot(self) -> list[T]:
        with self._cond:
            return list(self._items)

    def clear(self) -> None:
        with self._cond:
            self._items.clear()

    def wait_until(
        self,
        select: Callable[[Sequence[T]], list[R]],
        count: int,
        timeout: float,
        describe: Callable[[Sequence[T]], str],
    ) -> list[R]:
        """Block until ``select(received)`` yields at least ``count`` results; return them.

        On timeout raise AssertionError carrying ``describe(received)`` so the failure
        says what did arrive.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                selected = select(self._items)
                if len(selected) >= count:
                    return selected
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"timed out after {timeout:g}s waiting for {count} match(es), "
                        f"got {len(selected)}; received:\n{describe(self._items)}"
                    )
                self._cond.wait(remaining)


Handler = Callable[[str, dict[str, str], bytes], tuple[int, str, bytes]]
"""(path, lower-cased headers, raw body) -> (status, content type, response body)."""


class Faults:
    """What a peer does with the requests it gets: answer, fail with a status, or hang.

    Wraps a peer's handler (``EnvelopeReceiver(faults=...)``, ``OTLPReceiver(faults=...)``)
    so a test can take a real receiver down and bring it back while the client keeps
    running: ``fail(503)``, ``fail(429, {"Retry-After": "1"})``, ``hang()``, ``heal()``.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.status = 503
        self.headers: dict[str, str] = {}
        self.requests = 0
        self._released = threading.Event()
        self._released.set()

    def fail(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status, self.headers, self.mode = status, dict(headers or {}), "fail"

    def hang(self) -> None:
        self._released.clear()
        self.mode = "hang"

    def heal(self) -> None:
        """Answer normally again; requests left hanging are answered now."""
        self.mode = "ok"
        self._released.set()

    def wrap(self, handle: Handler) -> Callable[..., tuple[Any, ...]]:
        def handler(path: str, headers: dict[str, str], body: bytes) -> tuple[Any, ...]:
            self.requests += 1
            if self.mode == "hang":
                self._released.wait(120)
            if self.mode == "fail":
                return self.status, "text/plain", b"fault injected", self.headers
            return handle(path, headers, body)

        return handler


class LoopbackHTTPServer:
    """A threaded ``http.server`` on 127.0.0.1 and an OS-chosen port that answers POSTs."""

    def __init__(
        self, name: str, handle_post: Callable[..., tuple[Any, ...]], keep_alive: bool = False
    ) -> None:
        self._name = name
        self._handle_post = handle_post
        # HTTP/1.1 keep-alive, as Sentry and collectors answer (the benchmarks' receivers);
        # the tests' peers answer HTTP/1.0, a connection per request.
        self._keep_alive = keep_alive
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self._name} is not started")
        port: int = self._server.server_address[1]
        return port

    def start(self) -> None:
        if self._server is not None:
            return
        handler = _make_handler(self._name, self._handle_post, self._keep_alive)
        server = ThreadingHTTPServer((LOOPBACK, 0), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{self._name}-http",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)


def _make_handler(
    name: str, handle_post: Callable[..., tuple[Any, ...]], keep_alive: bool = False
) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        server_version = f"tracegate-{name}"
        if keep_alive:
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: with Nagle on, the body would wait
            # for the client's delayed ACK (40 ms) on every kept-alive request.
            disable_nagle_algorithm = True

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {key.lower(): value for key, value in self.headers.items()}
            path = self.path.split("?", 1)[0]
            extra: dict[str, str] = {}
            try:
                status, content_type, payload, *rest = handle_post(path, headers, body)
                extra = rest[0] if rest else {}
            except ValueError as exc:  # undecodable body: tell the client, keep serving
                status, content_type, payload = 400, "text/plain", str(exc).encode()
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """Stay quiet: pytest shows what the tests assert, not access logs."""

    return _Handler


_PeerT = TypeVar("_PeerT", bound="PeerContext")


class PeerContext(ABC):
    """Base for peers with start()/stop(); makes them context managers."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    def __enter__(self: _PeerT) -> _PeerT:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def head(lines: Iterator[str] | Sequence[str], limit: int = 30) -> str:
    """Join at most ``limit`` summary lines, noting how many were left out."""
    items = list(lines)
    shown = items[:limit]
    if len(items) > limit:
        shown.append(f"... and {len(items) - limit} more")
    return "\n".join(f"  {line}" for line in shown) if shown else "  (nothing)"
