"""Warmup records (`serving.warmup`): written as TF Serving's PredictionLogs, replayed through the API they name."""

import numpy as np
import pytest

from serving import errors
from serving import warmup


class _Plane:
    """Records the requests a replay runs, by API."""

    def __init__(self):
        self.runs = []

    def predict_on(self, loaded, request):
        self.runs.append(("predict", loaded, request))

    def classify_on(self, loaded, request):
        self.runs.append(("classify", loaded, request))


class _Loaded:
    def __init__(self, path):
        self.path = str(path)


def _predict_request(value: float):
    from serving import codec
    from tensorflow_serving.apis import predict_pb2
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "m"
    request.inputs["x"].CopyFrom(codec.ndarray_to_tensor_proto(np.full([1, 2], value, np.float32)))
    return request


def test_written_records_replay_each_request_the_given_number_of_times(tmp_path):
    requests = [_predict_request(1.0), _predict_request(2.0)]
    warmup.write_warmup(tmp_path, requests)
    assert (tmp_path / warmup.WARMUP_FILE).is_file()
    plane, loaded = _Plane(), _Loaded(tmp_path)
    warmup.warm_up(plane, loaded, iterations=3)
    assert [(api, model) for api, model, _ in plane.runs] == [("predict", loaded)] * 6
    assert [request for _, _, request in plane.runs] == [requests[0]] * 3 + [requests[1]] * 3


def test_a_version_without_a_warmup_file_runs_nothing(tmp_path):
    plane = _Plane()
    warmup.warm_up(plane, _Loaded(tmp_path))
    assert plane.runs == []


def test_records_run_through_the_api_they_were_logged_from(tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import classification_pb2, prediction_log_pb2
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "m"
    log = prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
    (tmp_path / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(tmp_path / warmup.WARMUP_FILE)) as writer:
        writer.write(log.SerializeToString())
    plane = _Plane()
    warmup.warm_up(plane, _Loaded(tmp_path))
    assert [(api, request) for api, _, request in plane.runs] == [("classify", request)]


def test_more_records_than_tf_serving_allows_fail_the_load(tmp_path):
    warmup.write_warmup(tmp_path, [_predict_request(0.0)] * (warmup.MAX_WARMUP_RECORDS + 1))
    path = str(tmp_path / warmup.WARMUP_FILE)
    with pytest.raises(errors.InvalidArgument) as info:
        warmup.replay(_Plane(), _Loaded(tmp_path), path)
    assert info.value.message == f"Number of warmup records exceeds the maximum (1000) at {path}"


def test_a_file_that_is_not_tfrecord_fails_the_load_with_data_loss(tmp_path):
    (tmp_path / "assets.extra").mkdir()
    (tmp_path / warmup.WARMUP_FILE).write_bytes(b"not a TFRecord file")
    with pytest.raises(errors.DataLoss, match=r"Please verify your warmup data is in TFRecord format\.$"):
        warmup.warm_up(_Plane(), _Loaded(tmp_path))


def test_warmup_skips_a_record_without_a_request_and_refuses_a_session_run_log():
    from tensorflow_serving.apis import prediction_log_pb2
    replay = warmup.replay_record  # the two cases need no model
    replay(None, None, prediction_log_pb2.PredictionLog())  # skipped, as TF Serving skips it
    log = prediction_log_pb2.PredictionLog()
    log.session_run_log.SetInParent()
    with pytest.raises(errors.Unimplemented, match=r"^Unsupported log_type for warmup: 5$"):
        replay(None, None, log)
