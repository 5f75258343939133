"""Which model versions are loaded: reload, labels, polling, the load/unload state machine, status.

This is the drop-in's `ServerCore`. A `ModelServerConfig` (read and checked by `model_config`) names models and
their base paths; each numbered sub-directory of a base path is a version. The version policy (`version_policy`)
picks the *aspired* versions (`latest { num_versions: N }`, default 1; `all {}`; `specific { versions: ... }`), and
the loop below moves every version through TF Serving's states (START -> LOADING -> AVAILABLE -> UNLOADING -> END)
with the rules of its `AvailabilityPreservingPolicy`:

* a non-aspired AVAILABLE version is unloaded only if the model has no aspired version at all,
  or an aspired version is AVAILABLE, or more than one non-aspired version is AVAILABLE (the
  lowest goes first). So a new version is loaded *before* the old one is unloaded, and if the
  new one fails to load the old one keeps serving;
* new aspired versions are loaded highest first;
* a version that failed to load ends in END with its error (shown by GetModelStatus) and is not
  retried while it stays aspired.

Models load side by side, as TF Serving's manager loads servables on a thread pool: the first config's models on
`num_initial_load_threads` threads (TF Serving's `ServerCore` uses four per schedulable CPU, fixed), the models of
later polls and reloads on `num_load_threads` (`--num_load_threads`; 0 or 1: one after another). A model's own
versions load one at a time, highest first, so the rules above hold per model. A version serves as soon as it is
AVAILABLE -- loaded and its warmup replayed -- whatever the other models are doing; until then a request for it
answers NOT_FOUND ("Servable not found for request: ..."), as TF Serving's manager answers for a servable it has
no handle for.

A loaded version is a `LoadedModel`, a TensorFlow session over its SavedModel; requests hold it while
they run (`ModelManager.servable`), so a version swap never fails a request.
"""

import contextlib
import dataclasses
import enum
import threading
import time
from concurrent import futures
from typing import Callable, Dict, Iterable, List, Optional

from absl import logging

from serving import errors
from serving.loaded_model import LoadedModel, load_error
from serving.model_config import check_config
from serving.version_policy import aspired_versions, list_versions


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
    # Models loaded at once: for the first config, and for later polls and reloads (0 or 1: one at a time).
    num_initial_load_threads: int = 1
    num_load_threads: int = 0


@dataclasses.dataclass
class _Version:
    """One version's harness: its state, whether it is aspired, and the loaded model."""

    version: int
    path: str
    state: State = State.START
    aspired: bool = True
    error: Optional[errors.ServingError] = None
    model: Optional[LoadedModel] = None
    # Seconds the last successful load took: the session and its restore, and the warmup replay.
    load_seconds: float = 0.0
    warmup_seconds: float = 0.0


class _Model:
    def __init__(self, config):
        self.config = config
        self.versions: Dict[int, _Version] = {}
        self.lock = threading.RLock()


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
            check_config(new_config, self._config)
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
            listed = [c.name for c in new_config.model_config_list.config]
            for name in sorted(old_names - set(listed)):
                self._remove_model(name)
            threads = self._options.num_initial_load_threads if first else self._options.num_load_threads
            self._poll_models(listed, initial=new_names, threads=threads)
            if wait_for_new_models:
                self._wait_for_first_versions(new_names, threads)
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

    def _wait_for_first_versions(self, names: List[str], threads: int):
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
            self._poll_models(polled, threads=threads)

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
            self._poll_models(list(self._models), threads=self._options.num_load_threads)

    def _poll_models(self, names: List[str], initial: Iterable[str] = (), threads: int = 1):
        """`_poll_model` for each of `names`, on up to `threads` threads (each model on one of them).

        Every model is polled to the end even if another fails; then the first failure in `names`' order is
        raised.
        """
        initial = set(initial)
        threads = min(max(threads, 1), len(names))
        if threads <= 1:
            for name in names:
                self._poll_model(name, initial=name in initial)
            return
        with futures.ThreadPoolExecutor(threads, thread_name_prefix="load") as pool:
            polls = [pool.submit(self._poll_model, name, name in initial) for name in names]
        for poll in polls:
            poll.result()

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
                started = time.monotonic()
                loaded = LoadedModel(name, entry.version, entry.path, self._options, self._on_run)
                loaded_at = time.monotonic()
                if self._options.enable_model_warmup and self._warmup is not None:
                    self._warmup(loaded)
                load_seconds, warmup_seconds = loaded_at - started, time.monotonic() - loaded_at
                error = None
                break
            except Exception as exc:  # pylint: disable=broad-except
                error = load_error(exc, self._options.saved_model_tags)
                logging.error("Loading servable: {name: %s version: %d} failed: %s", name,
                              entry.version, error.message)
                if loaded is not None:
                    loaded.close()
        with self._state_lock:
            if error is None and loaded is not None:
                entry.model, entry.state, entry.error = loaded, State.AVAILABLE, None
                entry.load_seconds, entry.warmup_seconds = load_seconds, warmup_seconds
                logging.info("Successfully loaded servable version {name: %s version: %d} (session %.2f s, "
                             "warmup %.2f s)", name, entry.version, load_seconds, warmup_seconds)
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

    def load_times(self) -> List[tuple]:
        """(model, version, session seconds, warmup seconds) of every AVAILABLE version, by model and version."""
        with self._state_lock:
            return sorted((name, e.version, e.load_seconds, e.warmup_seconds)
                          for name, model in self._models.items() for e in model.versions.values()
                          if e.state == State.AVAILABLE)

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
