"""The grpc.health.v1 service behind --enable_grpc_healthcheck_service, over a real gRPC channel (in process: it
needs no model; `test_server_flags` asks the server binary)."""

import time
from concurrent import futures

import grpc
import pytest

from serving import health


@pytest.fixture
def served(request):
    """(HealthService, channel) on a loopback port; the parameter is max_watchers."""
    service = health.HealthService(max_watchers=getattr(request, "param", 8))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((service.handler(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield service, channel
    server.stop(0).wait()


def _check(channel, name):
    return channel.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=health.HealthCheckRequest.SerializeToString,
                               response_deserializer=health.HealthCheckResponse.FromString)(
        health.HealthCheckRequest(service=name), timeout=10)


def _watch(channel, name):
    return channel.unary_stream("/grpc.health.v1.Health/Watch",
                                request_serializer=health.HealthCheckRequest.SerializeToString,
                                response_deserializer=health.HealthCheckResponse.FromString)(
        health.HealthCheckRequest(service=name), timeout=30)


def test_the_server_is_serving_and_other_names_are_not_found(served):
    service, channel = served
    assert _check(channel, "").status == health.SERVING
    with pytest.raises(grpc.RpcError) as info:
        _check(channel, "tensorflow.serving.PredictionService")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "service name unknown"
    service.set("tensorflow.serving.PredictionService", health.SERVING)
    assert _check(channel, "tensorflow.serving.PredictionService").status == health.SERVING


def test_watch_streams_changes_and_shutdown_ends_it(served):
    service, channel = served
    whole, unknown = _watch(channel, ""), _watch(channel, "other")
    assert next(whole).status == health.SERVING
    assert next(unknown).status == health.SERVICE_UNKNOWN
    service.set("other", health.SERVING)
    assert next(unknown).status == health.SERVING
    service.shutdown()
    assert next(whole).status == health.NOT_SERVING
    assert next(unknown).status == health.NOT_SERVING
    for stream in (whole, unknown):
        with pytest.raises(StopIteration):  # the stream ends with status OK
            next(stream)
        assert stream.code() == grpc.StatusCode.OK
    assert _check(channel, "").status == health.NOT_SERVING
    service.set("", health.SERVING)  # ignored after shutdown
    assert _check(channel, "").status == health.NOT_SERVING


@pytest.mark.parametrize("served", [1], indirect=True)
def test_watches_past_the_cap_are_refused_and_a_closed_one_frees_its_place(served):
    service, channel = served
    first = _watch(channel, "")
    assert next(first).status == health.SERVING
    second = _watch(channel, "")
    with pytest.raises(grpc.RpcError) as info:
        next(second)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()
    for _ in range(50):  # the cancelled watch leaves within a poll period
        try:
            third = _watch(channel, "")
            assert next(third).status == health.SERVING
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.1)
    else:
        pytest.fail("a cancelled watch kept its place")
    third.cancel()
    service.shutdown()
