"""TF Serving's own test models, served as `tensorflow_model_server` serves them."""

import base64
import json

import grpc
import pytest
import requests

from tests.serving.conftest import rpc_error, tensor, to_array, write_config


def _predict(stub, name, x, signature="", version=None, label=None, output_filter=()):
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs["x"].CopyFrom(tensor(x))
    request.output_filter.extend(output_filter)
    return stub.Predict(request, timeout=30)


def _example(**features):
    import tensorflow as tf
    feature = {k: tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
               for k, v in features.items()}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def test_rest_tutorial_half_plus_two_answers_predictions(fixture_server):
    response = requests.post(fixture_server.rest + "/v1/models/half_plus_two:predict",
                             data='{"instances": [1.0, 2.0, 5.0]}', timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}


def test_half_plus_three_from_the_good_config(fixture_server):
    response = requests.post(fixture_server.rest + "/v1/models/half_plus_three:predict",
                             json={"instances": [[1.0], [4.0]]}, timeout=30)
    assert response.json() == {"predictions": [[3.5], [5.0]]}


def _normalise_metadata(doc):
    """Both sides as protos and back to JSON: field order, empty maps and defaults agree.

    `SignatureDef.defaults` (default input values) is dropped: the TF2 fixture's saved_model.pb
    was exported by a TensorFlow that records `defaults` for `serving_default`, but the JSON
    beside it was produced before that field existed, so the two fixture files disagree there.
    """
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2
    defs = get_model_metadata_pb2.SignatureDefMap()
    json_format.ParseDict(doc["metadata"]["signature_def"], defs)
    for signature in defs.signature_def.values():
        signature.ClearField("defaults")
    return {"version": doc["model_spec"]["version"],
            "signature_def": json_format.MessageToDict(defs, preserving_proto_field_name=True)}


@pytest.mark.parametrize("model, fixture_file", [
    ("half_plus_two", "half_plus_two_model_metadata.json"),
    ("two_versions", "saved_model_half_plus_two_2_versions_metadata.json"),
    ("tf2", "saved_model_half_plus_two_tf2_2_versions_metadata.json"),
])
def test_metadata_equals_tf_serving_fixture(fixture_server, tf_serving_testdata, model,
                                            fixture_file, fixture_stub):
    from google.protobuf import json_format
    from serving import codec
    from tensorflow_serving.apis import get_model_metadata_pb2
    expected = json.loads((tf_serving_testdata / fixture_file).read_text())

    rest = requests.get(f"{fixture_server.rest}/v1/models/{model}/versions/123/metadata",
                        timeout=30)
    assert rest.status_code == 200
    assert rest.json()["model_spec"] == {"name": model, "signature_name": "", "version": "123"}
    assert _normalise_metadata(rest.json()) == _normalise_metadata(expected)

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model
    request.model_spec.version.value = 123
    request.metadata_field.append("signature_def")
    response = fixture_stub.GetModelMetadata(request, timeout=30)
    via_grpc = json.loads(codec.metadata_response_to_json(response))
    assert _normalise_metadata(via_grpc) == _normalise_metadata(expected)
    assert json_format.MessageToDict(response.model_spec)["version"] == "123"


@pytest.mark.parametrize("model", ["half_plus_two", "tf2"])
def test_classify_takes_tf_examples(fixture_stub, model):
    from tensorflow_serving.apis import classification_pb2
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "classify_x_to_y"
    request.input.example_list.examples.extend([_example(x=1.0), _example(x=4.0)])
    response = fixture_stub.Classify(request, timeout=30)
    scores = [[c.score for c in cl.classes] for cl in response.result.classifications]
    assert scores == [[2.5], [4.0]]
    assert response.model_spec.name == model
    assert response.model_spec.signature_name == "classify_x_to_y"
    assert response.model_spec.version.value == 123


@pytest.mark.parametrize("model", ["half_plus_two", "tf2"])
def test_regress_takes_tf_examples(fixture_stub, model):
    from tensorflow_serving.apis import regression_pb2
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = "regress_x_to_y"
    request.input.example_list.examples.extend([_example(x=2.0), _example(x=6.0)])
    response = fixture_stub.Regress(request, timeout=30)
    assert [r.value for r in response.result.regressions] == [3.0, 5.0]


def test_regress_merges_the_context_into_every_example(fixture_stub):
    from tensorflow_serving.apis import regression_pb2
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    # regress_x_to_y2 parses feature x from the merged context + example.
    request.model_spec.signature_name = "regress_x_to_y2"
    request.input.example_list_with_context.context.CopyFrom(_example(x=4.0))
    request.input.example_list_with_context.examples.extend([_example(), _example()])
    response = fixture_stub.Regress(request, timeout=30)
    # y2 = 0.5 * x + 3 with x = 4 taken from the context.
    assert [r.value for r in response.result.regressions] == [5.0, 5.0]


def _multi_inference(stub, model, classify_signature, regress_signature, examples):
    from tensorflow_serving.apis import inference_pb2
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in ((classify_signature, "tensorflow/serving/classify"),
                              (regress_signature, "tensorflow/serving/regress")):
        task = request.tasks.add()
        task.model_spec.name = model
        task.model_spec.signature_name = signature
        task.method_name = method
    request.input.example_list.examples.extend(examples)
    return stub.MultiInference(request, timeout=30)


def test_multi_inference_runs_classify_and_regress_on_the_same_examples(fixture_stub):
    response = _multi_inference(fixture_stub, "half_plus_two", "classify_x_to_y", "regress_x_to_y", [_example(x=2.0)])
    assert response.results[0].classification_result.classifications[0].classes[0].score == 3.0
    assert response.results[1].regression_result.regressions[0].value == 3.0
    assert response.results[1].model_spec.signature_name == "regress_x_to_y"


def test_multi_inference_feeds_the_examples_to_each_tf2_signatures_own_input(fixture_stub):
    # A TF2 export gives every signature its own input tensor (classify_x_to_y_inputs:0, regress_x_to_y2_inputs:0):
    # TF Serving feeds the serialized examples to each and answers every task.
    response = _multi_inference(fixture_stub, "tf2", "classify_x_to_y", "regress_x_to_y2",
                                [_example(x=2.0), _example(x=4.0)])
    # y = 0.5 x + 2 and y2 = 0.5 x + 3, both from feature x.
    assert [c.classes[0].score for c in response.results[0].classification_result.classifications] == [3.0, 4.0]
    assert [r.value for r in response.results[1].regression_result.regressions] == [4.0, 5.0]
    assert [r.model_spec.signature_name for r in response.results] == ["classify_x_to_y", "regress_x_to_y2"]
    assert all(r.model_spec.version.value == 123 for r in response.results)


def test_two_versions_latest_and_specific(fixture_stub, fixture_model_stub):
    from tensorflow_serving.apis import get_model_status_pb2
    latest = _predict(fixture_stub, "two_versions", [[1.0]])
    assert latest.model_spec.version.value == 124
    specific = _predict(fixture_stub, "two_versions", [[1.0]], version=123)
    assert specific.model_spec.version.value == 123
    assert to_array(specific.outputs["y"]).tolist() == [[2.5]]

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "two_versions"
    status = fixture_model_stub.GetModelStatus(request, timeout=30)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (124, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (123, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_labels_route_to_their_versions(fixture_server, fixture_stub):
    assert _predict(fixture_stub, "two_versions", [[1.0]], label="stable").model_spec.version.value == 123
    assert _predict(fixture_stub, "two_versions", [[1.0]], label="canary").model_spec.version.value == 124
    for label in ("stable", "canary"):
        # GetModelStatus ignores a label (get_model_status_impl.cc looks at the version only),
        # so the status route lists every version whatever the label.
        response = requests.get(f"{fixture_server.rest}/v1/models/two_versions/labels/{label}",
                                timeout=30)
        assert [s["version"] for s in response.json()["model_version_status"]] == ["124", "123"]
        predict = requests.post(
            f"{fixture_server.rest}/v1/models/two_versions/labels/{label}:predict",
            json={"instances": [[1.0]]}, timeout=30)
        assert predict.status_code == 200
    error = rpc_error(_predict, fixture_stub, "two_versions", [[1.0]], label="nope")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Unrecognized servable version label: nope"


def test_predict_with_b64_serialized_example(fixture_server):
    example = _example(x=3.0).SerializeToString()
    response = requests.post(
        fixture_server.rest + "/v1/models/half_plus_two:predict",
        json={"signature_name": "classify_x_to_y",
              "instances": [{"b64": base64.b64encode(example).decode()}]}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [[3.5]]}


def test_good_model_config_file_serves_both_models(start_server, tf_serving_testdata, tmp_path):
    text = (tf_serving_testdata / "good_model_config.txt").read_text()
    text = text.replace("${TEST_HALF_PLUS_TWO_DIR}",
                        str(tf_serving_testdata / "saved_model_half_plus_two_cpu"))
    text = text.replace("${TEST_HALF_PLUS_THREE_DIR}",
                        str(tf_serving_testdata / "saved_model_half_plus_three"))
    config = tmp_path / "good.config"
    config.write_text(text)
    server = start_server([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"])
    two = requests.post(server.rest + "/v1/models/half_plus_two:predict",
                        json={"instances": [[2.0]]}, timeout=30)
    three = requests.post(server.rest + "/v1/models/half_plus_three:predict",
                          json={"instances": [[2.0]]}, timeout=30)
    assert two.json() == {"predictions": [[3.0]]}
    assert three.json() == {"predictions": [[4.0]]}


def test_bad_model_config_file_exits_nonzero_with_message(start_server, tf_serving_testdata):
    path = tf_serving_testdata / "bad_model_config.txt"
    server = start_server([f"--model_config_file={path}"], wait=False)
    assert server.wait_exit(timeout=180) != 0
    log = server.log()
    assert "Error parsing text-format tensorflow.serving.ModelServerConfig" in log
    assert f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'" in log


def test_labels_at_startup_need_allow_flag_as_in_tf_serving(start_server, tf_serving_testdata,
                                                            tmp_path):
    config = write_config(tmp_path / "labels.config", [{
        "name": "two_versions",
        "base_path": tf_serving_testdata / "saved_model_half_plus_two_2_versions",
        "extra": "    model_version_policy { all {} }\n"
                 "    version_labels { key: \"stable\" value: 123 }\n"}])
    server = start_server([f"--model_config_file={config}"], wait=False)
    assert server.wait_exit(timeout=180) != 0
    assert ("FAILED_PRECONDITION: Request to assign label to version 123 of model two_versions, "
            "which is not currently available for inference") in server.log()
