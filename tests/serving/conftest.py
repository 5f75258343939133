"""Serving test fixtures: tiny SavedModels and real `python -m serving.server` processes.

Servers are started once per test session (per xdist worker) where tests only read from them,
and per test where a test changes what a server serves (version swaps, config reloads). Tests
call them through `tensorflow_serving.apis` stubs and HTTP, as a production client would.
"""

import os
import pathlib
import shutil
import time

import grpc
import numpy as np
import pytest

from serving.process import ServerProcess, write_model_config as write_config  # noqa: F401 (re-exported)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
FEATURES = 3
OUTPUTS = 2
MC_MODEL = "mc"


@pytest.fixture
def start_server(tmp_path):
    """Factory: start_server(args, rest=True, wait=True, **ServerProcess options) -> ServerProcess, stopped
    after the test."""
    servers = []

    def start(args, rest=True, wait=True, name=None, **options):
        log = tmp_path / f"{name or 'server'}_{len(servers)}.log"
        server = ServerProcess(args, log, rest=rest, wait=wait, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Tiny SavedModels with our predictive signatures.
# ---------------------------------------------------------------------------------------------

def build_mc_model(path, weight: float, warmup: bool = False):
    """A SavedModel with `serving_default` and `predict_mc` as `serving/export.py` will write.

    mean = x @ (weight * ones) + 0.5 on average over `num_samples` weight draws
    w_s = weight + 0.1 * eps, eps ~ N(0, 1) drawn with `tf.random.stateless_normal(seed)`;
    `tf.debugging.assert_all_finite` guards `x`, so a NaN input fails inside the signature.
    """
    import tensorflow as tf

    class PredictiveModule(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.fill([FEATURES, OUTPUTS], float(weight)))
            self.b = tf.Variable(tf.fill([OUTPUTS], 0.5))

        def _moments(self, x, num_samples, seed):
            x = tf.debugging.assert_all_finite(x, "x must be finite")
            eps = tf.random.stateless_normal([num_samples, FEATURES, OUTPUTS], seed=seed)
            draws = tf.einsum("bf,sfo->sbo", x, self.w[None] + 0.1 * eps) + self.b
            mean = tf.reduce_mean(draws, axis=0)
            epistemic = tf.math.reduce_std(draws, axis=0)
            aleatoric = 0.25 * tf.ones_like(mean)
            stddev = tf.sqrt(tf.square(epistemic) + tf.square(aleatoric))
            return {"mean": mean, "stddev": stddev, "aleatoric_stddev": aleatoric,
                    "epistemic_stddev": epistemic, "lower": mean - 1.96 * stddev,
                    "upper": mean + 1.96 * stddev}

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
        def serving_default(self, x):
            return self._moments(x, 64, tf.constant([0, 0]))

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.int32, name="num_samples"),
                                      tf.TensorSpec([2], tf.int32, name="seed")])
        def predict_mc(self, x, num_samples, seed):
            return self._moments(x, num_samples, seed)

    module = PredictiveModule()
    tf.saved_model.save(module, str(path), signatures={
        "serving_default": module.serving_default, "predict_mc": module.predict_mc})
    if warmup:
        write_warmup_file(path, [np.ones([2, FEATURES], np.float32)])
    return path


def write_warmup_file(path, xs):
    """`assets.extra/tf_serving_warmup_requests`: a TFRecord of PredictionLogs (Predict)."""
    from serving import codec, warmup
    from tensorflow_serving.apis import predict_pb2

    requests = []
    for x in xs:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MC_MODEL
        request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(x))
        requests.append(request)
    warmup.write_warmup(path, requests)


@pytest.fixture(scope="session")
def mc_versions(tmp_path_factory):
    """Two built versions of the tiny model (weights 1 and 2), to copy into base paths."""
    root = tmp_path_factory.mktemp("mc_versions")
    return {1: build_mc_model(root / "1", 1.0, warmup=True),
            2: build_mc_model(root / "2", 2.0, warmup=True)}


def install_version(base_path, version_dir, version: int):
    """Copies a built version into a base path atomically (a rename), as an exporter should."""
    base_path = pathlib.Path(base_path)
    base_path.mkdir(parents=True, exist_ok=True)
    staging = base_path / f"tmp-{version}"
    shutil.copytree(version_dir, staging)
    os.rename(staging, base_path / str(version))


@pytest.fixture(scope="session")
def mc_base_path(tmp_path_factory, mc_versions):
    base = tmp_path_factory.mktemp("mc_model")
    install_version(base, mc_versions[1], 1)
    return base


# ---------------------------------------------------------------------------------------------
# Shared servers.
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def fixture_config(tf_serving_testdata, tmp_path_factory):
    """Every TF Serving test model in one config, with two versions, labels and a TF2 export."""
    root = tf_serving_testdata
    path = tmp_path_factory.mktemp("config") / "models.config"
    return write_config(path, [
        {"name": "half_plus_two", "base_path": root / "saved_model_half_plus_two_cpu"},
        {"name": "half_plus_three", "base_path": root / "saved_model_half_plus_three"},
        {"name": "two_versions", "base_path": root / "saved_model_half_plus_two_2_versions",
         "extra": "    model_version_policy { all {} }\n"
                  "    version_labels { key: \"stable\" value: 123 }\n"
                  "    version_labels { key: \"canary\" value: 124 }\n"},
        {"name": "tf2", "base_path": root / "saved_model_half_plus_two_tf2_cpu"},
    ])


@pytest.fixture(scope="session")
def fixture_server(fixture_config, tf_serving_testdata, tmp_path_factory):
    """The TF Serving fixtures, served over gRPC and REST with Prometheus metrics."""
    log = tmp_path_factory.mktemp("logs") / "fixture_server.log"
    server = ServerProcess([
        f"--model_config_file={fixture_config}",
        "--allow_version_labels_for_unavailable_models",
        f"--monitoring_config_file={tf_serving_testdata / 'monitoring_config.txt'}",
        "--file_system_poll_wait_seconds=0",
    ], log)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mc_server(mc_base_path, tmp_path_factory, tf_serving_testdata):
    """The tiny predictive model with small limits, so that tests can reach them."""
    log = tmp_path_factory.mktemp("logs") / "mc_server.log"
    server = ServerProcess([
        f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}",
        "--max_num_samples=500", "--max_batch_rows=64", "--max_sample_rows=8000",
        "--grpc_max_message_bytes=262144",
        "--max_tensor_bytes=65536", "--file_system_poll_wait_seconds=0",
        "--rest_api_timeout_in_ms=3000",
        f"--monitoring_config_file={tf_serving_testdata / 'monitoring_config.txt'}",
    ], log)
    yield server
    server.stop()


@pytest.fixture
def fixture_stub(fixture_server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    return prediction_service_pb2_grpc.PredictionServiceStub(fixture_server.channel)


@pytest.fixture
def fixture_model_stub(fixture_server):
    from tensorflow_serving.apis import model_service_pb2_grpc
    return model_service_pb2_grpc.ModelServiceStub(fixture_server.channel)


@pytest.fixture
def mc_stub(mc_server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    return prediction_service_pb2_grpc.PredictionServiceStub(mc_server.channel)


def tensor(value, dtype=np.float32):
    from serving import codec
    return codec.ndarray_to_tensor_proto(np.asarray(value, dtype))


def to_array(proto):
    from serving import codec
    return codec.tensor_proto_to_ndarray(proto)


def rpc_error(call, *args, **kwargs) -> grpc.RpcError:
    """The RpcError a call raises (fails the test if it succeeds)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return info.value


def wait_until(predicate, timeout=60.0, interval=0.2, what="condition"):
    """Polls `predicate` until true; fails after `timeout` (a bound, not an assertion on time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out waiting for {what}")
