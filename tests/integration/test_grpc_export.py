"""OTLP over gRPC: with `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, the real gRPC exporter sends
the gateway's spans to a real gRPC TraceService on loopback, in the caller's trace."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.harness import gateways
from tests.peers.spans import SpanInbox, spans_from_request

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class GrpcReceiver(SpanInbox, trace_service_pb2_grpc.TraceServiceServicer):
    """A TraceService on 127.0.0.1 that keeps what it is sent, and the metadata."""

    def __init__(self) -> None:
        super().__init__()
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(  # the gRPC method's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.metadata.append(dict(context.invocation_metadata()))
        self._received.add(*spans_from_request(request))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    receiver.server.start()
    yield receiver
    receiver.server.stop(grace=None)


def test_spans_reach_a_grpc_collector_in_the_callers_trace(grpc_receiver: GrpcReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{grpc_receiver.port}",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme",
    }
    with gateways(env) as make:
        gateway = make()
        response = gateway.client.get(
            "/example", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
        )
        assert response.status_code == 200
        gateway.flush()
    server = grpc_receiver.wait_for_span(lambda s: s.kind_name == "SERVER")
    assert (server.trace_id_hex, server.parent_span_id_hex) == (TRACE, PARENT)
    assert server.name == "GET /example"
    assert server.resource["service.name"] == "tracegate-test"
    assert any(m.get("x-tenant") == "acme" for m in grpc_receiver.metadata)
