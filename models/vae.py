"""Variational autoencoders: amortized inference with Gaussian, full-covariance, Gumbel-softmax and stick-breaking
latents.

Model (Kingma and Welling 2014; Rezende, Mohamed and Wierstra 2014). Each example x has its own latent z,

    p(z) = N(0, I)  (or a uniform categorical, below),     p(x | z) = decoder_theta(z),

and one encoder network outputs the variational distribution of every example at once (amortized inference):
q_phi(z | x) is a whole family of distributions indexed by x, learned jointly with the decoder by maximizing

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))  <=  log p(x),

i.e. minimizing `ElboTerms(nll=E_q[-log p(x|z)], local_kl=KL(q(z|x) || p(z)))` per example: the KL is LOCAL (one per
example, averaged like the likelihood; see `models/objective.py`). Information-theoretic reading (Alemi et al.
2018, "Fixing a Broken ELBO"): the KL is the RATE, the nats the encoder spends describing x in z, and the expected
reconstruction NLL is the DISTORTION; -ELBO = rate + distortion. The beta-VAE objective (Higgins et al. 2017)
distortion + beta * rate moves along the rate-distortion curve: `Config.beta` is the ElboTerms' `kl_scale` in
training only (the shared loop's KL warm-up multiplies it further), while evaluation reports the true rate and ELBO.

Latents (`Config.latent`), each sampled by reparameterization so gradients flow through z:
  * `normal`: q(z | x) = N(mu, diag(sigma^2)), z = mu + sigma * eps, eps ~ N(0, I); KL in closed form,
        KL = (1/2) sum_d (mu_d^2 + sigma_d^2 - 1 - log sigma_d^2).
  * `full_covariance`: q(z | x) = N(mu, L L^T) with L lower triangular (positive diagonal), z = mu + L eps; KL in
    closed form, KL = (1/2) (tr(L L^T) + mu^T mu - D - 2 sum_d log L_dd).
  * `gumbel_softmax`: M independent categorical variables of K categories, z in {one-hot}^M,
        q(z | x) = prod_m Cat(z_m | softmax(l_m(x))),    p(z) = prod_m Cat(z_m | 1/K).
    Training replaces a one-hot draw by the Concrete / Gumbel-softmax relaxation (Jang, Gu and Poole 2017; Maddison,
    Mnih and Teh 2017): z_mk = softmax_k((l_mk + g_mk) / tau), g ~ Gumbel(0, 1), a point of the simplex that
    becomes one-hot as the temperature tau -> 0 (`tfd.RelaxedOneHotCategorical`). The rate is the categorical KL
    of the logits in closed form, KL = sum_m sum_k q_mk log(K q_mk) (Jang et al.'s choice): it is the exact rate of
    the discrete code, it has no variance, and its gradient is exact, whereas a Monte Carlo KL at a relaxed sample
    needs a relaxed prior and then bounds the likelihood of a different (continuous) model. Evaluation uses hard
    one-hot draws from q, so every reported ELBO and importance-weighted bound is a bound on the discrete model.
    Temperature schedule (Jang et al.): tau_t = max(tau_min, tau_0 exp(-r t)), t the number of training steps the
    model has taken. The model counts them itself in a non-trainable variable `step` (incremented by
    `elbo_terms(..., training=True)`, read before the increment), which is checkpointed with the model's weights,
    so a run resumed from a checkpoint continues the schedule exactly where it stopped.
  * `kumaraswamy`: the stick-breaking VAE (Nalisnick and Smyth 2017). z = pi, K = `latent_dim` mixture weights in
    the simplex broken from K - 1 fractions, pi_k = v_k prod_{j<k} (1 - v_j), the last weight the remainder;
        q(v | x) = prod_k Kumaraswamy(v_k | a_k(x), b_k(x)),    p(v) = prod_k Beta(v_k | 1, alpha)  (truncated GEM),
    a, b = softplus + `CONCENTRATION_FLOOR`, started at the prior (a = 1, b = alpha). Fractions are drawn by the
    inverse CDF, v = (1 - (1 - u)^(1/b))^(1/a), u ~ U(0, 1), so they are reparameterized; the rate is the sum of
    the K - 1 fractions' closed-form KLs(Kumaraswamy || Beta) and importance weights use the fractions' densities
    (the Jacobian of v -> pi cancels between q and p). `models/stick_breaking.py` has the maths; serving's prior
    draws are the same inverse CDF with a = 1, b = alpha (Beta(1, alpha) = Kumaraswamy(1, alpha)), core ops only.

Likelihoods (`Config.likelihood`): `bernoulli` over binary pixels, logits from the decoder; `continuous_bernoulli`
(Loaiza-Ganem and Cunningham 2019), the normalized density on [0, 1] for grey levels,
    p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x),   C(lambda) = 2 atanh(1 - 2 lambda) / (1 - 2 lambda).
Binarization: Bernoulli models of grey-level data (`--dataset=mnist`) binarize dynamically, x_bin ~ Bernoulli(x),
a new draw every training step from the step's stateless seed (Salakhutdinov and Murray 2008; Burda et al.
2015), so resumed runs are exact. Evaluation and serving use ONE fixed binarization, `fixed_binarization`: pixel j
of image x is 1[u_j < x_j] with u drawn from a stateless seed that is a hash of the image itself, so an image's
binarization does not depend on its batch, its position or the process. Likewise serving draws the latents with
noise shared by the batch (`sample_latents`: exact draws from each q(z | x)), so an image's answers depend on it
and the seed only; training and data-set evaluation draw independent noise per image. Already-binary data
(`binarized_mnist`, Larochelle's fixed binarization) is used as it is.

Networks (encoder and decoder are `tf_keras` layers ending in TFP distribution layers: `tfp.layers`
IndependentNormal, MultivariateNormalTriL, DistributionLambda; pixels are `LogitBernoulli`): `mlp`, dense layers of
`hidden_units` (784-200-200-50 with tanh as in Burda et al. 2015 by default, the decoder mirrored), or `conv`, two
3x3 stride-2 convolutions (32, 64 filters) and their transposes.

Evaluation: the importance-weighted bound (Burda, Grosse and Salakhutdinov 2016),

    log p(x) >= L_K(x) = E[log (1/K) sum_k w_k],   w_k = p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x),

with L_1 = ELBO <= L_K <= L_{K+1} -> log p(x) as K grows; -L_K is the test NLL of the published tables. It is
computed by `importance_weighted` in chunks of samples under a fixed activation budget, combining chunks with a
running log-sum-exp, so memory stays bounded for any K (5000 in the benchmark).

Training on L_K (the IWAE of Burda et al. 2016): `Config.train_importance_samples` K > 1 makes the training loss
-L_K from the same routine, K draws per example, reparameterized (the categorical latent's are Concrete draws
weighed by the relaxed densities, a bound on the relaxed model as in Maddison et al. 2017); K = 1 is the ELBO
above, closed-form rate included. See `ImportanceWeightedTerms` for what the loop logs and for beta and warm-up.

This module holds the model and its maths. Its evaluation (rate, distortion and the test NLL -L_K) is in
`training/evaluation.py`, its figures in `training/plots.py` (`vae_figures`), and its SavedModel signatures in
`serving/export.py` (`VAEServable`).

References: Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014; Burda, Grosse and Salakhutdinov,
"Importance Weighted Autoencoders", ICLR 2016; Nalisnick and Smyth, "Stick-Breaking Variational Autoencoders",
ICLR 2017; Jang, Gu and Poole, "Categorical Reparameterization with
Gumbel-Softmax", ICLR 2017; Maddison, Mnih and Teh, "The Concrete Distribution", ICLR 2017; Alemi et al., "Fixing
a Broken ELBO", ICML 2018; Loaiza-Ganem and Cunningham, "The continuous Bernoulli", NeurIPS 2019.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import ClassVar, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from models import bayesian_layers
from models import stick_breaking
from models.objective import ElboTerms

tfd = tfp.distributions
tfpl = tfp.layers

LATENTS = ("normal", "full_covariance", "gumbel_softmax", "kumaraswamy")
LIKELIHOODS = ("bernoulli", "continuous_bernoulli")
ARCHS = ("mlp", "conv")
ACTIVATIONS = ("tanh", "relu", "softplus", "elu")

# Seed of the one evaluation binarization (see `fixed_binarization`); part of what the test numbers mean.
EVAL_BINARIZATION_SEED = 20151130
# Lower bounds of the Kumaraswamy concentrations a, b the encoder outputs (softplus + floor): below them draws sit at
# the fractions' clipping bounds and the KL's series (whose tail grows as Gamma(b) ~ 1/b) dominates the loss.
CONCENTRATION_FLOOR = 1e-2
# Activations (float32 numbers) one chunk of the importance-weighted bound may hold: samples x batch x the decoder's
# activations per row. 2^23 floats is 32 MB; the peak with TFP's temporaries is a few times that.
IW_ACTIVATION_BUDGET = 2 ** 23


@dataclasses.dataclass
class Config:
    """Hyperparameters of a variational autoencoder.

    Attributes:
      latent: `normal`, `full_covariance`, `gumbel_softmax` or `kumaraswamy` (stick-breaking).
      latent_dim: D, size of a Gaussian latent; for `kumaraswamy` the truncation level K, the number of mixture
        weights (K - 1 stick fractions), at least 2.
      categories: K, categories of each variable of the Gumbel-softmax latent.
      latent_variables: M, categorical variables of the Gumbel-softmax latent.
      hidden_units: widths of the encoder's hidden layers (the decoder mirrors them); `mlp` only.
      activation: hidden-layer nonlinearity.
      arch: `mlp` or `conv`.
      likelihood: `bernoulli` (binary pixels) or `continuous_bernoulli` (grey levels in [0, 1]).
      gem_alpha: `kumaraswamy`: alpha of the truncated GEM prior, v_k ~ Beta(1, alpha) (5 in Nalisnick and Smyth's
        experiments); larger alpha breaks the stick into more pieces of weight.
      beta: weight of the rate in training (1: the ELBO).
      train_importance_samples: K of the training objective, the importance-weighted bound L_K (1: the ELBO).
      eval_importance_samples: K of the importance-weighted test NLL.
      eval_examples: compute the test NLL on N evenly spaced test examples only (0: all of them); quick checks.
      temperature_init, temperature_min, temperature_decay: tau_t = max(min, init * exp(-decay * t)).
      seed: seeds the weight initialization (the training binary passes `--seed`).
    """

    latent: str = "normal"
    latent_dim: int = 50
    categories: int = 10
    latent_variables: int = 20
    hidden_units: Sequence[int] = (200, 200)
    activation: str = "tanh"
    arch: str = "mlp"
    likelihood: str = "bernoulli"
    gem_alpha: float = 5.0
    beta: float = 1.0
    train_importance_samples: int = 1
    eval_importance_samples: int = 50
    eval_examples: int = 0
    # Evaluation-only fields: a finished run may be re-evaluated with other values in the same workdir.
    RESUMABLE_FIELDS: ClassVar[frozenset] = frozenset({"eval_importance_samples", "eval_examples"})
    temperature_init: float = 1.0
    temperature_min: float = 0.5
    temperature_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self):
        for name, allowed in (("latent", LATENTS), ("likelihood", LIKELIHOODS), ("arch", ARCHS),
                              ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        self.hidden_units = bayesian_layers.layer_widths(self.hidden_units)
        if self.arch == "mlp" and not self.hidden_units:
            raise ValueError("hidden_units must name at least one layer for arch=mlp")
        for name in ("latent_dim", "latent_variables", "train_importance_samples", "eval_importance_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.latent == "kumaraswamy" and int(self.latent_dim) < 2:
            raise ValueError(f"latent_dim must be at least 2 for latent=kumaraswamy (K weights, K - 1 fractions), "
                             f"got {self.latent_dim}")
        if not self.gem_alpha > 0:
            raise ValueError(f"gem_alpha must be positive, got {self.gem_alpha}")
        if int(self.categories) < 2:
            raise ValueError(f"categories must be at least 2, got {self.categories}")
        if int(self.eval_examples) < 0:
            raise ValueError(f"eval_examples must not be negative, got {self.eval_examples}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be non-negative, got {self.beta}")
        if not 0 < self.temperature_min <= self.temperature_init:
            raise ValueError(f"temperature_min must be in (0, temperature_init], got {self.temperature_min} "
                             f"(temperature_init {self.temperature_init})")
        if not self.temperature_decay >= 0:
            raise ValueError(f"temperature_decay must be non-negative, got {self.temperature_decay}")

    @property
    def latent_shape(self) -> tuple:
        """Shape of one z: [D] for Gaussian latents, [M, K] for the categorical one, [K] weights for the
        stick-breaking one."""
        if self.latent == "gumbel_softmax":
            return (int(self.latent_variables), int(self.categories))
        return (int(self.latent_dim),)


# ---------------------------------------------------------------------------------------------------------------
# Binarization.
# ---------------------------------------------------------------------------------------------------------------

def dynamic_binarization(x, seed) -> tf.Tensor:
    """x_bin ~ Bernoulli(x), a fresh draw for every stateless `seed`; x [batch, ...] in [0, 1]."""
    return tf.cast(tf.random.stateless_uniform(tf.shape(x), seed, dtype=x.dtype) < x, x.dtype)


@tf.function(reduce_retracing=True)
def fixed_binarization(x, seed: int = EVAL_BINARIZATION_SEED) -> tf.Tensor:
    """One Bernoulli(x) draw per image that is a pure function of (seed, the image).

    Pixel j becomes 1[u_j < x_j] with u ~ U[0, 1) from the stateless seed (seed, h(x)), h a hash of the image's
    grey levels. The same image is binarized the same way in any batch, at any position, in any process (and in
    an exported graph), which is what lets evaluation, figures and serving share one test binarization. Binary
    images are returned unchanged (u < 1 always, u < 0 never).

    Args:
      x: float [batch, ...] in [0, 1].

    Returns:
      float 0/1 [batch, ...].
    """
    x = tf.convert_to_tensor(x, tf.float32)
    batch = tf.shape(x)[0]
    levels = tf.reshape(tf.cast(tf.round(x * 255.0), tf.int64), [batch, -1])
    # Per-pixel multipliers < 2^20: the weighted sum stays below 2^63 for any image up to 2^35 pixels.
    multipliers = tf.random.stateless_uniform(tf.shape(levels)[1:], [seed, 1], minval=1, maxval=2 ** 20,
                                              dtype=tf.int64)
    digest = tf.math.floormod(tf.reduce_sum(levels * multipliers, axis=1), 2 ** 31 - 1)
    seeds = tf.stack([tf.fill([batch], tf.constant(seed, tf.int32)), tf.cast(digest, tf.int32)], axis=1)
    # One stateless draw per image (stateless ops take one seed each): a map over the batch.
    noise = tf.map_fn(lambda s: tf.random.stateless_uniform(tf.shape(x)[1:], s), seeds,
                      fn_output_signature=tf.TensorSpec(x.shape[1:], tf.float32))
    return tf.cast(noise < x, x.dtype)


def temperature_schedule(step, init: float, minimum: float, decay: float) -> tf.Tensor:
    """tau_t = max(minimum, init * exp(-decay * t)) (Jang et al. 2017), a float32 scalar."""
    t = tf.cast(step, tf.float32)
    return tf.maximum(tf.constant(minimum, tf.float32), init * tf.exp(-decay * t))


# ---------------------------------------------------------------------------------------------------------------
# Networks: tf_keras layers ending in TFP distribution layers.
# ---------------------------------------------------------------------------------------------------------------

def _independent_one_hot(params, latent_shape):
    """q(z | x): M independent categoricals of K classes from logits [..., M * K]."""
    logits = tf.reshape(params, tf.concat([tf.shape(params)[:-1], latent_shape], axis=0))
    return tfd.Independent(tfd.OneHotCategorical(logits=logits, dtype=tf.float32), reinterpreted_batch_ndims=1)


def _stick_breaking_posterior(params):
    """q(pi | x): Kumaraswamy(a, b) stick fractions from params [..., 2 (K - 1)], a, b = softplus + a floor."""
    a, b = tf.split(tf.nn.softplus(params) + CONCENTRATION_FLOOR, 2, axis=-1)
    return stick_breaking.KumaraswamyStickBreaking(a, b)


class LogitBernoulli(tfd.Bernoulli):
    """`tfd.Bernoulli` whose log-probability takes one softplus of the logits l:

        log p(x) = x l - softplus(l),

    the same function as TFP's -(1 - x) softplus(l) - x softplus(-l) (softplus(-l) = softplus(l) - l), with
    gradient x - sigmoid(l). Half the transcendental work of TFP's form for every pixel of every draw. For finite
    logits (a network's outputs); TFP's form also gives the limits at l = +-inf.
    """

    def _log_prob(self, event):
        logits = self._logits_parameter_no_checks()
        return tf.cast(event, logits.dtype) * logits - tf.nn.softplus(logits)


def _positive_samples(num_samples) -> tf.Tensor:
    """num_samples as an int32 scalar, checked positive (an S <= 0 would give NaN bounds and moments); a constant
    is checked at tracing, a tensor when it runs (not under XLA, which compiles no assertions)."""
    num_samples = tf.convert_to_tensor(num_samples, tf.int32)
    if bayesian_layers.traced_for_xla():
        return num_samples
    with tf.control_dependencies([tf.debugging.assert_positive(num_samples, "num_samples must be positive")]):
        return tf.identity(num_samples)


# Pixels per group whose factors (1 + exp(-|l|)) in (1, 2] `sum_softplus` multiplies before one log: at most 2^16.
SOFTPLUS_GROUP = 16


@tf.custom_gradient
def sum_softplus(logits):
    """sum_p softplus(l_p) over the last axis of logits [..., n] (n static) -> [...], with one log per
    SOFTPLUS_GROUP pixels instead of one softplus per pixel (float32 and float64; other dtypes take TF's softplus):

        softplus(l) = max(l, 0) + log(1 + exp(-|l|)),
        sum_p log(1 + exp(-|l_p|)) = sum_groups log prod_{p in group} (1 + exp(-|l_p|)),

    each factor in (1, 2], so a group's product stays within [1, 2^16] in float32. The same function as the
    per-pixel sum, rounded differently (within 1.2e-4 nats of TF's softplus summed over 784 pixels, at sums of
    ~560); a factor 1 + e^-|l| rounds to 1 below e^-|l| ~ 6e-8, dropping at most ~6e-8 nats per pixel. Why:
    TensorFlow's softplus kernel evaluates exp and log1p per element, for every pixel of every draw of the
    bound and of training; here one log serves 16 pixels. Gradient: d/dl_p = sigmoid(l_p).
    """
    if logits.dtype not in (tf.float32, tf.float64):  # 16 factors of up to 2 overflow float16
        return tf.reduce_sum(tf.nn.softplus(logits), axis=-1), lambda upstream: upstream[..., None] * tf.sigmoid(
            logits)
    n = int(logits.shape[-1])
    positive = tf.reduce_sum(tf.nn.relu(logits), axis=-1)
    factors = 1.0 + tf.exp(-tf.abs(logits))
    leading = tf.shape(logits)[:-1]
    pad = -n % SOFTPLUS_GROUP
    if pad:
        factors = tf.concat([factors, tf.ones(tf.concat([leading, [pad]], 0), factors.dtype)], axis=-1)
    groups = tf.reshape(factors, tf.concat([leading, [(n + pad) // SOFTPLUS_GROUP, SOFTPLUS_GROUP]], 0))
    total = positive + tf.reduce_sum(tf.math.log(tf.reduce_prod(groups, axis=-1)), axis=-1)
    return total, lambda upstream: upstream[..., None] * tf.sigmoid(logits)


class IndependentLogitBernoulli(tfd.Independent):
    """Independent `LogitBernoulli` pixels whose log-probability is summed over the event in one go,

        log p(x) = sum_p x_p l_p - sum_p softplus(l_p),

    the second sum by `sum_softplus`; the value of `tfd.Independent`'s per-pixel sum (see `sum_softplus` for the
    rounding), for every caller of the decoder's `log_prob`: the training ELBO and the importance-weighted bound."""

    def _log_prob(self, x):
        logits = self.distribution._logits_parameter_no_checks()
        event_ndims = self.reinterpreted_batch_ndims
        x = tf.cast(x, logits.dtype)
        leading = tf.shape(logits)[:tf.rank(logits) - event_ndims]
        flat = tf.reshape(logits, tf.concat([leading, [self.event_shape.num_elements()]], 0))
        return tf.reduce_sum(x * logits, axis=tf.range(-event_ndims, 0)) - sum_softplus(flat)


def _independent_bernoulli(params, event_shape):
    logits = tf.reshape(params, tf.concat([tf.shape(params)[:-1], event_shape], axis=0))
    return IndependentLogitBernoulli(LogitBernoulli(logits=logits, dtype=tf.float32),
                                     reinterpreted_batch_ndims=len(event_shape))


def _independent_continuous_bernoulli(params, event_shape):
    logits = tf.reshape(params, tf.concat([tf.shape(params)[:-1], event_shape], axis=0))
    return tfd.Independent(tfd.ContinuousBernoulli(logits=logits), reinterpreted_batch_ndims=len(event_shape))


class _Initializers:
    """Seeded initializers, a distinct seed per layer (a seeded Keras initializer repeats its values)."""

    def __init__(self, seed: int):
        self._seed = int(seed) * 1000
        self._count = 0

    def kernel(self):
        self._count += 1
        return tf_keras.initializers.GlorotUniform(seed=self._seed + self._count)


class Encoder(tf.Module):
    """q(z | x): a network and a TFP distribution layer; `__call__(x [batch, ...]) -> distribution [batch]`."""

    def __init__(self, config: Config, example_shape: tuple, init: _Initializers):
        super().__init__(name="encoder")
        act = config.activation
        self.body = [tf_keras.layers.Flatten()] if config.arch == "mlp" else [
            tf_keras.layers.Conv2D(32, 3, strides=2, padding="same", activation=act, kernel_initializer=init.kernel()),
            tf_keras.layers.Conv2D(64, 3, strides=2, padding="same", activation=act, kernel_initializer=init.kernel()),
            tf_keras.layers.Flatten()]
        if config.arch == "mlp":
            self.body += [tf_keras.layers.Dense(u, activation=act, kernel_initializer=init.kernel())
                          for u in config.hidden_units]
        d = config.latent_dim
        bias = "zeros"
        if config.latent == "kumaraswamy":
            self.head = _stick_breaking_posterior
            size = 2 * (d - 1)
            # Biases that start q(v_k | x) at the prior's Kumaraswamy(1, alpha) = Beta(1, alpha): the rate starts
            # near zero, as the Gaussian latents' does.
            bias = tf_keras.initializers.Constant(
                [bayesian_layers.softplus_inverse(1.0 - CONCENTRATION_FLOOR)] * (d - 1)
                + [bayesian_layers.softplus_inverse(max(config.gem_alpha - CONCENTRATION_FLOOR, 1e-3))] * (d - 1))
        elif config.latent == "normal":
            self.head = tfpl.IndependentNormal(d, convert_to_tensor_fn=tfd.Distribution.mean)
            size = tfpl.IndependentNormal.params_size(d)
        elif config.latent == "full_covariance":
            self.head = tfpl.MultivariateNormalTriL(d, convert_to_tensor_fn=tfd.Distribution.mean)
            size = tfpl.MultivariateNormalTriL.params_size(d)
        else:
            latent_shape = list(config.latent_shape)
            self.head = tfpl.DistributionLambda(
                functools.partial(_independent_one_hot, latent_shape=latent_shape),
                convert_to_tensor_fn=tfd.Distribution.mean)
            size = math.prod(latent_shape)
        self.params = tf_keras.layers.Dense(size, kernel_initializer=init.kernel(), bias_initializer=bias)

    def __call__(self, x) -> tfd.Distribution:
        h = x
        for layer in self.body:
            h = layer(h)
        return self.head(self.params(h))


class Decoder(tf.Module):
    """p(x | z): a network and a TFP distribution layer over images.

    `__call__(z [..., *latent_shape]) -> distribution` with batch shape [...] and event shape `example_shape`; any
    number of leading axes (e.g. [samples, batch]) is folded into one for the network and restored after.
    """

    def __init__(self, config: Config, example_shape: tuple, init: _Initializers, pixel_mean=None):
        super().__init__(name="decoder")
        self.latent_shape = config.latent_shape
        self.example_shape = tuple(example_shape)
        pixels = math.prod(self.example_shape)
        act = config.activation
        if config.arch == "mlp":
            self.body = [tf_keras.layers.Dense(u, activation=act, kernel_initializer=init.kernel())
                         for u in reversed(config.hidden_units)]
            # Output bias at the logit of the mean training image: the untrained decoder already predicts the
            # average pixel, so early gradients shape the latent code instead of learning a constant image.
            bias = "zeros" if pixel_mean is None else tf_keras.initializers.Constant(
                np.log(pixel_mean / (1.0 - pixel_mean)).reshape(-1))
            self.body.append(tf_keras.layers.Dense(pixels, kernel_initializer=init.kernel(),
                                                   bias_initializer=bias))
            self.activations_per_row = 2 * sum(config.hidden_units) + 4 * pixels
        else:
            height, width, channels = self.example_shape
            self.body = [
                tf_keras.layers.Dense(height // 4 * width // 4 * 64, activation=act, kernel_initializer=init.kernel()),
                tf_keras.layers.Reshape((height // 4, width // 4, 64)),
                tf_keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation=act,
                                                kernel_initializer=init.kernel()),
                tf_keras.layers.Conv2DTranspose(channels, 3, strides=2, padding="same",
                                                kernel_initializer=init.kernel()),
                tf_keras.layers.Reshape((pixels,))]
            self.activations_per_row = 2 * (height * width // 16 * 64 + height * width // 4 * 32) + 4 * pixels
        if config.likelihood == "bernoulli":
            self.head = tfpl.DistributionLambda(
                functools.partial(_independent_bernoulli, event_shape=list(self.example_shape)),
                convert_to_tensor_fn=tfd.Distribution.mean)
        else:
            self.head = tfpl.DistributionLambda(
                functools.partial(_independent_continuous_bernoulli, event_shape=list(self.example_shape)),
                convert_to_tensor_fn=tfd.Distribution.mean)

    def __call__(self, z) -> tfd.Distribution:
        z = tf.convert_to_tensor(z, tf.float32)
        leading = tf.shape(z)[:tf.rank(z) - len(self.latent_shape)]
        h = tf.reshape(z, [-1, math.prod(self.latent_shape)])
        for layer in self.body:
            h = layer(h)
        return self.head(tf.reshape(h, tf.concat([leading, [-1]], axis=0)))


# ---------------------------------------------------------------------------------------------------------------
# The model.
# ---------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class ImportanceWeightedTerms(ElboTerms):
    """The training terms of the importance-weighted bound L_K (Burda et al. 2016), K > 1.

    The loss per example is -L_K: the shared loop reports it as `train/loss`, and `nll` (the K draws' mean
    -log p(x | z_k)) and `local_kl` (the closed-form rate) keep their meaning, so `train/elbo` = -(nll + kl) stays
    an ELBO estimate, below L_K. A KL weight w (the loop's warm-up) and beta act on the rate as in the ELBO:

        loss = -L_K + (w beta - 1) KL,

    which is -L_K at w beta = 1 and, as K = 1 (E[L_1] = ELBO), the ELBO's nll + w beta KL in expectation.

    Attributes:
      bound: [batch] L_K.
    """

    bound: Optional[tf.Tensor] = None

    def loss_per_example(self, num_train: int, kl_weight=1.0) -> tf.Tensor:
        weight = tf.cast(kl_weight, self.bound.dtype) * tf.cast(self.kl_scale, self.bound.dtype)
        return -self.bound + (weight - 1.0) * self.kl_per_example(num_train)


class VariationalAutoencoder(tf.Module):
    """Encoder, decoder and prior; the ELBO's terms, the importance-weighted bound and the reconstruction moments.

    Args:
      config: a `Config`.
      example_shape: shape of one image, [height, width, channels] (height and width divisible by 4 for `conv`).
      binarize: whether inputs are grey levels to binarize (Bernoulli likelihood of non-binary data).
      pixel_mean: the mean training image [height, width, channels] in (0, 1), to initialize the decoder's output
        bias (`mlp`), or None.
    """

    task = "density"  # train_lib: no classifier metrics, even on labelled MNIST

    def __init__(self, config: Config, example_shape, binarize: bool = False, pixel_mean=None,
                 name: str = "variational_autoencoder"):
        super().__init__(name=name)
        self.config = config
        self.example_shape = tuple(int(d) for d in example_shape)
        if config.arch == "conv" and (len(self.example_shape) != 3 or self.example_shape[0] % 4
                                      or self.example_shape[1] % 4):
            raise ValueError(f"arch=conv needs images [height, width, channels] with height and width divisible by "
                             f"4, got {self.example_shape}")
        self.binarize = bool(binarize) and config.likelihood == "bernoulli"
        self.latent_shape = config.latent_shape
        init = _Initializers(config.seed)
        self.encoder = Encoder(config, self.example_shape, init)
        self.decoder = Decoder(config, self.example_shape, init, pixel_mean)
        # Training steps taken, for the temperature schedule. Checkpointed with the weights, so a resumed run
        # continues the schedule exactly. ON_READ + ONLY_FIRST_REPLICA: under a MirroredStrategy each replica
        # increments its own copy once per step, and every copy (and the one saved) holds the step count.
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                                synchronization=tf.VariableSynchronization.ON_READ,
                                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # Build every variable now, so checkpoints restore into an existing model and export can trace it.
        self.decoder(self.encoder(tf.zeros((1,) + self.example_shape)).mean())

    # -- distributions ------------------------------------------------------------------------------------------

    @property
    def prior(self) -> tfd.Distribution:
        """p(z): N(0, I) over [D] (a diagonal MVN for the full-covariance latent), uniform one-hot over [M, K], or the
        truncated GEM(alpha) over K weights (`stick_breaking.gem_prior`)."""
        if self.config.latent == "kumaraswamy":
            return stick_breaking.gem_prior(self.config.gem_alpha, self.latent_shape[0])
        if self.config.latent == "gumbel_softmax":
            return tfd.Independent(tfd.OneHotCategorical(logits=tf.zeros(self.latent_shape), dtype=tf.float32), 1)
        if self.config.latent == "full_covariance":
            return tfd.MultivariateNormalDiag(loc=tf.zeros(self.latent_shape))
        return tfd.Independent(tfd.Normal(tf.zeros(self.latent_shape), 1.0), 1)

    def observe(self, x, seed=None) -> tf.Tensor:
        """The data as the likelihood sees it: binarized dynamically (`seed` given) or by the fixed binarization
        (`seed` None) when the model binarizes, else unchanged. x [batch, ...] -> [batch, ...]."""
        x = tf.convert_to_tensor(x, tf.float32)
        if not self.binarize:
            return x
        return fixed_binarization(x) if seed is None else dynamic_binarization(x, seed)

    def encode(self, x) -> tfd.Distribution:
        """q(z | x) for observed (already binarized) x [batch, ...]: batch shape [batch], event `latent_shape`."""
        return self.encoder(tf.convert_to_tensor(x, tf.float32))

    def decode(self, z) -> tfd.Distribution:
        """p(x | z) for z [..., *latent_shape]: batch shape [...], event shape `example_shape`."""
        return self.decoder(z)

    def temperature(self) -> tf.Tensor:
        """The Gumbel-softmax temperature at the model's current training step."""
        c = self.config
        return temperature_schedule(self.step, c.temperature_init, c.temperature_min, c.temperature_decay)

    def relaxed(self, q, temperature) -> tfd.Distribution:
        """The Concrete relaxation of a categorical q(z | x): `tfd.RelaxedOneHotCategorical` over [..., M, K]."""
        logits = q.distribution.logits_parameter()
        return tfd.Independent(tfd.RelaxedOneHotCategorical(temperature, logits=logits), 1)

    def rate(self, q) -> tf.Tensor:
        """KL(q(z | x) || p(z)) [batch] in nats, in closed form for every latent (see the module docstring)."""
        if self.config.latent == "kumaraswamy":
            return stick_breaking.kl_to_gem(q, self.config.gem_alpha)
        return tfd.kl_divergence(q, self.prior)

    def latent_noise(self, num_samples, seed, batch_size=None) -> tf.Tensor:
        """Standard noise for S latent draws, [S, batch_size, *latent], or [S, 1, *latent] (`batch_size` None):
        one draw shared by every example of a batch.

        N(0, 1) for the Gaussian latents; Gumbel(0, 1) for the categorical one [.., M, K], g = -log(-log u);
        U(0, 1) for the stick-breaking one's K - 1 fractions [.., K - 1], kept inside (0, 1) as the fractions are.
        """
        rows = 1 if batch_size is None else batch_size
        if self.config.latent == "kumaraswamy":
            eps = stick_breaking.FRACTION_EPS
            return tf.random.stateless_uniform(tf.concat([[num_samples, rows], [self.latent_shape[0] - 1]], 0),
                                               seed, minval=eps, maxval=1.0 - eps)
        shape = tf.concat([[num_samples, rows], self.latent_shape], 0)
        if self.config.latent == "gumbel_softmax":
            u = tf.random.stateless_uniform(shape, seed, minval=np.finfo(np.float32).tiny, maxval=1.0)
            return -tf.math.log(-tf.math.log(u))
        return bayesian_layers.normal(shape, seed)

    def latents_from_noise(self, q, noise) -> tf.Tensor:
        """z [S, batch, *latent] from q(z | x) [batch] and `latent_noise` [S, batch or 1, ...] by reparameterization:

            normal: z = mu + sigma * eps;   full covariance: z = mu + L eps;
            categorical: z_m = one_hot(argmax_k(l_mk + g_mk))   (Gumbel-max: an exact categorical draw);
            stick-breaking: z = stick_breaking_weights(v),  v_k = F^{-1}(u_k; a_k, b_k)   (the inverse CDF).

        Each example's S draws are exact draws from its q(z | x) either way. With noise shared by the batch an
        example's draws depend on its input and the noise only, not on its batch: what serving needs (batched
        requests get the answers they would get alone; see `models/bayesian_layers.py`). Averages over a data set
        want noise per example instead: shared noise correlates the examples' Monte Carlo errors, so they would
        not average out (a one-sample bound of 1000 test images, shared, was 4 nats off the ELBO).
        """
        latent = self.config.latent
        if latent == "kumaraswamy":
            return stick_breaking.stick_breaking_weights(q.fractions(noise))
        if latent == "gumbel_softmax":
            logits = q.distribution.logits_parameter()  # [batch, M, K]
            return tf.one_hot(tf.argmax(logits + noise, axis=-1), self.latent_shape[-1], dtype=tf.float32)
        if latent == "full_covariance":
            return q.mean() + tf.linalg.matvec(q.scale.to_dense(), noise)
        return q.mean() + q.stddev() * noise

    def _draw(self, q, noise, temperature=None):
        """z [S, batch, *latent] from `latent_noise` (`latents_from_noise`) and log p(z) - log q(z | x) [S, batch].

        The stick-breaking latent's densities are those of the fractions v it drew: the weights' Jacobian is the
        same for q and p and cancels. `temperature` (the categorical latent in training): the Concrete relaxation
        instead, z = exp(y), y = log_softmax((l + g) / tau), with log p_tau(y) - log q_tau(y | x) of the
        ExpConcrete densities of the relaxed q and the relaxed uniform prior (Maddison et al. 2017's choice: their
        log-space densities keep float32 finite at low temperatures; the exp's Jacobian cancels in the ratio).
        """
        latent = self.config.latent
        if latent == "kumaraswamy":
            v = q.fractions(noise)
            prior = self.prior
            return stick_breaking.stick_breaking_weights(v), prior.fractions_log_prob(v) - q.fractions_log_prob(v)
        if latent == "gumbel_softmax" and temperature is not None:
            logits = q.distribution.logits_parameter()  # [batch, M, K]
            y = tf.math.log_softmax((logits + noise) / temperature, axis=-1)
            relaxed_q = tfd.Independent(tfd.ExpRelaxedOneHotCategorical(temperature, logits=logits), 1)
            relaxed_p = tfd.Independent(tfd.ExpRelaxedOneHotCategorical(temperature, logits=tf.zeros_like(logits)), 1)
            return tf.exp(y), relaxed_p.log_prob(y) - relaxed_q.log_prob(y)
        z = self.latents_from_noise(q, noise)
        return z, self.prior.log_prob(z) - q.log_prob(z)

    def sample_latents(self, q, num_samples, seed) -> tf.Tensor:
        """S draws z [S, batch, *latent] from q(z | x) with noise shared across the batch (`latents_from_noise`)."""
        return self.latents_from_noise(q, self.latent_noise(num_samples, seed))

    # -- training -----------------------------------------------------------------------------------------------

    def elbo_terms(self, batch, seed, training: bool = True) -> ElboTerms:
        """The ELBO's terms on a batch, per example.

        Args:
          batch: x [batch, ...] or (x, labels); labels are ignored.
          seed: int32 [2] stateless seed: the dynamic binarization and the latent draw.
          training: draw a fresh binarization, sample the relaxed latent at the scheduled temperature, advance
            `step`, and weight the KL by beta; otherwise the fixed binarization, hard categorical draws, beta = 1.

        Returns:
          `ElboTerms` with `nll` [batch] = -log p(x | z), z ~ q(z | x) (one draw: the distortion), `local_kl`
          [batch] = KL(q(z | x) || p(z)) (the rate) and `kl_scale` = beta in training, 1 otherwise. In training
          with `train_importance_samples` K > 1, `ImportanceWeightedTerms` whose loss is -L_K (see there), from
          K draws of `importance_weighted` (relaxed draws for the categorical latent); `nll` is then the mean
          -log p(x | z_k) of the K draws.
        """
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        binarization_seed, latent_seed = tfp.random.split_seed(seed, n=2)
        x = self.observe(x, binarization_seed if training else None)
        if training and self.config.train_importance_samples > 1:
            temperature = self.temperature() if self.config.latent == "gumbel_softmax" else None
            out = self.importance_weighted(x, self.config.train_importance_samples, latent_seed,
                                           temperature=temperature)
            self.step.assign_add(1)  # after the temperature was read
            return ImportanceWeightedTerms(nll=-out["expected_log_likelihood"], local_kl=out["rate"],
                                           kl_scale=self.config.beta, bound=out["log_likelihood"])
        q = self.encode(x)
        if training and self.config.latent == "gumbel_softmax":
            z = self.relaxed(q, self.temperature()).sample(seed=latent_seed)
        else:
            z = q.sample(seed=latent_seed)
        if training:
            self.step.assign_add(1)  # after the temperature was read: step t uses tau_t
        nll = -self.decode(z).log_prob(x)
        kl = self.rate(q)
        return ElboTerms(nll=nll, local_kl=kl, kl_scale=self.config.beta if training else 1.0)

    # -- evaluation ---------------------------------------------------------------------------------------------

    def log_weights(self, x, q, noise, temperature=None):
        """log w_k = log p(x | z_k) + log p(z_k) - log q(z_k | x) and log p(x | z_k), each [K, batch], for the K
        draws z_k that `latent_noise` [K, batch or 1, ...] gives (`_draw`; `temperature`: relaxed draws)."""
        z, log_ratio = self._draw(q, noise, temperature)
        log_likelihood = self.decode(z).log_prob(x)
        return log_likelihood + log_ratio, log_likelihood

    def importance_weighted(self, x, num_samples, seed, activation_budget: int = IW_ACTIVATION_BUDGET,
                            shared_noise: bool = False, temperature=None) -> dict:
        """The importance-weighted bound L_K of observed x, in chunks of samples (bounded memory for any K).

        Chunks are combined by a running log-sum-exp, log sum_k w_k = logsumexp_c(logsumexp_{k in c} log w_k).
        Evaluation draws noise per example, chunk c from the seed fold_in(seed, c). Serving (`shared_noise`) draws
        the K draws' noise at once, [K, 1, *latent], shared by the batch, and chunk c takes its slice: an example's
        bound then depends on neither its batch nor the chunking (which depends on the batch size).

        Args:
          x: observed (binarized) data [batch, ...].
          num_samples: K, int or int32 scalar tensor.
          seed: int32 [2].
          activation_budget: largest samples x batch x decoder activations per row held at once.
          shared_noise: noise shared across the batch (serving) instead of per example (evaluation).
          temperature: `gumbel_softmax` in training only: Concrete draws at this temperature, weighed with the
            relaxed densities (`_draw`), a bound on the relaxed model that is differentiable in the logits.

        Returns:
          `log_likelihood` [batch]: L_K = log (1/K) sum_k w_k (a lower bound on log p(x), tightening with K);
          `expected_log_likelihood` [batch]: (1/K) sum_k log p(x | z_k), the Monte Carlo distortion (negated);
          `rate` [batch]: KL(q(z | x) || p(z)).
        """
        x = tf.convert_to_tensor(x, tf.float32)
        num_samples = _positive_samples(num_samples)
        q = self.encode(x)
        chunk, num_chunks = self._sample_chunks(x, num_samples, activation_budget)
        batch_shape = tf.shape(x)[:1]
        shared = self.latent_noise(num_samples, seed) if shared_noise else None

        def body(c, log_sum, sum_log_likelihood):
            n = tf.minimum(chunk, num_samples - c * chunk)
            if shared_noise:
                noise = shared[c * chunk:c * chunk + n]
            else:
                noise = self.latent_noise(n, tf.random.experimental.stateless_fold_in(seed, c), batch_shape[0])
            log_w, log_likelihood = self.log_weights(x, q, noise, temperature)
            log_sum = tf.reduce_logsumexp(tf.stack([log_sum, tf.reduce_logsumexp(log_w, axis=0)]), axis=0)
            return c + 1, log_sum, sum_log_likelihood + tf.reduce_sum(log_likelihood, axis=0)

        initial = (tf.constant(0), tf.fill(batch_shape, -np.inf), tf.zeros(batch_shape))
        if bayesian_layers.traced_for_xla():
            # One chunk (`_sample_chunks`), without a loop: XLA cannot accumulate a loop's gradient (training on
            # L_K) without a static bound on its iterations.
            _, log_sum, sum_log_likelihood = body(*initial)
        else:
            _, log_sum, sum_log_likelihood = tf.while_loop(lambda c, *_: c < num_chunks, body, initial)
        k = tf.cast(num_samples, tf.float32)
        return {"log_likelihood": log_sum - tf.math.log(k), "expected_log_likelihood": sum_log_likelihood / k,
                "rate": self.rate(q)}

    def _sample_chunks(self, x, num_samples, activation_budget: int):
        """(samples per chunk, number of chunks), int32 scalars: `bayesian_layers.sample_chunk`'s rule with the
        decoder's activations per row as the width (samples x batch x width within `activation_budget` floats, at
        least one, evened out over the chunks). Traced for XLA, one chunk: XLA fuses the passes over the pixels
        itself, and compiles a loop over chunks of dynamic size into a computation far slower than uncompiled."""
        if bayesian_layers.traced_for_xla():
            return num_samples, tf.constant(1)
        chunk = bayesian_layers.sample_chunk(num_samples, tf.shape(x)[0], self.decoder.activations_per_row,
                                             activation_budget)
        return chunk, (num_samples + chunk - 1) // chunk

    def reconstruction_moments(self, x, num_samples, seed, activation_budget: int = IW_ACTIVATION_BUDGET) -> dict:
        """Mean and standard deviation [batch, *image] of the decoded means m_s = E[x' | z_s] over S draws
        z_s ~ q(z | x) (noise shared by the batch, `sample_latents`), in chunks of samples: memory is bounded
        for any S, where decoding all S at once held S x batch x pixels floats (3.2 GB at S = 1000, batch 1024).
        (Traced for XLA all S go at once: `_sample_chunks`.)

        The chunks' moments are merged by the pairwise update of Chan, Golub and LeVeque (1979): for counts
        n_a, n_b, means mu_a, mu_b and sums of squared deviations M_a, M_b, with delta = mu_b - mu_a and
        n = n_a + n_b,

            mu = mu_a + delta n_b / n,    M = M_a + M_b + delta^2 n_a n_b / n,

        so no sum of squares of the raw means is formed (which loses the spread to cancellation in float32 where
        it is small beside the mean). stddev = sqrt(M / S), the population value, as `tf.math.reduce_std`. The
        draws' noise is made for all S and sliced, so the chunking changes no draw.

        Args:
          x: observed (binarized) data [batch, ...].
          num_samples: S >= 1, int or int32 scalar tensor.
          seed: int32 [2].
          activation_budget: largest samples x batch x decoder activations per row decoded at once.

        Returns:
          `mean`, `stddev` [batch, *image].
        """
        x = tf.convert_to_tensor(x, tf.float32)
        num_samples = _positive_samples(num_samples)
        q = self.encode(x)
        chunk, num_chunks = self._sample_chunks(x, num_samples, activation_budget)
        noise = self.latent_noise(num_samples, seed)
        zeros = tf.zeros(tf.concat([tf.shape(x)[:1], self.example_shape], 0))

        def body(c, count, mean, squares):
            means = self.decode(self.latents_from_noise(q, noise[c * chunk:(c + 1) * chunk])).mean()
            n = tf.cast(tf.shape(means)[0], tf.float32)
            chunk_mean = tf.reduce_mean(means, axis=0)
            chunk_squares = tf.reduce_sum(tf.square(means - chunk_mean), axis=0)
            total = count + n
            delta = chunk_mean - mean
            return (c + 1, total, mean + delta * (n / total),
                    squares + chunk_squares + tf.square(delta) * (count * n / total))

        _, count, mean, squares = tf.while_loop(
            lambda c, *_: c < num_chunks, body, (tf.constant(0), tf.constant(0.0), zeros, zeros))
        return {"mean": mean, "stddev": tf.sqrt(squares / count)}

    def predictive(self, x, num_samples, seed) -> tfd.Distribution:
        """Per-sample reconstructions p(x' | z_s), z_s ~ q(z | x): batch shape [S, batch], event `example_shape`.

        For the categorical latent z_s is a hard one-hot draw. x [batch, ...] is observed first (fixed
        binarization where the model binarizes).
        """
        q = self.encode(self.observe(x))
        return self.decode(self.sample_latents(q, num_samples, seed))

    def num_variational_parameters(self) -> int:
        """The encoder's weights: amortized inference learns these instead of one q per example."""
        return int(sum(np.prod(v.shape) for v in self.encoder.trainable_variables))


def _data_is_binary(x: np.ndarray) -> bool:
    sample = x[:1000]
    return bool(np.all((sample == 0) | (sample == 1)))


def build_model(config: Config, dataset) -> VariationalAutoencoder:
    """A VAE for an image `training.data.Dataset` with values in [0, 1]; labels, if any, are ignored.

    A Bernoulli model of grey-level data binarizes dynamically; binary data is modelled as it is.
    """
    x = dataset.x_train
    if x.ndim < 2 or x.min() < 0 or x.max() > 1:
        raise ValueError(f"a VAE models images with values in [0, 1]; {dataset.name} has shape {x.shape[1:]} and "
                         f"range [{x.min():.3g}, {x.max():.3g}]")
    pixel_mean = np.clip(x.mean(axis=0, dtype=np.float64), 1e-3, 1 - 1e-3)
    return VariationalAutoencoder(config, dataset.input_shape, binarize=not _data_is_binary(x),
                                  pixel_mean=pixel_mean)
