"""Kumaraswamy fractions by the inverse CDF, their KL to a Beta, and stick-breaking weights."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from models import stick_breaking as sb

tfd = tfp.distributions
CONCENTRATIONS = [(0.5, 0.3), (1.0, 1.0), (2.0, 5.0), (0.3, 4.0), (5.0, 0.8)]


@pytest.mark.parametrize("a, b", CONCENTRATIONS)
def test_inverse_cdf_draws_follow_the_kumaraswamy_distribution(a, b):
    v = sb.sample_kumaraswamy(tf.constant(a, tf.float64), tf.constant(b, tf.float64), [200000],
                              tf.constant([3, 4])).numpy()
    # The CDF of the draws at fixed points matches F(v) = 1 - (1 - v^a)^b within sampling error (4 sigma).
    for point in (0.1, 0.3, 0.5, 0.7, 0.9):
        expected = 1.0 - (1.0 - point ** a) ** b
        assert abs(np.mean(v <= point) - expected) < 4 * np.sqrt(expected * (1 - expected) / len(v)) + 1e-4
    reference = tfd.Kumaraswamy(np.float64(a), np.float64(b))
    np.testing.assert_allclose(v.mean(), float(reference.mean()), atol=4 * float(reference.stddev()) / np.sqrt(len(v)))


def test_the_log_density_is_tfps():
    v = tf.constant([0.01, 0.2, 0.5, 0.93], tf.float64)
    for a, b in CONCENTRATIONS:
        np.testing.assert_allclose(sb.kumaraswamy_log_prob(v, tf.constant(a, tf.float64), tf.constant(b, tf.float64)),
                                   tfd.Kumaraswamy(np.float64(a), np.float64(b)).log_prob(v), rtol=1e-9)


def test_gradients_through_the_sampler_match_finite_differences():
    u = tf.constant([0.03, 0.4, 0.77, 0.98], tf.float64)
    a, b = tf.Variable(1.7, dtype=tf.float64), tf.Variable(0.9, dtype=tf.float64)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(sb.kumaraswamy_inverse_cdf(a, b, u) ** 2)
    grad_a, grad_b = tape.gradient(total, [a, b])
    h = 1e-6

    def f(da, db):
        return float(tf.reduce_sum(sb.kumaraswamy_inverse_cdf(a + da, b + db, u) ** 2))

    np.testing.assert_allclose(grad_a, (f(h, 0) - f(-h, 0)) / (2 * h), rtol=1e-6)
    np.testing.assert_allclose(grad_b, (f(0, h) - f(0, -h)) / (2 * h), rtol=1e-6)


def _log1mexp(x):
    """log(1 - e^x) for x < 0, accurate at both ends."""
    return np.where(x > -0.693, np.log(-np.expm1(np.minimum(x, -1e-300))), np.log1p(-np.exp(np.minimum(x, -0.693))))


@pytest.mark.parametrize("a, b", CONCENTRATIONS)
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (1.0, 5.0), (2.0, 0.5)])
def test_kl_to_a_beta_matches_a_monte_carlo_estimate(a, b, alpha, beta):
    # Exact draws in log space (the sampler keeps v inside (1e-6, 1 - 1e-6) for float32, which shifts an estimate
    # of E[log q] where b < 1 puts mass within 1e-6 of 1): with w = 1 - (1 - u)^(1/b), v = w^(1/a),
    # log(1 - v^a) = log(1 - u) / b, log v = log(w) / a, log(1 - v) = log(-expm1(log v)).
    u = np.random.default_rng(0).uniform(size=400000)
    log_1m_va = np.log1p(-u) / b
    log_v = _log1mexp(log_1m_va) / a
    log_1m_v = _log1mexp(log_v)
    log_q = np.log(a) + np.log(b) + (a - 1) * log_v + (b - 1) * log_1m_va
    log_beta_fn = float(tf.math.lbeta(tf.constant([alpha, beta], tf.float64)))
    log_p = (alpha - 1) * log_v + (beta - 1) * log_1m_v - log_beta_fn
    mc, stderr = np.mean(log_q - log_p), np.std(log_q - log_p) / np.sqrt(len(u))
    kl = float(sb.kl_kumaraswamy_beta(tf.constant(a, tf.float64), tf.constant(b, tf.float64), alpha, beta))
    assert abs(kl - mc) < 5 * stderr + 1e-3, (kl, mc, stderr)


def test_the_series_tail_matters_where_b_is_small():
    a, b = tf.constant(0.5, tf.float64), tf.constant(0.3, tf.float64)
    with_tail = float(sb.kl_kumaraswamy_beta(a, b, 1.0, 5.0))
    many_terms = float(sb.kl_kumaraswamy_beta(a, b, 1.0, 5.0, terms=20000))
    assert abs(with_tail - many_terms) < 1e-3 * abs(many_terms)
    # Ten terms and no tail (as Nalisnick and Smyth's code) fall short by far more than that.
    assert many_terms - float(sb.kl_kumaraswamy_beta(a, b, 1.0, 5.0, terms=10, tail=False)) > 0.1


def test_stick_breaking_weights_sum_to_one_and_follow_the_sticks():
    v = tf.constant([[0.5, 0.5, 0.5], [0.9, 0.1, 0.99]], tf.float64)
    pi = sb.stick_breaking_weights(v).numpy()
    np.testing.assert_allclose(pi[0], [0.5, 0.25, 0.125, 0.125])
    np.testing.assert_allclose(pi[1], [0.9, 0.1 * 0.1, 0.1 * 0.9 * 0.99, 0.1 * 0.9 * 0.01])
    np.testing.assert_allclose(pi.sum(-1), 1.0)


def test_expected_fraction_is_the_kumaraswamy_mean():
    for a, b in CONCENTRATIONS:
        np.testing.assert_allclose(sb.expected_fraction(tf.constant(a, tf.float64), tf.constant(b, tf.float64)),
                                   tfd.Kumaraswamy(np.float64(a), np.float64(b)).mean(), rtol=1e-9)


def test_weight_moments_match_the_moments_of_drawn_weights():
    a = tf.constant([[0.5, 2.0, 1.0], [3.0, 0.7, 1.5]], tf.float64)
    b = tf.constant([[1.0, 5.0, 2.0], [2.0, 0.9, 4.0]], tf.float64)
    u = tf.random.stateless_uniform([200000, 2, 3], [5, 6], dtype=tf.float64)
    pi = sb.stick_breaking_weights(sb.kumaraswamy_inverse_cdf(a, b, u)).numpy()
    mean, stddev = (m.numpy() for m in sb.weight_moments(a, b))
    assert mean.shape == stddev.shape == (2, 4)
    np.testing.assert_allclose(mean.sum(-1), 1.0)
    np.testing.assert_allclose(pi.mean(0), mean, atol=4 * pi.std(0).max() / np.sqrt(len(pi)))
    np.testing.assert_allclose(pi.std(0), stddev, rtol=0.01)
    # The expected weights are the weights of the expected fractions.
    np.testing.assert_allclose(mean, sb.stick_breaking_weights(sb.expected_fraction(a, b)), rtol=1e-12)


def test_the_weights_log_density_is_the_fractions_with_the_stick_breaking_jacobian():
    q = sb.KumaraswamyStickBreaking([[0.6, 2.0, 1.0, 3.0]], [[1.5, 5.0, 0.5, 0.8]])
    assert q.batch_shape == (1,) and q.event_shape == (5,)
    u = tf.random.stateless_uniform([50, 1, 4], [7, 8], minval=1e-3, maxval=1 - 1e-3)
    v = q.fractions(u)
    pi = sb.stick_breaking_weights(v)
    log_rest = tf.reduce_sum(tf.math.cumsum(tf.math.log1p(-v), axis=-1, exclusive=True), axis=-1)
    np.testing.assert_allclose(q.log_prob(pi), q.fractions_log_prob(v) - log_rest, rtol=1e-5, atol=1e-4)
    # d pi / d v is triangular with diagonal rest_k: its log-determinant is what log_prob takes off.
    v0 = v[:, 0]
    with tf.GradientTape() as tape:
        tape.watch(v0)
        first = sb.stick_breaking_weights(v0)[..., :-1]
    jacobian = tape.batch_jacobian(first, v0)  # [50, 4, 4]
    np.testing.assert_allclose(tf.linalg.slogdet(tf.cast(jacobian, tf.float64))[1], log_rest[:, 0], atol=1e-4)


def test_the_gem_prior_breaks_the_stick_with_beta_fractions():
    alpha, k = 3.0, 6
    prior = sb.gem_prior(alpha, k)
    assert prior.batch_shape == () and prior.event_shape == (k,)
    v = tf.constant([[0.01, 0.3, 0.5, 0.9, 0.999]])
    np.testing.assert_allclose(prior.fractions_log_prob(v), tf.reduce_sum(tfd.Beta(1.0, alpha).log_prob(v), -1),
                               rtol=1e-5)
    pi = prior.sample(100000, seed=[2, 3]).numpy()
    np.testing.assert_allclose(pi.sum(-1), 1.0, rtol=1e-5)
    # The first weight is the first fraction, Beta(1, alpha): CDF 1 - (1 - x)^alpha.
    for point in (0.05, 0.2, 0.5):
        expected = 1.0 - (1.0 - point) ** alpha
        assert abs(np.mean(pi[:, 0] <= point) - expected) < 4 * np.sqrt(expected * (1 - expected) / len(pi))
    np.testing.assert_allclose(pi.mean(0), prior.mean(), atol=0.005)


def test_kl_to_the_gem_prior_sums_the_free_fractions_kls():
    a, b = tf.constant([[0.8, 2.0, 1.3]]), tf.constant([[1.2, 4.0, 6.0]])
    kl = sb.kl_to_gem(sb.KumaraswamyStickBreaking(a, b), 5.0)
    np.testing.assert_allclose(kl, tf.reduce_sum(sb.kl_kumaraswamy_beta(a, b, 1.0, 5.0), -1), rtol=1e-6)
    assert float(sb.kl_to_gem(sb.gem_prior(5.0, 4), 5.0)) == pytest.approx(0.0, abs=1e-4)
