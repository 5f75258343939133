"""Loading models side by side: each version serves once it is AVAILABLE (loaded and warmed up), whatever the others
are doing; until then it answers NOT_FOUND as TF Serving does; the ports open once the first config has loaded.

The in-process tests stand a fake in for the session (only the manager's flow is under test) whose load waits on an
event; the server test makes one model's warmup wait on a FIFO: its warmup record writes to the FIFO with
`tf.io.write_file`, whose opening blocks until the test opens the FIFO to read it.
"""

import os
import threading

import numpy as np
import pytest

from serving import errors
from tests.serving.conftest import MC_MODEL, install_version, tensor, to_array, wait_until, write_config


class _Gates:
    """Per model name, an event a fake load waits for (models without one load at once)."""

    def __init__(self, *names):
        self.events = {name: threading.Event() for name in names}

    def open_all(self):
        for event in self.events.values():
            event.set()


@pytest.fixture
def fake_sessions(monkeypatch):
    """Replaces `LoadedModel` in the manager by a fake whose load waits for its model's gate, if it has one."""
    from serving import model_manager

    gates = _Gates()

    class FakeLoaded:
        def __init__(self, name, version, path, options, on_run=None):
            self.name, self.version, self.path = name, version, path
            event = gates.events.get(name)
            if event is not None:
                assert event.wait(timeout=60), f"the gate of {name} was never opened"

        def acquire(self):
            pass

        def release(self):
            pass

        def close(self, timeout_seconds=0):
            pass

    monkeypatch.setattr(model_manager, "LoadedModel", FakeLoaded)
    yield gates
    gates.open_all()


def _config(tmp_path, *names):
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    entries = ""
    for name in names:
        (tmp_path / name / "1").mkdir(parents=True, exist_ok=True)
        entries += f'config {{ name: "{name}" base_path: "{tmp_path / name}" model_platform: "tensorflow" }} '
    return text_format.Parse(f"model_config_list {{ {entries} }}", model_server_config_pb2.ModelServerConfig())


def _spec(name, version=None):
    from tensorflow_serving.apis import model_pb2

    spec = model_pb2.ModelSpec(name=name)
    if version is not None:
        spec.version.value = version
    return spec


def _state(manager, name):
    try:
        return manager.status(name)[0].state.name
    except errors.NotFound:
        return None


def _in_background(fn, *args):
    box = {}

    def run():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # pylint: disable=broad-except
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def _assert_not_found_while_loading(manager, name):
    """TF Serving's manager has no handle for a version that is still loading: NOT_FOUND, its words."""
    for spec, request in ((_spec(name), f"Latest({name})"), (_spec(name, 1), f"Specific({name}, 1)")):
        with pytest.raises(errors.NotFound) as info:
            with manager.servable(spec):
                pass
        assert info.value.message == f"Servable not found for request: {request}"


def test_first_config_models_load_side_by_side_and_each_serves_once_available(tmp_path, fake_sessions):
    from serving import model_manager

    fake_sessions.events["slow"] = threading.Event()
    manager = model_manager.ModelManager(model_manager.ManagerOptions(
        file_system_poll_wait_seconds=0, num_initial_load_threads=4))
    # "slow" is listed first: loaded one after the other, "fast" would wait for it.
    thread, box = _in_background(manager.reload_config, _config(tmp_path, "slow", "fast"))
    wait_until(lambda: _state(manager, "fast") == "AVAILABLE", what="fast to load beside slow")
    assert _state(manager, "slow") == "LOADING"
    with manager.servable(_spec("fast")) as loaded:
        assert (loaded.name, loaded.version) == ("fast", 1)
    _assert_not_found_while_loading(manager, "slow")
    fake_sessions.events["slow"].set()
    thread.join(timeout=60)
    assert "error" not in box, box
    assert {name: _state(manager, name) for name in ("slow", "fast")} == {"slow": "AVAILABLE", "fast": "AVAILABLE"}
    manager.stop()


def test_models_of_a_later_reload_load_on_num_load_threads(tmp_path, fake_sessions):
    from serving import model_manager

    manager = model_manager.ModelManager(model_manager.ManagerOptions(
        file_system_poll_wait_seconds=0, num_initial_load_threads=1, num_load_threads=2))
    manager.reload_config(_config(tmp_path, "first"))
    fake_sessions.events["slow"] = threading.Event()
    thread, box = _in_background(manager.reload_config, _config(tmp_path, "first", "slow", "fast"))
    wait_until(lambda: _state(manager, "fast") == "AVAILABLE", what="fast to load beside slow")
    assert _state(manager, "slow") == "LOADING"
    _assert_not_found_while_loading(manager, "slow")
    with manager.servable(_spec("first")):
        pass
    fake_sessions.events["slow"].set()
    thread.join(timeout=60)
    assert "error" not in box, box
    assert _state(manager, "slow") == "AVAILABLE"
    manager.stop()


def test_the_warmup_runs_while_the_version_is_loading_and_before_it_serves(tmp_path, fake_sessions):
    from serving import model_manager

    seen = []

    def warmup(loaded):
        seen.append((loaded.name, _state(manager, loaded.name)))
        _assert_not_found_while_loading(manager, loaded.name)

    manager = model_manager.ModelManager(model_manager.ManagerOptions(
        file_system_poll_wait_seconds=0, num_initial_load_threads=4), warmup=warmup)
    manager.reload_config(_config(tmp_path, "a", "b"))
    assert sorted(seen) == [("a", "LOADING"), ("b", "LOADING")]
    assert {name: _state(manager, name) for name in ("a", "b")} == {"a": "AVAILABLE", "b": "AVAILABLE"}
    manager.stop()


def test_a_failed_load_beside_others_ends_with_its_error_and_fails_start_up(tmp_path, fake_sessions):
    from serving import model_manager

    def warmup(loaded):
        if loaded.name == "broken":
            raise errors.InvalidArgument("bad warmup record")

    manager = model_manager.ModelManager(model_manager.ManagerOptions(
        file_system_poll_wait_seconds=0, num_initial_load_threads=4, max_num_load_retries=0), warmup=warmup)
    with pytest.raises(errors.Unknown) as info:
        manager.reload_config(_config(tmp_path, "good", "broken"))
    assert info.value.message == ("1 servable(s) did not become available: {{{name: broken version: 1} due to "
                                  "error: INVALID_ARGUMENT: bad warmup record}, }")
    status = manager.status("broken")[0]
    assert (status.state.name, status.error_message) == ("END", "bad warmup record")
    assert _state(manager, "good") == "AVAILABLE"
    manager.stop()


# ---------------------------------------------------------------------------------------------
# A real server.
# ---------------------------------------------------------------------------------------------

def _build_gated_model(path, fifo):
    """A SavedModel whose `serving_default` doubles `x` and whose warmup record runs `gate` on `fifo`: writing to it
    blocks until something opens the FIFO to read, so the version stays LOADING until the test opens the gate."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    from serving import warmup

    class Gated(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serving_default(self, x):
            return {"y": 2.0 * x}

        @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="path")])
        def gate(self, path):
            with tf.control_dependencies([tf.io.write_file(path, "warm")]):
                return {"length": tf.strings.length(path)}

    module = Gated()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serving_default,
                                                       "gate": module.gate})
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gated"
    request.model_spec.signature_name = "gate"
    request.inputs["path"].CopyFrom(tensor(np.array(str(fifo).encode()), dtype=object))
    warmup.write_warmup(path, [request])
    return path


def _open_gate(fifo):
    """Reads the FIFO to its end from a thread (opening it waits for its writer), so the blocked write ends."""
    def read():
        with open(fifo, "rb") as f:
            f.read()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_server_loads_its_models_side_by_side_and_opens_its_ports_once_all_are_warm(start_server, tmp_path,
                                                                                    mc_versions):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    fifo = tmp_path / "gate"
    os.mkfifo(fifo)
    gated = tmp_path / "gated"
    _build_gated_model(gated / "1", fifo)
    fast = tmp_path / "fast"
    install_version(fast, mc_versions[1], 1)
    # The gated model is listed first: loaded one after the other, the fast one would wait behind it.
    config = write_config(tmp_path / "models.config", {"gated": gated, MC_MODEL: fast})
    server = start_server([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0",
                           "--max_num_load_retries=0", "--tensorflow_inter_op_parallelism=4"], wait=False)
    opened = None
    try:
        wait_until(lambda: f"Successfully loaded servable version {{name: {MC_MODEL} version: 1}}" in server.log(),
                   timeout=180, what="the fast model to load while the gated one waits")
        log = server.log()
        assert "Successfully loaded servable version {name: gated" not in log
        assert "Running gRPC ModelServer" not in log  # as TF Serving: the ports open once every model has loaded
        opened = _open_gate(fifo)
        server.wait_ready(timeout=120)
    finally:
        if opened is None:
            _open_gate(fifo)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "gated"
    request.inputs["x"].CopyFrom(tensor([[1.0, 2.0, 3.0]]))
    response = stub.Predict(request, timeout=30)
    assert np.allclose(to_array(response.outputs["y"]), [[2.0, 4.0, 6.0]])
    request.model_spec.name = MC_MODEL
    assert stub.Predict(request, timeout=30).model_spec.version.value == 1
    assert "Start-up: " in server.log()
