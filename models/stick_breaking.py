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

Only core TensorFlow ops are used, so an exported signature that samples the latent loads without TFP.
"""

from __future__ import annotations

import tensorflow as tf

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


def expected_fraction(a, b):
    """E_q[v] = b B(1 + 1/a, b) for Kumaraswamy(a, b): the fractions' posterior mean, for a deterministic code."""
    return tf.exp(tf.math.log(b) + tf.math.lgamma(1.0 + 1.0 / a) + tf.math.lgamma(b)
                  - tf.math.lgamma(1.0 + 1.0 / a + b))
