"""Mean-field Gaussian layers with three gradient estimators, vectorized over Monte Carlo samples.

Each layer holds a factorized Gaussian posterior over its kernel W and bias b and a zero-mean Normal prior,

    q(W) q(b) = prod_ij N(W_ij | mu_ij, sigma_ij^2) prod_j N(b_j | nu_j, tau_j^2),   sigma = softplus(rho),
    p(W) p(b) = prod N(0, s^2)        (s fixed, or learned: empirical Bayes on the ELBO),

as `tfd.Distribution`s (`posterior()`, `prior()`, `kl()` = KL(q || p) in closed form). A forward pass takes inputs
with a leading Monte Carlo axis, x: [S, batch, ...] (or [batch, ...], shared by all S), and a stateless seed, and
returns pre-activations [S, batch, units]. The estimator decides how the posterior is sampled; all three are
unbiased for E_q[f(W)] in dense layers (for convolutions see `Conv2DMeanField`) and differ in variance and
cost:

* `reparameterization` (Kingma and Welling 2014; Blundell et al. 2015): one weight draw per sample,
      W_s = mu + sigma * eps_s,   y_s = x_s W_s + b_s;
  every example of a batch shares W_s, so their gradient noise is correlated.
* `flipout` (Wen et al. 2018): one perturbation per sample, decorrelated across examples by random signs,
      y_sn = x_sn mu + ((x_sn * r_sn) (sigma * eps_s)) * c_sn + b_s,   r, c in {-1, +1} uniform;
  each example sees a weight with the right marginal N(mu, sigma^2), pseudo-independent of its neighbours'.
* `local_reparameterization` (Kingma, Salimans and Welling 2015): the pre-activation of one example is a sum of
  independent Gaussians, so it is sampled directly,
      y_snj ~ N(sum_i x_sni mu_ij + nu_j,  sum_i x_sni^2 sigma_ij^2 + tau_j^2);
  two matrix products for any S when x is shared, and noise of size S x batch x units.

When is local reparameterization exact? For one example, the units of a layer depend on disjoint weights, so
given the layer's input they are independent Gaussians with exactly those moments; the next layer's weights are
independent of this layer's. Hence the joint distribution of every pre-activation, and so of the output, of ONE
example is the same as under weight sampling. Only the correlation between different examples of a batch is lost,
which per-example predictive statistics (mean, variances, intervals, entropies) never use. The predictive of
every mean-field network here therefore samples pre-activations: S samples cost two deterministic passes plus the
noise, not S weight matrices.

The predictive route (`estimator="predictive"`) goes one step further: since only each example's own joint
distribution matters, its noise eps [S, 1, units] is drawn once per sample and unit and shared by every example of
the batch, a_snj = m_nj + sqrt(v_nj) eps_sj. For one example this is exactly the distribution above (its eps are
still independent across samples, units and layers); examples now share their Monte Carlo noise, as they do under
weight sampling. Two gains: the noise no longer grows with the batch (drawing S x batch x units normals was most
of the predictive's time at batch 1024), and an example's answer depends only on its input and the seed, not on
its batch or its position in it, so batched serving returns what a single request returns.
A network runs its predictive a chunk of samples at a time (`over_sample_chunks`), with every layer's draws
(`predictive_draws`) made for all S first and sliced: the same numbers, each chunk's activations in cache.

Not for convolutions: one example's output positions share the kernel, so they are correlated and a convolution's
local reparameterization (used in training, as an approximation) is not exact per example. The predictive route
of `Conv2DMeanField` samples S kernels instead (exact; with a shared input, one convolution with the S kernels
side by side).

Moment propagation (an opt-in approximation for deep networks; Wu et al. 2019, "Deterministic Variational Inference
for Robust Bayesian Neural Networks"; Gast and Roth 2018). Exact sampling must still run every layer after the
first once per sample, because the first layer's output differs per sample. Instead, `DenseMeanField.moments`
maps the mean and variance of each input unit, treated as independent, to those of each pre-activation,

    E[a_j]   = sum_i E[h_i] mu_ij + nu_j,
    Var[a_j] = sum_i (E[h_i]^2 + Var[h_i]) sigma_ij^2 + sum_i Var[h_i] mu_ij^2 + tau_j^2,

and `relu_moments` maps N(m, v) through the ReLU in closed form (z = m / sqrt(v), Phi and phi the standard
Normal cdf and density):

    E[relu(a)]   = m Phi(z) + sqrt(v) phi(z),
    E[relu(a)^2] = (m^2 + v) Phi(z) + m sqrt(v) phi(z).

Cost: three matrix products per layer for any S. For the first layer after a deterministic input, and for the
layer after it, the means and variances are exact (the first hidden units of one example depend on disjoint
weights, so they are independent); deeper, the hidden units share their inputs and are correlated, which the
diagonal approximation ignores, and every pre-activation is taken as Gaussian.
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras
from tensorflow.python.ops import control_flow_util  # XLA tracing: no public API

tfd = tfp.distributions

ESTIMATORS = ("flipout", "reparameterization", "local_reparameterization")
# The posterior predictive's route through a layer: exact per example and invariant to the batch (see above).
PREDICTIVE = "predictive"


def _split(seed, n: int):
    return tf.unstack(tfp.random.split_seed(seed, n=n))


def softplus_inverse(y: float) -> float:
    """rho with softplus(rho) = y > 0: the unconstrained start of a scale parameterized as softplus(rho)."""
    return math.log(math.expm1(y))


def normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """Standard normal draws of `shape` from a stateless seed [2], by the Box-Muller transform of uniform pairs:

        u, v ~ U[0, 1) iid,   r = sqrt(-2 log(1 - u)),   z = r cos(2 pi v),   z' = r sin(2 pi v)

    gives two independent N(0, 1) draws (r^2 = -2 log(1 - u) is Exp(1/2), i.e. chi^2 with 2 degrees of freedom,
    and the angle 2 pi v is uniform and independent of it: the polar form of a 2-D standard normal). It is the
    transform TF's normal kernel applies one pair at a time, here as whole-tensor ops that Eigen vectorizes, and
    faster than `tf.random.stateless_normal` for it (`benchmarks/random_numbers.py` measures both), which matters
    where the draws are weight-sized (flipout and weight sampling draw a normal per weight per step: 478,000 for
    the MNIST 784-400-400-10 network). Finite: 1 - u >= 2^-23 in float32 (2^-52 in float64), so
    |z| <= 5.65 (8.5), the same range as TF's kernel. Half-precision dtypes are drawn in float32 and cast.
    Deterministic in (shape, seed); a different stream from `tf.random.stateless_normal`'s for the same seed.
    """
    dtype = tf.as_dtype(dtype)
    compute = dtype if dtype in (tf.float32, tf.float64) else tf.float32
    size = tf.reduce_prod(tf.cast(shape, tf.int64))  # int64: S x units may pass 2^31
    half = (size + 1) // 2
    u = tf.random.stateless_uniform(tf.stack([2, half]), seed, dtype=compute)
    radius = tf.sqrt(-2.0 * tf.math.log1p(-u[0]))
    angle = (2.0 * math.pi) * u[1]
    z = tf.reshape(radius * tf.stack([tf.cos(angle), tf.sin(angle)]), [-1])[:size]
    return tf.cast(tf.reshape(z, shape), dtype)


def dense(x, kernel, bias=None) -> tf.Tensor:
    """x [..., in] @ kernel [in, out] (+ bias [out]) -> [..., out], as ONE 2-D matrix product over all leading axes.

    The same numbers as `tf.matmul(x, kernel) + bias`, whose broadcasting batch product of a rank-3 x [S, B, in]
    with a rank-2 kernel runs about twice as slow on CPU as the reshaped [S * B, in] x [in, out] GEMM. The bias
    goes in by `tf.nn.bias_add` on the 2-D product, which TensorFlow's graph optimizer fuses into the product
    (`_FusedMatMul`): a separate addition is one more pass over an [S x B, out] tensor.
    """
    if x.shape.rank == 2:
        y = tf.matmul(x, kernel)
        return y if bias is None else tf.nn.bias_add(y, bias)
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), kernel)
    if bias is not None:
        y = tf.nn.bias_add(y, bias)
    return tf.reshape(y, tf.concat([shape[:-1], [kernel.shape[-1]]], 0))


# Floats per activation tensor in one chunk of a predictive's samples (4 MiB): about a cache's worth.
CHUNK_FLOATS = 2 ** 20


def sample_chunk(num_samples, batch, width: int, budget: int | None = None):
    """Samples per chunk of a predictive: as many as keep a [k, batch, width] activation within `budget` floats
    (default CHUNK_FLOATS), at least one and at most S, evened out over the chunks (100 = 50 + 50, not 81 + 19);
    an int32 scalar tensor."""
    budget = CHUNK_FLOATS if budget is None else budget
    samples = tf.maximum(tf.cast(num_samples, tf.int64), 1)
    rows = tf.maximum(tf.cast(batch, tf.int64) * width, 1)
    most = tf.clip_by_value(budget // rows, 1, samples)
    chunks = (samples + most - 1) // most
    return tf.cast((samples + chunks - 1) // chunks, tf.int32)


def traced_for_xla() -> bool:
    """Whether the function being traced will be compiled by XLA (`jit_compile`): there a loop over chunks of
    samples costs far more than it saves (see `over_sample_chunks`)."""
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def over_sample_chunks(fn, num_samples, chunk, shape, whole_under_xla: bool = True) -> tf.Tensor:
    """[S, ...] = fn(rows) for the sample rows [0, S) taken `chunk` at a time (a slice each; the last may be
    shorter), concatenated along the sample axis; `shape` is the result's static shape (e.g. [None, None, units]).

    For a predictive whose samples go through a network: each chunk's activations [k, batch, units] stay in the
    CPU's cache between the products and the elementwise passes over them, and memory is bounded for any S. `fn`
    should slice draws made whole for all S, so that the chunking changes no number. One chunk runs without the
    loop, whose own cost is a sizeable part of a small network's request. Traced for XLA (`jit_compile`), with
    `whole_under_xla`, all S go in one chunk: XLA fuses the elementwise passes itself, and compiles a loop over
    chunks of dynamic size into a computation far slower than the unchunked one, and far larger in memory.
    `num_samples` and `chunk` may be Python ints or int32 scalar tensors; with both ints, whether to loop is
    decided while tracing (`tf.cond` takes no Python bool in a graph).
    """
    whole = lambda: fn(slice(0, num_samples))  # noqa: E731
    if whole_under_xla and traced_for_xla():
        out = whole()
        out.set_shape(shape)
        return out
    num_chunks = (num_samples + chunk - 1) // chunk
    static = isinstance(num_chunks, (int, np.integer))

    def body(c, outputs):
        rows = slice(c * chunk, tf.minimum((c + 1) * chunk, num_samples))
        return c + 1, outputs.write(c, fn(rows))

    def looped():
        _, outputs = tf.while_loop(lambda c, _: c < num_chunks, body,
                                   (tf.constant(0), tf.TensorArray(tf.float32, size=num_chunks, infer_shape=False)))
        return outputs.concat()

    if static:
        out = looped() if num_chunks > 1 else whole()
    else:
        out = tf.cond(num_chunks > 1, looped, whole)
    out.set_shape(shape)  # the chunks' shapes are not inferred
    return out


class Posterior(NamedTuple):
    """One layer's posterior parameters as tensors for one step: locations, scales sigma = softplus(rho), and
    (in training) KL(q(W) q(b) || p(W) p(b)) in nats, None when not asked for; a serving snapshot
    (`MeanFieldLayer.snapshot`) also holds the variances sigma^2, tau^2."""
    kernel_loc: tf.Tensor
    kernel_scale: tf.Tensor
    bias_loc: tf.Tensor
    bias_scale: tf.Tensor
    kl: tf.Tensor | None = None
    kernel_var: tf.Tensor | None = None
    bias_var: tf.Tensor | None = None

    def variances(self):
        """(sigma^2 [kernel shape], tau^2 [units]): the snapshot's, or computed from the scales."""
        if self.kernel_var is not None:
            return self.kernel_var, self.bias_var
        return tf.square(self.kernel_scale), tf.square(self.bias_scale)


@tf.custom_gradient
def scale_and_kl(loc, rho, log_prior_scale):
    """(sigma, KL) of prod_i N(mu_i, sigma_i^2) against N(0, s^2), sigma = softplus(rho), s = exp(log_prior_scale):

        sigma_i = log(1 + e^rho_i),
        KL = sum_i [log s - log sigma_i + (sigma_i^2 + mu_i^2) / (2 s^2) - 1/2].

    Training needs sigma (to sample) and the KL (its gradient) of the same parameters every step; computed
    together, sigma is taken once, its derivative sigmoid(rho) = 1 - e^-sigma comes from it, and the gradient is
    written out (for d = upstream gradient of sigma, k = of the KL):

        dL/dmu_i   = k mu_i / s^2,
        dL/drho_i  = (d_i + k sigma_i / s^2 - k / sigma_i) sigmoid(rho_i),
        dL/dlog s  = k sum_i [1 - (sigma_i^2 + mu_i^2) / s^2].

    Each elementwise pass over a layer's parameters counts (a 784 x 400 kernel is 313,600 of them, every step
    whatever the batch): a softplus for the sample and a separate KL with its own softplus and sigmoid would make
    more of them than this one softplus and the sigmoid derived from it.
    """
    sigma = tf.nn.softplus(rho)
    inv_prior_var = tf.exp(-2.0 * log_prior_scale)
    n = tf.cast(tf.size(loc), loc.dtype)
    second_moment = 2.0 * (tf.nn.l2_loss(sigma) + tf.nn.l2_loss(loc))  # sum_i sigma_i^2 + mu_i^2
    kl = n * (log_prior_scale - 0.5) - tf.reduce_sum(tf.math.log(sigma)) + 0.5 * inv_prior_var * second_moment

    def grad(d_sigma, d_kl):
        d_sigma = tf.zeros_like(sigma) if d_sigma is None else d_sigma
        d_kl = tf.zeros_like(kl) if d_kl is None else d_kl
        scaled = d_kl * inv_prior_var
        sigmoid = -tf.math.expm1(-sigma)
        return (scaled * loc, (d_sigma + scaled * sigma - d_kl / sigma) * sigmoid,
                d_kl * (n - inv_prior_var * second_moment))

    return (sigma, kl), grad


def layer_widths(values) -> tuple:
    """A config's `hidden_units` (ints or their strings, as a list flag gives them) as positive ints; a
    `ValueError` starting with the field's name otherwise (the training binaries name the flag from it)."""
    try:
        widths = tuple(int(u) for u in values)
    except (TypeError, ValueError):
        raise ValueError(f"hidden_units must be integers, got {values}") from None
    if any(u < 1 for u in widths):
        raise ValueError(f"hidden_units must be positive, got {widths}")
    return widths


def relu_moments(mean, var):
    """(E[relu(a)], Var[relu(a)]) for a ~ N(mean, var), elementwise; shapes [..., units].

    The variance is taken as v [Phi + z^2 Phi (1 - Phi) + z phi (1 - 2 Phi) - phi^2] (z = m / sqrt(v)), the
    difference E[relu(a)^2] - E[relu(a)]^2 with its m^2 terms cancelled by hand: subtracted in float32, two
    numbers near m^2 lose the variance of a unit that is firmly on (m = 20, v = 1e-5 gave 0).
    """
    scale = tf.sqrt(var + 1e-12)
    z = mean / scale
    cdf = 0.5 * tf.math.erfc(-z / math.sqrt(2.0))
    upper = 0.5 * tf.math.erfc(z / math.sqrt(2.0))  # 1 - Phi(z), exact where Phi rounds to 1
    pdf = tf.exp(-0.5 * tf.square(z)) / math.sqrt(2.0 * math.pi)
    first = mean * cdf + scale * pdf
    ratio = cdf + tf.square(z) * cdf * upper + z * pdf * (upper - cdf) - tf.square(pdf)
    return first, tf.square(scale) * tf.maximum(ratio, 0.0)


def rademacher(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """Uniform random signs in {-1, +1} of `shape` from a stateless seed [2], eight from each random byte.

    The draw is size / 32 uniform uint32 words, read as bytes b; each byte picks the row of a [256, 8] table whose
    k-th entry is 1 - 2 * bit_k(b). The bits of a Philox word are independent and fair, so the signs are. One
    gather writes the signs: about 3 ns a sign on this project's CPU against 11 ns for `tfp.random.rademacher`'s
    uniform integer per sign (`benchmarks/random_numbers.py`); flipout draws batch x (inputs + units) signs per
    layer per step. Deterministic in (shape, seed).
    """
    size = tf.reduce_prod(tf.cast(shape, tf.int64))  # int64: S x units may pass 2^31
    words = tf.random.stateless_uniform(tf.reshape((size + 31) // 32, [1]), seed, minval=None, maxval=None,
                                        dtype=tf.uint32)
    random_bytes = tf.cast(tf.reshape(tf.bitcast(words, tf.uint8), [-1]), tf.int32)
    signs = tf.reshape(tf.gather(tf.constant(_SIGNS_OF_BYTE), random_bytes), [-1])[:size]
    return tf.cast(tf.reshape(signs, shape), dtype)


# Row b: the eight signs 1 - 2 * bit_k(b), k = 0..7.
_SIGNS_OF_BYTE = (1.0 - 2.0 * ((np.arange(256)[:, None] >> np.arange(8)) & 1)).astype(np.float32)


class MeanFieldLayer(tf_keras.layers.Layer):
    """Shared machinery: posterior and prior distributions, their KL, and the estimator dispatch.

    Args:
      units: output features (dense) or filters (conv).
      prior_scale: s of the N(0, s^2) prior; the initial value when `learn_prior_scale`.
      learn_prior_scale: learn log s by maximizing the ELBO (empirical Bayes), one s per layer.
      init_rho: initial softplus^-1 of the posterior scales; -5 gives sigma ~ 0.0067, so training starts near a
        deterministic network and the KL term then widens the posterior where the data allow.
    """

    def __init__(self, units: int, prior_scale: float = 1.0, learn_prior_scale: bool = False,
                 init_rho: float = -5.0, **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.prior_scale_init = float(prior_scale)
        self.learn_prior_scale = bool(learn_prior_scale)
        self.init_rho = float(init_rho)
        object.__setattr__(self, "_snapshot", None)

    def _kernel_shape(self, input_shape) -> list:
        raise NotImplementedError

    def build(self, input_shape):
        shape = self._kernel_shape(input_shape)
        fan_in = math.prod(shape[:-1])
        self.kernel_loc = self.add_weight(
            name="kernel_loc", shape=shape,
            initializer=tf_keras.initializers.TruncatedNormal(stddev=math.sqrt(2.0 / fan_in)))
        self.kernel_rho = self.add_weight(name="kernel_rho", shape=shape,
                                          initializer=tf_keras.initializers.Constant(self.init_rho))
        self.bias_loc = self.add_weight(name="bias_loc", shape=[self.units], initializer="zeros")
        self.bias_rho = self.add_weight(name="bias_rho", shape=[self.units],
                                        initializer=tf_keras.initializers.Constant(self.init_rho))
        self.log_prior_scale = self.add_weight(
            name="log_prior_scale", shape=[], trainable=self.learn_prior_scale,
            initializer=tf_keras.initializers.Constant(math.log(self.prior_scale_init)))
        super().build(input_shape)

    @property
    def kernel_scale(self):
        return tf.nn.softplus(self.kernel_rho)

    @property
    def bias_scale(self):
        return tf.nn.softplus(self.bias_rho)

    def posterior(self):
        """(q(W), q(b)) as `tfd.Independent` Normals over the whole kernel and bias."""
        return (tfd.Independent(tfd.Normal(self.kernel_loc, self.kernel_scale), len(self.kernel_loc.shape)),
                tfd.Independent(tfd.Normal(self.bias_loc, self.bias_scale), 1))

    def prior(self):
        """(p(W), p(b)): N(0, s^2) for every weight."""
        scale = tf.exp(self.log_prior_scale)
        return (tfd.Independent(tfd.Normal(tf.zeros_like(self.kernel_loc), scale), len(self.kernel_loc.shape)),
                tfd.Independent(tfd.Normal(tf.zeros_like(self.bias_loc), scale), 1))

    def posterior_parameters(self, with_kl: bool = False) -> Posterior:
        """The posterior's locations and scales as tensors, and with `with_kl` its KL to the prior (`scale_and_kl`:
        the scales and the KL share their softplus, so a training step takes both from here). Inside
        `snapshot()`, without `with_kl`: the snapshot."""
        if self._snapshot is not None and not with_kl:
            return self._snapshot
        kernel_loc, bias_loc = tf.convert_to_tensor(self.kernel_loc), tf.convert_to_tensor(self.bias_loc)
        if not with_kl:
            return Posterior(kernel_loc, self.kernel_scale, bias_loc, self.bias_scale)
        log_s = tf.convert_to_tensor(self.log_prior_scale)
        kernel_scale, kernel_kl = scale_and_kl(kernel_loc, tf.convert_to_tensor(self.kernel_rho), log_s)
        bias_scale, bias_kl = scale_and_kl(bias_loc, tf.convert_to_tensor(self.bias_rho), log_s)
        return Posterior(kernel_loc, kernel_scale, bias_loc, bias_scale, kernel_kl + bias_kl)

    @contextlib.contextmanager
    def snapshot(self):
        """Within, `posterior_parameters()` returns the posterior as it is now: the layer's own location variables,
        and sigma = softplus(rho), tau and the variances sigma^2, tau^2 held in new non-trainable variables (yields
        that `Posterior`).

        For export: a signature traced inside reads sigma^2 from a variable instead of computing softplus(rho)^2
        for every request, a pass over every parameter of the network (478,000 for the MNIST 784-400-400-10
        network) whatever the batch, which dominates a request of a few examples. The variables are
        not the layer's weights (not trained, not checkpointed); whoever traces inside keeps them (the exported
        servable does). On leaving, the layer reads its live weights again.
        """
        q = self.posterior_parameters()
        kernel_var, bias_var = q.variances()
        frozen = Posterior(  # the locations need no copy: the export saves the layer's variables anyway
            self.kernel_loc, tf.Variable(q.kernel_scale, trainable=False, name="serving_kernel_scale"),
            self.bias_loc, tf.Variable(q.bias_scale, trainable=False, name="serving_bias_scale"), None,
            tf.Variable(kernel_var, trainable=False, name="serving_kernel_var"),
            tf.Variable(bias_var, trainable=False, name="serving_bias_var"))
        object.__setattr__(self, "_snapshot", frozen)  # bypasses Keras' tracking: not a weight of the layer
        try:
            yield frozen
        finally:
            object.__setattr__(self, "_snapshot", None)

    def kl(self) -> tf.Tensor:
        """KL(q(W) q(b) || p(W) p(b)) in nats, in closed form (equals TFP's `kl_divergence` of `posterior()` and
        `prior()`)."""
        return self.posterior_parameters(with_kl=True).kl

    def num_variational_parameters(self) -> int:
        return 2 * (int(tf.size(self.kernel_loc)) + int(tf.size(self.bias_loc)))

    def call(self, inputs, seed, estimator: str = "local_reparameterization", num_samples=1,
             posterior: Posterior | None = None):
        """Pre-activations [S, batch, ..., units] for inputs [S, batch, ...] or [batch, ...] (shared by all S).

        `posterior`: this step's `posterior_parameters()` when the caller also needs them (training takes the KL
        from the same tensors); read here otherwise.
        """
        if estimator not in ESTIMATORS + (PREDICTIVE,):
            raise ValueError(f"estimator must be one of {ESTIMATORS + (PREDICTIVE,)}, got {estimator!r}")
        if posterior is None:
            posterior = self.posterior_parameters()
        return getattr(self, f"_{estimator}")(inputs, seed, num_samples, posterior)


class DenseMeanField(MeanFieldLayer):
    """A dense layer with a mean-field Gaussian posterior over its kernel [in, units] and bias [units]."""

    def _kernel_shape(self, input_shape):
        return [int(input_shape[-1]), self.units]

    def _shared(self, x, num_samples):
        """x [S, B, in] or, when shared, [B, in]: returns (x, S, shared?)."""
        if x.shape.rank == 2:
            return x, num_samples, True
        return x, tf.shape(x)[0], False

    def moments(self, mean, var=None):
        """Mean and variance [batch, units] of the pre-activations for inputs with independent units.

        Args:
          mean: E[h] [batch, in].
          var: Var[h] [batch, in]; None for a deterministic input (then the result is exact).
        """
        q = self.posterior_parameters()
        kernel_var, bias_var = q.variances()
        out_mean = dense(mean, q.kernel_loc, q.bias_loc)
        second = tf.square(mean) if var is None else tf.square(mean) + var
        out_var = dense(second, kernel_var, bias_var)
        if var is not None:
            out_var += dense(var, tf.square(q.kernel_loc))
        return out_mean, out_var

    def predictive_moments(self, x, q):
        """(mean, stddev) [..., units] of the pre-activations given inputs x [..., in]: local reparameterization's
        two products, m = x mu + nu and sqrt(v) = sqrt(x^2 sigma^2 + tau^2)."""
        kernel_var, bias_var = q.variances()
        return dense(x, q.kernel_loc, q.bias_loc), tf.sqrt(dense(tf.square(x), kernel_var, bias_var))

    def predictive_draws(self, num_samples, seed, q):
        """The predictive route's noise eps [S, 1, units]: one draw per sample and unit, shared by the batch."""
        return normal(tf.stack([num_samples, 1, self.units]), seed, dtype=q.kernel_loc.dtype)

    def predictive_apply(self, x, draws, q):
        """Pre-activations [k, batch, units] = m + sqrt(v) eps for inputs x [k, batch, in] (or shared [batch, in])
        and k samples' `predictive_draws`."""
        mean, std = self.predictive_moments(x, q)
        return mean + std * draws

    def _local_reparameterization(self, x, seed, num_samples, q):
        x, s, shared = self._shared(x, num_samples)
        mean, std = self.predictive_moments(x, q)
        shape = tf.concat([[s], tf.shape(mean)], 0) if shared else tf.shape(mean)
        return mean + std * normal(shape, seed, dtype=mean.dtype)

    def _predictive(self, x, seed, num_samples, q):
        _, s, _ = self._shared(x, num_samples)
        return self.predictive_apply(x, self.predictive_draws(s, seed, q), q)

    def _reparameterization(self, x, seed, num_samples, q):
        x, s, shared = self._shared(x, num_samples)
        kernel_seed, bias_seed = _split(seed, 2)
        kernel = q.kernel_loc + q.kernel_scale * normal(
            tf.concat([[s], tf.shape(q.kernel_loc)], 0), kernel_seed, dtype=q.kernel_loc.dtype)
        bias = q.bias_loc + q.bias_scale * normal(
            tf.stack([s, self.units]), bias_seed, dtype=q.bias_loc.dtype)
        equation = "bi,sio->sbo" if shared else "sbi,sio->sbo"
        return tf.einsum(equation, x, kernel) + bias[:, None, :]

    def _flipout(self, x, seed, num_samples, q):
        x, s, shared = self._shared(x, num_samples)
        kernel_seed, bias_seed, in_seed, out_seed = _split(seed, 4)
        if shared:
            x = tf.broadcast_to(x, tf.concat([[s], tf.shape(x)], 0))
        mean = dense(x, q.kernel_loc)
        delta = q.kernel_scale * normal(
            tf.concat([[s], tf.shape(q.kernel_loc)], 0), kernel_seed, dtype=x.dtype)
        sign_in = rademacher(tf.shape(x), in_seed, x.dtype)
        sign_out = rademacher(tf.shape(mean), out_seed, x.dtype)
        perturbation = tf.einsum("sbi,sio->sbo", x * sign_in, delta) * sign_out
        bias = q.bias_loc + q.bias_scale * normal(
            tf.stack([s, self.units]), bias_seed, dtype=x.dtype)
        return mean + perturbation + bias[:, None, :]


class Conv2DMeanField(MeanFieldLayer):
    """A 2-D convolution ('SAME' padding) with a mean-field Gaussian posterior over kernel [kh, kw, in, filters].

    Local reparameterization convolves the means and the variances (x^2 with sigma^2): vectorized over S; it
    treats one example's output positions as independent although they share the kernel, so it is an
    approximation here (a training option), and the predictive samples kernels (`_predictive`).
    Reparameterization and Flipout need one kernel per sample and run the samples one after another
    (`tf.map_fn`); training uses one sample per step, so this costs nothing there. Flipout's signs are drawn per
    example and channel and shared by every position, so each example sees one kernel with the exact marginal
    (Wen et al. 2018, section 3.2): its output positions keep the correlation weight sampling gives them.
    """

    def __init__(self, filters: int, kernel_size: int = 5, strides: int = 1, **kwargs):
        super().__init__(filters, **kwargs)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)

    def _kernel_shape(self, input_shape):
        return [self.kernel_size, self.kernel_size, int(input_shape[-1]), self.units]

    def _conv(self, x, kernel):
        return tf.nn.conv2d(x, kernel, strides=self.strides, padding="SAME")

    def _merge(self, x, num_samples):
        """[S, B, H, W, C] (or shared [B, H, W, C]) -> ([S*B, H, W, C], S, shared?)."""
        if x.shape.rank == 4:
            return x, num_samples, True
        shape = tf.shape(x)
        return tf.reshape(x, tf.concat([[shape[0] * shape[1]], shape[2:]], 0)), shape[0], False

    def _split_samples(self, y, s):
        shape = tf.shape(y)
        return tf.reshape(y, tf.concat([[s, shape[0] // s], shape[1:]], 0))

    def _local_reparameterization(self, x, seed, num_samples, q):
        flat, s, shared = self._merge(x, num_samples)
        kernel_var, bias_var = q.variances()
        mean = tf.nn.bias_add(self._conv(flat, q.kernel_loc), q.bias_loc)
        var = tf.nn.bias_add(self._conv(tf.square(flat), kernel_var), bias_var)
        if shared:
            shape = tf.concat([[s], tf.shape(mean)], 0)
            return mean + tf.sqrt(var) * normal(shape, seed, dtype=mean.dtype)
        noise = normal(tf.shape(mean), seed, dtype=mean.dtype)
        return self._split_samples(mean + tf.sqrt(var) * noise, s)

    def _per_sample(self, x, seed, num_samples, body):
        if x.shape.rank == 4:
            x = tf.broadcast_to(x, tf.concat([[num_samples], tf.shape(x)], 0))
        seeds = tfp.random.split_seed(seed, n=tf.shape(x)[0])
        return tf.map_fn(lambda args: body(*args), (x, seeds), fn_output_signature=x.dtype)

    def _reparameterization(self, x, seed, num_samples, q):
        def body(xs, s):
            kernel_seed, bias_seed = _split(s, 2)
            kernel = q.kernel_loc + q.kernel_scale * normal(
                tf.shape(q.kernel_loc), kernel_seed, dtype=xs.dtype)
            bias = q.bias_loc + q.bias_scale * normal(
                [self.units], bias_seed, dtype=xs.dtype)
            return self._conv(xs, kernel) + bias

        return self._per_sample(x, seed, num_samples, body)

    def predictive_draws(self, num_samples, seed, q):
        """S sampled kernels [S, kh, kw, in, filters] and biases [S, filters] (exact: see the class docstring)."""
        kernel_seed, bias_seed = _split(seed, 2)
        kernels = q.kernel_loc + q.kernel_scale * normal(
            tf.concat([[num_samples], tf.shape(q.kernel_loc)], 0), kernel_seed, dtype=q.kernel_loc.dtype)
        biases = q.bias_loc + q.bias_scale * normal(
            tf.stack([num_samples, self.units]), bias_seed, dtype=q.bias_loc.dtype)
        return kernels, biases

    def predictive_apply(self, x, draws, q):
        """Outputs [k, B, H', W', filters] of k sampled kernels (`predictive_draws`), all in one convolution: the
        kernels side by side along the output channels, [kh, kw, in, k * filters]; a shared input [B, H, W, C] is
        convolved with all of them, per-sample inputs [k, B, H, W, C] go in as k groups of channels,
        [B, H, W, k * C], each meeting its own kernel (a grouped convolution)."""
        del q  # the draws are whole kernels
        kernels, biases = draws
        s = tf.shape(kernels)[0]
        if x.shape.rank != 4:
            shape = tf.shape(x)
            x = tf.reshape(tf.transpose(x, [1, 2, 3, 0, 4]), tf.concat([shape[1:4], [s * shape[4]]], 0))
        kernel_shape = tf.shape(kernels)[1:]
        stacked = tf.reshape(tf.transpose(kernels, [1, 2, 3, 0, 4]),
                             tf.concat([kernel_shape[:3], [s * self.units]], 0))
        y = self._conv(x, stacked)  # [B, H', W', k * out]
        shape = tf.shape(y)
        y = tf.transpose(tf.reshape(y, tf.concat([shape[:3], [s, self.units]], 0)), [3, 0, 1, 2, 4])
        return y + biases[:, None, None, None, :]

    def _predictive(self, x, seed, num_samples, q):
        s = num_samples if x.shape.rank == 4 else tf.shape(x)[0]
        return self.predictive_apply(x, self.predictive_draws(s, seed, q), q)

    def _flipout(self, x, seed, num_samples, q):
        def body(xs, s):
            kernel_seed, bias_seed, in_seed, out_seed = _split(s, 4)
            mean = self._conv(xs, q.kernel_loc)
            delta = q.kernel_scale * normal(
                tf.shape(q.kernel_loc), kernel_seed, dtype=xs.dtype)
            # Signs per example and channel, shared by all positions: example n convolves with the one kernel
            # mu + delta * (r_n s_n^T) (a sign per position would give each position its own kernel, dropping
            # the correlation between positions that weight sampling has).
            batch = tf.shape(xs)[0]
            sign_in = rademacher(tf.stack([batch, 1, 1, tf.shape(xs)[3]]), in_seed, xs.dtype)
            sign_out = rademacher(tf.stack([batch, 1, 1, self.units]), out_seed, xs.dtype)
            bias = q.bias_loc + q.bias_scale * normal(
                [self.units], bias_seed, dtype=xs.dtype)
            return mean + self._conv(xs * sign_in, delta) * sign_out + bias

        return self._per_sample(x, seed, num_samples, body)
