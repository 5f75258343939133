"""TF Serving's HTTP/REST API over the data plane (`http_rest_api_handler.cc`).

Routes (the model name and label are URL-decoded; the paths match case-insensitively, as TF Serving's
regular expressions do, while the verb and `metadata` are then compared as written, as its dispatch does:
`:PREDICT` is a malformed request and `/METADATA` asks for the status; a query string is part of the path,
as in TF Serving):

    POST /v1/models/<name>[/versions/<v>|/labels/<l>]:(predict|classify|regress)
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]            -> GetModelStatus
    GET  /v1/models/<name>[/versions/<v>|/labels/<l>]/metadata   -> GetModelMetadata
    any  <prometheus path>                                       -> metrics, when enabled

Errors are `{"error": "<message>"}` with the HTTP status TF Serving maps the status code to
(`errors.http_status`), and the whole message (TF Serving truncates only gRPC's); a version that is not an
int64 is a 400 with an empty body, as TF Serving's path parsing returns before the error is written. Methods
other than GET and POST on `/v1/` paths are malformed requests (400). A body sent with `Content-Encoding: gzip`
is decompressed first; one that does not decompress is read as empty, as TF Serving's HTTP layer reads it.
"""

import http.server
import re
import socketserver
import threading
import urllib.parse
import zlib
from typing import Optional

from absl import logging
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import regression_pb2

from serving import codec
from serving import errors
from serving.codec import json_reader
from serving.data_plane import DataPlane

_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_PREDICTION = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE)
_INT64_MAX = 2 ** 63 - 1
# TF Serving's HTTP layer answers some requests itself, before any handler, with libevent's
# `evhttp_send_error(req, status, NULL)`: a page as text/html, no CORS headers, and the connection closed. It does
# so for a path that neither a handler (the metrics path) nor the /v1/ dispatcher takes (404), a Content-Length
# that is not a number (400), a chunked body whose framing is corrupt (libevent files that under "data too long":
# 413), and a method it does not take (501). Reason phrases as libevent's table has them.
HTML_ERROR_TYPE = "text/html"
HTTP_LAYER_PHRASES = {400: "Bad Request", 404: "Not Found", 413: "Request Entity Too Large", 501: "Not Implemented"}


def http_layer_phrase(status: int) -> str:
    return HTTP_LAYER_PHRASES.get(status) or http.HTTPStatus(status).phrase


def http_layer_page(status: int) -> str:
    """The page libevent's `evhttp_send_error` writes for `status`."""
    phrase = http_layer_phrase(status)
    return f"<HTML><HEAD>\n<TITLE>{status} {phrase}</TITLE>\n</HEAD><BODY>\n<H1>{phrase}</H1>\n</BODY></HTML>\n"


class _MalformedBody(ValueError):
    """A body whose HTTP framing is broken; `status` is what TF Serving's HTTP layer answers (above)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


class _UnwrittenError(errors.InvalidArgument):
    """An error TF Serving returns before writing it into the body (`ParseModelInfo`'s): 400, empty body."""


def _fill_model_spec(spec, name: str, version: Optional[str], label: Optional[str]):
    """`FillModelSpecWithNameVersionAndLabel`."""
    spec.name = name
    if version is not None:
        spec.version.value = int(version)  # checked against int64 by `RestApi._dispatch`
    if label is not None:
        spec.version_label = label


class RestApi:
    """Turns an HTTP request (method, path, body) into (HTTP status, JSON body).

    Args:
      plane: the `DataPlane`.
      timeout_seconds: `--rest_api_timeout_in_ms`, as a deadline for each request.
      metrics: `monitoring.Metrics` to export, or None.
      metrics_path: where Prometheus scrapes them.
    """

    def __init__(self, plane: DataPlane, timeout_seconds: Optional[float] = None,
                 metrics=None, metrics_path: str = ""):
        self._plane = plane
        self._timeout = timeout_seconds
        self._metrics = metrics
        self._metrics_path = metrics_path

    def handle(self, method: str, raw_path: str, body: bytes):
        """Returns (status, content type, body text). `raw_path` is the request target, query included (TF
        Serving matches its routes against path and query together)."""
        path = raw_path
        if self._metrics is not None and path == self._metrics_path:
            return 200, "text/plain", self._metrics.render()  # registered by path: any method
        if not _PATH.fullmatch(path):
            logging.vlog(1, "REST %s %s: no handler (404)", method, path)
            return 404, HTML_ERROR_TYPE, http_layer_page(404)
        try:
            return 200, "application/json", self._dispatch(method, path, body)
        except Exception as exc:  # pylint: disable=broad-except
            # The one place a REST request's failure becomes an HTTP status.
            error = errors.to_serving_error(exc)
            if isinstance(error, errors.Internal):
                logging.exception("REST %s %s failed", method, path)
            text = "" if isinstance(error, _UnwrittenError) else codec.error_to_json(error.message)
            return errors.http_status(error.code), "application/json", text

    def _dispatch(self, method: str, path: str, body: bytes) -> str:
        match = None
        if method == "POST":
            match = _PREDICTION.fullmatch(path)
        elif method == "GET":
            match = _STATUS.fullmatch(path)
        if match is None:
            raise errors.InvalidArgument(f"Malformed request: {method} {path}")
        name = urllib.parse.unquote(match.group(1) or "")
        version = match.group(2)
        label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
        # (A version and a label cannot both match: the routes have one or the other.)
        if version is not None and int(version) > _INT64_MAX:
            raise _UnwrittenError(f"Failed to convert version: {version} to numeric.")
        if method == "POST":
            api = match.group(4)
            if api not in ("predict", "classify", "regress"):  # matched case-insensitively, compared as written
                raise errors.InvalidArgument(f"Malformed request: {method} {path}")
            with self._plane.admit(name, api.capitalize(), "REST"):
                if api == "predict":
                    return self._predict(name, version, label, body)
                if api == "classify":
                    return self._classify(name, version, label, body)
                return self._regress(name, version, label, body)
        if not name:
            raise errors.InvalidArgument("Missing model name in request.")
        metadata = match.group(4) == "metadata"  # any other case of it asks for the status
        api = "GetModelMetadata" if metadata else "GetModelStatus"
        with self._plane.admit(name, api, "REST"):
            if metadata:
                request = get_model_metadata_pb2.GetModelMetadataRequest()
                request.metadata_field.append("signature_def")
                _fill_model_spec(request.model_spec, name, version, label)
                return codec.metadata_response_to_json(self._plane.get_model_metadata(request))
            request = get_model_status_pb2.GetModelStatusRequest()
            _fill_model_spec(request.model_spec, name, version, label)
            return codec.status_response_to_json(self._plane.get_model_status(request))

    def _predict(self, name, version, label, body) -> str:
        request = predict_pb2.PredictRequest()
        _fill_model_spec(request.model_spec, name, version, label)
        doc = json_reader.parse_predict_document(body)  # its inputs array read in chunks
        request.model_spec.signature_name = codec.signature_name_from_json(doc)
        dtypes = self._plane.input_dtypes(request.model_spec, request.model_spec.signature_name)
        arrays, fmt = codec.json_to_predict_inputs(doc, dtypes, request.model_spec.signature_name)
        for alias, array in arrays.items():
            codec.fill_tensor_proto(request.inputs[alias], array, True)
        response = self._plane.predict(request, self._timeout)
        outputs = {alias: codec.tensor_proto_to_ndarray(tensor, alias)
                   for alias, tensor in response.outputs.items()}
        return codec.arrays_to_predict_json(outputs, fmt)

    def _classify(self, name, version, label, body) -> str:
        request = classification_pb2.ClassificationRequest()
        _fill_model_spec(request.model_spec, name, version, label)
        codec.json_to_classify_regress_request(codec.parse_json_document(body), request)
        response = self._plane.classify(request, self._timeout)
        return codec.classification_result_to_json(response.result)

    def _regress(self, name, version, label, body) -> str:
        request = regression_pb2.RegressionRequest()
        _fill_model_spec(request.model_spec, name, version, label)
        codec.json_to_classify_regress_request(codec.parse_json_document(body), request)
        response = self._plane.regress(request, self._timeout)
        return codec.regression_result_to_json(response.result)


def _gunzip(body: bytes, limit: int) -> bytes:
    """A `Content-Encoding: gzip` body, decompressed (at most `limit` bytes of it, or ResourceExhausted, as for
    a plain body). One that is not gzip data is read as empty, as TF Serving's HTTP layer reads it ("The document
    is empty" follows)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip framing
    try:
        data = inflater.decompress(body, limit + 1)
        if not inflater.eof:
            if len(data) > limit or inflater.unconsumed_tail:
                raise errors.ResourceExhausted(
                    f"Request body decompresses to more than {limit} bytes, larger than this server's limit "
                    f"--grpc_max_message_bytes={limit}")
            return b""  # truncated
    except zlib.error:
        return b""
    _check_body_size(len(data), limit)
    return data


def _check_body_size(size: int, limit: int):
    if size > limit:
        raise errors.ResourceExhausted(
            f"Request body of {size} bytes is larger than this server's limit "
            f"--grpc_max_message_bytes={limit}")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Reads the request, asks `RestApi`, writes the answer. Keep-alive (HTTP/1.1)."""

    protocol_version = "HTTP/1.1"
    server_version = "vizoo-model-server"

    @property
    def timeout(self):
        # Read by `setup()` as the socket timeout: a client that stops sending (in the headers,
        # the body, or idle between keep-alive requests) cannot hold a thread forever.
        return self.server.idle_timeout

    def _serve(self, method: str):
        api: RestApi = self.server.api
        try:
            body = self._read_body()
        except _MalformedBody as exc:
            logging.vlog(1, "REST %s %s: %s (%d)", method, self.path, exc, exc.status)
            self.close_connection = True  # the body was not read to its end
            self._reply(exc.status, HTML_ERROR_TYPE, http_layer_page(exc.status))
            return
        except errors.ResourceExhausted as error:
            self._refuse(errors.http_status(error.code), error.message)
            return
        # At most --rest_api_num_threads requests are parsed and run at once; the rest wait their turn
        # with their bodies read, as TF Serving's event loop queues them for its HTTP worker threads.
        with self.server.workers:
            status, content_type, text = api.handle(method, self.path, body)
        if content_type == HTML_ERROR_TYPE:  # the HTTP layer's own error page: no CORS headers, connection closed
            self.close_connection = True
        self._reply(status, content_type, text)

    def _read_body(self) -> bytes:
        """The body, framed by Content-Length or by chunks (Transfer-Encoding: chunked), gunzipped if it says
        `Content-Encoding: gzip` (`_gunzip`).

        Raises:
          _MalformedBody: the framing is malformed (with the status TF Serving's HTTP layer answers).
          ResourceExhausted: the body is larger than the server's limit.
        """
        body = self._read_framed_body()
        if "gzip" in self.headers.get("Content-Encoding", ""):
            body = _gunzip(body, self.server.max_body_bytes)
        return body

    def _read_framed_body(self) -> bytes:
        limit = self.server.max_body_bytes
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = bytearray()
            while True:
                try:
                    size = int(self.rfile.readline(1024).split(b";")[0], 16)
                except ValueError:
                    size = -1
                if size < 0:
                    raise _MalformedBody(413, "bad chunk size")
                if size == 0:
                    break
                _check_body_size(len(body) + size, limit)
                chunk = self.rfile.read(size)
                if len(chunk) != size or self.rfile.readline(3).strip():
                    raise _MalformedBody(413, "bad chunk")
                body += chunk
            while self.rfile.readline(65537).strip():
                pass  # trailer fields, unused
            return bytes(body)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _MalformedBody(400, "bad Content-Length") from None
        if length < 0:
            raise _MalformedBody(400, "bad Content-Length")
        _check_body_size(length, limit)
        return self.rfile.read(length) if length else b""

    def _refuse(self, status: int, message: str):
        # The body was not read to its end, so the connection cannot be reused.
        self.close_connection = True
        self._reply(status, "application/json", codec.error_to_json(message))

    def _reply(self, status: int, content_type: str, text: str):
        # A message may quote a request's bytes that are not UTF-8 (`codec.text_bytes`): sent back as they came,
        # as TF Serving does.
        data = text.encode("utf-8", "surrogateescape")
        self.send_response(status, http_layer_phrase(status) if content_type == HTML_ERROR_TYPE else None)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        if self.server.cors and content_type != HTML_ERROR_TYPE:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Methods", "POST, GET")
            self.send_header("Access-Control-Allow-Headers", "Content-Type")
        self.end_headers()
        if self.command != "HEAD":  # a HEAD answer has the headers of the answer and no body
            self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's names)
        self._serve("GET")

    def do_POST(self):  # noqa: N802
        self._serve("POST")

    def do_OPTIONS(self):  # noqa: N802
        if self.server.cors:  # a CORS preflight
            self._reply(200, "text/plain", "")
        else:
            self._serve("OPTIONS")

    # TF Serving's HTTP layer takes these methods too and its handler calls them malformed requests (400).
    def do_PUT(self):  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self):  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self):  # noqa: N802
        self._serve("PATCH")

    def do_HEAD(self):  # noqa: N802
        self._serve("HEAD")

    def send_error(self, code, message=None, explain=None):
        """The HTTP parser's own errors (a request line it cannot read, a method it has no `do_` for, a line too
        long), written as TF Serving's HTTP layer writes its own: libevent's page, the connection closed."""
        del explain
        logging.vlog(1, "REST HTTP error %d: %s", code, message)
        self.close_connection = True
        self._reply(code, HTML_ERROR_TYPE, http_layer_page(code))

    def log_message(self, format, *args):  # pylint: disable=redefined-builtin
        logging.vlog(1, "REST %s", format % args)


class WorkerSlots:
    """A first-come, first-served counting semaphore that tells how many requests hold a slot and how many wait.

    Requests take tickets in arrival order and a slot goes to the oldest ticket: one arriving just as a slot
    frees cannot take it from requests already waiting (a plain semaphore lets it, and under sustained load
    an unlucky request could wait indefinitely).
    """

    def __init__(self, size: int):
        if size < 1:
            raise errors.InvalidArgument(f"--rest_api_num_threads must be at least 1, got {size}")
        self.size = size
        self.busy = 0
        self.waiting = 0
        self._next_ticket = 0
        self._next_served = 0
        self._free = threading.Condition()

    def __enter__(self):
        with self._free:
            ticket = self._next_ticket
            self._next_ticket += 1
            self.waiting += 1
            while self.busy >= self.size or ticket != self._next_served:
                self._free.wait()
            self._next_served += 1
            self.waiting -= 1
            self.busy += 1
            self._free.notify_all()  # the next ticket may fit too

    def __exit__(self, *exc_info):
        with self._free:
            self.busy -= 1
            self._free.notify_all()


class _HttpServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class RestServer:
    """The HTTP server, on its own thread.

    Args:
      api: the `RestApi`.
      port: where to listen.
      max_body_bytes: largest request body (RESOURCE_EXHAUSTED, HTTP 429, beyond).
      cors: answer with CORS headers.
      host: address to listen on.
      idle_timeout: seconds a connection may stay silent before it is closed (None: forever).
      num_threads: `--rest_api_num_threads`, how many requests are processed (JSON parsed, signature
        run, answer encoded) at once; connections are not limited, and requests beyond it wait with
        their bodies read. It bounds the memory of parsing: a predict body's inputs array is read in
        chunks (about twice the body at most, `json_reader.parse_predict_document`), but a body read
        whole takes up to ~26 times its size as Python objects, so the peak is up to num_threads x 26
        x the largest body, plus the raw bodies of the requests waiting (each at most
        `max_body_bytes`). Requests are served in arrival order; waiting has no time limit of its own
        (every request ahead ends within its own deadline).
    """

    def __init__(self, api: RestApi, port: int, max_body_bytes: int, cors: bool = False,
                 host: str = "0.0.0.0", idle_timeout: Optional[float] = None, *, num_threads: int):
        workers = WorkerSlots(num_threads)  # fails before the port is bound
        self._httpd = _HttpServer((host, port), _Handler)
        self._httpd.workers = workers
        self._httpd.api = api
        self._httpd.max_body_bytes = max_body_bytes
        self._httpd.cors = cors
        self._httpd.idle_timeout = idle_timeout
        # `shutdown` waits for the loop to look at its flag, once per poll interval: 0.5 s by default, which every
        # stop of the server paid; 0.05 s costs an idle server 20 wakeups a second.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="rest_api", daemon=True)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def workers(self) -> WorkerSlots:
        return self._httpd.workers

    def start(self):
        self._thread.start()

    def stop(self):
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
