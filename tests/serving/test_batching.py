"""Server-side batching merges concurrent requests; a full queue says UNAVAILABLE, as TF Serving's does.

Merging is proven by the server's own counters (graph runs and rows per run), never by timing:
the batch timeout is long, so a batch only runs early when it is full.
"""

import threading

import grpc
import numpy as np
import pytest

from tests.serving.conftest import (FEATURES, MC_MODEL, ServerProcess, rpc_error, tensor,
                                    to_array, wait_until)

RUNS = ':vizoo:serving:signature_runs{model_name="mc",signature_name="serving_default"}'
MC_RUNS = ':vizoo:serving:signature_runs{model_name="mc",signature_name="predict_mc"}'
BATCH_SUM = ':vizoo:serving:batch_size_sum{model_name="mc",signature_name="serving_default"}'
BATCH_COUNT = ':vizoo:serving:batch_size_count{model_name="mc",signature_name="serving_default"}'
QUEUE = ":vizoo:serving:batch_queue_rows"


def _batching_server(tmp_path_factory, mc_base_path, tf_serving_testdata, name, timeout_micros,
                     extra=()):
    directory = tmp_path_factory.mktemp(name)
    params = directory / "batching.config"
    params.write_text("max_batch_size { value: 4 }\n"
                      f"batch_timeout_micros {{ value: {timeout_micros} }}\n"
                      "max_enqueued_batches { value: 1 }\n"
                      "num_batch_threads { value: 1 }\n")
    return ServerProcess([
        f"--model_name={MC_MODEL}", f"--model_base_path={mc_base_path}", "--enable_batching",
        f"--batching_parameters_file={params}", "--enable_model_warmup=false",
        f"--monitoring_config_file={tf_serving_testdata / 'monitoring_config.txt'}",
        "--file_system_poll_wait_seconds=0", *extra], directory / "server.log")


@pytest.fixture(scope="module")
def batching_server(tmp_path_factory, mc_base_path, tf_serving_testdata):
    server = _batching_server(tmp_path_factory, mc_base_path, tf_serving_testdata, "batching",
                              timeout_micros=30_000_000)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def one_slot_server(tmp_path_factory, mc_base_path, tf_serving_testdata):
    server = _batching_server(tmp_path_factory, mc_base_path, tf_serving_testdata, "one_slot",
                              timeout_micros=5_000_000, extra=["--max_concurrent_requests=1"])
    yield server
    server.stop()


def _stub(server):
    from tensorflow_serving.apis import prediction_service_pb2_grpc
    return prediction_service_pb2_grpc.PredictionServiceStub(server.channel)


def _predict(stub, rows, value=1.0, timeout=60):
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MC_MODEL
    request.inputs["x"].CopyFrom(tensor(np.full([rows, FEATURES], value)))
    return stub.Predict(request, timeout=timeout)


def _in_thread(fn, *args):
    result = {}

    def target():
        try:
            result["value"] = fn(*args)
        except grpc.RpcError as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


def test_concurrent_requests_are_merged_into_one_signature_run(batching_server):
    stub = _stub(batching_server)
    before = batching_server.metrics()
    calls = [_in_thread(_predict, stub, 1, float(i)) for i in range(4)]
    for thread, _ in calls:
        thread.join(timeout=120)
    after = batching_server.metrics()
    for i, (_, result) in enumerate(calls):
        assert "error" not in result, result
        # Each caller gets its own row back: mean = 3 features * x * weight 1 + 0.5.
        np.testing.assert_allclose(to_array(result["value"].outputs["mean"]),
                                   [[3 * i + 0.5] * 2], atol=0.3)
    assert after[RUNS] - before.get(RUNS, 0) == 1
    assert after[BATCH_COUNT] - before.get(BATCH_COUNT, 0) == 1
    assert after[BATCH_SUM] - before.get(BATCH_SUM, 0) == 4


def test_full_batching_queue_is_unavailable_as_in_tf_serving(batching_server):
    stub = _stub(batching_server)
    before = batching_server.metrics()
    first, first_result = _in_thread(_predict, stub, 1)
    wait_until(lambda: batching_server.metrics().get(QUEUE) == 1, what="the first task queued")
    # 1 + 4 rows do not fit in one batch of 4, and the queue holds one batch only.
    error = rpc_error(_predict, stub, 4)
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # TF Serving's scheduler: clients retry this code
    assert error.details() == ("The batch scheduling queue to which this task was submitted is full; currently 1 "
                               "batches enqueued and max_enqueued_batches is 1")
    # A request larger than a batch can never fit.
    error = rpc_error(_predict, stub, 5)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "Task size 5 is larger than maximum input batch size 4"
    # Three more rows fill the batch; both requests are answered by one run.
    assert to_array(_predict(stub, 3).outputs["mean"]).shape == (3, 2)
    first.join(timeout=120)
    assert "error" not in first_result
    assert batching_server.metrics()[RUNS] - before.get(RUNS, 0) == 1


def test_requests_without_a_batch_dimension_run_alone(batching_server):
    from tensorflow_serving.apis import predict_pb2
    stub = _stub(batching_server)
    before = batching_server.metrics()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MC_MODEL
    request.model_spec.signature_name = "predict_mc"
    request.inputs["x"].CopyFrom(tensor(np.ones([2, FEATURES])))
    request.inputs["num_samples"].CopyFrom(tensor(10, np.int32))
    request.inputs["seed"].CopyFrom(tensor([1, 2], np.int32))
    response = stub.Predict(request, timeout=60)
    assert to_array(response.outputs["mean"]).shape == (2, 2)
    assert batching_server.metrics()[MC_RUNS] - before.get(MC_RUNS, 0) == 1


def test_too_many_requests_in_flight_is_resource_exhausted(one_slot_server):
    stub = _stub(one_slot_server)
    first, first_result = _in_thread(_predict, stub, 1)
    wait_until(lambda: one_slot_server.metrics().get(QUEUE) == 1, what="the first task queued")
    error = rpc_error(_predict, stub, 1)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max_concurrent_requests" in error.details()
    first.join(timeout=120)
    assert "error" not in first_result  # ran when its batch timed out


def test_client_deadline_is_deadline_exceeded(one_slot_server):
    from serving.client import DeadlineExceededError, PredictiveClient
    with PredictiveClient(one_slot_server.address, MC_MODEL, timeout=0.2) as client:
        with pytest.raises(DeadlineExceededError):
            client.predict(np.ones([1, FEATURES], np.float32))
    # The abandoned request's slot is freed when its batch leaves the queue (at the 5 s batch timeout), which
    # then is not run: its only task's deadline has passed (TF Serving's batching session does the same).
    wait_until(lambda: one_slot_server.metrics().get(":vizoo:serving:inflight_requests") == 0,
               what="the abandoned request's slot to be freed")


def test_an_empty_request_is_answered_empty_even_with_allowed_batch_sizes():
    from serving import batching
    scheduler = batching.BatchScheduler(batching.BatchingOptions(
        max_batch_size=4, allowed_batch_sizes=(2, 4), num_batch_threads=1,
        batch_timeout_micros=1000))
    try:
        outputs = scheduler.run(("key",), lambda feeds, size, timeout: [feeds["x"] * 2],
                                {"x": np.zeros([0, FEATURES], np.float32)}, timeout=60)
    finally:
        scheduler.stop()
    assert outputs[0].shape == (0, FEATURES)


def test_a_task_joining_an_open_batch_wakes_no_batch_thread_and_a_full_batch_runs_at_once():
    # The batch timeout is ten minutes: the batch runs only because it filled, and the batch thread is woken twice,
    # by the batch's first task and by the task that fills it, not by the one in between.
    from serving import batching
    scheduler = batching.BatchScheduler(batching.BatchingOptions(
        max_batch_size=3, num_batch_threads=1, batch_timeout_micros=600_000_000))
    wakes, notify = [], scheduler._work.notify  # pylint: disable=protected-access

    def counting_notify(n=1):
        wakes.append(n)
        notify(n)

    scheduler._work.notify = counting_notify  # pylint: disable=protected-access
    runs, results = [], {}

    def run_fn(feeds, size, timeout):
        runs.append(size)
        return [feeds["x"] * 2]

    def request(i):
        results[i] = scheduler.run(("key",), run_fn, {"x": np.full([1, 2], float(i), np.float32)}, timeout=60)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        woken = len(wakes)  # before stop(), which wakes every batch thread
    finally:
        scheduler.stop()
    assert not any(thread.is_alive() for thread in threads)
    assert runs == [3] and woken == 2
    for i in range(3):
        np.testing.assert_array_equal(results[i][0], np.full([1, 2], 2.0 * i))


def _build_batched_spin_model(path):
    """serving_default(n [batch] int64) -> y [batch, 1000]: max(n) steps of y <- sin(y) + 1 over the batch."""
    import tensorflow as tf

    class Spin(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="n")])
        def serving_default(self, n):
            _, y = tf.while_loop(lambda i, y: i < tf.reduce_max(n), lambda i, y: (i + 1, tf.sin(y) + 1.0),
                                 (tf.constant(0, tf.int64), tf.zeros(tf.stack([tf.size(n), 1000]))))
            return {"y": y}

    module = Spin()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serving_default})


def test_batched_runs_keep_the_deadlines_of_their_requests(start_server, tmp_path):
    # As TF Serving's batching session: a batch runs with its tasks' latest deadline as the session's timeout,
    # and a batch whose every task's deadline passed while it queued is not run at all.
    import requests
    _build_batched_spin_model(tmp_path / "spin" / "1")
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 2000000 }\n"
                      "num_batch_threads { value: 1 }\n")
    server = start_server(["--model_name=spin", f"--model_base_path={tmp_path / 'spin'}", "--enable_batching",
                           f"--batching_parameters_file={params}", "--rest_api_timeout_in_ms=500"])
    url = server.rest + "/v1/models/spin:predict"
    # Two rows fill a batch, which runs at once: 10^9 steps would spin for many minutes on the only batch
    # thread; the run is cancelled at the request's timeout instead.
    endless = requests.post(url, json={"instances": [10 ** 9, 1]}, timeout=120)
    assert (endless.status_code, endless.json()) == (504, {"error": "Timed out waiting for notification"})
    # One row waits 2 s for a second, past its 0.5 s: its batch is dropped, not run.
    late = requests.post(url, json={"instances": [1]}, timeout=120)
    assert (late.status_code, late.json()) == (
        429, {"error": "Run() timeout exceeded while waiting in batching queue"})
    # The batch thread is free: a full batch of quick rows is answered.
    quick = requests.post(url, json={"instances": [5, 5]}, timeout=120)
    assert quick.status_code == 200 and np.asarray(quick.json()["predictions"]).shape == (2, 1000)
