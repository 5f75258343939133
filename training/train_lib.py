"""The one training loop every family runs: mini-batch ELBO, checkpoints with resume, TensorBoard, evaluation, export.

`train_and_evaluate(train_config, model_config, build_model)` is the whole job of a training binary:

  1. validate the flags and load the data (both fail before any step is taken);
  2. build the model under the `tf.distribute` strategy;
  3. fit it: a closed form when the model has one (`model.closed_form`), else Adam on the loss per example
         loss = (1/|B|) sum_{n in B} (E_q[-log p(y_n | H)] + w_t KL_n) + w_t KL(q(H) || p(H)) / N
     (see `models.objective`; w_t is the KL warm-up weight), checkpointing so a killed run restarted with the same
     flags continues from its last checkpoint and, with the same seed, reaches the same result;
  4. evaluate (names `split/metric`; `training/evaluation.py`);
  5. export a new SavedModel version under `--export_base` (`serving/export.py`), then write
     `<workdir>/metrics.json`.

A failed evaluation or export keeps the trained model: the same command run again finds its training complete,
takes no step, and evaluates and exports. The workdir's lock and records are `training/workdir.py`'s, the choice of
checkpoint to resume from `training/checkpoints.py`'s.

Reproducibility: the data order of epoch e is a pure function of (seed, e), and the Monte Carlo draws of step t
use the stateless seed fold_in((seed, 0), t) (and the replica id), so neither depends on how the run was
interrupted.

Model contract (duck-typed):
  * `elbo_terms(batch, seed, training) -> models.objective.ElboTerms` for gradient training;
  * or `closed_form` True and `fit_closed_form(x, y) -> list of objective values`;
  * `predictive(x, num_samples, seed)`: per-sample predictive distribution, batch shape [S, batch, ...];
  * optionally `task` (else the data set's), which decides the evaluation and the export's signatures, and
    `extra_metrics(dataset) -> dict` of additional `split/metric` values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Callable

from absl import logging
import tensorflow as tf
import tf_keras

from models import objective
from training import checkpoints
from training import config as config_lib
from training import data as data_lib
from training import evaluation
from training import metrics as metrics_lib
from training import workdir as workdir_lib
from training import xla_cache
from training.workdir import TIMING_FILE, has_checkpoint

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
    workdir_lib.check_split_layout(pathlib.Path(train_config.workdir).expanduser(), train_config.split == "all")
    # One strategy per process: multi-worker collectives must be set up before any other TensorFlow work.
    strategy = make_strategy(train_config.strategy)
    if train_config.split != "all":
        return _train_and_evaluate_split(train_config, model_config, build_model, strategy)
    csv = train_config.csv_spec()
    num_splits = data_lib.num_splits(train_config.dataset, train_config.data_dir, csv)
    for k in range(num_splits):  # Fail on a missing split file (a bad table) now, not after hours of training.
        data_lib.check_available(train_config.dataset, train_config.data_dir, k, csv)
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
    workdir_lib.write_json(workdir / workdir_lib.METRICS_FILE, summary)
    logging.info("mean over %d splits: %s", num_splits, _format(summary))
    return summary


def _train_and_evaluate_split(config, model_config, build_model, strategy) -> dict:
    chief = is_chief(strategy)
    workdir = pathlib.Path(config.workdir).expanduser()
    if not chief:
        # Every worker saves checkpoints (the collectives need them all), but only the chief's are the run's.
        workdir = workdir / f".worker_{strategy.cluster_resolver.task_id}"
    dataset = data_lib.load(config.dataset, config.data_dir, config.split_index, config.csv_spec(),
                            config.input_tail)
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
    ood = evaluation.load_ood(config, dataset, getattr(model, "task", dataset.task)) if chief else None
    # Only now does the workdir take this run's settings: a run that could not start does not bind it.
    with workdir_lib.lock(workdir):
        return _run_in_workdir(config, model_config, strategy, workdir, dataset, model, ood)


def _run_in_workdir(config, model_config, strategy, workdir, dataset, model, ood) -> dict:
    """Trains, evaluates and exports a built model in its (locked) workdir.

    A run whose training is complete (its last checkpoint, or its closed-form fit, is in the workdir) trains
    nothing: a failed evaluation or export loses no training, and running the same command again evaluates and
    exports. metrics.json is written last, so it marks a run that trained, evaluated and exported.
    """
    closed_form = getattr(model, "closed_form", False)
    total_steps = None if closed_form else training_budget(config, dataset.num_train)[2]
    workdir_lib.prepare(workdir, config, model_config, total_steps)
    start = time.time()
    epochs_run = 0.0
    if closed_form:
        done = checkpoints.restore_closed_form(model, workdir)
        if not done:
            fit_closed_form(model, dataset, workdir)
    else:
        epochs_run = fit(model, dataset, config, strategy, workdir)
        done = epochs_run == 0
    train_seconds = time.time() - start
    if not is_chief(strategy):
        logging.info("worker %d done; the chief evaluates and exports", strategy.cluster_resolver.task_id)
        return {}
    if done:
        logging.info("training already complete %s; evaluating%s", checkpoints.trained_state(workdir, closed_form),
                     " and exporting" if config.export_base else "")
        timing = workdir_lib.previous_timing(workdir)
    else:
        timing = {"train/seconds": train_seconds}
        if epochs_run > 0:
            timing["train/seconds_per_epoch"] = train_seconds / epochs_run
        workdir_lib.write_json(workdir / TIMING_FILE, timing)
    with _kept_on_failure("evaluation", workdir, closed_form):
        metrics = evaluation.evaluate(model, dataset, config, workdir, ood=ood)
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
            export_path = workdir_lib.export_once(model, dataset, config, workdir)
    workdir_lib.write_json(workdir / workdir_lib.METRICS_FILE, metrics)
    if export_path is not None:
        metrics["export_path"] = str(export_path)
    return metrics


@contextlib.contextmanager
def _kept_on_failure(stage: str, workdir: pathlib.Path, closed_form: bool):
    """Logs, when `stage` (evaluation or export) raises, that the trained model is kept and how to finish the run."""
    try:
        yield
    except Exception:
        logging.error("%s failed after training; the trained model is kept %s: running the same command again "
                      "evaluates and exports it without training", stage,
                      checkpoints.trained_state(workdir, closed_form))
        raise


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


def _format(metrics: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if isinstance(v, (int, float)))


def fit_closed_form(model, dataset, workdir: pathlib.Path) -> list:
    """Fits a model with a closed-form or coordinate-ascent solution; logs its objective per iteration."""
    history = model.fit_closed_form(dataset.x_train, dataset.y_train)
    with tf.summary.create_file_writer(str(workdir / "train")).as_default():
        for i, value in enumerate(history):
            tf.summary.scalar("train/objective", value, step=i)
    checkpoints.save_closed_form(model, workdir)
    logging.info("closed-form fit: %d iterations, objective %.6f nats", len(history), history[-1])
    return history


def kl_weight(step, steps_per_epoch: int, warmup_epochs: float):
    """w_t = min(1, (t + 1) / (warmup_epochs * steps_per_epoch)); 1 without warm-up."""
    if warmup_epochs <= 0:
        return tf.constant(1.0)
    warmup_steps = max(1.0, warmup_epochs * steps_per_epoch)
    return tf.minimum(1.0, tf.cast(step + 1, tf.float32) / warmup_steps)


def training_budget(config, num_train: int) -> tuple:
    """(batch size, steps per epoch, total steps): the batch capped at the data, `--train_steps` if given, else
    `--epochs` of full batches."""
    batch_size = min(config.batch_size, num_train)
    steps_per_epoch = num_train // batch_size
    return batch_size, steps_per_epoch, config.train_steps or config.epochs * steps_per_epoch


def fit(model, dataset, config, strategy, workdir: pathlib.Path, on_epoch_end=None) -> float:
    """Minimizes the per-example negative ELBO with Adam; resumes from `<workdir>/checkpoints`.

    Args:
      on_epoch_end: optional `(epoch, means)` callback after each epoch, `means` the epoch's per-example nll, kl
        and loss (benchmarks time epochs with it).

    Returns:
      The epochs this call trained (fractional; 0 when a finished run is resumed).
    """
    batch_size, steps_per_epoch, total_steps = training_budget(config, dataset.num_train)
    if batch_size < config.batch_size:
        logging.warning("--batch_size=%d exceeds the %d training examples; using %d", config.batch_size,
                        dataset.num_train, batch_size)
    with strategy.scope():
        # The legacy (OptimizerV2) Adam updates each variable with one fused kernel; the newer tf_keras Adam
        # runs several elementwise ops per variable, several times slower on CPU for a network of ~1M parameters.
        optimizer = tf_keras.optimizers.legacy.Adam(_learning_rate(config, total_steps),
                                                    global_clipnorm=config.clip_norm or None)
        # Its slots now, not in the first step: a tf.function whose first trace creates variables is traced twice.
        optimizer._create_all_weights(model.trainable_variables)  # noqa: SLF001 - OptimizerV2 has no public build
    # Outside the strategy scope: one host-side counter, not one copy per replica.
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
    manager = checkpoints.resume(checkpoint, workdir / "checkpoints", step, total_steps)
    train_steps = _train_steps_function(model, optimizer, step, strategy, config, dataset.num_train, batch_size,
                                        steps_per_epoch)
    iterator = _distributed_batches(dataset, strategy, config, batch_size, int(step), steps_per_epoch, total_steps)
    first_step = int(step)
    bookkeeping = _Bookkeeping(config, workdir, manager, steps_per_epoch, total_steps,
                               isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy), on_epoch_end)
    while int(step) < total_steps:
        t0 = int(step)
        k = _steps_in_call(config, t0, steps_per_epoch, total_steps)
        bookkeeping.before_call(t0)
        out = {name: float(v) / k for name, v in train_steps(iterator, tf.constant(k)).items()}
        if not math.isfinite(out["loss"]):
            kept = (f"the last good checkpoint is in {workdir / 'checkpoints'}" if has_checkpoint(workdir)
                    else "no checkpoint was written, so the workdir can be reused with other flags")
            raise TrainingDivergedError(
                f"the loss became {out['loss']} within steps {t0 + 1}-{t0 + k} (epoch {t0 // steps_per_epoch + 1}); "
                f"{kept}; try a smaller --learning_rate")
        bookkeeping.after_call(out, k, int(step))
    bookkeeping.close()
    return (int(step) - first_step) / steps_per_epoch


def _learning_rate(config, total_steps: int):
    if config.lr_schedule == "cosine":
        return tf_keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=max(1, total_steps))
    return config.learning_rate


def _steps_in_call(config, t0: int, steps_per_epoch: int, total_steps: int) -> int:
    """Steps the next call of the training step runs from step `t0`: at most `--steps_per_execution`.

    A call never crosses a step that logs or checkpoints, nor an epoch end, except that epochs shorter than
    --steps_per_execution (full-batch training: one step each) run whole several to a call; their epoch-end work
    (summaries, log line, callback) is then done once per call, for the call's epochs together.
    """
    offset = t0 % steps_per_epoch
    span = steps_per_epoch - offset
    if offset == 0 and steps_per_epoch < config.steps_per_execution:
        span = config.steps_per_execution // steps_per_epoch * steps_per_epoch
    return min(config.steps_per_execution, span, total_steps - t0,
               *(every - t0 % every for every in (config.log_every_steps, config.checkpoint_every_steps) if every))


def _distributed_batches(dataset, strategy, config, batch_size: int, first_step: int, steps_per_epoch: int,
                         total_steps: int):
    """An iterator over the training batches from `first_step` on, split across the strategy's replicas."""
    num_epochs = -(-total_steps // steps_per_epoch)
    batches = dataset.training_batches(batch_size, config.seed, first_step, num_epochs).take(
        max(0, total_steps - first_step))
    options = tf.data.Options()
    # Every worker builds the same batches from the same seed and takes its share of each (not a file shard).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return iter(strategy.experimental_distribute_dataset(batches.with_options(options)))


def _train_steps_function(model, optimizer, step, strategy, config, num_train: int, batch_size: int,
                          steps_per_epoch: int):
    """`train_steps(iterator, num_steps) -> {loss, nll, kl}`: `num_steps` steps in one call (per-step Python and
    dispatch overhead is paid once per call), their per-example means summed; compiled by XLA with
    `--jit_compile`."""
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
        """The loop of `num_steps` steps; its per-example means summed in float64."""
        def body(i, totals):
            out = one_step(next_batch(i))
            return i + 1, {k: totals[k] + tf.cast(out[k], tf.float64) for k in totals}

        # A while loop, not a loop over `tf.range(num_steps)`: traced for XLA, the latter takes the range's length
        # as its maximum_iterations, a compile-time constant, so every call length would be compiled anew.
        totals = {k: tf.constant(0.0, tf.float64) for k in ("loss", "nll", "kl")}
        return tf.while_loop(lambda i, _: i < num_steps, body, (tf.constant(0, num_steps.dtype), totals))[1]

    # No autograph: the loops are written as while loops and the model code needs none (its conversion of
    # every called function, TFP's included, would cost more to trace than the step itself).
    @tf.function(jit_compile=True, autograph=False)
    def compiled_steps(batches, num_steps):
        """The first `num_steps` of `batches` [steps_per_execution, batch, ...] as ONE XLA computation: the
        loop, the sampling, the gradients and Adam fused, and no per-op dispatch (a small network's step is
        mostly that). Fixed shapes: one compilation for every call."""
        return run_steps(lambda i: tf.nest.map_structure(lambda t: t[i], batches), num_steps)

    @tf.function(autograph=False)
    def train_steps(iterator, num_steps):
        if not config.jit_compile:
            return run_steps(lambda i: next(iterator), num_steps)
        # The call's batches, taken from the same pipeline (the same batches as uncompiled) and stacked, padded
        # to --steps_per_execution so that every call has the shape of the first.
        spec = iterator.element_spec
        arrays = tf.nest.map_structure(lambda s: tf.TensorArray(s.dtype, size=num_steps, element_shape=s.shape),
                                       spec)
        arrays = tf.while_loop(
            lambda i, _: i < num_steps,
            lambda i, arrays: (i + 1, tf.nest.map_structure(lambda a, t: a.write(i, t), arrays, next(iterator))),
            (tf.constant(0, num_steps.dtype), arrays))[1]
        padding = config.steps_per_execution - num_steps
        batches = tf.nest.map_structure(
            lambda a: tf.pad(a.stack(), tf.concat([[[0, padding]], tf.zeros([a.element_shape.rank, 2], tf.int32)],
                                                  0)), arrays)
        return compiled_steps(batches, num_steps)

    return train_steps


class _Bookkeeping:
    """What the loop does between calls of the training step: the progress bar, TensorBoard summaries,
    checkpoints, and at each epoch end the log line and the `on_epoch_end` callback."""

    def __init__(self, config, workdir: pathlib.Path, manager, steps_per_epoch: int, total_steps: int,
                 multi_worker: bool, on_epoch_end):
        self._config = config
        self._manager = manager
        self._steps_per_epoch = steps_per_epoch
        self._total_steps = total_steps
        self._num_epochs = -(-total_steps // steps_per_epoch)
        # Workers of a cluster must save together, so they save at every epoch end, not by their own clocks.
        self._multi_worker = multi_worker
        self._on_epoch_end = on_epoch_end
        self._writer = tf.summary.create_file_writer(str(workdir / "train"))
        # A progress bar only where someone watches; logs and CI get one line per epoch, at most every few seconds.
        self._interactive = sys.stdout.isatty()
        self._sums, self._progress = _new_epoch_sums(), None
        self._last_save = self._last_log = time.time()

    def before_call(self, t0: int) -> None:
        if self._progress is None and self._interactive:
            self._progress = tf_keras.utils.Progbar(self._steps_per_epoch, stateful_metrics=["nll", "kl", "elbo"],
                                                    unit_name="step")
            self._progress.update(t0 % self._steps_per_epoch)

    def after_call(self, out: dict, k: int, t: int) -> None:
        """`out`: the call's per-step means; `k`: its steps; `t`: the step count after it."""
        config = self._config
        for name in out:
            self._sums[name] += out[name] * k
        self._sums["count"] += k
        if self._progress is not None:
            offset = (t - k) % self._steps_per_epoch
            self._progress.update(min(offset + k, self._steps_per_epoch),
                                  [("nll", out["nll"]), ("kl", out["kl"]), ("elbo", -(out["nll"] + out["kl"]))])
        if config.log_every_steps and t % config.log_every_steps == 0:
            _write_train_summaries(self._writer, out, t)
        if config.checkpoint_every_steps and t % config.checkpoint_every_steps == 0:
            self._manager.save(checkpoint_number=t)
        if t % self._steps_per_epoch == 0 or t == self._total_steps:  # The epoch (or the run) is complete.
            self._end_epoch(t)

    def _end_epoch(self, t: int) -> None:
        last = t == self._total_steps
        if last or self._multi_worker or time.time() - self._last_save >= MIN_SECONDS_BETWEEN_EPOCH_CHECKPOINTS:
            self._manager.save(checkpoint_number=t)
            self._last_save = time.time()
        means = {k: v / self._sums["count"] for k, v in self._sums.items() if k != "count"}
        if not self._config.log_every_steps:
            _write_train_summaries(self._writer, means, t)
        epoch = (t - 1) // self._steps_per_epoch  # the last epoch the call ran into
        if last or time.time() - self._last_log >= SECONDS_BETWEEN_EPOCH_LOGS:
            self._last_log = time.time()
            elbo = -(means["nll"] + means["kl"])
            logging.info("epoch %d/%d: elbo %.4f nats (%.4f bits) per example, nll %.4f, kl %.4f",
                         epoch + 1, self._num_epochs, elbo, objective.to_bits(elbo), means["nll"], means["kl"])
        if self._on_epoch_end is not None:
            self._on_epoch_end(epoch, means)
        self._sums, self._progress = _new_epoch_sums(), None

    def close(self) -> None:
        self._writer.flush()


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
