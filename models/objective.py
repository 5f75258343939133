"""The evidence lower bound every family trains with, and its per-example scaling.

For data D = {y_n}_{n=1..N}, global hidden quantities H (weights, precisions) and, in amortized models, one local
latent z_n per example,

    log p(D) >= ELBO = sum_n E_q[log p(y_n | H, z_n)] - sum_n KL(q(z_n | y_n) || p(z_n)) - KL(q(H) || p(H)).

Training minimizes -ELBO / N, the loss per example, estimated on a mini-batch B of the N training examples:

    loss = (1/|B|) sum_{n in B} ( E_q[-log p(y_n | H, z_n)] + w * KL_n )  +  w * KL(q(H) || p(H)) / N

The global KL is divided by N, the size of the whole training set, not |B|: each of the N/|B| batches of an epoch
carries 1/N of it, so the mean of an epoch's batch losses is -ELBO / N (their sum is -ELBO / |B|; Graves 2011;
Blundell et al. 2015 use the same per-example reading). The local KL belongs to its own example and is averaged like the likelihood. `w` is a KL
weight: 1 for the ELBO; below 1 during a warm-up or above 1 for a beta-VAE.

Information-theoretic reading (Hinton and van Camp 1993; Alemi et al. 2018): -ELBO is a description length. The KL
is the cost of describing the hidden quantities (the rate), the expected negative log-likelihood is the cost of
the data given them (the distortion). Nats divide by ln 2 to give bits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import tensorflow as tf

NATS_PER_BIT = math.log(2.0)


@dataclasses.dataclass
class ElboTerms:
    """The pieces of the ELBO on one mini-batch.

    Attributes:
      nll: [batch] E_q[-log p(y_n | H, z_n)], a Monte Carlo estimate of the expected negative log-likelihood.
      local_kl: [batch] KL(q(z_n | y_n) || p(z_n)) for amortized latents, or None.
      global_kl: scalar KL(q(H) || p(H)) over global quantities, or None.
      kl_scale: a family's own weight on the KL in its training loss (a beta-VAE's beta); the KL itself, and so
        every logged KL and ELBO, stays the true one.
    """

    nll: tf.Tensor
    local_kl: Optional[tf.Tensor] = None
    global_kl: Optional[tf.Tensor] = None
    kl_scale: float = 1.0

    def kl_per_example(self, num_train: int) -> tf.Tensor:
        """[batch] the KL each example carries: its own local KL plus 1/N of the global KL."""
        kl = tf.zeros_like(self.nll)
        if self.local_kl is not None:
            kl += tf.cast(self.local_kl, self.nll.dtype)
        if self.global_kl is not None:
            kl += tf.cast(self.global_kl, self.nll.dtype) / tf.cast(num_train, self.nll.dtype)
        return kl

    def loss_per_example(self, num_train: int, kl_weight=1.0) -> tf.Tensor:
        """[batch] nll + w * kl_scale * (local KL + global KL / N); with w = kl_scale = 1 its batch mean is the loss
        and its negative the ELBO."""
        weight = tf.cast(kl_weight, self.nll.dtype) * tf.cast(self.kl_scale, self.nll.dtype)
        return self.nll + weight * self.kl_per_example(num_train)


def to_bits(nats):
    """Converts a quantity in nats to bits."""
    return nats / NATS_PER_BIT
