"""A `python -m serving.server` child process on free ports, and the files it reads: one harness for the tests
and the benchmarks (the demo takes `free_port` and `write_model_config`).

    server = ServerProcess(["--model_config_file=models.config"], "server.log")   # started, gRPC port open
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server.channel)
    server.kill(); server.start()                                               # SIGKILL, same flags and ports
    server.stop()

The server opens its gRPC port only once every model has loaded, and its REST port right after, so "ready" means
the gRPC port accepts a channel and the server has logged that REST listens. Ports are picked free but may be
taken by another process before the server binds them; a first start that loses that race starts again on new
ports. Output goes to `log_path`, appended across restarts.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Mapping, Optional, Sequence, Union

from serving import model_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


# What the server logs when a port it was given is taken (gRPC: it exits; REST: it serves gRPC only), and once
# its REST port listens. A connection is no proof: whoever took the port accepts it too.
PORT_TAKEN_MESSAGES = ("Cannot listen on", "Failed to start HTTP Server")
REST_LISTENING_MESSAGE = "Exporting HTTP/REST API at:"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list:
    """`count` distinct TCP ports nothing listens on right now (bound all at once, so the OS cannot repeat one)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
                   for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory figure of a process from /proc/<pid>/status, in KiB (VmRSS: now; VmHWM: the peak so far)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def write_model_config(path, models: Union[Mapping[str, object], Sequence[Mapping[str, object]]]) -> pathlib.Path:
    """A `ModelServerConfig` text proto (what stock TF Serving reads too).

    Args:
      path: where to write it.
      models: name -> base path, or dicts with `name`, `base_path` and optional `extra` (more text-proto lines
        inside the model's `config { }`, e.g. a version policy).
    """
    if isinstance(models, Mapping):
        models = [{"name": name, "base_path": base} for name, base in models.items()]

    def absolute(base) -> str:  # tensorflow_model_server refuses relative base paths
        return os.path.abspath(base) if model_config.is_relative_path(str(base)) else str(base)

    entries = "".join(f'  config {{\n    name: "{m["name"]}"\n    base_path: "{absolute(m["base_path"])}"\n'
                      f'    model_platform: "tensorflow"\n{m.get("extra", "")}  }}\n' for m in models)
    path = pathlib.Path(path)
    path.write_text("model_config_list {\n" + entries + "}\n")
    return path


class PortTakenError(RuntimeError):
    """The server could not bind a port it was given (another process took it after `free_port`)."""


class ServerProcess:
    """A `python -m serving.server` child process on free ports, which can be killed and started again.

    Args:
      args: flags besides `--port` and `--rest_api_port`.
      log_path: where its output goes (appended across restarts).
      rest: open the REST port too.
      wait: wait until the server is ready (`start` is called by the constructor unless `start=False`).
      port_attempts: a server that could not bind its ports before it was first ready (another process took one
        after `free_ports`) is started again on new ones, up to this many starts in all; `wait_ready` does it,
        so a server started with `wait=False` and waited on later moves too.
      timeout: seconds to wait for that.
      channel_credentials: `grpc.ChannelCredentials` for a server started with `--ssl_config_file` (its
        readiness and `self.channel` are then a TLS channel's).
    """

    def __init__(self, args, log_path, rest: bool = True, wait: bool = True, timeout: float = 90.0,
                 start: bool = True, port_attempts: int = 3, channel_credentials=None):
        self.args = list(args)
        self.channel_credentials = channel_credentials
        self.log_path = pathlib.Path(log_path)
        self.proc: Optional[subprocess.Popen] = None
        self.channel = None
        self._log = None
        # Until the server has first been ready, its ports may move (nobody has been told them yet); after that a
        # restart keeps them, as a restarted production server would.
        self._port_moves_left = port_attempts - 1
        self._pick_ports(rest)
        if start:
            self.start(wait, timeout)

    def _pick_ports(self, rest: bool):
        self.grpc_port, self.rest_port = free_ports(2) if rest else (free_port(), 0)

    @property
    def address(self) -> str:
        return f"localhost:{self.grpc_port}"

    @property
    def rest(self) -> str:
        return f"http://localhost:{self.rest_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self, wait: bool = True, timeout: float = 90.0) -> "ServerProcess":
        """Starts the server (again, on the same ports after `kill` or `stop`)."""
        command = [sys.executable, "-m", "serving.server", f"--port={self.grpc_port}",
                   f"--rest_api_port={self.rest_port}", *self.args]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1",
                   CUDA_VISIBLE_DEVICES="")
        if self._log is not None:
            self._log.close()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self._log_start = self._log.tell()  # this start's output begins here (the log is appended across restarts)
        self.proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)
        return self

    def log(self) -> str:
        if self._log is not None:
            self._log.flush()
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout: float = 90.0) -> "ServerProcess":
        """Waits until the gRPC port accepts a channel (kept as `self.channel`) and the server says REST listens.

        A server that could not bind a port before it was first ready is started again on new ports (see
        `port_attempts`); each start gets `timeout` seconds.

        Raises:
          PortTakenError: the server could not bind a port it was given, and may not move (any more).
          RuntimeError: it exited, or was not ready within `timeout` seconds.
        """
        while True:
            try:
                self._wait_ready_once(timeout)
                self._port_moves_left = 0
                return self
            except PortTakenError:
                if self._port_moves_left <= 0:
                    raise
                self._port_moves_left -= 1
                self.stop()
                self._pick_ports(bool(self.rest_port))
                self.start(wait=False)

    def _wait_ready_once(self, timeout: float):
        import grpc  # pylint: disable=import-outside-toplevel

        deadline = time.monotonic() + timeout
        # Each try on a connection of its own: channels share their connections by default, and a shared one
        # refused before the port opened waits out its reconnect backoff (seconds) before trying again.
        options = [("grpc.use_local_subchannel_pool", 1)]
        while time.monotonic() < deadline and self.channel is None:
            self._check_running()
            channel = (grpc.secure_channel(self.address, self.channel_credentials, options=options)
                       if self.channel_credentials else grpc.insecure_channel(self.address, options=options))
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                self.channel = channel
            except grpc.FutureTimeoutError:
                channel.close()
        while time.monotonic() < deadline and self.channel is not None:
            if not self.rest_port or REST_LISTENING_MESSAGE in self._check_running():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log()[-5000:]}")

    def _check_running(self) -> str:
        """This start's output; raises if it shows a port taken or the process is gone."""
        self._log.flush()
        with open(self.log_path, "rb") as f:
            f.seek(self._log_start)
            output = f.read().decode(errors="replace")
        taken = [m for m in PORT_TAKEN_MESSAGES if m in output]
        if taken:
            raise PortTakenError(f"server could not bind its ports ({taken[0]}):\n{output[-5000:]}")
        if not self.alive():
            raise RuntimeError(f"server exited with {self.proc.returncode}:\n{output[-5000:]}")
        return output

    def wait_exit(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout=timeout)

    def _close_channel(self):
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def kill(self):
        """SIGKILL: no cleanup of any kind, as the OOM killer or a lost node would do it."""
        self._close_channel()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        """SIGTERM (a clean shutdown), SIGKILL after 20 s; before the SIGKILL, SIGUSR1 makes the server write
        every thread's stack to its log (`serving.server` registers it), so a shutdown that hangs says where."""
        self._close_channel()
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)
                try:
                    self.proc.wait(timeout=2)  # the dump, or an exit it happened to unblock
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def metrics(self) -> dict:
        """The Prometheus metrics (needs a monitoring config), parsed: name{labels} -> value."""
        import requests  # pylint: disable=import-outside-toplevel

        from serving import monitoring  # pylint: disable=import-outside-toplevel

        text = requests.get(self.rest + "/monitoring/prometheus/metrics", timeout=10).text
        return monitoring.parse_prometheus_text(text)
