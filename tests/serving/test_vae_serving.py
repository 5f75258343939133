"""VAE exports: the signature contract, agreement with the model, no TFP at load, and every signature served by a
real server process over gRPC (and REST), reproducible by seed."""

import functools
import json
import os
import pathlib
import subprocess
import sys

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from models import stick_breaking
from models import vae
from serving import export
from tests.serving.conftest import ServerProcess, rpc_error, tensor, to_array, write_config
from training import config as config_lib
from training import data
from training import train_lib

LATENT_SHAPES = {"normal": [8], "full_covariance": [8], "gumbel_softmax": [6, 4], "kumaraswamy": [8]}
K_AT_EXPORT = 16
EXPORT_SEED = 3
IMAGE = [28, 28, 1]


@pytest.fixture(scope="module")
def mnist(data_dir):
    return data.load("mnist", data_dir)


@pytest.fixture(scope="module")
def exports(mnist, tmp_path_factory):
    """One briefly trained VAE per latent, on dynamically binarized MNIST (so exports binarize in the graph)."""
    root = tmp_path_factory.mktemp("vae_exports")
    models = {}
    for latent in vae.LATENTS:
        config = vae.Config(latent=latent, hidden_units=(64,), latent_dim=8, latent_variables=6, categories=4)
        model = vae.build_model(config, mnist)
        train = config_lib.TrainConfig(dataset="mnist", workdir=str(root / f"{latent}_work"), train_steps=60,
                                       batch_size=100, learning_rate=3e-3).validate()
        train_lib.fit(model, mnist, train, tf.distribute.get_strategy(), root / f"{latent}_work")
        path = export.export(model, mnist, root / latent, num_samples=K_AT_EXPORT, seed=EXPORT_SEED)
        models[latent] = (model, path)
    return {"root": root, "models": models}


@pytest.fixture(scope="module")
def server(exports, tmp_path_factory):
    root = exports["root"]
    config = write_config(root / "models.config", [{"name": latent, "base_path": root / latent}
                                                   for latent in vae.LATENTS])
    process = ServerProcess([f"--model_config_file={config}"], tmp_path_factory.mktemp("logs") / "server.log")
    yield process
    process.stop()


@pytest.fixture
def stub(server):
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


def _images(mnist, n=3):
    return mnist.x_test[:n]


def _inputs(mnist, signature, latent, n=3):
    """Inputs of every signature, with a fixed seed."""
    seed = np.array([11, 12], np.int32)
    if latent == "gumbel_softmax":  # one-hot codes [n, M, K]
        variables, categories = LATENT_SHAPES[latent]
        z = np.eye(categories, dtype=np.float32)[np.arange(n * variables).reshape(n, variables) % categories]
    elif latent == "kumaraswamy":  # mixture weights [n, K] on the simplex
        logits = np.linspace(-2, 2, n * LATENT_SHAPES[latent][0]).reshape([n] + LATENT_SHAPES[latent])
        z = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    else:
        z = np.linspace(-2, 2, n * LATENT_SHAPES[latent][0], dtype=np.float32).reshape([n] + LATENT_SHAPES[latent])
    return {
        "serving_default": {"x": _images(mnist, n)},
        "encode": {"x": _images(mnist, n), "seed": seed},
        "decode": {"z": z},
        "reconstruct": {"x": _images(mnist, n), "num_samples": np.int32(6), "seed": seed},
        "sample": {"num_samples": np.int32(n), "seed": seed},
        "log_likelihood": {"x": _images(mnist, n), "num_samples": np.int32(20), "seed": seed},
    }[signature]


@functools.lru_cache(maxsize=None)
def _load(path):
    return tf.saved_model.load(str(path))


def _call(path, signature, **inputs):
    out = _load(str(path)).signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}


def _predict(stub, latent, signature, inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = latent
    request.model_spec.signature_name = signature
    for key, value in inputs.items():
        request.inputs[key].CopyFrom(tensor(value, value.dtype))
    response = stub.Predict(request, timeout=60)
    return {k: to_array(v) for k, v in response.outputs.items()}


@pytest.mark.parametrize("latent", vae.LATENTS)
def test_signature_contract_is_batch_first(exports, mnist, latent):
    _, path = exports["models"][latent]
    loaded = _load(str(path))
    assert set(loaded.signatures) == set(export.VAE_SIGNATURE_OUTPUTS) | {"model_info"}  # model_info: every export's
    info = json.loads(loaded.signatures["model_info"]()["info"].numpy())
    assert info["family"] == "vae" and info["config"]["latent"] == latent
    assert info["serving_default_num_samples"] == K_AT_EXPORT
    specs = {name: {k: (v.dtype, v.shape.as_list()) for k, v in sig.structured_input_signature[1].items()}
             for name, sig in loaded.signatures.items() if name != "model_info"}
    x, z = (tf.float32, [None] + IMAGE), (tf.float32, [None] + LATENT_SHAPES[latent])
    n, s = (tf.int32, []), (tf.int32, [2])
    assert specs == {"serving_default": {"x": x}, "encode": {"x": x, "seed": s}, "decode": {"z": z},
                     "reconstruct": {"x": x, "num_samples": n, "seed": s}, "sample": {"num_samples": n, "seed": s},
                     "log_likelihood": {"x": x, "num_samples": n, "seed": s}}
    latent_shape = tuple(LATENT_SHAPES[latent])
    want = {"serving_default": {"elbo": (3,), "log_likelihood": (3,), "latent_mean": (3,) + latent_shape,
                                "latent_stddev": (3,) + latent_shape},
            "encode": {"z": (3,) + latent_shape, "latent_mean": (3,) + latent_shape,
                       "latent_stddev": (3,) + latent_shape},
            "decode": {"mean": (3, 28, 28, 1)}, "reconstruct": {"mean": (3, 28, 28, 1), "stddev": (3, 28, 28, 1)},
            "sample": {"images": (3, 28, 28, 1), "z": (3,) + latent_shape},
            "log_likelihood": {"log_likelihood": (3,), "elbo": (3,)}}
    if latent == "kumaraswamy":  # the K - 1 stick fractions' Kumaraswamy(a, b)
        want["encode"].update(fraction_a=(3, latent_shape[0] - 1), fraction_b=(3, latent_shape[0] - 1))
    for signature, shapes in want.items():
        out = _call(path, signature, **_inputs(mnist, signature, latent))
        assert {k: v.shape for k, v in out.items()} == shapes, signature
        assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in out.values()), signature


@pytest.mark.parametrize("latent", vae.LATENTS)
def test_serving_default_is_the_models_bound_with_the_export_seed(exports, mnist, latent):
    model, path = exports["models"][latent]
    out = _call(path, "serving_default", x=_images(mnist))
    observed = model.observe(_images(mnist))
    want = tf.function(model.importance_weighted)(observed, K_AT_EXPORT, tf.constant([EXPORT_SEED, 0x5EED]),
                                                  shared_noise=True)
    np.testing.assert_allclose(out["log_likelihood"], want["log_likelihood"], rtol=1e-5)
    np.testing.assert_allclose(out["elbo"], want["expected_log_likelihood"] - want["rate"], rtol=1e-5)
    np.testing.assert_allclose(out["latent_mean"], model.encode(observed).mean(), rtol=1e-5, atol=1e-6)
    assert np.all(out["log_likelihood"] >= out["elbo"])  # log-mean-exp >= mean, on the same draws
    assert np.all(out["latent_stddev"] >= 0)


@pytest.mark.parametrize("latent", vae.LATENTS)
def test_an_image_gets_the_same_answer_alone_or_in_a_batch(exports, mnist, latent):
    """The fixed binarization hashes the image and the latent noise is shared by the batch, so batching requests
    (TF Serving's --enable_batching concatenates them) changes no answer."""
    _, path = exports["models"][latent]
    for signature in ("serving_default", "encode", "reconstruct", "log_likelihood"):
        inputs = _inputs(mnist, signature, latent, n=4)
        batch = _call(path, signature, **inputs)
        alone = _call(path, signature, **dict(inputs, x=inputs["x"][2:3]))
        for key, value in batch.items():
            np.testing.assert_allclose(alone[key], value[2:3], rtol=1e-5, atol=1e-6, err_msg=f"{signature} {key}")


def test_seeded_signatures_repeat_with_a_seed_and_change_with_another(exports, mnist):
    _, path = exports["models"]["normal"]
    x = _images(mnist)
    call = lambda name, seed, **kw: _call(path, name, x=x, seed=np.array(seed, np.int32), **kw)  # noqa: E731
    a, b, c = call("encode", [1, 2]), call("encode", [1, 2]), call("encode", [1, 3])
    np.testing.assert_array_equal(a["z"], b["z"])
    assert not np.array_equal(a["z"], c["z"])
    np.testing.assert_array_equal(a["latent_mean"], c["latent_mean"])
    one = call("reconstruct", [1, 2], num_samples=np.int32(1))
    many = call("reconstruct", [1, 2], num_samples=np.int32(50))
    assert one["stddev"].max() == 0.0 and many["stddev"].max() > 0.0
    assert 0.0 <= many["mean"].min() and many["mean"].max() <= 1.0


def test_stick_breaking_export_encodes_weights_and_samples_the_gem_prior(exports, mnist):
    """encode: the fractions' (a, b), expected weights that are the weights of the expected fractions, a draw of
    weights; sample: weights from the GEM prior, drawn in the graph by the inverse CDF (no TFP), whose first weight
    is Beta(1, alpha): P(pi_1 <= x) = 1 - (1 - x)^alpha."""
    model, path = exports["models"]["kumaraswamy"]
    out = _call(path, "encode", x=_images(mnist), seed=np.array([1, 2], np.int32))
    assert np.all(out["fraction_a"] > 0) and np.all(out["fraction_b"] > 0)
    np.testing.assert_allclose(out["latent_mean"], stick_breaking.stick_breaking_weights(
        stick_breaking.expected_fraction(out["fraction_a"], out["fraction_b"])), rtol=1e-4, atol=1e-6)
    for weights in (out["z"], out["latent_mean"]):
        assert np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    z = _call(path, "sample", num_samples=np.int32(4000), seed=np.array([3, 4], np.int32))["z"]
    np.testing.assert_allclose(z.sum(-1), 1.0, rtol=1e-5)
    alpha = model.config.gem_alpha
    for point in (0.05, 0.2, 0.5):
        expected = 1.0 - (1.0 - point) ** alpha
        assert abs(np.mean(z[:, 0] <= point) - expected) < 4 * np.sqrt(expected * (1 - expected) / len(z)), point


def test_log_likelihood_grows_with_num_samples(exports, mnist):
    _, path = exports["models"]["full_covariance"]
    x = mnist.x_test[:200]
    bound = {k: _call(path, "log_likelihood", x=x, num_samples=np.int32(k),
                      seed=np.array([5, 5], np.int32))["log_likelihood"].mean() for k in (1, 100)}
    assert bound[100] > bound[1] + 1.0, bound


@pytest.mark.parametrize("latent", vae.LATENTS)
def test_every_signature_round_trips_through_the_server(exports, mnist, stub, latent):
    _, path = exports["models"][latent]
    for signature, outputs in export.vae_signature_outputs(latent).items():
        inputs = _inputs(mnist, signature, latent)
        got = _predict(stub, latent, signature, inputs)
        again = _predict(stub, latent, signature, inputs)
        want = _call(path, signature, **inputs)
        assert set(got) == set(outputs), signature
        for name in got:
            np.testing.assert_array_equal(got[name], again[name], err_msg=f"{signature}/{name}")
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=f"{signature}/{name}")


def test_bad_inputs_are_invalid_argument_and_the_server_keeps_serving(stub, mnist):
    for signature in ("log_likelihood", "reconstruct", "sample"):
        inputs = _inputs(mnist, signature, "normal")
        for bad in (0, -3):
            error = rpc_error(_predict, stub, "normal", signature, {**inputs, "num_samples": np.int32(bad)})
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, signature
            assert "num_samples must be positive" in error.details(), (signature, error.details())
    error = rpc_error(_predict, stub, "normal", "serving_default", {"x": 2.0 * _images(mnist)})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "[0, 1]" in error.details()
    assert np.isfinite(_predict(stub, "normal", "serving_default", {"x": _images(mnist)})["elbo"]).all()


def test_metadata_and_rest_serve_the_vae_signatures(stub, server, mnist):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "gumbel_softmax"
    request.metadata_field.append("signature_def")
    defs = get_model_metadata_pb2.SignatureDefMap()
    stub.GetModelMetadata(request, timeout=30).metadata["signature_def"].Unpack(defs)
    assert set(export.VAE_SIGNATURE_OUTPUTS) | {"model_info"} <= set(defs.signature_def)
    assert [d.size for d in defs.signature_def["decode"].inputs["z"].tensor_shape.dim] == [-1, 6, 4]
    z = _inputs(mnist, "decode", "normal")["z"]
    response = requests.post(f"{server.rest}/v1/models/normal:predict",
                             json={"signature_name": "decode", "instances": z.tolist()}, timeout=30)
    assert response.status_code == 200, response.text
    got = np.array([p for p in response.json()["predictions"]], np.float32)
    want = _predict(stub, "normal", "decode", {"z": z})["mean"]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_warmup_requests_replay_against_their_signatures(exports):
    _, path = exports["models"]["gumbel_softmax"]
    loaded = _load(str(path))
    records = list(tf.data.TFRecordDataset(str(path / export.WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == len(export.VAE_SIGNATURE_OUTPUTS)
    for record in records:
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        out = loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
        assert all(np.isfinite(v.numpy()).all() for v in out.values())


NO_TFP_SCRIPT = """
import importlib.abc, sys
class BlockTFP(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "tensorflow_probability":
            raise ImportError("tensorflow_probability is not available in this process")
sys.meta_path.insert(0, BlockTFP())
import numpy as np, tensorflow as tf
x = tf.constant(np.load(sys.argv[1]))
n, seed = tf.constant(4), tf.constant([1, 2])
for path in sys.argv[2:]:
    m = tf.saved_model.load(path)
    z = m.signatures["encode"](x=x, seed=seed)["z"]
    outs = [m.signatures["serving_default"](x=x), m.signatures["decode"](z=z),
            m.signatures["reconstruct"](x=x, num_samples=n, seed=seed),
            m.signatures["sample"](num_samples=n, seed=seed),
            m.signatures["log_likelihood"](x=x, num_samples=n, seed=seed)]
    assert all(np.isfinite(v.numpy()).all() for out in outs for v in out.values())
    print("LL", path, " ".join(repr(float(v)) for v in outs[0]["log_likelihood"].numpy()))
assert "tensorflow_probability" not in sys.modules
print("OK")
"""


def test_exports_load_and_run_without_tensorflow_probability(exports, mnist, tmp_path):
    np.save(tmp_path / "x.npy", _images(mnist))
    paths = [str(path) for _, path in exports["models"].values()]
    out = subprocess.run([sys.executable, "-c", NO_TFP_SCRIPT, str(tmp_path / "x.npy"), *paths],
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("OK")
    for line in out.stdout.splitlines():
        if line.startswith("LL "):
            _, path, *values = line.split()
            want = _call(pathlib.Path(path), "serving_default", x=_images(mnist))["log_likelihood"]
            np.testing.assert_allclose([float(v) for v in values], want, rtol=1e-6)


def test_a_wrong_image_or_latent_shape_is_invalid_argument_naming_both_shapes(stub, server, mnist):
    error = rpc_error(_predict, stub, "normal", "serving_default", {"x": _images(mnist)[:, :27]})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x has shape [3, 27, 28, 1]; the model takes [batch, 28, 28, 1]" in error.details(), error.details()
    error = rpc_error(_predict, stub, "normal", "decode", {"z": np.zeros([2, 5], np.float32)})
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "z has shape [2, 5]; the model takes [batch, 8]" in error.details(), error.details()
    response = requests.post(f"{server.rest}/v1/models/normal:predict",
                             json={"instances": _images(mnist)[:, :, :20].tolist()}, timeout=30)
    assert response.status_code == 400
    assert "x has shape [3, 28, 20, 1]; the model takes [batch, 28, 28, 1]" in response.json()["error"]
