"""The server harness: ready means both ports serve, and a port taken before the server binds it is survived."""

import contextlib
import socket

import pytest
import requests

from serving import process


@pytest.mark.parametrize("taken_port, wait", [("rest", True), ("grpc", False)])
def test_a_port_taken_before_the_server_binds_it_is_replaced(tmp_path, tf_serving_testdata, monkeypatch,
                                                            taken_port, wait):
    # Another process holds a port `free_ports` hands out: it listens (so connecting to it proves nothing) and
    # never answers. The server then logs that it cannot listen (gRPC: it exits; REST: it serves gRPC only); the
    # harness must start it again on new ports, also when the caller waits for readiness only later.
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as squatter:
        squatter.bind(("0.0.0.0", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        real_free_ports = process.free_ports
        other = real_free_ports(1)[0]
        first = [[other, taken] if taken_port == "rest" else [taken, other]]  # gRPC, REST
        monkeypatch.setattr(process, "free_ports", lambda n: first.pop() if first else real_free_ports(n))
        server = process.ServerProcess(
            ["--model_name=half_plus_two",
             f"--model_base_path={tf_serving_testdata / 'saved_model_half_plus_two_cpu'}"],
            tmp_path / "server.log", wait=wait)
        try:
            if not wait:
                server.wait_ready()
            assert taken not in (server.grpc_port, server.rest_port)
            message = "Failed to start HTTP Server" if taken_port == "rest" else "Cannot listen on"
            assert message in server.log()  # the first start did lose its port
            # Ready means REST answers at once, not merely that gRPC does.
            answer = requests.post(f"{server.rest}/v1/models/half_plus_two:predict",
                                   json={"instances": [1.0, 2.0]}, timeout=10)
            assert answer.status_code == 200
            assert answer.json() == {"predictions": [2.5, 3.0]}
        finally:
            server.stop()


def test_sigusr1_dumps_every_thread_and_sigterm_logs_each_shutdown_step(tmp_path, tf_serving_testdata):
    """What the harness relies on when a server does not stop within 20 s: SIGUSR1 writes the stacks of all
    threads to the log without stopping the server, and a clean stop logs each step with its time."""
    import signal
    import time

    server = process.ServerProcess(
        ["--model_name=half_plus_two", f"--model_base_path={tf_serving_testdata / 'saved_model_half_plus_two_cpu'}"],
        tmp_path / "server.log")
    try:
        server.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while "Current thread" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "Current thread" in server.log() and "Thread 0x" in server.log()
        answer = requests.post(f"{server.rest}/v1/models/half_plus_two:predict", json={"instances": [1.0]},
                               timeout=10)
        assert answer.json() == {"predictions": [2.5]}  # still serving
        server.proc.terminate()
        assert server.wait_exit(timeout=20) == 0
        for step in ("REST server", "gRPC server", "models"):
            assert f"Shutdown: {step} stopped" in server.log(), step
    finally:
        server.stop()
