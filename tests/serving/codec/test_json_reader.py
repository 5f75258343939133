"""Reading REST bodies (`serving.codec.json_reader`): what rapidjson reads and refuses, its messages and offsets."""

import json
import math

import hypothesis
from hypothesis import strategies as st
import pytest

from serving import errors
from serving.codec import dtypes
from serving.codec import json_reader
from serving.codec import json_tensors
from serving.codec import json_writer


def _parse_error(body) -> str:
    """The INVALID_ARGUMENT message parsing `body` raises."""
    with pytest.raises(errors.InvalidArgument) as info:
        json_reader.parse_json_document(body)
    return info.value.message


@pytest.mark.parametrize("body, offset", [
    ('{"instances": ["\\ud800"]}', 16),
    ('{"instances": ["ab\\udc00"]}', 18),
    ('{"examples": [{"\\ud83d": 1}]}', 16),
])
def test_lone_surrogate_escapes_are_a_parse_error(body, offset):
    assert _parse_error(body) == f"JSON Parse error: The surrogate pair in string is invalid. at offset: {offset}"


def test_surrogate_pairs_and_escaped_backslashes_are_fine():
    doc = json_reader.parse_json_document('{"a": "\\ud83d\\ude00", "b": "\\\\ud800"}')
    assert doc == {"a": "\U0001F600", "b": "\\ud800"}


def test_the_constants_rapidjson_reads_beyond_pythons_json_are_read():
    doc = json_reader.parse_json_document(b'{"a": [Inf, -Inf, -NaN, Infinity], "s": "Inf and -NaN stay text"}')
    assert doc["a"][:2] == [math.inf, -math.inf] and math.isnan(doc["a"][2]) and doc["a"][3] == math.inf
    assert doc["s"] == "Inf and -NaN stay text"
    assert math.isnan(json_reader.parse_json_document(b'{"a": [-NaN]}')["a"][0])  # alone too
    # Errors keep the body's own offsets.
    too_big = "JSON Parse error: Number too big to be stored in double. at offset: 7"
    assert _parse_error(b'{"a": [1e400, Inf]}') == too_big
    assert _parse_error(b'{"a": Infin}') == "JSON Parse error: Invalid value. at offset: 6"


def _json_module_reading(body):
    """What the json-module path (the parser before orjson) makes of a body: ("ok", canonical text) or
    ("error", message)."""
    try:
        raw = body if isinstance(body, bytes) else body.encode()
        doc = json_reader._parse_with_json(body, json_reader._skeleton(raw))
    except errors.InvalidArgument as exc:
        return "error", exc.message
    if not isinstance(doc, dict):
        return "error", f"JSON Value: {json_writer.json_value_to_string(doc)} Is not object"
    return "ok", json.dumps(doc)  # tells 1 from 1.0, keeps -0.0, NaN and key order


def _reading(body):
    try:
        return "ok", json.dumps(json_reader.parse_json_document(body))
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
    assert json_reader.parse_json_document(body) == {"instances": [int(literal), 0.5]}
    assert type(json_reader.parse_json_document(body.encode())["instances"][0]) is int
    # ...so that a float input refuses one as TF Serving does, instead of taking its rounded double.
    with pytest.raises(errors.InvalidArgument, match="without loss of precision"):
        json_tensors.json_to_ndarray(json_reader.parse_json_document(body)["instances"], dtypes.DT_FLOAT)


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
    doc = json_reader.parse_json_document('{"instances": [1e308, -1.7976931348623157e308, 1e-400, Infinity, '
                                          + "9" * 300 + "]}")
    values = doc["instances"]
    assert values[0] == 1e308 and values[1] == -1.7976931348623157e308 and values[2] == 0.0
    assert values[3] == float("inf") and values[4] == int("9" * 300)
