"""One loaded version of a model: a TensorFlow session over its SavedModel, and the runs of its signatures.

As in TF Serving, a signature is run by feeding and fetching the tensor names its SignatureDef gives, which works
the same for TF1 (`saved_model_half_plus_two_cpu`) and TF2 exports. Requests hold a reference while they run, and
an unloaded version's session is closed only after the last one finishes, so a version swap never fails a request.
"""

import collections
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


# Callables kept per loaded version (feeds x fetches x timeout buckets in use); the least recently used go first.
_MAX_CALLABLES = 64


def _timeout_bucket_ms(timeout: Optional[float]) -> int:
    """A run timeout in whole milliseconds rounded up to the ladder round(2^(k/4)) (1, 2, 3, 4, 5, 6, 7, 8, 10, 11,
    13, 16, 19, ..., 23,170, 27,554, 32,768, ...: at most 19% later, four rungs per doubling); 0 (no timeout) for
    None. At least 1 ms: a deadline already past still times the run out at once.

    Coarse on purpose: every rung in use is a callable of its own, with executors built for it while requests
    wait. On a fine ladder the time a request spends queued moves its deadline to a new rung, whose building delays
    the requests behind it onto further rungs, and a loaded server spends its time building callables. On this
    ladder a 30 s deadline stays on one rung (32,768) until 2.4 s of it have passed."""
    if timeout is None:
        return 0
    ms = max(1.0, timeout * 1000.0)
    rung = math.ceil(4.0 * math.log2(ms) - 1e-9)
    while round(2.0 ** (rung / 4.0)) < ms:  # the rung's rounding may fall short of a value just below it
        rung += 1
    return max(1, round(2.0 ** (rung / 4.0)))


class LoadedModel:
    """One version of one model, loaded: a session and the MetaGraphDef's SignatureDefs.

    `run` is safe to call from many threads (TensorFlow sessions are); callables are cached per
    (feeds, fetches, timeout bucket) so a steady stream of identical requests pays no graph pruning.

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
        self._callables = collections.OrderedDict()  # least recently used first
        self._callables_lock = threading.Lock()
        self._building_lock = threading.Lock()  # one callable built at a time: the first caller builds, the rest wait
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
            except BaseException:
                self._session.close()
                raise
        self.signature_defs = self.meta_graph_def.signature_def

    def run(self, signature_name: str, feeds: Dict[str, object], fetches: List[str],
            batch_size: int = 0, timeout: Optional[float] = None) -> list:
        """Runs the graph: `feeds` maps tensor names to arrays, `fetches` lists tensor names.

        Feeding by tensor name skips the Python client's shape check, like TF Serving's C++
        session does, so `[1.0, 2.0, 5.0]` can be fed to a `[?, 1]` placeholder as the REST
        tutorial does; dtype and graph-level errors still come back as TensorFlow errors.

        `timeout` (seconds; a gRPC deadline's remainder or `--rest_api_timeout_in_ms`) becomes the
        session's `RunOptions.timeout_in_ms`, as TF Serving passes it: a run past it is cancelled and
        fails with DEADLINE_EXCEEDED ("Timed out waiting for notification"). A callable carries its run
        options, so the timeout is rounded up to a rung of `_timeout_bucket_ms`'s ladder (at most 19% later;
        a handful of callables per signature instead of one per request's deadline).
        """
        feed_names = tuple(feeds)
        fn = self._callable(feed_names, tuple(fetches), _timeout_bucket_ms(timeout))
        outputs = fn(*[feeds[name] for name in feed_names])
        if self._on_run is not None:
            self._on_run(self.name, signature_name, batch_size)
        return outputs

    def _callable(self, feed_names: tuple, fetches: tuple, timeout_ms: int):
        from tensorflow.core.protobuf import config_pb2  # pylint: disable=import-outside-toplevel

        key = (feed_names, fetches, timeout_ms)
        fn = self._cached_callable(key)
        if fn is not None:
            return fn
        with self._building_lock:  # concurrent first requests would each build the same executors
            fn = self._cached_callable(key)
            if fn is not None:
                return fn
            options = config_pb2.CallableOptions()
            options.feed.extend(feed_names)
            options.fetch.extend(fetches)
            options.run_options.timeout_in_ms = timeout_ms  # 0: none
            fn = self._session._make_callable_from_options(options)  # pylint: disable=protected-access
            with self._callables_lock:
                self._callables[key] = fn
                while len(self._callables) > _MAX_CALLABLES:
                    self._callables.popitem(last=False)
        return fn

    def _cached_callable(self, key):
        with self._callables_lock:
            fn = self._callables.get(key)
            if fn is not None:
                self._callables.move_to_end(key)
            return fn

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
        self._callables.clear()
        self._session.close()
