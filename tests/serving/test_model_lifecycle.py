"""Versions coming and going: swaps under load, failed loads, policies, config reloads."""

import pathlib
import threading

import grpc
import numpy as np
import pytest

from tests.serving.conftest import (FEATURES, MC_MODEL, install_version, rpc_error, tensor,
                                    to_array, wait_until, write_config)


def _stubs(server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc
    return (prediction_service_pb2_grpc.PredictionServiceStub(server.channel),
            model_service_pb2_grpc.ModelServiceStub(server.channel))


def _predict(stub, name=MC_MODEL, version=None):
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["x"].CopyFrom(tensor(np.ones([1, FEATURES])))
    return stub.Predict(request, timeout=30)


def _status(model_stub, name=MC_MODEL):
    from tensorflow_serving.apis import get_model_status_pb2
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        response = model_stub.GetModelStatus(request, timeout=30)
    except grpc.RpcError:
        return {}
    return {s.version: (s.state, s.status.error_code, s.status.error_message)
            for s in response.model_version_status}


AVAILABLE, END = 30, 50


def test_version_swap_under_concurrent_requests_fails_no_request(start_server, tmp_path,
                                                                 mc_versions):
    base = tmp_path / "model"
    install_version(base, mc_versions[1], 1)
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"])
    stub, model_stub = _stubs(server)
    failures, versions_seen, stop = [], set(), threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                versions_seen.add(_predict(stub).model_spec.version.value)
            except grpc.RpcError as exc:  # any failure at all fails the test
                failures.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: 1 in versions_seen, what="version 1 answering")
        install_version(base, mc_versions[2], 2)
        wait_until(lambda: _status(model_stub).get(1, (0,))[0] == END, what="version 1 unloaded")
        wait_until(lambda: 2 in versions_seen, what="version 2 answering")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    assert versions_seen == {1, 2}
    assert _status(model_stub) == {2: (AVAILABLE, 0, ""), 1: (END, 0, "")}
    # The new version's weights (2.0) answer now: mean = 2 * 3 features + 0.5.
    assert np.allclose(to_array(_predict(stub).outputs["mean"]), 6.5, atol=0.2)


def test_corrupt_version_is_reported_and_the_old_one_keeps_serving(start_server, tmp_path,
                                                                   mc_versions):
    base = tmp_path / "model"
    install_version(base, mc_versions[1], 1)
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"])
    stub, model_stub = _stubs(server)
    corrupt = tmp_path / "staging"
    corrupt.mkdir()
    (corrupt / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    corrupt.rename(base / "2")
    status = wait_until(lambda: _status(model_stub).get(2, (0,))[0] == END and _status(model_stub),
                        what="version 2 to fail")
    state, code, message = status[2]
    assert code != 0 and message
    assert status[1] == (AVAILABLE, 0, "")
    assert _predict(stub).model_spec.version.value == 1
    error = rpc_error(_predict, stub, version=2)
    assert error.code() == grpc.StatusCode.NOT_FOUND
    # A good version 3 then replaces version 1; the failed 2 is left alone.
    install_version(base, mc_versions[2], 3)
    wait_until(lambda: _status(model_stub).get(1, (0,))[0] == END, what="version 1 unloaded")
    assert _predict(stub).model_spec.version.value == 3


def test_version_policies_and_config_reload_over_rpc(start_server, tmp_path, mc_versions,
                                                     tf_serving_testdata):
    from google.protobuf import text_format
    from tensorflow_serving.apis import model_management_pb2

    base = tmp_path / "model"
    for version in (1, 2):
        install_version(base, mc_versions[version], version)
    config = write_config(tmp_path / "models.config", [{"name": MC_MODEL, "base_path": base}])
    server = start_server([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0"])
    stub, model_stub = _stubs(server)
    # Default policy: latest 1.
    assert _status(model_stub) == {2: (AVAILABLE, 0, "")}

    def reload(text):
        request = model_management_pb2.ReloadConfigRequest()
        text_format.Parse(text, request.config)
        return model_stub.HandleReloadConfigRequest.with_call(request, timeout=60)

    half_plus_two = tf_serving_testdata / "saved_model_half_plus_two_cpu"
    response, _ = reload(
        f'model_config_list {{ config {{ name: "{MC_MODEL}" base_path: "{base}" '
        'model_platform: "tensorflow" model_version_policy { specific { versions: 1 } } } '
        f'config {{ name: "hpt" base_path: "{half_plus_two}" model_platform: "tensorflow" }} }}')
    assert response.status.error_code == 0
    assert _status(model_stub) == {2: (END, 0, ""), 1: (AVAILABLE, 0, "")}
    assert _predict(stub, "hpt").model_spec.version.value == 123

    reload(f'model_config_list {{ config {{ name: "{MC_MODEL}" base_path: "{base}" '
           'model_platform: "tensorflow" model_version_policy { all {} } '
           'version_labels { key: "stable" value: 1 } } }')
    assert {v: s[0] for v, s in _status(model_stub).items()} == {2: AVAILABLE, 1: AVAILABLE}
    error = rpc_error(_predict, stub, "hpt")
    assert error.code() == grpc.StatusCode.NOT_FOUND  # removed from the config
    assert _status(model_stub, "hpt") == {123: (END, 0, "")}

    # A refused config changes nothing; the status is in the body and in the RPC status.
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse(f'model_config_list {{ config {{ name: "a" base_path: "{base}" '
                      'model_platform: "tensorflow" } config { name: "a" base_path: "/x" '
                      'model_platform: "tensorflow" } }', request.config)
    error = rpc_error(model_stub.HandleReloadConfigRequest, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Illegal to list model a multiple times in config list"
    request = model_management_pb2.ReloadConfigRequest()
    text_format.Parse('model_config_list { config { name: "b" base_path: "models/b" model_platform: "tensorflow" } }',
                      request.config)
    error = rpc_error(model_stub.HandleReloadConfigRequest, request, timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Expected model b to have an absolute path or URI; got base_path()=models/b"
    assert _predict(stub, version=1).model_spec.version.value == 1

    # Listed again (elsewhere, one version): its old version 123 stays END until it loads again, as in TF
    # Serving's state monitor.
    two_versions = tf_serving_testdata / "saved_model_half_plus_two_2_versions"
    reload(f'model_config_list {{ config {{ name: "{MC_MODEL}" base_path: "{base}" model_platform: "tensorflow" }} '
           f'config {{ name: "hpt" base_path: "{two_versions}" model_platform: "tensorflow" '
           'model_version_policy { specific { versions: 124 } } } }')
    assert _status(model_stub, "hpt") == {124: (AVAILABLE, 0, ""), 123: (END, 0, "")}
    assert _predict(stub, "hpt").model_spec.version.value == 124
    reload(f'model_config_list {{ config {{ name: "{MC_MODEL}" base_path: "{base}" model_platform: "tensorflow" }} '
           f'config {{ name: "hpt" base_path: "{two_versions}" model_platform: "tensorflow" '
           'model_version_policy { all {} } } }')
    assert {v: s[0] for v, s in _status(model_stub, "hpt").items()} == {124: AVAILABLE, 123: AVAILABLE}


def test_config_file_polling_picks_up_a_new_model(start_server, tmp_path, tf_serving_testdata):
    two = tf_serving_testdata / "saved_model_half_plus_two_cpu"
    three = tf_serving_testdata / "saved_model_half_plus_three"
    config = write_config(tmp_path / "models.config", [{"name": "two", "base_path": two}])
    server = start_server([f"--model_config_file={config}",
                           "--model_config_file_poll_wait_seconds=1",
                           "--file_system_poll_wait_seconds=0"])
    stub, model_stub = _stubs(server)
    error = rpc_error(_predict_half, stub, "three")
    assert error.code() == grpc.StatusCode.NOT_FOUND
    staging = pathlib.Path(tmp_path / "models.config.new")
    write_config(staging, [{"name": "two", "base_path": two}, {"name": "three", "base_path": three}])
    staging.rename(config)
    wait_until(lambda: _status(model_stub, "three").get(123, (0,))[0] == AVAILABLE,
               what="model three loaded by the config poll")
    assert to_array(_predict_half(stub, "three").outputs["y"]).tolist() == [[3.5]]


def _predict_half(stub, name):
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["x"].CopyFrom(tensor([[1.0]]))
    return stub.Predict(request, timeout=30)


def test_warmup_replays_the_requests_file_when_enabled(start_server, mc_base_path,
                                                       tf_serving_testdata):
    monitoring = f"--monitoring_config_file={tf_serving_testdata / 'monitoring_config.txt'}"
    runs = ':vizoo:serving:signature_runs{model_name="mc",signature_name="serving_default"}'
    warm = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}",
                         monitoring, "--num_request_iterations_for_warmup=3"])
    cold = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}",
                         monitoring, "--enable_model_warmup=false"])
    # One record in the warmup file, replayed 3 times, before any client request.
    assert warm.metrics().get(runs, 0) == 3
    assert cold.metrics().get(runs, 0) == 0


def test_start_up_waits_for_the_first_version(start_server, tmp_path, mc_versions):
    base = tmp_path / "model"
    base.mkdir()
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={base}",
                           "--file_system_poll_wait_seconds=1"], wait=False)
    wait_until(lambda: "No versions of servable mc found" in server.log(), timeout=180,
               what="the server to look at the empty base path")
    assert server.proc.poll() is None  # still waiting, not failed
    install_version(base, mc_versions[1], 1)
    server.wait_ready()
    stub, _ = _stubs(server)
    assert _predict(stub).model_spec.version.value == 1


def test_a_reload_waiting_for_a_new_model_stalls_neither_polling_nor_shutdown(
        start_server, tmp_path, mc_versions):
    base, late = tmp_path / "model", tmp_path / "late"
    install_version(base, mc_versions[1], 1)
    late.mkdir()
    config = write_config(tmp_path / "models.config", [{"name": MC_MODEL, "base_path": base}])
    server = start_server([f"--model_config_file={config}", "--model_config_file_poll_wait_seconds=1",
                           "--file_system_poll_wait_seconds=1"])
    _, model_stub = _stubs(server)
    staging = tmp_path / "models.config.new"
    write_config(staging, [{"name": MC_MODEL, "base_path": base}, {"name": "late", "base_path": late}])
    staging.rename(config)
    wait_until(lambda: "Waiting for a first version of late" in server.log(),
               what="the config poll to wait for model late")
    # TF Serving keeps loading versions of the other models while a reload waits.
    install_version(base, mc_versions[2], 2)
    wait_until(lambda: _status(model_stub).get(2, (0,))[0] == AVAILABLE,
               what="version 2 of mc to load while the reload waits")
    # SIGTERM ends the waiting reload too: a clean exit, not the harness's SIGKILL after 20 s.
    server.proc.terminate()
    assert server.wait_exit(timeout=20) == 0


@pytest.mark.parametrize("policy", ["specific { versions: 1 versions: 2 }", "all {}"])
def test_a_version_whose_directory_is_removed_is_unloaded_under_any_policy(tmp_path, monkeypatch, policy):
    # TF Serving stops aspiring a version whose directory is gone, a `specific` one too, and unloads it.
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    from serving import model_manager

    class FakeLoaded:  # stands in for a session: only the lifecycle is under test
        def __init__(self, name, version, path, options, on_run=None):
            self.name, self.version, self.path = name, version, path

        def close(self, timeout_seconds=0):
            pass

    monkeypatch.setattr(model_manager, "LoadedModel", FakeLoaded)
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
    config = text_format.Parse(
        f'model_config_list {{ config {{ name: "m" base_path: "{tmp_path}" model_platform: "tensorflow" '
        f'model_version_policy {{ {policy} }} }} }}', model_server_config_pb2.ModelServerConfig())
    manager = model_manager.ModelManager(model_manager.ManagerOptions(file_system_poll_wait_seconds=0))
    manager.reload_config(config)
    assert {s.version: s.state.name for s in manager.status("m")} == {2: "AVAILABLE", 1: "AVAILABLE"}
    import shutil
    shutil.rmtree(tmp_path / "2")
    manager.poll()
    assert {s.version: s.state.name for s in manager.status("m")} == {2: "END", 1: "AVAILABLE"}


def test_a_model_that_cannot_load_is_named_with_its_error_and_wrong_tags_are_not_found(tf_serving_testdata):
    from serving import errors, model_config, model_manager
    manager = model_manager.ModelManager(model_manager.ManagerOptions(
        saved_model_tags=("nope",), max_num_load_retries=0, file_system_poll_wait_seconds=0))
    config = model_config.single_model_config("hpt", str(tf_serving_testdata / "saved_model_half_plus_two_cpu"))
    cause = ("Could not find meta graph def matching supplied tags: { nope }. To inspect available tag-sets in "
             "the SavedModel, please use the SavedModel CLI: `saved_model_cli`")
    with pytest.raises(errors.Unknown) as info:
        manager.reload_config(config)
    # TF Serving's start-up failure names each servable with the error that ended it.
    assert info.value.message == ("1 servable(s) did not become available: "
                                  f"{{{{{{name: hpt version: 123}} due to error: NOT_FOUND: {cause}}}, }}")
    [status] = manager.status("hpt")
    assert (status.version, status.state.name, status.error_code, status.error_message) == (
        123, "END", errors.Code.NOT_FOUND, cause)


def test_reload_errors_are_server_cores(tmp_path, tf_serving_testdata):
    """`ServerCore::ReloadConfig`: a model may not change platform, a deprecated model_type other than TENSORFLOW
    is named by its number, and a model a reload adds that fails to load is counted as a model, not a servable
    (the start-up wording)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2
    from serving import errors, model_manager
    good = tf_serving_testdata / "saved_model_half_plus_two_cpu"
    (tmp_path / "bad" / "1").mkdir(parents=True)
    (tmp_path / "bad" / "1" / "saved_model.pb").write_bytes(b"not a SavedModel")

    def config(*models):
        return text_format.Parse("model_config_list { " + " ".join(
            f'config {{ name: "{name}" base_path: "{path}" {extra} }}' for name, path, extra in models) + " }",
            model_server_config_pb2.ModelServerConfig())

    manager = model_manager.ModelManager(model_manager.ManagerOptions(
        max_num_load_retries=0, file_system_poll_wait_seconds=0))
    manager.reload_config(config(("m", good, 'model_platform: "tensorflow"')))
    with pytest.raises(errors.InvalidArgument) as info:
        manager.reload_config(config(("m", good, 'model_platform: "foo"')))
    assert info.value.message == ("Illegal to change a model's platform. For model m platform was tensorflow and "
                                  "new platform requested is foo")
    with pytest.raises(errors.InvalidArgument) as info:
        manager.reload_config(config(("m", good, "model_type: OTHER")))
    assert info.value.message == "ModelServerConfig::model_type choice 2 not supported."
    with pytest.raises(errors.Unknown) as info:
        manager.reload_config(config(("m", good, 'model_platform: "tensorflow"'),
                                     ("bad", tmp_path / "bad", 'model_platform: "tensorflow"')))
    assert info.value.message.startswith("1 model(s) did not become available: {{{name: bad version: 1} due to ")
    assert manager.status("m")[0].state.name == "AVAILABLE"
