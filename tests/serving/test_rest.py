"""Every REST route, its JSON formats and its errors (TF Serving's HTTP codes and bodies)."""

import base64
import concurrent.futures
import threading
import time

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest
import requests

from tests.serving.conftest import FEATURES, MC_MODEL


def _post(server, path, body, **kwargs):
    data = None if isinstance(body, (dict, list)) else body
    json_body = None if data is not None else body
    return requests.post(server.rest + path, data=data, json=json_body, timeout=30, **kwargs)


def test_row_format_with_named_inputs_answers_one_object_per_row(mc_server):
    x = np.ones([2, FEATURES]).tolist()
    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict",
                     {"signature_name": "predict_mc",
                      "instances": [{"x": x[0], "num_samples": 10, "seed": [1, 2]},
                                    {"x": x[1], "num_samples": 10, "seed": [1, 2]}]})
    # Row format stacks every input along a new batch dimension, so num_samples becomes [2]:
    # predict_mc wants a scalar, and the graph says so.
    assert response.status_code == 400
    assert "error" in response.json()

    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict", {"instances": x})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert sorted(predictions[0]) == sorted(
        ["mean", "stddev", "aleatoric_stddev", "epistemic_stddev", "lower", "upper"])
    assert len(predictions[0]["mean"]) == 2


def test_columnar_format_answers_outputs(mc_server):
    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict",
                     {"signature_name": "predict_mc",
                      "inputs": {"x": np.ones([3, FEATURES]).tolist(), "num_samples": 20,
                                 "seed": [4, 5]}})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert np.asarray(outputs["mean"]).shape == (3, 2)
    assert np.all(np.asarray(outputs["lower"]) < np.asarray(outputs["upper"]))


def test_columnar_single_output_is_not_wrapped_in_an_object(fixture_server):
    response = _post(fixture_server, "/v1/models/half_plus_two:predict", {"inputs": [[1.0], [2.0]]})
    assert response.json() == {"outputs": [[2.5], [3.0]]}


def test_versions_route(fixture_server):
    response = _post(fixture_server, "/v1/models/two_versions/versions/123:predict",
                     {"instances": [[2.0]]})
    assert response.json() == {"predictions": [[3.0]]}
    status = requests.get(fixture_server.rest + "/v1/models/two_versions/versions/124", timeout=30)
    assert status.json() == {"model_version_status": [{
        "version": "124", "state": "AVAILABLE",
        "status": {"error_code": "OK", "error_message": ""}}]}


def test_status_route_lists_every_version(fixture_server):
    status = requests.get(fixture_server.rest + "/v1/models/two_versions", timeout=30).json()
    assert [s["version"] for s in status["model_version_status"]] == ["124", "123"]


def test_classify_and_regress_routes(fixture_server):
    classify = _post(fixture_server, "/v1/models/half_plus_two:classify",
                     {"signature_name": "classify_x_to_y", "examples": [{"x": 1.0}, {"x": 3.0}]})
    assert classify.json() == {"results": [[["", 2.5]], [["", 3.5]]]}
    regress = _post(fixture_server, "/v1/models/half_plus_two/versions/123:regress",
                    {"signature_name": "regress_x_to_y2", "context": {"x": 2.0},
                     "examples": [{}, {}]})
    assert regress.json() == {"results": [4.0, 4.0]}


def test_metadata_route(fixture_server):
    metadata = requests.get(fixture_server.rest + "/v1/models/half_plus_two/metadata", timeout=30)
    assert metadata.status_code == 200
    doc = metadata.json()
    assert doc["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    assert "serving_default" in doc["metadata"]["signature_def"]["signature_def"]


def test_paths_match_case_insensitively_but_verbs_are_compared_as_written(fixture_server):
    # TF Serving's route expressions are case-insensitive; its dispatch then compares the verb and "metadata"
    # exactly (http_rest_api_handler.cc), so ":PREDICT" is malformed and "/METADATA" asks for the status.
    response = _post(fixture_server, "/V1/Models/half%5Fplus%5Ftwo/Versions/123:predict", {"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}
    response = _post(fixture_server, "/v1/models/half_plus_two:PREDICT", {"instances": [1.0]})
    assert (response.status_code, response.json()) == (
        400, {"error": "Malformed request: POST /v1/models/half_plus_two:PREDICT"})
    status = requests.get(fixture_server.rest + "/v1/models/half_plus_two/METADATA", timeout=30)
    assert list(status.json()) == ["model_version_status"]


def test_a_query_string_is_part_of_the_path_as_in_tf_serving(fixture_server):
    status = requests.get(fixture_server.rest + "/v1/models/half_plus_two?verbose=1", timeout=30)
    assert (status.status_code, status.json()) == (
        404, {"error": "Could not find any versions of model half_plus_two?verbose=1"})
    response = _post(fixture_server, "/v1/models/half_plus_two:predict?verbose=1", {"instances": [1.0]})
    assert (response.status_code, response.json()) == (
        400, {"error": "Malformed request: POST /v1/models/half_plus_two:predict?verbose=1"})


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_malformed_requests(fixture_server, method):
    response = requests.request(method, fixture_server.rest + "/v1/models/half_plus_two", timeout=30)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    if method == "HEAD":
        assert response.content == b""  # the answer's headers, no body
    else:
        assert response.json() == {"error": f"Malformed request: {method} /v1/models/half_plus_two"}
    assert requests.request(method, fixture_server.rest + "/elsewhere", timeout=30).status_code == 404


def test_a_version_beyond_int64_is_400_with_an_empty_body(fixture_server):
    # TF Serving's path parsing returns this error before the handler writes errors into the body.
    for request in (lambda url: _post(fixture_server, url + ":regress", {"examples": []}),
                    lambda url: requests.get(fixture_server.rest + url, timeout=30)):
        response = request("/v1/models/half_plus_two/versions/9223372036854775808")
        assert (response.status_code, response.content) == (400, b"")
        assert response.headers["Content-Type"] == "application/json"
    response = _post(fixture_server, "/v1/models/half_plus_two/versions/9223372036854775807:predict",
                     {"instances": [1.0]})
    assert response.json() == {"error": "Servable not found for request: "
                                        "Specific(half_plus_two, 9223372036854775807)"}


def test_gzip_request_bodies_are_decompressed(fixture_server):
    import gzip
    headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    response = _post(fixture_server, "/v1/models/half_plus_two:predict",
                     gzip.compress(b'{"instances": [1.0, 2.0]}'), headers=headers)
    assert response.json() == {"predictions": [2.5, 3.0]}
    # What does not decompress is read as an empty body, as TF Serving's HTTP layer reads it.
    response = _post(fixture_server, "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}',
                     headers=headers)
    assert (response.status_code, response.json()) == (400, {"error": "JSON Parse error: The document is empty"})


def test_a_gzip_body_is_held_to_the_body_limit_once_decompressed(mc_server):
    import gzip
    body = gzip.compress(b'{"instances": [' + b"1.0," * 80000 + b"1.0]}")
    assert len(body) < 10_000  # far below the 256 KiB limit the server was started with
    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict", body, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 429
    assert "larger than this server's limit" in response.json()["error"]


def test_rest_error_messages_are_not_truncated(mc_server):
    # TF Serving truncates only gRPC's messages (ToGRPCStatus); REST gets the whole status message.
    name = "m" * 2000
    response = _post(mc_server, f"/v1/models/{name}:predict", {"instances": [1.0]})
    assert response.status_code == 404
    assert response.json() == {"error": f"Servable not found for request: Latest({name})"}


def test_floats_are_written_as_tf_serving_writes_them(fixture_server):
    response = _post(fixture_server, "/v1/models/half_plus_two:predict",
                     '{"instances": [0.2, 1e10, NaN, Infinity]}')
    assert response.status_code == 200
    assert response.text.replace(" ", "") == (
        '{"predictions":[2.1,5e+09,NaN,Infinity]}')


@pytest.mark.parametrize("method, path, body, status, message", [
    ("POST", "/v1/models/nope:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Latest(nope)"),
    ("POST", "/v1/models/half_plus_two/versions/9:predict", {"instances": [1.0]}, 404,
     "Servable not found for request: Specific(half_plus_two, 9)"),
    ("POST", "/v1/models/two_versions/labels/nope:predict", {"instances": [1.0]}, 400,
     "Unrecognized servable version label: nope"),
    ("GET", "/v1/models", None, 400, "Missing model name in request."),
    ("GET", "/v1/models/nope", None, 404, "Could not find any versions of model nope"),
    ("GET", "/v1/models/half_plus_two/versions/9", None, 404,
     "Could not find version 9 of model half_plus_two"),
    ("POST", "/v1/models/half_plus_two:explain", {"instances": [1.0]}, 400,
     "Malformed request: POST /v1/models/half_plus_two:explain"),
    ("POST", "/v1/models/half_plus_two:predict", {"signature_name": "nope", "instances": [1.0]},
     400, 'Serving signature name: "nope" not found in signature def'),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [1.0], "inputs": [1.0]}, 400,
     None),
    ("POST", "/v1/models/half_plus_two:predict", {"foo": 1}, 400,
     "Missing 'inputs' or 'instances' key"),
    ("POST", "/v1/models/half_plus_two:predict", '{"instances": [1.0', 400, None),
    ("POST", "/v1/models/half_plus_two:predict", "", 400, "JSON Parse error: The document is empty"),
    ("POST", "/v1/models/half_plus_two:predict", " \r\n", 400,
     "JSON Parse error: The document is empty. at offset: 3"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [{"x": 1.0, "z": 2.0}]}, 400,
     "Failed to process element: 0 key: z of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
     "have named input: z"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": ["\u00e9"]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"\u00e9\" Type: "
     "String is not of expected type: float"),
    # TF Serving's one parser for classify and regress names classify in this message for both.
    ("POST", "/v1/models/half_plus_two:regress", {"signature_name": "regress_x_to_y"}, 400,
     'JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key \'examples\' is '
     "expected and was not found"),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": ["a"]}, 400, None),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [[1.0], [1.0, 2.0]]}, 400, None),
    ("POST", "/v1/models/half_plus_two:predict", {"signature_name": 5, "instances": [1.0]}, 400,
     None),
    ("POST", "/v1/models/half_plus_two:classify", {"signature_name": "classify_x_to_y"}, 400,
     None),
    ("POST", "/v1/models/half_plus_two:predict", {"instances": [16777217]}, 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Cannot convert "
     "JSON value: 16777217 to float without loss of precision."),
    # Inputs Python's json accepts but no tensor can hold: a client error, never a 500.
    ("POST", "/v1/models/half_plus_two:predict",
     '{"signature_name": "classify_x_to_y", "instances": ["\\ud800"]}', 400,
     "JSON Parse error: The surrogate pair in string is invalid. at offset: 53"),
    ("POST", "/v1/models/half_plus_two:predict",
     '{"instances": ' + "[" * 70 + "1.0" + "]" * 70 + "}", 400,
     "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value has "
     "69 dimensions; this server supports at most 64"),
])
def test_rest_errors(fixture_server, method, path, body, status, message):
    if method == "GET":
        response = requests.get(fixture_server.rest + path, timeout=30)
    else:
        response = _post(fixture_server, path, body)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    doc = response.json()
    assert list(doc) == ["error"]
    if message is not None:
        assert doc["error"] == message


def test_bodies_tf_servings_parser_takes_without_checking_the_encoding(fixture_server):
    # rapidjson's UTF-8 stream skips a byte order mark, and TF Serving does not ask it to validate the encoding:
    # a Latin-1 byte in a string is kept (here a feature the signature does not read).
    bom = _post(fixture_server, "/v1/models/half_plus_two:predict",
                b'\xef\xbb\xbf{"instances": [1.0, 2.0, 5.0]}')
    assert (bom.status_code, bom.json()) == (200, {"predictions": [2.5, 3.0, 4.5]})
    latin1 = _post(fixture_server, "/v1/models/half_plus_two:regress",
                   b'{"signature_name": "regress_x_to_y", "examples": [{"x": 1.0, "tag": "caf\xe9"}]}')
    assert (latin1.status_code, latin1.json()) == (200, {"results": [2.5]})
    # Outside a string such a byte is a syntax error, at its offset counted with the mark's three bytes.
    stray = _post(fixture_server, "/v1/models/half_plus_two:predict", b'\xef\xbb\xbf{"instances": \xe9}')
    assert stray.json() == {"error": "JSON Parse error: Invalid value. at offset: 17"}


def test_error_bodies_are_written_as_tf_serving_writes_them(fixture_server):
    # `MakeJsonFromStatus`: rapidjson's PrettyWriter, UTF-8 as is, and a request's bytes that are not UTF-8 quoted
    # back as they came.
    response = _post(fixture_server, "/v1/models/half_plus_two:predict",
                     '{"instances": [{"x": 1.0, "\u00e9\\u001f": 2.0}]}'.encode())
    assert response.content == (
        '{\n    "error": "Failed to process element: 0 key: \u00e9\\u001F of \'instances\' list. Error: '
        'INVALID_ARGUMENT: JSON object: does not have named input: \u00e9\\u001F"\n}').encode()
    latin1 = _post(fixture_server, "/v1/models/half_plus_two:predict",
                   b'{"instances": [{"x": 1.0, "caf\xe9": 2.0}]}')
    assert latin1.status_code == 400
    assert b"named input: caf\xe9\"" in latin1.content


def test_type_and_parse_error_messages(fixture_server):
    wrong_type = _post(fixture_server, "/v1/models/half_plus_two:predict", {"instances": ["a"]})
    assert wrong_type.json()["error"] == (
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
        "\"a\" Type: String is not of expected type: float")
    bad_json = _post(fixture_server, "/v1/models/half_plus_two:predict", '{"instances": [1.0')
    assert bad_json.json()["error"].startswith("JSON Parse error: ")


def test_num_samples_limit_over_rest(mc_server):
    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict",
                     {"signature_name": "predict_mc",
                      "inputs": {"x": [[1.0] * FEATURES], "num_samples": 100000, "seed": [0, 0]}})
    assert response.status_code == 400
    assert "--max_num_samples=500" in response.json()["error"]


def test_body_over_the_limit_is_429(mc_server):
    body = b'{"instances": [' + b"1.0," * 80000 + b"1.0]}"
    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict", body)
    assert response.status_code == 429
    assert "larger than this server's limit" in response.json()["error"]


def _chunks(*parts):
    yield from parts  # requests sends a generator body with Transfer-Encoding: chunked


def test_chunked_request_body_is_read(fixture_server):
    response = _post(fixture_server, "/v1/models/half_plus_two:predict",
                     _chunks(b'{"instances": ', b"[1.0, 2.0]}"))
    assert response.json() == {"predictions": [2.5, 3.0]}


def test_chunked_body_over_the_limit_is_429(mc_server):
    response = _post(mc_server, f"/v1/models/{MC_MODEL}:predict",
                     _chunks(b'{"instances": [', *[b"1.0," * 10000] * 10, b"1.0]}"))
    assert response.status_code == 429
    assert "larger than this server's limit" in response.json()["error"]


def test_a_connection_that_stops_sending_is_closed(mc_server):
    import socket
    with socket.create_connection(("localhost", mc_server.rest_port), timeout=60) as sock:
        sock.sendall(b"POST /v1/models/mc:predict HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{")
        # The server gives up on the body after --rest_api_timeout_in_ms, freeing its thread;
        # the bound here is the test's patience, not the server's timeout.
        assert sock.recv(4096) == b""


def test_b64_output_for_bytes_outputs_and_b64_input(fixture_server):
    import tensorflow as tf
    example = tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=[5.0]))}))
    encoded = base64.b64encode(example.SerializeToString()).decode()
    response = _post(fixture_server, "/v1/models/half_plus_two:predict",
                     {"signature_name": "classify_x_to_y", "inputs": [{"b64": encoded}]})
    assert response.json() == {"outputs": [[4.5]]}
    bad = _post(fixture_server, "/v1/models/half_plus_two:predict",
                {"signature_name": "classify_x_to_y", "inputs": [{"b64": "!!"}]})
    assert bad.status_code == 400
    assert bad.json()["error"] == "Unable to base64 decode"


def test_prometheus_metrics_count_requests(fixture_server):
    before = fixture_server.metrics().get(
        ':tensorflow:serving:request_count{model_name="half_plus_three",status="OK"}', 0)
    _post(fixture_server, "/v1/models/half_plus_three:predict", {"instances": [1.0]})
    # As TF Serving's PredictionService: status and metadata calls are not requests of the model.
    requests.get(fixture_server.rest + "/v1/models/half_plus_three", timeout=30)
    requests.get(fixture_server.rest + "/v1/models/half_plus_three/metadata", timeout=30)
    response = requests.get(fixture_server.rest + "/monitoring/prometheus/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    after = fixture_server.metrics()[
        ':tensorflow:serving:request_count{model_name="half_plus_three",status="OK"}']
    assert after == before + 1


def _raw_exchange(server, request: bytes):
    """Sends `request` over a raw socket and reads until the server closes: (status line, headers, body)."""
    import socket
    with socket.create_connection(("localhost", server.rest_port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    return lines[0], {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}, body


def _assert_http_layer_page(status_line, headers, body, status, phrase, head=False):
    """libevent's `evhttp_send_error` answer, as TF Serving's HTTP layer sends it, connection closed after it."""
    page = (f"<HTML><HEAD>\n<TITLE>{status} {phrase}</TITLE>\n</HEAD><BODY>\n<H1>{phrase}</H1>\n"
            f"</BODY></HTML>\n").encode()
    assert status_line == f"HTTP/1.1 {status} {phrase}"
    assert headers["content-type"] == "text/html" and headers["connection"] == "close"
    assert int(headers["content-length"]) == len(page)
    assert body == (b"" if head else page)


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_a_path_outside_v1_gets_the_http_layers_html_404_and_the_connection_closes(fixture_server, method):
    # TF Serving's HTTP layer answers it with libevent's error page, not a JSON error.
    answer = _raw_exchange(fixture_server, f"{method} /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                           .encode())
    _assert_http_layer_page(*answer, 404, "Not Found", head=method == "HEAD")


@pytest.mark.parametrize("method", ["TRACE", "CONNECT", "FOO"])
def test_a_method_the_http_layer_does_not_take_is_501_with_its_page(fixture_server, method):
    # libevent takes GET, POST, HEAD, PUT, DELETE, OPTIONS and PATCH for TF Serving; anything else is 501.
    answer = _raw_exchange(fixture_server, f"{method} /v1/models/half_plus_two HTTP/1.1\r\nHost: x\r\n\r\n"
                           .encode())
    _assert_http_layer_page(*answer, 501, "Not Implemented")
    # A path under /v1/ in any case is the API's, with its JSON errors.
    response = requests.get(fixture_server.rest + "/V1/models/nope", timeout=30)
    assert response.status_code == 404 and response.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("framing, status, phrase", [
    (b"Content-Length: banana\r\n\r\n", 400, "Bad Request"),
    (b"Content-Length: -3\r\n\r\n", 400, "Bad Request"),
    # libevent files a corrupt chunked body under "data too long".
    (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", 413, "Request Entity Too Large"),
    (b"Transfer-Encoding: chunked\r\n\r\n5\r\n[1.0]XXX\r\n", 413, "Request Entity Too Large"),
])
def test_a_malformed_http_request_gets_the_http_layers_answer_and_the_server_lives(fixture_server, framing,
                                                                                   status, phrase):
    answer = _raw_exchange(fixture_server, b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n" + framing)
    _assert_http_layer_page(*answer, status, phrase)
    response = _post(fixture_server, "/v1/models/half_plus_two:predict", {"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}


@hypothesis.settings(max_examples=25, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(values=st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=8))
def test_half_plus_two_is_exact_over_rest(fixture_server, values):
    response = _post(fixture_server, "/v1/models/half_plus_two:predict", {"instances": values})
    expected = (np.float32(0.5) * np.asarray(values, np.float32) + np.float32(2)).tolist()
    assert response.json()["predictions"] == pytest.approx(expected, rel=1e-6)


class _BlockingApi:
    """A stand-in `RestApi` whose requests wait inside `handle` until released; counts how many are inside."""

    def __init__(self):
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.inside = self.most_inside = 0

    def handle(self, method, raw_path, body):
        with self._lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.release.wait(30)
        with self._lock:
            self.inside -= 1
        return 200, "application/json", '{"predictions": []}'


def _wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_worker_slots_go_to_waiting_requests_in_arrival_order():
    # One slot, held; five requests queue one after another, then a sixth arrives just as the slot frees: it must
    # not take the slot ahead of the five (a plain condition-variable semaphore lets the newcomer barge in).
    from serving import rest

    slots = rest.WorkerSlots(1)
    order = []

    def request(name):
        with slots:
            order.append(name)

    slots.__enter__()
    threads = []
    for i, name in enumerate("abcde"):
        threads.append(threading.Thread(target=request, args=(name,)))
        threads[-1].start()
        _wait_for(lambda n=i + 1: slots.waiting == n)
    slots.__exit__(None, None, None)
    request("late")
    for thread in threads:
        thread.join(timeout=30)
    assert order == ["a", "b", "c", "d", "e", "late"]
    assert (slots.busy, slots.waiting) == (0, 0)


def test_rest_api_num_threads_bounds_the_requests_processed_at_once():
    # Two worker slots, three concurrent requests: two are processed, the third waits with its body read
    # (memory of JSON parsing is bounded by the slots, not by the connections) and is answered once a slot frees.
    from serving import errors, rest

    api = _BlockingApi()
    server = rest.RestServer(api, 0, max_body_bytes=1 << 20, host="127.0.0.1", num_threads=2)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/models/m:predict"
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            answers = [pool.submit(requests.post, url, data=b'{"instances": [1]}', timeout=60) for _ in range(3)]
            _wait_for(lambda: server.workers.busy == 2 and server.workers.waiting == 1 and api.inside == 2)
            api.release.set()
            assert [a.result().status_code for a in answers] == [200, 200, 200]
        assert api.most_inside == 2
        assert (server.workers.busy, server.workers.waiting) == (0, 0)
    finally:
        server.stop()
    with pytest.raises(errors.InvalidArgument, match="rest_api_num_threads must be at least 1"):
        rest.RestServer(api, 0, max_body_bytes=1 << 20, host="127.0.0.1", num_threads=0)
