"""Evaluation metrics, named `split/metric` and identical across families.

Regression, in the original units of the target (as the published UCI tables report them):
  * `rmse`: root mean squared error of the predictive mean;
  * `nll`: mean negative log predictive density, -(1/N) sum_n log (1/S) sum_s p(y_n | x_n, H_s);
  * `coverage_95`: fraction of targets inside the central 95% predictive interval (0.95 when calibrated);
  * `interval_width_95`: mean width of that interval; `stddev`, `epistemic_stddev`, `aleatoric_stddev`: means.
ELBO, for every model that defines `elbo_terms` (per example, nats; for regression shifted to original units):
  * `elbo`, `expected_nll`, `kl` (the KL each example carries: its own local KL plus 1/N of the global KL).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from models import predictive


def batch_seeds(seed: int, stream: int):
    """A function b -> int32 [2] stateless seed for batch b of evaluation stream `stream`."""
    base = tf.constant([seed, stream], tf.int32)
    return lambda b: tf.random.experimental.stateless_fold_in(base, b)


def evenly_spaced(size: int, count: int) -> np.ndarray:
    """`count` indices spread evenly over range(size): a subset that represents a split even when the split is
    sorted (binarized MNIST's test set is ordered by digit)."""
    return np.unique(np.linspace(0, size - 1, min(count, size)).round().astype(int))


_SEED_SPEC = tf.TensorSpec([2], tf.int32)


def _spec(array) -> tf.TensorSpec:
    """The spec of batches of `array`: any number of rows, its dtype and row shape."""
    return tf.TensorSpec([None] + list(np.shape(array)[1:]), tf.as_dtype(np.asarray(array[:1]).dtype))


def _per_batch(fn, num_examples: int, batch_size: int, input_signature):
    """`fn` compiled with `input_signature` (any batch size: one trace for every batch, the last included) when the
    split has several batches, where a graph runs them faster than eager; else `fn` itself, since one batch
    cannot repay tracing a TFP model."""
    if num_examples > batch_size:
        return tf.function(fn, input_signature=input_signature, autograph=False)
    return fn


def _batches(x, y, batch_size):
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size], None if y is None else y[start:start + batch_size]


def regression_predictive(model, dataset, x, num_samples: int, seed) -> dict:
    """Posterior predictive summary in original units for standardized inputs x [batch, features].

    Returns:
      The `models.predictive.regression_summary` dict plus `per_sample`, the per-sample predictive distribution.
    """
    shift = scale = None
    if dataset.y_scaler is not None:
        shift, scale = dataset.y_scaler.mean, dataset.y_scaler.std
    return predictive.regression_predictive(model, x, num_samples, seed, shift, scale)


def regression_metrics(model, dataset, split: str, num_samples: int, seed: int, batch_size: int) -> dict:
    """Predictive metrics of a regression model on one split; see the module docstring."""
    x, y = dataset.arrays(split)
    y_original = dataset.y_scaler.invert(y) if dataset.y_scaler is not None else y
    seeds = batch_seeds(seed, 1)

    def batch_sums(xb, yb, batch_seed):
        s = regression_predictive(model, dataset, xb, num_samples, batch_seed)
        yb = tf.cast(yb, s["mean"].dtype)
        out = {"sq_error": tf.reduce_sum(tf.square(s["mean"] - yb)),
               "log_density": tf.reduce_sum(predictive.log_predictive_density(s["per_sample"], yb)),
               "covered": tf.reduce_sum(tf.cast((yb >= s["lower"]) & (yb <= s["upper"]), tf.float64)),
               "width": tf.reduce_sum(s["upper"] - s["lower"])}
        out.update({k: tf.reduce_sum(s[k]) for k in ("stddev", "epistemic_stddev", "aleatoric_stddev")})
        return out

    batch_sums = _per_batch(batch_sums, len(x), batch_size, [_spec(x), _spec(y_original), _SEED_SPEC])
    sums = {}
    for b, (xb, yb) in enumerate(_batches(x, y_original, batch_size)):
        for k, v in batch_sums(xb, yb, seeds(b)).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    count = float(y_original.size)
    return {
        f"{split}/rmse": math.sqrt(sums["sq_error"] / count),
        f"{split}/nll": -sums["log_density"] / count,
        f"{split}/coverage_95": sums["covered"] / count,
        f"{split}/interval_width_95": sums["width"] / count,
        f"{split}/stddev": sums["stddev"] / count,
        f"{split}/epistemic_stddev": sums["epistemic_stddev"] / count,
        f"{split}/aleatoric_stddev": sums["aleatoric_stddev"] / count,
    }


def elbo_metrics(model, dataset, split: str, seed: int, batch_size: int, num_train: int | None = None) -> dict:
    """The per-example ELBO, expected NLL and KL of a split, Monte Carlo estimated with the model's sampler.

    `num_train` is N of the global KL's 1/N share (default: the dataset's training-set size); pass the full N
    when `dataset` is a subset view.
    """
    num_train = num_train or dataset.num_train
    x, y = dataset.arrays(split)
    seeds = batch_seeds(seed, 2)

    def batch_sums(batch, batch_seed):
        terms = model.elbo_terms(batch, batch_seed, training=False)
        return tf.reduce_sum(terms.nll), tf.reduce_sum(terms.kl_per_example(num_train))

    batch_spec = _spec(x) if y is None else (_spec(x), _spec(y))
    batch_sums = _per_batch(batch_sums, len(x), batch_size, [batch_spec, _SEED_SPEC])
    nll = kl = 0.0
    for b, (xb, yb) in enumerate(_batches(x, y, batch_size)):
        batch_nll, batch_kl = batch_sums(xb if yb is None else (xb, yb), seeds(b))
        nll += float(batch_nll)
        kl += float(batch_kl)
    count = float(len(x))
    # A density of standardized targets is std_y times the density in original units.
    shift = math.log(dataset.target_scale) if dataset.task == "regression" else 0.0
    nll, kl = nll / count + shift, kl / count
    return {f"{split}/elbo": -(nll + kl), f"{split}/expected_nll": nll, f"{split}/kl": kl}


def aggregate(per_split: list) -> dict:
    """Mean and standard error over runs (e.g. the 20 UCI splits): `m` and `m_stderr` for each numeric metric `m`
    (entries that are not numbers, such as a split's export path, are left out)."""
    keys = sorted(k for k in set().union(*per_split)
                  if all(isinstance(m[k], (int, float)) and not isinstance(m[k], bool) for m in per_split if k in m))
    out = {}
    for k in keys:
        values = np.array([m[k] for m in per_split if k in m], np.float64)
        out[k] = float(values.mean())
        out[f"{k}_stderr"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    out["num_splits"] = len(per_split)
    return out


ECE_BINS = 15


def classification_outputs(model, x, num_samples: int, seed: int, batch_size: int, y=None) -> dict:
    """Posterior predictive summaries of a classifier over inputs x [N, ...], as numpy arrays.

    Returns:
      `probabilities` [N, classes], `predictive_entropy`, `expected_entropy`, `mutual_information` [N], and, when
      labels y [N] are given, `log_likelihood` [N] = log (1/S) sum_s p(y_n | x_n, H_s).
    """
    seeds = batch_seeds(seed, 3)
    parts = {}
    for b, (xb, yb) in enumerate(_batches(x, y, batch_size)):
        per_sample = model.predictive(xb, num_samples, seeds(b))
        summary = predictive.classification_summary(per_sample)
        if yb is not None:
            summary["log_likelihood"] = predictive.log_predictive_density(per_sample, yb)
        for k, v in summary.items():
            parts.setdefault(k, []).append(np.asarray(v))
    return {k: np.concatenate(v) for k, v in parts.items()}


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width confidence bins (Guo et al. 2017)."""
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def auroc(negative: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counting one half."""
    negative = np.sort(np.asarray(negative, np.float64))
    positive = np.asarray(positive, np.float64)
    below = np.searchsorted(negative, positive, side="left")
    not_above = np.searchsorted(negative, positive, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(negative) * len(positive)))


def classification_metrics(outputs: dict, labels: np.ndarray, split: str) -> dict:
    """Accuracy, NLL, Brier score (sum over classes) and 15-bin ECE of `classification_outputs`."""
    probabilities = outputs["probabilities"]
    one_hot = np.eye(probabilities.shape[-1])[labels]
    return {
        f"{split}/accuracy": float((probabilities.argmax(-1) == labels).mean()),
        f"{split}/nll": float(-outputs["log_likelihood"].mean()),
        f"{split}/brier": float(((probabilities - one_hot) ** 2).sum(-1).mean()),
        f"{split}/ece": expected_calibration_error(probabilities, labels),
        f"{split}/predictive_entropy": float(outputs["predictive_entropy"].mean()),
        f"{split}/mutual_information": float(outputs["mutual_information"].mean()),
    }


def ood_metrics(in_distribution: dict, out_of_distribution: dict, split: str = "test") -> dict:
    """AUROC of telling out-of-distribution inputs (positives) from test inputs by two uncertainty scores."""
    return {
        f"{split}/ood_auroc_entropy": auroc(in_distribution["predictive_entropy"],
                                            out_of_distribution["predictive_entropy"]),
        f"{split}/ood_auroc_mutual_information": auroc(in_distribution["mutual_information"],
                                                       out_of_distribution["mutual_information"]),
    }
