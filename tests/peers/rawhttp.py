"""An HTTP/1.1 server that answers each request with bytes a test writes itself.

For the client side of `otel.http1`: keep-alive, chunked answers, `Connection: close`,
bodies that run to the end of the stream, servers that drop an idle connection, a
forward proxy's absolute-form request target, TLS. It records every request with the
number of the connection it came on, and whether the client had already written its
next request when this one was answered (`ahead`: it pipelines).
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.peers.base import LOOPBACK, PeerContext, decode_body

__all__ = ["Answer", "RawHTTPServer", "Request", "answer"]


@dataclass
class Request:
    connection: int
    line: str
    headers: dict[str, str]
    body: bytes
    ahead: bool = False  # the next request was waiting when this one was answered

    @property
    def target(self) -> str:
        return self.line.split(" ")[1]

    @property
    def decoded(self) -> bytes:
        return decode_body(self.body, self.headers.get("content-encoding"))


@dataclass
class Answer:
    raw: bytes
    close_after: bool = False  # close the connection after writing, saying nothing


def answer(
    status: int = 200,
    body: bytes = b'{"id":"0"}',
    headers: dict[str, str] | None = None,
    *,
    chunked: bool = False,
    length: bool = True,
    version: str = "HTTP/1.1",
    close_after: bool = False,
) -> Answer:
    lines = [f"{version} {status} Answer"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        half = len(body) // 2
        payload = b"".join(
            b"%x;x=1\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]) if part
        )
        payload += b"0\r\nX-Trailer: yes\r\n\r\n"
    else:
        if length:
            lines.append(f"Content-Length: {len(body)}")
        payload = body
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload
    return Answer(raw, close_after=close_after or not length)


@dataclass
class RawHTTPServer(PeerContext):
    """Answers each request with `script(request)`; 200 with a small JSON by default."""

    script: Callable[[Request], Answer] = field(default=lambda request: answer())
    tls: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)

    @property
    def port(self) -> int:
        assert self._listener is not None
        port: int = self._listener.getsockname()[1]
        return port

    def start(self) -> None:
        listener = socket.create_server((LOOPBACK, 0))
        self._listener = listener
        self._acceptor = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._acceptor.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        # A close alone would not wake the blocked accept(), and a later server could
        # get the same descriptor number: this one's thread would take its connections.
        listener.shutdown(socket.SHUT_RDWR)
        self._acceptor.join(5)
        listener.close()

    def wait_for(
        self, count: int, where: Callable[[Request], bool] = bool, timeout: float = 10.0
    ) -> list[Request]:
        """The requests `where` selects, once `count` of them have arrived (fails after
        `timeout`)."""

        def chosen() -> list[Request]:
            return [request for request in self.requests if where(request)]

        with self._arrived:
            if not self._arrived.wait_for(lambda: len(chosen()) >= count, timeout):
                raise AssertionError(f"{len(chosen())} of {count} requests arrived")
            return chosen()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                number = self.connections
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            reader = sock.makefile("rb")
            while True:
                line = reader.readline()
                if not line:
                    return
                headers: dict[str, str] = {}
                while (header := reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                request = Request(number, line.decode("latin-1").strip(), headers, body)
                reply = self.script(request)
                request.ahead = _waiting(sock, reader)
                with self._arrived:
                    self.requests.append(request)
                    self._arrived.notify_all()
                sock.sendall(reply.raw)
                if reply.close_after:
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()


def _waiting(sock: socket.socket, reader: Any) -> bool:
    """Whether bytes of a next request are already here, read or not (never waits)."""
    timeout = sock.gettimeout()
    sock.settimeout(0)
    try:
        return bool(reader.peek(1))
    except (OSError, ValueError):
        return False
    finally:
        sock.settimeout(timeout)
