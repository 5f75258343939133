"""Evaluation of a trained model on every split, by its task, with the figures that go with the metrics.

Every family gets the metrics of its task, named `split/metric` as in `training/metrics.py`:
  * regression: the predictive summaries in original units; with 1-D inputs also `predictive_band.png`;
  * classification: accuracy, NLL, Brier, ECE, and on the test split the out-of-distribution AUROC against
    `--ood_dataset`; `reliability_diagram.png`;
  * density (the VAE): `split/rate` and `split/distortion` (nats per example; the ELBO is -(rate + distortion)),
    on the test split `test/nll`, the importance-weighted bound of Burda et al. (2016) with
    K = `eval_importance_samples`, and the VAE's figures (`plots.vae_figures`);
  * every model with `elbo_terms`: `split/elbo`, `split/expected_nll`, `split/kl`.
A model may add `extra_metrics(dataset) -> dict` of its own.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

from absl import logging
import numpy as np
import tensorflow as tf

from training import config as config_lib
from training import data as data_lib
from training import metrics as metrics_lib

# Evaluation streams of `metrics.batch_seeds` (`training/metrics.py` uses 1-3).
_BAND_STREAM, _IW_STREAM, _FIGURE_STREAM = 4, 5, 6
SECONDS_BETWEEN_PROGRESS_LOGS = 30.0


def evaluate(model, dataset, config, workdir: pathlib.Path | None = None, ood=None) -> dict:
    """All metrics of every split the dataset has (`train`, `valid`, `test`), plus figures in the workdir.

    Args:
      model: a trained model.
      dataset: the `training.data.Dataset` it was trained on.
      config: the `TrainConfig` (samples, seed, batch size, `train_eval_examples`, `ood_dataset`).
      workdir: where figures go; None: no figures.
      ood: the classifier's out-of-distribution data set, if already loaded (`load_ood`).

    Returns:
      `split/metric` -> value.
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
            metrics.update(_classifier_metrics(model, view, split, config, workdir, ood))
        if hasattr(model, "elbo_terms") and getattr(model, "supports_elbo", True):
            metrics.update(metrics_lib.elbo_metrics(model, view, split, config.seed, config.eval_batch_size,
                                                    num_train=dataset.num_train))
        if task == data_lib.DENSITY:
            metrics.update(_autoencoder_metrics(model, view, split, config, metrics, workdir))
    if task == data_lib.REGRESSION and dataset.input_shape == (1,) and workdir is not None:
        _plot_predictive_band(model, dataset, config, workdir)
    if hasattr(model, "extra_metrics"):
        metrics.update(model.extra_metrics(dataset))
    return metrics


def load_ood(config, dataset, task: str):
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


def _classifier_metrics(model, dataset, split, config, workdir, ood=None) -> dict:
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
                                                metrics_lib.batch_seeds(config.seed, _BAND_STREAM)(0))
    plots.predictive_band(dataset.x_scaler.invert(dataset.x_train), dataset.y_scaler.invert(dataset.y_train),
                          dataset.x_scaler.invert(grid), {k: np.asarray(v) for k, v in summary.items()
                                                          if k != "per_sample"},
                          workdir / "predictive_band.png", title=f"{dataset.name}: posterior predictive")


def _autoencoder_metrics(model, dataset, split: str, config, metrics: dict, workdir) -> dict:
    """A VAE's `split/rate` and `split/distortion`, read off the split's ELBO metrics (`metrics`: the rate is the
    KL, the distortion the expected NLL, from the same pass and seeds); on the test split also `test/nll` and the
    figures; on the train split `train/temperature` for the Gumbel-softmax latent."""
    out = {f"{split}/rate": metrics[f"{split}/kl"], f"{split}/distortion": metrics[f"{split}/expected_nll"]}
    if split == "train" and model.config.latent == "gumbel_softmax":
        out["train/temperature"] = float(model.temperature())
    if split != "test":
        return out
    x, _ = dataset.arrays(split)
    if model.config.eval_examples:
        x = x[metrics_lib.evenly_spaced(len(x), model.config.eval_examples)]
    out["test/nll"] = -float(np.mean(importance_weighted_log_likelihood(
        model, x, model.config.eval_importance_samples, config.seed, config.eval_batch_size)))
    out["test/nll_examples"] = len(x)
    out["test/nll_importance_samples"] = model.config.eval_importance_samples
    if workdir is not None:
        from training import plots
        plots.vae_figures(model, dataset, pathlib.Path(workdir), metrics_lib.batch_seeds(config.seed, _FIGURE_STREAM))
    return out


def importance_weighted_log_likelihood(model, x, num_samples: int, seed: int, batch_size: int) -> np.ndarray:
    """A VAE's bound L_K per example [N] for grey-level or binary images x [N, ...] (numpy), batch by batch, with a
    log line every half minute (K = 5000 over a test set takes a while)."""
    seeds = metrics_lib.batch_seeds(seed, _IW_STREAM)
    bound = tf.function(autograph=False, func=lambda xb, s: model.importance_weighted(model.observe(xb), num_samples, s)[
        "log_likelihood"], reduce_retracing=True)
    parts, last_log, start = [], time.time(), time.time()
    for b, begin in enumerate(range(0, len(x), batch_size)):
        parts.append(bound(tf.constant(x[begin:begin + batch_size]), seeds(b)).numpy())
        if time.time() - last_log > SECONDS_BETWEEN_PROGRESS_LOGS:
            last_log = time.time()
            logging.info("importance-weighted bound (K=%d): %d/%d examples, %.0fs", num_samples,
                         begin + len(parts[-1]), len(x), last_log - start)
    return np.concatenate(parts)
