"""Bayesian linear regression on real UCI data against closed forms computed here in numpy."""

import math
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from models import linear_regression as lr
from models import predictive
from training import config as config_lib
from training import data
from training import train_lib


@pytest.fixture(scope="module")
def concrete(data_dir):
    return data.load("uci/concrete", data_dir, split=0)


@pytest.fixture(scope="module")
def cavi_model(concrete):
    model = lr.BayesianLinearRegression(concrete.input_shape[-1], lr.Config(inference="cavi"))
    history = model.fit_closed_form(concrete.x_train, concrete.y_train)
    return model, history


def _design(x):
    x = np.asarray(x, np.float64)
    return np.hstack([x, np.ones((len(x), 1))])


def _numpy_evidence_maximization(phi, y, iterations=500):
    """Type-II ML by the MacKay fixed point, written independently with eigendecompositions and solves."""
    n, d = phi.shape
    eigenvalues = np.linalg.eigvalsh(phi.T @ phi)
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        a = alpha * np.eye(d) + beta * phi.T @ phi
        m = beta * np.linalg.solve(a, phi.T @ y)
        gamma = np.sum(beta * eigenvalues / (alpha + beta * eigenvalues))
        alpha, beta = gamma / (m @ m), (n - gamma) / np.sum((y - phi @ m) ** 2)
    a = alpha * np.eye(d) + beta * phi.T @ phi
    s = np.linalg.inv(a)
    m = beta * s @ phi.T @ y
    log_evidence = (0.5 * d * math.log(alpha) + 0.5 * n * math.log(beta) - 0.5 * beta * np.sum((y - phi @ m) ** 2)
                    - 0.5 * alpha * m @ m - 0.5 * np.linalg.slogdet(a)[1] - 0.5 * n * math.log(2 * math.pi))
    return alpha, beta, m, s, log_evidence


def test_exact_posterior_equals_numpy_closed_form(concrete):
    model = lr.BayesianLinearRegression(concrete.input_shape[-1], lr.Config(inference="exact"))
    model.fit_closed_form(concrete.x_train, concrete.y_train)
    phi, y = _design(concrete.x_train), concrete.y_train[:, 0].astype(np.float64)
    alpha, beta, m, s, log_evidence = _numpy_evidence_maximization(phi, y)
    q = model.posterior().model
    assert float(q["alpha"].mean()) == pytest.approx(alpha, rel=1e-6)
    assert float(q["beta"].mean()) == pytest.approx(beta, rel=1e-6)
    np.testing.assert_allclose(q["w"].loc, m, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(q["w"].covariance(), s, rtol=1e-6, atol=1e-12)
    assert float(model.log_evidence(concrete.x_train, concrete.y_train)) == pytest.approx(log_evidence, rel=1e-9)
    # The predictive N(m . phi, 1/beta + phi^T S phi) on held-out rows.
    phi_test = _design(concrete.x_test)
    exact = model.exact_predictive(concrete.x_test)
    np.testing.assert_allclose(exact.loc[:, 0], phi_test @ m, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(exact.scale[:, 0] ** 2, 1 / beta + np.einsum("nd,de,ne->n", phi_test, s, phi_test),
                               rtol=1e-6)


def test_evidence_is_maximal_at_the_type2_estimate(concrete):
    model = lr.BayesianLinearRegression(concrete.input_shape[-1], lr.Config(inference="exact"))
    history = model.fit_closed_form(concrete.x_train, concrete.y_train)
    best = float(model.log_evidence(concrete.x_train, concrete.y_train))
    assert best == pytest.approx(history[-1], rel=1e-12)
    for var in (model.alpha_concentration, model.beta_concentration):
        value = var.numpy()
        for factor in (0.9, 1.1):
            var.assign(value * factor)
            assert float(model.log_evidence(concrete.x_train, concrete.y_train)) < best
        var.assign(value)


def test_predictive_of_exact_posterior_is_the_closed_form_whatever_the_samples(concrete):
    model = lr.BayesianLinearRegression(concrete.input_shape[-1], lr.Config(inference="exact"))
    alpha, beta, m, cov, _ = _numpy_evidence_maximization(_design(concrete.x_train),
                                                          concrete.y_train[:, 0].astype(np.float64))
    model.fit_closed_form(concrete.x_train, concrete.y_train)
    phi = _design(concrete.x_test)
    weight_var = np.einsum("nd,de,ne->n", phi, cov, phi)
    loc, scale = phi @ m, np.sqrt(1 / beta + weight_var)
    for num_samples, seed in ((1, [3, 4]), (500, [5, 6])):
        s = predictive.regression_predictive(model, concrete.x_test, num_samples, tf.constant(seed))
        # The weights are integrated out and beta is a point estimate: no Monte Carlo error at all.
        np.testing.assert_allclose(s["mean"][:, 0], loc, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s["stddev"][:, 0], scale, rtol=1e-6)
        # The law of total variance over (w, beta): Var[w . phi] is epistemic, 1/beta aleatoric.
        np.testing.assert_allclose(s["epistemic_stddev"][:, 0] ** 2, weight_var, rtol=1e-6)
        np.testing.assert_allclose(s["aleatoric_stddev"][:, 0] ** 2, 1 / beta, rtol=1e-6)
        np.testing.assert_allclose(s["lower"][:, 0], loc - 1.959963984540054 * scale, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(s["upper"][:, 0], loc + 1.959963984540054 * scale, rtol=1e-6, atol=1e-9)


def test_predictive_integrates_the_weights_exactly_and_the_noise_precision_by_quadrature(cavi_model):
    model, _ = cavi_model
    x = np.random.default_rng(0).normal(size=(50, model.num_features)).astype(np.float32)
    s = predictive.regression_predictive(model, x, 100, tf.constant([3, 4]), shift=1.5, scale=2.0)
    q = model.posterior().model
    a, b = float(q["beta"].concentration), float(q["beta"].rate)
    m, cov = q["w"].loc.numpy(), q["w"].covariance().numpy()
    phi = _design(x)
    # Mean: m . phi exactly (a Monte Carlo mean over weight samples would be off by ~ sqrt(phi^T S phi / S)).
    # In the data's units y = 1.5 + 2 y_standardized.
    np.testing.assert_allclose(s["mean"][:, 0], 1.5 + 2.0 * phi @ m, rtol=1e-9, atol=1e-12)
    # Variance: phi^T S phi (epistemic) + E[1/beta] = b / (a - 1) (aleatoric), both exact: the quadrature's
    # strata means of 1/beta average to E[1/beta] (S = 100 draws of beta would be off by ~5e-3 here).
    weight_var = np.einsum("nd,de,ne->n", phi, cov, phi)
    np.testing.assert_allclose(s["epistemic_stddev"][:, 0] ** 2, 4.0 * weight_var, rtol=1e-9)
    np.testing.assert_allclose(s["aleatoric_stddev"][:, 0] ** 2, 4.0 * b / (a - 1), rtol=1e-9)
    np.testing.assert_allclose(s["stddev"][:, 0] ** 2, 4.0 * (weight_var + b / (a - 1)), rtol=1e-9)
    # The 95% interval against the same integral on 4096 strata, solved by bisection here.
    fine = lr.noise_variance_nodes(tf.constant(a, tf.float64), tf.constant(b, tf.float64), 4096).numpy()
    sd = np.sqrt(weight_var[:, None] + fine[None, :])  # [examples, strata]
    lo, hi = np.zeros(len(x)), np.full(len(x), 20.0) * sd.max(axis=1)
    for _ in range(100):
        mid = (lo + hi) / 2
        cdf = np.mean(0.5 * np.vectorize(math.erfc)(-mid[:, None] / sd / math.sqrt(2.0)), axis=1)
        lo, hi = np.where(cdf < 0.975, mid, lo), np.where(cdf < 0.975, hi, mid)
    half_width = 2.0 * lo  # in the data's units; the 32 strata are within 1e-5 of it
    np.testing.assert_array_less(np.abs(s["upper"][:, 0] - (1.5 + 2.0 * (phi @ m + lo))), 1e-5 * half_width)
    np.testing.assert_array_less(np.abs(s["lower"][:, 0] - (1.5 + 2.0 * (phi @ m - lo))), 1e-5 * half_width)
    # Deterministic: neither S nor the seed changes it.
    again = predictive.regression_predictive(model, x, 7, tf.constant([5, 6]), shift=1.5, scale=2.0)
    for key in ("mean", "stddev", "lower", "upper"):
        np.testing.assert_array_equal(again[key], s[key])


@pytest.mark.parametrize("concentration", [0.02, 0.1, 0.2, 0.5, 2.5, 6.0, 450.0, 5000.0])
def test_gamma_quantiles_invert_the_incomplete_gamma_function(concentration):
    a = tf.constant(concentration, tf.float64)
    p = tf.constant(np.linspace(0.005, 0.995, 199))
    np.testing.assert_allclose(tf.math.igamma(a, lr.gamma_quantiles(a, p)), p, rtol=0, atol=1e-10)


def test_cavi_elbo_never_decreases(cavi_model):
    _, history = cavi_model
    assert len(history) >= 3
    assert np.all(np.diff(history) >= -1e-9 * np.abs(history[:-1]))
    assert history[-1] > history[0] + 1.0  # it did climb


def test_cavi_fixed_point_is_a_stationary_point_of_the_elbo(concrete, cavi_model):
    model, _ = cavi_model
    elbo = float(model.closed_form_elbo(concrete.x_train, concrete.y_train))
    loc = model.loc.numpy()
    for i in range(len(loc)):
        for delta in (-1e-3, 1e-3):
            shifted = loc.copy()
            shifted[i] += delta
            model.loc.assign(shifted)
            assert float(model.closed_form_elbo(concrete.x_train, concrete.y_train)) < elbo
    model.loc.assign(loc)


def _train_gradient(concrete, tmp_path, surrogate):
    config = config_lib.TrainConfig(
        dataset="uci/concrete", workdir=str(tmp_path / surrogate), batch_size=concrete.num_train, epochs=3000,
        learning_rate=0.1, lr_schedule="cosine", seed=1).validate()
    model = lr.BayesianLinearRegression(concrete.input_shape[-1], lr.Config(inference="gradient",
                                                                             surrogate=surrogate))
    train_lib.fit(model, concrete, config, tf.distribute.get_strategy(), pathlib.Path(config.workdir))
    return model


@pytest.fixture(scope="module")
def full_gradient(concrete, tmp_path_factory):
    """Gradient VI with the full-covariance surrogate, fitted once for the tests that compare against it."""
    return _train_gradient(concrete, tmp_path_factory.mktemp("gradient"), "full")


@pytest.mark.slow
def test_gradient_vi_full_surrogate_reaches_cavi(concrete, cavi_model, full_gradient):
    cavi, _ = cavi_model
    model = full_gradient
    q, q_cavi = model.posterior().model, cavi.posterior().model
    rel = lambda a, b: float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))  # noqa: E731
    assert rel(q["w"].loc, q_cavi["w"].loc.numpy()) < 0.01
    assert rel(q["alpha"].mean(), q_cavi["alpha"].mean().numpy()) < 0.01
    assert rel(q["beta"].mean(), q_cavi["beta"].mean().numpy()) < 0.01
    elbo = float(model.closed_form_elbo(concrete.x_train, concrete.y_train))
    elbo_cavi = float(cavi.closed_form_elbo(concrete.x_train, concrete.y_train))
    assert abs(elbo - elbo_cavi) < 0.5


@pytest.mark.slow
def test_diagonal_surrogate_does_not_overstate_marginal_variances(concrete, tmp_path, full_gradient):
    full = full_gradient
    diag = _train_gradient(concrete, tmp_path, "diag")
    var_full = np.diag(full.posterior().model["w"].covariance())
    var_diag = np.diag(diag.posterior().model["w"].covariance())
    # The mean-field underestimate (Bishop 10.1.2): q's marginal variance is 1 / (posterior precision)_ii <=
    # (posterior covariance)_ii. A 2% slack absorbs the optimizer's noise on weakly correlated weights.
    assert np.all(var_diag <= var_full * 1.02)
    assert np.sum(var_diag) < 0.9 * np.sum(var_full)  # the features of concrete are correlated


def test_config_rejects_unknown_inference():
    with pytest.raises(ValueError, match="inference"):
        lr.Config(inference="mcmc")
