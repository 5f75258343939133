"""Monte Carlo model averaging against cases with analytic moments."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from models import predictive

tfd = tfp.distributions


def _normal_cdf(t, loc, scale):
    return 0.5 * (1.0 + np.vectorize(math.erf)((t - loc) / (scale * math.sqrt(2.0))))


def test_regression_moments_follow_the_law_of_total_variance():
    rng = np.random.default_rng(0)
    loc = rng.normal(size=(7, 5, 2))
    scale = rng.uniform(0.5, 2.0, size=(7, 5, 2))
    s = predictive.regression_summary(tfd.Normal(loc, scale))
    mean = loc.mean(0)
    aleatoric = (scale ** 2).mean(0)
    epistemic = ((loc - mean) ** 2).mean(0)
    np.testing.assert_allclose(s["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(s["aleatoric_stddev"], np.sqrt(aleatoric), rtol=1e-12)
    np.testing.assert_allclose(s["epistemic_stddev"], np.sqrt(epistemic), rtol=1e-12)
    np.testing.assert_allclose(s["stddev"], np.sqrt(aleatoric + epistemic), rtol=1e-12)
    assert s["mean"].shape == (5, 2)


def test_single_normal_interval_is_its_central_95_percent():
    s = predictive.regression_summary(tfd.Normal(np.array([[[3.0]]]), np.array([[[2.0]]])))
    np.testing.assert_allclose(s["lower"], [[3.0 - 1.959963984540054 * 2.0]], rtol=1e-9)
    np.testing.assert_allclose(s["upper"], [[3.0 + 1.959963984540054 * 2.0]], rtol=1e-9)
    np.testing.assert_allclose(s["epistemic_stddev"], [[0.0]])


def test_mixture_interval_puts_two_and_a_half_percent_in_each_tail():
    # Two well-separated components: the mixture is bimodal, far from its moment-matched Normal.
    loc = np.array([-5.0, 4.0, 4.5])[:, None, None]
    scale = np.array([1.0, 0.3, 2.0])[:, None, None]
    s = predictive.regression_summary(tfd.Normal(loc, scale))
    cdf = lambda t: _normal_cdf(t, loc[:, 0, 0], scale[:, 0, 0]).mean()  # noqa: E731
    assert cdf(float(s["lower"][0, 0])) == pytest.approx(0.025, abs=1e-9)
    assert cdf(float(s["upper"][0, 0])) == pytest.approx(0.975, abs=1e-9)


def test_mixture_quantiles_hold_for_extreme_spread_between_components():
    loc = np.array([0.0, 1e4])[:, None]
    scale = np.array([1e-3, 1e2])[:, None]
    lower, upper = predictive.mixture_quantiles(tfd.Normal(loc, scale), [0.01, 0.6])
    assert _normal_cdf(float(lower[0]), loc[:, 0], scale[:, 0]).mean() == pytest.approx(0.01, abs=1e-8)
    assert _normal_cdf(float(upper[0]), loc[:, 0], scale[:, 0]).mean() == pytest.approx(0.6, abs=1e-8)


def test_components_sharing_their_location_give_mirrored_quantiles_in_the_order_asked():
    # The linear model's case: one location per example, scales differing by sample (a scale mixture, symmetric).
    rng = np.random.default_rng(1)
    centre = rng.normal(size=(1, 4, 1)) * 10.0
    scale = rng.uniform(0.2, 3.0, size=(6, 4, 1))
    probs = [0.975, 0.1, 0.5, 0.025, 0.9, 0.3]
    per_sample = tfd.Normal(np.broadcast_to(centre, scale.shape), scale)
    found = [np.asarray(q) for q in predictive.mixture_quantiles(per_sample, probs)]
    for p, q in zip(probs, found):
        for b in range(4):
            assert _normal_cdf(q[b, 0], centre[0, b, 0], scale[:, b, 0]).mean() == pytest.approx(p, abs=1e-12)
    np.testing.assert_allclose(found[0] + found[3], 2.0 * centre[0], rtol=0, atol=1e-12)  # mirrored about it
    np.testing.assert_allclose(found[2], centre[0], rtol=0, atol=1e-12)
    # Components that do not share it take the direct search (the same call, other locations).
    moved = tfd.Normal(np.broadcast_to(centre, scale.shape) + rng.normal(size=scale.shape), scale)
    for p, q in zip(probs, predictive.mixture_quantiles(moved, probs)):
        cdf = _normal_cdf(np.asarray(q)[0, 0], np.asarray(moved.loc)[:, 0, 0], scale[:, 0, 0]).mean()
        assert cdf == pytest.approx(p, abs=1e-12)


def test_a_network_whose_draws_differ_builds_only_the_direct_search_and_answers_alike():
    # shared_location=False (the network families') skips the mirrored route: one search in the graph, not two,
    # and the same quantiles, for components that differ and for components that happen to share their location.
    rng = np.random.default_rng(2)
    scale = rng.uniform(0.2, 3.0, size=(6, 4, 1))
    probs = [0.025, 0.975]
    for loc in (rng.normal(size=scale.shape), np.broadcast_to(rng.normal(size=(1, 4, 1)), scale.shape)):
        per_sample = tfd.Normal(loc, scale)

        def quantiles(shared):
            return tf.stack(predictive.mixture_quantiles(per_sample, probs, shared_location=shared))

        graphs = {shared: tf.function(lambda: quantiles(shared), autograph=False).get_concrete_function().graph
                  for shared in (None, False)}
        loops = {shared: sum(op.type in ("While", "StatelessWhile") for op in g.get_operations())
                 for shared, g in graphs.items()}
        assert loops == {None: 0, False: 1}  # None: both searches inside a cond's branches, none at the top
        conds = sum(op.type in ("If", "StatelessIf") for op in graphs[False].get_operations())
        assert conds == 0
        np.testing.assert_allclose(quantiles(False).numpy(), quantiles(None).numpy(), rtol=0, atol=1e-12)


def test_mixture_quantile_search_stops_every_entry_within_a_few_newton_steps():
    # A batch of overlapping mixtures in float64, as the linear model's signatures see them. Entries that have
    # converged must stay put while others are still searching (they once bisected away from their root and the
    # batch took 65 steps); from the bracket of component quantiles Newton needs a handful.
    rng = np.random.default_rng(2)
    loc = 30.0 + rng.normal(scale=0.6, size=(10, 1024, 1))
    scale = np.full((10, 1024, 1), 0.62 * 6.0)
    quantiles, steps = predictive.mixture_quantile_search(tfd.Normal(loc, scale), [0.025, 0.975])
    assert int(steps) <= 6
    for k, p in enumerate([0.025, 0.975]):
        cdf = np.mean([_normal_cdf(quantiles[k, :, 0].numpy(), loc[s, :, 0], scale[s, :, 0]) for s in range(10)],
                      axis=0)
        np.testing.assert_allclose(cdf, p, atol=1e-12)


def test_a_coarser_resolution_stops_the_search_sooner_within_that_resolution():
    # The signatures answer in float32: a float64 search need not go on to float64's last bits. A scale mixture
    # as the linear model's (weights integrated out, S draws of the noise precision): N(m_b, v_b + 1/beta_s), with
    # q(beta) broader than concrete's, so that the full search takes a second step after the corrected start.
    rng = np.random.default_rng(3)
    loc = np.broadcast_to(30.0 + rng.normal(size=(1, 1024, 1)), (100, 1024, 1))
    scale = np.sqrt(rng.uniform(0.01, 0.1, size=(1, 1024, 1)) + rng.gamma(10.0, 1 / 10.0, size=(100, 1, 1)))
    per_sample = tfd.Normal(loc, scale)
    exact, full_steps = predictive.mixture_quantile_search(per_sample, [0.025, 0.975])
    resolution = np.finfo(np.float32).eps / 4
    coarse, coarse_steps = predictive.mixture_quantile_search(per_sample, [0.025, 0.975], resolution=resolution)
    assert int(coarse_steps) < int(full_steps)
    stddev = np.sqrt(np.mean(scale ** 2, axis=0) + np.var(loc, axis=0))
    np.testing.assert_array_less(np.abs(coarse - exact), resolution * np.maximum(np.abs(exact), stddev))
    # ... and the answers round to the same float32 numbers but for the rare one on a rounding boundary.
    assert np.mean(np.float32(coarse) == np.float32(exact)) > 0.99


def test_the_search_starts_from_the_quantile_corrected_for_skewness_and_kurtosis():
    # A skewed, heavy-tailed mixture of Normals (one narrow component, one wide one off to the right): the
    # Cornish-Fisher start lies much nearer the mixture's quantile than the moment-matched Normal's does.
    loc = np.array([0.0, 0.0, 1.5])[:, None]
    scale = np.array([1.0, 0.5, 2.0])[:, None]
    per_sample = tfd.Normal(loc, scale)
    probs = [0.05, 0.95]
    exact, _ = predictive.mixture_quantile_search(per_sample, probs)
    mean = loc.mean(0)
    stddev = np.sqrt((scale ** 2).mean(0) + loc.var(0))
    z = np.array([-1.6448536269514722, 1.6448536269514722])[:, None, None]
    corrected = mean + predictive._start_offset(per_sample, tf.constant(loc), tf.constant(scale), tf.constant(mean),
                                                tf.constant(stddev), tf.constant(z)).numpy()[:, 0] * stddev
    plain = mean + z[:, 0] * stddev
    exact = exact.numpy()
    assert np.all(np.abs(corrected - exact) < 0.5 * np.abs(plain - exact)), (corrected, plain, exact)


@pytest.mark.parametrize("unit", [1e-12, 1e15])
def test_quantiles_in_float32_hold_at_extreme_scales(unit):
    # The start's skewness and kurtosis use fourth powers: taken in the data's units they over- or underflow
    # float32 here (and the search returned NaN); in the mixture's standard deviations they do not. And a
    # bracket counts as closed relative to the mixture's spread, not to 1.0 (at 1e-12 every bracket was
    # "closed" from the start).
    loc = (np.array([0.0, 0.3, 1.0])[:, None] * unit).astype(np.float32)
    scale = (np.array([1.0, 0.5, 2.0])[:, None] * unit).astype(np.float32)
    lower, upper = predictive.mixture_quantiles(tfd.Normal(loc, scale), [0.05, 0.95])
    for p, q in ((0.05, lower), (0.95, upper)):
        assert np.isfinite(q.numpy()).all()
        cdf = _normal_cdf(float(q[0]) / unit, loc[:, 0].astype(np.float64) / unit, scale[:, 0].astype(np.float64) / unit)
        assert cdf.mean() == pytest.approx(p, abs=1e-5)


def test_log_predictive_density_is_log_of_mean_density():
    rng = np.random.default_rng(1)
    loc, scale = rng.normal(size=(50, 4, 1)), rng.uniform(0.1, 1.0, size=(50, 4, 1))
    y = rng.normal(size=(4, 1))
    density = np.exp(-0.5 * ((y - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))
    expected = np.log(density.mean(0))
    got = predictive.log_predictive_density(tfd.Normal(loc, scale), y)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_log_predictive_density_is_stable_far_in_the_tails():
    got = predictive.log_predictive_density(tfd.Normal(np.zeros((3, 1)), np.ones((3, 1))), np.array([60.0]))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, -0.5 * 60.0 ** 2 - 0.5 * math.log(2 * math.pi), rtol=1e-12)


def test_classification_agreeing_samples_have_no_mutual_information():
    logits = np.tile(np.array([[[2.0, 0.0, -1.0]]]), (5, 1, 1))
    s = predictive.classification_summary(tfd.Categorical(logits=logits))
    p = np.exp(logits[0, 0]) / np.exp(logits[0, 0]).sum()
    np.testing.assert_allclose(s["probabilities"][0], p, rtol=1e-12)
    np.testing.assert_allclose(s["predictive_entropy"][0], -(p * np.log(p)).sum(), rtol=1e-12)
    np.testing.assert_allclose(s["mutual_information"][0], 0.0, atol=1e-12)
    assert int(s["predicted_class"][0]) == 0


def test_classification_confident_disagreement_is_all_epistemic():
    # Two samples, each certain, of different classes: predictive entropy log 2, expected entropy 0.
    logits = np.array([[[50.0, -50.0]], [[-50.0, 50.0]]])
    s = predictive.classification_summary(tfd.Categorical(logits=logits))
    np.testing.assert_allclose(s["probabilities"][0], [0.5, 0.5], rtol=1e-12)
    np.testing.assert_allclose(s["predictive_entropy"][0], math.log(2.0), rtol=1e-12)
    np.testing.assert_allclose(s["expected_entropy"][0], 0.0, atol=1e-12)
    np.testing.assert_allclose(s["mutual_information"][0], math.log(2.0), rtol=1e-12)


def test_classification_mutual_information_matches_a_direct_computation():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(20, 6, 4)) * 2.0
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    mean = p.mean(0)
    h = -(mean * np.log(mean)).sum(-1)
    eh = (-(p * np.log(p)).sum(-1)).mean(0)
    s = predictive.classification_summary(tfd.Categorical(logits=logits))
    np.testing.assert_allclose(s["predictive_entropy"], h, rtol=1e-10)
    np.testing.assert_allclose(s["expected_entropy"], eh, rtol=1e-10)
    np.testing.assert_allclose(s["mutual_information"], h - eh, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_classification_a_class_no_sample_allows_has_zero_probability_and_finite_entropies(dtype):
    # Logit -inf in every sample (a masked class): it adds nothing to any entropy; the rest is the 2-class answer.
    logits = np.array([[[1.0, -np.inf, 0.0]], [[0.0, -np.inf, 1.0]]], dtype)
    s = predictive.classification_summary(tfd.Categorical(logits=logits))
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    h = -(p * np.log(p)).sum()
    np.testing.assert_allclose(s["probabilities"][0], [0.5, 0.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(s["expected_entropy"][0], h, rtol=1e-6)
    np.testing.assert_allclose(s["predictive_entropy"][0], math.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(s["mutual_information"][0], math.log(2.0) - h, rtol=1e-5)


def test_affine_maps_statistics_to_original_units():
    loc, scale = np.array([[[0.5]], [[1.5]]]), np.array([[[1.0]], [[2.0]]])
    s = predictive.regression_summary(predictive.affine(tfd.Normal(loc, scale), 10.0, 3.0))
    base = predictive.regression_summary(tfd.Normal(loc, scale))
    for k in ("mean", "lower", "upper"):
        np.testing.assert_allclose(s[k], 10.0 + 3.0 * base[k], rtol=1e-9)
    for k in ("stddev", "aleatoric_stddev", "epistemic_stddev"):
        np.testing.assert_allclose(s[k], 3.0 * base[k], rtol=1e-9)


def test_summary_traces_to_a_graph_with_a_dynamic_sample_count():
    @tf.function(input_signature=[tf.TensorSpec([None, None, 1], tf.float32)])
    def f(loc):
        return predictive.regression_summary(tfd.Normal(loc, tf.ones_like(loc)))["upper"]

    for s in (1, 4, 9):
        assert f(tf.zeros([s, 3, 1])).shape == (3, 1)


def test_assert_all_finite_answers_as_tensorflows_check_and_passes_finite_tensors_through():
    check = tf.function(lambda x: predictive.assert_all_finite(x, "x must be finite"))
    x = tf.random.stateless_uniform([64, 784], [1, 2])
    np.testing.assert_array_equal(check(x), x)
    for bad, kind in ((float("nan"), "NaN"), (float("inf"), "Inf")):
        broken = tf.tensor_scatter_nd_update(x, [[3, 5]], [bad])
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"x must be finite : Tensor had {kind} values"):
            check(broken)
