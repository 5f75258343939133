"""Predict bodies whose inputs array is read a chunk at a time (`json_reader.parse_predict_document`): the same
arrays, bit for bit, and the same errors as reading the body whole, in memory a small multiple of the body."""

import gc
import json
import pathlib
import subprocess
import sys

import hypothesis
from hypothesis import strategies as st
import numpy as np
import pytest

from serving import errors
from serving.codec import dtypes
from serving.codec import json_reader
from serving.codec import json_tensors

# TF Serving's and this server's default --grpc_max_message_bytes, which bounds a REST body.
MAX_BODY_BYTES = 64 * 1024 * 1024
_REPO = pathlib.Path(__file__).resolve().parents[3]
_CHUNK = 24  # bytes: tiny bodies are cut into many chunks


def _outcome(read, body, input_dtypes):
    """What a predict body becomes: ("ok", [(name, dtype, shape, bytes or values)], format) or ("error", type,
    message), reading it with `read`."""
    try:
        doc = read(body)
        arrays, fmt = json_tensors.json_to_predict_inputs(doc, input_dtypes, "")
    except errors.ServingError as exc:
        return "error", type(exc), exc.message
    return "ok", [(name, a.dtype, a.shape, a.tolist() if a.dtype == object else a.tobytes())
                  for name, a in arrays.items()], fmt


_LEAF_LITERALS = st.one_of(
    st.floats(-1e6, 1e6).map(repr), st.integers(-300, 300).map(str),
    st.from_regex(r"-?(0|[1-9][0-9]{0,9})(\.[0-9]{1,12})?([eE][+-]?[0-9]{1,2})?", fullmatch=True),
    st.sampled_from(["-0", "-0.0", "16777215", "16777216", "9007199254740993", "3.5e38", "1e39", "1e-400",
                     "12345678901234567890", "NaN", "-Infinity", "true", "null", '"s"', '{"b64": "AA=="}',
                     "[]", "[1]", '"]"', '"x\\"],["']))


_SIGNATURES = [{"x": dtypes.DT_FLOAT}, {"x": dtypes.DT_DOUBLE}, {"x": dtypes.DT_INT32}, {"x": dtypes.DT_INT8},
               {"x": dtypes.DT_INT64}, {"x": dtypes.DT_STRING},
               {"x": dtypes.DT_FLOAT, "w": dtypes.DT_INT32}, {"x": dtypes.DT_DOUBLE, "w": dtypes.DT_FLOAT}]


@st.composite
def _bodies(draw):
    """A predict body: instances (plain or named rows) or inputs, rows of a random shape, mostly valid numbers,
    sometimes a leaf or a row that makes the body invalid for the signature or as JSON."""
    rows = draw(st.integers(1, 40))
    row_shape = draw(st.lists(st.integers(0 if draw(st.integers(0, 9)) == 0 else 1, 3), max_size=2))
    pool = ["1", "7", "-3", "0"] if draw(st.booleans()) else ["0.5", "1", "-0.25", "7", "0.123456789", "2e-3"]
    leaves = draw(st.lists(st.sampled_from(pool),
                           min_size=rows * int(np.prod(row_shape, dtype=int)),
                           max_size=rows * int(np.prod(row_shape, dtype=int))))
    if leaves and draw(st.integers(0, 2)) == 0:
        leaves[draw(st.integers(0, len(leaves) - 1))] = draw(_LEAF_LITERALS)

    def nest(flat, shape):
        if not shape:
            return flat[0]
        step = len(flat) // shape[0] if shape[0] else 0
        return "[" + ", ".join(nest(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])) + "]"

    row_texts = [nest(leaves[i::rows], row_shape) for i in range(rows)]
    if draw(st.integers(0, 5)) == 0:
        row_texts[draw(st.integers(0, rows - 1))] = draw(st.sampled_from(["[1, 2, 3, 4]", "[[0.5]]", '"s"', "1,"]))
    key = draw(st.sampled_from(["instances", "inputs", "named"]))
    named = key == "named"
    if named:
        row_texts = ['{"x": %s,\n "w": %d}' % (text, i) for i, text in enumerate(row_texts)]
        key = "instances"
    value = "[" + draw(st.sampled_from([", ", ",", " ,\n "])).join(row_texts) + "]"
    head = draw(st.sampled_from(['{"%s": ' % key, '{"signature_name": "", "%s": ' % key,
                                 '{ "%s" : ' % key, '{"a": 1, "%s": ' % key]))
    fine_tails = ["}", ', "signature_name": "serving_default"}', " } "]
    odd_tails = [', "b": [1]}', ', "inputs": 1}', ', "signature_name": 1}', ', "%s": [1]}' % key, "}x"]
    tail = draw(st.sampled_from(fine_tails if draw(st.booleans()) else odd_tails))
    # Mostly a signature the body fits (one input, or the two the named rows name), sometimes any.
    signatures = _SIGNATURES[6:] if named else _SIGNATURES[:6]
    input_dtypes = draw(st.sampled_from(signatures if draw(st.integers(0, 4)) else _SIGNATURES))
    return (head + value + tail).encode(), input_dtypes


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(case=_bodies())
def test_reading_in_chunks_gives_the_whole_reading_arrays_and_errors(case):
    body, input_dtypes = case
    chunked = _outcome(lambda b: json_reader.parse_predict_document(b, chunk_bytes=_CHUNK), body, input_dtypes)
    assert chunked == _outcome(json_reader.parse_json_document, body, input_dtypes)


def test_a_large_numeric_array_is_deferred_and_an_odd_body_is_read_whole():
    body = b'{"instances": [' + b", ".join([b"[0.5, 1, -2e-3]"] * 20) + b"]}"
    doc = json_reader.parse_predict_document(body, chunk_bytes=_CHUNK)
    assert isinstance(doc["instances"], json_reader.DeferredArray)
    assert len(list(doc["instances"].chunks())) > 4
    # A chunk of strings for a float input: converted whole (the error it gives), the collector running again.
    with pytest.raises(errors.InvalidArgument, match="is not of expected type: float"):
        json_tensors.json_to_predict_inputs(json_reader.parse_predict_document(
            body.replace(b"-2e-3]]", b'"s"]]'), chunk_bytes=_CHUNK), {"x": dtypes.DT_FLOAT}, "")
    assert gc.isenabled()
    for odd in (body.replace(b"}", b', "instances": []}'),  # a duplicate key: the last one counts
                body.replace(b"-2e-3", b"NaN"),  # orjson refuses NaN; the json module reads the body
                body.replace(b"-2e-3", b"12345678901234567890")):  # orjson would read it as a float
        assert isinstance(json_reader.parse_predict_document(odd, chunk_bytes=_CHUNK), dict)
        assert json_reader.parse_predict_document(odd, chunk_bytes=_CHUNK) == json_reader.parse_json_document(odd)


def _largest_body(rng) -> bytes:
    """`{"instances": [[f, ...], ...]}` of exactly the largest size the body limit admits: rows of 64 short float
    literals ("0.3", the densest float text: most numbers, so most Python objects, per byte)."""
    rows = [b"[" + b", ".join(b"%.1f" % v for v in rng.uniform(-1, 1, 64)) + b"]" for _ in range(256)]
    block = b", ".join(rows)
    head, tail = b'{"instances": [', b"]}"
    count = (MAX_BODY_BYTES - len(head) - len(tail)) // (len(block) + 2)
    body = head + b", ".join([block] * count) + tail
    return body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"


_MEASURE = """
import json, sys
import numpy as np
from serving.codec import dtypes, json_reader, json_tensors
from tests.serving.codec.test_json_chunks import MAX_BODY_BYTES, _largest_body

def peak_mib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

body = _largest_body(np.random.default_rng(0))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak so far (building the body) is forgotten: VmHWM restarts from VmRSS
before = peak_mib()
arrays, _ = json_tensors.json_to_predict_inputs(json_reader.parse_predict_document(body), {"x": dtypes.DT_FLOAT}, "")
first = np.array(json.loads(body[len(b'{"instances": '):body.index(b"]") + 1] + b"]"), np.float32)
print(json.dumps({"body": len(body), "peak_growth_mib": peak_mib() - before, "shape": arrays["x"].shape,
                  "first_row_equal": bool(np.array_equal(arrays["x"][:1], first)), "dtype": str(arrays["x"].dtype)}))
"""


def test_the_largest_admissible_body_converts_in_under_three_times_its_size():
    # In a fresh process, by its peak resident memory: what the server's process pays, allocator and all.
    result = subprocess.run([sys.executable, "-c", _MEASURE], cwd=_REPO, capture_output=True, text=True,
                            timeout=120, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["body"] == MAX_BODY_BYTES and measured["dtype"] == "float32" and measured["first_row_equal"]
    assert measured["shape"][1] == 64
    body_mib = MAX_BODY_BYTES / 2 ** 20
    assert measured["peak_growth_mib"] < 3 * body_mib, f"{measured['peak_growth_mib']:.0f} MiB for {body_mib:.0f}"
