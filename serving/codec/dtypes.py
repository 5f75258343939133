"""TensorFlow DataTypes as numpy sees them: the enum values, their numpy dtypes and names, the rank limit.

What every wire format shares: a TensorProto names its dtype by enum value, a REST request by the signature's
input dtypes, and both decode to numpy arrays of at most `MAX_RANK` dimensions.
"""

import numpy as np

from serving import errors


# Protobuf modules are imported lazily: importing them imports TensorFlow, which the JSON codecs and the tests and
# tools that use only them should not pay for.
def _types_pb2():
    from tensorflow.core.framework import types_pb2  # pylint: disable=import-outside-toplevel
    return types_pb2


# DataType enum value -> (numpy dtype, TensorProto repeated field, TF's short type name).
# Enum values are those of `tensorflow/core/framework/types.proto`.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_INT16, DT_INT8, DT_STRING = 1, 2, 3, 4, 5, 6, 7
DT_COMPLEX64, DT_INT64, DT_BOOL, DT_UINT16, DT_COMPLEX128, DT_HALF = 8, 9, 10, 17, 18, 19
DT_UINT32, DT_UINT64 = 22, 23

DTYPES = {
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

_NUMPY_TO_DT = {np.dtype(np_type): dt for dt, (np_type, _, _) in DTYPES.items() if np_type is not object}


def dtype_name(dtype: int) -> str:
    """TF's `DataTypeString`: `float` for DT_FLOAT; unknown enums print their enum name."""
    if dtype in DTYPES:
        return DTYPES[dtype][2]
    try:
        return _types_pb2().DataType.Name(dtype)
    except ValueError:
        return f"unknown dtype {dtype}"


def numpy_dtype(dtype: int):
    """The numpy dtype holding a TensorFlow DataType (`object` for strings)."""
    if dtype not in DTYPES:
        raise errors.Unimplemented(f"Tensor type {dtype_name(dtype)} is not supported")
    return DTYPES[dtype][0]


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


def check_rank(rank: int, what: str):
    if rank > MAX_RANK:
        raise errors.InvalidArgument(
            f"{what} has {rank} dimensions; this server supports at most {MAX_RANK}")
