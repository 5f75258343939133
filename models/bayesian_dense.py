"""Bayesian neural networks with mean-field Gaussian weights: regression and classification.

Model: a network f_W with weights W (every layer a `models.bayesian_layers` mean-field layer) and a likelihood
head, with the variational posterior q(W) = prod N(mu, sigma^2) and prior p(W) = prod N(0, s^2):

    regression, heteroscedastic:  y | x, W ~ N(f_W(x)_1, (1e-3 + softplus(f_W(x)_2))^2)  (network predicts the noise)
    regression, homoscedastic:    y | x, W ~ N(f_W(x), sigma_noise^2), sigma_noise a learned point estimate
    classification:               y | x, W ~ Categorical(logits = f_W(x))

Objective (Blundell et al. 2015, "Weight Uncertainty in Neural Networks"): the ELBO per training example,

    ELBO / N = (1/N) sum_n E_q[log p(y_n | x_n, W)] - KL(q(W) || p(W)) / N,

with the expectation estimated by `mc_samples` draws through the chosen estimator (flipout by default; see
`models/bayesian_layers.py`) and the KL in closed form. The KL is divided by N, the training-set size (see
`models/objective.py`), optionally warmed up by the shared loop.

Posterior predictive: S draws of the per-example output distribution, sampled by local reparameterization with
noise shared across the batch (exact per example for mean-field Gaussian dense layers, whatever estimator trained
the network; convolutions sample their kernels), averaged by `models.predictive`.

Moment-propagated predictive (opt-in, approximate; `moment_predictive`, exported as the `predict_moments`
signature): the means and variances of the pre-activations are pushed through the dense layers in closed form
(`bayesian_layers.DenseMeanField.moments`, `relu_moments`), the output pre-activations are taken as independent
Gaussians, and S draws of those alone feed the same head and the same `models.predictive` statistics. It costs about
three deterministic passes for any S, against roughly one per sample for every layer after the first by exact
sampling. Exact in the output's means and variances with one hidden layer; deeper, it ignores the correlation of
hidden units that share inputs (its latency in `benchmarks/predictive.py`, its accuracy against the exact
predictive in `benchmarks/mnist_uncertainty.py`).

Architectures (`Config.arch`): `mlp` (dense layers of `hidden_units`, ReLU) and `lenet5` (two 5x5 Bayesian
convolutions with 2x2 max pooling, then the dense layers), for image inputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

from models import bayesian_layers
from models import heads

tfd = tfp.distributions

HEADS = heads.HEADS
ARCHS = ("mlp", "lenet5")
PRIORS = ("normal", "learned")
MIN_SCALE = heads.MIN_SCALE


@dataclasses.dataclass
class Config:
    """Hyperparameters of a Bayesian dense (or LeNet-5) network.

    Attributes:
      estimator: `flipout`, `reparameterization` or `local_reparameterization` (training gradients).
      hidden_units: widths of the hidden dense layers.
      arch: `mlp` or `lenet5`.
      head: regression likelihood, `heteroscedastic` or `homoscedastic`.
      prior: `normal` (scale `prior_scale`) or `learned` (empirical Bayes, starting at `prior_scale`).
      prior_scale: s of the N(0, s^2) weight prior.
      init_rho: initial softplus^-1 of the posterior scales.
      mc_samples: weight samples per training step.
    """

    estimator: str = "flipout"
    hidden_units: Sequence[int] = (50,)
    arch: str = "mlp"
    head: str = "heteroscedastic"
    prior: str = "normal"
    prior_scale: float = 1.0
    init_rho: float = -5.0
    mc_samples: int = 1

    def __post_init__(self):
        checks = (("estimator", bayesian_layers.ESTIMATORS), ("head", HEADS), ("arch", ARCHS), ("prior", PRIORS))
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        self.hidden_units = bayesian_layers.layer_widths(self.hidden_units)
        if not self.prior_scale > 0:
            raise ValueError(f"prior_scale must be positive, got {self.prior_scale}")
        if self.mc_samples < 1:
            raise ValueError(f"mc_samples must be at least 1, got {self.mc_samples}")


class BayesianNetwork(heads.LikelihoodHead):
    """A mean-field Bayesian network (a module of `tf_keras` layers) whose `predictive` returns distributions.

    Args:
      config: a `Config`.
      input_shape: shape of one example, e.g. (features,) or (28, 28, 1).
      task: `regression` or `classification`.
      output_dim: regression outputs or number of classes.
    """

    def __init__(self, config: Config, input_shape, task: str, output_dim: int, name: str = "bayesian_network"):
        super().__init__(name=name)
        self.config = config
        head_units = self._init_head(task, config.head, output_dim)
        self.example_shape = tuple(int(d) for d in input_shape)
        layer_args = dict(prior_scale=config.prior_scale, learn_prior_scale=config.prior == "learned",
                          init_rho=config.init_rho)
        self.conv_layers = []
        if config.arch == "lenet5":
            if len(self.example_shape) != 3:
                raise ValueError(f"lenet5 needs image inputs [height, width, channels], got {self.example_shape}")
            self.conv_layers = [bayesian_layers.Conv2DMeanField(6, 5, **layer_args),
                                bayesian_layers.Conv2DMeanField(16, 5, **layer_args)]
        self.hidden_layers = [bayesian_layers.DenseMeanField(u, **layer_args) for u in config.hidden_units]
        self.output_layer = bayesian_layers.DenseMeanField(head_units, **layer_args)
        # Build every variable now, so checkpoints restore into an existing model and export can trace it.
        self.forward(tf.zeros((1,) + self.example_shape), 1, tf.constant([0, 0], tf.int32),
                     "local_reparameterization")

    @property
    def layers_with_posterior(self) -> list:
        return self.conv_layers + self.hidden_layers + [self.output_layer]

    def forward(self, x, num_samples, seed, estimator: str, posteriors=None, unit_scales=None) -> tf.Tensor:
        """Network outputs [S, batch, head_units] for inputs [batch, ...example_shape].

        `posteriors`: each layer's `posterior_parameters()` for this step, when the caller takes the KL from them.
        `unit_scales`: per dense layer, [S, units] factors that multiply its pre-activations sample by sample (a
        Bayesian hypernetwork's scales), or None.
        """
        seeds = tfp.random.split_seed(seed, n=len(self.layers_with_posterior))
        posteriors = posteriors or [None] * len(self.layers_with_posterior)
        return self._network(x, lambda i, layer, h: _scaled(
            layer(h, seeds[i], estimator, num_samples, posterior=posteriors[i]), unit_scales, i))

    def _network(self, x, apply) -> tf.Tensor:
        """The architecture: `apply(i, layer, h)` gives the pre-activations of the i-th layer with a posterior for
        its input h (the inputs [batch, ...] themselves for the first), ReLU and pooling in between."""
        h = tf.convert_to_tensor(x, tf.float32)
        i = 0
        for conv in self.conv_layers:
            h = tf.nn.relu(apply(i, conv, h))
            shape = tf.shape(h)  # [S, B, H, W, C]: pool over the merged sample and batch axes
            pooled = tf.nn.max_pool2d(tf.reshape(h, tf.concat([[-1], shape[2:]], 0)), 2, 2, "SAME")
            h = tf.reshape(pooled, tf.concat([shape[:2], tf.shape(pooled)[1:]], 0))
            i += 1
        if self.conv_layers:
            h = tf.reshape(h, tf.concat([tf.shape(h)[:2], [-1]], 0))
        else:
            h = tf.reshape(h, [tf.shape(h)[0], -1])  # [B, features]: shared by all samples
        for layer in self.hidden_layers:
            h = tf.nn.relu(apply(i, layer, h))
            i += 1
        return apply(i, self.output_layer, h)

    def training_outputs(self, x, num_samples, seed) -> tf.Tensor:
        """Outputs through the training estimator (`Config.estimator`)."""
        return self.forward(x, num_samples, seed, self.config.estimator)

    def training_outputs_and_kl(self, x, num_samples, seed, kl_seed):
        """(`training_outputs`, `kl()`) from one read of the posterior: each layer's scales and KL share their
        softplus (`bayesian_layers.scale_and_kl`)."""
        del kl_seed  # the KL is in closed form
        posteriors = [layer.posterior_parameters(with_kl=True) for layer in self.layers_with_posterior]
        outputs = self.forward(x, num_samples, seed, self.config.estimator, posteriors)
        return outputs, tf.add_n([q.kl for q in posteriors])

    def predictive_outputs(self, x, num_samples, seed, unit_scales=None) -> tf.Tensor:
        """Outputs [S, batch, head_units] by the layers' predictive route: local reparameterization with noise
        shared across the batch for dense layers, sampled kernels for convolutions; exact per example, and an
        example's outputs depend on its input and the seed only (see bayesian_layers). `unit_scales` as in
        `forward`, drawn for all S (the chunks slice them).

        The samples go through the network a chunk at a time (`bayesian_layers.over_sample_chunks`: cache-resident
        activations, bounded memory for any S; whole when traced for XLA). Every draw is made whole first and
        sliced, and a dense first layer's means and scales (its input is shared by all samples) are computed once,
        so the chunking changes no number: the outputs are those of `forward(..., PREDICTIVE)`.
        """
        layers = self.layers_with_posterior
        seeds = tf.unstack(tfp.random.split_seed(seed, n=len(layers)))
        posteriors = [layer.posterior_parameters() for layer in layers]
        draws = [layer.predictive_draws(num_samples, s, q) for layer, s, q in zip(layers, seeds, posteriors)]
        x = tf.convert_to_tensor(x, tf.float32)
        batch = tf.shape(x)[0]
        first = None
        if not self.conv_layers:  # [B, units] twice, shared by every chunk
            first = layers[0].predictive_moments(tf.reshape(x, [batch, -1]), posteriors[0])

        def outputs(rows):
            def apply(i, layer, h):
                own = tf.nest.map_structure(lambda t: t[rows], draws[i])
                if i == 0 and first is not None:
                    out = first[0] + first[1] * own
                else:
                    out = layer.predictive_apply(h, own, posteriors[i])
                return _scaled(out, unit_scales, i, rows)

            return self._network(x, apply)

        chunk = bayesian_layers.sample_chunk(num_samples, batch, self._widest_activation())
        return bayesian_layers.over_sample_chunks(outputs, num_samples, chunk, [None, None, self.output_layer.units])

    def _widest_activation(self) -> int:
        """Floats per example and sample of the largest activation (a convolution's H x W x filters)."""
        widths = [layer.units for layer in self.hidden_layers + [self.output_layer]]
        if self.conv_layers:
            height, width = self.example_shape[:2]
            widths.append(height * width * self.conv_layers[0].units)  # 'SAME', stride 1: the largest map
        return max(widths)

    @property
    def supports_moments(self) -> bool:
        """Moment propagation covers dense layers (max pooling of Gaussians has no closed form)."""
        return not self.conv_layers

    def output_moments(self, x):
        """Mean and variance [batch, head_units] of the output pre-activations by moment propagation."""
        if not self.supports_moments:
            raise ValueError("moment propagation covers dense networks only, not arch='lenet5'")
        h = tf.convert_to_tensor(x, tf.float32)
        mean, var = tf.reshape(h, [tf.shape(h)[0], -1]), None
        for layer in self.hidden_layers:
            mean, var = bayesian_layers.relu_moments(*layer.moments(mean, var))
        return self.output_layer.moments(mean, var)

    def moment_outputs(self, x, num_samples, seed) -> tf.Tensor:
        """S draws [S, batch, head_units] of the output pre-activations from N(mean, diag var) of
        `output_moments`: the Monte Carlo part is only the head's."""
        mean, var = self.output_moments(x)
        # Noise shared across the batch, as in the exact route: an example's draws depend on it and the seed only.
        noise = bayesian_layers.normal(tf.stack([num_samples, 1, tf.shape(mean)[-1]]), seed, dtype=mean.dtype)
        return mean + tf.sqrt(var) * noise

    def moment_predictive(self, x, num_samples, seed) -> tfd.Distribution:
        """The per-sample predictive [S, batch, ...] of the moment-propagation approximation."""
        return self.likelihood(self.moment_outputs(x, num_samples, seed))

    @contextlib.contextmanager
    def serving_snapshot(self):
        """Within, every layer reads its posterior from a snapshot with sigma^2 precomputed
        (`MeanFieldLayer.snapshot`); yields the snapshots, a list of `Posterior`s of variables, for the export to
        keep. Outside it, the layers read their live weights."""
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(layer.snapshot()) for layer in self.layers_with_posterior]

    def kl(self, seed=None, num_samples=None) -> tf.Tensor:
        """KL(q(W) || p(W)) summed over layers, nats, in closed form (the arguments are unused)."""
        del seed, num_samples
        return tf.add_n([layer.kl() for layer in self.layers_with_posterior])

    def num_variational_parameters(self) -> int:
        return sum(layer.num_variational_parameters() for layer in self.layers_with_posterior)


def _scaled(pre_activations, unit_scales, i: int, rows=slice(None)) -> tf.Tensor:
    """Layer i's pre-activations [k, batch, units] times its `unit_scales` [S, units] (the samples `rows`)."""
    if unit_scales is None or unit_scales[i] is None:
        return pre_activations
    return pre_activations * unit_scales[i][rows][:, None, :]


def default_hidden_units(dataset: str) -> tuple:
    """The UCI protocol's one hidden layer of 50 units (100 for protein; also a user's CSV table); two layers of 400
    for images.

    The 1-D toy set gets two layers of 50: a mean-field network with ONE hidden layer cannot grow its uncertainty
    between two clusters of data (Foong et al. 2019, "'In-Between' Uncertainty in Bayesian Neural Networks"),
    which is the point of that data set.
    """
    if dataset == "uci/protein-tertiary-structure":
        return (100,)
    if dataset.startswith(("uci/", "csv:")):  # a table: the UCI protocol's network
        return (50,)
    if dataset.startswith("toy/"):
        return (50, 50)
    return (400, 400)


def build_model(config: Config, dataset) -> BayesianNetwork:
    """A network for a `training.data.Dataset` (regression or classification)."""
    if dataset.task not in ("regression", "classification"):
        raise ValueError(f"a Bayesian network needs labels; {dataset.name} is {dataset.task} data")
    return BayesianNetwork(config, dataset.input_shape, dataset.task, dataset.output_dim)
