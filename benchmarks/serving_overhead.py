r"""What serving costs: gRPC Predict against an in-process call, and what batching buys.

    python benchmarks/serving_overhead.py [--model_base_path=DIR --model_name=NAME]

Measured in one run, on this machine:

1. latency: the median wall time of one Predict of one row over gRPC to `serving.server`
   (sequential calls), against the median time of calling the same signature in process --
   both as `tf.saved_model.load(...).signatures[...]` (what a notebook does) and through a
   session on the MetaGraphDef (what the server itself runs);
2. throughput: requests per second with `--concurrency` client threads calling the server for
   `--seconds`, without and with `--enable_batching` (the median of `--rounds` runs);
3. the floors, from a gRPC server set up as `serving.server` sets up its own (grpcio's Python server on a
   thread pool of the same size, the same options, its own process) whose Predict does only what no Python
   server can skip (`run_floor_server`): *echo* answers a fixed response of the real one's size at once
   (grpcio's own cost per call, client and server); *session* runs the signature's session on the request's
   rows, with the call's deadline as its timeout as `serving.server` passes it, and answers the same fixed
   response; *hand-off* answers it once another thread has let the request go, that thread letting go every
   request waiting when it wakes (batching with free batch runs). The session floor's latency bounds the
   gRPC / session ratio from below; the hand-off's throughput bounds what batching can gain (batching shares
   session runs between requests, never a request's gRPC cost or its hand-off to the thread running its batch).

The servers run side by side, and the calls and runs of each are made in turn, so that other work on a
shared machine weighs on all of them alike. It prints the measurements and their ratios. Without
`--model_base_path` it exports a small model with vizoo's predictive signature (`serving_default`:
x [batch, features] -> mean, stddev, ... from Monte Carlo samples) into a temporary directory. Every
loop is bounded in count and time, and the servers it starts listen on localhost only and are stopped
at the end.
"""

import contextlib
import functools
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import serving  # noqa: E402

serving.apply_runtime_defaults()  # the in-process timings under the server's CPU allocator too

flags.DEFINE_string("model_base_path", None, "A SavedModel base path (default: a tiny model).")
flags.DEFINE_string("model_name", "bench", "Model name to serve it under.")
flags.DEFINE_string("signature_name", "serving_default", "Signature to call (input `x`).")
flags.DEFINE_integer("features", 8, "Features of the generated model / of the rows sent.")
flags.DEFINE_integer("hidden", 256, "Hidden units of the generated model.")
flags.DEFINE_integer("mc_samples", 64, "Monte Carlo weight samples per call of the generated model.")
flags.DEFINE_integer("latency_calls", 300, "Sequential calls for each latency median.")
flags.DEFINE_integer("concurrency", 16, "Client threads in the throughput runs.")
flags.DEFINE_float("seconds", 3.0, "Duration of each throughput run.")
flags.DEFINE_integer("rounds", 3, "Throughput runs of each server, in turn; the median is reported.")
flags.DEFINE_integer("max_batch_size", 32, "Batching: max_batch_size.")
flags.DEFINE_integer("batch_timeout_micros", 2000, "Batching: batch_timeout_micros.")
flags.DEFINE_integer("num_batch_threads", 2, "Batching: num_batch_threads.")
flags.DEFINE_integer("max_concurrent_requests", 256, "The servers' --max_concurrent_requests.")
flags.DEFINE_integer("floor_port", 0, "Internal: serve the floor servicer (run_floor_server) on this port.")
FLAGS = flags.FLAGS


def build_model(path: pathlib.Path, features: int, hidden: int, samples: int) -> pathlib.Path:
    """A two-layer network averaging `samples` draws of its output weights, as version 1."""
    import tensorflow as tf

    class Model(tf.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(0)
            self.w1 = tf.Variable(rng.normal(size=[features, hidden]).astype(np.float32))
            self.w2 = tf.Variable(rng.normal(size=[hidden, 1]).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([None, features], tf.float32, name="x")])
        def serving_default(self, x):
            eps = tf.random.stateless_normal([samples, hidden, 1], seed=[0, 0])
            activations = tf.nn.relu(x @ self.w1)
            draws = tf.einsum("bh,sho->sbo", activations, self.w2[None] + 0.1 * eps)
            mean, stddev = tf.reduce_mean(draws, 0), tf.math.reduce_std(draws, 0)
            return {"mean": mean, "stddev": stddev, "lower": mean - 1.96 * stddev,
                    "upper": mean + 1.96 * stddev}

    model = Model()
    tf.saved_model.save(model, str(path / "1"),
                        signatures={"serving_default": model.serving_default})
    return path


@contextlib.contextmanager
def _server_process(command):
    """Runs `command` (a server on localhost) until the block ends; yields its gRPC address."""
    import grpc

    from serving.process import free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(command(port), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError("server did not start:\n" + log.read().decode()[-3000:])
            with contextlib.closing(grpc.insecure_channel(address)) as channel:
                try:
                    grpc.channel_ready_future(channel).result(timeout=0.5)
                    break
                except grpc.FutureTimeoutError:
                    pass
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def serve(base_path, name, extra_args=()):
    """A `python -m serving.server` on localhost; yields its gRPC address."""
    return _server_process(lambda port: [
        sys.executable, "-m", "serving.server", f"--port={port}", f"--model_name={name}",
        f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=0",
        f"--max_concurrent_requests={FLAGS.max_concurrent_requests}", "--bind_host=127.0.0.1", *extra_args])


def serve_floor(base_path, name, signature):
    """This script's `run_floor_server` in a process of its own; yields its gRPC address."""
    return _server_process(lambda port: [
        sys.executable, __file__, f"--floor_port={port}", f"--model_base_path={base_path}", f"--model_name={name}",
        f"--signature_name={signature}", f"--max_concurrent_requests={FLAGS.max_concurrent_requests}"])


ECHO = "echo"  # the model name the floor server answers without running anything
HAND_OFF = "hand-off"  # the model name the floor server answers after a hand-off to another thread (_HandOff)


class _HandOff:
    """What a batched request costs beyond the echo when its batch's run costs nothing: the request's thread waits
    until another thread, woken by the first request waiting, releases every request waiting by then."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting_changed = threading.Condition(self._lock)
        self._waiting = []
        threading.Thread(target=self._answer, name="hand_off", daemon=True).start()

    def wait(self):
        done = threading.Lock()
        done.acquire()
        with self._lock:
            self._waiting.append(done)
            if len(self._waiting) == 1:
                self._waiting_changed.notify()
        done.acquire()

    def _answer(self):
        while True:
            with self._lock:
                while not self._waiting:
                    self._waiting_changed.wait()
                batch, self._waiting = self._waiting, []
            for done in batch:
                done.release()


def run_floor_server(base_path, model_name: str, signature: str, port: int, max_concurrent_requests: int):
    """Serves the floors until terminated: a Predict that does only what no Python gRPC server can skip.

    The gRPC server is built as `serving.server` builds its own (`Server._start_grpc`): grpcio's server on a
    `ThreadPoolExecutor` of max(--grpc_max_threads default, max_concurrent_requests + 4) threads, the same
    message-size and port options. A request for the model named `ECHO` is answered at once, one for `HAND_OFF`
    once another thread has let it go (`_HandOff`: batching's hand-off, its batch's run free); any other runs
    `signature` on the request's input `x` (float32 `tensor_content`) through the session `serving.server` runs
    (`LoadedModel.run`, the call's remaining deadline as its timeout). Both answer one fixed response, the model
    spec and the real outputs of one row encoded as the server encodes them, so the bytes on the wire match the
    server's.
    """
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    from serving import batching
    from serving import codec
    from serving import model_manager

    version, path = max(model_manager.list_versions(str(base_path)).items())
    model = model_manager.LoadedModel("floor", version, path, model_manager.ManagerOptions())
    signature_def = model.signature_defs[signature]
    feed = signature_def.inputs["x"].name
    aliases = sorted(signature_def.outputs)
    fetches = [signature_def.outputs[a].name for a in aliases]
    features = signature_def.inputs["x"].tensor_shape.dim[-1].size
    response = predict_pb2.PredictResponse()
    response.model_spec.name, response.model_spec.signature_name = model_name, signature
    response.model_spec.version.value = version
    for alias, value in zip(aliases, model.run(signature, {feed: np.zeros([1, features], np.float32)}, fetches)):
        codec.fill_tensor_proto(response.outputs[alias], value)

    hand_off = _HandOff()

    class Floor(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802 (gRPC method names)
            if request.model_spec.name == HAND_OFF:
                hand_off.wait()
            elif request.model_spec.name != ECHO:
                x = np.frombuffer(request.inputs["x"].tensor_content, np.float32).reshape(-1, features)
                remaining = context.time_remaining()  # as serving.servicer reads the deadline
                model.run(signature, {feed: x}, fetches, x.shape[0],
                          remaining if remaining is not None and remaining < 1e8 else None)
            return response

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(4 * batching.SCHEDULABLE_CPUS, max_concurrent_requests + 4),
                                   thread_name_prefix="grpc"),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024),
                 ("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Floor(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def _median_seconds(fn, calls: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _request(name, signature, x):
    from serving import codec
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(x, use_tensor_content=True))
    return request


def grpc_latencies(targets, calls: int, warmup: int = 20) -> list:
    """Median seconds of one Predict for each (address, request) of `targets`, called in turn (one call to each,
    `calls` rounds), so that other work on the machine weighs on all of them alike."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    channels = [grpc.insecure_channel(address) for address, _ in targets]
    try:
        predicts = [functools.partial(prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict,
                                      request, timeout=30)
                    for channel, (_, request) in zip(channels, targets)]
        for _ in range(warmup):
            for predict in predicts:
                predict()
        times = [[] for _ in targets]
        for call in range(calls):
            # The order turns every round: a server's threads still spinning after its call would otherwise
            # slow the same next server every time.
            for i in range(len(targets)):
                i = (i + call) % len(targets)
                start = time.perf_counter()
                predicts[i]()
                times[i].append(time.perf_counter() - start)
        return [statistics.median(samples) for samples in times]
    finally:
        for channel in channels:
            channel.close()


def throughput(address, request, concurrency, seconds) -> tuple:
    """(requests per second, failed requests) with `concurrency` threads for `seconds`."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    counts, failures = [0] * concurrency, [0] * concurrency
    stop = time.monotonic() + seconds

    def client(i):
        with contextlib.closing(grpc.insecure_channel(address)) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            stub.Predict(request, timeout=30)  # connect before the clock matters
            while time.monotonic() < stop:
                try:
                    stub.Predict(request, timeout=30)
                    counts[i] += 1
                except grpc.RpcError:
                    failures[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 60)
    return sum(counts) / (time.monotonic() - start), sum(failures)


def throughputs(targets, concurrency: int, seconds: float, rounds: int) -> list:
    """(median requests per second over `rounds`, failed requests) for each (address, request) of `targets`,
    measured in turn round after round, so that other work on the machine weighs on all of them alike."""
    runs = [[] for _ in targets]
    for round_ in range(rounds):
        for i in range(len(targets)):
            i = (i + round_) % len(targets)
            runs[i].append(throughput(*targets[i], concurrency, seconds))
    return [(statistics.median(rps for rps, _ in results), sum(failed for _, failed in results))
            for results in runs]


def in_process_latencies(base_path, signature, x, calls) -> tuple:
    """(eager signature call, session run) median seconds for the same signature in process."""
    import tensorflow as tf
    from serving import model_manager

    version = max(model_manager.list_versions(str(base_path)).items())
    loaded = tf.saved_model.load(version[1])
    fn = loaded.signatures[signature]
    tensor = tf.constant(x)
    eager = _median_seconds(lambda: fn(x=tensor), calls)
    session_model = model_manager.LoadedModel("bench", version[0], version[1],
                                              model_manager.ManagerOptions())
    signature_def = session_model.signature_defs[signature]
    feeds = {signature_def.inputs["x"].name: x}
    fetches = [t.name for t in signature_def.outputs.values()]
    session = _median_seconds(lambda: session_model.run(signature, feeds, fetches), calls)
    session_model.close()
    return eager, session


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    if FLAGS.floor_port:
        run_floor_server(FLAGS.model_base_path, FLAGS.model_name, FLAGS.signature_name, FLAGS.floor_port,
                         FLAGS.max_concurrent_requests)
        return
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(FLAGS.model_base_path) if FLAGS.model_base_path else build_model(
            pathlib.Path(tmp) / "model", FLAGS.features, FLAGS.hidden, FLAGS.mc_samples)
        x = np.random.default_rng(1).normal(size=[1, FLAGS.features]).astype(np.float32)
        request = _request(FLAGS.model_name, FLAGS.signature_name, x)
        echo_request = _request(ECHO, FLAGS.signature_name, x)
        hand_off_request = _request(HAND_OFF, FLAGS.signature_name, x)
        eager, session = in_process_latencies(base, FLAGS.signature_name, x, FLAGS.latency_calls)
        params = pathlib.Path(tmp) / "batching.config"
        params.write_text(f"max_batch_size {{ value: {FLAGS.max_batch_size} }}\n"
                          f"batch_timeout_micros {{ value: {FLAGS.batch_timeout_micros} }}\n"
                          f"num_batch_threads {{ value: {FLAGS.num_batch_threads} }}\n"
                          "max_enqueued_batches { value: 1000 }\n")
        with contextlib.ExitStack() as servers:  # all up at once; each idles while the others are measured
            floor_address = servers.enter_context(serve_floor(base, FLAGS.model_name, FLAGS.signature_name))
            plain_address = servers.enter_context(serve(base, FLAGS.model_name))
            batched_address = servers.enter_context(serve(
                base, FLAGS.model_name, ["--enable_batching", f"--batching_parameters_file={params}"]))
            echo, floor, remote = grpc_latencies(
                [(floor_address, echo_request), (floor_address, request), (plain_address, request)],
                FLAGS.latency_calls)
            ((echo_rps, echo_failed), (hand_off_rps, hand_off_failed), (floor_rps, floor_failed),
             (plain_rps, plain_failed), (batched_rps, batched_failed)) = throughputs(
                [(floor_address, echo_request), (floor_address, hand_off_request), (floor_address, request),
                 (plain_address, request), (batched_address, request)],
                FLAGS.concurrency, FLAGS.seconds, FLAGS.rounds)
    model = (str(base) if FLAGS.model_base_path else
             f"generated ({FLAGS.hidden} hidden, {FLAGS.mc_samples} MC samples)")
    clients = f"{FLAGS.concurrency} clients"
    lines = [
        f"machine: {os.cpu_count()} cores; model: {model}; {FLAGS.signature_name}, 1 row of "
        f"{x.shape[1]} features per request",
        f"in-process signature call (eager)  median {eager * 1e3:8.3f} ms",
        f"in-process session run             median {session * 1e3:8.3f} ms",
        f"gRPC Predict, floor: echo          median {echo * 1e3:8.3f} ms",
        f"gRPC Predict, floor: session run   median {floor * 1e3:8.3f} ms",
        f"gRPC Predict to serving.server     median {remote * 1e3:8.3f} ms",
        f"ratio gRPC / in-process eager      {remote / eager:8.2f}x",
        f"ratio gRPC / in-process session    {remote / session:8.2f}x",
        f"ratio floor / in-process session   {floor / session:8.2f}x   (the least gRPC / session can be)",
        f"ratio gRPC / floor                 {remote / floor:8.2f}x   (what serving.server adds)",
        f"throughput, {clients}, floor: echo     {echo_rps:9.1f} req/s ({echo_failed} failed)",
        f"throughput, {clients}, floor: hand-off {hand_off_rps:9.1f} req/s ({hand_off_failed} failed)",
        f"throughput, {clients}, floor: session  {floor_rps:9.1f} req/s ({floor_failed} failed)",
        f"throughput, {clients}, no batching     {plain_rps:9.1f} req/s ({plain_failed} failed)",
        f"throughput, {clients}, batching        {batched_rps:9.1f} req/s ({batched_failed} failed; "
        f"max_batch_size={FLAGS.max_batch_size}, batch_timeout_micros={FLAGS.batch_timeout_micros})",
        f"ratio batching / no batching       {batched_rps / plain_rps:8.2f}x",
        f"ratio hand-off / no batching       {hand_off_rps / plain_rps:8.2f}x   (the most batching can gain)",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
