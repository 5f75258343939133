"""Training throughput of the shared loop against `tf_keras` `fit` of the same TFP layers.

The baselines are how the TFP examples train: a `tf_keras` model of `tfp.layers` whose KL terms are Keras
losses, compiled with Adam and trained by `model.fit`:

  * Bayesian network: `tfp.layers.DenseFlipout` 784-400-400-10 on MNIST, KL / N per example (as in
    `bayesian_neural_network.py`), against `models.bayesian_dense` with the flipout estimator through
    `training.train_lib.fit`; and the same with local reparameterization on both sides
    (`tfp.layers.DenseLocalReparameterization` against our `local_reparameterization` estimator);
  * VAE: a 784-200-200-50 encoder to `tfp.layers.IndependentNormal`, its KL to N(0, I) as a Keras loss and a
    decoder to `tfp.layers.IndependentBernoulli` (as in the TFP `vae` example), on dynamically binarized MNIST
    (a fresh Bernoulli draw of every image each epoch, in a `tf.data` map before `fit` as the TFP Probabilistic
    Layers VAE example does), against `models.vae` through the shared loop. The KL is added once by
    `KLDivergenceAddLoss`: the example's `KLDivergenceRegularizer` counts it twice (see `vae_baseline`).

Same data, batch size, epochs, learning rate and optimizer. The two alternate epoch by epoch (ours, theirs, ours,
...), so a change in the load of this shared machine hits both alike. The script prints training examples per
second (the first epoch, which includes tracing, is reported apart and left out of the steady-state rate) and the final
test ELBO per example of both, computed by the same code: `training.metrics.elbo_metrics` for ours, and for the
baselines their own negative log-likelihood averaged over 10 weight draws plus their KL losses.

    python benchmarks/training.py                      # every setting at its epochs
    python benchmarks/training.py --settings=vae_mnist --epochs=3
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import serving  # noqa: E402

serving.apply_runtime_defaults()  # as the training binaries run, before TensorFlow's first op (both sides)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
import tf_keras  # noqa: E402

from models import bayesian_dense, vae  # noqa: E402
from training import config as config_lib  # noqa: E402
from training import data as data_lib  # noqa: E402
from training import metrics as metrics_lib  # noqa: E402
from training import train_lib  # noqa: E402
from training import xla_cache  # noqa: E402

tfd, tfpl = tfp.distributions, tfp.layers


class EpochTimer(tf_keras.callbacks.Callback):
    """Seconds of every epoch, over any number of `fit` calls."""

    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self.start)


def _rates(epoch_seconds, examples_per_epoch):
    first = examples_per_epoch / epoch_seconds[0]
    rest = epoch_seconds[1:] or epoch_seconds
    return first, examples_per_epoch * len(rest) / sum(rest)


BASELINE_LAYERS = {"flipout": tfpl.DenseFlipout, "local_reparameterization": tfpl.DenseLocalReparameterization}


def bnn_baseline(dataset, setting, jit_compile=False):
    """TFP's layers of the setting's estimator (Bayesian kernels and biases, like ours, from the same initial
    scale), KL / N; `fit` compiled by XLA with `jit_compile`."""
    n = dataset.num_train
    kl = lambda q, p, _: tfd.kl_divergence(q, p) / n  # noqa: E731 - the example's per-example scaling
    posterior = tfpl.default_mean_field_normal_fn(
        untransformed_scale_initializer=tf_keras.initializers.Constant(INIT_RHO))

    def dense(units, activation=None):
        return BASELINE_LAYERS[setting["estimator"]](units, activation=activation, kernel_posterior_fn=posterior,
                                 bias_posterior_fn=posterior, bias_prior_fn=tfpl.default_multivariate_normal_fn,
                                 kernel_divergence_fn=kl, bias_divergence_fn=kl)

    regression = dataset.task == "regression"
    layers = [tf_keras.layers.Flatten()] + [dense(u, "relu") for u in setting["hidden"]]
    layers.append(dense(2 if regression else dataset.num_classes))
    if regression:
        layers.append(tfpl.DistributionLambda(lambda t: tfd.Normal(
            t[..., :1], bayesian_dense.MIN_SCALE + tf.nn.softplus(t[..., 1:]))))
        loss = lambda y, rv: -rv.log_prob(y)  # noqa: E731
    else:
        loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model = tf_keras.Sequential(layers)
    model.compile(tf_keras.optimizers.Adam(setting["learning_rate"]), loss=loss, jit_compile=jit_compile)
    used = n // setting["batch_size"] * setting["batch_size"]

    def epoch(timer):
        model.fit(dataset.x_train[:used], dataset.y_train[:used], batch_size=setting["batch_size"], epochs=1,
                  verbose=0, callbacks=[timer], shuffle=True)

    def test_elbo():
        x, y = dataset.x_test, dataset.y_test
        draws = [tf.reduce_mean(loss(y, model(x))).numpy() for _ in range(10)]
        return -(float(np.mean(draws)) + float(tf.add_n(model.losses)))

    return epoch, test_elbo


def vae_baseline(dataset, setting, jit_compile=False):
    latent = 50
    prior = tfd.Independent(tfd.Normal(tf.zeros(latent), 1.0), 1)
    encoder = tf_keras.Sequential([
        tf_keras.layers.Flatten(), tf_keras.layers.Dense(200, "tanh"), tf_keras.layers.Dense(200, "tanh"),
        tf_keras.layers.Dense(tfpl.IndependentNormal.params_size(latent)), tfpl.IndependentNormal(latent),
        # The KL as a layer's loss, exact (as ours) and per example: the layer adds the batch's sum, and full
        # batches make 1 / batch_size its mean. Not `activity_regularizer=KLDivergenceRegularizer(prior)`, the
        # TFP example's choice: Keras applies an activity regularizer to each output of `DistributionLambda`,
        # which returns two, so the KL is counted twice (tensorflow/probability#1215; `model.losses` holds two
        # copies here), the baseline trains a beta = 2 VAE and its test ELBO trailed ours by 8 nats.
        tfpl.KLDivergenceAddLoss(prior, use_exact_kl=True, weight=1.0 / setting["batch_size"])])
    # The output bias starts at the logit of the mean training image, as ours does (`models.vae.build_model`):
    # without it the baseline spends its first epochs learning the average image (its test ELBO trailed ours by
    # 11 more nats after 5 epochs), a difference of initialization, not of the training loop.
    pixel_mean = np.clip(dataset.x_train.mean(axis=0, dtype=np.float64), 1e-3, 1 - 1e-3).reshape(-1)
    decoder = tf_keras.Sequential([
        tf_keras.layers.Dense(200, "tanh"), tf_keras.layers.Dense(200, "tanh"),
        tf_keras.layers.Dense(784, bias_initializer=tf_keras.initializers.Constant(
            np.log(pixel_mean / (1 - pixel_mean)))),
        tfpl.IndependentBernoulli((28, 28, 1))])
    inputs = tf_keras.Input((28, 28, 1))
    model = tf_keras.Model(inputs, decoder(encoder(inputs)))
    model.compile(tf_keras.optimizers.Adam(setting["learning_rate"]), loss=lambda x, rv: -rv.log_prob(x),
                  jit_compile=jit_compile)
    batch_size = setting["batch_size"]
    steps = dataset.num_train // batch_size
    images = tf.constant(dataset.x_train[:steps * batch_size])

    def binarized_batch(indices):  # dynamic binarization in the input pipeline, as the TFP VAE example does
        x = tf.gather(images, indices)
        x = tf.cast(tf.random.uniform(tf.shape(x)) < x, tf.float32)
        return x, x

    # Shuffled indices, gathered per batch (how `fit` feeds arrays), then binarized: a fresh draw every epoch,
    # timed inside the epoch like ours, on tf.data's threads in parallel with the steps.
    batches = (tf.data.Dataset.range(steps * batch_size).shuffle(steps * batch_size, seed=0)
               .batch(batch_size, drop_remainder=True)
               .map(binarized_batch, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE))

    def epoch(timer):
        model.fit(batches, epochs=1, verbose=0, callbacks=[timer])

    def test_elbo():
        x_test = vae.fixed_binarization(dataset.x_test).numpy()
        nll = float(tf.reduce_mean(-model(x_test).log_prob(x_test)))
        kl = float(tf.reduce_mean(tfd.kl_divergence(encoder(x_test), prior)))
        return -(nll + kl)

    return epoch, test_elbo


def interleaved(setting, dataset, baseline_epoch, jit_compile):
    """Trains ours with the shared loop and runs one baseline epoch after each of our epochs (our epoch, theirs,
    ours, ...), so both see the same machine load; returns (our epoch seconds, baseline epoch seconds, our test
    ELBO). Our epochs are timed between epoch ends, less the baseline epoch run in between."""
    with tempfile.TemporaryDirectory() as workdir:
        config = config_lib.TrainConfig(dataset=dataset.name, workdir=workdir, epochs=setting["epochs"],
                                        batch_size=setting["batch_size"], learning_rate=setting["learning_rate"],
                                        lr_schedule="constant", seed=0, jit_compile=jit_compile).validate()
        if setting["family"] == "bnn":
            model = bayesian_dense.build_model(bayesian_dense.Config(
                hidden_units=setting["hidden"], init_rho=INIT_RHO, estimator=setting["estimator"]), dataset)
        else:
            model = vae.build_model(vae.Config(latent="normal", latent_dim=50, hidden_units=setting["hidden"],
                                               activation="tanh"), dataset)
        epoch_seconds, clock, timer = [], [time.perf_counter()], EpochTimer()

        def on_epoch_end(epoch, means):
            epoch_seconds.append(time.perf_counter() - clock[0])
            baseline_epoch(timer)
            clock[0] = time.perf_counter()

        train_lib.fit(model, dataset, config, tf.distribute.get_strategy(), pathlib.Path(workdir), on_epoch_end)
        elbo = metrics_lib.elbo_metrics(model, dataset, "test", seed=0, batch_size=1000)["test/elbo"]
        if dataset.task == "regression":  # back to standardized units, as the baseline reports it
            elbo += math.log(dataset.target_scale)
    return epoch_seconds, timer.times, elbo


# Each family at the size its benchmark runs it: the UCI protocol's network, MNIST networks, Burda et al.'s VAE.
SETTINGS = {
    # A small network's step is mostly per-op dispatch: ours runs it compiled (--jit_compile), as docs/training.md
    # advises for small networks; `fit` stays uncompiled, its faster setting (its jit_compile slows it: --jit_compile).
    "bnn_uci": dict(family="bnn", dataset="uci/kin8nm", hidden=(50,), batch_size=32, learning_rate=1e-2,
                    epochs=40, estimator="flipout", jit_compile=True),
    "bnn_mnist": dict(family="bnn", dataset="mnist", hidden=(400, 400), batch_size=128, learning_rate=1e-3,
                      epochs=5, estimator="flipout"),
    "bnn_mnist_lrt": dict(family="bnn", dataset="mnist", hidden=(400, 400), batch_size=128, learning_rate=1e-3,
                          epochs=5, estimator="local_reparameterization"),
    "vae_mnist": dict(family="vae", dataset="mnist", hidden=(200, 200), batch_size=100, learning_rate=1e-3,
                      epochs=5),
}
INIT_RHO = -5.0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"))
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--epochs", type=int, default=0, help="override every setting's epochs")
    parser.add_argument("--jit_compile", action="store_true",
                        help="compile both sides' training steps with XLA (ours: --jit_compile; fit: jit_compile)")
    args = parser.parse_args()
    xla_cache.use_persistent_cache()  # as the training binaries do with --jit_compile, before TensorFlow's first op
    print(f"machine: {os.cpu_count()} cores; Adam, constant learning rate; examples per second after the first "
          f"epoch (the first epoch, with tracing, in parentheses); test ELBO per example, nats"
          f"{'; both sides compiled by XLA' if args.jit_compile else ''}\n")
    print("| setting | batch | epochs | ours ex/s | tf_keras fit ex/s | speed-up | ours test ELBO | fit test ELBO |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.settings.split(","):
        setting = dict(SETTINGS[name])
        if args.epochs:
            setting["epochs"] = args.epochs
        dataset = data_lib.load(setting["dataset"], args.data_dir, 0)
        examples = (dataset.num_train // setting["batch_size"]) * setting["batch_size"]
        tf_keras.utils.set_random_seed(0)
        baseline_epoch, baseline_elbo = (bnn_baseline if setting["family"] == "bnn" else vae_baseline)(
            dataset, setting, args.jit_compile)
        tf_keras.utils.set_random_seed(0)
        our_jit = args.jit_compile or setting.get("jit_compile", False)
        our_times, base_times, our_elbo = interleaved(setting, dataset, baseline_epoch, our_jit)
        base_elbo = baseline_elbo()
        (base_first, base_rate), (our_first, our_rate) = _rates(base_times, examples), _rates(our_times, examples)
        label = f"{' x '.join(map(str, setting['hidden']))} hidden" + (
            f", {setting['estimator']}" if "estimator" in setting else "") + (
            ", ours --jit_compile" if our_jit and not args.jit_compile else "")
        print(f"| {name} ({label}) | {setting['batch_size']} | "
              f"{setting['epochs']} | {our_rate:,.0f} ({our_first:,.0f}) | {base_rate:,.0f} ({base_first:,.0f}) | "
              f"{our_rate / base_rate:.2f}x | {our_elbo:.2f} | {base_elbo:.2f} |", flush=True)


if __name__ == "__main__":
    main()
