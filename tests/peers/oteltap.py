"""A synchronous wrapper around the third-party ``oteltap`` OTLP/HTTP receiver.

Owns ``OtelTap``: runs oteltap's asyncio ``OtelTapHttpProtobufReceiver`` (a native
receiver, loopback only, printing nothing) on an event loop in a background thread,
subscribes to its trace stream before anything can be sent, and collects the received
protobuf ``Span``s as ``peers.spans.ReceivedSpan`` (oteltap hands spans over without
their resource or scope, so ``resource`` is empty and ``scope_name`` is "").
oteltap 1.0 answers 400 to gzip-compressed exports: send to it uncompressed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from oteltap import (
    OtelTapHttpProtobufReceiver,
    OtelTapHttpProtobufReceiverSettings,
    OtelTapInitializationError,
)

from .base import PeerContext, free_port
from .spans import SpanInbox, received_span

_START_ATTEMPTS = 3
_T = TypeVar("_T")


class OtelTap(SpanInbox, PeerContext):
    """oteltap listening on 127.0.0.1; same ``endpoint``/``wait_for_span`` API as OTLPReceiver."""

    def __init__(self) -> None:
        super().__init__()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._receiver: OtelTapHttpProtobufReceiver | None = None
        self._consumer: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """Base URL, the value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_endpoint(self) -> str:
        return self.endpoint + "/v1/traces"

    def start(self) -> None:
        if self._loop is not None:
            return
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="oteltap-loop", daemon=True)
        self._thread.start()
        try:
            self.port = self._run(self._start(), timeout=30)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        try:
            self._run(self._stop(), timeout=30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None:
                thread.join(timeout=10)
            loop.close()
            self._loop = self._thread = None

    def _run(self, coroutine: Coroutine[Any, Any, _T], timeout: float) -> _T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> int:
        last_error: OtelTapInitializationError | None = None
        for _ in range(_START_ATTEMPTS):  # the free port can be taken before oteltap binds it
            port = free_port()
            receiver = OtelTapHttpProtobufReceiver(
                OtelTapHttpProtobufReceiverSettings(http_port=port, listen_on_all_interfaces=False)
            )
            try:
                await receiver.start()
            except OtelTapInitializationError as exc:
                last_error = exc
                continue
            self._receiver = receiver
            self._consumer = asyncio.create_task(self._consume(receiver))
            # Let the consumer run up to its first await: it is then subscribed to the
            # trace stream, so no span sent after start() returns can be missed.
            await asyncio.sleep(0)
            return port
        raise RuntimeError(f"oteltap could not listen on a free port: {last_error}")

    async def _consume(self, receiver: OtelTapHttpProtobufReceiver) -> None:
        async for span in receiver.stream_traces():
            self._add([received_span(span)])

    async def _stop(self) -> None:
        receiver, consumer = self._receiver, self._consumer
        self._receiver = self._consumer = None
        if receiver is not None:
            await receiver.stop()
        if consumer is not None:
            consumer.cancel()
            await asyncio.gather(consumer, return_exceptions=True)
        # oteltap polls its native library from worker threads; wait for them to return.
        await asyncio.get_running_loop().shutdown_default_executor()
