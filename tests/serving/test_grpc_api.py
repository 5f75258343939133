"""Every gRPC API, and every error case with TF Serving's status code and message."""

import grpc
import numpy as np
import pytest

from tests.serving.conftest import FEATURES, MC_MODEL, OUTPUTS, rpc_error, tensor, to_array


def _request(name="half_plus_two", signature="", **inputs):
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(value)
    return request


def _x(rows=2):
    return tensor(np.arange(rows * FEATURES, dtype=np.float32).reshape(rows, FEATURES))


def test_predict_returns_model_spec_and_all_outputs(fixture_stub):
    response = fixture_stub.Predict(_request(x=tensor([[1.0], [3.0]])), timeout=30)
    assert response.model_spec.name == "half_plus_two"
    assert response.model_spec.signature_name == "serving_default"
    assert response.model_spec.version.value == 123
    assert to_array(response.outputs["y"]).tolist() == [[2.5], [3.5]]
    # TF Serving answers with typed fields (AsProtoField), not tensor_content.
    assert list(response.outputs["y"].float_val) == [2.5, 3.5]


def test_predict_mc_signature_of_our_models(mc_stub):
    request = _request(MC_MODEL, "predict_mc", x=_x(), num_samples=tensor(200, np.int32),
                       seed=tensor([1, 2], np.int32))
    response = mc_stub.Predict(request, timeout=30)
    assert sorted(response.outputs) == sorted(
        ["mean", "stddev", "aleatoric_stddev", "epistemic_stddev", "lower", "upper"])
    mean = to_array(response.outputs["mean"])
    assert mean.shape == (2, OUTPUTS) and mean.dtype == np.float32
    again = to_array(mc_stub.Predict(request, timeout=30).outputs["mean"])
    np.testing.assert_array_equal(mean, again)  # same seed, same draws


def test_output_filter_selects_outputs(mc_stub):
    request = _request(MC_MODEL, x=_x())
    request.output_filter.extend(["mean", "upper"])
    response = mc_stub.Predict(request, timeout=30)
    assert sorted(response.outputs) == ["mean", "upper"]


@pytest.mark.parametrize("spec, code, message", [
    ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
    ({"name": "half_plus_two", "version": 7}, grpc.StatusCode.NOT_FOUND,
     "Servable not found for request: Specific(half_plus_two, 7)"),
    ({"name": "half_plus_two", "label": "nope"}, grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),
    ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    ({"name": "half_plus_two", "signature": "nope"}, grpc.StatusCode.FAILED_PRECONDITION,
     'Serving signature key "nope" not found.'),
])
def test_predict_model_spec_errors(fixture_stub, spec, code, message):
    request = _request(spec["name"], spec.get("signature", ""), x=tensor([[1.0]]))
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    if "label" in spec:
        request.model_spec.version_label = spec["label"]
    error = rpc_error(fixture_stub.Predict, request, timeout=30)
    assert error.code() == code
    assert error.details() == message


def test_missing_input_is_invalid_argument(mc_stub):
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, "predict_mc", x=_x()), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input size does not match signature: 1!=3 len({x}) != len({num_samples,seed,x}). "
        "Sent extra: {}. Missing but required: {num_samples,seed}.")


def test_extra_input_is_invalid_argument(mc_stub):
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=_x(), z=_x()), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input size does not match signature: 2!=1 len({x,z}) != len({x}). Sent extra: {z}. "
        "Missing but required: {}.")


def test_misnamed_input_is_invalid_argument(mc_stub):
    # `saved_model::GetInputValues`, which TF Serving's Predict calls: each signature input is looked up in the
    # request, then in the signature's defaults.
    from tensorflow_serving.apis import get_model_metadata_pb2
    metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    metadata.model_spec.name = MC_MODEL
    signatures = get_model_metadata_pb2.SignatureDefMap()
    mc_stub.GetModelMetadata(metadata, timeout=30).metadata["signature_def"].Unpack(signatures)
    feed = signatures.signature_def["serving_default"].inputs["x"].name
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, z=_x()), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"Signature input alias: x(feed name: {feed}) not found in request and no default value provided. "
        "Inputs expected to be in the request {z}, or default input alias set: ")


def test_an_input_the_signature_lacks_is_refused_when_defaults_fill_the_rest(fixture_stub):
    # The TF2 fixture's serving_default has a default for its one input, so a request naming another input
    # passes the size check and fails on the name.
    error = rpc_error(fixture_stub.Predict, _request("tf2", z=tensor([[1.0]])), timeout=30)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "Inputs contains invalid name. Used request inputs: , request input: z")
    response = fixture_stub.Predict(_request("tf2"), timeout=30)  # the default alone
    assert response.outputs


@pytest.mark.parametrize("method", ["Predict", "Classify", "Regress"])
def test_a_request_without_model_spec_is_missing_model_spec(fixture_stub, method):
    from tensorflow_serving.apis import classification_pb2, predict_pb2, regression_pb2
    request = {"Predict": predict_pb2.PredictRequest, "Classify": classification_pb2.ClassificationRequest,
               "Regress": regression_pb2.RegressionRequest}[method]()
    error = rpc_error(getattr(fixture_stub, method), request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_wrong_dtype_is_invalid_argument(mc_stub):
    request = _request(MC_MODEL, x=tensor(np.ones([2, FEATURES]), np.int32))
    error = rpc_error(mc_stub.Predict, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "int32" in error.details() and "float" in error.details()


def test_bad_shape_is_invalid_argument(mc_stub):
    request = _request(MC_MODEL, x=tensor(np.ones([2, FEATURES + 2])))
    error = rpc_error(mc_stub.Predict, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unparsable_tensor_is_invalid_argument(mc_stub):
    bad = tensor(np.ones([2, FEATURES]))
    bad.float_val.extend([1.0] * 10)  # more values than the shape holds
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=bad), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "tensor parsing error: x"


def test_failed_assert_inside_the_signature_is_invalid_argument(mc_stub):
    x = np.ones([1, FEATURES], np.float32)
    x[0, 0] = np.nan
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=tensor(x)), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x must be finite" in error.details()
    # The server survived it.
    assert mc_stub.Predict(_request(MC_MODEL, x=_x()), timeout=30).outputs["mean"]


@pytest.mark.parametrize("output_filter, message", [
    (["nope"], "output tensor alias not found in signature: nope Outputs expected to be in the "
               "set {aleatoric_stddev,epistemic_stddev,lower,mean,stddev,upper}."),
    (["mean", "mean"], "duplicate output tensor alias: mean"),
])
def test_bad_output_filter_is_invalid_argument(mc_stub, output_filter, message):
    request = _request(MC_MODEL, x=_x())
    request.output_filter.extend(output_filter)
    error = rpc_error(mc_stub.Predict, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == message


def test_num_samples_over_the_limit_is_invalid_argument(mc_stub):
    request = _request(MC_MODEL, "predict_mc", x=_x(), num_samples=tensor(501, np.int32),
                       seed=tensor([0, 0], np.int32))
    error = rpc_error(mc_stub.Predict, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("num_samples=501 is larger than this server's limit "
                               "--max_num_samples=500")
    request.inputs["num_samples"].CopyFrom(tensor(500, np.int32))
    assert mc_stub.Predict(request, timeout=30).outputs["mean"]


def test_too_many_rows_is_invalid_argument(mc_stub):
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=_x(65)), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("Input x has 65 rows, more than this server's limit "
                               "--max_batch_rows=64")


def test_samples_times_rows_over_the_limit_is_invalid_argument(mc_stub):
    request = _request(MC_MODEL, "predict_mc", x=_x(20), num_samples=tensor(401, np.int32),
                       seed=tensor([0, 0], np.int32))
    error = rpc_error(mc_stub.Predict, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("num_samples * rows = 401 * 20 is larger than this server's limit "
                               "--max_sample_rows=8000")
    request.inputs["num_samples"].CopyFrom(tensor(400, np.int32))
    assert mc_stub.Predict(request, timeout=30).outputs["mean"]


def test_message_over_the_limit_is_resource_exhausted(mc_stub):
    big = tensor(np.ones([40, 4096], np.float32))  # ~640 KB > --grpc_max_message_bytes
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=big), timeout=30)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_huge_declared_shape_is_resource_exhausted_not_an_allocation(mc_stub):
    from tensorflow.core.framework import tensor_pb2, types_pb2
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.dim.add().size = 10 ** 9
    proto.tensor_shape.dim.add().size = FEATURES
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=proto), timeout=30)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max_tensor_bytes=65536" in error.details()


def test_more_dimensions_than_numpy_holds_is_invalid_argument(mc_stub):
    from tensorflow.core.framework import tensor_pb2, types_pb2
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    for _ in range(70):
        proto.tensor_shape.dim.add().size = 1
    error = rpc_error(mc_stub.Predict, _request(MC_MODEL, x=proto), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Input x has 70 dimensions; this server supports at most 64"


def test_classify_on_a_signature_without_tf_example_input(fixture_stub):
    from tensorflow_serving.apis import classification_pb2
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.input.example_list.examples.add()
    error = rpc_error(fixture_stub.Classify, request, timeout=30)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("No classification inputs found in SignatureDef: ")


def test_classify_unknown_signature_and_empty_input(fixture_stub):
    from tensorflow_serving.apis import classification_pb2
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "nope"
    error = rpc_error(fixture_stub.Classify, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "No signature was found with the name: nope"
    request.model_spec.signature_name = "classify_x_to_y"
    error = rpc_error(fixture_stub.Classify, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Input is empty."


def test_regress_needs_a_single_outputs_tensor(fixture_stub):
    from tensorflow_serving.apis import regression_pb2
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.add()
    error = rpc_error(fixture_stub.Regress, request, timeout=30)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details().startswith("No regression outputs found in SignatureDef: ")


def test_multi_inference_errors(fixture_stub):
    from tensorflow_serving.apis import inference_pb2
    request = inference_pb2.MultiInferenceRequest()
    for name in ("half_plus_two", "half_plus_three"):
        task = request.tasks.add()
        task.model_spec.name = name
        task.model_spec.signature_name = "regress_x_to_y"
        task.method_name = "tensorflow/serving/regress"
    request.input.example_list.examples.add()
    error = rpc_error(fixture_stub.MultiInference, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("All ModelSpecs in a MultiInferenceRequest must access the same "
                               "model name.")
    request.tasks[1].model_spec.name = "half_plus_two"
    request.tasks[1].method_name = "tensorflow/serving/predict"
    request.tasks[1].model_spec.signature_name = "regress_x_to_y2"
    error = rpc_error(fixture_stub.MultiInference, request, timeout=30)
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "Unsupported signature method_name: tensorflow/serving/predict"


def test_get_model_metadata_errors(fixture_stub):
    from tensorflow_serving.apis import get_model_metadata_pb2
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    error = rpc_error(fixture_stub.GetModelMetadata, request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")
    request.model_spec.name = "half_plus_two"
    error = rpc_error(fixture_stub.GetModelMetadata, request, timeout=30)
    assert error.details() == "GetModelMetadataRequest must specify at least one metadata_field"
    request.metadata_field.append("nope")
    error = rpc_error(fixture_stub.GetModelMetadata, request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT,
                                               "Metadata field %s is not supportednope")  # sic, TF Serving's


def test_get_model_status(fixture_model_stub):
    from tensorflow_serving.apis import get_model_status_pb2
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "half_plus_two"
    response = fixture_model_stub.GetModelStatus(request, timeout=30)
    (status,) = response.model_version_status
    assert (status.version, status.state, status.status.error_code,
            status.status.error_message) == (123, 30, 0, "")
    request.model_spec.name = "nope"
    error = rpc_error(fixture_model_stub.GetModelStatus, request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "Could not find any versions of model nope")
    request.model_spec.name = "half_plus_two"
    request.model_spec.version.value = 5
    error = rpc_error(fixture_model_stub.GetModelStatus, request, timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND,
                                               "Could not find version 5 of model half_plus_two")
    error = rpc_error(fixture_model_stub.GetModelStatus,
                      get_model_status_pb2.GetModelStatusRequest(), timeout=30)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_reload_config_refuses_non_list_configs(fixture_model_stub):
    from tensorflow_serving.apis import model_management_pb2
    request = model_management_pb2.ReloadConfigRequest()
    call = fixture_model_stub.HandleReloadConfigRequest.with_call
    error = rpc_error(call, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == ("ServerModelConfig type not supported by HandleReloadConfigRequest. "
                               "Only ModelConfigList is currently supported")


def test_wrong_output_dtypes_are_named_as_tensorflow_names_them():
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import classification_pb2, regression_pb2
    from serving import errors
    from serving.data_plane import DataPlane
    signature = meta_graph_pb2.SignatureDef()
    signature.outputs["scores"].name = "scores:0"
    with pytest.raises(errors.InvalidArgument, match="Expected scores Tensor of DT_FLOAT. Got: DT_DOUBLE$"):
        DataPlane._classification_result(signature, 1, ["scores:0"], [np.zeros([1, 2])],
                                         classification_pb2.ClassificationResult())
    with pytest.raises(errors.InvalidArgument, match="Expected output Tensor of DT_FLOAT.  Got: DT_INT64$"):
        DataPlane._regression_result(1, np.zeros([1], np.int64), regression_pb2.RegressionResult())


def test_a_request_past_the_allocator_budget_is_resource_exhausted_and_the_next_is_served(
        monkeypatch, mc_base_path, start_server):
    """The server runs TensorFlow's pooling CPU allocator (`serving.RUNTIME_DEFAULTS`), so its cap
    TF_CPU_BFC_MEM_LIMIT_IN_MB holds: a request whose tensors need more fails RESOURCE_EXHAUSTED with TensorFlow's
    OOM message, as tensorflow_model_server answers under the same setting, and the server answers the next
    request. Under malloc the variable means nothing and the large request would be answered."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    monkeypatch.setenv("TF_CPU_BFC_MEM_LIMIT_IN_MB", "8")
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}"], rest=False)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)

    def request(rows, num_samples):
        return _request(MC_MODEL, "predict_mc", x=_x(rows), num_samples=tensor(num_samples, np.int32),
                        seed=tensor([0, 0], np.int32))

    # [S, rows, outputs] draws of 1000 x 1000 x 2 floats: 8 MB each, several alive at once.
    error = rpc_error(stub.Predict, request(1000, 1000), timeout=60)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "OOM when allocating tensor" in error.details()
    assert to_array(stub.Predict(request(2, 10), timeout=30).outputs["mean"]).shape == (2, OUTPUTS)
