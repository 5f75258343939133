"""Wire conversions: TensorProto <-> numpy, REST JSON, tf.Example inputs."""

import json
import math

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from serving import codec
from serving import errors
from serving.codec import dtypes, json_reader, json_tensors

_DTYPES = [np.float32, np.float64, np.int32, np.int64, np.int8, np.uint8, np.int16, np.uint16,
           np.uint32, np.uint64, np.bool_, np.float16, np.complex64, np.complex128]


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(data=st.data(), dtype=st.sampled_from(_DTYPES),
                  content=st.booleans())
def test_tensor_proto_round_trips(data, dtype, content):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))
    array = data.draw(hnp.arrays(dtype, shape, elements=None if dtype != np.float16 else
                                 st.floats(-100, 100, width=16)))
    proto = codec.ndarray_to_tensor_proto(array, use_tensor_content=content)
    back = codec.tensor_proto_to_ndarray(proto)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_string_tensors_round_trip_as_bytes():
    array = np.array([[b"a", b"\xff"], [b"", b"xyz"]], dtype=object)
    back = codec.tensor_proto_to_ndarray(codec.ndarray_to_tensor_proto(array))
    assert back.tolist() == array.tolist()


def test_short_value_lists_are_padded_with_the_last_value_like_tensorflow():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
    proto.tensor_shape.dim.add().size = 4
    assert codec.tensor_proto_to_ndarray(proto).tolist() == [1.0, 2.0, 2.0, 2.0]
    empty = tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32)
    empty.tensor_shape.dim.add().size = 2
    assert codec.tensor_proto_to_ndarray(empty).tolist() == [0, 0]


def test_declared_size_is_bounded_before_allocating():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[1.0])
    proto.tensor_shape.dim.add().size = 10 ** 12
    with pytest.raises(errors.ResourceExhausted):
        codec.tensor_proto_to_ndarray(proto, "x", max_bytes=1024)


@pytest.mark.parametrize("value, expected", [
    (2.5, "2.5"), (3.0, "3.0"), (0.2, "0.2"), (1e-05, "1e-05"), (9000000.0, "9e+06"),
    (float("nan"), "NaN"), (float("-inf"), "-Infinity"), (1 / 3, "0.333333343"),
])
def test_floats_print_as_tf_serving_prints_them(value, expected):
    assert codec.format_decimal(np.float32(value), np.float32) == expected


def _reference_json(array) -> str:
    """A tensor written element by element with `format_decimal`, the definition the fast writer must match."""
    if array.ndim == 0:
        return codec.format_decimal(array[()], np.float64 if array.dtype.type == np.float64 else np.float32)
    return "[" + ", ".join(_reference_json(sub) for sub in array) + "]"


@hypothesis.settings(max_examples=80, deadline=None)
@hypothesis.given(data=st.data(), dtype=st.sampled_from([np.float16, np.float32, np.float64, ">f4", ">f8"]))
def test_float_outputs_are_written_as_format_decimal_writes_each_value(data, dtype):
    # Outputs are formatted all at once (one %g over the tuple, a vectorized round-trip check); the text must be
    # what TF Serving's per-value rule gives: %g when it round-trips, full precision when not, ".0" on whole
    # numbers, NaN and (-)Infinity as rapidjson writes them.
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5))
    awkward = [0.1, 1e-5, 1234.5, -0.0] + ([2049.0] if dtype == np.float16 else [
        123456.7, 2 ** 24 + 1.0, 1e300, 999999.0, 999999.5, 1e6, 1234567.0, 123456789.0])
    array = data.draw(hnp.arrays(dtype, shape, elements=st.one_of(
        st.floats(width=np.finfo(dtype).bits, allow_nan=True, allow_infinity=True),
        st.integers(-60000, 60000).map(float),
        st.sampled_from(awkward).filter(lambda v: v < float(np.finfo(dtype).max)))))
    columnar = codec.arrays_to_predict_json({"y": array}, codec.COLUMNAR_FORMAT)
    assert columnar == '{"outputs": ' + _reference_json(array) + "}"
    rows = codec.arrays_to_predict_json({"y": array}, codec.ROW_FORMAT)
    assert rows == '{"predictions": [' + ", ".join(_reference_json(r) for r in array) + "]}"
    rows = codec.arrays_to_predict_json({"y": array, "z": array}, codec.ROW_FORMAT)
    assert rows == '{"predictions": [' + ", ".join(
        '{"y": %s, "z": %s}' % (_reference_json(r), _reference_json(r)) for r in array) + "]}"


def test_row_format_stacks_instances_and_checks_shapes():
    arrays, fmt = codec.json_to_predict_inputs({"instances": [[1, 2], [3, 4]]},
                                               {"x": codec.DT_FLOAT}, "")
    assert fmt == codec.ROW_FORMAT
    assert arrays["x"].dtype == np.float32 and arrays["x"].tolist() == [[1, 2], [3, 4]]
    with pytest.raises(errors.InvalidArgument, match="Expecting tensor size: 2 but got: 3"):
        codec.json_to_predict_inputs({"instances": [[1, 2], [3, 4, 5]]}, {"x": codec.DT_FLOAT}, "")
    with pytest.raises(errors.InvalidArgument, match="Expecting shape \\[2\\] but got: \\[2,1\\]"):
        codec.json_to_predict_inputs({"instances": [[1, 2], [[3], [4]]]}, {"x": codec.DT_FLOAT},
                                     "")
    with pytest.raises(errors.InvalidArgument, match="keys must be equal to: a,b"):
        codec.json_to_predict_inputs({"instances": [{"a": 1}]},
                                     {"a": codec.DT_INT32, "b": codec.DT_INT32}, "")


@pytest.mark.parametrize("row_shape", [(), (3,), (2, 2)])
@pytest.mark.parametrize("named", [False, True])
def test_row_format_converts_a_large_body_in_bounded_memory(row_shape, named):
    # 100,000 rows of plain numbers (or of objects naming two inputs): each input becomes one array, without a
    # small array per row on the way (that route peaked at ~400 bytes per number, ~180 MiB for a 3.7 MiB body;
    # the parsed JSON is ~32).
    import tracemalloc

    rows = 100_000
    values = np.round(np.random.default_rng(0).uniform(-1, 1, (rows,) + row_shape), 4)
    if named:
        doc = {"instances": [{"x": v, "w": 2} for v in values.tolist()]}
        dtypes = {"x": codec.DT_FLOAT, "w": codec.DT_INT32}
    else:
        doc, dtypes = {"instances": values.tolist()}, {"x": codec.DT_FLOAT}
    tracemalloc.start()
    try:
        arrays, fmt = codec.json_to_predict_inputs(doc, dtypes, "")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert fmt == codec.ROW_FORMAT
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
    dtype=st.sampled_from([codec.DT_FLOAT, codec.DT_DOUBLE]))
@hypothesis.example(value=[1.5, 2 ** 24], dtype=codec.DT_FLOAT)  # an integer float32 cannot hold exactly
@hypothesis.example(value=[[1e30], [2 ** 53]], dtype=codec.DT_DOUBLE)
@hypothesis.example(value=[1.0, 3.5e38], dtype=codec.DT_FLOAT)  # beyond float32's range
@hypothesis.example(value=[[1.0, True]], dtype=codec.DT_DOUBLE)
@hypothesis.example(value=[[1.0], [2.0, 3.0]], dtype=codec.DT_FLOAT)
@hypothesis.example(value=[2 ** 1100], dtype=codec.DT_DOUBLE)
def test_bulk_number_conversion_matches_the_leaf_by_leaf_walk(value, dtype):
    # JSON numbers for float tensors are checked in bulk; the answer -- array or error -- must be the walk's.
    def walk():
        shape = json_tensors._dense_shape(value)
        dtypes.check_rank(len(shape), "JSON Value")
        flat = []
        json_tensors._fill(value, 0, shape, dtype, flat)
        return np.asarray(flat, codec.numpy_dtype(dtype)).reshape(shape)

    outcomes = []
    for convert in (walk, lambda: codec.json_to_ndarray(value, dtype)):
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
    # one row's array at a time, not all of them (that had taken ~220 bytes per number for a bad body).
    import tracemalloc

    rows = 100_000
    good = {"instances": [[v] for v in np.round(np.random.default_rng(0).uniform(-1, 1, rows), 4).tolist()]}
    bad = {"instances": good["instances"][:-1] + [["x"]]}
    peaks = []
    for doc in (good, bad):
        tracemalloc.start()
        try:
            try:
                codec.json_to_predict_inputs(doc, {"x": codec.DT_FLOAT}, "")
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
    arrays, _ = codec.json_to_predict_inputs({"instances": [300, -1, 127]}, {"x": codec.DT_INT8}, "")
    assert arrays["x"].dtype == np.int8 and arrays["x"].tolist() == [44, -1, 127]
    arrays, _ = codec.json_to_predict_inputs({"inputs": [256, -1]}, {"x": codec.DT_UINT8}, "")
    assert arrays["x"].tolist() == [0, 255]
    grpc_side = codec.tensor_proto_to_ndarray(codec.ndarray_to_tensor_proto(np.array([300, -1], np.int32)))
    assert grpc_side.astype(np.int8).tolist() == [44, -1]
    # With a real type error in another input, the answer is that error (400), whatever the order of keys.
    with pytest.raises(errors.InvalidArgument, match="key: b of 'instances' list.*String is not of expected"):
        codec.json_to_predict_inputs({"instances": [{"b": "x", "a": 300}]},
                                     {"a": codec.DT_INT8, "b": codec.DT_INT32}, "")


def test_columnar_format_and_ragged_lists():
    arrays, fmt = codec.json_to_predict_inputs(
        {"inputs": {"a": [[1.0]], "b": 3}}, {"a": codec.DT_FLOAT, "b": codec.DT_INT32}, "")
    assert fmt == codec.COLUMNAR_FORMAT and arrays["b"].shape == () and arrays["b"] == 3
    with pytest.raises(errors.InvalidArgument, match="Encountered list at unexpected size"):
        codec.json_to_ndarray([[1.0], [1.0, 2.0]], codec.DT_FLOAT)
    with pytest.raises(errors.InvalidArgument, match="Missing named input: b"):
        codec.json_to_predict_inputs({"inputs": {"a": 1}},
                                     {"a": codec.DT_INT32, "b": codec.DT_INT32}, "")


def test_int_json_values_must_fit_the_dtype():
    assert codec.json_to_ndarray([1, 2], codec.DT_INT64).dtype == np.int64
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: int32"):
        codec.json_to_ndarray([2 ** 40], codec.DT_INT32)
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: int32"):
        codec.json_to_ndarray([True], codec.DT_INT32)
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: float"):
        codec.json_to_ndarray([True], codec.DT_FLOAT)


def test_row_and_columnar_answers():
    outputs = {"b_bytes": np.array([b"\x00\x01"], dtype=object),
               "a": np.array([[1.0, 2.5]], np.float32)}
    assert codec.arrays_to_predict_json(outputs, codec.ROW_FORMAT) == (
        '{"predictions": [{"a": [1.0, 2.5], "b_bytes": {"b64": "AAE="}}]}')
    assert codec.arrays_to_predict_json({"a": outputs["a"]}, codec.COLUMNAR_FORMAT) == (
        '{"outputs": [[1.0, 2.5]]}')
    with pytest.raises(errors.InvalidArgument, match="inconsistent batch size"):
        codec.arrays_to_predict_json({"a": np.zeros([2]), "b": np.zeros([3])}, codec.ROW_FORMAT)


def test_classify_json_builds_examples_with_context():
    from tensorflow_serving.apis import classification_pb2
    request = classification_pb2.ClassificationRequest()
    codec.json_to_classify_regress_request(
        {"context": {"c": "s"}, "examples": [{"x": [1.0, 2.0], "n": 3, "b": {"b64": "AAE="}}]},
        request)
    example = request.input.example_list_with_context.examples[0]
    assert list(example.features.feature["x"].float_list.value) == [1.0, 2.0]
    assert list(example.features.feature["n"].int64_list.value) == [3]
    assert list(example.features.feature["b"].bytes_list.value) == [b"\x00\x01"]
    serialized = codec.input_to_serialized_examples(request.input)
    assert serialized.shape == (1,)
    with pytest.raises(errors.InvalidArgument, match="expecting type: float"):
        codec.json_to_classify_regress_request({"examples": [{"x": [1.0, "a"]}]},
                                               classification_pb2.ClassificationRequest())


def test_errors_map_to_grpc_and_http_in_one_place():
    import grpc
    assert errors.http_status(errors.NotFound("x").code) == 404
    assert errors.http_status(errors.FailedPrecondition("x").code) == 400
    assert errors.http_status(errors.ResourceExhausted("x").code) == 429
    assert errors.grpc_status(errors.InvalidArgument("x").code) == grpc.StatusCode.INVALID_ARGUMENT
    long = errors.Internal("x" * 2000)
    assert errors.wire_message(long) == "x" * 1024 + "...TRUNCATED"
    assert isinstance(errors.to_serving_error(ValueError("boom")), errors.Internal)
    assert isinstance(errors.to_serving_error(MemoryError()), errors.ResourceExhausted)


def test_error_messages_render_only_what_the_wire_can_carry():
    # A big document in an error message must not be pretty-printed whole: it would cost time
    # and memory proportional to the body (gigabytes for a 64 MiB body), to be truncated anyway.
    huge = {"inputs": 1, "instances": [[[[[[0]]]]]] * 200_000}
    with pytest.raises(errors.InvalidArgument) as info:
        codec.json_to_predict_inputs(huge, {"x": codec.DT_FLOAT}, "")
    message = info.value.message
    assert message.startswith('JSON Value: {\n    "inputs": 1,\n    "instances": [')
    assert len(message) < 4 * errors.MAX_MESSAGE_CHARS
    assert errors.wire_message(info.value).endswith(errors.TRUNCATED_SUFFIX)


def _parse_error(body) -> str:
    """The INVALID_ARGUMENT message parsing `body` raises."""
    with pytest.raises(errors.InvalidArgument) as info:
        codec.parse_json_document(body)
    return info.value.message


@pytest.mark.parametrize("body, offset", [
    ('{"instances": ["\\ud800"]}', 16),
    ('{"instances": ["ab\\udc00"]}', 18),
    ('{"examples": [{"\\ud83d": 1}]}', 16),
])
def test_lone_surrogate_escapes_are_a_parse_error(body, offset):
    assert _parse_error(body) == f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}"


def test_surrogate_pairs_and_escaped_backslashes_are_fine():
    doc = codec.parse_json_document('{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}')
    assert doc == {"a": "\U0001F600", "b": "\\ud800"}


def test_bytes_that_are_not_utf8_reach_strings_and_examples_as_they_came():
    from tensorflow_serving.apis import regression_pb2
    doc = codec.parse_json_document(b'\xef\xbb\xbf{"s": ["caf\xe9", "\xed\xa0\x80"], "examples": [{"f\xff": "\xc3"}]}')
    assert codec.json_to_ndarray(doc["s"], codec.DT_STRING).tolist() == [b"caf\xe9", b"\xed\xa0\x80"]
    request = codec.json_to_classify_regress_request(doc, regression_pb2.RegressionRequest())
    (feature_name, feature), = request.input.example_list.examples[0].features.feature.items()
    # A protobuf string holds UTF-8 only: the name's stray byte becomes U+FFFD; the value's bytes are kept.
    assert (feature_name, list(feature.bytes_list.value)) == ("f\ufffd", [b"\xc3"])


def test_the_constants_rapidjson_reads_beyond_pythons_json_are_read():
    doc = codec.parse_json_document(b'{"a": [Inf, -Inf, -NaN, Infinity], "s": "Inf and -NaN stay text"}')
    assert doc["a"][:2] == [math.inf, -math.inf] and math.isnan(doc["a"][2]) and doc["a"][3] == math.inf
    assert doc["s"] == "Inf and -NaN stay text"
    assert math.isnan(codec.parse_json_document(b'{"a": [-NaN]}')["a"][0])  # alone too
    # Errors keep the body's own offsets.
    too_big = "JSON Parse error: Number too big to be stored in double. at offset: 7"
    assert _parse_error(b'{"a": [1e400, Inf]}') == too_big
    assert _parse_error(b'{"a": Infin}') == "JSON Parse error: Invalid value. at offset: 6"


def test_string_outputs_are_written_as_rapidjsons_writer_writes_them():
    # Bytes that are not UTF-8 as they are (no encoding check), control characters as upper-case \u00XX.
    text = codec.arrays_to_predict_json({"s": np.array([b"caf\xe9", b"a\x1fb"], dtype=object)}, codec.ROW_FORMAT)
    assert text.encode("utf-8", "surrogateescape") == b'{"predictions": ["caf\xe9", "a\\u001Fb"]}'


@pytest.mark.parametrize("rank", [65, 300])
def test_json_of_more_than_64_dimensions_is_invalid_argument(rank):
    value = 1.0
    for _ in range(rank):
        value = [value]
    with pytest.raises(errors.InvalidArgument, match="64"):
        codec.json_to_ndarray(value, codec.DT_FLOAT)
    with pytest.raises(errors.InvalidArgument, match="64"):
        codec.json_to_predict_inputs({"instances": [value[0]]}, {"x": codec.DT_FLOAT}, "")


def test_tensor_proto_shapes_numpy_cannot_hold_are_invalid_argument():
    from tensorflow.core.framework import tensor_pb2, types_pb2
    deep = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    for _ in range(70):
        deep.tensor_shape.dim.add().size = 1
    with pytest.raises(errors.InvalidArgument):
        codec.tensor_proto_to_ndarray(deep, "x")
    empty_but_huge = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
    for size in (0, 2 ** 62, 2 ** 62):
        empty_but_huge.tensor_shape.dim.add().size = size
    with pytest.raises(errors.InvalidArgument, match="tensor parsing error: x"):
        codec.tensor_proto_to_ndarray(empty_but_huge, "x")


def test_complex_infinities_round_trip_through_typed_fields():
    array = np.array([complex(0, np.inf), complex(-np.inf, 1)], np.complex64)
    back = codec.tensor_proto_to_ndarray(codec.ndarray_to_tensor_proto(array))
    np.testing.assert_array_equal(back, array)  # not nan+infj: 1j * inf is nan in the real part


def _json_module_reading(body):
    """What the json-module path (the parser before orjson) makes of a body: ("ok", canonical text) or
    ("error", message)."""
    try:
        doc = json_reader._parse_with_json(body, json_reader._skeleton(body if isinstance(body, bytes) else body.encode()))
    except errors.InvalidArgument as exc:
        return "error", exc.message
    if not isinstance(doc, dict):
        return "error", f"JSON Value: {codec.json_value_to_string(doc)} Is not object"
    return "ok", json.dumps(doc)  # tells 1 from 1.0, keeps -0.0, NaN and key order


def _reading(body):
    try:
        return "ok", json.dumps(codec.parse_json_document(body))
    except errors.InvalidArgument as exc:
        return "error", exc.message


_NUMBER_LITERALS = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,22})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
_JSON_LEAVES = st.one_of(
    _NUMBER_LITERALS, st.sampled_from(["NaN", "Infinity", "-Infinity", "true", "null", '"\\ud800"', '"\\udc00x"',
                                       '"\\ud83d\\ude00"', '"\\\\ud800"', "01", "1.", '"\t"']),
    st.text(max_size=5).map(json.dumps))


@st.composite
def _json_bodies(draw):
    """JSON-like text: mostly valid documents of number literals of every width, with the constants, escapes
    and near-misses the two parsers may read differently."""
    def value(depth):
        if depth > 2 or draw(st.booleans()):
            return draw(_JSON_LEAVES)
        return "[" + ", ".join(value(depth + 1) for _ in range(draw(st.integers(0, 3)))) + "]"
    members = ", ".join(f'"k{i}": {value(0)}' for i in range(draw(st.integers(0, 3))))
    text = "{" + members + "}"
    if draw(st.integers(0, 9)) == 0:  # a top-level non-object, or something after the object
        text = draw(st.sampled_from([value(0), text + " 1", text + " "]))
    return text.encode("utf-8") if draw(st.booleans()) else text


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(body=_json_bodies())
def test_the_fast_parser_reads_every_body_as_the_json_module_does(body):
    """orjson takes what it reads as json does and leaves the rest to json: the same document or the same
    error, whatever the body (wide integers stay Python ints, NaN is accepted, a lone surrogate is refused)."""
    assert _reading(body) == _json_module_reading(body)


@pytest.mark.parametrize("literal", ["-9223372036854775809", "18446744073709551616", "9" * 25, "-" + "1" * 40])
def test_integers_beyond_64_bits_stay_integers(literal):
    body = '{"instances": [%s, 0.5]}' % literal
    assert codec.parse_json_document(body) == {"instances": [int(literal), 0.5]}
    assert type(codec.parse_json_document(body.encode())["instances"][0]) is int
    # ...so that a float input refuses one as TF Serving does, instead of taking its rounded double.
    with pytest.raises(errors.InvalidArgument, match="without loss of precision"):
        codec.json_to_ndarray(codec.parse_json_document(body)["instances"], codec.DT_FLOAT)


@pytest.mark.parametrize("body, offset", [
    ('{"instances": [1.5, 1e999999]}', 20),
    ('{"instances": [[-2E+400]]}', 16),
    ('{"instances": [' + "9" * 400 + "]}", 15),
    # Python refuses int literals of more than 4300 digits with a ValueError; rapidjson refuses numbers beyond
    # double range. Either way the client sent it: INVALID_ARGUMENT, not INTERNAL.
    ('{"instances": [' + "1" * 5000 + "]}", 15),
])
def test_a_number_beyond_double_range_is_a_parse_error_not_infinity(body, offset):
    assert _parse_error(body) == f"JSON Parse error: Number too big to be stored in double. at offset: {offset}"


def test_large_finite_numbers_and_the_infinity_constant_still_parse():
    doc = codec.parse_json_document('{"instances": [1e308, -1.7976931348623157e308, 1e-400, Infinity, '
                                    + "9" * 300 + "]}")
    values = doc["instances"]
    assert values[0] == 1e308 and values[1] == -1.7976931348623157e308 and values[2] == 0.0
    assert values[3] == float("inf") and values[4] == int("9" * 300)


