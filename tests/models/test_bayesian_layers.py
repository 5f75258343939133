"""Mean-field layers: the stochastic contract, the estimators' distributions, KL and the learned prior."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from models import bayesian_layers

tfd = tfp.distributions
SEED_A, SEED_B = tf.constant([1, 2]), tf.constant([3, 4])


def _normal_cdf(z):
    return 0.5 * (1.0 + np.vectorize(math.erf)(z / math.sqrt(2.0)))


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_normal_draws_are_standard_normal_and_the_pairs_independent(dtype):
    """Kolmogorov-Smirnov distance to the N(0, 1) CDF below the 0.1% critical value (1.95 / sqrt(n)), moments up to
    the fourth, and the two halves of each Box-Muller pair uncorrelated, in their values and their squares (a
    shared radius would correlate the squares)."""
    n = 200_001  # odd: the last pair is cut
    z = bayesian_layers.normal([n], SEED_A, dtype).numpy()
    assert z.dtype == dtype.as_numpy_dtype and np.all(np.isfinite(z))
    ks = np.max(np.abs(np.arange(1, n + 1) / n - _normal_cdf(np.sort(z))))
    assert ks < 1.95 / math.sqrt(n)
    assert abs(z.mean()) < 4 / math.sqrt(n) and abs(z.var() - 1) < 4 * math.sqrt(2 / n)
    assert abs(np.mean(z ** 4) - 3) < 4 * math.sqrt(96 / n)
    first, second = z[: n // 2], z[n // 2 + 1:]
    for a, b in ((first, second), (first ** 2, second ** 2)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(n // 2)


def test_normal_is_deterministic_in_seed_and_shape_and_keeps_shapes():
    a = bayesian_layers.normal([3, 5], SEED_A)
    np.testing.assert_array_equal(a, bayesian_layers.normal(tf.constant([3, 5]), SEED_A))
    assert not np.allclose(a, bayesian_layers.normal([3, 5], SEED_B))
    assert bayesian_layers.normal([], SEED_A).shape == [] and bayesian_layers.normal([0, 4], SEED_A).shape == [0, 4]
    assert bayesian_layers.normal([2, 3], SEED_A, tf.float16).dtype == tf.float16

    @tf.function(input_signature=[tf.TensorSpec([None, 7], tf.float32)])
    def like(x):
        return bayesian_layers.normal(tf.shape(x), SEED_A)

    assert like(tf.zeros([4, 7])).shape == [4, 7]
    assert like.get_concrete_function().structured_outputs.shape.as_list() in ([None, None], [None, 7])


def test_rademacher_signs_are_fair_and_independent_within_and_across_words():
    """Only -1 and +1; mean 0 at every bit position of a word; no correlation between neighbours (bits of one
    byte), across bytes (lag 8) and words (lag 32), or between the last bit of a byte or word and the next's first."""
    n = 320_007
    r = bayesian_layers.rademacher([n], SEED_A).numpy()
    assert set(np.unique(r)) == {-1.0, 1.0}
    assert abs(r.mean()) < 4 / math.sqrt(n)
    for lag in (1, 7, 8, 9, 31, 32, 33):
        assert abs(np.mean(r[:-lag] * r[lag:])) < 4 / math.sqrt(n)
    by_bit = r[: n // 32 * 32].reshape(-1, 32)
    assert np.all(np.abs(by_bit.mean(axis=0)) < 4 / math.sqrt(n // 32))
    signs = bayesian_layers.rademacher([3, 70], SEED_B, tf.float64)
    assert signs.shape == [3, 70] and signs.dtype == tf.float64
    np.testing.assert_array_equal(signs, bayesian_layers.rademacher(tf.constant([3, 70]), SEED_B, tf.float64))


def _dense(units=3, inputs=4, rho=-1.0):
    layer = bayesian_layers.DenseMeanField(units, init_rho=rho)
    layer(tf.zeros([1, inputs]), SEED_A)
    return layer


def _conv(rho=-1.0):
    layer = bayesian_layers.Conv2DMeanField(2, kernel_size=3, init_rho=rho)
    layer(tf.zeros([1, 6, 6, 1]), SEED_A)
    return layer


ROUTES = bayesian_layers.ESTIMATORS + (bayesian_layers.PREDICTIVE,)


@pytest.mark.parametrize("estimator", ROUTES)
@pytest.mark.parametrize("make, shape", [(_dense, [5, 4]), (_conv, [5, 6, 6, 1])])
def test_passes_differ_when_scale_positive_and_agree_when_zero(estimator, make, shape):
    x = tf.random.stateless_normal(shape, [0, 0])
    layer = make(rho=-1.0)
    a, b = layer(x, SEED_A, estimator, 2), layer(x, SEED_B, estimator, 2)
    assert a.shape[:2] == (2, 5)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, layer(x, SEED_A, estimator, 2))  # same seed, same draw
    layer.kernel_rho.assign(tf.fill(layer.kernel_rho.shape, -1e4))  # softplus(-1e4) == 0 in float32
    layer.bias_rho.assign(tf.fill(layer.bias_rho.shape, -1e4))
    a, b = layer(x, SEED_A, estimator, 2), layer(x, SEED_B, estimator, 2)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)


@pytest.mark.parametrize("estimator", ROUTES)
def test_each_estimator_has_the_exact_marginal_of_a_preactivation(estimator):
    layer = _dense(units=2, inputs=3, rho=-0.5)
    x = tf.constant([[1.0, -2.0, 0.5], [0.3, 0.1, -1.0]])
    s = 20000
    y = layer(x, SEED_A, estimator, s).numpy()  # [S, 2, 2]
    mu, sigma = layer.kernel_loc.numpy(), layer.kernel_scale.numpy()
    mean = x.numpy() @ mu + layer.bias_loc.numpy()
    var = (x.numpy() ** 2) @ sigma ** 2 + layer.bias_scale.numpy() ** 2
    np.testing.assert_allclose(y.mean(0), mean, atol=5 * np.sqrt(var.max() / s))
    np.testing.assert_allclose(y.var(0), var, rtol=0.05)


@pytest.mark.parametrize("route", ["local_reparameterization", bayesian_layers.PREDICTIVE])
def test_local_reparameterization_matches_weight_sampling_for_one_example_through_two_layers(route):
    first, second = _dense(units=4, inputs=2, rho=-0.7), _dense(units=1, inputs=4, rho=-0.7)
    x = tf.constant([[0.7, -1.3]])
    s = 40000

    def net(estimator, seed):
        seeds = tfp.random.split_seed(seed, 2)
        return second(tf.nn.relu(first(x, seeds[0], estimator, s)), seeds[1], estimator, s).numpy()[:, 0, 0]

    local, weights = net(route, SEED_A), net("reparameterization", SEED_B)
    # The output is non-Gaussian (ReLU in between); compare mean, variance and a few quantiles.
    assert abs(local.mean() - weights.mean()) < 5 * weights.std() / math.sqrt(s)
    assert local.var() == pytest.approx(weights.var(), rel=0.04)
    np.testing.assert_allclose(np.quantile(local, [0.1, 0.5, 0.9]), np.quantile(weights, [0.1, 0.5, 0.9]),
                               atol=0.03 * weights.std() + 0.01)


@pytest.mark.parametrize("route, invariant", [(bayesian_layers.PREDICTIVE, True),
                                              ("local_reparameterization", False)])
def test_predictive_route_answers_an_example_the_same_in_any_batch(route, invariant):
    first, second = _dense(units=5, inputs=3, rho=-0.7), _dense(units=2, inputs=5, rho=-0.7)
    x = tf.random.stateless_normal([6, 3], [5, 5])

    def net(inputs):
        seeds = tfp.random.split_seed(SEED_A, 2)
        return second(tf.nn.relu(first(inputs, seeds[0], route, 7)), seeds[1], route, 7).numpy()

    batch = net(x)  # [S, 6, 2]
    for i in (0, 4):
        alone = net(x[i:i + 1])[:, 0]
        assert np.allclose(alone, batch[:, i], rtol=1e-5, atol=1e-6) == invariant
    # Reordering the batch reorders the answers and changes nothing else.
    reordered = net(tf.reverse(x, [0]))
    assert np.allclose(reordered[:, ::-1], batch, rtol=1e-5, atol=1e-6) == invariant


def _conv_position_covariance(layer, x, p, q):
    """Closed-form Cov(y_p, y_q) of two output positions of one example under weight sampling, one filter:
    y_p = sum_k x_pk W_k + b, so Cov = sum_k x_pk x_qk sigma_k^2 + tau^2 (patches x_p from 'SAME' padding)."""
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME").numpy()[0]
    sigma2 = layer.kernel_scale.numpy()[..., 0].reshape(-1) ** 2
    return float(np.sum(patches[p] * patches[q] * sigma2) + layer.bias_scale.numpy()[0] ** 2)


@pytest.mark.parametrize("shared_input", [True, False])
def test_conv_predictive_keeps_the_correlation_between_positions_that_local_reparameterization_drops(
        shared_input):
    layer = bayesian_layers.Conv2DMeanField(1, kernel_size=3, init_rho=-0.3)
    layer(tf.zeros([1, 5, 5, 1]), SEED_A)
    x = tf.random.stateless_normal([1, 5, 5, 1], [7, 7])
    s = 20000
    inputs = x if shared_input else tf.broadcast_to(x, [s, 1, 5, 5, 1])
    p, q = (2, 2), (2, 3)  # neighbouring positions: their 3x3 patches overlap
    expected = _conv_position_covariance(layer, x, p, q)
    assert expected > 0.1
    for route, covariance in ((bayesian_layers.PREDICTIVE, expected), ("local_reparameterization", 0.0)):
        y = layer(inputs, SEED_B, route, s).numpy()[:, 0, :, :, 0]  # [S, 5, 5]
        got = np.cov(y[:, p[0], p[1]], y[:, q[0], q[1]])[0, 1]
        assert got == pytest.approx(covariance, abs=0.05 * expected + 5 * float(np.sqrt(
            y[:, p[0], p[1]].var() * y[:, q[0], q[1]].var() / s)))


@pytest.mark.parametrize("estimator", ["reparameterization", "flipout"])
def test_conv_weight_estimators_keep_the_correlation_between_positions(estimator):
    # One kernel per example: Flipout's signs are per example and channel, not per position (per-position signs
    # gave 0.29, about the shared bias's variance alone, against 0.77 for weight sampling).
    layer = bayesian_layers.Conv2DMeanField(1, kernel_size=3, init_rho=-0.3)
    layer(tf.zeros([1, 5, 5, 1]), SEED_A)
    x = tf.random.stateless_normal([1, 5, 5, 1], [7, 7])
    s = 3000
    p, q = (2, 2), (2, 3)
    expected = _conv_position_covariance(layer, x, p, q)
    # Traced: the samples' map_fn would run eagerly, one Python step per sample.
    y = tf.function(lambda: layer(x, SEED_B, estimator, s))().numpy()[:, 0, :, :, 0]  # [S, 5, 5]
    got = np.cov(y[:, p[0], p[1]], y[:, q[0], q[1]])[0, 1]
    assert got == pytest.approx(expected, abs=0.05 * expected + 5 * float(np.sqrt(
        y[:, p[0], p[1]].var() * y[:, q[0], q[1]].var() / s)))


def test_conv_predictive_convolves_each_sample_input_with_its_own_kernel():
    layer = _conv(rho=-1e4)  # zero posterior scale: every sampled kernel is the mean
    layer.bias_loc.assign([0.5, -0.25])
    x = tf.random.stateless_normal([1, 6, 6, 1], [9, 9])
    inputs = tf.stack([tf.zeros_like(x), x, 2.0 * x])  # [S = 3, B = 1, 6, 6, 1]
    y = layer(inputs, SEED_A, bayesian_layers.PREDICTIVE).numpy()
    expected = tf.nn.conv2d(x, layer.kernel_loc, 1, "SAME").numpy()[0] + layer.bias_loc.numpy()
    np.testing.assert_allclose(y[0, 0], np.broadcast_to(layer.bias_loc.numpy(), y[0, 0].shape), atol=1e-6)
    np.testing.assert_allclose(y[1, 0], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[2, 0], 2.0 * expected - layer.bias_loc.numpy(), rtol=1e-5, atol=1e-5)


# The last three: units firmly on, whose variance a float32 E[relu^2] - E[relu]^2 loses (0, 0 and 1.9e-6).
@pytest.mark.parametrize("mean, var", [(0.7, 0.5), (-1.2, 0.3), (0.0, 2.0), (3.0, 1e-4), (-3.0, 1e-4),
                                       (20.0, 1e-5), (8.0, 3e-6), (5.0, 1e-6)])
def test_relu_moments_match_numerical_integration(mean, var):
    a = np.linspace(mean - 12 * math.sqrt(var), mean + 12 * math.sqrt(var), 200001)
    density = np.exp(-0.5 * (a - mean) ** 2 / var) / math.sqrt(2 * math.pi * var)
    relu = np.maximum(a, 0.0)
    first = np.trapezoid(relu * density, a)
    second = np.trapezoid(relu ** 2 * density, a)
    got_mean, got_var = bayesian_layers.relu_moments(tf.constant(mean), tf.constant(var))
    assert float(got_mean) == pytest.approx(first, rel=1e-4, abs=1e-6)
    assert float(got_var) == pytest.approx(second - first ** 2, rel=1e-3, abs=1e-3 * var)


def test_moments_through_one_hidden_layer_equal_the_exact_output_moments():
    """With a deterministic input, the first hidden units of one example are independent (disjoint weights), so
    the next layer's means and variances by moment propagation are exact, not approximate."""
    first, second = _dense(units=6, inputs=3, rho=-0.5), _dense(units=2, inputs=6, rho=-0.5)
    x = tf.constant([[0.7, -1.3, 0.2], [-0.4, 0.9, 1.5]])
    mean, var = second.moments(*bayesian_layers.relu_moments(*first.moments(x)))
    s = 100000
    seeds = tfp.random.split_seed(SEED_A, 2)
    y = second(tf.nn.relu(first(x, seeds[0], "reparameterization", s)), seeds[1], "reparameterization", s).numpy()
    np.testing.assert_allclose(mean, y.mean(0), atol=5 * np.sqrt(y.var(0).max() / s))
    np.testing.assert_allclose(var, y.var(0), rtol=0.03)


def test_flipout_decorrelates_examples_that_reparameterization_couples():
    layer = _dense(units=1, inputs=1, rho=0.5)
    x = tf.ones([2, 1])  # two identical examples
    for estimator, correlated in (("reparameterization", True), ("flipout", False)):
        y = layer(x, SEED_A, estimator, 20000).numpy()[:, :, 0]
        r = np.corrcoef(y[:, 0] - y[:, 0].mean(), y[:, 1] - y[:, 1].mean())[0, 1]
        # Reparameterization gives both examples the same weight and bias draw: r = 1. Flipout shares the
        # perturbation but flips its sign per example, so only the shared bias correlates them: r = tau^2 / var(y).
        if correlated:
            assert r > 0.999
        else:
            bias_share = layer.bias_scale.numpy()[0] ** 2 / (layer.kernel_scale.numpy()[0, 0] ** 2
                                                             + layer.bias_scale.numpy()[0] ** 2)
            assert r == pytest.approx(bias_share, abs=0.03)


def test_kl_matches_the_gaussian_formula():
    layer = _dense(units=3, inputs=2, rho=-2.0)
    mu, sigma = layer.kernel_loc.numpy(), layer.kernel_scale.numpy()
    b, tau = layer.bias_loc.numpy(), layer.bias_scale.numpy()
    s = 1.0
    kl = lambda m, v: np.sum(np.log(s / v) + (v ** 2 + m ** 2) / (2 * s ** 2) - 0.5)  # noqa: E731
    assert float(layer.kl()) == pytest.approx(kl(mu, sigma) + kl(b, tau), rel=1e-5)


def test_kl_gradient_written_out_equals_autodiff_of_tfp_kl():
    layer = bayesian_layers.DenseMeanField(4, init_rho=-1.5, prior_scale=0.7, learn_prior_scale=True)
    layer(tf.zeros([1, 3]), SEED_A)
    layer.kernel_loc.assign(tf.random.stateless_normal([3, 4], [5, 5]))
    layer.kernel_rho.assign(tf.random.stateless_normal([3, 4], [6, 6]) - 1.0)
    variables = [layer.kernel_loc, layer.kernel_rho, layer.bias_loc, layer.bias_rho, layer.log_prior_scale]
    with tf.GradientTape(persistent=True) as tape:
        ours = layer.kl()
        (qw, qb), (pw, pb) = layer.posterior(), layer.prior()
        reference = tfd.kl_divergence(qw, pw) + tfd.kl_divergence(qb, pb)
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    for got, want in zip(tape.gradient(ours, variables), tape.gradient(reference, variables)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", bayesian_layers.ESTIMATORS)
@pytest.mark.parametrize("make, shape", [(_dense, [5, 4]), (_conv, [5, 6, 6, 1])])
def test_training_gradient_through_shared_scales_and_kl_equals_autodiff(estimator, make, shape):
    """Training reads the scales and the KL from one `scale_and_kl` (its backward pass written out, the sample's
    and the KL's gradients of sigma meeting in it); autodiff of the plain route -- a softplus for the sample,
    TFP's KL -- must give the same gradient for every variable, the prior scale included."""
    layer = make(rho=-1.0)
    layer.kernel_loc.assign(tf.random.stateless_normal(layer.kernel_loc.shape, [5, 5]))
    layer.kernel_rho.assign(tf.random.stateless_normal(layer.kernel_rho.shape, [6, 6]) - 1.0)
    layer.bias_rho.assign(tf.random.stateless_normal(layer.bias_rho.shape, [7, 7]) - 1.0)
    layer.log_prior_scale.assign(math.log(0.7))
    x = tf.random.stateless_normal(shape, [0, 0])
    variables = [layer.kernel_loc, layer.kernel_rho, layer.bias_loc, layer.bias_rho, layer.log_prior_scale]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(layer.log_prior_scale)
        fused = layer.posterior_parameters(with_kl=True)
        out = layer(x, SEED_A, estimator, 2, posterior=fused)
        weights = tf.random.stateless_normal(tf.shape(out), [8, 8])
        ours = tf.reduce_sum(weights * out) + 0.3 * fused.kl
        plain = bayesian_layers.Posterior(tf.convert_to_tensor(layer.kernel_loc), tf.nn.softplus(layer.kernel_rho),
                                          tf.convert_to_tensor(layer.bias_loc), tf.nn.softplus(layer.bias_rho))
        (qw, qb), (pw, pb) = layer.posterior(), layer.prior()
        reference = (tf.reduce_sum(weights * layer(x, SEED_A, estimator, 2, posterior=plain))
                     + 0.3 * (tfd.kl_divergence(qw, pw) + tfd.kl_divergence(qb, pb)))
    assert float(ours) == pytest.approx(float(reference), rel=1e-5)
    for variable, got, want in zip(variables, tape.gradient(ours, variables), tape.gradient(reference, variables)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=variable.name)


def test_scale_and_kl_stays_finite_where_e_to_the_rho_overflows():
    rho = tf.constant([-20.0, 0.0, 29.0, 31.0, 95.0, 200.0])
    with tf.GradientTape() as tape:
        tape.watch(rho)
        sigma, kl = bayesian_layers.scale_and_kl(tf.zeros([6]), rho, tf.constant(math.log(300.0)))
        loss = tf.reduce_sum(sigma) + kl
    np.testing.assert_allclose(sigma, tf.nn.softplus(rho), rtol=1e-6)
    gradient = tape.gradient(loss, rho).numpy()
    assert np.all(np.isfinite(gradient)) and np.isfinite(float(kl))
    s2 = 300.0 ** 2  # dL/drho = (1 + sigma / s^2 - 1 / sigma) sigmoid(rho)
    want = (1 + sigma.numpy() / s2 - 1 / sigma.numpy()) * tf.sigmoid(rho).numpy()
    np.testing.assert_allclose(gradient, want, rtol=1e-5)


def test_learned_prior_scale_converges_to_its_closed_form_optimum():
    layer = bayesian_layers.DenseMeanField(5, init_rho=-1.0, learn_prior_scale=True, prior_scale=3.0)
    layer(tf.zeros([1, 4]), SEED_A)
    optimizer = tf_keras.optimizers.Adam(0.05)
    for _ in range(500):
        with tf.GradientTape() as tape:
            loss = layer.kl()
        optimizer.apply_gradients([(tape.gradient(loss, layer.log_prior_scale), layer.log_prior_scale)])
    # d KL / d s = 0  <=>  s^2 = mean over weights of (mu^2 + sigma^2)
    second_moments = np.concatenate([
        (layer.kernel_loc.numpy() ** 2 + layer.kernel_scale.numpy() ** 2).ravel(),
        (layer.bias_loc.numpy() ** 2 + layer.bias_scale.numpy() ** 2).ravel()])
    assert float(tf.exp(layer.log_prior_scale)) == pytest.approx(math.sqrt(second_moments.mean()), rel=1e-3)


def test_unknown_estimator_is_rejected():
    with pytest.raises(ValueError, match="estimator"):
        _dense()(tf.zeros([1, 4]), SEED_A, "dropout")


@pytest.mark.parametrize("num_samples, chunk", [(5, 8), (8, 8), (19, 8), (7, 1)])
@pytest.mark.parametrize("traced", [False, True])
def test_over_sample_chunks_takes_python_int_samples_and_chunk(num_samples, chunk, traced):
    """Python ints for S and the chunk, eager and inside a tf.function (where the loop is chosen while tracing):
    every row of [0, S) once, in order, whatever the number of chunks."""
    draws = tf.reshape(tf.range(num_samples * 3, dtype=tf.float32), [num_samples, 1, 3])
    calls = []

    def fn(rows):
        calls.append(rows)
        return draws[rows]

    run = lambda: bayesian_layers.over_sample_chunks(fn, num_samples, chunk, [None, None, 3])  # noqa: E731
    out = tf.function(run)() if traced else run()
    np.testing.assert_array_equal(out, draws)
    if traced:
        assert len(calls) == 1  # traced once: one chunk (no loop) or the loop's body
