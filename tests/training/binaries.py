"""Training binaries run as processes forked from one that has imported TensorFlow and the training package.

A test that runs `python -m training.train_<family> ...` pays about 4 s of CPU for the interpreter to import
TensorFlow before the binary parses a flag. Here a fork server (`multiprocessing`'s) imports TensorFlow, the
training library and the models once per pytest worker, runs no TensorFlow op, and forks one child per run; the
child imports the binary's module (which defines its flags) and runs it as `python -m` would: `sys.argv`, the
environment, stdout and stderr to files, the exit status of `absl.app.run`, or 1 with a traceback for an
uncaught exception. It is a process of its own: it can be killed, and its working state ends with it.

Runs whose outcome depends on what happens while TensorFlow is imported (environment variables it reads then,
such as XDG_CACHE_HOME for the XLA cache), or on a fresh interpreter (hash randomization, for the seed test),
start their own `python` instead.
"""

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import pathlib
import runpy
import subprocess
import sys
import tempfile
import traceback

PRELOAD = ["tensorflow", "tf_keras", "tensorflow_probability", "training", "training.config", "training.data",
           "training.flags", "training.metrics", "training.train_lib", "models.bayesian_dense",
           "models.linear_regression", "serving.export"]

_context = None


def _fork_server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
        # Stopped (and waited for) at exit, so that its CPU time and its children's count in the worker's.
        atexit.register(multiprocessing.forkserver._forkserver._stop)
    return _context


def _child(module: str, args: list, env: dict, cwd: str, stdout: str, stderr: str) -> None:
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    code = 0
    try:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:  # as the interpreter maps it
        if isinstance(e.code, int):
            code = e.code
        elif e.code is not None:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # noqa: BLE001 - as the interpreter reports it
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class Run:
    """One run of a binary, started at once: `wait`, `kill`, and its output once it ended."""

    def __init__(self, module: str, args, env: dict, cwd, stdout=None, stderr=None):
        self._files = tempfile.TemporaryDirectory(prefix="binary-")
        self.stdout_path = pathlib.Path(stdout or os.path.join(self._files.name, "stdout"))
        self.stderr_path = pathlib.Path(stderr or os.path.join(self._files.name, "stderr"))
        self.args = [module, *map(str, args)]
        self._process = _fork_server().Process(
            target=_child, args=(module, [str(a) for a in args], dict(env), str(cwd), str(self.stdout_path),
                                 str(self.stderr_path)), daemon=True)
        self._process.start()

    @property
    def pid(self) -> int:
        return self._process.pid

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout=None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def kill(self) -> None:
        self._process.kill()

    def result(self, timeout=None) -> subprocess.CompletedProcess:
        """Waits for the run; its exit status, stdout and stderr (killed at the timeout)."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        return subprocess.CompletedProcess(self.args, self._process.exitcode, self.stdout_path.read_text(),
                                           self.stderr_path.read_text())

    def close(self) -> None:
        if self._process.exitcode is None:
            self.kill()
            self._process.join()
        self._files.cleanup()


def run(module: str, args, env: dict, cwd, timeout=300) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)` in a forked child."""
    binary = Run(module, args, env, cwd)
    try:
        return binary.result(timeout)
    finally:
        binary.close()
