"""The one training loop every family runs: mini-batch ELBO, checkpoints with resume, TensorBoard, evaluation, export.

`train_and_evaluate(train_config, model_config, build_model)` is the whole job of a training binary:

  1. validate the flags and load the data (both fail before any step is taken);
  2. build the model under the `tf.distribute` strategy;
  3. fit it: a closed form when the model has one (`model.closed_form`), else Adam on the loss per example
         loss = (1/|B|) sum_{n in B} (E_q[-log p(y_n | H)] + w_t KL_n) + w_t KL(q(H) || p(H)) / N
     (see `models.objective`; w_t is the KL warm-up weight), checkpointing so a killed run restarted with the same
     flags continues from its last checkpoint and, with the same seed, reaches the same result;
  4. evaluate (names `split/metric`);
  5. export a new SavedModel version under `--export_base`, then write `<workdir>/metrics.json`.

A failed evaluation or export keeps the trained model: the same command run again finds its training complete,
takes no step, and evaluates and exports.

Reproducibility: the data order of epoch e is a pure function of (seed, e), and the Monte Carlo draws of step t
use the stateless seed fold_in((seed, 0), t) (and the replica id), so neither depends on how the run was
interrupted.

Model contract (duck-typed):
  * `elbo_terms(batch, seed, training) -> models.objective.ElboTerms` for gradient training;
  * or `closed_form` True and `fit_closed_form(x, y) -> list of objective values`;
  * `predictive(x, num_samples, seed)`: per-sample predictive distribution, batch shape [S, batch, ...];
  * optionally `extra_metrics(dataset) -> dict` of additional `split/metric` values, and
    `evaluate_split(dataset, split, config, workdir) -> dict` for a family's own metrics of one split (it may also
    write figures into the workdir);
  * optionally `servable(dataset, num_samples, seed)`: the family's own export (see `serving/export.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import pathlib
import socket
import sys
import time
from typing import Callable

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from models import objective
from training import config as config_lib
from training import data as data_lib
from training import metrics as metrics_lib
from training import xla_cache

METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.json"
# Epoch-end checkpoints are skipped if the last one is younger than this (short epochs would spend their time
# writing checkpoints); `--checkpoint_every_steps` checkpoints are never skipped, and the last step always saves.
MIN_SECONDS_BETWEEN_EPOCH_CHECKPOINTS = 10.0
SECONDS_BETWEEN_EPOCH_LOGS = 5.0


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train_and_evaluate(train_config: config_lib.TrainConfig, model_config, build_model: Callable) -> dict:
    """Trains, evaluates and exports one family on one split, or on every UCI split with `split='all'`.

    Args:
      train_config: the shared settings.
      model_config: the family's config dataclass, handed to `build_model`.
      build_model: `(model_config, dataset) -> model`.

    Returns:
      The metrics written to `<workdir>/metrics.json` (for `all`: mean and standard error over splits).
    """
    train_config.validate()
    if train_config.jit_compile:
        # For callers other than the binaries (which take it before absl starts TensorFlow's runtime): it counts
        # only before TensorFlow's first op, when TensorFlow reads TF_XLA_FLAGS.
        xla_cache.use_persistent_cache()
    _check_split_layout(pathlib.Path(train_config.workdir).expanduser(), train_config.split == "all")
    # One strategy per process: multi-worker collectives must be set up before any other TensorFlow work.
    strategy = make_strategy(train_config.strategy)
    if train_config.split != "all":
        return _train_and_evaluate_split(train_config, model_config, build_model, strategy)
    num_splits = data_lib.num_uci_splits(train_config.dataset[len("uci/"):], train_config.data_dir)
    for k in range(num_splits):  # Fail on a missing split file now, not after hours of training.
        data_lib.check_available(train_config.dataset, train_config.data_dir, k)
    workdir = pathlib.Path(train_config.workdir).expanduser()
    results = []
    for k in range(num_splits):
        logging.info("split %d of %d", k + 1, num_splits)
        split_config = dataclasses.replace(
            train_config, split=str(k), workdir=str(workdir / f"split_{k}"),
            export_base=str(pathlib.Path(train_config.export_base) / f"split_{k}") if train_config.export_base
            else "")
        results.append(_train_and_evaluate_split(split_config, model_config, build_model, strategy))
    summary = metrics_lib.aggregate(results)
    _write_json(workdir / METRICS_FILE, summary)
    logging.info("mean over %d splits: %s", num_splits, _format(summary))
    return summary


def _check_split_layout(workdir: pathlib.Path, all_splits: bool) -> None:
    """Refuses a workdir that holds the other kind of run: `--split=all` trains in `split_<k>/` subdirectories
    and writes their summary to the top-level metrics.json, which a one-split run there would overwrite (and the
    other way round)."""
    if all_splits and has_checkpoint(workdir):
        raise config_lib.ConfigError(f"--split=all: --workdir={workdir} holds a run of one split; give --split=all "
                                     "its own --workdir")
    if not all_splits and any(has_checkpoint(d) for d in workdir.glob("split_*")):
        raise config_lib.ConfigError(f"--workdir={workdir} holds a --split=all run (its split_<k>/ directories); "
                                     "resume it with --split=all or train one split in another --workdir")


def _train_and_evaluate_split(config, model_config, build_model, strategy) -> dict:
    chief = is_chief(strategy)
    workdir = pathlib.Path(config.workdir).expanduser()
    if not chief:
        # Every worker saves checkpoints (the collectives need them all), but only the chief's are the run's.
        workdir = workdir / f".worker_{strategy.cluster_resolver.task_id}"
    dataset = data_lib.load(config.dataset, config.data_dir, config.split_index)
    if config.validation_fraction > 0:
        dataset = dataset.split_off_validation(config.validation_fraction, config.seed)
    # Initializers without their own seed draw from the global generator: seeding it here makes --seed fix the
    # initialization too, in any process.
    tf_keras.utils.set_random_seed(config.seed)
    try:
        with strategy.scope():
            model = build_model(model_config, dataset)
    except ValueError as e:  # the family cannot take this data set (a classifier's labels for a regression, ...)
        raise config_lib.ConfigError(f"--dataset={config.dataset}: {e}") from e
    # Before training, as its evaluation comes after; by the model's task (a VAE on MNIST is no classifier).
    ood = _load_ood(config, dataset, getattr(model, "task", dataset.task)) if chief else None
    # Only now does the workdir take this run's settings: a run that could not start does not bind it.
    with _workdir_lock(workdir):
        return _run_in_workdir(config, model_config, strategy, workdir, dataset, model, ood)


@contextlib.contextmanager
def _workdir_lock(workdir: pathlib.Path):
    """Holds `<workdir>/.lock` (an exclusive flock) for the run: two runs in one workdir would interleave their
    checkpoints and overwrite each other's metrics. A killed run's lock goes with its process."""
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / ".lock", "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise config_lib.ConfigError(
                f"--workdir={workdir}: another run ({lock.read().strip() or 'unknown'}) is using it; wait for it to "
                "end or use another --workdir") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        lock.flush()
        yield


def _run_in_workdir(config, model_config, strategy, workdir, dataset, model, ood) -> dict:
    """Trains, evaluates and exports a built model in its (locked) workdir.

    A run whose training is complete (its last checkpoint, or its closed-form fit, is in the workdir) trains
    nothing: a failed evaluation or export loses no training, and running the same command again evaluates and
    exports. metrics.json is written last, so it marks a run that trained, evaluated and exported.
    """
    chief = is_chief(strategy)
    closed_form = getattr(model, "closed_form", False)
    _prepare_workdir(workdir, config, model_config, num_train=None if closed_form else dataset.num_train)
    start = time.time()
    epochs_run = 0.0
    if closed_form:
        done = _restore_closed_form(model, workdir)
        if not done:
            fit_closed_form(model, dataset, workdir)
    else:
        epochs_run = fit(model, dataset, config, strategy, workdir)
        done = epochs_run == 0
    train_seconds = time.time() - start
    if not chief:
        logging.info("worker %d done; the chief evaluates and exports", strategy.cluster_resolver.task_id)
        return {}
    if done:
        logging.info("training already complete %s; evaluating%s", _trained_state(workdir, closed_form),
                     " and exporting" if config.export_base else "")
        timing = _previous_timing(workdir)
    else:
        timing = {"train/seconds": train_seconds}
        if epochs_run > 0:
            timing["train/seconds_per_epoch"] = train_seconds / epochs_run
        _write_json(workdir / TIMING_FILE, timing)
    with _kept_on_failure("evaluation", workdir, closed_form):
        metrics = evaluate(model, dataset, config, workdir, ood=ood)
    metrics.update(timing)
    if hasattr(model, "num_variational_parameters"):
        metrics["model/variational_parameters"] = model.num_variational_parameters()
    with tf.summary.create_file_writer(str(workdir / "eval")).as_default():
        for name, value in metrics.items():
            tf.summary.scalar(name, value, step=0)
    logging.info("%s split %s: %s", config.dataset, config.split, _format(metrics))
    export_path = None
    if config.export_base:
        with _kept_on_failure("export", workdir, closed_form):
            export_path = _export_once(model, dataset, config, workdir)
    _write_json(workdir / METRICS_FILE, metrics)
    if export_path is not None:
        metrics["export_path"] = str(export_path)
    return metrics


# The training time of the call that completed training: a later call that only evaluates and exports reports it.
TIMING_FILE = "timing.json"


def _previous_timing(workdir: pathlib.Path) -> dict:
    """`train/seconds` (and `train/seconds_per_epoch`) of the call that trained, from its timing record or, for a
    workdir written without one, its metrics.json; empty when neither has them."""
    for name in (TIMING_FILE, METRICS_FILE):
        saved = config_lib.load_json(workdir / name) or {}
        timing = {k: saved[k] for k in ("train/seconds", "train/seconds_per_epoch") if k in saved}
        if timing:
            return timing
    return {}


def _trained_state(workdir: pathlib.Path, closed_form: bool) -> str:
    """Where the trained model is, for the log: `at step N (checkpoint ...)` or `(closed-form fit ...)`."""
    if closed_form:
        return f"(closed-form fit {workdir / 'checkpoints' / CLOSED_FORM_CHECKPOINT})"
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    return f"at step {_checkpoint_number(latest)} (checkpoint {latest})" if latest else "(no checkpoint)"


@contextlib.contextmanager
def _kept_on_failure(stage: str, workdir: pathlib.Path, closed_form: bool):
    """Logs, when `stage` (evaluation or export) raises, that the trained model is kept and how to finish the run."""
    try:
        yield
    except Exception:
        logging.error("%s failed after training; the trained model is kept %s: running the same command again "
                      "evaluates and exports it without training", stage, _trained_state(workdir, closed_form))
        raise


EXPORT_RECORD = "export.json"


def _export_once(model, dataset, config, workdir: pathlib.Path) -> pathlib.Path:
    """Exports a new version unless this workdir already exported the same model with the same settings.

    The same model: the newest checkpoint (or the closed-form fit) and the run's config. Running a finished run
    again restores its last checkpoint and trains nothing; exporting it again would add a version identical to
    the last (TF Serving would switch to it for nothing). A changed `--num_samples`, more `--epochs`, or an export
    that was deleted since does export.
    """
    from serving import export  # Serving is only needed when exporting.

    saved = config_lib.load_json(workdir / CONFIG_FILE) or {}
    identity = {
        "checkpoint": ("closed_form" if getattr(model, "closed_form", False)
                       else pathlib.Path(tf.train.latest_checkpoint(str(workdir / "checkpoints")) or "").name),
        # The settings that shape the export: not where data came from or how it was evaluated or logged (the
        # budget shows in the checkpoint's step).
        "config": {k: v for k, v in saved.items() if k == "num_samples" or k not in config_lib.RESUMABLE_CHANGES},
        "export_base": str(pathlib.Path(config.export_base).expanduser().resolve()),
    }
    record = config_lib.load_json(workdir / EXPORT_RECORD)
    if record and record.get("identity") == identity and (pathlib.Path(record["path"]) / "saved_model.pb").exists():
        logging.info("the model is unchanged since its export %s; not exported again", record["path"])
        return pathlib.Path(record["path"])
    path = export.export(model, dataset, config.export_base, num_samples=config.num_samples, seed=config.seed)
    _write_json(workdir / EXPORT_RECORD, {"identity": identity, "path": str(path.resolve())})
    logging.info("exported %s", path)
    return path


def _load_ood(config, dataset, task: str):
    """The out-of-distribution set of a classifier's evaluation (None: none), loaded and checked up front."""
    name = config.ood_name()
    if task != data_lib.CLASSIFICATION or not name:
        return None
    try:
        ood = data_lib.load(name, config.data_dir)
    except data_lib.DatasetError as e:
        raise config_lib.ConfigError(
            f"--ood_dataset={config.ood_dataset}: {e} (--ood_dataset=none evaluates without it)") from e
    if ood.x_test.shape[1:] != dataset.x_test.shape[1:]:
        raise config_lib.ConfigError(
            f"--ood_dataset={config.ood_dataset}: its examples have shape {ood.x_test.shape[1:]}, "
            f"{config.dataset}'s {dataset.x_test.shape[1:]}")
    return ood


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The `tf.distribute` strategy of `--strategy`.

    `default`: the current device. `mirrored`: data parallel over all GPUs, or all logical CPUs without one.
    `multi_worker`: data parallel over the workers of the cluster in the `TF_CONFIG` environment variable (each
    worker runs the same command; worker 0 is the chief, which evaluates, writes metrics.json and exports).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise config_lib.ConfigError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                                         "(cluster and task of this worker)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise config_lib.ConfigError(f"--strategy must be one of {', '.join(config_lib.STRATEGIES)}, got {name!r}")


def is_chief(strategy) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker" and resolver.task_id == 0 and
                                             "chief" not in resolver.cluster_spec().jobs)


def _prepare_workdir(workdir: pathlib.Path, config, model_config, num_train: int | None = None) -> None:
    """Creates the workdir; refuses to resume a run trained with different settings (a workdir without a
    checkpoint has nothing to resume: a run that failed before its first one does not bind it), or, given the
    training set's size, with a budget below the steps it has taken."""
    workdir.mkdir(parents=True, exist_ok=True)
    current = json.loads(json.dumps({**config.to_json(), **dataclasses.asdict(model_config)}))
    saved = config_lib.load_json(workdir / CONFIG_FILE)
    if saved is not None and has_checkpoint(workdir):
        # A family config may name fields that only affect evaluation (e.g. a VAE's importance samples).
        config_lib.check_resumable(saved, current, extra_allowed=getattr(model_config, "RESUMABLE_FIELDS", ()))
    if num_train is not None:
        _check_budget(workdir, config, num_train)
    _write_json(workdir / CONFIG_FILE, current)


def has_checkpoint(workdir: pathlib.Path) -> bool:
    """Whether the workdir holds a checkpoint (complete or not) of a run."""
    return any((workdir / "checkpoints").glob("*.index"))


def _write_json(path: pathlib.Path, value: dict) -> None:
    """Writes JSON atomically (temp file, then rename), so a reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _format(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))


CLOSED_FORM_CHECKPOINT = "closed_form"


def fit_closed_form(model, dataset, workdir: pathlib.Path) -> list:
    """Fits a model with a closed-form or coordinate-ascent solution; logs its objective per iteration."""
    history = model.fit_closed_form(dataset.x_train, dataset.y_train)
    with tf.summary.create_file_writer(str(workdir / "train")).as_default():
        for i, value in enumerate(history):
            tf.summary.scalar("train/objective", value, step=i)
    tf.train.Checkpoint(model=model).write(str(workdir / "checkpoints" / CLOSED_FORM_CHECKPOINT))
    logging.info("closed-form fit: %d iterations, objective %.6f nats", len(history), history[-1])
    return history


def _restore_closed_form(model, workdir: pathlib.Path) -> bool:
    """Restores the workdir's closed-form fit into `model`; False when there is none that reads (a write killed
    midway is fitted again)."""
    path = workdir / "checkpoints" / CLOSED_FORM_CHECKPOINT
    if not path.with_name(path.name + ".index").exists():
        return False
    try:
        tf.train.Checkpoint(model=model).read(str(path)).assert_existing_objects_matched()
    except (tf.errors.OpError, AssertionError) as exc:
        logging.warning("closed-form fit %s cannot be read (%s); fitting again", path, str(exc).splitlines()[0])
        return False
    return True


def kl_weight(step, steps_per_epoch: int, warmup_epochs: float):
    """w_t = min(1, (t + 1) / (warmup_epochs * steps_per_epoch)); 1 without warm-up."""
    if warmup_epochs <= 0:
        return tf.constant(1.0)
    warmup_steps = max(1.0, warmup_epochs * steps_per_epoch)
    return tf.minimum(1.0, tf.cast(step + 1, tf.float32) / warmup_steps)


def _learning_rate(config, total_steps: int):
    if config.lr_schedule == "cosine":
        return tf_keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, total_steps))
    return config.learning_rate


def _checkpoint_number(prefix: str) -> int:
    return int(str(prefix).rsplit("-", 1)[1])


def checkpoints_newest_first(directory: pathlib.Path, recorded) -> list:
    """The checkpoints in `directory` to resume from, newest first.

    The manager records a checkpoint in its `checkpoint` file only after writing it, so a run killed in between
    leaves a newer checkpoint than the recorded one: every `ckpt-N` with an index counts. The index is written
    last but not atomically, so one killed mid-write may not read; the caller then tries the next.
    """
    written = {str(p)[:-len(".index")] for p in pathlib.Path(directory).glob("ckpt-*.index")}
    written = {p for p in written if p.rsplit("-", 1)[1].isdigit()}
    if recorded:
        written.add(recorded)
    return sorted(written, key=_checkpoint_number, reverse=True)


def restore_newest_readable(checkpoint, directory: pathlib.Path, step, total_steps: int | None = None) -> str | None:
    """Restores the newest checkpoint in `directory` that reads, or nothing when none ever finished writing;
    returns the checkpoint restored, or None.

    A checkpoint at `total_steps` or later is a finished run: no step follows, so the optimizer's slots (restored
    when its first step makes them) are expected to stay unrestored, and TensorFlow is told not to warn about them.

    An unreadable checkpoint the manager never recorded (in its `checkpoint` file) is a save killed mid-write: it
    is skipped, and if it is the only one, training starts afresh (its files are overwritten when that step is
    saved again). One the manager recorded had been complete; if no checkpoint reads but a recorded one exists,
    training refuses to start over it: someone should look at the files.
    """
    state = tf.train.get_checkpoint_state(str(directory))
    recorded = {pathlib.Path(p).name for p in state.all_model_checkpoint_paths} if state else set()
    candidates = checkpoints_newest_first(directory, state.model_checkpoint_path if state else None)
    for candidate in candidates:
        try:
            status = checkpoint.restore(candidate)
        except tf.errors.OpError as exc:  # an unreadable file: a truncated index, a missing data shard
            logging.warning("checkpoint %s cannot be read (%s)%s", candidate, str(exc).splitlines()[0],
                            "" if pathlib.Path(candidate).name in recorded else "; it was never recorded as saved")
            continue
        if total_steps is not None and int(step) >= total_steps:
            status.expect_partial()
        logging.info("resumed from %s at step %d", candidate, int(step))
        return candidate
    damaged = [c for c in candidates if pathlib.Path(c).name in recorded]
    if damaged:
        raise RuntimeError(f"no checkpoint in {directory} can be read, and {', '.join(damaged)} had been saved "
                           "completely; move them away to train from scratch")
    if candidates:
        logging.warning("no checkpoint in %s finished writing (%s): training from the start", directory,
                        ", ".join(candidates))
    return None


def record_unrecorded(directory: pathlib.Path, restored: str | None) -> list:
    """Adds to the manager's `checkpoint` file the checkpoints up to `restored` that a kill left unrecorded (the
    one resumed from, and any older ones written while the file was lost); returns their names.

    `tf.train.CheckpointManager` deletes only checkpoints its file lists, beyond `max_to_keep`; an unrecorded one
    would stay on disk for good. Each is listed with its index file's time, after `last_preserved_timestamp`,
    which is what makes the manager count it as deletable. Unrecorded ones newer than `restored` did not read
    (a save killed mid-write; listing them would make them look complete): their files are removed, since the
    run redoes their steps.
    """
    if restored is None:
        return []
    state = tf.train.get_checkpoint_state(str(directory))
    paths = list(state.all_model_checkpoint_paths) if state else []
    stamps = list(state.all_model_checkpoint_timestamps) if state else []
    times = dict(zip(paths, stamps)) if len(stamps) == len(paths) else {}
    known = {pathlib.Path(p).name for p in paths}
    limit = _checkpoint_number(restored)
    unrecorded = [c for c in checkpoints_newest_first(directory, None) if pathlib.Path(c).name not in known]
    for broken in [c for c in unrecorded if _checkpoint_number(c) > limit]:
        for f in pathlib.Path(directory).glob(pathlib.Path(broken).name + ".*"):
            f.unlink()
        logging.warning("removed %s: it did not read and was never recorded (a save killed mid-write)", broken)
    added = [c for c in unrecorded if _checkpoint_number(c) <= limit]
    if not added:
        return []
    for c in added:
        times[c] = os.path.getmtime(c + ".index")
    listed = sorted(set(paths) | set(added), key=_checkpoint_number)
    listed_times = [times.get(p, time.time()) for p in listed]
    preserved = min(state.last_preserved_timestamp if state else math.inf, min(listed_times) - 1.0)
    latest = max(listed, key=_checkpoint_number)
    tf.compat.v1.train.update_checkpoint_state(
        str(directory), latest, all_model_checkpoint_paths=listed,
        all_model_checkpoint_timestamps=listed_times, last_preserved_timestamp=preserved)
    names = [pathlib.Path(c).name for c in added]
    logging.info("recorded %s in %s, so that the checkpoint manager's retention covers them", ", ".join(names),
                 directory)
    return names


def training_budget(config, num_train: int) -> tuple:
    """(batch size, steps per epoch, total steps): the batch capped at the data, `--train_steps` if given, else
    `--epochs` of full batches."""
    batch_size = min(config.batch_size, num_train)
    steps_per_epoch = num_train // batch_size
    return batch_size, steps_per_epoch, config.train_steps or config.epochs * steps_per_epoch


def _check_budget(workdir: pathlib.Path, config, num_train: int) -> None:
    """Refuses a budget below the steps the workdir's run has already taken: it would train nothing, evaluate
    and export the longer run's model, and record the shorter budget as its settings."""
    newest = checkpoints_newest_first(workdir / "checkpoints", None)
    total = training_budget(config, num_train)[2]
    if newest and _checkpoint_number(newest[0]) > total:
        raise config_lib.ConfigError(
            f"--train_steps/--epochs: {total} steps, but the run in --workdir={workdir} has already trained "
            f"{_checkpoint_number(newest[0])}; train it longer, or use another --workdir for a shorter run")


def fit(model, dataset, config, strategy, workdir: pathlib.Path, on_epoch_end=None) -> float:
    """Minimizes the per-example negative ELBO with Adam; resumes from `<workdir>/checkpoints`.

    Args:
      on_epoch_end: optional `(epoch, means)` callback after each epoch, `means` the epoch's per-example nll, kl
        and loss (benchmarks time epochs with it).

    Returns:
      The epochs this call trained (fractional; 0 when a finished run is resumed).
    """
    num_train = dataset.num_train
    batch_size, steps_per_epoch, total_steps = training_budget(config, num_train)
    if batch_size < config.batch_size:
        logging.warning("--batch_size=%d exceeds the %d training examples; using %d", config.batch_size,
                        num_train, batch_size)
    num_epochs = -(-total_steps // steps_per_epoch)
    with strategy.scope():
        # The legacy (OptimizerV2) Adam updates each variable with one fused kernel; the newer tf_keras Adam
        # runs several elementwise ops per variable, measured 3.7x slower on CPU for a 784-400-400-10
        # mean-field network's ~1M parameters (4.7 ms against 1.3 ms per step).
        optimizer = tf_keras.optimizers.legacy.Adam(_learning_rate(config, total_steps),
                                                    global_clipnorm=config.clip_norm or None)
    # Outside the strategy scope: one host-side counter, not one copy per replica.
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    restored = restore_newest_readable(checkpoint, workdir / "checkpoints", step, total_steps)
    record_unrecorded(workdir / "checkpoints", restored)
    # Made after both: the manager reads its `checkpoint` file once, when it is made.
    manager = tf.train.CheckpointManager(checkpoint, str(workdir / "checkpoints"), max_to_keep=3)
    base_seed = tf.constant([config.seed, 0], tf.int32)

    def replica_step(batch):
        replica = tf.distribute.get_replica_context()
        seed = tf.random.experimental.stateless_fold_in(
            tf.random.experimental.stateless_fold_in(base_seed, tf.cast(step, tf.int32)),
            replica.replica_id_in_sync_group)
        weight = kl_weight(step, steps_per_epoch, config.kl_warmup_epochs)
        with tf.GradientTape() as tape:
            terms = model.elbo_terms(batch, seed, training=True)
            per_example = terms.loss_per_example(num_train, weight)
            # Sum over this replica's examples / global batch: replica gradients then sum to the batch mean's.
            loss = tf.reduce_sum(per_example) / batch_size
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        kl = terms.kl_per_example(num_train)
        return {"loss": loss, "nll": tf.reduce_sum(terms.nll) / batch_size,
                "kl": tf.reduce_sum(kl) / batch_size}

    def one_step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        out = {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}
        step.assign_add(1)
        return out

    def run_steps(next_batch, num_steps):
        totals = {"loss": tf.constant(0.0, tf.float64), "nll": tf.constant(0.0, tf.float64),
                  "kl": tf.constant(0.0, tf.float64)}
        # A while loop, not `for i in tf.range(num_steps)`: traced for XLA, a for loop over a range takes the
        # range's length as its maximum_iterations, a compile-time constant, so every call length would be
        # compiled anew (seconds each).
        i = tf.constant(0, num_steps.dtype)
        while i < num_steps:
            out = one_step(next_batch(i))
            totals = {k: totals[k] + tf.cast(out[k], tf.float64) for k in totals}
            i += 1
        return totals

    @tf.function(jit_compile=True)
    def compiled_steps(batches, num_steps):
        """The first `num_steps` of `batches` [steps_per_execution, batch, ...] as ONE XLA computation: the
        loop, the sampling, the gradients and Adam fused, and no per-op dispatch (a small network's step is
        mostly that). Fixed shapes: one compilation for every call."""
        return run_steps(lambda i: tf.nest.map_structure(lambda t: t[i], batches), num_steps)

    @tf.function
    def train_steps(iterator, num_steps):
        """`num_steps` steps in one call: per-step Python and dispatch overhead is paid once per call."""
        if not config.jit_compile:
            return run_steps(lambda i: next(iterator), num_steps)
        # The call's batches, taken from the same pipeline (the same batches as uncompiled) and stacked, padded
        # to --steps_per_execution so that every call has the shape of the first.
        spec = iterator.element_spec
        arrays = tf.nest.map_structure(lambda s: tf.TensorArray(s.dtype, size=num_steps, element_shape=s.shape),
                                       spec)
        for i in tf.range(num_steps):
            arrays = tf.nest.map_structure(lambda a, t: a.write(i, t), arrays, next(iterator))
        padding = config.steps_per_execution - num_steps
        batches = tf.nest.map_structure(
            lambda a: tf.pad(a.stack(), tf.concat([[[0, padding]], tf.zeros([a.element_shape.rank, 2], tf.int32)],
                                                  0)), arrays)
        return compiled_steps(batches, num_steps)

    writer = tf.summary.create_file_writer(str(workdir / "train"))
    first_step = int(step)
    batches = dataset.training_batches(batch_size, config.seed, int(step), num_epochs).take(
        max(0, total_steps - int(step)))
    sums, progress = _new_epoch_sums(), None
    last_save = last_log = time.time()
    multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    # A progress bar only where someone watches; logs and CI get one line per epoch, at most every few seconds.
    interactive = sys.stdout.isatty()
    options = tf.data.Options()
    # Every worker builds the same batches from the same seed and takes its share of each (not a file shard).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    iterator = iter(strategy.experimental_distribute_dataset(batches.with_options(options)))
    while int(step) < total_steps:
        t0 = int(step)
        epoch, offset = divmod(t0, steps_per_epoch)
        if progress is None and interactive:
            progress = tf_keras.utils.Progbar(steps_per_epoch, stateful_metrics=["nll", "kl", "elbo"],
                                              unit_name="step")
            progress.update(offset)
        # A call never crosses a step that logs or checkpoints, nor an epoch end, except that epochs shorter than
        # --steps_per_execution (full-batch training: one step each) run whole several to a call; their epoch-end
        # work (summaries, log line, callback) is then done once per call, for the call's epochs together.
        span = steps_per_epoch - offset
        if offset == 0 and steps_per_epoch < config.steps_per_execution:
            span = config.steps_per_execution // steps_per_epoch * steps_per_epoch
        k = min(config.steps_per_execution, span, total_steps - t0,
                *(every - t0 % every for every in (config.log_every_steps, config.checkpoint_every_steps) if every))
        out = {name: float(v) / k for name, v in train_steps(iterator, tf.constant(k)).items()}
        if not math.isfinite(out["loss"]):
            kept = (f"the last good checkpoint is in {workdir / 'checkpoints'}" if has_checkpoint(workdir)
                    else "no checkpoint was written, so the workdir can be reused with other flags")
            raise TrainingDivergedError(
                f"the loss became {out['loss']} within steps {t0 + 1}-{t0 + k} (epoch {epoch + 1}); {kept}; "
                "try a smaller --learning_rate")
        for name in out:
            sums[name] += out[name] * k
        sums["count"] += k
        t = int(step)
        epoch = (t - 1) // steps_per_epoch  # the last epoch this call ran into
        if progress is not None:
            progress.update(min(offset + k, steps_per_epoch), [("nll", out["nll"]), ("kl", out["kl"]),
                                         ("elbo", -(out["nll"] + out["kl"]))])
        if config.log_every_steps and t % config.log_every_steps == 0:
            _write_train_summaries(writer, out, t)
        if config.checkpoint_every_steps and t % config.checkpoint_every_steps == 0:
            manager.save(checkpoint_number=t)
        if t % steps_per_epoch == 0 or t == total_steps:  # The epoch (or the run) is complete.
            # Workers of a cluster must save together, so they save at every epoch end, not by their own clocks.
            if t == total_steps or multi_worker or time.time() - last_save >= MIN_SECONDS_BETWEEN_EPOCH_CHECKPOINTS:
                manager.save(checkpoint_number=t)
                last_save = time.time()
            means = {k: v / sums["count"] for k, v in sums.items() if k != "count"}
            if not config.log_every_steps:
                _write_train_summaries(writer, means, t)
            if t == total_steps or time.time() - last_log >= SECONDS_BETWEEN_EPOCH_LOGS:
                last_log = time.time()
                logging.info("epoch %d/%d: elbo %.4f nats (%.4f bits) per example, nll %.4f, kl %.4f",
                             epoch + 1, num_epochs, -(means["nll"] + means["kl"]),
                             objective.to_bits(-(means["nll"] + means["kl"])), means["nll"], means["kl"])
            if on_epoch_end is not None:
                on_epoch_end(epoch, means)
            sums, progress = _new_epoch_sums(), None
    writer.flush()
    return (int(step) - first_step) / steps_per_epoch


def _new_epoch_sums() -> dict:
    return {"nll": 0.0, "kl": 0.0, "loss": 0.0, "count": 0}


def _write_train_summaries(writer, values: dict, step: int) -> None:
    """Per-example nll, kl and ELBO (with the KL at full weight), in nats and in bits."""
    elbo = -(values["nll"] + values["kl"])
    with writer.as_default():
        for name, value in (("nll", values["nll"]), ("kl", values["kl"]), ("elbo", elbo)):
            tf.summary.scalar(f"train/{name}", value, step=step)
            tf.summary.scalar(f"train/{name}_bits", objective.to_bits(value), step=step)
        tf.summary.scalar("train/loss", values["loss"], step=step)


def evaluate(model, dataset, config, workdir: pathlib.Path | None = None, ood=None) -> dict:
    """All metrics of every split the dataset has (`train`, `valid`, `test`), plus figures in the workdir.

    Regression: `models.predictive` summaries in original units (`training/metrics.py`); with 1-D inputs also the
    predictive band, `<workdir>/predictive_band.png`. Classification: accuracy, NLL, Brier, ECE, and on the test
    split the out-of-distribution AUROC against `config.ood_dataset` (`ood`: that data set, if already loaded);
    `<workdir>/reliability_diagram.png`.
    Every model with `elbo_terms` also gets `split/elbo`, `split/expected_nll`, `split/kl`.
    """
    metrics = {}
    # A model may treat labelled data as unlabelled (a VAE on MNIST): its own `task` decides the metrics.
    task = getattr(model, "task", dataset.task)
    # The training split's metrics use at most `--train_eval_examples` (a fixed prefix): on MNIST the full 60,000 at
    # S samples each would cost more than training.
    limit = config.train_eval_examples
    splits = (["train"] if limit > 0 else []) + (["valid"] if dataset.x_valid is not None else []) + ["test"]
    for split in splits:
        view = dataset
        if split == "train" and dataset.num_train > limit:
            view = dataclasses.replace(dataset, x_train=dataset.x_train[:limit],
                                       y_train=None if dataset.y_train is None else dataset.y_train[:limit])
        if task == data_lib.REGRESSION:
            metrics.update(metrics_lib.regression_metrics(
                model, view, split, config.num_samples, config.seed, config.eval_batch_size))
        elif task == data_lib.CLASSIFICATION:
            metrics.update(_evaluate_classifier(model, view, split, config, workdir, ood))
        if hasattr(model, "elbo_terms") and getattr(model, "supports_elbo", True):
            metrics.update(metrics_lib.elbo_metrics(model, view, split, config.seed, config.eval_batch_size,
                                                    num_train=dataset.num_train))
        if hasattr(model, "evaluate_split"):
            metrics.update(model.evaluate_split(view, split, config, workdir))
    if task == data_lib.REGRESSION and dataset.input_shape == (1,) and workdir is not None:
        _plot_predictive_band(model, dataset, config, workdir)
    if hasattr(model, "extra_metrics"):
        metrics.update(model.extra_metrics(dataset))
    return metrics


def _evaluate_classifier(model, dataset, split, config, workdir, ood=None) -> dict:
    x, y = dataset.arrays(split)
    outputs = metrics_lib.classification_outputs(model, x, config.num_samples, config.seed, config.eval_batch_size,
                                                 y=y)
    metrics = metrics_lib.classification_metrics(outputs, y, split)
    if split != "test":
        return metrics
    ood_name = config.ood_name()
    if ood_name:
        ood = ood if ood is not None else data_lib.load(ood_name, config.data_dir)
        ood_outputs = metrics_lib.classification_outputs(model, ood.x_test, config.num_samples, config.seed + 1,
                                                         config.eval_batch_size)
        metrics.update(metrics_lib.ood_metrics(outputs, ood_outputs))
    if workdir is not None:
        from training import plots
        plots.reliability_diagram(outputs["probabilities"], y, workdir / "reliability_diagram.png",
                                  title=f"{dataset.name} test: ECE {metrics['test/ece']:.4f}, "
                                        f"accuracy {metrics['test/accuracy']:.4f}")
    return metrics


def _plot_predictive_band(model, dataset, config, workdir: pathlib.Path) -> None:
    from training import plots

    grid = np.linspace(dataset.x_test.min() - 0.5, dataset.x_test.max() + 0.5, 400, dtype=np.float32)[:, None]
    summary = metrics_lib.regression_predictive(model, dataset, grid, config.num_samples,
                                                metrics_lib.batch_seeds(config.seed, 4)(0))
    plots.predictive_band(dataset.x_scaler.invert(dataset.x_train), dataset.y_scaler.invert(dataset.y_train),
                          dataset.x_scaler.invert(grid), {k: np.asarray(v) for k, v in summary.items()
                                                          if k != "per_sample"},
                          workdir / "predictive_band.png", title=f"{dataset.name}: posterior predictive")
