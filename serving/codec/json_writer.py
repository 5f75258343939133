"""Tensors and results -> REST JSON, written as TF Serving writes it (`util/json_tensor.cc`, rapidjson's writer).

Floats are printed as `WriteDecimal` prints them, strings escaped as rapidjson escapes them, `*_bytes` outputs
as `{"b64": ...}`; the row format answers `{"predictions": ...}`, the columnar `{"outputs": ...}`.
"""

import base64
import json
import math
import re

import numpy as np

from serving import errors

# The two formats of a predict request; the answer takes the request's.
ROW_FORMAT = "row"
COLUMNAR_FORMAT = "columnar"

# rapidjson's Writer escapes control characters as \u00XX with upper-case hex digits; Python's json, lower-case.
_LOWER_HEX_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([01][a-f])")


def _upper_hex_escapes(text: str) -> str:
    """JSON text with Python's `\\u00xx` escapes spelled as rapidjson spells them."""
    if "\\u00" not in text:
        return text
    return _LOWER_HEX_ESCAPE.sub(lambda m: m.group(1) + "\\u00" + m.group(2).upper(), text)


def json_string(value: str) -> str:
    """A string as rapidjson's writer quotes it (TF Serving's messages and answers): UTF-8 as is, only quote,
    backslash and control characters escaped."""
    return _upper_hex_escapes(json.dumps(value, ensure_ascii=False))


def json_value_to_string(value) -> str:
    """Renders a JSON value for an error message, pretty-printed as TF Serving does.

    At most `errors.MAX_MESSAGE_CHARS` characters are rendered: no more reach the wire, and
    rendering a whole request body would take time and memory many times its size.
    """
    if isinstance(value, float):
        return format_decimal(value, np.float64)
    chunks, size = [], 0
    for chunk in json.JSONEncoder(indent=4, ensure_ascii=False).iterencode(value):
        chunks.append(chunk)
        size += len(chunk)
        if size > errors.MAX_MESSAGE_CHARS:
            break
    return _upper_hex_escapes("".join(chunks)[:errors.MAX_MESSAGE_CHARS])


def format_decimal(value, np_type) -> str:
    """A float as TF Serving writes it (`WriteDecimal`).

    Six significant digits (`%g`) unless that does not round-trip in the tensor's own precision,
    then full precision; whole numbers get a trailing `.0` so that JSON readers keep them floats;
    NaN and infinities are written as rapidjson does.
    """
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = "%g" % value
    if np_type(float(text)) != np_type(value):
        text = "%.*g" % (9 if np_type == np.float32 else 17, value)
    if "." not in text and "e" not in text and "n" not in text:
        text += ".0"
    return text


def _decimal_texts(array: np.ndarray) -> list:
    """`format_decimal` of every element of a float array, flat in C order, formatted all at once.

    The same text as `format_decimal` element by element (a test holds them equal), at a fraction of the cost:
    one C-level `%g` over the whole tuple of values, one vectorized round-trip check in the array's precision
    (float16 is written as float32, as TF Serving does), and full precision only where `%g` loses the value.
    """
    np_type = np.float64 if array.dtype.type == np.float64 else np.float32  # any byte order
    with np.errstate(invalid="ignore"):  # a signalling NaN widens quietly
        flat = np.asarray(array, np.float64).ravel()
    values = flat.tolist()
    if not values:
        return []
    texts = ("%g\n" * len(values) % tuple(values)).split("\n")
    texts.pop()
    finite = np.isfinite(flat)
    with np.errstate(over="ignore", invalid="ignore"):
        lossy = finite & (np.array(texts, np.float64).astype(np_type) != flat.astype(np_type))
    precise = "%.9g" if np_type == np.float32 else "%.17g"
    for i in np.flatnonzero(lossy).tolist():
        texts[i] = precise % values[i]
    # Whole numbers keep a trailing ".0"; "inf" and "nan" contain an "n" and are replaced below.
    texts = [t if ("." in t or "e" in t or "n" in t) else t + ".0" for t in texts]
    for i in np.flatnonzero(~finite).tolist():
        value = values[i]
        texts[i] = "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    return texts


def _string_text(value, as_bytes: bool) -> str:
    """One element of a string tensor: base64 in `{"b64": ...}` for `*_bytes` outputs, else a JSON string."""
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
    if as_bytes:
        return '{"b64": "%s"}' % base64.b64encode(raw).decode("ascii")
    # Bytes that are not UTF-8 go out as they are, as rapidjson's writer (no encoding check) sends them.
    return json_string(raw.decode("utf-8", "surrogateescape"))


def _leaf_texts(array: np.ndarray, as_bytes: bool) -> list:
    """The JSON text of every element of `array`, flat in C order (`WriteDecimal` and friends)."""
    kind = array.dtype.type
    if kind in (np.float16, np.float32, np.float64):
        return _decimal_texts(array)
    if kind == np.bool_:
        return ["true" if v else "false" for v in array.ravel().tolist()]
    if array.dtype == object:
        return [_string_text(v, as_bytes) for v in array.ravel()]
    if kind in (np.complex64, np.complex128) and array.size:
        raise errors.InvalidArgument(
            f"Failed to write JSON value for tensor type: {'complex64' if kind == np.complex64 else 'complex128'}")
    return [str(int(v)) for v in array.ravel().tolist()]


def _nest(texts: list, shape: tuple) -> str:
    """Leaf texts (flat, C order) as the nested JSON array of `shape`."""
    if not shape:
        return texts[0]
    if len(shape) == 1:
        return "[" + ", ".join(texts) + "]"
    step = len(texts) // shape[0] if shape[0] else 0
    return "[" + ", ".join(_nest(texts[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"


def _write_nested(array, as_bytes: bool) -> str:
    """One tensor as a JSON value: a scalar, or nested arrays of its elements."""
    return _nest(_leaf_texts(array, as_bytes), array.shape)


def _row_texts(array: np.ndarray, name: str) -> list:
    """The JSON value of each row (index along the batch dimension 0) of a row-format output."""
    texts = _leaf_texts(array, _is_bytes_output(name, array))
    if array.ndim == 1:
        return texts  # a row is one element: no slice and call per row
    step = len(texts) // array.shape[0] if array.shape[0] else 0
    return [_nest(texts[i * step:(i + 1) * step], array.shape[1:]) for i in range(array.shape[0])]


def _is_bytes_output(name: str, array: np.ndarray) -> bool:
    # TF Serving's convention (borrowed from CMLE): string outputs named *_bytes are binary.
    return array.dtype == object and name.endswith("_bytes")


def arrays_to_predict_json(outputs: dict, fmt: str) -> str:
    """A REST predict answer: `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar).

    In the row format every output must share the 0th (batch) dimension and each row lists the
    outputs of one instance; with one output a row is that output's value, with several it is an
    object keyed by output name.
    """
    if not outputs:
        raise errors.InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if fmt == COLUMNAR_FORMAT:
        if len(names) == 1:
            body = _write_nested(outputs[names[0]], _is_bytes_output(names[0], outputs[names[0]]))
        else:
            body = "{" + ", ".join(
                f"{json.dumps(n)}: {_write_nested(outputs[n], _is_bytes_output(n, outputs[n]))}"
                for n in names) + "}"
        return '{"outputs": ' + body + "}"
    if fmt != ROW_FORMAT:
        raise errors.InvalidArgument("Invalid request format")
    batch_size = -1
    for name in names:
        array = outputs[name]
        if array.ndim == 0:
            raise errors.InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch_size >= 0 and array.shape[0] != batch_size:
            raise errors.InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: "
                f"{batch_size}")
        batch_size = array.shape[0]
    columns = [_row_texts(outputs[n], n) for n in names]
    if len(names) == 1:
        rows = columns[0]
    else:
        keys = [json.dumps(n) + ": " for n in names]
        rows = ["{" + ", ".join(key + column[i] for key, column in zip(keys, columns)) + "}"
                for i in range(batch_size)]
    return '{"predictions": [' + ", ".join(rows) + "]}"


def classification_result_to_json(result) -> str:
    """`{"results": [[[label, score], ...], ...]}`, one list of classes per example."""
    if not result.classifications:
        raise errors.InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        rows.append("[" + ", ".join(
            f"[{json_string(c.label)}, {format_decimal(c.score, np.float32)}]"
            for c in classifications.classes) + "]")
    return '{"results": [' + ", ".join(rows) + "]}"


def regression_result_to_json(result) -> str:
    """`{"results": [value, ...]}`, one value per example."""
    if not result.regressions:
        raise errors.InvalidArgument("Cannot convert empty RegressionResults to JSON")
    return '{"results": [' + ", ".join(
        format_decimal(r.value, np.float32) for r in result.regressions) + "]}"


def error_to_json(message: str) -> str:
    """TF Serving's REST error body, as its `MakeJsonFromStatus` writes it (rapidjson's PrettyWriter)."""
    return '{\n    "error": ' + json_string(message) + "\n}"


def status_response_to_json(response) -> str:
    """GetModelStatusResponse as REST JSON (the proto's own snake_case json names)."""
    from google.protobuf import json_format  # pylint: disable=import-outside-toplevel
    return json_format.MessageToJson(response, always_print_fields_with_no_presence=True)


def metadata_response_to_json(response) -> str:
    """GetModelMetadataResponse as REST JSON, shaped as TF Serving writes it.

    TF Serving prints `model_spec` and the unpacked `SignatureDefMap` separately (field names
    preserved, default values printed) and joins them as
    `{"model_spec": ..., "metadata": {"signature_def": ...}}`.
    """
    from google.protobuf import json_format  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import get_model_metadata_pb2  # pylint: disable=import-outside-toplevel

    if "signature_def" not in response.metadata:
        raise errors.Internal(
            "Failed to find 'signature_def' key in the GetModelMetadataResponse metadata map.")
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signature_defs):
        raise errors.Internal("Failed to unpack 'Any' object to 'SignatureDefMap'.")
    options = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    model_spec = json_format.MessageToJson(response.model_spec, **options)
    signature_def = json_format.MessageToJson(signature_defs, **options)
    return ('{\n"model_spec":' + model_spec + ',\n"metadata": {"signature_def": ' + signature_def
            + "}\n}\n")
