"""Which model versions are loaded: config, version policies, labels, polling, reload, status.

This is the drop-in's `ServerCore`. A `ModelServerConfig` names models and their base paths;
each numbered sub-directory of a base path is a version. The version policy picks the *aspired*
versions (`latest { num_versions: N }`, default 1; `all {}`; `specific { versions: ... }`), and
the loop below moves every version through TF Serving's states
(START -> LOADING -> AVAILABLE -> UNLOADING -> END) with the rules of its
`AvailabilityPreservingPolicy`:

* a non-aspired AVAILABLE version is unloaded only if the model has no aspired version at all,
  or an aspired version is AVAILABLE, or more than one non-aspired version is AVAILABLE (the
  lowest goes first). So a new version is loaded *before* the old one is unloaded, and if the
  new one fails to load the old one keeps serving;
* new aspired versions are loaded highest first;
* a version that failed to load ends in END with its error (shown by GetModelStatus) and is not
  retried while it stays aspired.

A loaded version (`LoadedModel`) is a TensorFlow session over the SavedModel's MetaGraphDef, as
in TF Serving: signatures are run by feeding and fetching the tensor names their SignatureDefs
give, which works the same for TF1 (`saved_model_half_plus_two_cpu`) and TF2 exports. Requests
hold a reference while they run, and an unloaded version's session is closed only after the
last one finishes, so a version swap never fails a request.
"""

import collections
import contextlib
import dataclasses
import enum
import math
import os
import re
import threading
import time
from typing import Callable, Dict, List, Optional

from absl import logging

from serving import errors

_INT64_MAX = 2 ** 63 - 1


class State(enum.IntEnum):
    """`ModelVersionStatus.State` values."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: State
    error_code: int = 0
    error_message: str = ""


@dataclasses.dataclass
class ManagerOptions:
    """How models are loaded and watched (the server's flags, resolved)."""

    file_system_poll_wait_seconds: float = 1.0
    saved_model_tags: tuple = ("serve",)
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    allow_version_labels: bool = True
    allow_version_labels_for_unavailable_models: bool = False
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0


def parse_text_proto_file(path: str, message):
    """Reads a text-format proto file into `message`, as TF Serving's `ParseProtoTextFile`.

    Raises:
      InvalidArgument: "Invalid protobuf file: '<path>'" when the text does not parse (after
        logging protobuf's own "Error parsing text-format <type>: ..." line), NotFound when the
        file cannot be read.
    """
    from google.protobuf import text_format  # pylint: disable=import-outside-toplevel

    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise errors.NotFound(f"{path}; {exc.strerror or exc}") from None
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        logging.error("Error parsing text-format %s: %s", message.DESCRIPTOR.full_name, exc)
        raise errors.InvalidArgument(f"Invalid protobuf file: '{path}'") from None
    return message


def is_relative_path(base_path: str) -> bool:
    """TF Serving's `UriIsRelativePath`: neither a URI with a scheme (`gs://...`, `file:///...`) nor an absolute
    path. The empty path is relative."""
    return re.match(r"^[A-Za-z][0-9A-Za-z.]*://", base_path) is None and not base_path.startswith("/")


def single_model_config(model_name: str, base_path: str):
    """The config `--model_name`/`--model_base_path` stand for (`BuildSingleModelConfig`)."""
    from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = base_path
    model.model_platform = "tensorflow"
    return config


def _load_error(exc: BaseException, tags=()) -> errors.ServingError:
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

    Coarse on purpose: every rung in use is a callable of its own, with executors built for it. With two
    significant digits, a queueing delay of 100 ms moved a 30 s deadline to a new rung, whose callables were built
    while requests waited, which delayed them onto further rungs (three models under load answered 8 requests in
    3 s); a 30 s deadline now stays on one rung (32,768) until 2.4 s of it have passed."""
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
    """

    def __init__(self, name: str, version: int, path: str, options: ManagerOptions,
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


@dataclasses.dataclass
class _Version:
    """One version's harness: its state, whether it is aspired, and the loaded model."""

    version: int
    path: str
    state: State = State.START
    aspired: bool = True
    error: Optional[errors.ServingError] = None
    model: Optional[LoadedModel] = None


class _Model:
    def __init__(self, config):
        self.config = config
        self.versions: Dict[int, _Version] = {}
        self.lock = threading.RLock()


def _policy_choice(config):
    return config.model_version_policy.WhichOneof("policy_choice")


def aspired_versions(config, children: Dict[int, str]) -> Dict[int, str]:
    """The versions a model's version policy asks for, among the numbered sub-directories."""
    choice = _policy_choice(config)
    if choice == "all":
        return dict(children)
    if choice == "specific":
        wanted = set(config.model_version_policy.specific.versions)
        return {v: p for v, p in children.items() if v in wanted}
    num = max(config.model_version_policy.latest.num_versions, 1) if choice == "latest" else 1
    return {v: children[v] for v in sorted(children, reverse=True)[:num]}


_C_SPACES = " \t\n\v\f\r"  # C's isspace in the "C" locale


def parse_version(name: str) -> Optional[int]:
    """A base path child's version number, or None: TF Serving's `ParseVersionNumber`, i.e. tsl's
    `safe_strto64`: optional leading and trailing whitespace around an optional "-" and ASCII digits, within
    int64. So "-4" is version -4 and " 7" version 7, while "+7", "tmp-3", Arabic-Indic digits and 2^63 are not
    versions (a version past int64 could be neither reported nor asked for)."""
    text = name.strip(_C_SPACES)
    digits = text[1:] if text.startswith("-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def list_versions(base_path: str) -> Dict[int, str]:
    """The base path's children that name versions: version -> path.

    As TF Serving's file system source: every child whose name parses (`parse_version`) counts, files too (a
    file then fails to load like a version directory without a SavedModel), and names that do not parse (an
    exporter's temporary directories, for instance) are ignored; `00000123` is version 123. Where two names
    give one version, the later in byte order wins, with TF Serving's warning.
    """
    children = {}
    for entry in sorted(os.listdir(base_path)):
        version = parse_version(entry)
        if version is None:
            continue
        if version in children:
            logging.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s "
                            "will be ignored.", version, entry, os.path.basename(children[version]))
        children[version] = os.path.join(base_path, entry)
    return children


def _platform(model_config) -> str:
    """`GetPlatform` (server_core.cc): the deprecated `model_type` or `model_platform`, exactly one of them."""
    if model_config.model_type:  # not MODEL_TYPE_UNSPECIFIED
        if model_config.model_platform:
            raise errors.InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                "ModelServerConfig::model_platform.")
        if model_config.model_type != 1:  # TENSORFLOW
            raise errors.InvalidArgument(
                f"ModelServerConfig::model_type choice {model_config.model_type} not supported.")
        return "tensorflow"
    if not model_config.model_platform:
        raise errors.InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            "ModelServerConfig::model_platform.")
    return model_config.model_platform


class ModelManager:
    """Loads, serves and unloads model versions according to a `ModelServerConfig`.

    Args:
      options: `ManagerOptions`.
      warmup: called with each freshly loaded `LoadedModel` when warmup is enabled (`warmup.warm_up`
        replays its warmup file); raising fails the load.
      on_run: metrics hook, called after every graph run with (model, signature, batch size).
    """

    def __init__(self, options: ManagerOptions,
                 warmup: Optional[Callable[[LoadedModel], None]] = None,
                 on_run: Optional[Callable[[str, str, int], None]] = None):
        self._options = options
        self._warmup = warmup
        self._on_run = on_run
        self._config = None
        self._config_lock = threading.RLock()
        self._models: Dict[str, _Model] = {}
        # The versions of models removed from the config, END: their status stays visible, and a model
        # listed again starts from them (versions that do not load again stay END), as TF Serving's
        # state monitor keeps every servable's last state.
        self._retired: Dict[str, Dict[int, _Version]] = {}
        self._labels: Optional[Dict[str, Dict[str, int]]] = None
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller = None

    # ---------------------------------------------------------------- config

    @property
    def config(self):
        return self._config

    def reload_config(self, new_config, wait_for_new_models: bool = True):
        """Applies a new `ModelServerConfig` (`ServerCore::ReloadConfig`).

        New models are loaded before this returns; models no longer listed are unloaded.

        Raises:
          FailedPrecondition / InvalidArgument: the config is refused (nothing changes), or a
            label names a version that is not available.
          Unknown: "N servable(s) did not become available: {{{name: m version: 1} due to error: ...}, }" ("N
            model(s)" on a reload).
        """
        with self._config_lock:
            kind = new_config.WhichOneof("config")
            if self._config is not None and kind != "model_config_list":
                raise errors.FailedPrecondition(
                    "Cannot transition to requested config. It is only legal to transition from "
                    "one ModelConfigList to another.")
            if kind is None:
                logging.info("Taking no action for empty config.")
                return
            if kind != "model_config_list":
                raise errors.Unimplemented("ModelServer does not yet support custom model config.")
            first = self._config is None
            self._validate(new_config)
            self._update_labels(new_config)
            old_names = set(self._models)
            self._config = new_config
            logging.info("Adding/updating models.")
            new_names = []
            for model_config in new_config.model_config_list.config:
                logging.info(" (Re-)adding model: %s", model_config.name)
                model = self._models.get(model_config.name)
                if model is None:
                    model = _Model(model_config)
                    with self._state_lock:
                        model.versions.update(self._retired.pop(model_config.name, {}))
                        self._models[model_config.name] = model
                    new_names.append(model_config.name)
                else:
                    model.config = model_config
            listed = {c.name for c in new_config.model_config_list.config}
            for name in sorted(old_names - listed):
                self._remove_model(name)
            for name in listed:
                self._poll_model(name, initial=name in new_names)
            if wait_for_new_models:
                self._wait_for_first_versions(new_names)
                failed = []
                for name in new_names:
                    if self._available_versions(name):
                        continue
                    ended = sorted((e for e in self._models[name].versions.values()
                                    if e.aspired and e.error is not None),
                                   key=lambda e: e.version)
                    failed += [(name, e.version, e.error) for e in ended] or [(name, "latest", None)]
                if failed:
                    # TF Serving's text, each servable with the error that ended it: the first config's load
                    # (`load_servables_fast.cc`) counts servables, a reload (`ServerCore::WaitUntilModelsAvailable`)
                    # models.
                    raise errors.Unknown(
                        f"{len(failed)} {'servable' if first else 'model'}(s) did not become available: {{"
                        + "".join(f"{{{{name: {name} version: {version}}} due to error: "
                                  f"{errors.code_name(error.code) if error else 'UNKNOWN'}: "
                                  f"{error.message if error else 'not loaded'}}}, "
                                  for name, version, error in failed) + "}")
            logging.info("Finished reloading config")

    def _wait_for_first_versions(self, names: List[str]):
        """As TF Serving, waits for new models whose base path holds no version yet.

        The first export may still be on its way. This runs under the config lock, which the
        file-system poller needs too, so it polls every model itself: the others keep picking up
        new versions meanwhile, as they do in TF Serving.
        """
        interval = max(self._options.file_system_poll_wait_seconds, 1)
        while not self._stop.is_set():
            empty = [n for n in names if not any(e.aspired for e in self._models[n].versions.values())]
            if not empty:
                return
            logging.info("Waiting for a first version of %s", ", ".join(empty))
            self._stop.wait(interval)
            polled = list(self._models) if self._options.file_system_poll_wait_seconds > 0 else empty
            for name in polled:
                self._poll_model(name)

    def _validate(self, new_config):
        """`ServerCore::ReloadConfig`'s checks, in its order: names unique, base paths absolute, no model changing
        platform, then every platform known (`CreateStoragePathRoutes`; TF Serving checks that after the labels,
        here before them, so a refused config changes nothing)."""
        names = set()
        for model_config in new_config.model_config_list.config:
            if model_config.name in names:
                raise errors.InvalidArgument(
                    f"Illegal to list model {model_config.name} multiple times in config list")
            names.add(model_config.name)
        for model_config in new_config.model_config_list.config:
            if is_relative_path(model_config.base_path):
                # As ServerCore's check (without a model_config_list_root_dir, which no flag sets): a relative
                # path would depend on the directory the server happened to start in.
                raise errors.InvalidArgument(
                    f"Expected model {model_config.name} to have an absolute path or URI; got "
                    f"base_path()={model_config.base_path}")
        if self._config is not None:
            old = {c.name: _platform(c) for c in self._config.model_config_list.config}
            for model_config in new_config.model_config_list.config:
                if model_config.name in old and _platform(model_config) != old[model_config.name]:
                    raise errors.InvalidArgument(
                        f"Illegal to change a model's platform. For model {model_config.name} platform was "
                        f"{old[model_config.name]} and new platform requested is {_platform(model_config)}")
        for model_config in new_config.model_config_list.config:
            platform = _platform(model_config)
            if platform != "tensorflow":
                raise errors.InvalidArgument(
                    f"Model {model_config.name} requests unsupported platform {platform}")
            if not model_config.name:
                raise errors.InvalidArgument("Model config has an empty name")

    def _update_labels(self, new_config):
        """`UpdateModelVersionLabelMap`: labels may only name AVAILABLE versions (by default)."""
        labels = {}
        for model_config in new_config.model_config_list.config:
            available = set(self._available_versions(model_config.name))
            for label, version in model_config.version_labels.items():
                allow_unavailable = False
                if self._options.allow_version_labels_for_unavailable_models:
                    existing = (self._labels or {}).get(model_config.name, {}).get(label)
                    allow_unavailable = existing is None or existing == version
                if not allow_unavailable and version not in available:
                    raise errors.FailedPrecondition(
                        f"Request to assign label to version {version} of model "
                        f"{model_config.name}, which is not currently available for inference")
                labels.setdefault(model_config.name, {})[label] = version
        if not self._options.allow_version_labels and labels:
            raise errors.FailedPrecondition(
                "Model version labels are not currently allowed by the server.")
        with self._state_lock:
            self._labels = labels

    # ---------------------------------------------------------------- versions

    def poll(self):
        """One pass over every model's base path: load new versions, unload old ones."""
        with self._config_lock:
            for name in list(self._models):
                self._poll_model(name)

    def _poll_model(self, name: str, initial: bool = False):
        model = self._models[name]
        with model.lock:
            base_path = model.config.base_path
            try:
                children = list_versions(base_path)
            except OSError:
                message = f"Could not find base path {base_path} for servable {name}"
                if initial:
                    # TF Serving logs this on every poll and never finishes starting; failing
                    # fast (with its code and message) is kinder to whoever mistyped the path.
                    raise errors.InvalidArgument(message) from None
                logging.error("%s", message)
                return
            aspired = aspired_versions(model.config, children)
            if not aspired:
                logging.warning("No versions of servable %s found under base path %s", name,
                                base_path)
            with self._state_lock:
                for version, entry in model.versions.items():
                    was_aspired = entry.aspired
                    entry.aspired = version in aspired
                    if entry.aspired and not was_aspired and entry.state == State.END:
                        # A version that comes back after it was unloaded (or after it failed
                        # and left the aspired set) gets a fresh load.
                        entry.state, entry.error, entry.path = State.START, None, aspired[version]
                for version, path in aspired.items():
                    if version not in model.versions:
                        model.versions[version] = _Version(version=version, path=path)
            self._run_policy(model)

    def _run_policy(self, model: _Model):
        """Applies `AvailabilityPreservingPolicy` actions until there is nothing left to do."""
        while not self._stop.is_set():
            entries = list(model.versions.values())
            has_aspired = any(e.aspired for e in entries)
            has_aspired_serving = any(e.aspired and e.state == State.AVAILABLE for e in entries)
            unaspired_serving = sorted(
                (e for e in entries if not e.aspired and e.state == State.AVAILABLE),
                key=lambda e: e.version)
            if unaspired_serving and (not has_aspired or has_aspired_serving
                                      or len(unaspired_serving) > 1):
                # Under a `specific` policy too: a listed version whose directory is gone is no longer aspired.
                self._unload(model, unaspired_serving[0])
                continue
            new = [e for e in entries if e.aspired and e.state == State.START]
            if new:
                self._load(model, max(new, key=lambda e: e.version))
                continue
            return

    def _load(self, model: _Model, entry: _Version):
        name = model.config.name
        with self._state_lock:
            entry.state = State.LOADING
        logging.info("Loading servable: {name: %s version: %d} from %s", name, entry.version,
                     entry.path)
        attempts = 1 + max(self._options.max_num_load_retries, 0)
        error = None
        for attempt in range(attempts):
            if attempt:
                logging.info("Retrying load of servable {name: %s version: %d} (%d of %d)", name,
                             entry.version, attempt, attempts - 1)
                if self._stop.wait(max(self._options.load_retry_interval_seconds, 0.0)):
                    break
            loaded = None
            try:
                loaded = LoadedModel(name, entry.version, entry.path, self._options, self._on_run)
                if self._options.enable_model_warmup and self._warmup is not None:
                    self._warmup(loaded)
                error = None
                break
            except Exception as exc:  # pylint: disable=broad-except
                error = _load_error(exc, self._options.saved_model_tags)
                logging.error("Loading servable: {name: %s version: %d} failed: %s", name,
                              entry.version, error.message)
                if loaded is not None:
                    loaded.close()
        with self._state_lock:
            if error is None and loaded is not None:
                entry.model, entry.state, entry.error = loaded, State.AVAILABLE, None
                logging.info("Successfully loaded servable version {name: %s version: %d}", name,
                             entry.version)
            else:
                entry.state = State.END
                entry.error = error or errors.Cancelled("Load cancelled: the server is stopping")

    def _unload(self, model: _Model, entry: _Version):
        with self._state_lock:
            entry.state = State.UNLOADING
            loaded, entry.model = entry.model, None
        logging.info("Unloading servable version {name: %s version: %d}", model.config.name,
                     entry.version)
        if loaded is not None:
            loaded.close()
        with self._state_lock:
            entry.state, entry.error = State.END, None

    def _remove_model(self, name: str):
        model = self._models[name]
        with model.lock:
            for entry in model.versions.values():
                entry.aspired = False
            for entry in list(model.versions.values()):
                if entry.state == State.AVAILABLE:
                    self._unload(model, entry)
            with self._state_lock:
                # (A version never loaded, START, is not kept: listed again, it would load from the old path.)
                self._retired[name] = {v: e for v, e in model.versions.items() if e.state != State.START}
                del self._models[name]

    def _available_versions(self, name: str) -> List[int]:
        model = self._models.get(name)
        if model is None:
            return []
        return [v for v, e in model.versions.items() if e.state == State.AVAILABLE]

    # ---------------------------------------------------------------- requests

    @contextlib.contextmanager
    def servable(self, model_spec):
        """The version a `ModelSpec` asks for, held for the duration of the `with` block.

        Raises:
          InvalidArgument: no name, or an unknown label.
          NotFound: "Servable not found for request: Latest(name)" / "Specific(name, v)".
        """
        name = model_spec.name
        if not name:
            raise errors.InvalidArgument("ModelSpec has no name specified.")
        choice = model_spec.WhichOneof("version_choice")
        with self._state_lock:
            if choice == "version_label":
                if not self._options.allow_version_labels:
                    raise errors.InvalidArgument(
                        "ModelSpec has 'version_label' set, but it is not currently allowed by the "
                        "server.")
                if self._labels is None:
                    raise errors.Unavailable(
                        f"Model labels does not init yet.{model_spec.version_label}")
                version = self._labels.get(name, {}).get(model_spec.version_label)
                if version is None:
                    raise errors.InvalidArgument(
                        f"Unrecognized servable version label: {model_spec.version_label}")
                request = f"Specific({name}, {version})"
            elif choice == "version":
                version = model_spec.version.value
                request = f"Specific({name}, {version})"
            else:
                version = None
                request = f"Latest({name})"
            model = self._models.get(name)
            loaded = None
            if model is not None:
                available = {v: e.model for v, e in model.versions.items()
                             if e.state == State.AVAILABLE and e.model is not None}
                if version is None and available:
                    loaded = available[max(available)]
                elif version is not None:
                    loaded = available.get(version)
            if loaded is None:
                raise errors.NotFound(f"Servable not found for request: {request}")
            loaded.acquire()
        try:
            yield loaded
        finally:
            loaded.release()

    @staticmethod
    def _status_of(entry: _Version) -> VersionStatus:
        if entry.error is None:
            return VersionStatus(entry.version, entry.state)
        return VersionStatus(entry.version, entry.state, int(entry.error.code), entry.error.message)

    def status(self, name: str, version: Optional[int] = None) -> List[VersionStatus]:
        """Version states, highest version first (`GetModelStatusImpl`).

        Raises:
          NotFound: "Could not find version V of model M" / "Could not find any versions of
            model M".
        """
        with self._state_lock:
            model = self._models.get(name)
            if model is not None:
                states = {v: self._status_of(e) for v, e in model.versions.items()}
            else:
                states = {v: self._status_of(e) for v, e in self._retired.get(name, {}).items()}
        if version is not None:
            if version not in states:
                raise errors.NotFound(f"Could not find version {version} of model {name}")
            return [states[version]]
        if not states:
            raise errors.NotFound(f"Could not find any versions of model {name}")
        return [states[v] for v in sorted(states, reverse=True)]

    # ---------------------------------------------------------------- lifecycle

    def start_polling(self):
        """Polls the base paths every `file_system_poll_wait_seconds` (if positive)."""
        interval = self._options.file_system_poll_wait_seconds
        if interval <= 0 or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._poll_loop, args=(interval,),
                                        name="file_system_poll", daemon=True)
        self._poller.start()

    def _poll_loop(self, interval: float):
        while not self._stop.wait(interval):
            try:
                self.poll()
            except Exception:  # pylint: disable=broad-except
                # A poll must never kill the thread: the next one may succeed.
                logging.exception("File system poll failed")

    def stop(self):
        """Stops polling and reloads, then unloads everything (waiting for in-flight requests).

        A reload still running -- one waiting for a new model's first version, say -- returns
        as soon as the stop is signalled; taking the config lock waits for it.
        """
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=30)
        with self._config_lock:
            with self._state_lock:
                models = list(self._models.values())
            for model in models:
                for entry in list(model.versions.values()):
                    if entry.model is not None:
                        entry.model.close(timeout_seconds=10)
                        entry.model = None


class ConfigFilePoller:
    """Re-reads `--model_config_file` every few seconds and applies it when it parses.

    As TF Serving's `PollFilesystemAndReloadConfig`: an unreadable file or a refused config is
    logged and the current config keeps serving.
    """

    def __init__(self, manager: ModelManager, path: str, interval_seconds: float):
        self._manager = manager
        self._path = path
        self._interval = interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model_config_poll", daemon=True)

    def start(self):
        self._thread.start()

    def _loop(self):
        from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=import-outside-toplevel

        while not self._stop.wait(self._interval):
            try:
                config = parse_text_proto_file(self._path,
                                               model_server_config_pb2.ModelServerConfig())
            except errors.ServingError as exc:
                logging.error("Failed to read ModelServerConfig file: %s", exc.message)
                continue
            if config == self._manager.config:
                continue
            try:
                self._manager.reload_config(config)
            except Exception as exc:  # pylint: disable=broad-except
                logging.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s",
                              errors.to_serving_error(exc).message)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=30)
