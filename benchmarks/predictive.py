"""Latency of the exported posterior predictive against its arithmetic floor and the per-sample loop.

For each setting, each S in {1, 10, 100, 1000} and batch in {1, 32, 1024}, in one process, medians of calls timed
in alternation (one call of each per round, so that the ratios do not fold in the machine's drift):

  * ours: the exported SavedModel's `predict_mc` (the same graph as `serving_default`, with S as an input),
    loaded with `tf.saved_model.load`: S posterior samples in one vectorized computation, plus the statistics of
    `models.predictive` (mean, spreads, interval or entropies);
  * floor: the matrix products that S samples cannot avoid, timed as arithmetic (below);
  * (a) loop: what a TFP example writes -- a `tf_keras` model of `tfp.layers` (DenseFlipout for the mean-field
    network; for the meta-networks, which have no TFP-example counterpart, our own model asked for one sample at
    a time) called S times in a Python loop, its outputs averaged;
  * (b) deterministic: one forward pass of a plain `tf_keras` network of the same shape (`tf.function`): what a
    call costs when there is nothing to sample;
  * moments (mean-field networks): the export's `predict_moments`, the opt-in moment-propagation approximation
    (same inputs and outputs; its accuracy against the exact predictive is in `benchmarks/mnist_uncertainty.py`).

The floor of the exact signatures. Once a nonlinearity has acted on sampled pre-activations, each sample's
activations differ, so every layer after the first needs at least one product per sample; the first layer's input
is shared by all S samples and needs at least one product per call. `floor_multiply_adds` counts those
multiply-adds for a setting (the mean-field networks: B n_0 n_1 + S B sum_{l>=2} n_{l-1} n_l; the Bayesian
hypernetwork adds its flow's couplings per sample; the meta-representation generates every weight per sample, so
it counts g's output head and bilinear term over all unit pairs and one product per layer per sample; the VAE,
the encoder once and the decoder per sample; the linear models, phi . m and phi^T S phi, with no sample at all).
Biases, elementwise passes, random numbers and the statistics count nothing. The floor in milliseconds is that count
divided by the machine's GEMM rate, measured in the same rounds as the row: the median time of a [1024, 1024] x
[1024, 1024] float32 product timed before every call of the row's rounds. `ours / floor` is how far the signature
is from its products at that rate: between 1 and 2 where the products dominate (local reparameterization takes two
per layer, means and variances; a product of another shape may run faster than the reference one); far above where
per-call overhead (small batches, see (b)) or elementwise work (narrow layers, the interval's search, the
meta-representation's tanh over all unit pairs) dominates.

`predict_moments` is measured against the per-sample loop (`loop / moments`): it samples only the outputs, so its
cost does not grow with S as the exact signatures' does.

For the VAE, whose `serving_default` is the importance-weighted bound L_S = log (1/S) sum_s w_s over
z_s ~ q(z | x), ours is its `log_likelihood` signature (the same graph, S an input), (a) the TFP VAE example's
model (an `IndependentNormal` encoder, an `IndependentBernoulli` decoder) encoding once and decoding one z_s per
compiled call, the log-weights combined by log-sum-exp, and (b) one pass of the autoencoder on the latent mean.

With `--jit_compile` it also times the same signature function compiled by XLA in process (stock TF Serving runs
XLA only when started with `--xla_cpu_compilation_enabled`, so exports are not compiled by default); not for the
meta-representation, whose predictive keeps its loop over chunks of samples under XLA for bounded memory.

All sides run in one process under the model server's TensorFlow settings (`serving.RUNTIME_DEFAULTS`: the
pooling CPU allocator; `TF_CPU_ALLOCATOR_USE_BFC=false python benchmarks/predictive.py` times them under malloc,
with `TF_ENABLE_ONEDNN_OPTS=0` too on CPUs where TensorFlow turns oneDNN, and its own pool, on by default).

The classifiers and the VAE are untrained (their latency does not depend on the weights' values; the VAE gets
binary images). The regression models are fitted on concrete (see `build`): the 95% interval's search over the
mixture of S components takes as many steps as its components' spread asks for (none when an untrained network's
posterior is still nearly a point, a few once trained). Settings: the MNIST classifiers of the families benchmark
(784-400-400-10 for the mean-field network, 784-100-10 for the meta-networks) and the UCI protocol's regression
network (8-50-2, heteroscedastic; its statistics include the mixture's 95% interval), and Bayesian linear regression
on the same 8 features, exact and CAVI posteriors: ours integrates the weights out (one Normal for the exact
posterior; for CAVI, 32 quadrature strata of the noise precision's posterior), the loop draws the weights; and the
VAE of `benchmarks/vae_mnist.py` (784-200-200-50 encoder, tanh, a diagonal Gaussian latent, the decoder its mirror).

It ends with a summary at S = 100 (every setting and batch: ours against the floor, and `predict_moments` against
the loop).

    python benchmarks/predictive.py [--settings=bnn_mnist,bnn_uci] [--samples=1,10,100] [--jit_compile]
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
# The product whose time gives the machine's GEMM rate, [GEMM_SIZE, GEMM_SIZE] x [GEMM_SIZE, GEMM_SIZE] float32.
GEMM_SIZE = 1024

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


def _significant(value: float) -> str:
    """Three significant digits, no exponent (floors span microseconds to seconds)."""
    return np.format_float_positional(value, precision=3, fractional=False, trim="-")


def _ratio(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def _chain(widths) -> int:
    """Multiply-adds of one row through dense layers of these widths: sum of n_{l-1} n_l."""
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def floor_multiply_adds(setting: str, model, batch: int, num_samples: int) -> int:
    """Multiply-adds of the products that S samples cannot avoid, for a batch: a lower bound for any exact route.

    A layer whose input is shared by all S samples (the first, on the data) needs one product per call; a layer
    after a nonlinearity of sampled pre-activations needs one per sample. Biases, elementwise passes and random
    numbers count nothing, and neither does a second product that an estimator chooses (local reparameterization's
    variances): the count is what the samples force, not what one route does.
    """
    family, input_shape, outputs, hidden, task = SETTINGS[setting]
    n_in = int(np.prod(input_shape))
    if family == "linear":  # weights integrated out: phi . m and phi^T S phi per example, for any S
        features = n_in + 1
        return batch * features * (features + 1)
    if family == "vae":  # encoder once (a location and a scale per latent), decoder per latent draw
        encoder = [n_in, *hidden, 2 * outputs]
        decoder = [outputs, *reversed(hidden), n_in]
        return batch * _chain(encoder) + num_samples * batch * _chain(decoder)
    widths = [n_in, *hidden, outputs if task == "classification" else 2 * outputs]
    if family == "meta_representation":
        # Every weight is generated per sample from its two units' codes: g's two-output head on its hidden layer
        # and the bilinear term's D products per unit pair (bias units included), then the target network with
        # per-sample weights, one product per layer.
        pairs = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
        per_pair = 2 * model.config.hyper_units + model.config.code_dim
        return num_samples * pairs * per_pair + num_samples * batch * pairs
    count = batch * widths[0] * widths[1] + num_samples * batch * _chain(widths[1:])
    if family == "bayesian_hypernetwork":  # the flow's couplings turn each sample's noise into its scales
        g, hyper = model.num_scales, model.config.hyper_units
        count += num_samples * model.config.flow_layers * (g // 2 * hyper + hyper * 2 * (g - g // 2))
    return count


def interleaved_medians(fns: dict, budget: float = 1.0, min_rounds: int = 3, max_rounds: int = 50,
                        probe=None) -> dict:
    """Median wall time of each fn() in `fns` (name -> fn), timed in alternation: one call of each per round.

    After one warm-up call each, rounds run until every fn has `min_rounds` calls and the rounds have taken
    `budget` seconds per fn (or `max_rounds`). Alternating makes each ratio between two fns robust to the speed of
    a shared machine drifting during the run; timing each fn in a block of its own would fold that drift into the
    ratio. `probe`, if given, is also timed before every call (its median under the key "probe"): a short reference
    computation sampled as often as the calls it is compared with, even when a round is a single slow one.
    """
    for fn in fns.values():
        fn()
    if probe is not None:
        probe()
    times = {name: [] for name in fns}
    probes = []
    start = time.perf_counter()
    rounds = 0
    while rounds < min_rounds or (time.perf_counter() - start < budget * len(fns) and rounds < max_rounds):
        for name, fn in fns.items():
            if probe is not None:
                t = time.perf_counter()
                probe()
                probes.append(time.perf_counter() - t)
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        rounds += 1
    medians = {name: float(np.median(values)) for name, values in times.items()}
    if probe is not None:
        medians["probe"] = float(np.median(probes))
    return medians


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
    gemm_a = tf.random.normal([GEMM_SIZE, GEMM_SIZE])
    gemm_b = tf.random.normal([GEMM_SIZE, GEMM_SIZE])
    gemm = tf.function(lambda: tf.matmul(gemm_a, gemm_b))
    print(f"machine: {os.cpu_count()} cores; TensorFlow {tf.__version__}; medians of calls timed in alternation; "
          f"floor: the products S samples cannot avoid at the GEMM rate of a [{GEMM_SIZE}, {GEMM_SIZE}] x "
          f"[{GEMM_SIZE}, {GEMM_SIZE}] float32 product timed before every call of the row's rounds")
    run = f"S in {{{args.samples}}}, batches {{{args.batches}}}"
    default = f"S in {{{','.join(map(str, SAMPLES))}}}, batches {{{','.join(map(str, BATCHES))}}}"
    if run != default:
        run += f" (a shorter configuration than the default, {default})"
    print(run + (", --jit_compile" if args.jit_compile else "") + "\n")
    summary, rates = [], []
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
            # The meta-representation's predictive keeps its loop over chunks of samples under XLA (bounded
            # memory), which XLA compiles into a slow program: not timed.
            compiled = args.jit_compile and family != "meta_representation"
            jitted = tf.function(lambda x, s: model_summary(model, task, x, s), jit_compile=True) if compiled else None
            widths = " -> ".join(str(w) for w in (int(np.prod(input_shape)),) + hidden + (outputs,))
            if hasattr(model, "num_variational_parameters"):
                size = f"variational parameters {model.num_variational_parameters():,}"
            else:
                size = {"exact": "exact Gaussian posterior (weights integrated out: one component)",
                        "cavi": "CAVI posterior (weights and noise precision integrated out: 32 components)"}[
                            model.config.inference]
            print(f"## {setting} ({widths}, {task}), {size}")
            header = ("| batch | S | ours ms | floor ms | ours / floor | (a) loop ms | loop / ours | "
                      "(b) deterministic ms |")
            if args.jit_compile:
                header += " ours, XLA ms |"
            if moments is not None:
                header += " moments ms | loop / moments |"
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
                    xla_cell = " — |" if args.jit_compile else ""
                    if jitted is not None:
                        fns["xla"] = lambda: jitted(x, tf.constant(s))
                        try:
                            fns["xla"]()
                        except (tf.errors.InternalError, tf.errors.InvalidArgumentError,
                                tf.errors.UnimplementedError):
                            del fns["xla"]
                            xla_cell = " does not compile |"
                    # The loop at S = 1000 takes up to a minute a call: one round of everything there.
                    t = interleaved_medians(fns, args.budget, min_rounds=1 if s > 100 else 3, probe=gemm)
                    ours, baseline, det = t["ours"], t["loop"], t["det"]
                    rate = GEMM_SIZE ** 3 / t["probe"]  # multiply-adds per second
                    rates.append(rate)
                    floor = floor_multiply_adds(setting, model, batch, s) / rate
                    row = (f"| {batch} | {s} | {1e3 * ours:.2f} | {_significant(1e3 * floor)} | "
                           f"{_ratio(ours / floor)} | {1e3 * baseline:.2f} | {baseline / ours:.1f}x | "
                           f"{1e3 * det:.3f} |")
                    if args.jit_compile:
                        row += f" {1e3 * t['xla']:.2f} |" if "xla" in t else xla_cell
                    fast = t.get("moments")
                    if fast is not None:
                        row += f" {1e3 * fast:.2f} | {baseline / fast:.1f}x |"
                    print(row, flush=True)
                    if s == 100:
                        summary.append((setting, batch, ours, floor, baseline, fast))
            print()
    print(f"GEMM rate over the run: median {np.median(rates) / 1e9:.1f} G multiply-adds per second "
          f"(range {min(rates) / 1e9:.1f}-{max(rates) / 1e9:.1f})\n")
    if summary:
        print("At S = 100: the exact signature against its floor, predict_moments against the loop")
        print("| setting | batch | ours ms | floor ms | ours / floor | moments ms | loop / moments |")
        print("|---|---|---|---|---|---|---|")
        for setting, batch, ours, floor, baseline, fast in summary:
            moments_cells = f"{1e3 * fast:.2f} | {baseline / fast:.1f}x" if fast is not None else " | "
            print(f"| {setting} | {batch} | {1e3 * ours:.2f} | {_significant(1e3 * floor)} | {_ratio(ours / floor)} | "
                  f"{moments_cells} |")


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
