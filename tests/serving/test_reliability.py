"""The server holds under load and faults: three real exports, many gRPC clients, kills and broken versions.

These use the same machinery as `benchmarks/reliability.py` (which also reports latencies and memory); here only
what must hold is asserted: zero failed requests, every model answering, memory not growing with load, the old
version serving while a broken one is reported, and a killed server serving again after a restart.
"""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))

import reliability  # noqa: E402  (benchmarks/reliability.py)
from serving.process import ServerProcess, rss_kib, write_model_config  # noqa: E402

CLIENTS = 6


@pytest.fixture(scope="module")
def exports(data_dir, tmp_path_factory):
    """concrete_blr (closed form), concrete_bnn and mnist_bnn (short Adam runs), each in its own base path."""
    return reliability.build_exports(data_dir, tmp_path_factory.mktemp("reliability"), bnn_steps=60, mnist_steps=40)


@pytest.fixture
def requests_by_model(exports):
    return reliability.make_requests(exports, rows=4, per_model=4)


def _server(tmp_path, exports, *extra, poll_seconds=0):
    config = write_model_config(tmp_path / "models.config", {name: info["base"] for name, info in exports.items()})
    return ServerProcess([f"--model_config_file={config}", f"--file_system_poll_wait_seconds={poll_seconds}",
                          "--max_num_load_retries=0", *extra], tmp_path / "server.log", timeout=180)


@pytest.mark.parametrize("batching", [False, True], ids=["batching_off", "batching_on"])
def test_load_on_three_models_answers_every_request_and_memory_does_not_grow(batching, tmp_path, exports,
                                                                             requests_by_model):
    extra = ["--enable_batching", f"--batching_parameters_file={reliability.DEFAULT_BATCHING_FILE}"] if batching else []
    server = _server(tmp_path, exports, *extra)
    try:
        first = reliability.run_load(server.address, requests_by_model, CLIENTS, seconds=3)
        after_first = rss_kib(server.pid)
        second = reliability.run_load(server.address, requests_by_model, CLIENTS, seconds=3)
        after_second = rss_kib(server.pid)
        assert server.alive()
    finally:
        server.stop()
    for result in (first, second):
        assert result.num_errors == 0, (dict(result.errors), result.first_errors)
        answered = {key.split(":")[0] for key in result.versions}
        assert answered == set(reliability.MODELS), result.versions
    # The same load again may reuse what the first one allocated; it must not need much more (no per-request leak).
    assert after_second - after_first < 128 * 1024, (after_first, after_second)


def test_broken_versions_under_load_fail_no_request_and_are_reported(tmp_path, exports, requests_by_model):
    base = exports["concrete_blr"]["base"]
    server = _server(tmp_path, exports, poll_seconds=1)
    try:
        with reliability.background_load(server.address, requests_by_model, CLIENTS, seconds=120) as box:
            reliability.write_corrupt_version(base, 2, base / "1")
            corrupt = reliability.wait_for(
                lambda: reliability.model_status(server.address, "concrete_blr").get(2, ("",))[0] == "END", 60)
            reliability.write_half_version(base, 3, base / "1")
            half = reliability.wait_for(
                lambda: reliability.model_status(server.address, "concrete_blr").get(3, ("",))[0] == "END", 60)
            status = reliability.model_status(server.address, "concrete_blr")
        result = box["result"]
    finally:
        server.stop()
        for version in (2, 3):
            reliability.shutil.rmtree(base / str(version), ignore_errors=True)
    assert corrupt and half, status
    assert status[1][0] == "AVAILABLE", status
    for version in (2, 3):
        state, code, message = status[version]
        assert code != 0 and message, status  # the failure is reported, with a reason
    assert result.num_errors == 0, (dict(result.errors), result.first_errors)
    assert {v for v in result.versions if v.startswith("concrete_blr:")} == {"concrete_blr:1"}, result.versions


def test_a_killed_server_restarted_with_the_same_flags_serves_again(tmp_path, exports, requests_by_model):
    server = _server(tmp_path, exports)
    probe = requests_by_model["mnist_bnn"][0][0]
    try:
        assert reliability.answers(server.address, probe, timeout=30)  # a first call on a just-started server
        server.kill()
        assert not reliability.answers(server.address, probe, timeout=1.0)
        server.start(wait=False)
        # A bound on the wait, not a timing assertion: the restart must come back at all.
        assert reliability.wait_for(lambda: reliability.answers(server.address, probe), timeout=240, interval=0.2)
        result = reliability.run_load(server.address, requests_by_model, CLIENTS, seconds=2)
        assert result.num_errors == 0, (dict(result.errors), result.first_errors)
    finally:
        server.stop()
