"""Latency of the exported posterior predictive against the per-sample loop and a deterministic pass.

For each family and each S in {1, 10, 100, 1000} and batch in {1, 32, 1024}, in one process, medians of calls
timed in alternation (one call of each per round, so that the ratios do not fold in the machine's drift):

  * ours: the exported SavedModel's `predict_mc` (the same graph as `serving_default`, with S as an input),
    loaded with `tf.saved_model.load`: S posterior samples in one vectorized computation, plus the statistics of
    `models.predictive` (mean, spreads, interval or entropies);
  * (a) loop: what a TFP example writes -- a `tf_keras` model of `tfp.layers` (DenseFlipout for the Bayesian
    network; for the meta-networks, which have no TFP-example counterpart, our own model asked for one sample at
    a time) called S times in a Python loop, its outputs averaged;
  * (b) deterministic: one forward pass of a plain `tf_keras` network of the same shape (`tf.function`);
  * moments (mean-field networks): the export's `predict_moments`, the opt-in moment-propagation approximation
    (same inputs and outputs; its accuracy against the exact predictive is in `benchmarks/mnist_uncertainty.py`).

For the VAE, whose `serving_default` is the importance-weighted bound L_S = log (1/S) sum_s w_s over
z_s ~ q(z | x), ours is its `log_likelihood` signature (the same graph, S an input), (a) the TFP VAE example's
model (an `IndependentNormal` encoder, an `IndependentBernoulli` decoder) encoding once and decoding one z_s per
compiled call, the log-weights combined by log-sum-exp, and (b) one pass of the autoencoder on the latent mean.

It prints ours / (a) as a speed-up and ours / (b) as "deterministic passes", and checks the targets: at least 10x
faster than (a) at S = 100, and S = 100 costing at most 10 deterministic passes at batch 32. With `--jit_compile`
it also times the same signature function compiled by XLA in process (stock TF Serving runs XLA only when started
with `--xla_cpu_compilation_enabled`, so exports are not compiled by default).

All sides run in one process under the model server's TensorFlow settings (`serving.RUNTIME_DEFAULTS`: the
pooling CPU allocator; `TF_CPU_ALLOCATOR_USE_BFC=false python benchmarks/predictive.py` times them under malloc,
with `TF_ENABLE_ONEDNN_OPTS=0` too on CPUs where TensorFlow turns oneDNN, and its own pool, on by default).

The classifiers and the VAE are untrained (their latency does not depend on the weights' values; the VAE gets
binary images). The regression models are
fitted on concrete (see `build`): the 95% interval's search over the mixture of S components takes as many steps
as its components' spread asks for (none when an untrained network's posterior is still nearly a point, a few
once trained). Settings: the MNIST classifiers of the
families benchmark (784-400-400-10 for the mean-field network, 784-100-10 for the meta-networks) and the UCI
protocol's regression network (8-50-2, heteroscedastic; its statistics include the mixture's 95% interval), and
Bayesian linear regression on the same 8 features, exact and CAVI posteriors: ours integrates the weights out
(one Normal for the exact posterior; for CAVI, 32 quadrature strata of the noise precision's posterior), the
loop draws the weights; and the VAE of `benchmarks/vae_mnist.py` (784-200-200-50 encoder, tanh, a diagonal
Gaussian latent, the decoder its mirror).

    python benchmarks/predictive.py [--settings=bnn_mnist,bnn_uci] [--jit_compile]
"""

from __future__ import annotations

import argparse
import contextlib
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

serving.apply_runtime_defaults()  # the model server's TensorFlow settings (its CPU allocator), for all three sides

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402
import tf_keras  # noqa: E402

from models import bayesian_dense, hypernetwork, linear_regression, vae  # noqa: E402
from serving import export  # noqa: E402
from training import config as config_lib  # noqa: E402
from training import data as data_lib  # noqa: E402
from training import train_lib  # noqa: E402

SAMPLES = (1, 10, 100, 1000)
BATCHES = (1, 32, 1024)

# setting -> (family, input shape, outputs, hidden widths, task)
SETTINGS = {
    "bnn_mnist": ("bnn", (28, 28, 1), 10, (400, 400), "classification"),
    "bnn_uci": ("bnn", (8,), 1, (50,), "regression"),
    "linear_uci": ("linear", (8,), 1, (), "regression"),
    "linear_uci_cavi": ("linear", (8,), 1, (), "regression"),
    "meta_representation_mnist": ("meta_representation", (28, 28, 1), 10, (100,), "classification"),
    "bayesian_hypernetwork_mnist": ("bayesian_hypernetwork", (28, 28, 1), 10, (100,), "classification"),
    # The VAE: 784-200-200-50 encoder, its mirror as decoder (the benchmarks/vae_mnist.py model); "outputs" is D.
    "vae_mnist": ("vae", (28, 28, 1), 50, (200, 200), "density"),
}


def _dataset(input_shape, outputs, task):
    """A stand-in Dataset of the right shapes (only shapes matter here)."""
    x = np.zeros((2,) + input_shape, np.float32)
    if task == "classification":
        return data_lib.Dataset(name="stand-in", task=task, num_classes=outputs, x_train=x,
                                y_train=np.zeros(2, np.int32), x_test=x, y_test=np.zeros(2, np.int32))
    scaler = data_lib.Standardizer(np.zeros(input_shape, np.float32), np.ones(input_shape, np.float32))
    y = np.zeros((2, outputs), np.float32)
    return data_lib.Dataset(name="stand-in", task=task, x_train=x, y_train=y, x_test=x, y_test=y,
                            x_scaler=scaler, y_scaler=data_lib.Standardizer(np.zeros(1, np.float32),
                                                                              np.ones(1, np.float32)))


def build(setting: str, data_dir: str):
    """(our model, its dataset stand-in) of a setting."""
    family, input_shape, outputs, hidden, task = SETTINGS[setting]
    if family == "linear":
        # Fitted on concrete: the 95% interval's search over the mixture of S Normals takes more steps when
        # the components barely overlap, as they would under the prior, so only here do the values matter.
        dataset = data_lib.load("uci/concrete", data_dir, 0)
        inference = "cavi" if setting.endswith("_cavi") else "exact"
        model = linear_regression.build_model(linear_regression.Config(inference=inference), dataset)
        model.fit_closed_form(dataset.x_train, dataset.y_train)
        return model, dataset
    if family == "bnn" and task == "regression":
        dataset = data_lib.load("uci/concrete", data_dir, 0)
        model = bayesian_dense.build_model(bayesian_dense.Config(hidden_units=hidden), dataset)
        with tempfile.TemporaryDirectory() as workdir:  # the shared loop at its defaults (40 epochs, a few seconds)
            train_lib.fit(model, dataset, config_lib.TrainConfig(dataset="uci/concrete"),
                          tf.distribute.get_strategy(), pathlib.Path(workdir))
        return model, dataset
    if family == "vae":  # binary images in: no binarization in the graph
        return vae.VariationalAutoencoder(vae.Config(), input_shape, binarize=False), _dataset(
            input_shape, 10, "classification")
    dataset = _dataset(input_shape, outputs, task)
    if family == "bnn":
        return bayesian_dense.build_model(bayesian_dense.Config(hidden_units=hidden), dataset), dataset
    config = hypernetwork.Config(variant=family, hidden_units=hidden, code_dim=32, hyper_units=8)
    return hypernetwork.build_model(config, dataset), dataset


def _head(outputs, task):
    """Network outputs -> what the loop averages: class probabilities, or the regression mean."""
    if task == "classification":
        return tf.nn.softmax(outputs)
    return outputs[..., :1]


def loop_baseline(setting: str, model):
    """(a): a function (x, S) -> the average of S separate calls, as TFP examples write it."""
    family, input_shape, outputs, hidden, task = SETTINGS[setting]
    head_units = outputs if task == "classification" else 2 * outputs
    if family == "vae":
        return _vae_loop(input_shape, outputs, hidden)
    if family == "bnn":
        layers = [tf_keras.layers.Flatten()]
        layers += [tfp.layers.DenseFlipout(u, activation="relu") for u in hidden]
        layers += [tfp.layers.DenseFlipout(head_units)]
        keras_model = tf_keras.Sequential(layers)
        keras_model.build((None,) + input_shape)
        # Compiled, which is kinder to the baseline than the example's eager `model.predict` per sample.
        call = tf.function(lambda x: _head(keras_model(x), task))
    elif family == "linear":  # one posterior draw of the weights per call, as a TFP script samples them
        @tf.function
        def call(x):
            seed = tf.random.uniform([2], maxval=2**30, dtype=tf.int32)
            w = model.posterior().model["w"].sample(seed=seed)
            return tf.linalg.matvec(linear_regression.features(x), w)[:, None]
    else:
        @tf.function
        def call(x):
            seed = tf.random.uniform([2], maxval=2**30, dtype=tf.int32)
            return _head(model.predictive_outputs(x, 1, seed)[0], task)

    def predict(x, num_samples):
        return tf.add_n([call(x) for _ in range(num_samples)]) / num_samples

    return predict


def _vae_loop(input_shape, latent_dim: int, hidden):
    """(a) for the VAE: the importance-weighted bound L_S = log (1/S) sum_s p(x | z_s) p(z_s) / q(z_s | x) as a
    script on the TFP VAE example's model writes it (a `tfp.layers.IndependentNormal` encoder, an
    `IndependentBernoulli` decoder, both `tf_keras`), one compiled call per z_s ~ q(z | x); kinder than calling
    the whole model S times, the encoder runs once."""
    encoder = tf_keras.Sequential(
        [tf_keras.layers.Flatten()] + [tf_keras.layers.Dense(u, activation="tanh") for u in hidden]
        + [tf_keras.layers.Dense(tfp.layers.IndependentNormal.params_size(latent_dim)),
           tfp.layers.IndependentNormal(latent_dim)])
    decoder = tf_keras.Sequential(
        [tf_keras.layers.Dense(u, activation="tanh") for u in reversed(hidden)]
        + [tf_keras.layers.Dense(tfp.layers.IndependentBernoulli.params_size(input_shape)),
           tfp.layers.IndependentBernoulli(input_shape, tfp.distributions.Bernoulli.logits)])
    encoder.build((None,) + input_shape)
    decoder.build((None, latent_dim))
    prior = tfp.distributions.MultivariateNormalDiag(tf.zeros(latent_dim))
    encode = tf.function(lambda x: (lambda q: (q.mean(), q.stddev()))(encoder(x)))

    @tf.function
    def log_weight(x, loc, scale):
        q = tfp.distributions.MultivariateNormalDiag(loc, scale)
        z = q.sample()
        return decoder(z).log_prob(x) + prior.log_prob(z) - q.log_prob(z)

    def predict(x, num_samples):
        loc, scale = encode(x)
        log_w = tf.stack([log_weight(x, loc, scale) for _ in range(num_samples)])
        return tf.reduce_logsumexp(log_w, axis=0) - np.log(num_samples)

    return predict


def deterministic_baseline(setting: str):
    """(b): one forward pass of a plain network of the same shape (for the VAE, the autoencoder on the latent
    mean: encoder, decoder, pixel probabilities)."""
    family, input_shape, outputs, hidden, task = SETTINGS[setting]
    if family == "vae":
        layers = ([tf_keras.layers.Flatten()] + [tf_keras.layers.Dense(u, activation="tanh") for u in hidden]
                  + [tf_keras.layers.Dense(outputs)]
                  + [tf_keras.layers.Dense(u, activation="tanh") for u in reversed(hidden)]
                  + [tf_keras.layers.Dense(int(np.prod(input_shape)), activation="sigmoid")])
        keras_model = tf_keras.Sequential(layers)
        keras_model.build((None,) + input_shape)
        return tf.function(keras_model)
    head_units = outputs if task == "classification" else 2 * outputs
    keras_model = tf_keras.Sequential([tf_keras.layers.Flatten()]
                                      + [tf_keras.layers.Dense(u, activation="relu") for u in hidden]
                                      + [tf_keras.layers.Dense(head_units)])
    keras_model.build((None,) + input_shape)
    return tf.function(lambda x: _head(keras_model(x), task))


def interleaved_medians(fns: dict, budget: float = 1.0, min_rounds: int = 3, max_rounds: int = 50) -> dict:
    """Median wall time of each fn() in `fns` (name -> fn), timed in alternation: one call of each per round.

    After one warm-up call each, rounds run until every fn has `min_rounds` calls and the rounds have taken
    `budget` seconds per fn (or `max_rounds`). Alternating makes each ratio between two fns robust to the
    machine's speed drifting during the run (a shared 2-core VM here: the same call can read 20 ms in one
    minute and 35 ms in the next); timing each fn in a block of its own would fold that drift into the ratio.
    """
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < budget * len(fns) and rounds < max_rounds):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    return {name: float(np.median(values)) for name, values in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "datasets"),
                        help="concrete, for the regression settings")
    parser.add_argument("--jit_compile", action="store_true", help="also time the XLA-compiled signature")
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of repeated runs per measurement")
    parser.add_argument("--samples", default=",".join(map(str, SAMPLES)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    args = parser.parse_args()
    tf.random.set_seed(0)
    rng = np.random.default_rng(0)
    print(f"machine: {os.cpu_count()} cores; TensorFlow {tf.__version__}; medians of calls timed in alternation\n")
    checks = []
    for setting in args.settings.split(","):
        family, input_shape, outputs, hidden, task = SETTINGS[setting]
        model, dataset = build(setting, args.data_dir)
        # The in-process XLA timing reads what the export precomputes (the mean-field variances, the linear
        # model's quadrature nodes), as the exported signature does.
        snapshot = getattr(model, "serving_snapshot", contextlib.nullcontext)
        with tempfile.TemporaryDirectory() as base, snapshot():
            path = export.export(model, dataset, base, num_samples=100, seed=0)
            signatures = tf.saved_model.load(str(path)).signatures
            # The VAE's `log_likelihood` is its `serving_default` (the bound L_K) with K as an input.
            signature = signatures["log_likelihood" if family == "vae" else "predict_mc"]
            moments = signatures.get("predict_moments")
            loop = loop_baseline(setting, model)
            deterministic = deterministic_baseline(setting)
            jitted = tf.function(lambda x, s: model_summary(model, task, x, s),
                                 jit_compile=True) if args.jit_compile else None
            widths = " -> ".join(str(w) for w in (int(np.prod(input_shape)),) + hidden + (outputs,))
            if hasattr(model, "num_variational_parameters"):
                size = f"variational parameters {model.num_variational_parameters():,}"
            else:
                size = {"exact": "exact Gaussian posterior (weights integrated out: one component)",
                        "cavi": "CAVI posterior (weights and noise precision integrated out: 32 components)"}[
                            model.config.inference]
            print(f"## {setting} ({widths}, {task}), {size}")
            header = ("| batch | S | ours ms | (a) loop ms | speed-up vs (a) | (b) deterministic ms | "
                      "ours in passes of (b) |")
            if jitted is not None:
                header += " ours, XLA ms |"
            if moments is not None:
                header += " moments ms | moments in passes of (b) |"
            print(header)
            print("|---" * (header.count("|") - 1) + "|")
            for batch in [int(b) for b in args.batches.split(",")]:
                x = rng.uniform(size=(batch,) + input_shape)
                x = tf.constant((x > 0.5 if family == "vae" else x).astype(np.float32))
                for s in [int(v) for v in args.samples.split(",")]:
                    seed = tf.constant([1, 2], tf.int32)
                    fns = {"ours": lambda: signature(x=x, num_samples=tf.constant(s), seed=seed),
                           "loop": lambda: loop(x, s), "det": lambda: deterministic(x)}
                    if moments is not None:
                        fns["moments"] = lambda: moments(x=x, num_samples=tf.constant(s), seed=seed)
                    xla_note = ""
                    if jitted is not None:
                        fns["xla"] = lambda: jitted(x, tf.constant(s))
                        try:
                            fns["xla"]()
                        except (tf.errors.InternalError, tf.errors.InvalidArgumentError,
                                tf.errors.UnimplementedError):
                            # XLA cannot compile every graph: the meta-representation predictive's loop over
                            # chunks of samples has a dynamic trip count and slice sizes.
                            del fns["xla"]
                            xla_note = " does not compile |"
                    # The loop at S = 1000 takes up to a minute a call: one round of everything there.
                    t = interleaved_medians(fns, args.budget, min_rounds=1 if s > 100 else 3)
                    ours, baseline, det = t["ours"], t["loop"], t["det"]
                    row = (f"| {batch} | {s} | {1e3 * ours:.2f} | {1e3 * baseline:.2f} | {baseline / ours:.1f}x | "
                           f"{1e3 * det:.3f} | {ours / det:.1f} |")
                    if jitted is not None:
                        row += f" {1e3 * t['xla']:.2f} |" if "xla" in t else xla_note
                    if moments is not None:
                        fast = t["moments"]
                        row += f" {1e3 * fast:.2f} | {fast / det:.1f} |"
                    print(row, flush=True)
                    if s == 100:
                        checks.append((setting, batch, baseline / ours, ours / det, "exact"))
                        if moments is not None:
                            checks.append((setting, batch, baseline / fast, fast / det, "moments"))
            print()
    print("targets at S = 100:")
    for setting, batch, speedup, passes, route in checks:
        verdicts = [f"{speedup:.1f}x faster than the loop ({'meets' if speedup >= 10 else 'misses'} >= 10x)"]
        if batch == 32:
            verdicts.append(f"{passes:.1f} deterministic passes ({'meets' if passes <= 10 else 'misses'} <= 10)")
        print(f"  {setting} ({route}), batch {batch}: " + "; ".join(verdicts))


def model_summary(model, task, x, num_samples):
    """The statistics of `predict_mc`, traced in process (for the XLA timing)."""
    from models import predictive

    if task == "density":
        return model.importance_weighted(x, num_samples, tf.constant([1, 2]), shared_noise=True)["log_likelihood"]
    if task == "classification":
        return predictive.classification_summary(model.predictive(x, num_samples, tf.constant([1, 2])))[
            "probabilities"]
    return predictive.regression_predictive(model, x, num_samples, tf.constant([1, 2]),
                                            resolution=export.OUTPUT_RESOLUTION)["upper"]


if __name__ == "__main__":
    main()
