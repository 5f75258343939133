"""TensorProto <-> numpy, with TensorFlow's rules (`Tensor::FromProto`) and its error messages."""

import math

import numpy as np

from serving import errors
from serving.codec.dtypes import DT_COMPLEX128, DT_COMPLEX64, DT_HALF, DT_STRING, DTYPES, check_rank, datatype_of


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
    if proto.dtype not in DTYPES:
        raise parse_error
    np_type, field, _ = DTYPES[proto.dtype]
    if proto.tensor_shape.unknown_rank:
        raise parse_error
    shape = [dim.size for dim in proto.tensor_shape.dim]
    if any(size < 0 for size in shape):
        raise parse_error
    check_rank(len(shape), f"Input {alias}")
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
    """Encodes an array as a new TensorProto (see `fill_tensor_proto`)."""
    from tensorflow.core.framework import tensor_pb2  # pylint: disable=import-outside-toplevel

    proto = tensor_pb2.TensorProto()
    fill_tensor_proto(proto, array, use_tensor_content)
    return proto


def fill_tensor_proto(proto, array, use_tensor_content: bool = False) -> None:
    """Encodes an array into an empty TensorProto, such as a response's `outputs[alias]` (no copy of a finished
    proto into it).

    The server answers with typed `*_val` fields, as TF Serving's Predict does
    (`AsProtoField`), or with `tensor_content` under `--enable_serialization_as_tensor_content`;
    clients send numeric tensors as `tensor_content`, which is compact and fast, as
    `tf.make_tensor_proto` does. Strings always go in `string_val`.
    """
    array = np.asarray(array)
    dtype = datatype_of(array)
    proto.dtype = dtype
    dims = proto.tensor_shape.dim
    for size in array.shape:
        dims.add().size = size
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
        getattr(proto, DTYPES[dtype][1]).extend(interleaved.tolist())
    else:
        getattr(proto, DTYPES[dtype][1]).extend(array.ravel().tolist())
