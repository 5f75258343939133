"""The binary: tensorflow_model_server's flags, tolerance of unknown ones, start-up failures."""

import os
import subprocess
import sys

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
    for flag in ("--max_num_samples", "--max_batch_rows", "--grpc_max_message_bytes",
                 "--max_concurrent_requests", "--max_tensor_bytes"):
        assert flag in result.stdout


def test_no_model_is_a_clear_startup_error():
    result = _run("--port=0")
    assert result.returncode != 0
    assert "server_options.grpc_port is not set." in result.stderr
    result = _run("--port=1")
    assert result.returncode != 0
    assert ("Both server_options.model_base_path and server_options.model_config_file are "
            "empty!") in result.stderr


def test_batching_parameters_without_batching_is_refused(tf_serving_testdata, mc_base_path):
    result = _run("--port=1", f"--model_base_path={mc_base_path}",
                  f"--batching_parameters_file={tf_serving_testdata / 'batching_config.txt'}")
    assert result.returncode != 0
    assert ("server_options.batching_parameters_file is set without setting "
            "server_options.enable_batching to true.") in result.stderr


def test_missing_base_path_is_a_startup_error(tmp_path):
    result = _run("--port=1", f"--model_base_path={tmp_path / 'nothing'}")
    assert result.returncode != 0
    assert f"Could not find base path {tmp_path / 'nothing'} for servable default" in result.stderr


def test_unknown_and_unimplemented_flags_are_accepted_with_a_warning(start_server, mc_base_path,
                                                                     tf_serving_testdata):
    server = start_server([f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}",
                           "--num_load_threads=2", "--no_such_flag=1", "--enable_batching",
                           f"--batching_parameters_file={tf_serving_testdata / 'batching_config.txt'}",
                           "--grpc_channel_arguments=grpc.max_connection_age_ms=60000"])
    response = requests.get(f"{server.rest}/v1/models/{MC_MODEL}", timeout=30)
    assert response.status_code == 200
    # No --monitoring_config_file: no metrics page.
    metrics = requests.get(f"{server.rest}/monitoring/prometheus/metrics", timeout=30)
    assert metrics.status_code == 404
    log = server.log()
    assert "unknown argument: --no_such_flag=1" in log
    assert "--num_load_threads is a tensorflow_model_server flag this server does not implement" in log
