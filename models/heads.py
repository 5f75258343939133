"""What every family with a posterior over a network shares: the likelihood head, the predictive, the ELBO.

A network with a posterior over its weights (or over what generates them) maps x to outputs f_H(x) for each
posterior sample H_s, [S, batch, head_units], and a head turns them into p(y | x, H_s):

    classification:               Categorical(logits = f_H(x))
    regression, heteroscedastic:  N(f_H(x)_1, (m + softplus(f_H(x)_2))^2)   (the network predicts the noise)
    regression, homoscedastic:    N(f_H(x), (m + softplus(rho))^2), rho a learned point estimate

with a floor m = MIN_SCALE (in standardized target units) that keeps the likelihood bounded on near-duplicate rows.
The ELBO's data term averages log p(y | x, H_s) over the S training draws; the posterior's KL is global (one per
data set), so `models.objective` divides it by N.
"""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_probability as tfp

from models.objective import ElboTerms

tfd = tfp.distributions

HEADS = ("heteroscedastic", "homoscedastic")
MIN_SCALE = 1e-3


class LikelihoodHead(tf.Module):
    """Mixin of the network families: `predictive` and `elbo_terms` from the family's forward passes and KL.

    A subclass calls `_init_head(task, head, output_dim)` (which returns the number of network outputs) and
    defines `training_outputs(x, num_samples, seed)`, `predictive_outputs(x, num_samples, seed)` (both
    [S, batch, head_units]), `kl(seed, num_samples)` and `config.mc_samples`.
    """

    # Each posterior draw is another network, so the per-sample predictives' locations differ: the predictive's
    # interval is searched directly (`models.predictive.mixture_quantiles`), no mirrored route is built.
    components_share_location = False

    def _init_head(self, task: str, head: str, output_dim: int) -> int:
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.task, self.head, self.output_dim = task, head, int(output_dim)
        if task == "regression" and head == "homoscedastic":
            # softplus^-1(0.5): a noise scale of half a target standard deviation to start from.
            self.noise_rho = tf.Variable(math.log(math.expm1(0.5)), dtype=tf.float32, name="noise_rho")
        return 2 * self.output_dim if task == "regression" and head == "heteroscedastic" else self.output_dim

    def likelihood(self, outputs) -> tfd.Distribution:
        """p(y | x, H_s) for network outputs [S, batch, head_units]: Normal [S, batch, outputs] or Categorical."""
        if self.task == "classification":
            return tfd.Categorical(logits=outputs)
        if self.head == "heteroscedastic":
            loc, raw_scale = tf.split(outputs, 2, axis=-1)
            return tfd.Normal(loc, MIN_SCALE + tf.nn.softplus(raw_scale))
        return tfd.Normal(outputs, MIN_SCALE + tf.nn.softplus(self.noise_rho) * tf.ones_like(outputs))

    def predictive(self, x, num_samples, seed) -> tfd.Distribution:
        """The per-sample predictive p(y | x, H_s) of S posterior draws, sample axis first."""
        return self.likelihood(self.predictive_outputs(x, num_samples, seed))

    def elbo_terms(self, batch, seed, training: bool = True) -> ElboTerms:
        """nll [batch] = -(1/S) sum_s log p(y | x, H_s) over `mc_samples` draws; the global KL(q || p)."""
        del training
        x, y = batch
        forward_seed, kl_seed = tf.unstack(tfp.random.split_seed(seed, 2))
        samples = self.config.mc_samples
        outputs, kl = self.training_outputs_and_kl(x, samples, forward_seed, kl_seed)
        log_lik = self.likelihood(outputs).log_prob(y)
        if self.task == "regression":
            log_lik = tf.reduce_sum(log_lik, axis=-1)  # independent outputs
        return ElboTerms(nll=-tf.reduce_mean(log_lik, axis=0), global_kl=kl)

    def training_outputs_and_kl(self, x, num_samples, seed, kl_seed):
        """(`training_outputs(x, num_samples, seed)`, `kl(kl_seed, num_samples)`); a family whose forward pass
        and KL share work computes both at once."""
        return self.training_outputs(x, num_samples, seed), self.kl(kl_seed, num_samples)
