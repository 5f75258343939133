"""The one error hierarchy of the model server, and its one mapping to gRPC and HTTP.

Every failure the server can report is a `ServingError` subclass named after the canonical
status code it stands for (the codes TensorFlow, gRPC and TF Serving share: `InvalidArgument`
is code 3 everywhere). Code below the servicers raises these; nothing else chooses a status.
`to_serving_error` turns any exception (a TensorFlow `OpError` raised inside a signature, a
`MemoryError`, a bug) into one, and `grpc_status` / `http_status` are the only places that
translate a code to the wire. The HTTP table is TF Serving's (`http_server.cc`,
`ToHTTPStatusCode`), so REST clients see the codes they would see from `tensorflow_model_server`.
"""

import enum

# TF Serving truncates error messages longer than this before putting them on the wire
# (`grpc_status_util.cc`), so a huge TensorFlow error never becomes a huge trailer.
MAX_MESSAGE_CHARS = 1024
TRUNCATED_SUFFIX = "...TRUNCATED"


class Code(enum.IntEnum):
    """Canonical status codes (`tensorflow/core/protobuf/error_codes.proto`, `grpc::StatusCode`)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


# TF Serving's mapping from status code to HTTP status (`http_server.cc`).
_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}


class ServingError(Exception):
    """A failure with a canonical status code and a message for the client."""

    code = Code.UNKNOWN

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __repr__(self):
        return f"{type(self).__name__}({self.message!r})"


class Cancelled(ServingError):
    code = Code.CANCELLED


class Unknown(ServingError):
    code = Code.UNKNOWN


class InvalidArgument(ServingError):
    code = Code.INVALID_ARGUMENT


class DeadlineExceeded(ServingError):
    code = Code.DEADLINE_EXCEEDED


class NotFound(ServingError):
    code = Code.NOT_FOUND


class AlreadyExists(ServingError):
    code = Code.ALREADY_EXISTS


class PermissionDenied(ServingError):
    code = Code.PERMISSION_DENIED


class ResourceExhausted(ServingError):
    code = Code.RESOURCE_EXHAUSTED


class FailedPrecondition(ServingError):
    code = Code.FAILED_PRECONDITION


class Aborted(ServingError):
    code = Code.ABORTED


class OutOfRange(ServingError):
    code = Code.OUT_OF_RANGE


class Unimplemented(ServingError):
    code = Code.UNIMPLEMENTED


class Internal(ServingError):
    code = Code.INTERNAL


class Unavailable(ServingError):
    code = Code.UNAVAILABLE


class DataLoss(ServingError):
    code = Code.DATA_LOSS


class Unauthenticated(ServingError):
    code = Code.UNAUTHENTICATED


_CLASS_BY_CODE = {cls.code: cls for cls in ServingError.__subclasses__()}


def error_for_code(code: int, message: str) -> ServingError:
    """Builds the `ServingError` subclass for a numeric canonical code."""
    try:
        return _CLASS_BY_CODE[Code(code)](message)
    except (ValueError, KeyError):
        return Unknown(message)


def to_serving_error(exc: BaseException) -> ServingError:
    """Maps any exception raised while handling a request to a `ServingError`.

    TensorFlow's `OpError`s (for instance a failed `tf.debugging.assert_*` inside a signature, or
    a dtype the graph does not accept) carry the same canonical code TF Serving would return, so
    their code is kept. They are recognised by duck typing so that this module does not import
    TensorFlow.
    """
    if isinstance(exc, ServingError):
        return exc
    error_code = getattr(exc, "error_code", None)
    if isinstance(error_code, int) and type(exc).__module__.startswith("tensorflow"):
        return error_for_code(error_code, getattr(exc, "message", None) or str(exc))
    if isinstance(exc, MemoryError):
        return ResourceExhausted("Out of memory while processing the request")
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded(str(exc) or "Deadline exceeded")
    return Internal(f"{type(exc).__name__}: {exc}")


def wire_message(error: ServingError) -> str:
    """The message as TF Serving puts it on the wire: truncated to 1024 characters."""
    message = error.message
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[:MAX_MESSAGE_CHARS] + TRUNCATED_SUFFIX
    return message


def http_status(code: int) -> int:
    """The HTTP status TF Serving answers for a canonical code."""
    try:
        return _HTTP_STATUS[Code(code)]
    except (ValueError, KeyError):
        return 500


def grpc_status(code: int):
    """The `grpc.StatusCode` for a canonical code (imported lazily: the client needs no server)."""
    import grpc  # pylint: disable=import-outside-toplevel

    for status in grpc.StatusCode:
        if status.value[0] == int(code):
            return status
    return grpc.StatusCode.UNKNOWN


def code_name(code: int) -> str:
    """`INVALID_ARGUMENT` for 3: the name `tensorflow.error.Code` uses (and JSON prints)."""
    try:
        return Code(code).name
    except ValueError:
        return "UNKNOWN"
