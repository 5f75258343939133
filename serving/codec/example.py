"""tf.Example inputs of Classify, Regress and MultiInference, from either door.

A gRPC `tensorflow.serving.Input` becomes the 1-D string tensor of serialized `tf.Example`s the signature takes
(`InputToSerializedExampleTensor` in TF Serving's `servables/tensorflow/util.cc`); a REST body's `examples` (and
optional `context`) become that `Input` first, with the checks and messages of TF Serving's `json_tensor.cc`
(`AddValueToFeature`).
"""

import math

import numpy as np

from serving import errors
from serving.codec.dtypes import DT_FLOAT
from serving.codec.json_reader import proto_text, text_bytes
from serving.codec.json_tensors import FLOAT_LIMIT, decode_b64, is_b64_object, json_type, signature_name_from_json
from serving.codec.json_writer import json_value_to_string


def input_to_serialized_examples(input_proto) -> np.ndarray:
    """A `tensorflow.serving.Input` as the 1-D string tensor of serialized `tf.Example`s.

    With `example_list_with_context`, each example is the serialized context followed by the
    serialized example: protobuf merges concatenated messages, so the model sees the context's
    features joined with the example's own (`InputToSerializedExampleTensor` in TF Serving).
    """
    kind = input_proto.WhichOneof("kind")
    if kind == "example_list":
        serialized = [ex.SerializeToString() for ex in input_proto.example_list.examples]
    elif kind == "example_list_with_context":
        context = input_proto.example_list_with_context.context.SerializeToString()
        serialized = [context + ex.SerializeToString()
                      for ex in input_proto.example_list_with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise errors.InvalidArgument("Input is empty.")
    out = np.empty(len(serialized), dtype=object)
    out[:] = serialized
    return out


def _add_feature_value(value, name, feature):
    """One JSON value into a tf.train.Feature (`AddValueToFeature` in TF Serving)."""
    def incompatible():
        kind = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}.get(
            feature.WhichOneof("kind"), "UNKNOWN")
        return errors.InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {kind}")

    def check_kind(kind):
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            raise incompatible()

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64_object(value)):
        raise errors.InvalidArgument(
            f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        check_kind("int64_list")
        feature.int64_list.value.append(int(value))
    elif isinstance(value, dict):
        check_kind("bytes_list")
        feature.bytes_list.value.append(decode_b64(value))
    elif isinstance(value, str):
        check_kind("bytes_list")
        feature.bytes_list.value.append(text_bytes(value))
    elif isinstance(value, float):
        check_kind("float_list")
        if math.isfinite(value) and abs(value) > FLOAT_LIMIT[DT_FLOAT]:
            raise errors.InvalidArgument(
                f"Cannot convert JSON value: {json_value_to_string(value)} to float without loss "
                "of precision.")
        feature.float_list.value.append(value)
    else:
        check_kind("int64_list")
        if value > 2**63 - 1:
            raise errors.InvalidArgument(
                f"Feature: {name} has uint64 element. Only int64 is supported.")
        if value < -2**63:
            raise errors.InvalidArgument(
                f"Feature: {name} has element with unexpected JSON type: Number")
        feature.int64_list.value.append(value)


def _json_to_example(value, example):
    if not isinstance(value, dict):
        raise errors.InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[proto_text(name)]
        for item in (content if isinstance(content, list) else [content]):
            _add_feature_value(item, name, feature)


def json_to_classify_regress_request(doc: dict, request):
    """Fills a Classification/RegressionRequest from REST JSON (`examples`, optional `context`)."""
    request.model_spec.signature_name = signature_name_from_json(doc)
    has_context = "context" in doc
    if has_context:
        _json_to_example(doc["context"], request.input.example_list_with_context.context)
    if "examples" not in doc:
        raise errors.InvalidArgument(
            # "classify" for regress too: TF Serving's one parser for both hard-codes it.
            f"JSON Value: {json_value_to_string(doc)} When method is classify, key 'examples' is "
            "expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(doc)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise errors.InvalidArgument(
            f"JSON Value: {json_value_to_string(doc)} 'examples' value is an empty array")
    for value in examples:
        target = (request.input.example_list_with_context.examples if has_context
                  else request.input.example_list.examples)
        _json_to_example(value, target.add())
    return request
