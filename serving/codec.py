"""Conversions between wire formats and numpy: TensorProto, TF Serving's REST JSON, tf.Example.

Everything here is pure data conversion; it knows nothing about models or servers. The rules
(and the error messages) follow TF Serving: `Tensor::FromProto` for TensorProtos,
`util/json_tensor.cc` for the REST API's row (`instances`) and columnar (`inputs`) formats,
`{"b64": ...}` strings, the way floats are printed, and `servables/tensorflow/util.cc` for turning
a Classify/Regress `Input` into a batch of serialized `tf.Example`s.
"""

import base64
import binascii
import json
import math
import re

import numpy as np
import orjson

from serving import errors

# Protobuf modules are imported lazily: importing them imports TensorFlow, and the pure-JSON
# helpers here are used by tests and tools that should not pay for it.


def _types_pb2():
    from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
    return types_pb2


# DataType enum value -> (numpy dtype, TensorProto repeated field, TF's short type name).
# Enum values are those of `tensorflow/core/framework/types.proto`.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_COMPLEX64, DT_INT64, DT_BOOL, DT_UINT16, DT_COMPLEX128, DT_HALF = 8, 9, 10, 17, 18, 19
DT_UINT32, DT_UINT64 = 22, 23

_DTYPES = {
    DT_FLOAT: (np.float32, "float_val", "float"),
    DT_DOUBLE: (np.float64, "double_val", "double"),
    DT_INT32: (np.int32, "int_val", "int32"),
    DT_UINT8: (np.uint8, "int_val", "uint8"),
    DT_INT16: (np.int16, "int_val", "int16"),
    DT_INT8: (np.int8, "int_val", "int8"),
    DT_UINT16: (np.uint16, "int_val", "uint16"),
    DT_STRING: (object, "string_val", "string"),
    DT_COMPLEX64: (np.complex64, "scomplex_val", "complex64"),
    DT_COMPLEX128: (np.complex128, "dcomplex_val", "complex128"),
    DT_INT64: (np.int64, "int64_val", "int64"),
    DT_BOOL: (np.bool_, "bool_val", "bool"),
    DT_HALF: (np.float16, "half_val", "half"),
    DT_UINT32: (np.uint32, "uint32_val", "uint32"),
    DT_UINT64: (np.uint64, "uint64_val", "uint64"),
}

_NUMPY_TO_DT = {np.dtype(np_type): dt for dt, (np_type, _, _) in _DTYPES.items() if np_type is not object}


def dtype_name(dtype: int) -> str:
    """TF's `DataTypeString`: `float` for DT_FLOAT; unknown enums print their enum name."""
    if dtype in _DTYPES:
        return _DTYPES[dtype][2]
    try:
        return _types_pb2().DataType.Name(dtype)
    except ValueError:
        return f"unknown dtype {dtype}"


def numpy_dtype(dtype: int):
    """The numpy dtype holding a TensorFlow DataType (`object` for strings)."""
    if dtype not in _DTYPES:
        raise errors.Unimplemented(f"Tensor type {dtype_name(dtype)} is not supported")
    return _DTYPES[dtype][0]


def datatype_of(array: np.ndarray) -> int:
    """The TensorFlow DataType for a numpy array (bytes/str/object arrays are DT_STRING)."""
    if array.dtype.kind in ("O", "S", "U"):
        return DT_STRING
    try:
        return _NUMPY_TO_DT[array.dtype]
    except KeyError:
        raise errors.InvalidArgument(f"numpy dtype {array.dtype} has no TensorFlow equivalent") from None


# numpy arrays have at most 64 dimensions (TensorFlow allows 254); deeper input is refused.
MAX_RANK = 64


def _check_rank(rank: int, what: str):
    if rank > MAX_RANK:
        raise errors.InvalidArgument(
            f"{what} has {rank} dimensions; this server supports at most {MAX_RANK}")


# --------------------------------------------------------------------------------------------
# TensorProto <-> numpy
# --------------------------------------------------------------------------------------------

def tensor_proto_to_ndarray(proto, alias: str = "", max_bytes: int = 0) -> np.ndarray:
    """Decodes a TensorProto like `Tensor::FromProto`, or raises InvalidArgument.

    As in TensorFlow, a typed `*_val` field with fewer values than the shape holds is padded
    with its last value (a single value fills the tensor) and an empty one means zeros. Because
    a tiny proto can thus declare a huge tensor, `max_bytes` (if positive) bounds the decoded size
    so that a request can never make the server allocate more than that.

    Args:
      proto: a `tensorflow.TensorProto`.
      alias: the input's name, for the error message.
      max_bytes: largest decoded size in bytes, 0 for no limit.

    Returns:
      The array, shaped as the proto says (`object` dtype of `bytes` for DT_STRING).
    """
    parse_error = errors.InvalidArgument(f"tensor parsing error: {alias}")
    if proto.dtype not in _DTYPES:
        raise parse_error
    np_type, field, _ = _DTYPES[proto.dtype]
    if proto.tensor_shape.unknown_rank:
        raise parse_error
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise parse_error
    _check_rank(len(shape), f"Input {alias}")
    itemsize = 8 if np_type is object else np.dtype(np_type).itemsize
    if math.prod(size for size in shape if size) * itemsize >= 2 ** 63:
        # Empty (a zero dimension) yet nominally larger than memory: TensorFlow's shape
        # arithmetic overflows on such shapes, and numpy refuses them.
        raise parse_error
    num_elements = math.prod(shape)
    if max_bytes and num_elements * itemsize > max_bytes:
        raise errors.ResourceExhausted(
            f"Input {alias} of shape {shape} needs {num_elements * itemsize} bytes, more than the "
            f"server limit --max_tensor_bytes={max_bytes}")
    if proto.tensor_content:
        if np_type is object:
            raise parse_error
        if len(proto.tensor_content) != num_elements * np.dtype(np_type).itemsize:
            raise parse_error
        return np.frombuffer(proto.tensor_content, dtype=np_type).reshape(shape).copy()
    values = getattr(proto, field)
    if proto.dtype in (DT_COMPLEX64, DT_COMPLEX128):
        if len(values) % 2:
            raise parse_error
        # The repeated field interleaves real and imaginary parts, which is numpy's layout.
        part = np.float32 if proto.dtype == DT_COMPLEX64 else np.float64
        flat = np.asarray(values, part).view(np_type)
    elif proto.dtype == DT_HALF:
        flat = np.asarray(values, np.uint16).view(np.float16)
    elif np_type is object:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        flat = np.asarray(values)
    count = len(flat)
    if count > num_elements:
        raise parse_error
    if count == num_elements:
        return flat.astype(np_type, copy=False).reshape(shape)
    if np_type is object:
        out = np.empty(num_elements, dtype=object)
        out[:] = [flat[-1] if count else b""] * num_elements
        out[:count] = flat
        return out.reshape(shape)
    out = np.full(num_elements, flat[-1] if count else 0, dtype=np_type)
    out[:count] = flat
    return out.reshape(shape)


def ndarray_to_tensor_proto(array, use_tensor_content: bool = False):
    """Encodes an array as a TensorProto.

    The server answers with typed `*_val` fields, as TF Serving's Predict does
    (`AsProtoField`), or with `tensor_content` under `--enable_serialization_as_tensor_content`;
    clients send numeric tensors as `tensor_content`, which is compact and fast, as
    `tf.make_tensor_proto` does. Strings always go in `string_val`.
    """
    from tensorflow.core.framework import tensor_pb2  # pylint: disable=import-outside-toplevel

    array = np.asarray(array)
    dtype = datatype_of(array)
    proto = tensor_pb2.TensorProto(dtype=dtype)
    for size in array.shape:
        proto.tensor_shape.dim.add().size = size
    if dtype == DT_STRING:
        proto.string_val.extend(
            v if isinstance(v, bytes) else str(v).encode("utf-8") for v in array.ravel())
    elif use_tensor_content:
        proto.tensor_content = np.ascontiguousarray(array).tobytes()
    elif dtype == DT_HALF:
        proto.half_val.extend(array.ravel().view(np.uint16).tolist())
    elif dtype in (DT_COMPLEX64, DT_COMPLEX128):
        flat = array.ravel()
        interleaved = np.empty(2 * flat.size, dtype=np.float64)
        interleaved[0::2], interleaved[1::2] = flat.real, flat.imag
        getattr(proto, _DTYPES[dtype][1]).extend(interleaved.tolist())
    else:
        getattr(proto, _DTYPES[dtype][1]).extend(array.ravel().tolist())
    return proto


# --------------------------------------------------------------------------------------------
# tf.Example inputs of Classify / Regress / MultiInference
# --------------------------------------------------------------------------------------------

def input_to_serialized_examples(input_proto) -> np.ndarray:
    """A `tensorflow.serving.Input` as the 1-D string tensor of serialized `tf.Example`s.

    With `example_list_with_context`, each example is the serialized context followed by the
    serialized example: protobuf merges concatenated messages, so the model sees the context's
    features joined with the example's own (`InputToSerializedExampleTensor` in TF Serving).
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        serialized = [ex.SerializeToString() for ex in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        serialized = [context + ex.SerializeToString()
                      for ex in input_proto.example_list_with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise errors.InvalidArgument("Input is empty.")
    out = np.empty(len(serialized), dtype=object)
    out[:] = serialized
    return out


# --------------------------------------------------------------------------------------------
# REST JSON: parsing
# --------------------------------------------------------------------------------------------

ROW_FORMAT = "row"
COLUMNAR_FORMAT = "columnar"

_PARSE_ERRORS = {
    # Python's json messages -> rapidjson's (GetParseError_En), which TF Serving reports.
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Expecting ',' delimiter": "Missing a comma or '}' after an object member.",
    "Extra data": "The document root must not be followed by other values.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid control character at": "Invalid encoding in string.",
    "Invalid \\escape": "Invalid escape character in string.",
}


# A `\uD800`-`\uDFFF` escape: a backslash run of odd length, so not an escaped backslash + text.
_SURROGATE_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u([dD][89a-fA-F][0-9a-fA-F]{2})")


_UTF8_BOM = b"\xef\xbb\xbf"
_HUGE_INTEGER = re.compile(r"-?\d{4301,}")
# The body's number skeleton: every digit as "0", "E" as "e", "+" dropped, and whatever may stand just before a
# number ("[", ",", ":", "-", whitespace) as ",". Skeleton searches are substring searches (tens of ms for 15 MiB);
# the regular expressions they replace took 0.6 s there (a `[0-9]{300}` tries 300 digits from every digit).
_SKELETON = bytes.maketrans(b"0123456789E[:-\t\n\r ", b"0000000000e,,,,,,,")
# In a skeleton: an integer literal of 19 digits or more, beyond what orjson keeps as an integer (it makes those
# below -2**63 or from 2**64 floats, where json keeps Python ints); a three-digit exponent or 300 digits in a row,
# where a number beyond double range may be.
_WIDE_INTEGER = b"," + b"0" * 19
_THREE_DIGIT_EXPONENT = b"e000"
_LONG_DIGIT_RUN = b"0" * 300


def _skeleton(raw: bytes) -> bytes:
    return (b"," + raw).translate(_SKELETON, b"+")


# A JSON number literal (for finding where an overflowing one starts).
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
# rapidjson's kParseNanAndInfFlag also reads Inf, -Inf and -NaN, which Python's json does not; a body the json module
# refuses that holds one is read again with them spelled as json spells them (`_parse_with_rapidjson_constants`).
_RAPIDJSON_ONLY_CONSTANT = re.compile(r"-NaN|Inf(?!inity)")
_STRING_OR_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|-NaN|-?Inf(?!i)')
_JSON_SPELLING = {"-NaN": "NaN", "Inf": "Infinity", "-Inf": "-Infinity"}


class _NumberTooBig(Exception):
    def __init__(self, literal: str):
        super().__init__(literal)
        self.literal = literal


def _parse_float(literal: str) -> float:
    """A number with a fraction or exponent; rapidjson refuses one beyond double range (1e999999), where
    Python's float() would return inf. NaN and Infinity are constants and do not come here."""
    value = float(literal)
    if math.isinf(value):
        raise _NumberTooBig(literal)
    return value


def _parse_int(literal: str) -> int:
    """An integer literal; rapidjson stores one beyond 64 bits as a double, and refuses it beyond double
    range."""
    value = int(literal)
    if abs(value) >= 2 ** 64 and math.isinf(float(literal)):
        raise _NumberTooBig(literal)
    return value


def _byte_offset(text: str, index: int) -> int:
    """rapidjson reports offsets in bytes of the UTF-8 body (bytes that are not UTF-8 count one each)."""
    return len(text[:index].encode("utf-8", "surrogateescape"))


def text_bytes(value: str) -> bytes:
    """The bytes a string of a REST body stood for: its UTF-8, with the body's bytes that are not UTF-8 (held as
    lone surrogates, see `parse_json_document`) given back as they came."""
    return value.encode("utf-8", "surrogateescape")


def proto_text(value: str) -> str:
    """A string of a REST body as a protobuf string field can hold it: bytes that are not UTF-8 become U+FFFD
    (TF Serving's C++ protos keep them; a name holding them matches nothing either way)."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# rapidjson's Writer escapes control characters as \u00XX with upper-case hex digits; Python's json, lower-case.
_LOWER_HEX_ESCAPE = re.compile(r"(?<!\\)((?:\\\\)*)\\u00([01][a-f])")


def _upper_hex_escapes(text: str) -> str:
    if "\\u00" not in text:
        return text
    return _LOWER_HEX_ESCAPE.sub(lambda m: m.group(1) + "\\u00" + m.group(2).upper(), text)


def json_string(value: str) -> str:
    """A string as rapidjson's writer quotes it (TF Serving's messages and answers): UTF-8 as is, only quote,
    backslash and control characters escaped."""
    return _upper_hex_escapes(json.dumps(value, ensure_ascii=False))


def _check_surrogate_escapes(text: str, base: int = 0):
    """Refuses unpaired surrogate escapes, which rapidjson refuses and Python's json accepts.

    Accepted, a lone `"\\ud800"` becomes a string that no UTF-8 codec encodes, and the request
    fails later as an internal error.
    """
    def invalid(index):
        return errors.InvalidArgument(
            "JSON Parse error: The surrogate pair in string is invalid. at offset: "
            f"{base + _byte_offset(text, index)}")

    if "\\u" not in text:
        return
    high = None  # (start, end) of a high-surrogate escape still waiting for its low half.
    for match in _SURROGATE_ESCAPE.finditer(text):
        start, code = match.end() - 6, int(match.group(1), 16)
        if high is not None and code >= 0xDC00 and start == high[1]:
            high = None
        elif high is not None or code >= 0xDC00:
            raise invalid(high[0] if high is not None else start)
        else:
            high = (start, match.end())
    if high is not None:
        raise invalid(high[0])


def parse_json_document(body) -> dict:
    """Parses a REST request body (bytes or str); like TF Serving it must be one JSON object.

    NaN, (-)Infinity, (-)Inf and -NaN are accepted, as rapidjson's `kParseNanAndInfFlag` does; a number literal
    beyond double range (1e999999) is refused, as rapidjson refuses it. orjson reads the body when it reads it as
    the json module does (about 5x faster on a large body of numbers): it refuses NaN, Infinity, numbers beyond
    double range, unpaired surrogate escapes, invalid UTF-8 and nesting deeper than 1,023, and those bodies go to
    the json module, whose errors are mapped to rapidjson's messages and offsets; it reads integer literals beyond
    64 bits as floats, so a body that may hold one (19 digits or more) goes there too.
    """
    if isinstance(body, bytearray):
        body = bytes(body)
    if not body:
        raise errors.InvalidArgument("JSON Parse error: The document is empty")
    # rapidjson's UTF-8 input stream skips a byte order mark (Windows tools write one); its offsets still count it.
    bom = 0  # bytes before `body`
    if body[:3] == _UTF8_BOM or body[:1] == "\ufeff":
        body, bom = body[3:] if isinstance(body, bytes) else body[1:], 3
    skeleton = _skeleton(body if isinstance(body, bytes) else body.encode("utf-8", "surrogatepass"))
    doc = None
    if _WIDE_INTEGER not in skeleton:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    if doc is None:  # a JSON null body is not an object either way: the json module says so
        doc = _parse_with_json(body, skeleton, bom)
    if not isinstance(doc, dict):
        raise errors.InvalidArgument(f"JSON Value: {json_value_to_string(doc)} Is not object")
    return doc


def _parse_with_json(body, skeleton: bytes, base: int = 0):
    """The json module's reading of a body orjson did not take, its errors as rapidjson's (offsets from `base`,
    the bytes before `body`).

    Bytes that are not UTF-8 are kept: TF Serving's parser does not validate the encoding (no
    `kParseValidateEncodingFlag`), so a Latin-1 byte inside a string reaches the model as it came. They are read
    as lone surrogates (`surrogateescape`; `text_bytes` gives them back) and, outside a string, fail as rapidjson
    fails there ("Invalid value.").
    """
    if isinstance(body, bytes):
        body = body.decode("utf-8", "surrogateescape")
    try:
        # Checking every number costs a Python call each, so only bodies that may hold a huge one pay it.
        maybe_huge = _THREE_DIGIT_EXPONENT in skeleton or _LONG_DIGIT_RUN in skeleton
        doc = (json.loads(body, parse_float=_parse_float, parse_int=_parse_int) if maybe_huge
               else json.loads(body))
    except _NumberTooBig as exc:
        start = next((m.start() for m in _NUMBER.finditer(body) if m.group(0) == exc.literal), 0)
        raise errors.InvalidArgument(
            "JSON Parse error: Number too big to be stored in double. at offset: "
            f"{base + _byte_offset(body, start)}") from None
    except json.JSONDecodeError as exc:
        doc = _parse_with_rapidjson_constants(body, base)
        if doc is not None:
            return doc
        reason = _PARSE_ERRORS.get(exc.msg, "Invalid value.")
        if exc.pos == len(body) and not body.strip(" \t\n\r"):
            reason = "The document is empty."  # only whitespace (or a byte order mark)
        raise errors.InvalidArgument(
            f"JSON Parse error: {reason} at offset: {base + _byte_offset(body, exc.pos)}") from None
    except RecursionError:
        raise errors.InvalidArgument("JSON Parse error: The document is nested too deeply") from None
    except ValueError:
        # Python refuses integer literals of more than 4300 digits (CVE-2020-10735).
        match = _HUGE_INTEGER.search(body)
        raise errors.InvalidArgument(
            "JSON Parse error: Number too big to be stored in double. at offset: "
            f"{base + _byte_offset(body, match.start() if match else 0)}") from None
    _check_surrogate_escapes(body, base)
    return doc


def _parse_with_rapidjson_constants(body: str, base: int):
    """A body the json module refused, read again with rapidjson's own constants (Inf, -Inf, -NaN outside strings)
    spelled as json spells them; None if it has none or still does not parse (the caller then reports the error
    at the body's own offsets). Only refused bodies pay for the rewrite."""
    if not _RAPIDJSON_ONLY_CONSTANT.search(body):
        return None
    spelled = _STRING_OR_CONSTANT.sub(lambda m: _JSON_SPELLING.get(m.group(0), m.group(0)), body)
    if spelled == body:
        return None
    spelled_bytes = spelled.encode("utf-8", "surrogateescape")
    try:
        return _parse_with_json(spelled_bytes, _skeleton(spelled_bytes), base)
    except errors.InvalidArgument:
        return None


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


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64_object(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _decode_b64(value) -> bytes:
    if not _is_b64_object(value):
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:
        # absl accepts both the standard and the URL-safe alphabets, with or without padding.
        alt = text.replace("-", "+").replace("_", "/")
        return base64.b64decode(alt + "=" * (-len(alt) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise errors.InvalidArgument("Unable to base64 decode") from None


def _type_error(value, dtype) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        f"JSON Value: {json_value_to_string(value)} Type: {_json_type(value)} is not of expected "
        f"type: {dtype_name(dtype)}")


_FLOAT_MAX_INT = {DT_FLOAT: (1 << 24) - 1, DT_DOUBLE: (1 << 53) - 1}
_FLOAT_LIMIT = {DT_FLOAT: float(np.finfo(np.float32).max), DT_DOUBLE: float(np.finfo(np.float64).max)}
_INT_RANGE = {
    DT_INT32: (-2**31, 2**31 - 1), DT_INT16: (-2**31, 2**31 - 1), DT_INT8: (-2**31, 2**31 - 1),
    DT_UINT8: (-2**31, 2**31 - 1), DT_INT64: (-2**63, 2**63 - 1), DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
}


def _json_scalar(value, dtype):
    """One leaf of a JSON tensor, checked like `AddValueToTensor` in TF Serving."""
    if isinstance(value, dict):
        if dtype == DT_STRING:
            return _decode_b64(value)
        raise _type_error(value, dtype)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        target = "float" if dtype == DT_FLOAT else "double"
        if isinstance(value, int):
            if abs(value) > _FLOAT_MAX_INT[dtype]:
                raise errors.InvalidArgument(
                    f"Cannot convert JSON value: {value} to {target} without loss of precision.")
        elif math.isfinite(value) and abs(value) > _FLOAT_LIMIT[dtype]:
            raise errors.InvalidArgument(
                f"Cannot convert JSON value: {json_value_to_string(value)} to {target} without "
                "loss of precision.")
        return value
    if dtype in _INT_RANGE:
        low, high = _INT_RANGE[dtype]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _type_error(value, dtype)
        return value
    if dtype == DT_STRING:
        if not isinstance(value, str):
            raise _type_error(value, dtype)
        return text_bytes(value)
    if dtype == DT_BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, dtype)
        return value
    raise errors.Unimplemented(
        f"Conversion of JSON Value: {json_value_to_string(value)} to type: {dtype_name(dtype)}")


def _dense_shape(value) -> list:
    """The shape of a nested list, read off its first elements (`GetDenseTensorShape`)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, level, shape, dtype, out):
    """Walks a nested list, checking it is dense with `shape` (`FillTensorProto`)."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise errors.InvalidArgument(
                f"JSON Value: {json_value_to_string(value)} found at incorrect level: {level + 1} "
                f"in the JSON DOM. Expected at level: {rank}")
        out.append(_json_scalar(value, dtype))
        return
    if level >= rank:
        raise errors.InvalidArgument(
            f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise errors.InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: "
            f"{shape[level]}")
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _plain_decimals(value, dtype: int, shape: list):
    """`value` as a float or double array when it is dense with `shape` and every leaf is a JSON number that
    converts without loss (what `_fill` would accept), checked in bulk; None otherwise, for `_fill` to walk.

    About a tenth of `_fill`'s time per number: numpy builds the nested lists into an object array in C, the
    leaves' types are one set, the range checks are vectorized, and only values beyond the integer limit are
    looked at one by one (an integer there is refused; a float is not).
    """
    try:
        leaves = np.array(value, dtype=object)
    except (ValueError, TypeError):
        return None
    if leaves.shape != tuple(shape):
        return None  # ragged, or a list where a number should be
    flat = leaves.ravel()
    if not set(map(type, flat)) <= {float, int}:
        return None  # bool, string, null, object: `_fill` names the offender
    try:
        numbers = flat.astype(np.float64)
    except OverflowError:
        return None  # an integer beyond double range
    magnitude = np.abs(numbers)
    with np.errstate(invalid="ignore"):
        if np.any(np.isfinite(numbers) & (magnitude > _FLOAT_LIMIT[dtype])):
            return None
        if any(type(flat[i]) is int for i in np.flatnonzero(magnitude > _FLOAT_MAX_INT[dtype]).tolist()):
            return None
    return numbers.astype(numpy_dtype(dtype)).reshape(shape)


def json_to_ndarray(value, dtype: int) -> np.ndarray:
    """A JSON value (scalar, nested list, b64 object) as an array of a TensorFlow dtype."""
    shape = _dense_shape(value)
    _check_rank(len(shape), "JSON Value")
    if dtype in (DT_FLOAT, DT_DOUBLE):
        array = _plain_decimals(value, dtype, shape)
        if array is not None:
            return array
    flat = []
    _fill(value, 0, shape, dtype, flat)
    np_type = numpy_dtype(dtype)
    if np_type is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if np_type in (np.int8, np.uint8, np.int16):
        # TF Serving stores these in the TensorProto's int32 `int_val`, and TensorFlow narrows it with a C
        # cast (300 is 44 as int8), as the gRPC path here does; numpy would refuse the value with an
        # OverflowError (a 500).
        return np.asarray(flat, np.int64).astype(np_type).reshape(shape)
    return np.asarray(flat, dtype=np_type).reshape(shape)


def _shape_string(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _status_string(error: errors.ServingError) -> str:
    return f"{errors.code_name(error.code)}: {error.message}"


def _instances_to_arrays(instances, input_dtypes: dict) -> dict:
    """The row format: each element of `instances` is one row of every input."""
    if not isinstance(instances[0], dict) and len(input_dtypes) > 1:
        raise errors.InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors "
            "required as per tensorinfo_map")

    def is_element_object(value):
        return isinstance(value, dict) and not _is_b64_object(value)

    objects = is_element_object(instances[0])
    # Each input converted whole, its rows the array's first axis: that holds the parsed JSON and one flat list
    # of its leaves, not one small array per row (those cost ~400 bytes per number: ~180 MiB for a 3.7 MiB
    # body). A body that fails is walked row by row below, which names the element at fault as TF Serving does;
    # the walk keeps each row's shape only, so a bad body costs no more memory than a good one.
    try:
        if not objects:
            name = next(iter(sorted(input_dtypes)))
            return {name: json_to_ndarray(instances, input_dtypes[name])}
        keys = set(input_dtypes)
        if all(is_element_object(element) and element.keys() == keys for element in instances):
            return {name: json_to_ndarray([element[name] for element in instances], dtype)
                    for name, dtype in input_dtypes.items()}
    except Exception:  # pylint: disable=broad-except -- the walk below raises what the row-by-row rules raise
        pass
    rows = {name: [] for name in input_dtypes}
    shapes = {}

    def add(item, name, index, key_in_message, keep):
        try:
            if name not in input_dtypes:
                raise errors.InvalidArgument(f"JSON object: does not have named input: {name}")
            array = json_to_ndarray(item, input_dtypes[name])
            _check_rank(array.ndim + 1, "Instance")  # Rows stack along a new batch dimension.
            if name not in shapes:
                shapes[name] = array.shape
            elif array.size != math.prod(shapes[name]):
                raise errors.InvalidArgument(
                    f"Expecting tensor size: {math.prod(shapes[name])} but got: {array.size}")
            elif array.shape != shapes[name]:
                raise errors.InvalidArgument(
                    f"Expecting shape {_shape_string(shapes[name])} but got: "
                    f"{_shape_string(array.shape)}")
        except errors.InvalidArgument as exc:
            key = f" key: {name}" if key_in_message else ""
            raise errors.InvalidArgument(
                f"Failed to process element: {index}{key} of 'instances' list. Error: "
                f"{_status_string(exc)}") from None
        if keep:
            rows[name].append(array)

    def walk(keep: bool):
        for index, element in enumerate(instances):
            if objects:
                if not is_element_object(element):
                    raise errors.InvalidArgument(
                        f"Expecting object but got list at item {index} of input list")
                for name, item in element.items():
                    add(item, name, index, True, keep)
                if set(element) != set(input_dtypes):
                    raise errors.InvalidArgument(
                        f"Failed to process element: {index} of 'instances' list. JSON object: "
                        f"{json_value_to_string(element)} keys must be equal to: "
                        f"{','.join(sorted(input_dtypes))}")
            else:
                if is_element_object(element):
                    raise errors.InvalidArgument(
                        f"Expecting value/list but got object at item {index} of input list")
                add(element, next(iter(sorted(input_dtypes))), index, False, keep)

    walk(keep=False)  # raises at the element at fault, holding one row's array at a time
    shapes.clear()
    walk(keep=True)  # only if the whole conversion failed for a reason no row shows
    return {name: np.stack(arrays) for name, arrays in rows.items() if arrays}


def _inputs_to_arrays(inputs, input_dtypes: dict) -> dict:
    """The columnar format: `inputs` holds each input whole (batch dimension included)."""
    if not isinstance(inputs, dict) or _is_b64_object(inputs):
        if len(input_dtypes) > 1:
            raise errors.InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors "
                "required as per tensorinfo_map")
        name = next(iter(input_dtypes))
        return {name: json_to_ndarray(inputs, input_dtypes[name])}
    arrays = {}
    for name in sorted(input_dtypes):
        if name not in inputs:
            raise errors.InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = json_to_ndarray(inputs[name], input_dtypes[name])
    return arrays


def signature_name_from_json(doc: dict) -> str:
    """The optional `signature_name` of a REST request ('' when absent)."""
    if "signature_name" not in doc:
        return ""
    if not isinstance(doc["signature_name"], str):
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(doc)} not formatted correctly. 'signature_name' key "
            "must be a string value.")
    return proto_text(doc["signature_name"])


def json_to_predict_inputs(doc: dict, input_dtypes: dict, signature_name: str):
    """The tensors of a REST predict request (`FillPredictRequestFromJson`).

    Args:
      doc: the parsed request body.
      input_dtypes: input alias -> DataType, from the signature the request names.
      signature_name: as requested ('' for the default), for the error message.

    Returns:
      (dict alias -> np.ndarray, ROW_FORMAT or COLUMNAR_FORMAT).
    """
    if not input_dtypes:
        raise errors.InvalidArgument(
            f"Failed to get input map for signature: {signature_name or 'DEFAULT'}")
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(doc)} Not formatted correctly expecting only one of "
            "'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise errors.InvalidArgument(
                f"JSON Value: {json_value_to_string(doc)} Excepting 'instances' to be an list/array")
        if not instances:
            raise errors.InvalidArgument(
                f"JSON Value: {json_value_to_string(doc)} No values in 'instances' array")
        return _instances_to_arrays(instances, input_dtypes), ROW_FORMAT
    if has_inputs:
        return _inputs_to_arrays(doc["inputs"], input_dtypes), COLUMNAR_FORMAT
    raise errors.InvalidArgument("Missing 'inputs' or 'instances' key")


def _add_feature_value(value, name, feature):
    """One JSON value into a tf.train.Feature (`AddValueToFeature` in TF Serving)."""
    def incompatible():
        kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
            feature.WhichOneof("kind"), "UNKNOWN")
        return errors.InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {kind}")

    def check_kind(kind):
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            raise incompatible()

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_b64_object(value)):
        raise errors.InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        check_kind("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        check_kind("bytes_list")
        feature.bytes_list.value.append(_decode_b64(value))
    elif isinstance(value, str):
        check_kind("bytes_list")
        feature.bytes_list.value.append(text_bytes(value))
    elif isinstance(value, float):
        check_kind("float_list")
        if math.isfinite(value) and abs(value) > _FLOAT_LIMIT[DT_FLOAT]:
            raise errors.InvalidArgument(
                f"Cannot convert JSON value: {json_value_to_string(value)} to float without loss "
                "of precision.")
        feature.float_list.value.append(value)
    else:
        check_kind("int64_list")
        if value > 2**63 - 1:
            raise errors.InvalidArgument(
                f"Feature: {name} has uint64 element. Only int64 is supported.")
        if value < -2**63:
            raise errors.InvalidArgument(
                f"Feature: {name} has element with unexpected JSON type: Number")
        feature.int64_list.value.append(value)


def _json_to_example(value, example):
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[proto_text(name)]
        for item in (content if isinstance(content, list) else [content]):
            _add_feature_value(item, name, feature)


def json_to_classify_regress_request(doc: dict, request):
    """Fills a Classification/RegressionRequest from REST JSON (`examples`, optional `context`)."""
    request.model_spec.signature_name = signature_name_from_json(doc)
    has_context = "context" in doc
    if has_context:
        _json_to_example(doc["context"], request.input.example_list_with_context.context)
    if "examples" not in doc:
        raise errors.InvalidArgument(
            # "classify" for regress too: TF Serving's one parser for both hard-codes it.
            f"JSON Value: {json_value_to_string(doc)} When method is classify, key 'examples' is "
            "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(doc)} 'examples' value is an empty array")
    for value in examples:
        target = (request.input.example_list_with_context.examples if has_context
                  else request.input.example_list.examples)
        _json_to_example(value, target.add())
    return request


# --------------------------------------------------------------------------------------------
# REST JSON: writing
# --------------------------------------------------------------------------------------------

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
        return texts  # a row is one element: no slice and call per row (0.6 s for 466k rows)
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
