"""A fuzzer over gRPC PredictRequests and REST bodies: every answer is a clean error or a valid result.

Hypothesis generates requests with wrong dtypes and shapes, NaN and Inf, huge `num_samples` and declared shapes,
deep JSON, bytes that are not UTF-8, empty batches, extra and missing inputs, and broken HTTP framing (Content-Length
and chunks; raw over a socket, where an answer must still be HTTP), against one server process
serving the tiny Monte Carlo model (`x` [batch, 3], `num_samples`, `seed`) and TF Serving's half_plus_two. Every
gRPC answer must be OK with well-formed outputs or one of the client-error codes (never UNKNOWN, INTERNAL or a
dropped connection); every HTTP answer must be JSON with `predictions`/`outputs` on 200 or `error` otherwise, never
a 5xx. After each run the server is alive, still answers correctly, and its memory grew by a bounded amount.
Examples are derandomized so CI runs the same cases every time; `VIZOO_FUZZ_EXAMPLES` runs more.
"""

import json
import os
import socket

import grpc
import hypothesis
import numpy as np
import pytest
import requests
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.framework import tensor_shape_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from serving.process import rss_kib
from tests.serving.conftest import FEATURES, MC_MODEL, ServerProcess, tensor, to_array, write_config

EXAMPLES = int(os.environ.get("VIZOO_FUZZ_EXAMPLES", "150"))
SETTINGS = hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                               suppress_health_check=list(hypothesis.HealthCheck))
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION,
                 grpc.StatusCode.RESOURCE_EXHAUSTED}
MEMORY_GROWTH_KIB = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, mc_base_path, tf_serving_testdata):
    root = tmp_path_factory.mktemp("fuzz")
    config = write_config(root / "models.config", [
        {"name": MC_MODEL, "base_path": mc_base_path},
        {"name": "half_plus_two", "base_path": tf_serving_testdata / "saved_model_half_plus_two_cpu"}])
    process = ServerProcess([f"--model_config_file={config}", "--max_num_samples=1000", "--max_batch_rows=256",
                             "--max_sample_rows=20000", "--grpc_max_message_bytes=1048576",
                             "--max_tensor_bytes=262144", "--rest_api_timeout_in_ms=10000"], root / "server.log")
    yield process
    process.stop()


def _assert_healthy(server, rss_before: int):
    """Alive, answering the exact result, and not much bigger than before the fuzzing."""
    assert server.proc.poll() is None, server.log()[-3000:]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half_plus_two"
    request.inputs["x"].CopyFrom(tensor([[1.0], [3.0]]))
    np.testing.assert_allclose(to_array(stub.Predict(request, timeout=30).outputs["y"]), [[2.5], [3.5]])
    growth = rss_kib(server.proc.pid) - rss_before
    assert growth < MEMORY_GROWTH_KIB, f"server memory grew by {growth} KiB"


# ---------------------------------------------------------------------------------------------
# gRPC PredictRequests.
# ---------------------------------------------------------------------------------------------

_DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_INT64, types_pb2.DT_STRING,
           types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_UINT8, types_pb2.DT_COMPLEX64, types_pb2.DT_INVALID,
           types_pb2.DT_RESOURCE, 1234]
_SPECIAL_FLOATS = [0.0, -0.0, 1.0, float("nan"), float("inf"), float("-inf"), 3.4e38, -3.4e38, 1e-45]


@st.composite
def tensor_protos(draw, valid=False):
    """Well-formed tensors of the right shape, and every way of getting a tensor wrong."""
    kind = "good" if valid else draw(st.sampled_from(["good", "values", "content", "huge_shape", "negative_dim",
                                                       "garbage"]))
    if kind == "good":
        rows = draw(st.integers(0, 5))
        values = draw(st.lists(st.sampled_from(_SPECIAL_FLOATS) | st.floats(-1e3, 1e3, width=32),
                               min_size=rows * FEATURES, max_size=rows * FEATURES))
        return tensor(np.asarray(values, np.float32).reshape(rows, FEATURES))
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(_DTYPES)))
    dims = draw(st.lists(st.integers(0, 6), max_size=4))
    if kind == "huge_shape":
        dims = dims + [draw(st.sampled_from([2 ** 31, 2 ** 40, 2 ** 62]))]
    if kind == "negative_dim":
        dims = dims + [draw(st.integers(-5, -1))]
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    if kind == "values":
        proto.float_val.extend(draw(st.lists(st.sampled_from(_SPECIAL_FLOATS), max_size=20)))
        proto.int_val.extend(draw(st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), max_size=5)))
        proto.string_val.extend(draw(st.lists(st.binary(max_size=8), max_size=3)))
    elif kind == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    elif kind == "garbage":
        proto.version_number = draw(st.integers(-3, 3))
        proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=4)))
    return proto


@st.composite
def predict_requests(draw):
    """A valid request for one of the two models, then zero to three mutations of it."""
    request = predict_pb2.PredictRequest()
    if draw(st.booleans()):
        request.model_spec.name = "half_plus_two"
        request.inputs["x"].CopyFrom(tensor(draw(st.lists(st.lists(st.sampled_from(_SPECIAL_FLOATS), min_size=1,
                                                                      max_size=1), max_size=4)), np.float32))
    else:
        request.model_spec.name = MC_MODEL
        request.inputs["x"].CopyFrom(draw(tensor_protos(valid=True)))
        if draw(st.booleans()):
            request.model_spec.signature_name = "predict_mc"
            request.inputs["num_samples"].CopyFrom(tensor(draw(st.integers(1, 50)), np.int32))
            request.inputs["seed"].CopyFrom(tensor(draw(st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), min_size=2,
                                                                 max_size=2)), np.int32))
    for mutation in draw(st.lists(st.sampled_from(["model", "version", "signature", "drop", "extra", "tensor",
                                                   "num_samples", "seed", "filter"]), max_size=3, unique=True)):
        if mutation == "model":
            request.model_spec.name = draw(st.sampled_from(["", "no_such_model", MC_MODEL.upper()]))
        elif mutation == "version":
            request.model_spec.version.value = draw(st.sampled_from([1, 0, -1, 123, 2 ** 62]))
        elif mutation == "signature":
            request.model_spec.signature_name = draw(st.sampled_from(["", "serving_default", "predict_mc", "nope",
                                                                      "\xff"]))
        elif mutation == "drop" and request.inputs:
            del request.inputs[draw(st.sampled_from(sorted(request.inputs)))]
        elif mutation == "extra":
            request.inputs[draw(st.sampled_from(["y", "extra", "", "x "]))].CopyFrom(draw(tensor_protos()))
        elif mutation == "tensor":
            request.inputs[draw(st.sampled_from(["x", "num_samples", "seed"]))].CopyFrom(draw(tensor_protos()))
        elif mutation == "num_samples":
            value = draw(st.sampled_from([0, -1, 1000, 1001, 10 ** 6, 2 ** 31 - 1, -2 ** 31]))
            request.inputs["num_samples"].CopyFrom(tensor(value, draw(st.sampled_from([np.int32, np.int64]))))
        elif mutation == "seed":
            request.inputs["seed"].CopyFrom(tensor(draw(st.lists(st.integers(-2 ** 31, 2 ** 31 - 1), max_size=3)),
                                                   np.int32))
        elif mutation == "filter":
            request.output_filter.extend(draw(st.lists(st.sampled_from(["mean", "stddev", "y", "bogus", ""]),
                                                       min_size=1, max_size=2, unique=True)))
    return request


def test_fuzzed_predict_requests_get_a_result_or_a_client_error(server):
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    rss_before = rss_kib(server.proc.pid)
    seen = {}

    @SETTINGS
    @hypothesis.given(request=predict_requests())
    def check(request):
        try:
            response = stub.Predict(request, timeout=60)
        except grpc.RpcError as exc:
            seen[exc.code()] = seen.get(exc.code(), 0) + 1
            assert exc.code() in CLIENT_ERRORS, (exc.code(), exc.details(), request)
            assert exc.details(), request
            return
        seen[grpc.StatusCode.OK] = seen.get(grpc.StatusCode.OK, 0) + 1
        rows = to_array(request.inputs["x"]).shape[0]
        assert response.outputs, request
        for alias, proto in response.outputs.items():
            value = to_array(proto)
            assert value.shape[0] == rows, (alias, value.shape, request)
            if request.output_filter:
                assert alias in request.output_filter

    check()
    # The generator reaches both sides: some requests are valid, most are not.
    assert seen.get(grpc.StatusCode.OK, 0) > 0 and seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0, seen
    _assert_healthy(server, rss_before)


# ---------------------------------------------------------------------------------------------
# REST bodies.
# ---------------------------------------------------------------------------------------------

_JSON_LEAVES = (st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.text(max_size=6)
                | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([[], {}, [[]]]))
_JSON = st.recursive(_JSON_LEAVES, lambda children: st.lists(children, max_size=4)
                     | st.dictionaries(st.sampled_from(["x", "b64", "y", "num_samples", "seed", "z"]), children,
                                       max_size=3), max_leaves=20)


@st.composite
def rest_bodies(draw) -> bytes:
    kind = draw(st.sampled_from(["instances", "inputs", "wrapper", "deep", "raw", "literal", "rows"]))
    if kind == "rows":
        rows = draw(st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=FEATURES, max_size=FEATURES),
                             max_size=4))
        return json.dumps({"instances": rows}).encode()
    if kind in ("instances", "inputs"):
        body = {kind: draw(_JSON)}
        if draw(st.booleans()):
            body["signature_name"] = draw(st.sampled_from(["predict_mc", "serving_default", "nope", 3]))
        return json.dumps(body).encode()
    if kind == "wrapper":
        return json.dumps(draw(_JSON)).encode()
    if kind == "deep":
        depth = draw(st.sampled_from([65, 1000, 100_000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"x":', "}")]))
        return b'{"instances": ' + (opener * depth + "1" + closer * depth).encode() + b"}"
    if kind == "literal":
        return draw(st.sampled_from([b'{"instances": [NaN, Infinity, -Infinity]}', b'{"instances": [1e999999]}',
                                     b'{"instances": [[1, 2, 3]], "instances": 5}', b"", b"null", b"[]",
                                     b'{"instances": "\\ud800"}', b'{"instances": [[1,2,3]]', b"\xef\xbb\xbf{}",
                                     b'{"inputs": {"x": [[1, 2, 3]], "num_samples": 1e10, "seed": [1, 2]},'
                                     b' "signature_name": "predict_mc"}']))
    return draw(st.binary(max_size=64))  # not JSON, often not UTF-8


def test_fuzzed_rest_bodies_get_json_results_or_json_errors(server):
    rss_before = rss_kib(server.proc.pid)
    seen = {}

    @SETTINGS
    @hypothesis.given(body=rest_bodies(), route=st.sampled_from(
        [f"/v1/models/{MC_MODEL}:predict", f"/v1/models/{MC_MODEL}/versions/1:predict",
         f"/v1/models/{MC_MODEL}:regress", f"/v1/models/{MC_MODEL}:classify", "/v1/models/half_plus_two:predict",
         "/v1/models/nope:predict", f"/v1/models/{MC_MODEL}/labels/x:predict"]))
    def check(body, route):
        response = requests.post(server.rest + route, data=body, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code in (200, 400, 404, 429), (response.status_code, response.text[:300], body[:200])
        answer = response.json()
        if response.status_code == 200:
            assert set(answer) & {"predictions", "outputs", "result", "results"}, answer
        else:
            assert isinstance(answer.get("error"), str) and answer["error"], answer

    check()
    assert seen.get(200, 0) > 0 and seen.get(400, 0) > 0, seen
    _assert_healthy(server, rss_before)


@st.composite
def raw_http_requests(draw):
    """Whole HTTP/1.1 requests as bytes, their framing right or broken: Content-Length true, short, not a number or
    huge; chunked bodies well or badly framed; gzip that is not gzip; methods and paths in and outside the API."""
    method = draw(st.sampled_from([b"POST", b"GET", b"PUT", b"HEAD", b"DELETE"]))
    path = draw(st.sampled_from([f"/v1/models/{MC_MODEL}:predict".encode(), b"/v1/models/half_plus_two:predict",
                                 b"/v1/models/half_plus_two", b"/elsewhere", b"/V1/MODELS"]))
    body = draw(st.sampled_from([b'{"instances": [1.0, 2.0]}', b"", b'{"instances": [[1, 2, 3]]}'])
                | st.binary(max_size=48))
    framing = draw(st.sampled_from(["length", "short", "bad_length", "chunked", "bad_chunks", "gzip", "none"]))
    headers = [b"Host: fuzz"]
    if framing == "length":
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == "short":  # more declared than sent: the body ends at the client's end of stream
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.integers(1, 1000))))
    elif framing == "bad_length":
        headers.append(b"Content-Length: " + draw(st.sampled_from([b"banana", b"-1", b"1e3", b"0x10", b"",
                                                                   b"99999999999999999999"])))
    elif framing == "chunked":
        headers.append(b"Transfer-Encoding: chunked")
        cut = draw(st.integers(0, len(body)))
        body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:cut], body[cut:]) if part) + b"0\r\n\r\n"
    elif framing == "bad_chunks":
        headers.append(b"Transfer-Encoding: chunked")
        body = draw(st.sampled_from([b"zz\r\n", b"5\r\nabcdefgh\r\n0\r\n\r\n", b"-1\r\n", b"ffffffffffff\r\nx"]))
    elif framing == "gzip":
        headers += [b"Content-Encoding: gzip", b"Content-Length: %d" % len(body)]
    return method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def test_fuzzed_http_framing_gets_an_http_answer_and_the_server_lives(server):
    # Raw requests over a socket; the client ends its side after sending, so a short body ends there too.
    rss_before = rss_kib(server.proc.pid)
    statuses = {}

    @SETTINGS
    @hypothesis.given(request=raw_http_requests())
    def check(request):
        with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 "), (request[:200], answer[:200])
        status = int(answer[9:12])
        statuses[status] = statuses.get(status, 0) + 1
        assert status in (200, 400, 404, 413, 429), (request[:200], answer[:300])

    check()
    assert {200, 400, 404, 413} <= set(statuses), statuses
    _assert_healthy(server, rss_before)


def test_garbage_on_the_grpc_and_rest_ports_does_not_take_the_server_down(server):
    rss_before = rss_kib(server.proc.pid)
    for port in (server.grpc_port, server.rest_port):
        for payload in (b"\x00" * 64, b"GET / HTTP/1.1\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\xff" * 256,
                        os.urandom(4096)):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(payload)
                sock.settimeout(5)
                try:
                    sock.recv(1024)
                except (socket.timeout, ConnectionResetError):
                    pass
    _assert_healthy(server, rss_before)
