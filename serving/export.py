"""SavedModel export: posterior predictive signatures, warmup requests, atomic versioned directories.

Layout (TensorFlow Serving's): `<export_base>/<version>/saved_model.pb`, `variables/`, `assets.extra/
tf_serving_warmup_requests`, with `<version>` a new integer for every export (one more than the largest present).
The SavedModel is written into a hidden temporary directory under `<export_base>` and renamed into place, so a
server polling the directory never sees half a version, and an existing version is never overwritten.

Regression signatures (every regression family exports the same ones; a client cannot tell the families apart):
  * `serving_default`: `x` float32 [batch, features] -> the posterior predictive from S samples, S fixed at export
    (`num_samples`) and a fixed seed, so the same request always gets the same answer.
  * `predict_mc`: `x`, `num_samples` int32 [], `seed` int32 [2] -> the same outputs from `num_samples` samples
    drawn with the stateless `seed` (same seed, same answer; another seed, another Monte Carlo draw).
  * `predict_moments` (mean-field dense networks only): the same inputs and outputs as `predict_mc`, by the
    moment-propagation approximation (`models.bayesian_dense`): two to four deterministic passes at small
    batches for any S (more where sampling the outputs dominates), for latency-bound deep networks;
    `predict_mc` stays the exact reference.
  * `regress` (single-output models): `inputs` string [batch] of serialized `tf.Example`s with a float feature
    `x` of length `features` -> `outputs` [batch, 1], the predictive mean, for TF Serving's Regress API.
  Outputs, all float32 [batch, outputs] in the target's original units: `mean`, `stddev`, `aleatoric_stddev`,
  `epistemic_stddev`, `lower`, `upper` (central 95% interval), computed by `models.predictive`; and how far the row
  lies from the training inputs: `input_distance` float32 [batch, 1] and `input_distance_feature` int64 [batch, 1]
  (below).
Classification signatures (every classifier family exports the same ones):
  * `serving_default`: `x` float32 [batch, ...input shape] -> `probabilities` [batch, classes] (the posterior
    predictive), `predicted_class` int64 [batch], `predictive_entropy`, `expected_entropy` (aleatoric) and
    `mutual_information` (epistemic) [batch], in nats; S and the seed fixed at export.
  * `predict_mc`: `x`, `num_samples`, `seed` -> the same outputs; `predict_moments` as for regression.
  * `classify`: serialized `tf.Example`s with a float feature `x` (the flattened input) -> `classes` string
    [batch, classes] and `scores` [batch, classes], for TF Serving's Classify API.
  A classifier of a table (standardized features) adds `input_distance` float32 [batch] and
  `input_distance_feature` int64 [batch] to its predict signatures; an image classifier does not (a maximum over
  pixels says nothing about whether an image is like the training images).
Input distance (regression, table classifiers): the largest absolute standardized deviation of the row's features
from the training rows,
    input_distance = max_j |x_j - mean_j| / s_j,      input_distance_feature = argmax_j of the same,
with mean_j and s_j = std_j the training split's statistics (those that standardize the model's inputs). A column
constant on the training rows (the scaler keeps std = 1 for it, so its input reaches the network unscaled) has no
spread to measure by; s_j is then float32's resolution at the column's value, eps * max(|mean_j|, 1): a request
equal to the training value reads 0 (at most 1 per float32 rounding step off it), any real change very far (a lower
bound on the true distance, which is infinite), and the answer is finite always (capped at float32's largest value).
`model_info` gives the same distance's percentiles over the training rows, so a client can tell a rare row from one
beyond every training row (extrapolating).
VAE signatures (`VAEServable`; images in [0, 1], float32 [batch, *image]; every output batch-first, float32):
  * `serving_default`: `x` -> `elbo`, `log_likelihood` [batch] (the importance-weighted bound L_K, K = S fixed at
    export, a fixed seed: an anomaly score, nats), `latent_mean`, `latent_stddev` [batch, *latent];
  * `encode`: `x`, `seed` -> `z` [batch, *latent], one draw from q(z | x), with its moments; the stick-breaking
    latent (`kumaraswamy`, z the K mixture weights) adds `fraction_a`, `fraction_b` [batch, K - 1], the
    Kumaraswamy(a, b) parameters of its stick fractions (its `latent_mean` is the expected weights);
  * `decode`: `z` -> `mean` [batch, *image] of p(x | z);
  * `reconstruct`: `x`, `num_samples`, `seed` -> `mean`, `stddev` [batch, *image] of the decoded means;
  * `sample`: `num_samples`, `seed` -> `images` [num_samples, *image] and their `z`;
  * `log_likelihood`: `x`, `num_samples`, `seed` -> `log_likelihood` (L_K, K = `num_samples`), `elbo` [batch].
Regression and table inputs are standardized inside the graph with the training statistics, tails compressed as in
training (`training.data.Standardizer`). Only core TensorFlow ops end up in the graph (TFP's distributions are
traced away), so stock TensorFlow Serving, which has no TFP, can serve it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import uuid

import numpy as np
import tensorflow as tf

from models import predictive
# WARMUP_FILE is part of the export layout: `export.WARMUP_FILE` names it for readers of an export.
from serving.warmup import WARMUP_FILE, write_warmup  # noqa: F401

PREDICTIVE_OUTPUTS = ("mean", "stddev", "aleatoric_stddev", "epistemic_stddev", "lower", "upper")
# How far a row is from the training inputs (`input_distance`); regression and table classifiers answer them.
INPUT_DISTANCE_OUTPUTS = ("input_distance", "input_distance_feature")
REGRESSION_OUTPUTS = PREDICTIVE_OUTPUTS + INPUT_DISTANCE_OUTPUTS
# The percentiles of the training rows' own input distances that model_info gives.
INPUT_DISTANCE_PERCENTILES = (50, 90, 99, 99.9, 100)
# Outputs are float32: the interval search stops once its next step is below a quarter of float32's epsilon,
# relative (the float64 search would take one more step to reach float64's).
OUTPUT_RESOLUTION = float(np.finfo(np.float32).eps) / 4
CLASSIFICATION_OUTPUTS = ("probabilities", "predicted_class", "predictive_entropy", "expected_entropy",
                          "mutual_information")
# The VAE's signatures and the outputs of each.
VAE_SIGNATURE_OUTPUTS = {
    "serving_default": ("elbo", "log_likelihood", "latent_mean", "latent_stddev"),
    "encode": ("z", "latent_mean", "latent_stddev"),
    "decode": ("mean",),
    "reconstruct": ("mean", "stddev"),
    "sample": ("images", "z"),
    "log_likelihood": ("log_likelihood", "elbo"),
}
# Outputs a latent adds to those signatures.
VAE_LATENT_OUTPUTS = {"kumaraswamy": {"encode": ("fraction_a", "fraction_b")}}


def vae_signature_outputs(latent: str) -> dict:
    """The outputs of each VAE signature for a latent: `VAE_SIGNATURE_OUTPUTS` and the latent's own."""
    extra = VAE_LATENT_OUTPUTS.get(latent, {})
    return {name: outputs + extra.get(name, ()) for name, outputs in VAE_SIGNATURE_OUTPUTS.items()}

MODEL_INFO_FILE = "vizoo_model_info.json"
EXAMPLE_FEATURE = "x"
_VERSION = re.compile(r"^\d+$")


def checked_shape(x, example_shape, name: str):
    """x, once its shape is [batch, *example_shape]; else INVALID_ARGUMENT naming both shapes, e.g.
    "x has shape [1, 6]; the model takes [batch, 8]".

    A server feeds a request's tensor to the signature's placeholder by name, which checks no shape (TF Serving's
    session does not either), so without this a wrong width fails deep in the graph with TensorFlow's text about
    some node. Core ops only: stock TF Serving answers the same.
    """
    rank = len(example_shape) + 1
    received = tf.shape(x)
    # Pad before slicing, so a tensor of another rank compares (and fails) without a shape error of its own.
    padded = tf.concat([received, tf.fill([rank], -1)], 0)[:rank]
    ok = tf.logical_and(tf.equal(tf.size(received), rank),
                        tf.reduce_all(tf.equal(padded[1:], tf.constant(example_shape, tf.int32))))

    def refuse():  # the message is built only for a request that fails
        message = tf.strings.join([f"{name} has shape [", tf.strings.reduce_join(tf.strings.as_string(received),
                                                                                separator=", "),
                                   f"]; the model takes [batch, {', '.join(map(str, example_shape))}]"])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.identity(x)

    return tf.cond(ok, lambda: tf.identity(x), refuse)


class InputScaler:
    """The training split's `Standardizer` in the graph: x float32 [batch, features] in original units -> the
    model's inputs tail((x - mean) / std) [batch, features] (the tail compression only when the scaler has one)."""

    def __init__(self, scaler):
        self.mean = tf.constant(scaler.mean, tf.float32)
        self.std = tf.constant(scaler.std, tf.float32)
        self.tail = None if getattr(scaler, "tail", None) is None else float(scaler.tail)

    def __call__(self, x):
        z = (x - self.mean) / self.std
        if self.tail is None:
            return z
        a = tf.abs(z)
        return tf.sign(z) * (tf.minimum(a, self.tail) + tf.math.log1p(tf.maximum(a - self.tail, 0.0)))


class InputDistance:
    """input_distance = max_j |x_j - mean_j| / s_j over a row's features, and the argmax j (module docstring).

    Args:
      scaler: the training split's `Standardizer` (mean, std; std = 1 where the column was constant).
      x_train: the training rows as the model saw them, standardized, float32 [N, features].
    """

    def __init__(self, scaler, x_train):
        mean = np.asarray(scaler.mean, np.float64)
        std = np.asarray(scaler.std, np.float64)
        # The scaler sets a constant column's std to 1, and the columns it kept have standardized training values
        # of spread 1: a column of std 1 whose standardized values barely spread was constant.
        if getattr(scaler, "constant", None) is not None:
            self.constant = np.asarray(scaler.constant, bool)
        else:
            spread = np.asarray(x_train).std(axis=0) if len(x_train) else np.ones_like(std)
            self.constant = (std == 1.0) & (spread < 0.5)
        floor = float(np.finfo(np.float32).eps) * np.maximum(np.abs(mean), 1.0)
        self.mean = tf.constant(mean, tf.float64)
        self.scale = tf.constant(np.where(self.constant, floor, std), tf.float64)

    def __call__(self, x):
        """x float32 [batch, features] in original units -> (distance float32 [batch], feature int64 [batch])."""
        # In float64, so that neither x - mean nor the division by a constant column's tiny scale overflows.
        z = tf.abs(tf.cast(x, tf.float64) - self.mean) / self.scale
        distance = tf.minimum(tf.reduce_max(z, axis=-1), float(np.finfo(np.float32).max))
        return tf.cast(distance, tf.float32), tf.argmax(z, axis=-1)

    def info(self, train_rows) -> dict:
        """model_info's `input_distance`: the measure, the constant columns (indices into `features`) and the
        percentiles of the distances of `train_rows` (the training rows in original units, [N, features])."""
        percentiles = None
        if len(train_rows):
            distances = self(tf.constant(train_rows, tf.float32))[0].numpy().astype(np.float64)
            percentiles = {f"{q:g}": float(v) for q, v in
                           zip(INPUT_DISTANCE_PERCENTILES, np.percentile(distances, INPUT_DISTANCE_PERCENTILES))}
        return {
            "outputs": list(INPUT_DISTANCE_OUTPUTS),
            "definition": "max_j |x_j - mean_j| / std_j over the features (input_distance_feature: the argmax j), "
                          "with the training split's mean and std; a column constant in training has float32's "
                          "resolution at its value, eps * max(|mean_j|, 1), for std_j",
            "constant_features": [int(j) for j in np.flatnonzero(self.constant)],
            # Beyond "100" no training row was as far: the row is extrapolating.
            "training_percentiles": percentiles,
        }


class PredictiveServable(tf.Module):
    """What every exported family shares: the model's variables, `serving_default` with S and the seed fixed at
    export, `predict_mc` with both as inputs, a tf.Example signature, and warmup requests.

    Subclasses define `_summary(x, num_samples, seed, predictive_fn=None) -> dict of [batch, ...] tensors`
    (`predictive_fn` defaults to `model.predictive`) and `_example_signature`.

    Args:
      model: has `predictive(x, num_samples, seed)` returning per-sample distributions [S, batch, ...] for
        inputs x as the model saw them in training.
      dataset: the `training.data.Dataset` the model was fitted on (input shape, standardization statistics).
      num_samples: S of `serving_default`.
      seed: the seed of `serving_default`.
    """

    def __init__(self, model, dataset, num_samples: int, seed: int, name: str):
        super().__init__(name=name)
        self.model = model
        self._example_shape = list(dataset.input_shape)
        self._num_samples = tf.constant(num_samples, tf.int32)
        self._seed = tf.constant([seed, 0x5EED], tf.int32)
        x_spec = tf.TensorSpec([None] + self._example_shape, tf.float32, name="x")
        self.serving_default = tf.function(self._serving_default, autograph=False, input_signature=[x_spec])
        mc_specs = [x_spec, tf.TensorSpec([], tf.int32, name="num_samples"), tf.TensorSpec([2], tf.int32, name="seed")]
        self.predict_mc = tf.function(self._predict_mc, autograph=False, input_signature=mc_specs)
        self.has_moments = bool(getattr(model, "supports_moments", False))
        if self.has_moments:
            self.predict_moments = tf.function(self._predict_moments, autograph=False, input_signature=mc_specs)
        self.from_examples = tf.function(
            self._from_examples, autograph=False, input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])

    def _checked(self, x, num_samples):
        """(x, num_samples), usable only after both are checked (so a bad request fails with the check's message)."""
        x = checked_shape(x, self._example_shape, "x")
        checks = [predictive.assert_all_finite(x, "x must be finite"),
                  tf.debugging.assert_positive(num_samples, "num_samples must be positive")]
        with tf.control_dependencies(checks):
            return tf.identity(x), tf.identity(num_samples)

    def _serving_default(self, x):
        # A call of `predict_mc`'s graph (inlined when the signature runs): one trace of the predictive, not two.
        return self.predict_mc(x, self._num_samples, self._seed)

    def _predict_mc(self, x, num_samples, seed):
        return self._summary(x, num_samples, seed)

    def _predict_moments(self, x, num_samples, seed):
        return self._summary(x, num_samples, seed, self.model.moment_predictive)

    def _parse_examples(self, inputs):
        """Serialized tf.Examples with a float feature `x` of prod(example shape) values -> x [batch, ...]."""
        size = 1
        for d in self._example_shape:
            size *= d
        parsed = tf.io.parse_example(inputs, {EXAMPLE_FEATURE: tf.io.FixedLenFeature([size], tf.float32)})
        return tf.reshape(parsed[EXAMPLE_FEATURE], [-1] + self._example_shape)

    def signatures(self) -> dict:
        sigs = {"serving_default": self.serving_default, "predict_mc": self.predict_mc,
                self.example_signature_name: self.from_examples}
        if self.has_moments:
            sigs["predict_moments"] = self.predict_moments
        return sigs

    def warmup_requests(self, model_name: str = "model"):
        """PredictRequests TF Serving replays at load (`--enable_model_warmup`): one per predict signature."""
        x = {"x": tf.make_tensor_proto(self._warmup_input(), tf.float32)}
        mc = {**x, "num_samples": tf.make_tensor_proto(8, tf.int32), "seed": tf.make_tensor_proto([0, 0], tf.int32)}
        return [_predict_request(model_name, name, inputs) for name, inputs in
                [("serving_default", x), ("predict_mc", mc)] + ([("predict_moments", mc)] if self.has_moments else [])]

    def _warmup_input(self):
        return np.zeros([1] + self._example_shape, np.float32)


class RegressionServable(PredictiveServable):
    """Regression signatures; inputs are standardized in the graph and outputs come in original units."""

    example_signature_name = "regress"

    def __init__(self, model, dataset, num_samples: int, seed: int):
        self._x_scaler = InputScaler(dataset.x_scaler)
        self._y_mean = tf.constant(dataset.y_scaler.mean, tf.float32)
        self._y_std = tf.constant(dataset.y_scaler.std, tf.float32)
        self.input_distance = InputDistance(dataset.x_scaler, dataset.x_train)
        self.num_outputs = dataset.output_dim
        super().__init__(model, dataset, num_samples, seed, name="regression_servable")

    def _summary(self, x, num_samples, seed, predictive_fn=None) -> dict:
        x, num_samples = self._checked(x, num_samples)
        summary = predictive.regression_predictive(self.model, self._x_scaler(x), num_samples, seed,
                                                   self._y_mean, self._y_std, predictive_fn,
                                                   resolution=OUTPUT_RESOLUTION)
        out = {k: tf.cast(summary[k], tf.float32) for k in PREDICTIVE_OUTPUTS}
        distance, feature = self.input_distance(x)
        out.update(input_distance=distance[:, None], input_distance_feature=feature[:, None])
        return out

    def _from_examples(self, inputs):
        """TF Serving's Regress API: one value per example, the predictive mean."""
        return {"outputs": self.serving_default(self._parse_examples(inputs))["mean"]}

    def signatures(self) -> dict:
        sigs = super().signatures()
        if self.num_outputs != 1:  # Regress answers one number per example.
            del sigs[self.example_signature_name]
        return sigs

    def _warmup_input(self):
        return self._x_scaler.mean.numpy()[None, :]


class ClassificationServable(PredictiveServable):
    """Classification signatures: mean class probabilities and the entropy decomposition of their uncertainty."""

    example_signature_name = "classify"

    def __init__(self, model, dataset, num_samples: int, seed: int):
        self.num_classes = dataset.output_dim
        # A table's features were standardized for training (images were not); its labels have names.
        scaler = dataset.x_scaler
        self._x_scaler = None if scaler is None else InputScaler(scaler)
        self.input_distance = None if scaler is None else InputDistance(scaler, dataset.x_train)
        names = dataset.class_names or [str(k) for k in range(self.num_classes)]
        self._class_names = tf.constant(list(names), tf.string)
        super().__init__(model, dataset, num_samples, seed, name="classification_servable")

    def _summary(self, x, num_samples, seed, predictive_fn=None) -> dict:
        x, num_samples = self._checked(x, num_samples)
        distance = None
        if self._x_scaler is not None:
            distance = self.input_distance(x)
            x = self._x_scaler(x)
        summary = predictive.classification_summary((predictive_fn or self.model.predictive)(x, num_samples, seed))
        out = {k: tf.cast(v, tf.int64 if k == "predicted_class" else tf.float32) for k, v in summary.items()}
        if distance is not None:
            out.update(zip(INPUT_DISTANCE_OUTPUTS, distance))
        return out

    def _from_examples(self, inputs):
        """TF Serving's Classify API: `classes` (the class names: a table's labels, else the indices as strings)
        and `scores` [batch, classes]."""
        scores = self.serving_default(self._parse_examples(inputs))["probabilities"]
        return {"classes": tf.tile(self._class_names[None, :], [tf.shape(scores)[0], 1]), "scores": scores}

    def _warmup_input(self):
        return super()._warmup_input() if self._x_scaler is None else self._x_scaler.mean.numpy()[None, :]


class VAEServable(tf.Module):
    """The VAE's SavedModel signatures (`VAE_SIGNATURE_OUTPUTS`, and the module docstring); only core TF ops are
    traced.

    `serving_default`'s L_K uses K = `num_samples` fixed at export and a fixed seed. `reconstruct` gives the spread
    of the decoded means over `num_samples` draws z_s ~ q(z | x), the model's uncertainty about its
    reconstruction, decoded a chunk of draws at a time (`reconstruction_moments`), so memory stays bounded for any
    S. A model trained with dynamic binarization binarizes inputs with the fixed evaluation binarization inside the
    graph (a pure function of the image, so answers stay deterministic). The ELBO is
    (1/K) sum_k log p(x | z_k) - KL with the K draws of the bound.

    Args:
      model: a `models.vae.VariationalAutoencoder`.
      dataset: unused (the example shape is the model's own); for the servables' common signature.
      num_samples: K of `serving_default`.
      seed: the seed of `serving_default`.
    """

    def __init__(self, model, dataset, num_samples: int, seed: int):
        del dataset
        super().__init__(name="vae_servable")
        self.model = model
        self._example_shape = list(model.example_shape)
        self._latent_shape = list(model.latent_shape)
        self._num_samples = tf.constant(num_samples, tf.int32)
        self._seed = tf.constant([seed, 0x5EED], tf.int32)
        x = tf.TensorSpec([None] + self._example_shape, tf.float32, name="x")
        z = tf.TensorSpec([None] + self._latent_shape, tf.float32, name="z")
        n = tf.TensorSpec([], tf.int32, name="num_samples")
        s = tf.TensorSpec([2], tf.int32, name="seed")
        self.serving_default = tf.function(self._serving_default, autograph=False, input_signature=[x])
        self.encode = tf.function(self._encode, autograph=False, input_signature=[x, s])
        self.decode = tf.function(self._decode, autograph=False, input_signature=[z])
        self.reconstruct = tf.function(self._reconstruct, autograph=False, input_signature=[x, n, s])
        self.sample = tf.function(self._sample, autograph=False, input_signature=[n, s])
        self.log_likelihood = tf.function(self._log_likelihood, autograph=False, input_signature=[x, n, s])

    def signatures(self) -> dict:
        return {name: getattr(self, name) for name in VAE_SIGNATURE_OUTPUTS}

    def _observed(self, x):
        x = predictive.assert_all_finite(checked_shape(x, self._example_shape, "x"), "x must be finite")
        with tf.control_dependencies([
                tf.debugging.assert_greater_equal(x, 0.0, message="x must be in [0, 1]"),
                tf.debugging.assert_less_equal(x, 1.0, message="x must be in [0, 1]")]):
            return self.model.observe(tf.identity(x))

    def _moments(self, q) -> dict:
        return {"latent_mean": q.mean(), "latent_stddev": q.stddev()}

    def _bound(self, x, num_samples, seed) -> dict:
        x = self._observed(x)
        out = self.model.importance_weighted(x, num_samples, seed, shared_noise=True)  # checks num_samples > 0
        return {"log_likelihood": out["log_likelihood"],
                "elbo": out["expected_log_likelihood"] - out["rate"]}

    def _serving_default(self, x):
        out = self._bound(x, self._num_samples, self._seed)
        out.update(self._moments(self.model.encode(self._observed(x))))
        return out

    def _encode(self, x, seed):
        q = self.model.encode(self._observed(x))
        out = {"z": self.model.sample_latents(q, 1, seed)[0], **self._moments(q)}
        if self.model.config.latent == "kumaraswamy":
            out.update(fraction_a=q.concentration1, fraction_b=q.concentration0)
        return out

    def _decode(self, z):
        z = predictive.assert_all_finite(checked_shape(z, self._latent_shape, "z"), "z must be finite")
        return {"mean": self.model.decode(z).mean()}

    def _reconstruct(self, x, num_samples, seed):
        x = self._observed(x)
        # Spread of the decoded means across z ~ q(z|x) (the epistemic part in models.predictive's terms); the
        # pixel noise of p(x|z) itself is left out: it says what a sample looks like, not how sure the model is.
        return self.model.reconstruction_moments(x, num_samples, seed)  # checks num_samples > 0

    def _sample(self, num_samples, seed):
        with tf.control_dependencies([tf.debugging.assert_positive(num_samples, "num_samples must be positive")]):
            z = self.model.prior.sample(tf.identity(num_samples), seed=seed)
        return {"images": self.model.decode(z).mean(), "z": z}

    def _log_likelihood(self, x, num_samples, seed):
        return self._bound(x, num_samples, seed)

    def warmup_requests(self, model_name: str = "model"):
        """PredictRequests TF Serving replays at load (`--enable_model_warmup`): one per signature."""
        inputs = {"x": tf.make_tensor_proto(np.zeros([1] + self._example_shape, np.float32)),
                  "num_samples": tf.make_tensor_proto(2, tf.int32), "seed": tf.make_tensor_proto([0, 0], tf.int32),
                  "z": tf.make_tensor_proto(np.zeros([1] + self._latent_shape, np.float32))}
        return [_predict_request(model_name, name, {spec.name: inputs[spec.name] for spec in function.input_signature})
                for name, function in self.signatures().items()]


def _predict_request(model_name: str, signature_name: str, inputs: dict):
    """A PredictRequest of `inputs` (name -> TensorProto) for one signature."""
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


SERVABLES = {"regression": RegressionServable, "classification": ClassificationServable, "density": VAEServable}


def build_servable(model, dataset, num_samples: int, seed: int) -> tf.Module:
    """The servable of a fitted model's task (the model's own `task`, else its data set's: a VAE of labelled MNIST
    is a density model); every family of a task exports the same signatures."""
    task = getattr(model, "task", dataset.task)
    if task not in SERVABLES:
        raise ValueError(f"no export for task {task!r}")
    return SERVABLES[task](model, dataset, num_samples, seed)


def existing_versions(export_base: str | os.PathLike) -> list:
    """The integer versions present under `export_base`, ascending."""
    base = pathlib.Path(export_base)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and _VERSION.match(p.name))


def save_versioned(servable: tf.Module, export_base: str | os.PathLike, signatures: dict,
                   warmup_requests=(), extra_files=None) -> pathlib.Path:
    """Saves `servable` as a new version under `export_base`, atomically; returns the version directory."""
    base = pathlib.Path(export_base).expanduser()
    base.mkdir(parents=True, exist_ok=True)
    # Made like any directory of the user's (0777 less the umask): mkdtemp's 0700 survived the rename, and a TF
    # Serving running as another user (a shared volume, a container) could not read the version.
    tmp = base / f".tmp-export-{os.getpid()}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        tf.saved_model.save(servable, str(tmp), signatures=signatures)
        if warmup_requests:
            write_warmup(tmp, warmup_requests)
        for name, text in (extra_files or {}).items():
            (tmp / "assets.extra").mkdir(exist_ok=True)
            (tmp / "assets.extra" / name).write_text(text)
        while True:
            taken = [int(p.name) for p in base.iterdir() if _VERSION.match(p.name)]
            target = base / str(max(taken, default=0) + 1)
            try:
                # rename() is atomic. If another exporter took this number in the meantime, it fails (the target
                # is a non-empty directory) and the next number is tried; nothing is ever replaced.
                os.rename(tmp, target)
                return target
            except OSError:
                if not target.exists():
                    raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def model_info(model, dataset, num_samples: int, seed: int) -> dict:
    """The model card: what a client can learn about an export besides its signatures."""
    config = getattr(model, "config", None)
    return {
        "family": type(model).__module__.rsplit(".", 1)[-1],
        "model": type(model).__name__,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None,
        "dataset": dataset.name,
        "task": getattr(model, "task", dataset.task),
        "input_shape": list(dataset.input_shape),
        "serving_default_num_samples": int(num_samples),
        "serving_default_seed": int(seed),
        "variational_parameters": int(model.num_variational_parameters())
        if hasattr(model, "num_variational_parameters") else None,
        # A table's column names (features in the order of x's last axis) and its classes in index order.
        "features": list(dataset.feature_names) if dataset.feature_names else None,
        "target": dataset.target_name,
        "classes": list(dataset.class_names) if dataset.class_names else None,
        "input_distance": _input_distance_info(model, dataset),
        "input_standardization": _input_standardization_info(dataset),
    }


def _input_standardization_info(dataset) -> dict | None:
    """model_info's `input_standardization`: how the signatures map a table's features to the model's inputs."""
    scaler = dataset.x_scaler
    if scaler is None:
        return None
    tail = getattr(scaler, "tail", None)
    return {
        "definition": "z_j = (x_j - mean_j) / std_j with the training split's mean and std" + (
            "" if tail is None else f"; beyond {tail:g} sd compressed: sign(z) * ({tail:g} + log1p(|z| - {tail:g}))"),
        "tail_sd": None if tail is None else float(tail),
    }


def _input_distance_info(model, dataset) -> dict | None:
    """model_info's `input_distance` for a model whose signatures answer it (regression, table classifiers)."""
    task = getattr(model, "task", dataset.task)
    if task not in ("regression", "classification") or dataset.x_scaler is None:
        return None
    scaler = dataset.x_scaler
    return InputDistance(scaler, dataset.x_train).info(scaler.invert(dataset.x_train))


def export(model, dataset, export_base: str | os.PathLike, num_samples: int = 100, seed: int = 0) -> pathlib.Path:
    """Exports a fitted model as a new SavedModel version under `export_base`; returns its directory.

    Besides the family's signatures, every export carries `model_info` (no inputs -> `info`, a JSON string: family,
    configuration, data set, S and seed of `serving_default`, and `input_distance`'s definition and the training
    rows' percentiles of it where the signatures answer it) and the same JSON in `assets.extra/` (MODEL_INFO_FILE).
    """
    # A model that can precompute what its signatures would derive from its parameters on every request (the
    # mean-field networks' sigma^2 = softplus(rho)^2, the linear model's quadrature nodes over q(beta)) does so
    # for the export; the servable keeps the result.
    snapshot = getattr(model, "serving_snapshot", contextlib.nullcontext)
    with snapshot() as precomputed:
        servable = build_servable(model, dataset, num_samples, seed)
        if precomputed is not None:
            servable.precomputed = precomputed
        info = json.dumps(model_info(model, dataset, num_samples, seed), sort_keys=True)
        servable.model_info = tf.function(lambda: {"info": tf.constant(info)}, autograph=False, input_signature=[])
        signatures = dict(servable.signatures(), model_info=servable.model_info)
        return save_versioned(servable, export_base, signatures, servable.warmup_requests(),
                              extra_files={MODEL_INFO_FILE: info})
