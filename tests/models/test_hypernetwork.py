"""Bayesian meta-networks: generated weights, the stochastic contract, the flow's density, real-data runs."""

import math
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from models import bayesian_dense
from models import bayesian_layers
from models import hypernetwork as hn
from training import config as config_lib
from training import train_lib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import gap_seeds  # noqa: E402  (benchmarks/gap_seeds.py: the same reading of the band, over seeds)

SEED_A, SEED_B = tf.constant([1, 2]), tf.constant([3, 4])

# Short-run settings that reach the accuracy the tests ask for (configs/hypernetwork_mnist.flags runs longer).
MNIST_RUNS = {
    "meta_representation": dict(model=dict(code_dim=32, hyper_units=8, hidden_units=(100,)),
                                train=dict(train_steps=1880, batch_size=128, learning_rate=1e-2, clip_norm=1.0)),
    "bayesian_hypernetwork": dict(model=dict(hidden_units=(100,), hyper_units=64),
                                  train=dict(train_steps=1410, batch_size=128, learning_rate=1e-2,
                                             clip_norm=1.0)),
}


def _meta(**kwargs):
    return hn.MetaRepresentationNetwork(hn.Config(hidden_units=(5, 4), code_dim=3, **kwargs), (2,), "regression", 1)


def test_generated_weights_have_the_target_shapes_and_depend_only_on_the_codes():
    model = _meta()
    codes = model.sample_codes(3, SEED_A)
    assert [c.shape.as_list() for c in codes] == [[3, 3, 3], [3, 6, 3], [3, 5, 3], [3, 2, 3]]
    weights = model.generate_weights(codes)
    # [S, n_in + 1 (bias), n_out]: 2 -> 5 -> 4 -> 2 (a heteroscedastic head: mean and scale).
    assert [w[0].shape.as_list() for w in weights] == [[3, 3, 5], [3, 6, 4], [3, 5, 2]]
    again = model.generate_weights(codes)
    for (loc_a, scale_a), (loc_b, scale_b) in zip(weights, again):
        np.testing.assert_array_equal(loc_a, loc_b)
        np.testing.assert_array_equal(scale_a, scale_b)
        assert np.all(scale_a.numpy() > 0)
    other = model.generate_weights(model.sample_codes(3, SEED_B))
    assert not np.allclose(weights[0][0], other[0][0])


@pytest.mark.parametrize("features,hidden", [(1, (50, 50)), (8, (50,)), (784, (100,))])
def test_meta_representation_starts_near_the_targets_mean_on_every_seed(features, hidden):
    # A random head on g's tanh part gave every weight of a layer a shared offset: first outputs up to 15 target
    # deviations, noise scales at the 1e-3 floor and a first NLL up to 1e8 nats on seeds 0-9 (toy/gap's shape),
    # steps that left the network dead. Zero heads and a small output map start every seed near N(0, 1).
    x = tf.random.stateless_normal([256, features], [7, 7])
    y = tf.random.stateless_normal([256, 1], [8, 8])
    for seed in range(10):
        tf.random.set_seed(seed)
        model = hn.MetaRepresentationNetwork(hn.Config(hidden_units=hidden), (features,), "regression", 1)
        predictive = model.likelihood(model.training_outputs(x, 4, tf.constant([seed, 1])))
        assert np.abs(predictive.mean().numpy()).max() < 3.0, seed
        assert predictive.stddev().numpy().min() > 0.05, seed
        assert -float(tf.reduce_mean(predictive.log_prob(y))) < 20.0, seed


def test_meta_representation_passes_differ_when_the_codes_are_uncertain():
    tf.random.set_seed(0)
    model = _meta(init_code_scale=0.5)
    x = tf.random.stateless_normal([4, 2], [0, 0])
    a, b = model.forward(x, 2, SEED_A), model.forward(x, 2, SEED_B)
    assert a.shape == (2, 4, 2) and not np.allclose(a, b)
    np.testing.assert_array_equal(a, model.forward(x, 2, SEED_A))
    uncertain = np.abs(a - b).max()
    # Certain codes and the weights' noise at its floor (MIN_SCALE): the passes nearly agree.
    for rho in model.code_rho:
        rho.assign(tf.fill(rho.shape, -1e4))
    for head in model.heads:
        head.bias.assign([0.0, -1e4])
        head.kernel.assign(tf.zeros_like(head.kernel))
    a, b = model.forward(x, 2, SEED_A), model.forward(x, 2, SEED_B)
    assert np.abs(a - b).max() < 0.05 * uncertain


@pytest.mark.parametrize("variant", ["meta_representation", "bayesian_hypernetwork"])
def test_predictive_answers_an_example_the_same_in_any_batch(variant):
    tf.random.set_seed(0)
    model = hn.build_model(hn.Config(variant=variant, hidden_units=(5, 4), code_dim=3, init_code_scale=0.5),
                           _regression_stand_in())
    x = tf.random.stateless_normal([6, 2], [0, 0])
    batch = model.predictive_outputs(x, 4, SEED_A).numpy()
    np.testing.assert_allclose(model.predictive_outputs(x[2:3], 4, SEED_A)[:, 0], batch[:, 2], rtol=1e-5,
                               atol=1e-6)
    # Training draws its noise below the weights per example (lower-variance gradients), so there it differs.
    training = model.training_outputs(x[2:3], 4, SEED_A)[:, 0].numpy()
    assert not np.allclose(training, model.training_outputs(x, 4, SEED_A)[:, 2])


def test_meta_representation_predictive_in_chunks_of_samples_equals_all_at_once(monkeypatch):
    tf.random.set_seed(0)
    model = _meta(init_code_scale=0.5)
    x = tf.random.stateless_normal([5, 2], [0, 0])
    chunked = model.predictive_outputs(x, 19, SEED_A).numpy()  # chunks of 8, 8 and 3 samples
    monkeypatch.setattr(hn, "PREDICTIVE_CHUNK", 1000)
    whole = model.predictive_outputs(x, 19, SEED_A).numpy()
    assert chunked.shape == (19, 5, 2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    assert not np.allclose(chunked[0], chunked[8])  # the chunks hold different samples
    traced = tf.function(model.predictive_outputs).get_concrete_function(
        tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32))
    assert traced.output_shapes.as_list() == [None, None, 2]  # a known rank, as the heads and exports need


def test_bayesian_hypernetwork_predictive_in_chunks_of_samples_equals_all_at_once(monkeypatch):
    tf.random.set_seed(0)
    model = hn.build_model(hn.Config(variant="bayesian_hypernetwork", hidden_units=(5, 4), init_code_scale=0.5),
                           _regression_stand_in())
    x = tf.random.stateless_normal([6, 2], [0, 0])
    whole = model.predictive_outputs(x, 13, SEED_A).numpy()  # one chunk: 13 x 6 x 5 floats are within budget
    monkeypatch.setattr(bayesian_layers, "CHUNK_FLOATS", 6 * 5 * 5)  # 5 samples of [6, 5] a chunk: 5 + 5 + 3
    chunked = model.predictive_outputs(x, 13, SEED_A).numpy()
    assert chunked.shape == (13, 6, 2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-6)
    assert not np.allclose(chunked[0], chunked[5])
    traced = tf.function(model.predictive_outputs).get_concrete_function(
        tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int32))
    assert traced.output_shapes.as_list() == [None, None, 2]
    np.testing.assert_allclose(traced(x, tf.constant(13), SEED_A), whole, rtol=1e-5, atol=1e-6)


def _regression_stand_in():
    from training import data
    x, y = np.zeros((2, 2), np.float32), np.zeros((2, 1), np.float32)
    return data.Dataset(name="stand-in", task="regression", x_train=x, y_train=y, x_test=x, y_test=y,
                        x_scaler=data.Standardizer(np.zeros(2, np.float32), np.ones(2, np.float32)),
                        y_scaler=data.Standardizer(np.zeros(1, np.float32), np.ones(1, np.float32)))


@pytest.mark.parametrize("input_scale", [1.0, 3.0])
def test_meta_representation_kl_is_closed_form_with_the_input_codes_prior_scale(input_scale):
    tf.random.set_seed(0)
    model = _meta(init_code_scale=0.5, input_code_prior_scale=input_scale)
    expected = 0.0
    for l, (loc, rho) in enumerate(zip(model.code_loc, model.code_rho)):
        m, s = loc.numpy(), np.log1p(np.exp(rho.numpy()))
        p = input_scale if l == 0 else 1.0  # only the input units' codes (bias unit included) get s_in
        expected += np.sum(np.log(p / s) + (s ** 2 + m ** 2) / (2 * p ** 2) - 0.5)
    assert float(model.kl()) == pytest.approx(expected, rel=1e-5)


def test_meta_representation_needs_far_fewer_variational_parameters_than_mean_field():
    shape = dict(hidden_units=(400, 400))
    meta = hn.MetaRepresentationNetwork(hn.Config(code_dim=16, **shape), (784,), "classification", 10)
    mean_field = bayesian_dense.BayesianNetwork(bayesian_dense.Config(**shape), (784,), "classification", 10)
    assert meta.num_variational_parameters() == 2 * 16 * (785 + 401 + 401 + 10)
    assert meta.num_variational_parameters() * 10 < mean_field.num_variational_parameters()


def test_flow_log_density_matches_change_of_variables_by_hand():
    model = hn.BayesianHypernetwork(hn.Config(hidden_units=(4,), flow_layers=2, hyper_units=4), (1,),
                                    "regression", 1)
    assert model.num_scales == 4  # one scale per hidden unit
    # Non-trivial couplings (they start as identities) and a non-trivial affine map.
    for i, variable in enumerate(v for c in model.couplings for v in c.trainable_variables):
        variable.assign(0.5 * tf.random.stateless_normal(variable.shape, [i, 9]))
    model.scale_rho.assign([0.1, -0.3, 0.7, 0.2])
    flow, q = model.flow(), model.scale_posterior()
    eps = tf.constant([0.3, -1.2, 0.8, 0.05])
    with tf.GradientTape() as tape:
        tape.watch(eps)
        c = flow.forward(eps)
    jacobian = tape.jacobian(c, eps).numpy()
    by_hand = (-0.5 * float(tf.reduce_sum(eps ** 2)) - 2 * math.log(2 * math.pi)
               - math.log(abs(np.linalg.det(jacobian))))
    assert float(q.log_prob(c)) == pytest.approx(by_hand, rel=1e-5)
    np.testing.assert_allclose(flow.inverse(c), eps, atol=1e-5)


def test_bayesian_hypernetwork_kl_is_the_weights_closed_form_plus_the_scales_monte_carlo():
    model = hn.BayesianHypernetwork(hn.Config(hidden_units=(6, 3), prior_scale=0.2), (3,), "regression", 1)
    # Couplings at their identity start: q(c) = N(shift, softplus(rho)^2), so KL(q(c) || N(1, s^2)) is closed form.
    shift = np.linspace(0.8, 1.3, 9).astype(np.float32)
    scale = np.linspace(0.05, 0.3, 9).astype(np.float32)
    model.scale_shift.assign(shift)
    model.scale_rho.assign(np.log(np.expm1(scale)))
    s = 0.2
    scales_kl = np.sum(np.log(s / scale) + (scale ** 2 + (shift - 1.0) ** 2) / (2 * s ** 2) - 0.5)
    weights_kl = sum(float(layer.kl()) for layer in model.layers_with_posterior)
    estimate = float(model.kl(SEED_A, 20000))
    assert estimate == pytest.approx(weights_kl + scales_kl, rel=0.01)


def test_bayesian_hypernetwork_scales_multiply_the_hidden_units():
    model = hn.BayesianHypernetwork(hn.Config(hidden_units=(6,), init_code_scale=1e-6), (3,), "regression", 1)
    x = tf.random.stateless_normal([5, 3], [1, 0])
    at_one = model.predictive_outputs(x, 4, SEED_A).numpy()
    model.scale_shift.assign(tf.fill([6], 2.0))
    hidden = model.hidden_layers[0]
    # Doubling every hidden unit's scale equals doubling that layer's weights: locations and scales alike.
    doubled = model.predictive_outputs(x, 4, SEED_A).numpy()
    model.scale_shift.assign(tf.ones([6]))
    for variable in (hidden.kernel_loc, hidden.bias_loc):
        variable.assign(2.0 * variable)
    for variable in (hidden.kernel_rho, hidden.bias_rho):
        variable.assign(tfp.math.softplus_inverse(2.0 * tf.nn.softplus(variable)))
    np.testing.assert_allclose(doubled, model.predictive_outputs(x, 4, SEED_A).numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(doubled, at_one)


def test_bayesian_hypernetwork_passes_differ_and_kl_is_finite():
    model = hn.BayesianHypernetwork(hn.Config(hidden_units=(6,), init_code_scale=0.3), (3,), "classification", 4)
    x = tf.random.stateless_normal([5, 3], [1, 0])
    a, b = model.predictive_outputs(x, 3, SEED_A), model.predictive_outputs(x, 3, SEED_B)
    assert a.shape == (3, 5, 4) and not np.allclose(a, b)
    assert np.isfinite(float(model.kl(SEED_A, 16)))


def _train(tmp_path, data_dir, dataset, model_config, **train):
    values = dict(dataset=dataset, data_dir=str(data_dir), workdir=str(tmp_path / "work"),
                  export_base=str(tmp_path / "export"), num_samples=50, seed=0)
    values.update(train)
    return train_lib.train_and_evaluate(config_lib.TrainConfig(**values), model_config, hn.build_model)


def _epistemic_on_grid(metrics):
    return gap_seeds.epistemic_by_region(metrics["export_path"])


@pytest.mark.slow
def test_meta_representation_grows_epistemic_uncertainty_inside_the_gap(tmp_path, data_dir):
    metrics = _train(tmp_path, data_dir, "toy/gap", hn.Config(hidden_units=(50, 50)),
                     **hn.TRAINING_DEFAULTS["meta_representation"])
    epistemic = _epistemic_on_grid(metrics)
    # benchmarks/gap_seeds.py reads the ratio on seeds 0-9, plain and under --jit_compile: 2 or more in every run
    # (its lowest is in benchmarks/results/gap_seeds.txt). 1.5 leaves room for another CPU's rounding.
    assert epistemic["gap"] > 1.5 * epistemic["data"]
    assert epistemic["outside"] > 1.5 * epistemic["data"]


@pytest.mark.slow
def test_bayesian_hypernetwork_grows_epistemic_uncertainty_between_and_beyond_the_clusters(tmp_path, data_dir):
    metrics = _train(tmp_path, data_dir, "toy/gap", hn.Config(variant="bayesian_hypernetwork", hidden_units=(50, 50)),
                     **hn.TRAINING_DEFAULTS["bayesian_hypernetwork"])
    epistemic = _epistemic_on_grid(metrics)
    # benchmarks/gap_seeds.py --variant=bayesian_hypernetwork on seeds 0-9, plain and under --jit_compile: 4.4x
    # or more in the gap and 14x or more outside in every run (benchmarks/results/gap_seeds_bayesian_hypernetwork.txt).
    assert epistemic["gap"] > 2.0 * epistemic["data"]
    assert epistemic["outside"] > 5.0 * epistemic["data"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", hn.VARIANTS)
def test_mnist_short_run_beats_95_percent_and_is_calibrated(tmp_path, data_dir, variant):
    # Its export answering without TFP is tests/test_matrix.py's (every family on MNIST).
    run = MNIST_RUNS[variant]
    metrics = _train(tmp_path, data_dir, "mnist", hn.Config(variant=variant, **run["model"]), num_samples=10,
                     train_eval_examples=0, export_base="", **run["train"])
    assert "train/accuracy" not in metrics and "train/elbo" not in metrics  # --train_eval_examples=0
    assert metrics["test/accuracy"] > 0.95
    assert metrics["test/ece"] < 0.05
    assert metrics["test/ood_auroc_entropy"] > 0.6
