"""tf.Example inputs (`serving.codec.example`) from REST JSON and gRPC `Input`s."""

import pytest

from serving import errors
from serving.codec import dtypes
from serving.codec import example
from serving.codec import json_reader
from serving.codec import json_tensors


def test_classify_json_builds_examples_with_context():
    from tensorflow_serving.apis import classification_pb2
    request = classification_pb2.ClassificationRequest()
    example.json_to_classify_regress_request(
        {"context": {"c": "s"}, "examples": [{"x": [1.0, 2.0], "n": 3, "b": {"b64": "AAE="}}]},
        request)
    features = request.input.example_list_with_context.examples[0].features.feature
    assert list(features["x"].float_list.value) == [1.0, 2.0]
    assert list(features["n"].int64_list.value) == [3]
    assert list(features["b"].bytes_list.value) == [b"\x00\x01"]
    serialized = example.input_to_serialized_examples(request.input)
    assert serialized.shape == (1,)
    with pytest.raises(errors.InvalidArgument, match="expecting type: float"):
        example.json_to_classify_regress_request({"examples": [{"x": [1.0, "a"]}]},
                                                 classification_pb2.ClassificationRequest())


def test_bytes_that_are_not_utf8_reach_strings_and_examples_as_they_came():
    from tensorflow_serving.apis import regression_pb2
    doc = json_reader.parse_json_document(
        b'\xef\xbb\xbf{"s": ["caf\xe9", "\xed\xa0\x80"], "examples": [{"f\xff": "\xc3"}]}')
    assert json_tensors.json_to_ndarray(doc["s"], dtypes.DT_STRING).tolist() == [b"caf\xe9", b"\xed\xa0\x80"]
    request = example.json_to_classify_regress_request(doc, regression_pb2.RegressionRequest())
    (feature_name, feature), = request.input.example_list.examples[0].features.feature.items()
    # A protobuf string holds UTF-8 only: the name's stray byte becomes U+FFFD; the value's bytes are kept.
    assert (feature_name, list(feature.bytes_list.value)) == ("f\ufffd", [b"\xc3"])
