"""Stick-breaking latents with Kumaraswamy fractions: a reparameterization through a tractable inverse CDF.

The stick-breaking VAE (Nalisnick and Smyth 2017, "Stick-Breaking Variational Autoencoders") draws a truncated
Griffiths-Engen-McCloskey (GEM) prior over mixture weights pi in the K-simplex by breaking a unit stick:

    v_k ~ Beta(1, alpha),   pi_1 = v_1,   pi_k = v_k prod_{j<k} (1 - v_j)  (k < K),   pi_K = prod_{j<K} (1 - v_j).

The Beta has no differentiable closed-form sampler, so the posterior over each fraction is a Kumaraswamy(a, b),
which has one: its density and CDF on (0, 1) are

    q(v) = a b v^(a-1) (1 - v^a)^(b-1),      F(v) = 1 - (1 - v^a)^b,

and the CDF inverts in closed form, so v is a differentiable function of uniform noise (the third row of the
reparameterization table: any distribution with a tractable inverse CDF, u ~ U(0, 1), v = F^{-1}(u)):

    v = (1 - (1 - u)^(1/b))^(1/a).

The KL from a Kumaraswamy(a, b) to a Beta(alpha, beta) has a closed form up to one series (Nalisnick and Smyth
2017, appendix; gamma is Euler's constant, psi the digamma function, B the Beta function):

    KL = (a - alpha)/a (-gamma - psi(b) - 1/b) + log(a b) + log B(alpha, beta) - (b - 1)/b
         + (beta - 1) b sum_{m>=1} B(m/a, b) / (m + a b),

the last term being (beta - 1) E_q[-log(1 - v)], expanded as -log(1 - v) = sum_m v^m / m with
E_q[v^m] = b B(1 + m/a, b). The series' terms fall like Gamma(b) a^b m^-(1 + b) (B(x, b) ~ Gamma(b) x^-b), slowly
for small b, so `kl_kumaraswamy_beta` sums `KL_TERMS` terms exactly and adds that power law's tail beyond them
(Nalisnick and Smyth truncate after 10 terms, which underestimates the KL where b < 1).

The mixture weights' moments follow from the fractions' independence: pi_k is a product of independent factors,

    E[pi_k] = E[v_k] prod_{j<k} (1 - E[v_j]),   E[pi_k^2] = E[v_k^2] prod_{j<k} E[(1 - v_j)^2],

with the Kumaraswamy's moments E[v^n] = b B(1 + n/a, b): the expected weights are the weights of the expected
fractions. `KumaraswamyStickBreaking` is the distribution of pi, both the posterior and the truncated GEM prior, since
Beta(1, alpha) is Kumaraswamy(1, alpha) (both densities are alpha (1 - v)^(alpha - 1)), so the prior's fractions are
drawn by the same inverse CDF, v = 1 - (1 - u)^(1/alpha).

Only core TensorFlow ops are used (the distribution class is a TFP wrapper whose methods trace to core ops), so an
exported signature that samples the latent loads without TFP.
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

EULER_GAMMA = 0.5772156649015329
# Terms of the KL's series summed exactly before its tail's closed form.
KL_TERMS = 100
# Fractions are kept this far inside (0, 1): log(1 - v) and log v stay finite in float32.
FRACTION_EPS = 1e-6


def kumaraswamy_inverse_cdf(a, b, u):
    """v = F^{-1}(u) = (1 - (1 - u)^(1/b))^(1/a), elementwise, computed in log space.

    Args:
      a, b: positive concentrations, broadcastable to u's shape.
      u: uniform noise in (0, 1).

    Returns:
      Fractions v in [FRACTION_EPS, 1 - FRACTION_EPS], differentiable in a and b.
    """
    # 1 - (1 - u)^(1/b) = -expm1(log1p(-u) / b): exact for u near 0 and for large b, where the naive form cancels.
    log_one_minus_v_a = tf.math.log1p(-u) / b
    log_v = tf.math.log(-tf.math.expm1(log_one_minus_v_a)) / a
    return tf.clip_by_value(tf.exp(log_v), FRACTION_EPS, 1.0 - FRACTION_EPS)


def sample_kumaraswamy(a, b, shape, seed):
    """Stateless draws [*shape] of Kumaraswamy(a, b) (a, b broadcast to `shape`) by the inverse CDF.

    `seed` is a [2] int32 tensor: the same seed gives the same draws."""
    u = tf.random.stateless_uniform(shape, seed, minval=FRACTION_EPS, maxval=1.0 - FRACTION_EPS, dtype=a.dtype)
    return kumaraswamy_inverse_cdf(a, b, u)


def kumaraswamy_log_prob(v, a, b):
    """log q(v) = log a + log b + (a - 1) log v + (b - 1) log(1 - v^a)."""
    return (tf.math.log(a) + tf.math.log(b) + (a - 1.0) * tf.math.log(v)
            + (b - 1.0) * tf.math.log(-tf.math.expm1(a * tf.math.log(v))))


def kl_kumaraswamy_beta(a, b, alpha, beta, terms: int = KL_TERMS, tail: bool = True):
    """KL(Kumaraswamy(a, b) || Beta(alpha, beta)), elementwise: `terms` terms of the series, then (`tail`) its tail.

    Args:
      a, b: the posterior's concentrations [...].
      alpha, beta: the prior's (Python floats or tensors broadcastable to a).

    Returns:
      The KL [...] in nats.
    """
    alpha = tf.cast(alpha, a.dtype)
    beta = tf.cast(beta, a.dtype)
    m = tf.range(1, terms + 1, dtype=a.dtype)  # [terms]
    a_, b_ = a[..., None], b[..., None]
    log_beta_fn = tf.math.lgamma(m / a_) + tf.math.lgamma(b_) - tf.math.lgamma(m / a_ + b_)
    series = tf.reduce_sum(tf.exp(log_beta_fn) / (m + a_ * b_), axis=-1)
    # sum_{m > M} Gamma(b) a^b m^-b / (m + a b) ~ the integral from M + 1/2 of Gamma(b) a^b x^-(1+b) dx (x >> a b).
    start = tf.constant(terms + 0.5, a.dtype)
    if tail:
        series += (tf.exp(tf.math.lgamma(b) + b * tf.math.log(a) - b * tf.math.log(start)) / b
                   * start / (start + a * b))
    log_beta_prior = tf.math.lgamma(alpha) + tf.math.lgamma(beta) - tf.math.lgamma(alpha + beta)
    return ((a - alpha) / a * (-EULER_GAMMA - tf.math.digamma(b) - 1.0 / b) + tf.math.log(a * b) + log_beta_prior
            - (b - 1.0) / b + (beta - 1.0) * b * series)


def stick_breaking_weights(v):
    """Mixture weights pi [..., K] from K - 1 fractions v [..., K - 1]: pi_k = v_k prod_{j<k} (1 - v_j), and the
    last weight takes what is left of the stick, so the weights sum to one."""
    log_rest = tf.math.cumsum(tf.math.log1p(-v), axis=-1, exclusive=True)  # log prod_{j<k} (1 - v_j)
    left = tf.exp(log_rest[..., -1:] + tf.math.log1p(-v[..., -1:]))
    return tf.concat([v * tf.exp(log_rest), left], axis=-1)


def fraction_moment(a, b, order: float):
    """E_q[v^n] = b B(1 + n/a, b) for Kumaraswamy(a, b), elementwise, n = `order`."""
    return tf.exp(tf.math.log(b) + tf.math.lgamma(1.0 + order / a) + tf.math.lgamma(b)
                  - tf.math.lgamma(1.0 + order / a + b))


def expected_fraction(a, b):
    """E_q[v] = b B(1 + 1/a, b) for Kumaraswamy(a, b): the fractions' posterior mean, for a deterministic code."""
    return fraction_moment(a, b, 1.0)


def weight_moments(a, b):
    """Mean and standard deviation [..., K] of the weights pi = stick_breaking_weights(v) of independent fractions
    v_k ~ Kumaraswamy(a_k, b_k), a and b [..., K - 1] (module docstring), evaluated in float64: the variance
    E[pi^2] - E[pi]^2 cancels where a weight is nearly certain."""
    dtype = a.dtype
    a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
    m1, m2 = fraction_moment(a, b, 1.0), fraction_moment(a, b, 2.0)
    mean = stick_breaking_weights(m1)
    rest_squared = tf.math.cumprod(1.0 - 2.0 * m1 + m2, axis=-1)  # prod_{j<=k} E[(1 - v_j)^2]
    previous = tf.concat([tf.ones_like(rest_squared[..., :1]), rest_squared[..., :-1]], axis=-1)
    second = tf.concat([m2 * previous, rest_squared[..., -1:]], axis=-1)
    stddev = tf.sqrt(tf.maximum(second - tf.square(mean), 0.0))
    return tf.cast(mean, dtype), tf.cast(stddev, dtype)


def _log1mexp(x):
    """log(1 - e^x) for x <= 0, accurate at both ends (Maechler 2012); each branch sees only inputs it takes, so
    neither gives the other's gradient a NaN."""
    near_zero = x > -0.6931472
    return tf.where(near_zero, tf.math.log(-tf.math.expm1(tf.where(near_zero, x, -1.0))),
                    tf.math.log1p(-tf.exp(tf.where(near_zero, -1.0, x))))


def log_fractions_from_weights(pi):
    """(log v, log(1 - v), log rest) [..., K - 1] of the fractions that break the stick into weights pi [..., K]
    (every weight positive): rest_k = prod_{j<k} (1 - v_j) = sum_{j>=k} pi_j, v_k = pi_k / rest_k and
    1 - v_k = rest_{k+1} / rest_k. The rests are sums of weights, not differences, so no cancellation; of log v and
    log(1 - v), the one nearer 0 is recomputed from the other (`_log1mexp`), accurate for v near 0 and near 1."""
    log_rest = tf.math.log(tf.math.cumsum(pi, axis=-1, reverse=True))  # [..., K]
    log_v = tf.math.log(pi[..., :-1]) - log_rest[..., :-1]
    log_1mv = log_rest[..., 1:] - log_rest[..., :-1]
    log_v, log_1mv = (tf.where(log_v > log_1mv, _log1mexp(log_1mv), log_v),
                      tf.where(log_v > log_1mv, log_1mv, _log1mexp(log_v)))
    return log_v, log_1mv, log_rest[..., :-1]


class KumaraswamyStickBreaking(tfd.Distribution):
    """Weights pi [..., K] in the simplex from K - 1 independent fractions v_k ~ Kumaraswamy(a_k, b_k):
    pi = stick_breaking_weights(v).

    The stick-breaking VAE's posterior q(pi | x), and, with a = 1 and b = alpha (`gem_prior`), the truncated GEM
    prior, whose fractions are Beta(1, alpha). Draws by the inverse CDF of uniform noise (`fractions`), so they are
    reparameterized. `log_prob` is the density of the first K - 1 weights (the last is one minus their sum):

        log q(pi) = sum_{k<K} [log q(v_k) - log rest_k],   rest_k = prod_{j<k} (1 - v_j),

    the change of variables v -> pi being triangular with diagonal dpi_k/dv_k = rest_k. The VAE weighs its draws
    with `fractions_log_prob` of the fractions it drew instead: the Jacobian is the same for q and the prior, so it
    cancels in the ratio p(pi) / q(pi), and the fractions need not be recovered from the weights.

    Args:
      concentration1: a [..., K - 1], positive.
      concentration0: b [..., K - 1], positive.
    """

    def __init__(self, concentration1, concentration0, validate_args=False, allow_nan_stats=True,
                 name="KumaraswamyStickBreaking"):
        parameters = dict(locals())
        with tf.name_scope(name) as name:
            self._concentration1 = tf.convert_to_tensor(concentration1, tf.float32, name="concentration1")
            self._concentration0 = tf.convert_to_tensor(concentration0, tf.float32, name="concentration0")
            super().__init__(dtype=tf.float32, reparameterization_type=tfd.FULLY_REPARAMETERIZED,
                             validate_args=validate_args, allow_nan_stats=allow_nan_stats, parameters=parameters,
                             name=name)

    @classmethod
    def _parameter_properties(cls, dtype, num_classes=None):
        return dict(concentration1=tfp.util.ParameterProperties(event_ndims=1),
                    concentration0=tfp.util.ParameterProperties(event_ndims=1))

    @property
    def concentration1(self):
        """a [..., K - 1]."""
        return self._concentration1

    @property
    def concentration0(self):
        """b [..., K - 1]."""
        return self._concentration0

    def _event_shape(self):
        fractions = tf.broadcast_static_shape(self._concentration1.shape[-1:], self._concentration0.shape[-1:])
        return tf.TensorShape([None if fractions[0] is None else fractions[0] + 1])

    def _event_shape_tensor(self):
        return tf.broadcast_dynamic_shape(tf.shape(self._concentration1)[-1:],
                                          tf.shape(self._concentration0)[-1:]) + 1

    def _fraction_shape(self):
        return tf.concat([self.batch_shape_tensor(), self.event_shape_tensor() - 1], 0)

    def fractions(self, u):
        """v = F^{-1}(u) [..., K - 1] for uniform noise u [..., K - 1] (broadcast against the parameters)."""
        return kumaraswamy_inverse_cdf(self._concentration1, self._concentration0, u)

    def fractions_log_prob(self, v):
        """sum_k log q(v_k) [...] of fractions v [..., K - 1]."""
        return tf.reduce_sum(kumaraswamy_log_prob(v, self._concentration1, self._concentration0), axis=-1)

    def _sample_n(self, n, seed=None):
        shape = tf.concat([[n], self._fraction_shape()], 0)
        u = tf.random.stateless_uniform(shape, tfp.random.sanitize_seed(seed), minval=FRACTION_EPS,
                                        maxval=1.0 - FRACTION_EPS)
        return stick_breaking_weights(self.fractions(u))

    def _log_prob(self, pi):
        a, b = self._concentration1, self._concentration0
        log_v, _, log_rest = log_fractions_from_weights(pi)
        # log q(v) = log a + log b + (a - 1) log v + (b - 1) log(1 - v^a), from log v (accurate near v = 1 too).
        log_q = (tf.math.log(a) + tf.math.log(b) + (a - 1.0) * log_v
                 + (b - 1.0) * _log1mexp(a * log_v))
        return tf.reduce_sum(log_q - log_rest, axis=-1)

    def _mean(self):
        return weight_moments(self._concentration1, self._concentration0)[0]

    def _stddev(self):
        return weight_moments(self._concentration1, self._concentration0)[1]

    def _variance(self):
        return tf.square(self._stddev())


def gem_prior(alpha: float, components: int) -> KumaraswamyStickBreaking:
    """The GEM(alpha) prior truncated to K = `components` weights: fractions v_k ~ Beta(1, alpha) = Kumaraswamy(1,
    alpha), batch shape [], event [K]."""
    ones = tf.ones([components - 1], tf.float32)
    return KumaraswamyStickBreaking(ones, alpha * ones, name="GEM")


def kl_to_gem(q: KumaraswamyStickBreaking, alpha: float) -> tf.Tensor:
    """KL(q || GEM(alpha)) [...] summed over the K - 1 fractions (the last weight is their remainder, no variable of
    its own): sum_k KL(Kumaraswamy(a_k, b_k) || Beta(1, alpha))."""
    return tf.reduce_sum(kl_kumaraswamy_beta(q.concentration1, q.concentration0, 1.0, alpha), axis=-1)
