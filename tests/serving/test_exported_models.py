"""Our own exports served by a real server process: every signature round-trips over gRPC and REST."""

import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.apis import regression_pb2

from models import bayesian_dense
from models import linear_regression
from serving import client as client_lib
from serving import export
from tests.serving.conftest import ServerProcess, tensor, to_array, write_config
from training import config as config_lib
from training import data
from training import train_lib

REGRESSION = "concrete_blr"
CLASSIFIER = "mnist_bnn"


@pytest.fixture(scope="module")
def exports(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    concrete = data.load("uci/concrete", data_dir, split=0)
    blr = linear_regression.build_model(linear_regression.Config(inference="cavi"), concrete)
    blr.fit_closed_form(concrete.x_train, concrete.y_train)
    export.export(blr, concrete, root / REGRESSION, num_samples=50, seed=3)
    mnist = data.load("mnist", data_dir)
    config = config_lib.TrainConfig(dataset="mnist", data_dir=str(data_dir), workdir=str(root / "mnist_work"),
                                    train_steps=60, batch_size=64, learning_rate=1e-3).validate()
    bnn = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(32,)), mnist)
    train_lib.fit(bnn, mnist, config, tf.distribute.get_strategy(), root / "mnist_work")
    export.export(bnn, mnist, root / CLASSIFIER, num_samples=20, seed=4)
    return {"root": root, "concrete": concrete, "mnist": mnist}


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    root = exports["root"]
    config = write_config(root / "models.config", [{"name": REGRESSION, "base_path": root / REGRESSION},
                                                   {"name": CLASSIFIER, "base_path": root / CLASSIFIER}])
    process = ServerProcess([f"--model_config_file={config}"], tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


def _in_process(exports, name, signature, **inputs):
    loaded = tf.saved_model.load(str(exports["root"] / name / "1"))
    return {k: v.numpy() for k, v in loaded.signatures[signature](
        **{k: tf.constant(v) for k, v in inputs.items()}).items()}


def _rows(exports, n=4):
    d = exports["concrete"]
    return d.x_scaler.invert(d.x_test[:n])


def _example(values):
    return tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(values)))}))


def test_regression_serving_default_matches_the_signature_in_process(exports, stub):
    x = _rows(exports)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = REGRESSION
    request.inputs["x"].CopyFrom(tensor(x))
    response = stub.Predict(request, timeout=30)
    assert set(response.outputs) == set(export.REGRESSION_OUTPUTS)
    want = _in_process(exports, REGRESSION, "serving_default", x=x)
    for name in export.REGRESSION_OUTPUTS:
        np.testing.assert_allclose(to_array(response.outputs[name]), want[name], rtol=1e-5)
    assert response.model_spec.version.value == 1


def test_predict_mc_over_grpc_is_reproducible_by_seed(exports, server):
    images = exports["mnist"].x_test[:4]
    with client_lib.PredictiveClient(server.address, CLASSIFIER, timeout=30) as c:
        a, b, other = (c.predict_mc(images, 200, (5, 6)), c.predict_mc(images, 200, (5, 6)),
                       c.predict_mc(images, 200, (5, 7)))
    for name in export.CLASSIFICATION_OUTPUTS:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["probabilities"], other["probabilities"])  # the seed draws the weights
    want = _in_process(exports, CLASSIFIER, "predict_mc", x=images, num_samples=np.int32(200),
                       seed=np.array([5, 6], np.int32))
    np.testing.assert_allclose(a["probabilities"], want["probabilities"], rtol=1e-5, atol=1e-7)
    # The linear model's predictive draws nothing (weights integrated out, q(beta) by quadrature): any seed
    # and S give the in-process answer.
    x = _rows(exports)
    with client_lib.PredictiveClient(server.address, REGRESSION, timeout=30) as c:
        got = c.predict_mc(x, 7, (5, 7))
    want = _in_process(exports, REGRESSION, "predict_mc", x=x, num_samples=np.int32(200),
                       seed=np.array([5, 6], np.int32))
    for name in export.REGRESSION_OUTPUTS:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6)


def test_regress_with_tf_examples_answers_the_predictive_mean(exports, stub):
    x = _rows(exports, 3)
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = REGRESSION
    request.model_spec.signature_name = "regress"
    request.input.example_list.examples.extend(_example(row) for row in x)
    response = stub.Regress(request, timeout=30)
    got = [r.value for r in response.result.regressions]
    want = _in_process(exports, REGRESSION, "serving_default", x=x)["mean"][:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_classify_with_tf_examples_answers_class_scores(exports, stub):
    images = exports["mnist"].x_test[:2]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = CLASSIFIER
    request.model_spec.signature_name = "classify"
    request.input.example_list.examples.extend(_example(image) for image in images)
    response = stub.Classify(request, timeout=30)
    want = _in_process(exports, CLASSIFIER, "serving_default", x=images)["probabilities"]
    assert len(response.result.classifications) == 2
    for got, probs in zip(response.result.classifications, want):
        assert [c.label for c in got.classes] == [str(k) for k in range(10)]
        np.testing.assert_allclose([c.score for c in got.classes], probs, rtol=1e-5)


def test_classifier_predict_returns_the_uncertainty_decomposition(exports, server):
    images = exports["mnist"].x_test[:5]
    with client_lib.PredictiveClient(server.address, CLASSIFIER, timeout=30) as c:
        out = c.predict(images)
        mc = c.predict_mc(images, 50, (1, 1))
    assert out["probabilities"].shape == (5, 10) and out["predicted_class"].dtype == np.int64
    np.testing.assert_allclose(out["predictive_entropy"], out["expected_entropy"] + out["mutual_information"],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(mc["probabilities"].sum(-1), 1.0, rtol=1e-5)


def test_rest_predict_row_format_for_the_regression_model(exports, server):
    x = _rows(exports, 2)
    response = requests.post(f"{server.rest}/v1/models/{REGRESSION}:predict", json={"instances": x.tolist()},
                             timeout=30)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    want = _in_process(exports, REGRESSION, "serving_default", x=x)
    assert len(predictions) == 2 and set(predictions[0]) == set(export.REGRESSION_OUTPUTS)
    np.testing.assert_allclose([p["mean"][0] for p in predictions], want["mean"][:, 0], rtol=1e-5)


def test_metadata_lists_our_signatures(stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = CLASSIFIER
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=30)
    defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(defs)
    assert {"serving_default", "predict_mc", "predict_moments", "classify"} <= set(defs.signature_def)
    for name in ("predict_mc", "predict_moments"):
        inputs = defs.signature_def[name].inputs
        assert [d.size for d in inputs["x"].tensor_shape.dim] == [-1, 28, 28, 1]
        assert set(inputs) == {"x", "num_samples", "seed"}


def test_predict_moments_over_grpc_agrees_with_the_exact_predictive(exports, server):
    images = exports["mnist"].x_test[:100]
    with client_lib.PredictiveClient(server.address, CLASSIFIER, timeout=30) as c:
        exact = c.predict_mc(images, 4000, (1, 1))
        approx = c.predict_mc(images, 4000, (1, 1), signature_name="predict_moments")
        again = c.predict_mc(images, 4000, (1, 1), signature_name="predict_moments")
    # One hidden layer: the logits' means and variances are exact; only their joint Gaussian shape is assumed.
    np.testing.assert_allclose(approx["probabilities"], exact["probabilities"], atol=0.01)
    np.testing.assert_array_equal(approx["probabilities"], again["probabilities"])  # seeded
    np.testing.assert_allclose(approx["predictive_entropy"],
                               approx["expected_entropy"] + approx["mutual_information"], rtol=1e-4, atol=1e-6)


def test_bad_num_samples_is_invalid_argument_and_the_server_keeps_serving(exports, server):
    x = _rows(exports, 1)
    with client_lib.PredictiveClient(server.address, REGRESSION, timeout=30) as c:
        with pytest.raises(client_lib.InvalidRequestError, match="num_samples"):
            c.predict_mc(x, 0, (1, 1))
        with pytest.raises(client_lib.InvalidRequestError):
            c.predict(np.full_like(x, np.nan))
        assert np.isfinite(c.predict(x)["mean"]).all()


def test_model_info_over_grpc_tells_the_families_apart(stub):
    import json

    families = {}
    for name in (REGRESSION, CLASSIFIER):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = "model_info"
        response = stub.Predict(request, timeout=30)
        families[name] = json.loads(to_array(response.outputs["info"]).item().decode())["family"]
    assert families == {REGRESSION: "linear_regression", CLASSIFIER: "bayesian_dense"}


@pytest.mark.parametrize("name, x, received, expected", [
    (REGRESSION, np.ones([1, 6], np.float32), "[1, 6]", "[batch, 8]"),
    (REGRESSION, np.ones([3], np.float32), "[3]", "[batch, 8]"),
    (CLASSIFIER, np.ones([2, 28, 27, 1], np.float32), "[2, 28, 27, 1]", "[batch, 28, 28, 1]"),
])
def test_a_wrong_input_shape_is_invalid_argument_naming_both_shapes(server, name, x, received, expected):
    message = f"x has shape {received}; the model takes {expected}"
    for signature, inputs in (("serving_default", {"x": x}),
                              ("predict_mc", {"x": x, "num_samples": np.int32(4), "seed": np.array([1, 2], np.int32)})):
        with client_lib.PredictiveClient(server.address, name, timeout=30) as c:
            with pytest.raises(client_lib.InvalidRequestError) as error:
                c.predict(inputs, signature_name=signature)
        assert error.value.code == "INVALID_ARGUMENT" and message in error.value.details, error.value.details
    response = requests.post(f"{server.rest}/v1/models/{name}:predict", json={"instances": x.tolist()}, timeout=30)
    assert response.status_code == 400 and message in response.json()["error"], response.text
