"""Bayesian meta-networks: a posterior over small codes or scales, and networks that generate the weights.

Both variants put the uncertainty one level above the weights of a target MLP with layer widths
n_0 (inputs), n_1, ..., n_L (outputs; two per output for a heteroscedastic regression head), and return, like every
family, a per-sample predictive distribution [S, batch, ...] for `models.predictive`.

`meta_representation` (Karaletsos, Dayan and Ghahramani 2018, "Probabilistic Meta-Representations of Neural
Networks"). Every unit u of the target network -- inputs, hidden units, outputs, and one bias unit per layer --
carries a code z_u in R^D with prior N(0, I) (the input units': N(0, s_in^2 I), `Config.input_code_prior_scale`)
and mean-field posterior q(z_u) = N(m_u, diag(s_u^2)). A small MLP g shared by the whole network (trunk shared,
one head per layer) turns the codes of the two units a weight joins into that weight's distribution,

    w_ij | z_i, z_j ~ N(mu_ij, sigma_ij^2),   (mu_ij, rho_ij) = g_l([z_i, z_j]),   sigma_ij = 1e-3 + softplus(rho_ij),

scaled by sqrt(2 / fan_in). g_l is a tanh layer on [z_i, z_j] with a linear head, plus a bilinear term
z_i^T M_l z_j in the mean: the bilinear part alone can express any rank-D weight matrix, the tanh part bends it.
Initialization matters here. The tanh part's mean over codes is common to every weight of a layer, so a random
head would give the weights a shared offset whose sum over a layer's inputs grows with its width: first outputs
tens of target deviations large, heteroscedastic scales at their 1e-3 floor, a first NLL of 1e4-1e8 nats on
toy/gap, and first steps whose gradients leave the ReLUs dead. What remains is a constant network whose only
uncertainty is its output bias's: a flat predictive band, at a training ELBO far below a working network's, so a
state the optimizer falls into, not one the ELBO prefers. So the heads start at zero and M_l = I / sqrt(D): with
codes from the prior the first weights are zero-mean, uncorrelated and of He initialization's variance (the
output layer's OUTPUT_GAIN smaller, so the first predictions sit near the targets' mean). The ELBO

    E_q(z) E_p(w|z)[log p(y | x, w)] - KL(q(z) || p(z))

is maximized over q (the codes' means and scales) and g together. Its KL is over U * D numbers instead of the
mean-field network's 2 * (number of weights). Sampling is vectorized: codes [S, units, D] -> all pairs of a layer
[S, n_in + 1, n_out, 2D] -> weight means and scales in one pass of g. Given z_s the weights are independent
Gaussians, so the pre-activations are sampled by local reparameterization (exact per example, see
`models/bayesian_layers.py`); the predictive shares that noise across the batch, as the mean-field networks do.

`bayesian_hypernetwork` (after Krueger, Huang, Islam, Turner, Lacoste and Courville 2017, "Bayesian
Hypernetworks"). Each hidden unit j of a ReLU network scales its pre-activation by c_j: layer l computes

    a_l = c_l * (h_{l-1} V_l + b_l),   W_l[:, j] = c_lj V_l[:, j],

with a mean-field Gaussian posterior over the weights V and biases b (prior N(0, 1) each, as the mean-field
network's) and a posterior over the G = sum of the hidden widths scales c given by an invertible flow f of noise
eps ~ N(0, I_G) (RealNVP affine couplings with alternating masks, then an elementwise affine map, all TFP
bijectors), c = f(eps), so q(c) has the exact density

    log q(c) = log N(eps; 0, I) - log |det df/deps|,   eps = f^{-1}(c).

The prior p(c) = N(1, s^2 I) says that units' scales vary around 1 by about s, so the prior over W is a Gaussian
scale mixture whose weights into one unit share their scale; q(c) can correlate the scales of all units, which a
mean-field posterior cannot. The KL is KL(q(V) q(b) || p) in closed form plus KL(q(c) || p(c)) = E_q[log q(c) -
log p(c)], estimated with the same draws of c as the likelihood (unbiased). Given c, the weights are the
mean-field network's times fixed scales, so a training step samples them with one of its estimators (local
reparameterization by default) and the predictive takes its exact route (`models.bayesian_dense`: given c every
pre-activation of one example is Gaussian), each sample's units scaled by its c.

Three choices make it hold on small data: the mean-field part carries the uncertainty where the data are silent
(a posterior over the scales alone, with point-estimate directions and biases as in Krueger et al., is confidently
wrong there); the output layer has no scale (a scale there makes the noise of the mean prediction proportional to
the prediction, which caps the precision on low-noise data such as UCI energy); and the flow starts narrow
(spread 0.01) at the prior's mean (a wide start can drift to scales near 0.1 and underfit).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
import tf_keras

from models import bayesian_dense
from models import bayesian_layers
from models import heads

tfd = tfp.distributions
tfb = tfp.bijectors

VARIANTS = ("meta_representation", "bayesian_hypernetwork")
HEADS = heads.HEADS
MIN_SCALE = heads.MIN_SCALE
# Initial posterior spread per variant: enough for the KL to act on, small enough not to swamp the first steps.
DEFAULT_INIT_SCALE = {"meta_representation": 0.05, "bayesian_hypernetwork": 0.01}
INIT_WEIGHT_RHO = -5.0
# Posterior samples whose weights the meta-representation predictive generates at once. g's hidden layer holds
# [chunk, n_in + 1, n_out, hyper_units] numbers per layer (5 M for MNIST's 785 x 100 layer at 8 units): all S at
# once would be 25 GB at S = 10000, which one request may ask for, and past cache size already at S = 100.
PREDICTIVE_CHUNK = 8
# The training binary's defaults per variant (benchmarks/gap_seeds.py and the tests train with them too).
# Gradient clipping: codes, hypernetwork and bilinear maps multiply, and without it a run can blow up. The
# meta-representation learns at 3e-3: at 1e-2 it fits toy/gap's clusters with sharp first-layer kinks and confident
# straight lines between them on some seeds (benchmarks/results/gap_seeds.txt). The Bayesian hypernetwork learns as
# the mean-field network does.
TRAINING_DEFAULTS = {
    "meta_representation": dict(train_steps=10000, batch_size=32, learning_rate=3e-3, clip_norm=1.0),
    "bayesian_hypernetwork": dict(train_steps=10000, batch_size=32, learning_rate=1e-2, clip_norm=1.0),
}
# The output layer's bilinear map starts this much smaller than the hidden layers' (see MetaRepresentationNetwork).
OUTPUT_GAIN = 0.1


@dataclasses.dataclass
class Config:
    """Hyperparameters of a Bayesian meta-network.

    Attributes:
      variant: `meta_representation` or `bayesian_hypernetwork`.
      hidden_units: hidden widths of the target network.
      head: regression likelihood, `heteroscedastic` or `homoscedastic`.
      code_dim: D, the size of a unit's code (meta_representation).
      hyper_units: width of the hidden layer of g (meta_representation) or of each coupling's network.
      flow_layers: RealNVP couplings of the flow (bayesian_hypernetwork).
      prior_scale: s of the N(1, s^2) prior on the per-unit scales (bayesian_hypernetwork).
      init_code_scale: initial posterior standard deviation of the codes (meta_representation) or of the flow's
        base scales (bayesian_hypernetwork); None picks the variant's default.
      input_code_prior_scale: s_in of the N(0, s_in^2 I) prior on the input units' codes, the input layer's bias unit's
        included (meta_representation; every other code keeps N(0, I)). With s_in > 1 a code the data never constrain (a
        pixel that is zero on every training image) stays wide, and so do the weights it generates, while the likelihood
        pulls the codes of used inputs in: the contrast between the disagreement of the posterior's networks in and out
        of distribution that a mean-field network's N(0, 1) weight prior gives. (g is a point estimate, so s_in could be
        absorbed into its bilinear map and its trunk -- were the trunk not shared with the layers above; what s_in sets
        in practice is the unused codes' width against the used codes', which stay near the scale they start at.)
      mc_samples: posterior samples per training step.
      estimator: how a training step samples the mean-field weights given the scales (bayesian_hypernetwork;
        `models.bayesian_layers`). Local reparameterization by default: with it the test NLL matches the
        mean-field network's on every UCI set (benchmarks/results/uci_meta.txt), with flipout not on naval.
        configs/bhn_mnist.flags picks flipout, which gave the better out-of-distribution AUROC on MNIST.
    """

    variant: str = "meta_representation"
    hidden_units: Sequence[int] = (50,)
    head: str = "heteroscedastic"
    code_dim: int = 8
    hyper_units: int = 32
    flow_layers: int = 4
    prior_scale: float = 0.1
    init_code_scale: Optional[float] = None
    input_code_prior_scale: float = 1.0
    mc_samples: int = 1
    estimator: str = "local_reparameterization"

    def __post_init__(self):
        for name, allowed in (("variant", VARIANTS), ("head", HEADS), ("estimator", bayesian_layers.ESTIMATORS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        self.hidden_units = bayesian_layers.layer_widths(self.hidden_units)
        if self.init_code_scale is None:
            self.init_code_scale = DEFAULT_INIT_SCALE[self.variant]
        for name in ("code_dim", "hyper_units", "flow_layers", "mc_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("prior_scale", "init_code_scale", "input_code_prior_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


class _MetaNetwork(heads.LikelihoodHead):
    """A target network whose weights another network generates: its shape; the head, predictive and ELBO come
    from `models.heads`."""

    def __init__(self, config: Config, input_shape, task: str, output_dim: int, name: str):
        super().__init__(name=name)
        self.config = config
        head_units = self._init_head(task, config.head, output_dim)
        self.example_shape = tuple(int(d) for d in input_shape)
        self.widths = [math.prod(self.example_shape)] + list(config.hidden_units) + [head_units]

    def _flat_inputs(self, x):
        return tf.reshape(tf.convert_to_tensor(x, tf.float32), [tf.shape(x)[0], -1])

    def forward(self, x, num_samples, seed, per_example_noise: bool = True) -> tf.Tensor:
        """Network outputs [S, batch, head_units] for inputs [batch, ...example_shape].

        `per_example_noise`: whether noise drawn below the weight level is independent per example (training:
        lower gradient variance) or shared by the batch (predictive: the same per-example distribution, and an
        example's answer does not depend on its batch)."""
        raise NotImplementedError

    def kl(self, seed=None, num_samples=None) -> tf.Tensor:
        raise NotImplementedError

    def training_outputs(self, x, num_samples, seed) -> tf.Tensor:
        return self.forward(x, num_samples, seed, per_example_noise=True)

    def predictive_outputs(self, x, num_samples, seed) -> tf.Tensor:
        return self.forward(x, num_samples, seed, per_example_noise=False)


class MetaRepresentationNetwork(_MetaNetwork):
    """Unit codes z with a mean-field Gaussian posterior; a shared hypernetwork g makes the weights from them."""

    def __init__(self, config: Config, input_shape, task: str, output_dim: int):
        super().__init__(config, input_shape, task, output_dim, name="meta_representation")
        d = config.code_dim
        self.code_loc, self.code_rho = [], []
        for l, width in enumerate(self.widths):
            units = width + (1 if l < len(self.widths) - 1 else 0)  # a bias unit feeds every next layer
            # Codes start at distinct prior draws, so different units generate different weights from the start.
            self.code_loc.append(tf.Variable(tf.random.normal([units, d]), name=f"code_loc_{l}"))
            rho = bayesian_layers.softplus_inverse(config.init_code_scale)
            self.code_rho.append(tf.Variable(tf.fill([units, d], rho), name=f"code_rho_{l}"))
        # g's first layer on [z_i, z_j] is z_i A + z_j B + a: computed per unit, then added per pair, which saves
        # the pairs-by-2D product (n_in * n_out * 2D * H flops) of a dense layer on concatenated pairs.
        glorot = lambda shape: tf_keras.initializers.GlorotUniform()(shape)  # noqa: E731 - a fresh draw each call
        self.trunk_in = tf.Variable(glorot([d, config.hyper_units]), name="g_trunk_in")
        self.trunk_out = tf.Variable(glorot([d, config.hyper_units]), name="g_trunk_out")
        self.trunk_bias = tf.Variable(tf.zeros([config.hyper_units]), name="g_trunk_bias")
        # The heads start at zero weights, so at initialization the tanh part adds nothing to the weights' means:
        # its mean over codes is common to every weight of a layer, and summed over a layer's inputs it made the
        # first outputs tens of target deviations large (and the noise head's scales tiny), a first step whose
        # gradients left the ReLUs dead and the network constant (see the class docstring). The second output starts
        # at softplus^-1 of a small scale: w | z starts nearly deterministic, as the mean-field layers' posteriors
        # do, and the data decide how much noise the weights keep.
        head_bias = tf_keras.initializers.Constant([0.0, INIT_WEIGHT_RHO])
        self.heads = [tf_keras.layers.Dense(2, kernel_initializer="zeros", bias_initializer=head_bias,
                                            name=f"g_head_{l}")
                      for l in range(len(self.widths) - 1)]
        for head in self.heads:
            head.build([None, config.hyper_units])
        # A bilinear term per layer, z_i^T M_l z_j, gives g a rank-D skeleton of every weight matrix at n_in * n_out
        # * D flops. With M_l = I / sqrt(D) and codes drawn from the prior, the weights it makes have mean zero,
        # are uncorrelated across pairs and have He initialization's variance; the output layer's starts
        # OUTPUT_GAIN times smaller, so the first predictions are near the targets' mean with noise scales near
        # softplus(0) instead of anywhere in (1e-3, 20).
        last = len(self.widths) - 2
        self.bilinear = [tf.Variable(tf.eye(d) / math.sqrt(d) * (OUTPUT_GAIN if l == last else 1.0),
                                     name=f"g_bilinear_{l}")
                         for l in range(len(self.widths) - 1)]

    def posterior(self) -> list:
        """q(z_l) for every layer of units: `tfd.Independent` Normals [units_l, D]."""
        return [tfd.Independent(tfd.Normal(loc, tf.nn.softplus(rho)), 2)
                for loc, rho in zip(self.code_loc, self.code_rho)]

    def prior(self) -> list:
        """p(z_l): N(0, s_in^2 I) for the input units' codes (`Config.input_code_prior_scale`), N(0, I) above."""
        scales = [self.config.input_code_prior_scale] + [1.0] * (len(self.code_loc) - 1)
        return [tfd.Independent(tfd.Normal(tf.zeros_like(loc), scale), 2) for loc, scale in zip(self.code_loc, scales)]

    def kl(self, seed=None, num_samples=None) -> tf.Tensor:
        """KL(q(z) || p(z)) over every code, in closed form."""
        del seed, num_samples
        return tf.add_n([tfd.kl_divergence(q, p) for q, p in zip(self.posterior(), self.prior())])

    def num_variational_parameters(self) -> int:
        return 2 * sum(int(tf.size(v)) for v in self.code_loc)

    def generate_weights(self, codes: list) -> list:
        """The weight distribution of every layer given codes.

        Args:
          codes: per layer l, codes [S, units_l, D] (units_l counts the bias unit of layers below the output).

        Returns:
          Per layer, (loc, scale) of w | z, each [S, n_in + 1, n_out] (the last input row is the bias).
        """
        weights = []
        for l, head in enumerate(self.heads):
            z_in, z_out = codes[l], codes[l + 1][:, :self.widths[l + 1]]
            hidden = tf.tanh(bayesian_layers.dense(z_in, self.trunk_in)[:, :, None, :]
                             + bayesian_layers.dense(z_out, self.trunk_out)[:, None, :, :] + self.trunk_bias)
            loc, rho = tf.unstack(head(hidden), axis=-1)  # [S, n_in + 1, n_out] each
            loc += tf.einsum("sid,sjd->sij", bayesian_layers.dense(z_in, self.bilinear[l]), z_out)
            fan_in_scale = math.sqrt(2.0 / (self.widths[l] + 1))
            weights.append((fan_in_scale * loc, fan_in_scale * (MIN_SCALE + tf.nn.softplus(rho))))
        return weights

    def sample_codes(self, num_samples, seed) -> list:
        seeds = tfp.random.split_seed(seed, len(self.code_loc))
        return [q.sample(num_samples, seed=s) for q, s in zip(self.posterior(), tf.unstack(seeds))]

    def forward(self, x, num_samples, seed, per_example_noise: bool = True) -> tf.Tensor:
        code_seed, noise_seed = tfp.random.split_seed(seed, 2)
        codes = self.sample_codes(num_samples, code_seed)
        noise_seeds = tf.unstack(tfp.random.split_seed(noise_seed, len(self.heads)))
        h = self._flat_inputs(x)
        if per_example_noise:  # training: a few samples, noise per example; the weights in one go
            return self._target_network(h, self.generate_weights(codes), lambda l, mean: bayesian_layers.normal(
                tf.shape(mean), noise_seeds[l]))
        # The predictive: noise [S, 1, n_out] shared by the batch, and the weights PREDICTIVE_CHUNK samples at a
        # time (bounded memory for any S). Codes and noise are drawn whole and sliced, so the chunking changes
        # no draw.
        noises = [bayesian_layers.normal(tf.stack([num_samples, 1, self.widths[l + 1]]), s)
                  for l, s in enumerate(noise_seeds)]
        def outputs(rows):
            weights = self.generate_weights([z[rows] for z in codes])
            return self._target_network(h, weights, lambda l, mean: noises[l][rows])

        # Chunked under XLA too: the bound on memory is the point here (XLA is not used on this network).
        return bayesian_layers.over_sample_chunks(outputs, num_samples, PREDICTIVE_CHUNK, [None, None, self.widths[-1]],
                                                  whole_under_xla=False)

    def _target_network(self, h, weights, noise):
        """The target network on flat inputs h [B, n_0] with sampled weight distributions [k, n_in + 1, n_out]
        per layer, pre-activations by local reparameterization, noise(l, mean) giving layer l's standard noise;
        returns [k, B, n_L]."""
        h = tf.broadcast_to(h[None], tf.concat([tf.shape(weights[0][0])[:1], tf.shape(h)], 0))
        for l, (loc, scale) in enumerate(weights):
            h = tf.concat([h, tf.ones_like(h[..., :1])], axis=-1)  # the bias unit
            mean = tf.einsum("sbi,sio->sbo", h, loc)  # per-sample weights: a batched product (measured faster
            var = tf.einsum("sbi,sio->sbo", tf.square(h), tf.square(scale))  # than "bi,sio" on shared inputs)
            h = mean + tf.sqrt(var) * noise(l, mean)
            if l < len(weights) - 1:
                h = tf.nn.relu(h)
        return h


class _Coupling(tf.Module):
    """The shift and log-scale network of one RealNVP coupling: [..., masked] -> two [..., rest] tensors."""

    def __init__(self, masked: int, rest: int, hidden: int, name: str):
        super().__init__(name=name)
        self.w_hidden = tf.Variable(tf_keras.initializers.GlorotUniform()([masked, hidden]), name="w_hidden")
        self.b_hidden = tf.Variable(tf.zeros([hidden]), name="b_hidden")
        # Zero-initialized output: every coupling starts as the identity, so q starts as the base Gaussian.
        self.w_out = tf.Variable(tf.zeros([hidden, 2 * rest]), name="w_out")
        self.b_out = tf.Variable(tf.zeros([2 * rest]), name="b_out")

    def __call__(self, x, output_units, **kwargs):
        hidden = tf.tanh(bayesian_layers.dense(x, self.w_hidden) + self.b_hidden)
        shift, log_scale = tf.split(bayesian_layers.dense(hidden, self.w_out) + self.b_out, 2, axis=-1)
        return shift, tf.tanh(log_scale)  # bounded log-scales keep the flow well conditioned


class BayesianHypernetwork(bayesian_dense.BayesianNetwork):
    """A mean-field Gaussian network whose units' pre-activations are scaled by c, with a normalizing-flow q(c)."""

    def __init__(self, config: Config, input_shape, task: str, output_dim: int):
        dense = bayesian_dense.Config(estimator=config.estimator, hidden_units=config.hidden_units,
                                      head=config.head, mc_samples=config.mc_samples)
        super().__init__(dense, input_shape, task, output_dim, name="bayesian_hypernetwork")
        self.config = config
        self.widths = [layer.units for layer in self.hidden_layers]
        g = self.num_scales = sum(self.widths)
        self.couplings = [_Coupling(g // 2, g - g // 2, config.hyper_units, f"coupling_{k}")
                          for k in range(config.flow_layers)]
        # The scales start at 1 with a small spread: the network starts as the mean-field network's start.
        self.scale_shift = tf.Variable(tf.ones([g]), name="scale_shift")
        self.scale_rho = tf.Variable(tf.fill([g], bayesian_layers.softplus_inverse(config.init_code_scale)),
                                     name="scale_rho")

    def flow(self) -> tfb.Bijector:
        """eps -> c: RealNVP couplings with a reversal between them, then c = shift + softplus(rho) * u."""
        g = self.num_scales
        parts = [tfb.Shift(self.scale_shift), tfb.Scale(tf.nn.softplus(self.scale_rho))]
        for k, coupling in enumerate(self.couplings):
            parts.append(tfb.RealNVP(num_masked=g // 2, shift_and_log_scale_fn=coupling))
            if k < len(self.couplings) - 1:
                parts.append(tfb.Permute(list(reversed(range(g)))))
        return tfb.Chain(parts)  # Chain applies the last part first

    def scale_posterior(self) -> tfd.Distribution:
        """q(c): the base N(0, I_G) pushed through `flow()`; `log_prob` is exact by change of variables."""
        base = tfd.MultivariateNormalDiag(tf.zeros([self.num_scales]), tf.ones([self.num_scales]))
        return tfd.TransformedDistribution(base, self.flow())

    def scale_prior(self) -> tfd.Distribution:
        """p(c) = N(1, s^2 I): every unit's scale near 1, s = `Config.prior_scale`."""
        return tfd.MultivariateNormalDiag(tf.ones([self.num_scales]),
                                          tf.fill([self.num_scales], float(self.config.prior_scale)))

    def _per_layer(self, scales) -> list:
        """Scales [S, G] -> per layer [S, units]."""
        return tf.split(scales, self.widths, axis=-1) + [None]

    def _scale_kl(self, scales, log_q) -> tf.Tensor:
        """Monte Carlo KL(q(c) || p(c)) = E_q[log q(c) - log p(c)] from draws `scales` [S, G] and their log q."""
        return tf.reduce_mean(log_q - self.scale_prior().log_prob(scales))

    def training_outputs_and_kl(self, x, num_samples, seed, kl_seed):
        """Outputs [S, batch, head_units] through `Config.estimator` given each sample's scales (noise per example
        below the scales), and KL(q(V) q(b) || p) in closed form plus the flow's KL, estimated with the same
        scale draws."""
        del kl_seed
        scale_seed, forward_seed = tf.unstack(tfp.random.split_seed(seed, 2))
        scales, log_q = self.scale_posterior().experimental_sample_and_log_prob(num_samples, seed=scale_seed)
        posteriors = [layer.posterior_parameters(with_kl=True) for layer in self.layers_with_posterior]
        outputs = self.forward(x, num_samples, forward_seed, self.config.estimator, posteriors,
                               unit_scales=self._per_layer(scales))
        return outputs, tf.add_n([q.kl for q in posteriors]) + self._scale_kl(scales, log_q)

    def training_outputs(self, x, num_samples, seed) -> tf.Tensor:
        return self.training_outputs_and_kl(x, num_samples, seed, None)[0]

    def predictive_outputs(self, x, num_samples, seed) -> tf.Tensor:
        """The mean-field network's predictive route (exact per example, chunked) with S scale draws."""
        scale_seed, forward_seed = tf.unstack(tfp.random.split_seed(seed, 2))
        scales = self.scale_posterior().sample(num_samples, seed=scale_seed)
        return super().predictive_outputs(x, num_samples, forward_seed, unit_scales=self._per_layer(scales))

    @property
    def supports_moments(self) -> bool:
        """Moment propagation would drop the scales' correlation across units: not offered."""
        return False

    def kl(self, seed=None, num_samples=None) -> tf.Tensor:
        """KL(q || p): the weights' in closed form, the scales' by Monte Carlo from `num_samples` draws."""
        scales, log_q = self.scale_posterior().experimental_sample_and_log_prob(num_samples or 1, seed=seed)
        return super().kl() + self._scale_kl(scales, log_q)

    def num_variational_parameters(self) -> int:
        flow = sum(int(tf.size(v)) for c in self.couplings for v in c.trainable_variables) + 2 * self.num_scales
        return super().num_variational_parameters() + flow


def build_model(config: Config, dataset):
    """The chosen variant for a `training.data.Dataset` (regression or classification)."""
    if dataset.task not in ("regression", "classification"):
        raise ValueError(f"a Bayesian meta-network needs labels; {dataset.name} is {dataset.task} data")
    cls = MetaRepresentationNetwork if config.variant == "meta_representation" else BayesianHypernetwork
    return cls(config, dataset.input_shape, dataset.task, dataset.output_dim)
