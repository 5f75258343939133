"""Conversions between wire formats and numpy, one module per format.

Everything here is pure data conversion; it knows nothing about models or servers. The rules (and the error
messages) follow TF Serving's:

* `tensor_proto`: TensorProto <-> numpy (`Tensor::FromProto`).
* `example`: the tf.Example input of Classify, Regress and MultiInference, from a gRPC `Input` or a REST body
  (`servables/tensorflow/util.cc`).
* `json_reader`: a REST body read as rapidjson reads it, with its messages and offsets.
* `json_tensors`: REST predict JSON (`instances` rows or columnar `inputs`, `{"b64": ...}` strings) -> numpy
  (`util/json_tensor.cc`).
* `json_writer`: tensors, results and errors -> REST JSON, floats printed as TF Serving prints them.
* `dtypes`: the TensorFlow DataTypes they share.

The names callers use are importable from `serving.codec` itself.
"""

from serving.codec.dtypes import (DT_BOOL, DT_COMPLEX64, DT_COMPLEX128, DT_DOUBLE, DT_FLOAT, DT_HALF, DT_INT8,
                                  DT_INT16, DT_INT32, DT_INT64, DT_STRING, DT_UINT8, DT_UINT16, DT_UINT32,
                                  DT_UINT64, MAX_RANK, datatype_of, dtype_name, numpy_dtype)
from serving.codec.example import input_to_serialized_examples, json_to_classify_regress_request
from serving.codec.json_reader import parse_json_document, proto_text, text_bytes
# benchmarks/rest_json.py times the reader's parts.
from serving.codec.json_reader import _parse_float, _parse_int, _parse_with_json, _skeleton  # noqa: F401
from serving.codec.json_tensors import json_to_ndarray, json_to_predict_inputs, signature_name_from_json
from serving.codec.json_writer import (COLUMNAR_FORMAT, ROW_FORMAT, arrays_to_predict_json,
                                       classification_result_to_json, error_to_json, format_decimal, json_string,
                                       json_value_to_string, metadata_response_to_json, regression_result_to_json,
                                       status_response_to_json)
from serving.codec.tensor_proto import fill_tensor_proto, ndarray_to_tensor_proto, tensor_proto_to_ndarray
