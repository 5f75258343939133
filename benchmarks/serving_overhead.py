r"""What serving costs: gRPC Predict against an in-process call, and what batching buys.

    python benchmarks/serving_overhead.py [--model_base_path=DIR --model_name=NAME]

Measured in one run, on this machine:

1. latency: the median wall time of one Predict of one row over gRPC to `serving.server`
   (sequential calls), against the median time of calling the same signature in process --
   both as `tf.saved_model.load(...).signatures[...]` (what a notebook does) and through a
   session on the MetaGraphDef (what the server itself runs);
2. throughput: requests per second with `--concurrency` client threads calling the server for
   `--seconds`, once without and once with `--enable_batching`.

It prints the measurements and their ratios. Without `--model_base_path` it exports a small
model with vizoo's predictive signature (`serving_default`: x [batch, features] -> mean, stddev,
... from Monte Carlo samples) into a temporary directory. Every loop is bounded in count and
time, and the servers it starts listen on localhost only and are stopped at the end.
"""

import contextlib
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
flags.DEFINE_float("seconds", 5.0, "Duration of each throughput run.")
flags.DEFINE_integer("max_batch_size", 32, "Batching: max_batch_size.")
flags.DEFINE_integer("batch_timeout_micros", 2000, "Batching: batch_timeout_micros.")
flags.DEFINE_integer("num_batch_threads", 2, "Batching: num_batch_threads.")
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
def serve(base_path, name, extra_args=()):
    """A `python -m serving.server` on localhost; yields its gRPC address."""
    import grpc

    from serving.process import free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--port={port}", f"--model_name={name}",
         f"--model_base_path={base_path}", "--file_system_poll_wait_seconds=0",
         "--max_concurrent_requests=256", "--bind_host=127.0.0.1", *extra_args],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
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


def grpc_latency(address, request, calls) -> float:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    with contextlib.closing(grpc.insecure_channel(address)) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        return _median_seconds(lambda: stub.Predict(request, timeout=30), calls)


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
    with tempfile.TemporaryDirectory() as tmp:
        base = pathlib.Path(FLAGS.model_base_path) if FLAGS.model_base_path else build_model(
            pathlib.Path(tmp) / "model", FLAGS.features, FLAGS.hidden, FLAGS.mc_samples)
        x = np.random.default_rng(1).normal(size=[1, FLAGS.features]).astype(np.float32)
        request = _request(FLAGS.model_name, FLAGS.signature_name, x)
        eager, session = in_process_latencies(base, FLAGS.signature_name, x, FLAGS.latency_calls)
        with serve(base, FLAGS.model_name) as address:
            remote = grpc_latency(address, request, FLAGS.latency_calls)
            plain_rps, plain_failed = throughput(address, request, FLAGS.concurrency, FLAGS.seconds)
        params = pathlib.Path(tmp) / "batching.config"
        params.write_text(f"max_batch_size {{ value: {FLAGS.max_batch_size} }}\n"
                          f"batch_timeout_micros {{ value: {FLAGS.batch_timeout_micros} }}\n"
                          f"num_batch_threads {{ value: {FLAGS.num_batch_threads} }}\n"
                          "max_enqueued_batches { value: 1000 }\n")
        with serve(base, FLAGS.model_name,
                   ["--enable_batching", f"--batching_parameters_file={params}"]) as address:
            batched_rps, batched_failed = throughput(address, request, FLAGS.concurrency,
                                                     FLAGS.seconds)
    model = (str(base) if FLAGS.model_base_path else
             f"generated ({FLAGS.hidden} hidden, {FLAGS.mc_samples} MC samples)")
    lines = [
        f"machine: {os.cpu_count()} cores; model: {model}; {FLAGS.signature_name}, 1 row of "
        f"{x.shape[1]} features per request",
        f"in-process signature call (eager)  median {eager * 1e3:8.3f} ms",
        f"in-process session run             median {session * 1e3:8.3f} ms",
        f"gRPC Predict to serving.server     median {remote * 1e3:8.3f} ms",
        f"ratio gRPC / in-process eager      {remote / eager:8.2f}x",
        f"ratio gRPC / in-process session    {remote / session:8.2f}x",
        f"throughput, {FLAGS.concurrency} clients, no batching  {plain_rps:9.1f} req/s "
        f"({plain_failed} failed)",
        f"throughput, {FLAGS.concurrency} clients, batching     {batched_rps:9.1f} req/s "
        f"({batched_failed} failed; max_batch_size={FLAGS.max_batch_size}, "
        f"batch_timeout_micros={FLAGS.batch_timeout_micros})",
        f"ratio batching / no batching       {batched_rps / plain_rps:8.2f}x",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    app.run(main)
