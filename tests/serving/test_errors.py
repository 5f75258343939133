"""The one error hierarchy (`serving.errors`) and its gRPC and HTTP codes."""

from serving import errors


def test_errors_map_to_grpc_and_http_in_one_place():
    import grpc
    assert errors.http_status(errors.NotFound("x").code) == 404
    assert errors.http_status(errors.FailedPrecondition("x").code) == 400
    assert errors.http_status(errors.ResourceExhausted("x").code) == 429
    assert errors.grpc_status(errors.InvalidArgument("x").code) == grpc.StatusCode.INVALID_ARGUMENT
    long = errors.Internal("x" * 2000)
    assert errors.wire_message(long) == "x" * 1024 + "...TRUNCATED"
    assert isinstance(errors.to_serving_error(ValueError("boom")), errors.Internal)
    assert isinstance(errors.to_serving_error(MemoryError()), errors.ResourceExhausted)
