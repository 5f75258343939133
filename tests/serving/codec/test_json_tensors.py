"""REST predict JSON -> tensors (`serving.codec.json_tensors`): the row and columnar formats, dtype checks, memory."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from serving import errors
from serving.codec import dtypes
from serving.codec import json_tensors
from serving.codec import json_writer
from serving.codec import tensor_proto


def test_row_format_stacks_instances_and_checks_shapes():
    arrays, fmt = json_tensors.json_to_predict_inputs({"instances": [[1, 2], [3, 4]]},
                                                      {"x": dtypes.DT_FLOAT}, "")
    assert fmt == json_writer.ROW_FORMAT
    assert arrays["x"].dtype == np.float32 and arrays["x"].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(errors.InvalidArgument, match="Expecting tensor size: 2 but got: 3"):
        json_tensors.json_to_predict_inputs({"instances": [[1, 2], [3, 4, 5]]}, {"x": dtypes.DT_FLOAT}, "")
    with pytest.raises(errors.InvalidArgument, match="Expecting shape \\[2\\] but got: \\[2,1\\]"):
        json_tensors.json_to_predict_inputs({"instances": [[1, 2], [[3], [4]]]}, {"x": dtypes.DT_FLOAT},
                                            "")
    with pytest.raises(errors.InvalidArgument, match="keys must be equal to: a,b"):
        json_tensors.json_to_predict_inputs({"instances": [{"a": 1}]},
                                            {"a": dtypes.DT_INT32, "b": dtypes.DT_INT32}, "")


@pytest.mark.parametrize("row_shape", [(), (3,), (2, 2)])
@pytest.mark.parametrize("named", [False, True])
def test_row_format_converts_a_large_body_in_bounded_memory(row_shape, named):
    # 100,000 rows of plain numbers (or of objects naming two inputs): each input becomes one array, without a
    # small array per row on the way (hundreds of bytes per number, many times the parsed JSON's ~32).
    import tracemalloc

    rows = 100_000
    values = np.round(np.random.default_rng(0).uniform(-1, 1, (rows,) + row_shape), 4)
    if named:
        doc = {"instances": [{"x": v, "w": 2} for v in values.tolist()]}
        input_dtypes = {"x": dtypes.DT_FLOAT, "w": dtypes.DT_INT32}
    else:
        doc, input_dtypes = {"instances": values.tolist()}, {"x": dtypes.DT_FLOAT}
    tracemalloc.start()
    try:
        arrays, fmt = json_tensors.json_to_predict_inputs(doc, input_dtypes, "")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fmt == json_writer.ROW_FORMAT
    assert arrays["x"].dtype == np.float32 and arrays["x"].shape == values.shape
    np.testing.assert_array_equal(arrays["x"], values.astype(np.float32))
    if named:
        assert arrays["w"].dtype == np.int32 and arrays["w"].tolist() == [2] * rows
    assert peak < 40 * values.size, f"{peak / values.size:.0f} bytes per number"


_JSON_LEAVES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-2 ** 60, 2 ** 60),
    st.integers(-2 ** 1100, 2 ** 1100), st.sampled_from([2 ** 24, 2 ** 24 - 1, 2 ** 53, -(2 ** 53) + 1, 3.5e38, 1e39]),
    st.booleans(), st.text(max_size=2), st.none(), st.just({"b64": "AA=="}))


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(value=st.one_of(
    st.recursive(_JSON_LEAVES, lambda children: st.lists(children, max_size=4), max_leaves=16),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
               elements=st.floats(-1e6, 1e6)).map(lambda a: a.tolist())),
    dtype=st.sampled_from([dtypes.DT_FLOAT, dtypes.DT_DOUBLE]))
@hypothesis.example(value=[1.5, 2 ** 24], dtype=dtypes.DT_FLOAT)  # an integer float32 cannot hold exactly
@hypothesis.example(value=[[1e30], [2 ** 53]], dtype=dtypes.DT_DOUBLE)
@hypothesis.example(value=[1.0, 3.5e38], dtype=dtypes.DT_FLOAT)  # beyond float32's range
@hypothesis.example(value=[[1.0, True]], dtype=dtypes.DT_DOUBLE)
@hypothesis.example(value=[[1.0], [2.0, 3.0]], dtype=dtypes.DT_FLOAT)
@hypothesis.example(value=[2 ** 1100], dtype=dtypes.DT_DOUBLE)
def test_bulk_number_conversion_matches_the_leaf_by_leaf_walk(value, dtype):
    # JSON numbers for float tensors are checked in bulk; the answer -- array or error -- must be the walk's.
    def walk():
        shape = json_tensors._dense_shape(value)
        dtypes.check_rank(len(shape), "JSON Value")
        flat = []
        json_tensors._fill(value, 0, shape, dtype, flat)
        return np.asarray(flat, dtypes.numpy_dtype(dtype)).reshape(shape)

    outcomes = []
    for convert in (walk, lambda: json_tensors.json_to_ndarray(value, dtype)):
        try:
            outcomes.append(convert())
        except errors.ServingError as exc:
            outcomes.append((type(exc), exc.message))
    expected, got = outcomes
    if isinstance(expected, tuple):
        assert got == expected
    else:
        assert isinstance(got, np.ndarray) and got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_a_bad_row_is_named_and_costs_no_more_memory_than_a_good_body():
    # The whole-array conversion fails, the row-by-row walk names the row at fault as TF Serving does -- holding
    # one row's array at a time, not all of them.
    import tracemalloc

    rows = 100_000
    good = {"instances": [[v] for v in np.round(np.random.default_rng(0).uniform(-1, 1, rows), 4).tolist()]}
    bad = {"instances": good["instances"][:-1] + [["x"]]}
    peaks = []
    for doc in (good, bad):
        tracemalloc.start()
        try:
            try:
                json_tensors.json_to_predict_inputs(doc, {"x": dtypes.DT_FLOAT}, "")
            except errors.InvalidArgument as exc:
                error = exc
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    assert error.message == (
        f"Failed to process element: {rows - 1} of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: "
        '"x" Type: String is not of expected type: float')
    assert peaks[1] < 1.25 * peaks[0], f"bad body {peaks[1] / rows:.0f}, good {peaks[0] / rows:.0f} bytes per row"


def test_narrow_integer_inputs_wrap_as_tensorflow_narrows_int_val():
    # TF Serving puts int8/uint8/int16 values in the int32 `int_val` field and TensorFlow casts them down, as
    # this server's gRPC path does; an out-of-range value is not a server error.
    arrays, _ = json_tensors.json_to_predict_inputs({"instances": [300, -1, 127]}, {"x": dtypes.DT_INT8}, "")
    assert arrays["x"].dtype == np.int8 and arrays["x"].tolist() == [44, -1, 127]
    arrays, _ = json_tensors.json_to_predict_inputs({"inputs": [256, -1]}, {"x": dtypes.DT_UINT8}, "")
    assert arrays["x"].tolist() == [0, 255]
    proto = tensor_proto.ndarray_to_tensor_proto(np.array([300, -1], np.int32))
    grpc_side = tensor_proto.tensor_proto_to_ndarray(proto)
    assert grpc_side.astype(np.int8).tolist() == [44, -1]
    # With a real type error in another input, the answer is that error (400), whatever the order of keys.
    with pytest.raises(errors.InvalidArgument, match="key: b of 'instances' list.*String is not of expected"):
        json_tensors.json_to_predict_inputs({"instances": [{"b": "x", "a": 300}]},
                                            {"a": dtypes.DT_INT8, "b": dtypes.DT_INT32}, "")


def test_columnar_format_and_ragged_lists():
    arrays, fmt = json_tensors.json_to_predict_inputs(
        {"inputs": {"a": [[1.0]], "b": 3}}, {"a": dtypes.DT_FLOAT, "b": dtypes.DT_INT32}, "")
    assert fmt == json_writer.COLUMNAR_FORMAT and arrays["b"].shape == () and arrays["b"] == 3
    with pytest.raises(errors.InvalidArgument, match="Encountered list at unexpected size"):
        json_tensors.json_to_ndarray([[1.0], [1.0, 2.0]], dtypes.DT_FLOAT)
    with pytest.raises(errors.InvalidArgument, match="Missing named input: b"):
        json_tensors.json_to_predict_inputs({"inputs": {"a": 1}},
                                            {"a": dtypes.DT_INT32, "b": dtypes.DT_INT32}, "")


def test_int_json_values_must_fit_the_dtype():
    assert json_tensors.json_to_ndarray([1, 2], dtypes.DT_INT64).dtype == np.int64
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: int32"):
        json_tensors.json_to_ndarray([2 ** 40], dtypes.DT_INT32)
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: int32"):
        json_tensors.json_to_ndarray([True], dtypes.DT_INT32)
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: float"):
        json_tensors.json_to_ndarray([True], dtypes.DT_FLOAT)


def test_error_messages_render_only_what_the_wire_can_carry():
    # A big document in an error message must not be pretty-printed whole: it would cost time
    # and memory proportional to the body (gigabytes for a 64 MiB body), to be truncated anyway.
    huge = {"inputs": 1, "instances": [[[[[[0]]]]]] * 200_000}
    with pytest.raises(errors.InvalidArgument) as info:
        json_tensors.json_to_predict_inputs(huge, {"x": dtypes.DT_FLOAT}, "")
    message = info.value.message
    assert message.startswith('JSON Value: {\n    "inputs": 1,\n    "instances": [')
    assert len(message) < 4 * errors.MAX_MESSAGE_CHARS
    assert errors.wire_message(info.value).endswith(errors.TRUNCATED_SUFFIX)


@pytest.mark.parametrize("rank", [65, 300])
def test_json_of_more_than_64_dimensions_is_invalid_argument(rank):
    value = 1.0
    for _ in range(rank):
        value = [value]
    with pytest.raises(errors.InvalidArgument, match="64"):
        json_tensors.json_to_ndarray(value, dtypes.DT_FLOAT)
    with pytest.raises(errors.InvalidArgument, match="64"):
        json_tensors.json_to_predict_inputs({"instances": [value[0]]}, {"x": dtypes.DT_FLOAT}, "")
