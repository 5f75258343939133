"""The binary: tensorflow_model_server's flags, tolerance of unknown ones, start-up failures."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import requests

from tests.serving.conftest import MC_MODEL, REPO_ROOT


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "serving.server", *args], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=120)


def test_version_flag_prints_and_exits():
    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("vizoo-model-server")


def test_help_documents_our_limits():
    result = _run("--helpfull")
    for flag in ("--max_num_samples", "--max_batch_rows", "--max_sample_rows", "--grpc_max_message_bytes",
                 "--max_concurrent_requests", "--max_tensor_bytes"):
        assert flag in result.stdout


def _start_error(**options) -> str:
    """Start-up checks, in process: a child process per case would import TensorFlow again.

    How the binary reports the error is `test_a_taken_grpc_port_is_a_clear_startup_error`'s.
    """
    from serving import errors
    from serving import server
    instance = server.Server(server.ServerOptions(**options))
    try:
        with pytest.raises(errors.InvalidArgument) as info:
            instance.start()
    finally:
        instance.stop(grace_seconds=0)
    return info.value.message


def test_no_model_is_a_clear_startup_error():
    assert _start_error(port=0) == (
        "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set.")
    assert _start_error(port=1) == (
        "Both server_options.model_base_path and server_options.model_config_file are empty!")
    # A relative base path would depend on where the server starts: refused, as tensorflow_model_server does.
    assert _start_error(port=1, model_name="m", model_base_path="runs/m") == (
        "Expected model m to have an absolute path or URI; got base_path()=runs/m")


def test_batching_parameters_without_batching_is_refused(tf_serving_testdata, mc_base_path):
    message = _start_error(
        port=1, model_base_path=str(mc_base_path),
        batching_parameters_file=str(tf_serving_testdata / "batching_config.txt"))
    assert message == ("server_options.batching_parameters_file is set without setting "
                       "server_options.enable_batching to true.")


def test_missing_base_path_is_a_startup_error(tmp_path):
    message = _start_error(port=1, model_base_path=str(tmp_path / "nothing"))
    assert message == f"Could not find base path {tmp_path / 'nothing'} for servable default"


def test_unknown_and_unimplemented_flags_are_accepted_with_a_warning(start_server, mc_base_path,
                                                                     tf_serving_testdata):
    # Boolean flags of tensorflow_model_server may be given without a value: one must not take
    # the next argument as its value, nor fail as the last argument.
    server = start_server(["--enable_profiler", f"--model_name={MC_MODEL}",
                           f"--model_base_path={mc_base_path}",
                           "--num_unload_threads=2", "--no_such_flag=1", "--enable_batching",
                           f"--batching_parameters_file={tf_serving_testdata / 'batching_config.txt'}",
                           "--grpc_channel_arguments=grpc.max_connection_age_ms=60000",
                           "--flush_filesystem_caches"])
    response = requests.get(f"{server.rest}/v1/models/{MC_MODEL}", timeout=30)
    assert response.status_code == 200
    # No --monitoring_config_file: no metrics page.
    metrics = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=30)
    assert metrics.status_code == 404
    log = server.log()
    assert "unknown argument: --no_such_flag=1" in log
    assert "--num_unload_threads is a tensorflow_model_server flag this server does not implement" in log
    assert "--enable_profiler is a tensorflow_model_server flag" in log
    assert "--flush_filesystem_caches is a tensorflow_model_server flag" in log


def test_ssl_config_file_serves_grpc_over_tls(start_server, mc_base_path, tmp_path):
    import shutil
    import grpc
    import pytest
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True, timeout=60)
    key, cert = (tmp_path / "key.pem").read_text(), (tmp_path / "cert.pem").read_text()

    def quoted(text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    config = tmp_path / "ssl.config"
    config.write_text(f"server_key: {quoted(key)}\nserver_cert: {quoted(cert)}\n")
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.encode())
    # Ready means a TLS channel to it is ready (the harness moves the server if its port was taken meanwhile).
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}",
                           f"--ssl_config_file={config}"], rest=False, channel_credentials=credentials,
                          timeout=180)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MC_MODEL
    response = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(request, timeout=30)
    assert response.model_version_status[0].state == 30
    insecure = grpc.insecure_channel(server.address)
    with pytest.raises(grpc.RpcError):
        model_service_pb2_grpc.ModelServiceStub(insecure).GetModelStatus(request, timeout=5)
    insecure.close()


def test_grpc_socket_path_tensor_content_serialization_and_health_service(start_server, mc_base_path, tmp_path):
    """Three flags of newer tensorflow_model_servers: the gRPC API on a UNIX socket (alone with --port=0), Predict
    outputs as tensor_content bytes, and the standard gRPC health service (its details: `test_health`)."""
    import grpc
    from serving import codec, health
    from tensorflow_serving.apis import (get_model_status_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)

    socket_path = tmp_path / "model_server.sock"
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}",
                           f"--grpc_socket_path={socket_path}", "--enable_serialization_as_tensor_content",
                           "--enable_grpc_healthcheck_service"], rest=False)

    def check_health(channel):
        return channel.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=health.HealthCheckRequest.SerializeToString,
                                   response_deserializer=health.HealthCheckResponse.FromString)(
            health.HealthCheckRequest(service=""), timeout=30)

    assert check_health(server.channel).status == health.SERVING
    predict = predict_pb2.PredictRequest()
    predict.model_spec.name = MC_MODEL
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    predict.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(x))
    answer = prediction_service_pb2_grpc.PredictionServiceStub(server.channel).Predict(predict, timeout=30)
    assert answer.outputs
    for alias, tensor in answer.outputs.items():
        assert tensor.tensor_content and not tensor.float_val, alias
        assert codec.tensor_proto_to_ndarray(tensor, alias).shape[0] == 2
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MC_MODEL
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
        assert check_health(channel).status == health.SERVING
    assert [s.state for s in response.model_version_status] == [30]  # AVAILABLE
    tcp = model_service_pb2_grpc.ModelServiceStub(server.channel).GetModelStatus(request, timeout=30)
    assert tcp == response
    assert "not implement" not in server.log()
    server.stop()

    # --port=0 disables the port: the socket alone serves (the harness's own --port comes first; the last wins).
    alone = tmp_path / "alone.sock"
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}", "--port=0",
                           f"--grpc_socket_path={alone}"], rest=False, wait=False)
    deadline = time.monotonic() + 120
    with grpc.insecure_channel(f"unix:{alone}") as channel:
        grpc.channel_ready_future(channel).result(timeout=120)
        while True:  # the socket opens once the model is loaded; until then, no answer
            try:
                response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
                break
            except grpc.RpcError:
                assert server.alive() and time.monotonic() < deadline, server.log()
                time.sleep(0.5)
        default = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict, timeout=30)
        with pytest.raises(grpc.RpcError) as info:  # no health service without the flag
            check_health(channel)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert [s.state for s in response.model_version_status] == [30]
    for alias, tensor in default.outputs.items():  # without the flag: typed value fields, as TF Serving answers
        assert tensor.float_val and not tensor.tensor_content, alias
        np.testing.assert_allclose(codec.tensor_proto_to_ndarray(tensor, alias),
                                   codec.tensor_proto_to_ndarray(answer.outputs[alias], alias), rtol=1e-6)
    log = server.log()
    assert "Running gRPC ModelServer at UNIX socket" in log
    assert log.count("Running gRPC ModelServer at ") == 1, log  # no TCP port


def test_an_unusable_grpc_socket_path_is_a_clear_startup_error(mc_base_path, tmp_path):
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _run(f"--port={port}", "--bind_host=127.0.0.1", f"--model_base_path={mc_base_path}",
                  "--file_system_poll_wait_seconds=0",
                  f"--grpc_socket_path={tmp_path / 'no_such_directory' / 'model_server.sock'}")
    assert result.returncode != 0
    assert "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server" in result.stderr


def test_a_taken_grpc_port_is_a_clear_startup_error(mc_base_path):
    import socket
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run(f"--port={port}", f"--model_base_path={mc_base_path}",
                      "--file_system_poll_wait_seconds=0")
    assert result.returncode != 0
    assert "Failed to start server. Error: INVALID_ARGUMENT: Failed to BuildAndStart gRPC server" in result.stderr


def test_rest_api_num_threads_below_one_is_refused_before_start():
    result = _run("--rest_api_num_threads=0", "--model_base_path=/nonexistent", "--rest_api_port=1")
    assert result.returncode != 0
    assert "FATAL Flags parsing error: flag --rest_api_num_threads=0: 0 is not a positive integer" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Could not find base path" not in result.stderr  # refused before anything was loaded


def _build_spin_model(path):
    """A SavedModel whose `serving_default` spins n [] int64 steps of 1,000 sines: y [1000]."""
    import tensorflow as tf

    class Spin(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([], tf.int64, name="n")])
        def serving_default(self, n):
            _, y = tf.while_loop(lambda i, y: i < n, lambda i, y: (i + 1, tf.sin(y) + 1.0),
                                 (tf.constant(0, tf.int64), tf.zeros([1000])))
            return {"y": y}

    module = Spin()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serving_default})


def test_a_run_past_the_rest_timeout_or_the_grpc_deadline_is_cancelled(start_server, tmp_path,
                                                                        tf_serving_testdata):
    # TF Serving passes --rest_api_timeout_in_ms, and a gRPC call's deadline, to the session as the run's
    # timeout: a run past it is cancelled and answered DEADLINE_EXCEEDED (REST: 504). 10^9 steps would spin
    # for many minutes; each answer below comes only if the run was cancelled, and the metrics count it.
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from serving import codec
    from tests.serving.conftest import wait_until

    _build_spin_model(tmp_path / "spin" / "1")
    server = start_server(["--model_name=spin", f"--model_base_path={tmp_path / 'spin'}",
                           "--rest_api_timeout_in_ms=500",
                           f"--monitoring_config_file={tf_serving_testdata / 'monitoring_config.txt'}"])
    url = server.rest + "/v1/models/spin:predict"
    quick = requests.post(url, json={"inputs": 10}, timeout=60)
    assert quick.status_code == 200 and len(quick.json()["outputs"]) == 1000
    endless = requests.post(url, json={"inputs": 10 ** 9}, timeout=120)
    assert (endless.status_code, endless.json()) == (504, {"error": "Timed out waiting for notification"})

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "spin"
    request.inputs["n"].CopyFrom(codec.ndarray_to_tensor_proto(np.array(10 ** 9, np.int64)))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # the client's own deadline, in any case...
    counted = ':tensorflow:serving:request_count{model_name="spin",status="DEADLINE_EXCEEDED"}'
    # ...and the server's run ended with it too, instead of spinning on.
    wait_until(lambda: server.metrics().get(counted) == 2, timeout=60, what="the gRPC run to be cancelled")


def test_session_thread_flags_combine_as_in_tf_serving():
    from serving import server
    options = lambda **threads: server.ServerOptions(**{f"tensorflow_{k}_parallelism": v  # noqa: E731
                                                        for k, v in threads.items()})
    assert server._session_threads(options(session=4)) == (4, 4)
    assert server._session_threads(options(session=4, intra_op=2)) == (2, 0)  # the specific ones win
    assert server._session_threads(options(inter_op=3)) == (0, 3)
    assert _start_error(port=1, tensorflow_session_parallelism=1, tensorflow_intra_op_parallelism=1,
                        tensorflow_inter_op_parallelism=1).endswith("You cannot configure all.")


def test_enforce_session_run_timeout_false_leaves_runs_to_finish():
    # TF Serving's --enforce_session_run_timeout (default true): whether a call's deadline times out its run.
    from serving import server, servicer

    class Context:
        def time_remaining(self):
            return 2.5

    assert servicer.PredictionServicer(None)._timeout(Context()) == 2.5
    assert servicer.PredictionServicer(None, enforce_session_run_timeout=False)._timeout(Context()) is None
    assert server.ServerOptions().enforce_session_run_timeout is True
