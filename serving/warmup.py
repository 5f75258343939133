"""Model warmup, as TF Serving's `saved_model_warmup.cc`: requests a SavedModel carries, replayed at load.

A version directory may hold `assets.extra/tf_serving_warmup_requests`, a TFRecord file of `PredictionLog`s. The
export writes it (`write_warmup`); the server replays every record against a freshly loaded version before that
version serves (`replay`), so the lazy work of a first run (graph pruning, kernel and allocator set-up) is not paid
by the first client. Any failure of a replay fails the load.
"""

import os
import pathlib

from absl import logging

from serving import errors

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# TF Serving refuses warmup files with more records than this (`WarmupConsts::kMaxNumRecords`).
MAX_WARMUP_RECORDS = 1000


def write_warmup(path, requests) -> None:
    """Writes PredictionLogs (TF Serving's warmup format) to `<path>/assets.extra/tf_serving_warmup_requests`.

    Args:
      path: a SavedModel directory.
      requests: `PredictRequest`s, one record each.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

    target = pathlib.Path(path) / WARMUP_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(target)) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def warm_up(plane, loaded, iterations: int = 1) -> None:
    """Replays the warmup file of a freshly loaded version, if its directory has one.

    Args:
      plane: the `data_plane.DataPlane` that runs the requests.
      loaded: the `model_manager.LoadedModel` to run them on.
      iterations: times each record is run (`--num_request_iterations_for_warmup`).
    """
    path = os.path.join(loaded.path, WARMUP_FILE)
    if os.path.exists(path):
        replay(plane, loaded, path, iterations)


def replay(plane, loaded, path: str, iterations: int = 1) -> None:
    """Runs every `PredictionLog` of the TFRecord file `path` on `loaded`, each `iterations` times.

    Raises:
      InvalidArgument: a record is not a `PredictionLog`, or the file has more than `MAX_WARMUP_RECORDS`.
      DataLoss: the file is not a TFRecord file.
      Unimplemented: a record is a `session_run_log`.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel

    count = 0
    try:
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record.numpy())
            except Exception:  # pylint: disable=broad-except
                raise errors.InvalidArgument(
                    f"Failed to parse warmup record: {record.numpy()!r} from {path}") from None
            count += 1
            if count > MAX_WARMUP_RECORDS:
                raise errors.InvalidArgument(
                    f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            for _ in range(max(iterations, 1)):
                replay_record(plane, loaded, log)
    except tf.errors.DataLossError as exc:
        raise errors.DataLoss(f"{exc.message}. Please verify your warmup data is in TFRecord format.") from None
    logging.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.", path, count)


def replay_record(plane, loaded, log) -> None:
    """Runs one `PredictionLog`'s request on `loaded` through the API it was logged from."""
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        plane.predict_on(loaded, log.predict_log.request)
    elif kind == "classify_log":
        plane.classify_on(loaded, log.classify_log.request)
    elif kind == "regress_log":
        plane.regress_on(loaded, log.regress_log.request)
    elif kind == "multi_inference_log":
        plane.multi_inference_on(loaded, log.multi_inference_log.request)
    elif kind is not None:
        # TF Serving names the oneof case by its number (session_run_log: 5); a record without a log_type is
        # skipped, as it skips it.
        raise errors.Unimplemented(
            f"Unsupported log_type for warmup: {log.DESCRIPTOR.fields_by_name[kind].number}")
