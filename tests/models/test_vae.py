"""Variational autoencoders: distributions and shapes, binarization, closed-form KLs against Monte Carlo, the
Gumbel-softmax relaxation and its schedule, the stick-breaking latent, the importance-weighted bound on real data and
as a training objective, training on MNIST."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models import stick_breaking
from models import vae
from training import config as config_lib
from training import data
from training import evaluation
from training import flags as flags_lib
from training import metrics as metrics_lib
from training import train_lib

REPO = pathlib.Path(__file__).resolve().parents[2]
IMAGE = (28, 28, 1)
SMALL = dict(hidden_units=(32,), latent_dim=6, latent_variables=4, categories=5)


@pytest.fixture(scope="module")
def mnist(data_dir):
    return data.load("mnist", data_dir)


@pytest.fixture(scope="module")
def binarized(data_dir):
    return data.load("binarized_mnist", data_dir)


def _small(latent, binarize=True, **overrides):
    return vae.VariationalAutoencoder(vae.Config(latent=latent, **{**SMALL, **overrides}), IMAGE, binarize=binarize)


def _fit(model, dataset, workdir, steps, **overrides):
    values = dict(dataset=dataset.name, workdir=str(workdir), train_steps=steps, batch_size=100,
                  learning_rate=1e-3, seed=0)
    values.update(overrides)
    config = config_lib.TrainConfig(**values).validate()
    train_lib.fit(model, dataset, config, tf.distribute.get_strategy(), pathlib.Path(workdir))
    return model


def _test_elbo(model, dataset, examples=2000) -> float:
    view = dataclasses.replace(dataset, x_test=dataset.x_test[:examples],
                               y_test=None if dataset.y_test is None else dataset.y_test[:examples])
    return metrics_lib.elbo_metrics(model, view, "test", seed=0, batch_size=1000)["test/elbo"]


# ----------------------------------------------------------------------------------------------------------------
# Configuration, shapes, the stochastic contract.
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [("latent", "student_t"), ("likelihood", "gaussian"), ("arch", "resnet"),
                                          ("latent_dim", 0), ("categories", 1), ("beta", -1.0),
                                          ("eval_importance_samples", 0), ("temperature_min", 2.0),
                                          ("gem_alpha", 0.0), ("train_importance_samples", 0)])
def test_bad_config_values_fail_naming_their_flag(field, value):
    with pytest.raises(config_lib.ConfigError, match=f"^--{field}"):
        flags_lib.model_config(vae.Config, **{field: value})


def test_a_stick_breaking_latent_needs_two_weights():
    with pytest.raises(config_lib.ConfigError, match="^--latent_dim: .* at least 2 for latent=kumaraswamy"):
        flags_lib.model_config(vae.Config, latent="kumaraswamy", latent_dim=1)


@pytest.mark.parametrize("latent, latent_shape", [("normal", (6,)), ("full_covariance", (6,)),
                                                  ("gumbel_softmax", (4, 5)), ("kumaraswamy", (6,))])
def test_distributions_are_batch_first_with_the_latent_as_event(latent, latent_shape):
    model = _small(latent)
    x = tf.random.stateless_uniform((3,) + IMAGE, [0, 1])
    q = model.encode(model.observe(x))
    assert q.batch_shape == (3,) and q.event_shape == latent_shape and model.latent_shape == latent_shape
    assert model.prior.event_shape == latent_shape
    z = q.sample(2, seed=[1, 2])
    assert z.shape == (2, 3) + latent_shape
    likelihood = model.decode(z)
    assert likelihood.batch_shape == (2, 3) and likelihood.event_shape == IMAGE
    assert model.predictive(x, 7, tf.constant([0, 1])).batch_shape == (7, 3)
    terms = model.elbo_terms(x, tf.constant([1, 1]), training=False)
    assert terms.nll.shape == (3,) and terms.local_kl.shape == (3,) and terms.global_kl is None


def test_decoder_bernoulli_log_prob_and_gradient_equal_tfp_bernoulli(mnist):
    """The decoder's one-softplus log-probability is TFP's Bernoulli log-probability (value and gradient) for
    binary and grey-level x, logits from small to saturated."""
    tfd = vae.tfd
    model = _small("normal")
    z = tf.random.stateless_normal([2, 5, SMALL["latent_dim"]], [3, 3])
    pixels = model.decode(z)
    assert isinstance(pixels.distribution, vae.LogitBernoulli)
    logits = tf.concat([tf.reshape(pixels.distribution.logits, [-1]),
                        tf.constant([-40.0, -15.0, -1e-3, 0.0, 2.0, 15.0, 40.0])], 0)
    n = int(logits.shape[0])
    x_grey = tf.random.stateless_uniform([n], [4, 4])
    for x in (tf.cast(x_grey > 0.5, tf.float32), x_grey):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(logits)
            ours = vae.LogitBernoulli(logits=logits, dtype=tf.float32).log_prob(x)
            reference = tfd.Bernoulli(logits=logits, dtype=tf.float32).log_prob(x)
        np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(tape.gradient(ours, logits), tape.gradient(reference, logits), atol=1e-6)
    x = model.observe(mnist.x_test[:5])
    reference = tfd.Independent(tfd.Bernoulli(logits=pixels.distribution.logits, dtype=tf.float32), 3)
    np.testing.assert_allclose(pixels.log_prob(x), reference.log_prob(x), rtol=1e-5)


@pytest.mark.parametrize("pixels", [784, 30])  # 30: the last group of 16 padded
def test_images_log_prob_sums_the_pixels_in_groups_as_tfp_independent_does(pixels):
    """The event-level log-probability (softplus summed in groups of 16, one log per group) has the value and
    gradient of TFP's per-pixel Independent Bernoulli, for logits from saturated to small."""
    tfd = vae.tfd
    logits = 6.0 * tf.random.stateless_normal([3, 4, pixels, 1], [5, 5])
    logits = tf.tensor_scatter_nd_update(logits, [[0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 2, 0], [1, 2, 3, 0]],
                                         [-60.0, 60.0, 0.0, -1e-4])
    x = tf.cast(tf.random.stateless_uniform([4, pixels, 1], [6, 6]) > 0.5, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(logits)
        ours = vae.IndependentLogitBernoulli(vae.LogitBernoulli(logits=logits, dtype=tf.float32), 2).log_prob(x)
        reference = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=tf.float32), 2).log_prob(x)
    assert ours.shape == (3, 4)
    np.testing.assert_allclose(ours, reference, rtol=2e-6)
    np.testing.assert_allclose(tape.gradient(ours, logits), tape.gradient(reference, logits), atol=1e-6)
    np.testing.assert_allclose(vae.sum_softplus(tf.reshape(logits, [12, pixels])),
                               tf.reshape(tf.reduce_sum(tf.nn.softplus(logits), [-2, -1]), [12]), rtol=2e-6)


def test_elbo_terms_are_a_function_of_the_seed_and_ignore_labels(mnist):
    model = _small("normal")
    x, y = mnist.x_train[:16], mnist.y_train[:16]
    a = model.elbo_terms((x, y), tf.constant([1, 2]), training=True)
    b = model.elbo_terms(x, tf.constant([1, 2]), training=True)
    c = model.elbo_terms(x, tf.constant([1, 3]), training=True)
    np.testing.assert_array_equal(a.nll, b.nll)
    np.testing.assert_array_equal(a.local_kl, b.local_kl)
    assert not np.allclose(a.nll, c.nll)


def test_fixed_binarization_is_a_function_of_the_image_alone(mnist):
    x = mnist.x_test[:300]
    whole = vae.fixed_binarization(x).numpy()
    order = np.random.default_rng(0).permutation(len(x))
    np.testing.assert_array_equal(vae.fixed_binarization(x[order]).numpy(), whole[order])
    np.testing.assert_array_equal(vae.fixed_binarization(x[17:18]).numpy(), whole[17:18])
    assert set(np.unique(whole)) == {0.0, 1.0}
    # A Bernoulli(x) draw: pixels of grey level g are 1 with frequency g.
    grey = (x > 0.3) & (x < 0.7)
    assert abs(whole[grey].mean() - x[grey].mean()) < 0.02
    np.testing.assert_array_equal(vae.fixed_binarization(whole).numpy(), whole)  # binary data is kept


def test_dynamic_binarization_draws_anew_per_seed_with_the_grey_level_as_mean(mnist):
    x = tf.constant(mnist.x_test[:50])
    draws = np.stack([vae.dynamic_binarization(x, tf.constant([s, 0])).numpy() for s in range(200)])
    assert not np.array_equal(draws[0], draws[1])
    grey = (mnist.x_test[:50] > 0.2) & (mnist.x_test[:50] < 0.8)
    np.testing.assert_allclose(draws.mean(0)[grey], mnist.x_test[:50][grey], atol=0.2)
    assert abs(draws.mean(0)[grey].mean() - mnist.x_test[:50][grey].mean()) < 0.01


def test_binarization_follows_the_data(mnist, binarized):
    assert vae.build_model(vae.Config(**SMALL), mnist).binarize
    assert not vae.build_model(vae.Config(**SMALL), binarized).binarize
    grey = vae.build_model(vae.Config(likelihood="continuous_bernoulli", **SMALL), mnist)
    assert not grey.binarize
    np.testing.assert_array_equal(grey.observe(mnist.x_test[:4]), mnist.x_test[:4])


def test_beta_scales_the_rate_in_training_only(mnist):
    x = mnist.x_test[:8]
    plain, weighted = _small("normal"), _small("normal", beta=4.0)
    for training in (True, False):
        a = plain.elbo_terms(x, tf.constant([5, 5]), training=training)
        b = weighted.elbo_terms(x, tf.constant([5, 5]), training=training)
        np.testing.assert_allclose(b.local_kl, a.local_kl.numpy(), rtol=1e-6)  # the rate itself is unchanged
        np.testing.assert_array_equal(a.nll, b.nll)
        loss_a, loss_b = a.loss_per_example(60000).numpy(), b.loss_per_example(60000).numpy()
        # The losses are ~100 nats in float32: compare the KL parts to the loss's rounding, 1e-3 nats.
        np.testing.assert_allclose(loss_b - a.nll.numpy(), (4.0 if training else 1.0) * (loss_a - a.nll.numpy()),
                                   atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# Closed forms and Monte Carlo.
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("latent", vae.LATENTS)
@pytest.mark.parametrize("sampler", ["tfp", "shared_noise"])
def test_closed_form_kl_agrees_with_monte_carlo_within_its_error(latent, sampler, mnist):
    """Also checks that the serving path's draws (noise shared across the batch) are exact draws from each q(z|x):
    from any other distribution the average log ratio would not be the KL."""
    model = _small(latent, seed=3)
    q = model.encode(model.observe(mnist.x_test[:6]))
    closed_form = model.rate(q).numpy()
    n = 20000
    seed = tf.constant([4, 2])
    # Hard one-hot draws for the categorical latent.
    z = q.sample(n, seed=seed) if sampler == "tfp" else model.sample_latents(q, n, seed)
    log_ratio = (q.log_prob(z) - model.prior.log_prob(z)).numpy()  # [n, 6]
    monte_carlo, stderr = log_ratio.mean(0), log_ratio.std(0) / np.sqrt(n)
    assert np.all(closed_form > 0.05)
    assert np.all(np.abs(monte_carlo - closed_form) < 4 * stderr + 1e-4), (monte_carlo, closed_form, stderr)


def test_gumbel_softmax_relaxation_approaches_one_hot_as_temperature_falls(mnist):
    model = _small("gumbel_softmax", seed=1)
    q = model.encode(model.observe(mnist.x_test[:2]))
    probs = q.distribution.probs_parameter().numpy()  # [2, M, K]
    largest = []
    for tau in (5.0, 1.0, 0.5, 0.1, 0.01):
        z = model.relaxed(q, tau).sample(4000, seed=[7, 7]).numpy()  # [4000, 2, M, K] on the simplex
        np.testing.assert_allclose(z.sum(-1), 1.0, rtol=1e-5)
        largest.append(z.max(-1).mean())
        # The arg max of a relaxed draw is an exact categorical draw at any temperature (the Gumbel-max trick).
        counts = np.eye(z.shape[-1])[z.argmax(-1)].mean(0)
        np.testing.assert_allclose(counts, probs, atol=0.04)
    assert all(a < b for a, b in zip(largest, largest[1:])), largest
    assert largest[-1] > 0.99 and largest[0] < 0.5


def test_temperature_follows_the_schedule_of_training_steps(mnist):
    model = _small("gumbel_softmax", temperature_init=2.0, temperature_min=0.25, temperature_decay=0.1)
    x = mnist.x_test[:4]
    assert float(model.temperature()) == pytest.approx(2.0)
    model.elbo_terms(x, tf.constant([0, 0]), training=False)
    assert int(model.step) == 0  # evaluation does not advance the schedule
    for t in range(3):
        model.elbo_terms(x, tf.constant([0, t]), training=True)
    assert int(model.step) == 3
    assert float(model.temperature()) == pytest.approx(2.0 * np.exp(-0.3), rel=1e-6)
    model.step.assign(1000)
    assert float(model.temperature()) == pytest.approx(0.25)


@pytest.mark.parametrize("latent", ["full_covariance", "kumaraswamy"])
def test_importance_weighted_chunks_combine_to_the_bound_of_all_samples(binarized, latent):
    model = _small(latent, seed=2)
    x, seed, k = tf.constant(binarized.x_test[:5]), tf.constant([3, 1]), 12
    per_row = model.decoder.activations_per_row
    budget = 5 * 5 * per_row  # at most 5 samples a chunk: 12 = 4 + 4 + 4
    q = model.encode(x)
    # Evaluation: noise per example, chunk c drawn from fold_in(seed, c).
    chunked = model.importance_weighted(x, k, seed, activation_budget=budget)
    parts = [model.log_weights(x, q, model.latent_noise(n, tf.random.experimental.stateless_fold_in(seed, c), 5))
             for c, n in enumerate((4, 4, 4))]
    log_w = tf.concat([p[0] for p in parts], 0)
    log_likelihood = tf.concat([p[1] for p in parts], 0)
    np.testing.assert_allclose(chunked["log_likelihood"], tf.reduce_logsumexp(log_w, 0) - np.log(k), rtol=1e-6)
    np.testing.assert_allclose(chunked["expected_log_likelihood"], tf.reduce_mean(log_likelihood, 0), rtol=1e-6)
    # Serving: the K draws' noise shared by the batch, so neither the chunking nor the batch changes a bound.
    shared = model.importance_weighted(x, k, seed, activation_budget=budget, shared_noise=True)
    log_w, _ = model.log_weights(x, q, model.latent_noise(k, seed))  # all K at once
    np.testing.assert_allclose(shared["log_likelihood"], tf.reduce_logsumexp(log_w, 0) - np.log(k), rtol=1e-6)
    whole = model.importance_weighted(x, k, seed, shared_noise=True)
    np.testing.assert_allclose(whole["log_likelihood"], shared["log_likelihood"], rtol=1e-5)
    alone = model.importance_weighted(x[3:4], k, seed, shared_noise=True)
    np.testing.assert_allclose(alone["log_likelihood"], whole["log_likelihood"][3:4], rtol=1e-5)


def test_traced_for_xla_the_bound_decodes_all_samples_in_one_chunk(binarized):
    """XLA fuses the pixel passes itself and compiles a loop over chunks of dynamic size badly (20.9 s against
    0.26 s at S = 100, batch 1024), so a compiled bound takes all samples at once; uncompiled, chunks."""
    model = _small("normal")
    x, seed = tf.constant(binarized.x_test[:5]), tf.constant([3, 1])
    budget = 5 * 5 * model.decoder.activations_per_row
    chunks = lambda s: model._sample_chunks(x, s, budget)  # noqa: E731
    assert [int(v) for v in tf.function(chunks)(tf.constant(12))] == [4, 3]
    assert [int(v) for v in tf.function(chunks, jit_compile=True)(tf.constant(12))] == [12, 1]
    bound = lambda: model.importance_weighted(x, tf.constant(12), seed, budget, shared_noise=True)["log_likelihood"]
    # XLA may draw other random numbers for the same seed: the same bound up to its Monte Carlo error (K = 12).
    compiled, plain = tf.function(bound, jit_compile=True)(), tf.function(bound)()
    assert compiled.shape == (5,) and np.all(np.isfinite(compiled))
    np.testing.assert_allclose(compiled, plain, atol=5.0)


def test_the_bound_and_the_moments_refuse_a_sample_count_below_one(binarized):
    model = _small("normal")
    x, seed = tf.constant(binarized.x_test[:2]), tf.constant([3, 1])
    for s in (0, -3):
        with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be positive"):
            model.importance_weighted(x, s, seed)
        with pytest.raises(tf.errors.InvalidArgumentError, match="num_samples must be positive"):
            tf.function(model.reconstruction_moments)(x, tf.constant(s), seed)


@pytest.mark.parametrize("latent", ["normal", "gumbel_softmax"])
def test_reconstruction_moments_in_chunks_equal_those_of_all_samples_decoded_at_once(binarized, latent):
    model = _small(latent, seed=4)
    x, seed, k = tf.constant(binarized.x_test[:5]), tf.constant([7, 2]), 12
    budget = 5 * 5 * model.decoder.activations_per_row  # at most 5 samples a chunk: 12 = 4 + 4 + 4
    decoded = []
    decode = model.decode
    model.decode = lambda z: decoded.append(int(z.shape[0])) or decode(z)  # eager: the loop runs in Python
    chunked = model.reconstruction_moments(x, k, seed, activation_budget=budget)
    assert decoded == [4, 4, 4]
    model.decode = decode
    means = decode(model.sample_latents(model.encode(x), k, seed)).mean().numpy().astype(np.float64)
    np.testing.assert_allclose(chunked["mean"], means.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(chunked["stddev"], means.std(0), rtol=1e-4, atol=1e-6)
    assert means.std(0).max() > 1e-3  # the samples differ, so the spread is a real check
    one = model.reconstruction_moments(x, 1, seed, activation_budget=budget)
    assert np.max(one["stddev"]) == 0.0
    np.testing.assert_allclose(one["mean"], decode(model.sample_latents(model.encode(x), 1, seed)).mean()[0],
                               rtol=1e-6)


# ----------------------------------------------------------------------------------------------------------------
# The stick-breaking latent.
# ----------------------------------------------------------------------------------------------------------------

def test_stick_breaking_posterior_starts_at_the_gem_prior_and_draws_weights(mnist):
    model = _small("kumaraswamy", gem_alpha=3.0)
    kernel = model.encoder.params.kernel
    kernel.assign(tf.zeros_like(kernel))  # the output layer's biases alone
    q = model.encode(model.observe(mnist.x_test[:3]))
    a, b = q.concentration1.numpy(), q.concentration0.numpy()
    assert a.shape == b.shape == (3, 5)  # K - 1 fractions of K = latent_dim weights
    np.testing.assert_allclose(a, 1.0, rtol=1e-5)
    np.testing.assert_allclose(b, 3.0, rtol=1e-5)
    np.testing.assert_allclose(model.rate(q), 0.0, atol=1e-4)
    noise = model.latent_noise(4, tf.constant([1, 2]))
    z, log_ratio = model._draw(q, noise)
    assert z.shape == (4, 3, 6) and np.min(z) > 0
    np.testing.assert_allclose(np.sum(z, -1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(z, model.latents_from_noise(q, noise))
    np.testing.assert_allclose(log_ratio, 0.0, atol=1e-4)  # q = p: every importance weight is 1
    np.testing.assert_allclose(q.mean()[0], stick_breaking.gem_prior(3.0, 6).mean(), rtol=1e-5)


def _train_on_one_batch(model, x, steps: int, learning_rate: float = 3e-3) -> np.ndarray:
    """Adam on the model's training loss (its `elbo_terms`) over one batch x, a new seed each step; the losses."""
    optimizer = tf_keras.optimizers.Adam(learning_rate)

    @tf.function
    def step(seed):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.elbo_terms(x, seed, training=True).loss_per_example(60000))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    return np.array([float(step(tf.constant([t, 0]))) for t in range(steps)])


@pytest.mark.parametrize("latent, k", [("kumaraswamy", 1), ("kumaraswamy", 4), ("normal", 4),
                                       ("gumbel_softmax", 4)])
def test_training_loss_is_finite_and_falls(mnist, latent, k):
    losses = _train_on_one_batch(_small(latent, train_importance_samples=k), tf.constant(mnist.x_train[:100]), 40)
    assert np.all(np.isfinite(losses))
    # From about 545 nats (a decoder that knows nothing) down by far more than the draws' noise.
    assert losses[-5:].mean() < losses[:5].mean() - 50.0, losses


# ----------------------------------------------------------------------------------------------------------------
# The importance-weighted bound as the training objective.
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("latent", vae.LATENTS)
def test_one_importance_sample_trains_on_the_elbo(mnist, latent):
    """K = 1 is the ELBO with its closed-form rate: -log p(x | z) + beta KL at the draw of the step's seed."""
    model = _small(latent, train_importance_samples=1, beta=2.0)
    x, seed = mnist.x_train[:16], tf.constant([3, 9])
    terms = model.elbo_terms(x, seed, training=True)
    assert type(terms) is vae.ElboTerms
    model.step.assign(0)
    binarization_seed, latent_seed = vae.tfp.random.split_seed(seed, n=2)
    observed = model.observe(x, binarization_seed)
    q = model.encode(observed)
    z = (model.relaxed(q, model.temperature()) if latent == "gumbel_softmax" else q).sample(seed=latent_seed)
    want = -model.decode(z).log_prob(observed) + 2.0 * model.rate(q)
    np.testing.assert_allclose(terms.loss_per_example(60000), want, rtol=1e-6)


def test_importance_weighted_training_loss_is_minus_the_bound(mnist):
    model = _small("kumaraswamy", train_importance_samples=5)
    x, seed = mnist.x_train[:8], tf.constant([4, 4])
    terms = model.elbo_terms(x, seed, training=True)
    binarization_seed, latent_seed = vae.tfp.random.split_seed(seed, n=2)
    want = model.importance_weighted(model.observe(x, binarization_seed), 5, latent_seed)
    np.testing.assert_allclose(terms.loss_per_example(60000), -want["log_likelihood"], rtol=1e-6)
    # The reported nll and kl keep their meaning (the draws' distortion, the rate): their sum is an ELBO estimate.
    np.testing.assert_allclose(terms.nll, -want["expected_log_likelihood"], rtol=1e-6)
    np.testing.assert_allclose(terms.local_kl, want["rate"], rtol=1e-6)
    # A KL weight w (warm-up) acts on the rate as in the ELBO: -L_K + (w - 1) KL.
    np.testing.assert_allclose(terms.loss_per_example(60000, 0.25), -want["log_likelihood"] - 0.75 * want["rate"],
                               rtol=1e-6)


@pytest.mark.parametrize("k", [1, 4])
def test_stick_breaking_training_step_compiles_with_xla(mnist, k):
    """--jit_compile: the bound's samples in one chunk without a loop, whose gradient XLA could not accumulate."""
    model = _small("kumaraswamy", train_importance_samples=k)
    x = tf.constant(mnist.x_train[:16])

    def step(seed):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(model.elbo_terms(x, seed, training=True).loss_per_example(60000))
        return loss, tape.gradient(loss, model.trainable_variables)

    compiled, plain = (tf.function(step, jit_compile=True)(tf.constant([1, 2])), tf.function(step)(tf.constant([1, 2])))
    assert all(np.all(np.isfinite(g)) for g in compiled[1])
    # XLA may draw other random numbers for the same seed: the same loss up to its Monte Carlo error.
    np.testing.assert_allclose(compiled[0], plain[0], atol=5.0)


@pytest.mark.parametrize("latent", vae.LATENTS)
def test_the_importance_weighted_training_bound_is_at_least_the_elbo_on_average(mnist, latent):
    x = tf.constant(mnist.x_train[:64])
    elbo_model, iw_model = _small(latent), _small(latent, train_importance_samples=8)  # the same weights

    def loss(model, s):
        return float(tf.reduce_mean(model.elbo_terms(x, tf.constant([s, 0]), training=True).loss_per_example(60000)))

    gaps = np.array([loss(elbo_model, s) - loss(iw_model, s) for s in range(10)])  # L_8 - ELBO, batch means
    # E[L_K] >= ELBO. A batch's estimates may cross by their Monte Carlo error: 0.25 nats holds for seeds 0-9
    # (the categorical latent's relaxed objectives come closest, within 0.07 nats; the others' gaps are 0.4-2).
    assert np.all(gaps > -0.25) and gaps.mean() > 0.0, gaps


# ----------------------------------------------------------------------------------------------------------------
# Training on MNIST.
# ----------------------------------------------------------------------------------------------------------------

_TRAINED = {}


def test_compiled_steps_train_on_images_without_labels_as_uncompiled_do(mnist, tmp_path):
    """--jit_compile stacks each call's batches; a VAE's batches are images alone (no label tensor)."""
    elbos = {}
    for jit_compile in (False, True):
        tf.keras.utils.set_random_seed(0)
        model = _fit(_small("normal"), mnist, tmp_path / str(jit_compile), 60, jit_compile=jit_compile,
                     steps_per_execution=16, learning_rate=3e-3)  # calls of 16, 16, 16 and 12 steps
        elbos[jit_compile] = _test_elbo(model, mnist)
    tf.keras.utils.set_random_seed(0)
    untrained = _test_elbo(_small("normal"), mnist)
    assert elbos[True] > untrained + 100 and elbos[False] > untrained + 100
    assert abs(elbos[True] - elbos[False]) < 0.05 * abs(elbos[False])  # other random numbers, the same descent


@pytest.fixture(scope="module")
def trained(mnist, tmp_path_factory):
    """latent -> (model before training's test ELBO, the model after one epoch of dynamically binarized MNIST)."""

    def get(latent):
        if latent not in _TRAINED:
            # The standard 784-200-200-50 network; a 16-D full-covariance latent (its Cholesky factor) and 16
            # sticks (each with its KL series) keep those tests short.
            small = latent in ("full_covariance", "kumaraswamy")
            model = vae.build_model(vae.Config(latent=latent, latent_dim=16 if small else 50), mnist)
            before = _test_elbo(model, mnist)
            _fit(model, mnist, tmp_path_factory.mktemp(latent), steps=mnist.num_train // 100)
            _TRAINED[latent] = before, model
        return _TRAINED[latent]

    yield get
    _TRAINED.clear()


@pytest.mark.slow
@pytest.mark.parametrize("latent", vae.LATENTS)
def test_each_latent_trains_on_mnist_and_its_test_elbo_improves_over_the_first_epoch(trained, mnist, latent):
    before, model = trained(latent)
    after = _test_elbo(model, mnist)
    # Before: about -210 nats (the decoder starts at the mean image); after one epoch about -140 to -160.
    assert after > before + 30.0, (before, after)
    assert after > -175.0
    if latent == "gumbel_softmax":
        assert int(model.step) == mnist.num_train // 100 and float(model.temperature()) < 1.0


@pytest.mark.slow
def test_importance_weighted_bound_is_at_least_the_elbo_and_grows_with_k(trained, mnist):
    _, model = trained("normal")
    x = mnist.x_test[:1000]
    elbo = _test_elbo(model, mnist, examples=1000)
    bounds = {k: evaluation.importance_weighted_log_likelihood(model, x, k, seed=0, batch_size=500).mean()
              for k in (1, 10, 100)}
    # L_1 is an estimate of the ELBO (Monte Carlo KL instead of the closed form): equal within a nat.
    assert bounds[1] == pytest.approx(elbo, abs=1.0)
    assert bounds[10] > bounds[1] + 1.0 and bounds[100] > bounds[10] + 0.5, bounds
    assert bounds[100] > elbo


@pytest.mark.slow
def test_conv_continuous_bernoulli_models_grey_levels(mnist, tmp_path):
    model = vae.build_model(vae.Config(arch="conv", activation="relu", likelihood="continuous_bernoulli",
                                       latent="full_covariance", latent_dim=8), mnist)
    before = _test_elbo(model, mnist, examples=1000)
    _fit(model, mnist, tmp_path, steps=150)
    after = _test_elbo(model, mnist, examples=1000)
    # A density of grey levels: positive log-densities are possible, and training raises the ELBO a lot.
    assert after > before + 100.0, (before, after)
    assert model.predictive(mnist.x_test[:2], 3, tf.constant([1, 1])).mean().shape == (3, 2) + IMAGE


@pytest.mark.slow
def test_gumbel_run_resumed_from_a_checkpoint_matches_an_uninterrupted_run(mnist, tmp_path):
    small = dataclasses.replace(mnist, x_train=mnist.x_train[:1500], y_train=mnist.y_train[:1500])
    build = lambda: vae.build_model(vae.Config(latent="gumbel_softmax", temperature_decay=0.02,  # noqa: E731
                                               temperature_min=0.1, **SMALL), small)
    fit = lambda model, name, steps: _fit(model, small, tmp_path / name, steps, lr_schedule="constant")  # noqa: E731
    uninterrupted = fit(build(), "uninterrupted", 40)
    fit(build(), "resumed", 25)  # stops mid-epoch (15 steps per epoch)
    resumed = fit(build(), "resumed", 40)
    assert int(resumed.step) == 40
    assert float(resumed.temperature()) == float(uninterrupted.temperature()) == pytest.approx(np.exp(-0.8))
    for a, b in zip(uninterrupted.trainable_variables, resumed.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


@pytest.mark.slow
def test_train_and_evaluate_reports_rate_distortion_and_nll_and_writes_figures(tmp_path, data_dir):
    config = config_lib.TrainConfig(dataset="mnist", data_dir=str(data_dir), workdir=str(tmp_path / "work"),
                                    train_steps=200, batch_size=100, learning_rate=1e-3, seed=1,
                                    train_eval_examples=2000)
    metrics = train_lib.train_and_evaluate(
        config, vae.Config(latent_dim=2, eval_importance_samples=20, eval_examples=1000), vae.build_model)
    written = json.loads((tmp_path / "work" / "metrics.json").read_text())
    for split in ("train", "test"):
        assert written[f"{split}/rate"] == written[f"{split}/kl"] > 0
        assert written[f"{split}/distortion"] == written[f"{split}/expected_nll"]
        assert written[f"{split}/elbo"] == pytest.approx(-(written[f"{split}/rate"] + written[f"{split}/distortion"]))
    assert "test/accuracy" not in written  # a density model, even on labelled MNIST
    assert written["test/nll_examples"] == 1000 and written["test/nll_importance_samples"] == 20
    assert 100 < metrics["test/nll"] < -metrics["test/elbo"] + 1.0
    for figure in ("reconstructions", "prior_samples", "latent_map", "latent_manifold"):
        assert (tmp_path / "work" / f"{figure}.png").stat().st_size > 1000, figure


@pytest.mark.slow
def test_binary_trains_from_the_flagfile(tmp_path, data_dir):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "training.train_vae", "--flagfile=configs/vae_binarized_mnist.flags",
         f"--data_dir={data_dir}", f"--workdir={tmp_path / 'work'}", "--train_steps=30",
         "--eval_importance_samples=4", "--eval_examples=200", "--train_eval_examples=500"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "work" / "metrics.json").read_text())
    for name in ("test/nll", "test/elbo", "test/rate", "test/distortion", "valid/elbo", "train/elbo"):
        assert np.isfinite(metrics[name]), name
    config = json.loads((tmp_path / "work" / "config.json").read_text())
    assert config["hidden_units"] == [200, 200] and config["latent_dim"] == 50
