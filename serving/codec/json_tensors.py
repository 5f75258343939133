"""REST predict JSON -> numpy tensors (TF Serving's `util/json_tensor.cc`).

The row format (`instances`: one element per batch row, an object keyed by input name when the signature has
several) and the columnar format (`inputs`: each input whole); leaves are checked against the signature's dtypes
as `AddValueToTensor` checks them, strings may be `{"b64": ...}` objects, and a nested list must be dense.
"""

import base64
import binascii
import math

import numpy as np

from serving import errors
from serving.codec.dtypes import (DT_BOOL, DT_DOUBLE, DT_FLOAT, DT_INT16, DT_INT32, DT_INT64, DT_INT8, DT_STRING,
                                  DT_UINT32, DT_UINT64, DT_UINT8, check_rank, dtype_name, numpy_dtype)
from serving.codec.json_reader import DeferredArray, proto_text, text_bytes
from serving.codec.json_writer import COLUMNAR_FORMAT, ROW_FORMAT, json_value_to_string


def json_type(value) -> str:
    """A JSON value's type as rapidjson names it in TF Serving's messages."""
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


def is_b64_object(value) -> bool:
    """Whether a JSON value is a `{"b64": "..."}` object, TF Serving's spelling of binary data."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_b64(value) -> bytes:
    """The bytes of a `{"b64": "..."}` object, or InvalidArgument as TF Serving words it."""
    if not is_b64_object(value):
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
        f"JSON Value: {json_value_to_string(value)} Type: {json_type(value)} is not of expected "
        f"type: {dtype_name(dtype)}")


# The largest integers a float type holds exactly, and the largest finite values: beyond them a JSON number
# would lose precision, which TF Serving refuses.
_FLOAT_MAX_INT = {DT_FLOAT: (1 << 24) - 1, DT_DOUBLE: (1 << 53) - 1}
FLOAT_LIMIT = {DT_FLOAT: float(np.finfo(np.float32).max), DT_DOUBLE: float(np.finfo(np.float64).max)}
_INT_RANGE = {
    DT_INT32: (-2**31, 2**31 - 1), DT_INT16: (-2**31, 2**31 - 1), DT_INT8: (-2**31, 2**31 - 1),
    DT_UINT8: (-2**31, 2**31 - 1), DT_INT64: (-2**63, 2**63 - 1), DT_UINT32: (0, 2**32 - 1),
    DT_UINT64: (0, 2**64 - 1),
}


def _json_scalar(value, dtype):
    """One leaf of a JSON tensor, checked like `AddValueToTensor` in TF Serving."""
    if isinstance(value, dict):
        if dtype == DT_STRING:
            return decode_b64(value)
        raise _type_error(value, dtype)
    if dtype in (DT_FLOAT, DT_DOUBLE):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, dtype)
        target = "float" if dtype == DT_FLOAT else "double"
        if isinstance(value, int):
            if abs(value) > _FLOAT_MAX_INT[dtype]:
                raise errors.InvalidArgument(
                    f"Cannot convert JSON value: {value} to {target} without loss of precision.")
        elif math.isfinite(value) and abs(value) > FLOAT_LIMIT[dtype]:
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

    Much cheaper per number than `_fill`: numpy builds the nested lists into an object array in C, the
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
        if np.any(np.isfinite(numbers) & (magnitude > FLOAT_LIMIT[dtype])):
            return None
        if any(type(flat[i]) is int for i in np.flatnonzero(magnitude > _FLOAT_MAX_INT[dtype]).tolist()):
            return None
    return numbers.astype(numpy_dtype(dtype)).reshape(shape)


def json_to_ndarray(value, dtype: int) -> np.ndarray:
    """A JSON value (scalar, nested list, b64 object) as an array of a TensorFlow dtype."""
    shape = _dense_shape(value)
    check_rank(len(shape), "JSON Value")
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
        return isinstance(value, dict) and not is_b64_object(value)

    objects = is_element_object(instances[0])
    # Each input converted whole, its rows the array's first axis: that holds the parsed JSON and one flat list
    # of its leaves, not one small array per row (those cost hundreds of bytes per number, many times the body's
    # size). A body that fails is walked row by row below, which names the element at fault as TF Serving does;
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
            check_rank(array.ndim + 1, "Instance")  # Rows stack along a new batch dimension.
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
    if not isinstance(inputs, dict) or is_b64_object(inputs):
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


class _Column:
    """One input's array, built a chunk of rows at a time: a numeric one in a bytearray, which grows in place
    (no second copy at the end, as concatenating the chunks would make)."""

    def __init__(self, first: np.ndarray):
        self.dtype, self.row_shape, self.rows = first.dtype, first.shape[1:], 0
        self._data = bytearray() if first.dtype != object else None
        self._parts = []

    def append(self, part: np.ndarray) -> bool:
        if part.dtype != self.dtype or part.shape[1:] != self.row_shape:
            return False
        if self._data is None:
            self._parts.append(part)
        else:
            self._data += np.ascontiguousarray(part).data
        self.rows += len(part)
        return True

    def array(self) -> np.ndarray:
        if self._data is None:
            return np.concatenate(self._parts)
        return np.frombuffer(self._data, self.dtype).reshape((self.rows,) + self.row_shape)


def _deferred_to_arrays(value: DeferredArray, input_dtypes: dict, row_format: bool):
    """The arrays a `DeferredArray` converts to, a chunk of its elements at a time; None where the whole
    array's conversion might not succeed (an error, a chunk unlike the first): the caller then converts it whole,
    which gives the answer it gives.

    Converting a chunk is converting the whole array restricted to those elements: each leaf converts on its
    own, and the chunks are dense alike when every chunk is dense with the first chunk's row shape.
    """
    columns, objects = {}, None
    try:
        for chunk in value.chunks():
            if objects is None:
                objects = row_format and isinstance(chunk[0], dict) and not is_b64_object(chunk[0])
                if not objects and len(input_dtypes) > 1:
                    return None
            if objects:
                keys = set(input_dtypes)
                if not all(isinstance(element, dict) and element.keys() == keys for element in chunk):
                    return None
                parts = {name: json_to_ndarray([element[name] for element in chunk], dtype)
                         for name, dtype in input_dtypes.items()}
            else:
                name, dtype = next(iter(input_dtypes.items()))
                parts = {name: json_to_ndarray(chunk, dtype)}
            for name, part in parts.items():
                if part.ndim == 0:
                    return None
                if name not in columns:
                    columns[name] = _Column(part)
                if not columns[name].append(part):
                    return None
    except Exception:  # pylint: disable=broad-except -- converting the array whole raises what it raises
        return None
    return {name: column.array() for name, column in columns.items()}


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
    deferred = doc.get("instances" if has_instances else "inputs")
    if isinstance(deferred, DeferredArray):
        arrays = _deferred_to_arrays(deferred, input_dtypes, has_instances)
        if arrays is not None:
            return arrays, ROW_FORMAT if has_instances else COLUMNAR_FORMAT
        doc = dict(doc, **{deferred.key: deferred.materialize()})
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
