r"""Reliability of the served models under load and under faults, measured in one run.

    python benchmarks/reliability.py [--data_dir=../shared/datasets] [--clients=8] [--seconds=20] [--rounds=3]
        [--restart_rounds=3]

Three real exports of our families are built first (`serving.export.export`), each in its own base path:

  * `concrete_blr`: Bayesian linear regression on UCI concrete, fitted in closed form (type-II maximum likelihood);
  * `concrete_bnn`: a mean-field Bayesian network (one hidden layer of 50) on UCI concrete, `--bnn_steps` of Adam
    through `training.train_lib.fit`;
  * `mnist_bnn`: a mean-field Bayesian classifier (one hidden layer of 32) on MNIST, `--mnist_steps` of Adam.

Then `python -m serving.server` serves the three from one model config file, and:

1. Load: `--clients` gRPC clients (a thread and a channel each) call Predict (`serving_default`, `--rows` rows of
   held-out data) on the three models in turn for `--seconds`, with batching off and with `--enable_batching` and
   `deploy/batching.config`, alternated for `--rounds` rounds (a fresh server each time): one run of each reads
   20-40% apart from the next on a shared 2-core machine. Every answer is checked (every output has one row per
   input row, float outputs are finite); a failed call or a wrong answer is an error. Printed per setting: the
   median and range of the rounds' requests, all errors, the median's throughput, p50 and p99 latency over all
   rounds' calls as the clients see them, and the server's peak resident memory (VmHWM, the largest of the rounds).
2. Faults, under the same load with batching off:
   a. a new version of `concrete_blr` exported into its base path: failed requests (must be 0), and how many
      requests each version answered;
   b. a corrupt version directory (an unparsable `saved_model.pb`, renamed into place) and then a half-written one
      (a numbered directory holding `variables/` but no `saved_model.pb` yet, as an exporter that writes in place
      leaves it): failed requests (must be 0), the version that kept answering, and what GetModelStatus says about
      the broken versions;
   c. the broken versions removed, the server killed with SIGKILL mid-load and started again on the same ports,
      `--restart_rounds` times for each of two settings -- the first config's models loaded side by side (the
      default, four threads per CPU as TF Serving) and one at a time (`--num_initial_load_threads=1`): seconds from
      the restart to the first answered request, against a bare process (`BARE_LOAD`: it imports TensorFlow,
      `tf.saved_model.load`s the same three exports and runs one `serving_default` call on each) started while the
      server is down, in alternation (bare, side by side, one at a time, bare, ...): the medians and their ratios,
      the median of each round's ratio to its own bare load (the machine's load drifts less within a round), and
      each setting's last start as the server logs it ("Start-up:": imports, models with their session loads and
      warmup replays summed, ports).

The clients retry as a gRPC client with a retry policy does (gRPC A6): after a failed call a client waits a random
time up to its current backoff (`RETRY_BACKOFF`: 0.1 s, doubling to at most 1 s, back to 0.1 s after a success),
so a dead server is not met with a busy loop that takes the machine's cores from the restart.

Latencies are wall times in the client process, which shares the machine (and, on a small machine, the cores) with
the server; compare the two rows of one run, not numbers across machines. Every loop is bounded in time, servers
run on free ports (`serving.process.ServerProcess`), and everything is written under a temporary directory that is
removed at the end (`--workdir` keeps it instead).

The functions here (`run_load`, `build_exports`, the fault writers, ...) are also what
`tests/serving/test_reliability.py` uses.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from serving.process import ServerProcess, rss_kib, write_model_config  # noqa: E402

DEFAULT_BATCHING_FILE = REPO_ROOT / "deploy" / "batching.config"
MODELS = ("concrete_blr", "concrete_bnn", "mnist_bnn")
# A client's retry backoff after a failed call (gRPC A6's retry policy): initial, multiplier, maximum (seconds).
RETRY_BACKOFF = (0.1, 2.0, 1.0)


# --------------------------------------------------------------------------------------------
# Load.
# --------------------------------------------------------------------------------------------

def predict_request(model: str, x: np.ndarray, signature: str = "serving_default"):
    from serving import codec  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2  # pylint: disable=import-outside-toplevel

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(np.asarray(x, np.float32), use_tensor_content=True))
    return request


def check_predict_response(response, rows: int) -> Optional[str]:
    """None if every output has `rows` rows and float outputs are finite, else what is wrong."""
    from serving import codec  # pylint: disable=import-outside-toplevel

    if not response.outputs:
        return "no outputs"
    for alias, proto in response.outputs.items():
        value = codec.tensor_proto_to_ndarray(proto, alias)
        if value.ndim == 0 or value.shape[0] != rows:
            return f"output {alias} has shape {value.shape}, expected {rows} rows"
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return f"output {alias} is not finite"
    return None


@dataclasses.dataclass
class LoadResult:
    """What the clients saw. `errors` counts failures by gRPC code name (or `BAD_ANSWER`)."""

    seconds: float = 0.0
    latencies: List[float] = dataclasses.field(default_factory=list)
    errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    versions: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first_errors: List[str] = dataclasses.field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.latencies) + sum(self.errors.values())

    @property
    def num_errors(self) -> int:
        return sum(self.errors.values())

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")


def run_load(address: str, requests: Dict[str, list], clients: int, seconds: float,
             stop: Optional[threading.Event] = None, timeout: float = 30.0) -> LoadResult:
    """`clients` threads, each with its own channel, call Predict in turn on every model for `seconds`.

    Args:
      address: host:port of the server.
      requests: model name -> list of (PredictRequest, rows); client k starts at model k (of the models in
        turn) and at its request k // len(requests).
      clients: concurrent clients.
      seconds: how long every client keeps calling (or until `stop` is set).
      timeout: deadline of each call.

    Returns:
      A `LoadResult` (latencies of the successful calls, errors by code, answering versions by "model:version").
    """
    import grpc  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

    stop = stop or threading.Event()
    # Interleaved (each model's first request, then each one's second, ...), so client k starts at model k: every
    # model is asked from the first moment, however few calls a slow machine completes in `seconds`.
    plan = [(name, *items[j]) for j in range(max(map(len, requests.values()), default=0))
            for name, items in requests.items() if j < len(items)]
    result = LoadResult()
    lock = threading.Lock()
    start = time.monotonic()
    deadline = start + seconds

    def client(k: int):
        latencies, errors, versions, messages = [], collections.Counter(), collections.Counter(), []
        rng = random.Random(k)
        initial, multiplier, longest = RETRY_BACKOFF
        backoff = initial
        with contextlib.closing(grpc.insecure_channel(address)) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            i = k
            while time.monotonic() < deadline and not stop.is_set():
                name, request, rows = plan[i % len(plan)]
                i += 1
                t0 = time.perf_counter()
                try:
                    response = stub.Predict(request, timeout=timeout)
                except grpc.RpcError as exc:
                    errors[exc.code().name] += 1
                    if len(messages) < 3:
                        messages.append(f"{name}: {exc.code().name}: {exc.details()}")
                    stop.wait(min(rng.uniform(0.0, backoff), max(deadline - time.monotonic(), 0.0)))
                    backoff = min(backoff * multiplier, longest)
                    continue
                backoff = initial
                elapsed = time.perf_counter() - t0
                problem = check_predict_response(response, rows)
                if problem is not None:
                    errors["BAD_ANSWER"] += 1
                    if len(messages) < 3:
                        messages.append(f"{name}: {problem}")
                    continue
                latencies.append(elapsed)
                versions[f"{name}:{response.model_spec.version.value}"] += 1
        with lock:
            result.latencies.extend(latencies)
            result.errors.update(errors)
            result.versions.update(versions)
            result.first_errors.extend(messages[: max(0, 5 - len(result.first_errors))])

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - start
    return result


@contextlib.contextmanager
def background_load(*args, **kwargs):
    """`run_load` on a thread; yields a dict whose "result" is set once the load is over (stopped on exit)."""
    stop = threading.Event()
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", run_load(*args, stop=stop, **kwargs)),
                              daemon=True)
    thread.start()
    try:
        yield box
    finally:
        stop.set()
        thread.join()


def model_status(address: str, name: str, timeout: float = 10.0) -> Dict[int, tuple]:
    """GetModelStatus: version -> (state name, error code, error message)."""
    import grpc  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import get_model_status_pb2  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import model_service_pb2_grpc  # pylint: disable=import-outside-toplevel

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with contextlib.closing(grpc.insecure_channel(address)) as channel:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=timeout)
    return {s.version: (get_model_status_pb2.ModelVersionStatus.State.Name(s.state), s.status.error_code,
                        s.status.error_message) for s in response.model_version_status}


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.1):
    """Polls `predicate` until it is truthy; returns its value, or None after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def answers(address: str, request, timeout: float = 2.0) -> bool:
    """One Predict on a fresh channel with a subchannel of its own: did it succeed?

    gRPC shares subchannels between the channels of a process by default, so a fresh channel would wait out the
    reconnect back-off (1 s, growing 1.6-fold) that earlier refused connections left on the shared one, and a
    server that is back would be seen seconds late.
    """
    import grpc  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel

    with contextlib.closing(grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])) as channel:
        try:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=timeout)
            return True
        except grpc.RpcError:
            return False


# A bare load of the same exports, for comparison with a server's start-up: import TensorFlow, load each export
# with `tf.saved_model.load`, run its `serving_default` once on one row of zeros, and say "ready".
BARE_LOAD = """
import sys
import tensorflow as tf
for path in sys.argv[1:]:
    signature = tf.saved_model.load(path).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    signature(**{k: tf.zeros([1, *spec.shape[1:]], spec.dtype) for k, spec in inputs.items()})
print("ready", flush=True)
"""


def bare_load_seconds(version_dirs, timeout: float = 300.0) -> float:
    """Seconds from starting a `BARE_LOAD` process on `version_dirs` to its "ready" (the server's environment)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", BARE_LOAD, *map(str, version_dirs)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        seconds = time.monotonic() - t0
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if line.strip() != "ready":
        raise RuntimeError(f"the bare load failed (exit code {proc.returncode})")
    return seconds


def startup_line(log: str) -> str:
    """The last "Start-up: ..." line a server logged, from the words "Start-up" on ("" if none)."""
    lines = [line for line in log.splitlines() if "Start-up: " in line]
    return lines[-1][lines[-1].index("Start-up: "):] if lines else ""


# --------------------------------------------------------------------------------------------
# Faults.
# --------------------------------------------------------------------------------------------

def write_corrupt_version(base_path, version: int, like: pathlib.Path) -> pathlib.Path:
    """A version whose `saved_model.pb` does not parse (its variables are fine), renamed into place."""
    base_path = pathlib.Path(base_path)
    staging = base_path / f".tmp-corrupt-{version}"
    shutil.copytree(like, staging)
    (staging / "saved_model.pb").write_bytes(b"\x08\x01\x12\xff this is not a SavedModel " * 64)
    os.rename(staging, base_path / str(version))
    return base_path / str(version)


def write_half_version(base_path, version: int, like: pathlib.Path) -> pathlib.Path:
    """A numbered directory caught half-written: `variables/` copied, `saved_model.pb` not yet."""
    target = pathlib.Path(base_path) / str(version)
    target.mkdir()
    shutil.copytree(like / "variables", target / "variables")
    return target


# --------------------------------------------------------------------------------------------
# The three exports.
# --------------------------------------------------------------------------------------------

def build_exports(data_dir, root, bnn_steps: int = 200, mnist_steps: int = 100, seed: int = 0) -> dict:
    """Fits and exports the three models; returns name -> {"base": base path, "rows": held-out inputs, ...}."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    from models import bayesian_dense  # pylint: disable=import-outside-toplevel
    from models import linear_regression  # pylint: disable=import-outside-toplevel
    from serving import export  # pylint: disable=import-outside-toplevel
    from training import config as config_lib  # pylint: disable=import-outside-toplevel
    from training import data  # pylint: disable=import-outside-toplevel
    from training import train_lib  # pylint: disable=import-outside-toplevel

    root = pathlib.Path(root)
    tf.random.set_seed(seed)
    concrete = data.load("uci/concrete", data_dir, split=0)
    blr = linear_regression.build_model(linear_regression.Config(inference="exact"), concrete)
    blr.fit_closed_form(concrete.x_train, concrete.y_train)
    export.export(blr, concrete, root / "concrete_blr", seed=seed)

    def fit(model, dataset, name, steps, batch_size, learning_rate):
        workdir = root / f"{name}_work"
        config = config_lib.TrainConfig(dataset=dataset.name, data_dir=str(data_dir), workdir=str(workdir),
                                        train_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                                        seed=seed).validate()
        train_lib.fit(model, dataset, config, tf.distribute.get_strategy(), workdir)
        export.export(model, dataset, root / name, seed=seed)

    bnn = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(50,)), concrete)
    fit(bnn, concrete, "concrete_bnn", bnn_steps, 32, 1e-2)
    mnist = data.load("mnist", data_dir)
    classifier = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=(32,)), mnist)
    fit(classifier, mnist, "mnist_bnn", mnist_steps, 64, 1e-3)
    concrete_rows = concrete.x_scaler.invert(concrete.x_test)
    return {
        "concrete_blr": {"base": root / "concrete_blr", "rows": concrete_rows, "model": blr, "dataset": concrete},
        "concrete_bnn": {"base": root / "concrete_bnn", "rows": concrete_rows},
        "mnist_bnn": {"base": root / "mnist_bnn", "rows": mnist.x_test[:256]},
    }


def make_requests(exports: dict, rows: int, per_model: int = 16) -> Dict[str, list]:
    """Per model, `per_model` PredictRequests of `rows` consecutive held-out rows each."""
    out = {}
    for name, info in exports.items():
        x = info["rows"]
        out[name] = [(predict_request(name, x[(i * rows) % (len(x) - rows):][:rows]), rows)
                     for i in range(per_model)]
    return out


# --------------------------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------------------------

def _load_row(label: str, rounds: List[LoadResult], peak_kib: int) -> str:
    """One setting's rounds: median requests (and their range), all errors, latency percentiles of all calls."""
    counts = sorted(r.requests for r in rounds)
    pooled = LoadResult(latencies=[t for r in rounds for t in r.latencies])
    median = float(np.median(counts))
    return (f"{label:<13}{median:>9.0f}{f'{counts[0]}-{counts[-1]}':>15}{sum(r.num_errors for r in rounds):>8}"
            f"{median / rounds[0].seconds:>10.1f}{pooled.percentile_ms(50):>10.1f}{pooled.percentile_ms(99):>10.1f}"
            f"{peak_kib / 1024:>14.0f}")


def _status_line(status: Dict[int, tuple]) -> str:
    parts = []
    for version in sorted(status):
        state, code, message = status[version]
        text = f"v{version} {state}"
        if code:
            text += f" (code {code}: {message[:70]}{'...' if len(message) > 70 else ''})"
        parts.append(text)
    return "; ".join(parts)


def benchmark_load(exports, root, opts) -> List[str]:
    base_paths = {name: info["base"] for name, info in exports.items()}
    config = write_model_config(root / "models.config", base_paths)
    requests = make_requests(exports, opts.rows)
    lines = [f"Load: {opts.clients} gRPC clients x {opts.seconds:.0f} s, Predict serving_default, {opts.rows} "
             f"row(s) per request, models {', '.join(exports)} in turn; {opts.rounds} alternated round(s) per "
             f"setting, a fresh server each",
             f"{'batching':<13}{'requests':>9}{'rounds range':>15}{'errors':>8}{'req/s':>10}{'p50 ms':>10}"
             f"{'p99 ms':>10}{'peak RSS MB':>14}"]
    settings = (("off", []), ("on", ["--enable_batching",
                                     f"--batching_parameters_file={opts.batching_parameters_file}"]))
    rounds = {label: [] for label, _ in settings}
    peaks = {label: 0 for label, _ in settings}
    for number in range(opts.rounds):
        for label, extra in settings:
            server = ServerProcess([f"--model_config_file={config}", "--file_system_poll_wait_seconds=0",
                                    f"--max_concurrent_requests={max(64, 2 * opts.clients)}", *extra],
                                   root / f"load_{label}_{number}.log", timeout=180)
            try:
                run_load(server.address, requests, opts.clients, min(2.0, opts.seconds))  # warm the caches
                rounds[label].append(run_load(server.address, requests, opts.clients, opts.seconds))
                peaks[label] = max(peaks[label], rss_kib(server.pid, "VmHWM"))
            finally:
                server.stop()
    for label, _ in settings:
        lines.append(_load_row(label, rounds[label], peaks[label]))
        first_errors = [e for r in rounds[label] for e in r.first_errors]
        if first_errors:
            lines.append("    first errors: " + " | ".join(first_errors[:5]))
    return lines


def benchmark_faults(exports, root, opts) -> List[str]:
    from serving import export  # pylint: disable=import-outside-toplevel

    base_paths = {name: info["base"] for name, info in exports.items()}
    config = write_model_config(root / "faults.config", base_paths)
    requests = make_requests(exports, opts.rows)
    blr_base = base_paths["concrete_blr"]
    lines = [f"Faults, under the same load ({opts.clients} clients, batching off):"]
    server = ServerProcess([f"--model_config_file={config}", "--file_system_poll_wait_seconds=1",
                            "--max_num_load_retries=0", f"--max_concurrent_requests={max(64, 2 * opts.clients)}"],
                           root / "faults.log", timeout=180)
    try:
        # a. A new version while under load.
        with background_load(server.address, requests, opts.clients, 10 * opts.fault_seconds) as box:
            time.sleep(opts.fault_seconds / 3)
            blr = exports["concrete_blr"]
            t0 = time.monotonic()
            export.export(blr["model"], blr["dataset"], blr_base, seed=opts.seed + 1)
            swapped = wait_for(lambda: model_status(server.address, "concrete_blr").get(1, ("",))[0] == "END"
                               and model_status(server.address, "concrete_blr")[2][0] == "AVAILABLE",
                               timeout=120)
            swap_seconds = time.monotonic() - t0
            time.sleep(opts.fault_seconds / 3)
        result = box["result"]
        answered = {v.split(":")[1]: n for v, n in result.versions.items() if v.startswith("concrete_blr:")}
        lines.append(f"  new version exported under load: {result.requests} requests, {result.num_errors} failed; "
                     f"concrete_blr answered by v1: {answered.get('1', 0)}, v2: {answered.get('2', 0)} "
                     f"(export to v1 unloaded: {swap_seconds:.1f} s{'' if swapped else ', NOT SWAPPED'})")
        # b. A corrupt version, then a half-written one.
        with background_load(server.address, requests, opts.clients, 10 * opts.fault_seconds) as box:
            time.sleep(opts.fault_seconds / 3)
            write_corrupt_version(blr_base, 3, blr_base / "2")
            wait_for(lambda: model_status(server.address, "concrete_blr").get(3, ("",))[0] == "END", timeout=120)
            write_half_version(blr_base, 4, blr_base / "2")
            wait_for(lambda: model_status(server.address, "concrete_blr").get(4, ("",))[0] == "END", timeout=120)
            time.sleep(opts.fault_seconds / 3)
        result = box["result"]
        answered = sorted(v for v in result.versions if v.startswith("concrete_blr:"))
        lines.append(f"  corrupt v3, then half-written v4: {result.requests} requests, {result.num_errors} failed; "
                     f"concrete_blr answered by {', '.join(a.split(':')[1] for a in answered)}")
        lines.append(f"    status: {_status_line(model_status(server.address, 'concrete_blr'))}")
        # The operator removes the broken versions: a server (stock TF Serving too) started on a base path whose
        # latest version does not load refuses to start ("Some models did not become available").
        for version in (3, 4):
            shutil.rmtree(blr_base / str(version))
        # c. SIGKILL and restart on the same ports, against a bare load started while the server is down; the
        # first config's models loaded side by side (the default) and one at a time, in turn.
        probe = requests["concrete_blr"][0][0]
        version_dirs = [max((p for p in pathlib.Path(base).iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
                        for base in base_paths.values()]
        settings = (("side by side (default: four threads per CPU)", []),
                    ("one at a time (--num_initial_load_threads=1)", ["--num_initial_load_threads=1"]))
        flags_given = list(server.args)
        restarts = {label: [] for label, _ in settings}
        startups = {label: "" for label, _ in settings}
        bares, down, back = [], True, True
        with background_load(server.address, requests, opts.clients, 600 * opts.restart_rounds) as box:
            for _ in range(opts.restart_rounds):
                for number, (label, extra) in enumerate(settings):
                    time.sleep(opts.fault_seconds / 3)
                    server.kill()
                    down = down and not answers(server.address, probe, timeout=1.0)
                    if number == 0:
                        bares.append(bare_load_seconds(version_dirs))
                    server.args = flags_given + extra
                    t0 = time.monotonic()
                    server.start(wait=False)
                    back = back and bool(wait_for(lambda: answers(server.address, probe), timeout=300, interval=0.05))
                    restarts[label].append(time.monotonic() - t0)
                    startups[label] = startup_line(server.log())
            time.sleep(opts.fault_seconds / 3)
        server.args = flags_given
        result = box["result"]
        bare = float(np.median(bares))
        lines.append(f"  SIGKILL mid-load, restarted on the same ports, {opts.restart_rounds} time(s) per setting: "
                     f"{'refused calls while down' if down else 'STILL ANSWERING after a kill'}; "
                     f"{'answering again every time' if back else 'NOT ANSWERING AGAIN after a restart'}; clients saw "
                     f"{dict(result.errors) or 'no errors'} around the kills")
        lines.append(f"    bare load of the same exports (import TensorFlow, tf.saved_model.load, one serving_default "
                     f"call each), before each first restart: {bare:.1f} s (median; {', '.join(f'{t:.1f}' for t in bares)})")
        for label, _ in settings:
            restart = float(np.median(restarts[label]))
            paired = [r / b for r, b in zip(restarts[label], bares)]  # each restart against its round's bare load
            lines.append(f"    first answer after the restart, models loaded {label}: {restart:.1f} s (median; "
                         f"{', '.join(f'{t:.1f}' for t in restarts[label])}); restart / bare load: {restart / bare:.2f} "
                         f"(medians), {float(np.median(paired)):.2f} (median of the rounds' ratios "
                         f"{', '.join(f'{r:.2f}' for r in paired)})")
            lines.append(f"      its last start's log: {startups[label] or 'no Start-up line'}")
    finally:
        server.stop()
    return lines


def _define_flags():
    from absl import flags  # pylint: disable=import-outside-toplevel

    flags.DEFINE_string("data_dir", str(REPO_ROOT.parent / "shared" / "datasets"), "Offline datasets.")
    flags.DEFINE_string("workdir", None, "Keep exports and server logs here (default: a temporary directory).")
    flags.DEFINE_integer("clients", 8, "Concurrent gRPC clients.")
    flags.DEFINE_float("seconds", 20.0, "Duration of each load run.")
    flags.DEFINE_integer("rounds", 3, "Alternated load runs per setting (batching off, on, off, ...).", lower_bound=1)
    flags.DEFINE_float("fault_seconds", 9.0, "Load before and after each fault (a third each side).")
    flags.DEFINE_integer("restart_rounds", 3, "Kills and restarts per setting (a bare load before each round).",
                         lower_bound=1)
    flags.DEFINE_integer("rows", 1, "Rows per request.")
    flags.DEFINE_integer("bnn_steps", 200, "Adam steps of the concrete network.")
    flags.DEFINE_integer("mnist_steps", 100, "Adam steps of the MNIST classifier.")
    flags.DEFINE_integer("seed", 0, "Seed of the fits and exports.")
    flags.DEFINE_string("batching_parameters_file", str(DEFAULT_BATCHING_FILE), "BatchingParameters for 'on'.")
    return flags.FLAGS


def main(argv, opts) -> int:
    del argv
    from absl import logging  # pylint: disable=import-outside-toplevel

    logging.set_verbosity(logging.WARNING)
    with contextlib.ExitStack() as stack:
        if opts.workdir:
            root = pathlib.Path(opts.workdir)
            root.mkdir(parents=True, exist_ok=True)
            if any(root.iterdir()):
                sys.stderr.write(f"error: --workdir {root} is not empty\n")
                return 2
        else:
            root = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vizoo_reliability_")))
        t0 = time.monotonic()
        exports = build_exports(opts.data_dir, root, opts.bnn_steps, opts.mnist_steps, opts.seed)
        print(f"Built {len(exports)} exports in {time.monotonic() - t0:.0f} s "
              f"(cores: {os.cpu_count()}; the load generator runs on the same machine)\n", flush=True)
        for line in benchmark_load(exports, root, opts):
            print(line, flush=True)
        print(flush=True)
        for line in benchmark_faults(exports, root, opts):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    from absl import app

    _FLAGS = _define_flags()
    app.run(lambda argv: sys.exit(main(argv, _FLAGS)))
