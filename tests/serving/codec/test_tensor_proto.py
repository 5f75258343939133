"""TensorProto <-> numpy (`serving.codec.tensor_proto`): round trips, TensorFlow's padding, size and rank limits."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from serving import errors
from serving.codec import tensor_proto


_DTYPES = [np.float32, np.float64, np.int32, np.int64, np.int8, np.uint8, np.int16, np.uint16,
           np.uint32, np.uint64, np.bool_, np.float16, np.complex64, np.complex128]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(data=st.data(), dtype=st.sampled_from(_DTYPES),
                  content=st.booleans())
def test_tensor_proto_round_trips(data, dtype, content):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    array = data.draw(hnp.arrays(dtype, shape, elements=None if dtype != np.float16 else
                                 st.floats(-100, 100, width=16)))
    proto = tensor_proto.ndarray_to_tensor_proto(array, use_tensor_content=content)
    back = tensor_proto.tensor_proto_to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_string_tensors_round_trip_as_bytes():
    array = np.array([[b"a", b"\xff"], [b"", b"xyz"]], dtype=object)
    back = tensor_proto.tensor_proto_to_ndarray(tensor_proto.ndarray_to_tensor_proto(array))
    assert back.tolist() == array.tolist()


def test_short_value_lists_are_padded_with_the_last_value_like_tensorflow():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add().size = 4
    assert tensor_proto.tensor_proto_to_ndarray(proto).tolist() == [1.0, 2.0, 2.0, 2.0]
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32)
    empty.tensor_shape.dim.add().size = 2
    assert tensor_proto.tensor_proto_to_ndarray(empty).tolist() == [0, 0]


def test_declared_size_is_bounded_before_allocating():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[1.0])
    proto.tensor_shape.dim.add().size = 10 ** 12
    with pytest.raises(errors.ResourceExhausted):
        tensor_proto.tensor_proto_to_ndarray(proto, "x", max_bytes=1024)


def test_tensor_proto_shapes_numpy_cannot_hold_are_invalid_argument():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    deep = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    for _ in range(70):
        deep.tensor_shape.dim.add().size = 1
    with pytest.raises(errors.InvalidArgument):
        tensor_proto.tensor_proto_to_ndarray(deep, "x")
    empty_but_huge = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (0, 2 ** 62, 2 ** 62):
        empty_but_huge.tensor_shape.dim.add().size = size
    with pytest.raises(errors.InvalidArgument, match="tensor parsing error: x"):
        tensor_proto.tensor_proto_to_ndarray(empty_but_huge, "x")


def test_complex_infinities_round_trip_through_typed_fields():
    array = np.array([complex(0, np.inf), complex(-np.inf, 1)], np.complex64)
    back = tensor_proto.tensor_proto_to_ndarray(tensor_proto.ndarray_to_tensor_proto(array))
    np.testing.assert_array_equal(back, array)  # not nan+infj: 1j * inf is nan in the real part
