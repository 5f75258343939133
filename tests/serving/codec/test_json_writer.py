"""REST answers (`serving.codec.json_writer`): floats, strings and formats as TF Serving writes them."""

import hypothesis
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import numpy as np
import pytest

from serving import errors
from serving.codec import json_writer


@pytest.mark.parametrize("value, expected", [
    (2.5, "2.5"), (3.0, "3.0"), (0.2, "0.2"), (1e-05, "1e-05"), (9000000.0, "9e+06"),
    (float("nan"), "NaN"), (float("-inf"), "-Infinity"), (1 / 3, "0.333333343"),
])
def test_floats_print_as_tf_serving_prints_them(value, expected):
    assert json_writer.format_decimal(np.float32(value), np.float32) == expected


def _reference_json(array) -> str:
    """A tensor written element by element with `format_decimal`, the definition the fast writer must match."""
    if array.ndim == 0:
        return json_writer.format_decimal(array[()], np.float64 if array.dtype.type == np.float64 else np.float32)
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
    columnar = json_writer.arrays_to_predict_json({"y": array}, json_writer.COLUMNAR_FORMAT)
    assert columnar == '{"outputs": ' + _reference_json(array) + "}"
    rows = json_writer.arrays_to_predict_json({"y": array}, json_writer.ROW_FORMAT)
    assert rows == '{"predictions": [' + ", ".join(_reference_json(r) for r in array) + "]}"
    rows = json_writer.arrays_to_predict_json({"y": array, "z": array}, json_writer.ROW_FORMAT)
    assert rows == '{"predictions": [' + ", ".join(
        '{"y": %s, "z": %s}' % (_reference_json(r), _reference_json(r)) for r in array) + "]}"


def test_row_and_columnar_answers():
    outputs = {"b_bytes": np.array([b"\x00\x01"], dtype=object),
               "a": np.array([[1.0, 2.5]], np.float32)}
    assert json_writer.arrays_to_predict_json(outputs, json_writer.ROW_FORMAT) == (
        '{"predictions": [{"a": [1.0, 2.5], "b_bytes": {"b64": "AAE="}}]}')
    assert json_writer.arrays_to_predict_json({"a": outputs["a"]}, json_writer.COLUMNAR_FORMAT) == (
        '{"outputs": [[1.0, 2.5]]}')
    with pytest.raises(errors.InvalidArgument, match="inconsistent batch size"):
        json_writer.arrays_to_predict_json({"a": np.zeros([2]), "b": np.zeros([3])}, json_writer.ROW_FORMAT)


def test_string_outputs_are_written_as_rapidjsons_writer_writes_them():
    # Bytes that are not UTF-8 as they are (no encoding check), control characters as upper-case \u00XX.
    strings = np.array([b"caf\xe9", b"a\x1fb"], dtype=object)
    text = json_writer.arrays_to_predict_json({"s": strings}, json_writer.ROW_FORMAT)
    assert text.encode("utf-8", "surrogateescape") == b'{"predictions": ["caf\xe9", "a\\u001Fb"]}'
