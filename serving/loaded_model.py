"""One loaded version of a model: a TensorFlow session over its SavedModel, and the runs of its signatures.

As in TF Serving, a signature is run by feeding and fetching the tensor names its SignatureDef gives, which works
the same for TF1 (`saved_model_half_plus_two_cpu`) and TF2 exports, through the session's `Run` with the request's
run options: the session builds the executors of a set of feeds and fetches at its first run and keeps them
whatever the run options, so the warmup replay builds what later requests run, whatever their deadlines. Requests
hold a reference while they run, and an unloaded version's session is closed only after the last one finishes, so
a version swap never fails a request.
"""

import math
import threading
import time
from typing import Callable, Dict, List, Optional

from serving import errors


def load_error(exc: BaseException, tags=()) -> errors.ServingError:
    """A load failure as a status: TF errors keep their code, missing files and tags are NOT_FOUND."""
    if isinstance(exc, errors.ServingError):
        return exc
    message = str(exc) or type(exc).__name__
    if message.startswith("MetaGraphDef associated with tags"):  # the Python loader's words for TF's NOT_FOUND
        return errors.NotFound(
            f"Could not find meta graph def matching supplied tags: {{ {' '.join(tags)} }}. To inspect available "
            "tag-sets in the SavedModel, please use the SavedModel CLI: `saved_model_cli`")
    if type(exc).__module__.startswith("tensorflow") and hasattr(exc, "error_code"):
        return errors.to_serving_error(exc)
    if "does not exist" in message or isinstance(exc, FileNotFoundError):
        return errors.NotFound(message)
    if "parse" in message.lower() or type(exc).__name__ == "DecodeError":
        return errors.DataLoss(message)
    return errors.Unknown(message)


def _timeout_bucket_ms(timeout: Optional[float]) -> int:
    """A run timeout in whole milliseconds rounded up to the ladder round(2^(k/4)) (1, 2, 3, 4, 5, 6, 7, 8, 10, 11,
    13, 16, 19, ..., 23,170, 27,554, 32,768, ...: at most 19% later, four rungs per doubling); 0 (no timeout) for
    None. At least 1 ms: a deadline already past still times the run out at once. A version keeps the serialized
    `RunOptions` of each rung in use (a handful), instead of serializing one for every request."""
    if timeout is None:
        return 0
    ms = max(1.0, timeout * 1000.0)
    rung = math.ceil(4.0 * math.log2(ms) - 1e-9)
    while round(2.0 ** (rung / 4.0)) < ms:  # the rung's rounding may fall short of a value just below it
        rung += 1
    return max(1, round(2.0 ** (rung / 4.0)))


class LoadedModel:
    """One version of one model, loaded: a session and the MetaGraphDef's SignatureDefs.

    `run` is safe to call from many threads (TensorFlow sessions are). The session keeps the executors of each set
    of feeds and fetches it has run; the first run of a set is made one at a time per version, so concurrent first
    requests do not each build the same executors.

    Args:
      name, version, path: the model's name, the version and its directory.
      options: the `model_manager.ManagerOptions` (`saved_model_tags`, the session's thread pools).
      on_run: metrics hook, called after every graph run with (model, signature, batch size).
    """

    def __init__(self, name: str, version: int, path: str, options,
                 on_run: Optional[Callable[[str, str, int], None]] = None):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        self.name = name
        self.version = version
        self.path = path
        self._on_run = on_run
        self._outputs = {}  # tensor name -> TF_Output
        self._run_options = {}  # timeout rung (ms) -> serialized RunOptions
        self._built = set()  # (feed names, fetch names) the session has run
        self._building_lock = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._in_use = 0
        self._closed = False
        config = tf.compat.v1.ConfigProto(
            intra_op_parallelism_threads=options.intra_op_parallelism,
            inter_op_parallelism_threads=options.inter_op_parallelism)
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._session = tf.compat.v1.Session(graph=self._graph, config=config)
            try:
                self.meta_graph_def = tf.compat.v1.saved_model.loader.load(
                    self._session, list(options.saved_model_tags), path)
                self._session._extend_graph()  # pylint: disable=protected-access
            except BaseException:
                self._session.close()
                raise
        self.signature_defs = self.meta_graph_def.signature_def

    def run(self, signature_name: str, feeds: Dict[str, object], fetches: List[str],
            batch_size: int = 0, timeout: Optional[float] = None) -> list:
        """Runs the graph: `feeds` maps tensor names to arrays, `fetches` lists tensor names.

        Feeding by tensor name skips the Python client's shape check, like TF Serving's C++
        session does, so `[1.0, 2.0, 5.0]` can be fed to a `[?, 1]` placeholder as the REST
        tutorial does; dtype and graph-level errors come back as the session's errors ("Expects arg[0] to be
        float but int32 is provided").

        `timeout` (seconds; a gRPC deadline's remainder or `--rest_api_timeout_in_ms`) becomes the
        session's `RunOptions.timeout_in_ms`, as TF Serving passes it: a run past it is cancelled and
        fails with DEADLINE_EXCEEDED ("Timed out waiting for notification"). It is rounded up to a rung of
        `_timeout_bucket_ms`'s ladder (at most 19% later).
        """
        key = (tuple(feeds), tuple(fetches))
        options = self._options_for(_timeout_bucket_ms(timeout))
        if key in self._built:
            outputs = self._session_run(feeds, fetches, options)
        else:
            with self._building_lock:  # the first run of a key builds its executors: once, not by every caller
                try:
                    outputs = self._session_run(feeds, fetches, options)
                finally:
                    self._built.add(key)
        if self._on_run is not None:
            self._on_run(self.name, signature_name, batch_size)
        return outputs

    def _session_run(self, feeds: Dict[str, object], fetches: List[str], options: bytes) -> list:
        from tensorflow.python.client import pywrap_tf_session as tf_session  # pylint: disable=import-outside-toplevel

        feed_outputs = {self._output(name): value for name, value in feeds.items()}
        fetch_outputs = [self._output(name) for name in fetches]
        buffer = tf_session.TF_NewBufferFromString(options)
        try:
            return tf_session.TF_SessionRun_wrapper(self._session._session,  # pylint: disable=protected-access
                                                    buffer, feed_outputs, fetch_outputs, [], None)
        finally:
            tf_session.TF_DeleteBuffer(buffer)

    def _output(self, name: str):
        """The graph's tensor `name` as the session's C API takes it (looked up once)."""
        output = self._outputs.get(name)
        if output is None:
            try:
                tensor = self._graph.as_graph_element(name, allow_tensor=True, allow_operation=False)
            except (KeyError, ValueError, TypeError):
                # The session's words for a feed or fetch the graph does not have.
                raise errors.InvalidArgument(
                    f"Tensor {name}, specified in either feed_devices or fetch_devices was not found in the "
                    "Graph") from None
            output = self._outputs[name] = tensor._as_tf_output()  # pylint: disable=protected-access
        return output

    def _options_for(self, timeout_ms: int) -> bytes:
        options = self._run_options.get(timeout_ms)
        if options is None:
            from tensorflow.core.protobuf import config_pb2  # pylint: disable=import-outside-toplevel

            options = self._run_options[timeout_ms] = config_pb2.RunOptions(
                timeout_in_ms=timeout_ms).SerializeToString()  # 0: none
        return options

    def acquire(self):
        """Marks one more request in flight; fails if the version was already unloaded."""
        with self._lock:
            if self._closed:
                raise errors.Unavailable(f"Version {self.version} of model {self.name} is unloading")
            self._in_use += 1

    def release(self):
        with self._lock:
            self._in_use -= 1
            if self._in_use == 0:
                self._idle.notify_all()

    def close(self, timeout_seconds: float = 300.0):
        """Waits for in-flight requests (so none fails during a swap), then frees the session."""
        with self._lock:
            self._closed = True
            deadline = time.monotonic() + timeout_seconds
            while self._in_use and time.monotonic() < deadline:
                self._idle.wait(timeout=0.1)
        self._session.close()
