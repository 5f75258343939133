"""Bayesian linear regression with hierarchical priors: exact posterior, mean-field CAVI, gradient VI.

The model (Bishop 2006, sections 3.3-3.5 and 10.3), with features phi(x) = [x, 1] in R^D (the bias is the weight on
a constant feature and shares the weights' prior):

    alpha ~ Gamma(a0, b0),   beta ~ Gamma(c0, d0)                        (precisions of weights and noise)
    w | alpha ~ N(0, I / alpha)                                          [D]
    y_n | x_n, w, beta ~ N(w . phi(x_n), 1 / beta)                       n = 1..N

Three routes to the posterior (`Config.inference`):

* `exact`: for fixed (alpha, beta) the posterior is Gaussian, q(w) = N(m, S) with
      S^-1 = alpha I + beta Phi^T Phi,     m = beta S Phi^T y,
  and the predictive is N(m . phi, 1/beta + phi^T S phi). alpha and beta are set by type-II maximum likelihood
  (evidence maximization), with the fixed-point updates of MacKay (1992), Bishop eqs. 3.91-3.95:
      gamma = sum_i lambda_i / (alpha + lambda_i)   (lambda_i eigenvalues of beta Phi^T Phi),
      alpha = gamma / m^T m,      1 / beta = ||y - Phi m||^2 / (N - gamma).
* `cavi`: mean-field q(w) q(alpha) q(beta) by coordinate ascent; each update is the factor's exact optimum given
  the others, so the ELBO never decreases:
      q(w) = N(m, S):         S^-1 = E[alpha] I + E[beta] Phi^T Phi,   m = E[beta] S Phi^T y
      q(alpha) = Gamma(a0 + D/2, b0 + (m^T m + tr S) / 2)
      q(beta)  = Gamma(c0 + N/2, d0 + (||y - Phi m||^2 + tr(Phi^T Phi S)) / 2)
* `gradient`: the same factorization q(w) q(alpha) q(beta) with q(alpha), q(beta) Gamma and q(w) Gaussian,
  full covariance (w = m + L eps, L lower triangular) or diagonal, fitted by stochastic gradients of the ELBO
  through the shared training loop. The likelihood term is a reparameterized Monte Carlo estimate (w = m + L eps,
  beta by Gamma's implicit reparameterization); the KL terms are analytic.

All three share the closed-form ELBO (used by CAVI and to score the gradient solution):

    ELBO = E_q[log p(y | w, beta)] - E_q(alpha)[KL(q(w) || p(w | alpha))] - KL(q(alpha) || p(alpha))
           - KL(q(beta) || p(beta)),
    E_q[log p(y | w, beta)] = N/2 (E[log beta] - log 2 pi) - E[beta]/2 (||y - Phi m||^2 + tr(Phi^T Phi S)),
    E_q(alpha)[KL(N(m, S) || N(0, I/alpha))] = 1/2 (E[alpha](tr S + m^T m) - D - D E[log alpha] - log |S|).

The posterior predictive goes through `models.predictive` like every family, with the weights integrated out
exactly (Rao-Blackwellized): q(w) = N(m, S) is Gaussian and independent of beta under q, so for a noise precision
beta
    p(y | x, beta) = integral N(y; w . phi, 1/beta) N(w; m, S) dw = N(m . phi, phi^T S phi + 1/beta),
and what is left is a one-dimensional integral over q(beta) = Gamma(a, b). For `exact` (beta a point estimate) that
is one Normal, the closed-form predictive. For `cavi` and `gradient` it is done by quadrature instead of Monte
Carlo (`noise_variance_nodes`): q(beta) is cut into K = 32 strata of equal probability, and stratum k contributes
the Normal whose noise variance is the mean of 1/beta over it,

    n_k = E[1/beta | beta in stratum k] = K b / (a - 1) (P(a - 1, x_{k+1}) - P(a - 1, x_k)),

with P the regularized lower incomplete gamma function and x_k = P(a, .)^-1(k / K) the strata's edges
(`gamma_quantiles`); so the mixture's variance is exact (sum_k n_k / K = E[1/beta] = b / (a - 1)) and, against
the exact Student-t predictive, the 95% interval's ends are within 1e-5 relative for a > 100 (any regression data set
of 200 rows or more; other quantiles within 5e-5) and 8e-4 at a = 6. A Monte Carlo mixture
of S = 100 draws of beta is off by about 1/sqrt(100 (a - 2)) in the variance, and costs three times as many
components. The answer is deterministic: `num_samples` and the seed do not change it. The weights' share
phi^T S phi of each component's variance is the epistemic part (`integrated_variance`, which
`models.predictive.regression_predictive` reports as such).

Computation runs in float64 (the closed forms are compared with numpy to 1e-6); inputs may be float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Sequence

import tensorflow as tf
import tensorflow_probability as tfp

from models.objective import ElboTerms

tfd = tfp.distributions
tfb = tfp.bijectors

QUADRATURE_NODES = 32
_NEWTON_STEPS = 12


def gamma_quantiles(concentration, probs) -> tf.Tensor:
    """x with P(a, x) = p for each p in `probs` [n] (the standard Gamma(a, 1) quantiles), a = `concentration` > 0.

    Start: for a >= 1 Wilson and Hilferty's x ~ a (1 - 1/(9a) + z / (3 sqrt a))^3 with z the Normal quantile of p
    (within 1e-3 relative for a > 5); for a < 1 the small-x form P(a, x) ~ x^a / Gamma(a + 1), so
    x ~ (p Gamma(a + 1))^(1/a), which may be far below 1e-10 when a is small (Wilson and Hilferty's start, clipped,
    left x at 1e-4 there, too far for the steps: P was off by 0.09 at a = 0.1). Then Newton steps on log x, where
    the derivative of P(a, e^u) - p is the density times x, x^a e^-x / Gamma(a), each step capped at 1 in u (a
    far start shrinks or grows x by e at most per step). A quantile below the dtype's smallest number comes out 0
    (float64: p < 1e-308^a / Gamma(a + 1), so p < 1e-3 at a = 0.01). Core TensorFlow ops only (`Igamma`,
    `Lgamma`, `Ndtri`), so an export needs no TFP.
    """
    a = tf.convert_to_tensor(concentration)
    p = tf.cast(probs, a.dtype)
    z = tf.math.ndtri(p)
    base = 1.0 - 1.0 / (9.0 * a) + z / (3.0 * tf.sqrt(a))
    wilson_hilferty = tf.math.log(a) + 3.0 * tf.math.log(tf.maximum(base, 0.05))
    small_x = (tf.math.log(p) + tf.math.lgamma(a + 1.0)) / a
    u = tf.where(a < 1.0, small_x, wilson_hilferty)
    for _ in range(_NEWTON_STEPS):
        x = tf.exp(u)
        slope = tf.exp(a * u - x - tf.math.lgamma(a))
        u -= tf.clip_by_value((tf.math.igamma(a, x) - p) / tf.maximum(slope, 1e-300), -1.0, 1.0)
    return tf.exp(u)


def noise_variance_nodes(concentration, rate, num_nodes: int = QUADRATURE_NODES) -> tf.Tensor:
    """[K] noise variances n_k: the mean of 1/beta over the k-th of K equal-probability strata of
    q(beta) = Gamma(a, b) (module docstring), so their average is E[1/beta] = b / (a - 1) exactly.

    With a <= 1, E[1/beta] is infinite; the strata's midpoints n_k = b / x_{(k + 1/2) / K} stand in.
    """
    a = tf.convert_to_tensor(concentration)
    b = tf.cast(rate, a.dtype)
    k = tf.cast(tf.range(1, num_nodes), a.dtype) / num_nodes
    edges = tf.math.igamma(tf.maximum(a - 1.0, 1e-3), gamma_quantiles(a, k))  # P(a - 1, x_k), k = 1..K-1
    cumulative = tf.concat([tf.zeros([1], a.dtype), edges, tf.ones([1], a.dtype)], 0)
    strata = num_nodes * b / (a - 1.0) * (cumulative[1:] - cumulative[:-1])
    midpoints = b / gamma_quantiles(a, (tf.cast(tf.range(num_nodes), a.dtype) + 0.5) / num_nodes)
    return tf.where(a > 1.0, strata, midpoints)


INFERENCE_METHODS = ("exact", "cavi", "gradient")
SURROGATES = ("full", "diag")
DTYPE = tf.float64


@dataclasses.dataclass
class Config:
    """Hyperparameters of Bayesian linear regression.

    Attributes:
      inference: `exact`, `cavi` or `gradient`.
      surrogate: the gradient-VI family of q(w): `full` covariance or `diag`onal.
      alpha_prior: (concentration a0, rate b0) of the Gamma prior on the weight precision alpha.
      beta_prior: (concentration c0, rate d0) of the Gamma prior on the noise precision beta.
      max_iterations: iterations of the evidence fixed point (`exact`) or of CAVI sweeps (`cavi`).
      tolerance: stop when the objective changes by less than this, relative to its magnitude.
      mc_samples: posterior samples per gradient step for the likelihood term (`gradient`).
    """

    inference: str = "exact"
    surrogate: str = "full"
    alpha_prior: Sequence[float] = (1e-2, 1e-2)
    beta_prior: Sequence[float] = (1e-2, 1e-2)
    max_iterations: int = 1000
    tolerance: float = 1e-12
    mc_samples: int = 16

    def __post_init__(self):
        if self.inference not in INFERENCE_METHODS:
            raise ValueError(f"inference must be one of {INFERENCE_METHODS}, got {self.inference!r}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {self.surrogate!r}")
        for name in ("alpha_prior", "beta_prior"):
            try:
                value = tuple(float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be two numbers (concentration, rate), got {getattr(self, name)}")
            if len(value) != 2 or min(value) <= 0:
                raise ValueError(f"{name} must be two positive numbers (concentration, rate), got {value}")
            setattr(self, name, value)


def features(x) -> tf.Tensor:
    """phi(x) = [x, 1]: [batch, features] -> [batch, features + 1] in float64."""
    x = tf.cast(x, DTYPE)
    return tf.concat([x, tf.ones_like(x[:, :1])], axis=-1)


def expected_weight_kl(q_w, q_alpha) -> tf.Tensor:
    """E_q(alpha)[KL(q(w) || N(0, I/alpha))] for Gaussian q(w) = N(m, S) and Gamma (or point) q(alpha)."""
    m, scale_tril = q_w.loc, q_w.scale.to_dense()
    dim = tf.cast(tf.shape(m)[-1], DTYPE)
    trace_s = tf.reduce_sum(tf.square(scale_tril))
    log_det_s = 2.0 * tf.reduce_sum(tf.math.log(tf.abs(tf.linalg.diag_part(scale_tril))))
    return 0.5 * (q_alpha.mean() * (trace_s + tf.reduce_sum(tf.square(m))) - dim
                  - dim * _expected_log(q_alpha) - log_det_s)


def _expected_log(q) -> tf.Tensor:
    """E[log t] for t ~ Gamma(a, b) (digamma(a) - log b) or a point mass."""
    if isinstance(q, tfd.Gamma):
        return tf.math.digamma(q.concentration) - tf.math.log(q.rate)
    return tf.math.log(q.mean())


def expected_log_likelihood(phi, y, q_w, q_beta) -> tf.Tensor:
    """[N] E_q[log N(y_n | w . phi_n, 1/beta)], in closed form for Gaussian q(w)."""
    y = tf.reshape(tf.cast(y, DTYPE), [-1])
    residual = y - tf.linalg.matvec(phi, q_w.loc)
    # phi_n^T S phi_n = ||L^T phi_n||^2 with S = L L^T.
    spread = tf.reduce_sum(tf.square(tf.linalg.matmul(phi, q_w.scale.to_dense())), axis=-1)
    return 0.5 * (_expected_log(q_beta) - math.log(2.0 * math.pi)) - 0.5 * q_beta.mean() * (
        tf.square(residual) + spread)


class BayesianLinearRegression(tf.Module):
    """Bayesian linear regression whose posterior q(w) q(alpha) q(beta) is fitted by one of three methods.

    Args:
      num_features: input features (the bias is added).
      config: a `Config`.
    """

    def __init__(self, num_features: int, config: Config, name: str = "bayesian_linear_regression"):
        super().__init__(name=name)
        self.config = config
        self.num_features = int(num_features)
        object.__setattr__(self, "_noise_snapshot", None)  # `serving_snapshot`'s, while an export traces
        dim = self.num_features + 1
        self.loc = tf.Variable(tf.zeros([dim], DTYPE), name="loc")
        gradient = config.inference == "gradient"
        if gradient and config.surrogate == "diag":
            self._scale_diag = tfp.util.TransformedVariable(
                0.1 * tf.ones([dim], DTYPE), bijector=tfb.Softplus(), name="scale_diag")
        elif gradient:
            self._scale_tril = tfp.util.TransformedVariable(
                0.1 * tf.eye(dim, dtype=DTYPE), bijector=tfb.FillScaleTriL(diag_shift=tf.constant(1e-12, DTYPE)),
                name="scale_tril")
        else:
            self._scale_tril = tf.Variable(tf.eye(dim, dtype=DTYPE), name="scale_tril")
        # Gamma parameters live on a log scale for gradient VI: q(beta)'s concentration is about N/2, which
        # additive steps on a softplus scale would take thousands of steps to reach.
        positive = (lambda v, n: tfp.util.TransformedVariable(tf.constant(v, DTYPE), tfb.Exp(), name=n)) \
            if gradient else (lambda v, n: tf.Variable(tf.constant(v, DTYPE), name=n))
        # Gamma(concentration, rate) factors; `exact` uses only the means as point estimates.
        self.alpha_concentration, self.alpha_rate = positive(1.0, "alpha_concentration"), positive(1.0, "alpha_rate")
        self.beta_concentration, self.beta_rate = positive(1.0, "beta_concentration"), positive(1.0, "beta_rate")

    # -- distributions ------------------------------------------------------------------------------------------

    @property
    def scale_tril(self) -> tf.Tensor:
        """[D, D] Cholesky factor of the posterior covariance S of w."""
        if hasattr(self, "_scale_diag"):
            return tf.linalg.diag(tf.convert_to_tensor(self._scale_diag))
        return tf.convert_to_tensor(self._scale_tril)

    def prior(self) -> tfd.JointDistributionNamed:
        """p(alpha) p(beta) p(w | alpha)."""
        (a0, b0), (c0, d0) = self.config.alpha_prior, self.config.beta_prior
        dim = self.num_features + 1
        return tfd.JointDistributionNamed(dict(
            alpha=tfd.Gamma(tf.constant(a0, DTYPE), tf.constant(b0, DTYPE)),
            beta=tfd.Gamma(tf.constant(c0, DTYPE), tf.constant(d0, DTYPE)),
            w=lambda alpha: tfd.MultivariateNormalDiag(
                tf.zeros([dim], DTYPE), scale_diag=tf.ones([dim], DTYPE) * tf.math.rsqrt(alpha)[..., None]),
        ))

    def posterior(self) -> tfd.JointDistributionNamed:
        """q(w) q(alpha) q(beta); for `exact`, alpha and beta are point masses at their type-II ML values."""
        if self.config.inference == "exact":
            q_alpha = tfd.Deterministic(self.alpha_concentration / self.alpha_rate)
            q_beta = tfd.Deterministic(self.beta_concentration / self.beta_rate)
        else:
            q_alpha = tfd.Gamma(tf.convert_to_tensor(self.alpha_concentration),
                                tf.convert_to_tensor(self.alpha_rate))
            q_beta = tfd.Gamma(tf.convert_to_tensor(self.beta_concentration), tf.convert_to_tensor(self.beta_rate))
        q_w = tfd.MultivariateNormalTriL(tf.convert_to_tensor(self.loc), self.scale_tril)
        return tfd.JointDistributionNamed(dict(w=q_w, alpha=q_alpha, beta=q_beta))

    def predictive(self, x, num_samples, seed) -> tfd.Normal:
        """The predictive with the weights integrated out, as an equally weighted mixture of Normals
        N(m . phi, phi^T S phi + n_k) over noise variances n_k (see the module docstring).

        Exact in w for every inference method (q(w) is Gaussian and independent of beta), so the predictive mean
        m . phi is exact. For `exact`, q(beta) is a point mass: one component, n = 1 / beta (the closed-form
        predictive). Otherwise K = `QUADRATURE_NODES` components by quadrature over q(beta)
        (`noise_variance_nodes`). Deterministic: `num_samples` and `seed` do not change it (they are the
        interface every family's predictive shares).

        Args:
          x: [batch, features] standardized inputs.
          num_samples: S, a scalar (unused).
          seed: int32 [2] (unused).

        Returns:
          `tfd.Normal` with batch shape [K, batch, 1] ([1, batch, 1] for `exact`).
        """
        del num_samples, seed
        mean, spread = self._weight_marginal(x)
        q_beta = self.posterior().model["beta"]
        if self.config.inference == "exact":
            noise_var = tf.math.reciprocal(q_beta.mean())[None]  # [1]
        elif self._noise_snapshot is not None:
            noise_var = tf.convert_to_tensor(self._noise_snapshot)  # [K], computed at export
        else:
            noise_var = noise_variance_nodes(q_beta.concentration, q_beta.rate)  # [K]
        scale = tf.sqrt(spread + noise_var[:, None])[..., None]  # [K, batch, 1]
        return tfd.Normal(tf.broadcast_to(mean[:, None], tf.shape(scale)), scale)

    @contextlib.contextmanager
    def serving_snapshot(self):
        """Within, `predictive` reads its K noise variances from a variable computed now (yielded in a list for
        the export to keep; None for `exact`): the quadrature's Newton steps are some 200 small ops, a fixed cost
        that would otherwise be paid by every request. Not a variable of the model (not checkpointed)."""
        if self.config.inference == "exact":
            yield None
            return
        q_beta = self.posterior().model["beta"]
        nodes = tf.Variable(noise_variance_nodes(q_beta.concentration, q_beta.rate), trainable=False,
                            name="serving_noise_variances")
        object.__setattr__(self, "_noise_snapshot", nodes)  # bypasses tf.Module's tracking
        try:
            yield [nodes]
        finally:
            object.__setattr__(self, "_noise_snapshot", None)

    def integrated_variance(self, x) -> tf.Tensor:
        """[batch, 1] Var_q[w . phi] = phi^T S phi: the epistemic part every `predictive` component holds."""
        return self._weight_marginal(x)[1][:, None]

    def exact_predictive(self, x) -> tfd.Normal:
        """The closed-form predictive N(m . phi, 1/E[beta] + phi^T S phi) [batch, 1] (exact for `exact`)."""
        mean, spread = self._weight_marginal(x)
        return tfd.Normal(mean[:, None], tf.sqrt(1.0 / self.posterior().model["beta"].mean() + spread)[:, None])

    def _weight_marginal(self, x):
        """w . phi(x) under q(w) = N(m, S): mean m . phi and variance phi^T S phi = ||L^T phi||^2, each [batch]."""
        phi = features(x)
        mean = tf.linalg.matvec(phi, tf.convert_to_tensor(self.loc))
        spread = tf.reduce_sum(tf.square(tf.linalg.matmul(phi, self.scale_tril)), axis=-1)
        return mean, spread

    # -- objectives ---------------------------------------------------------------------------------------------

    def global_kl(self) -> tf.Tensor:
        """KL(q(w, alpha, beta) || p(w, alpha, beta)) with E_q(alpha) taken analytically."""
        q, p = self.posterior().model, self.prior().model
        return (expected_weight_kl(q["w"], q["alpha"]) + tfd.kl_divergence(q["alpha"], p["alpha"])
                + tfd.kl_divergence(q["beta"], p["beta"]))

    def closed_form_elbo(self, x, y) -> tf.Tensor:
        """The ELBO of the whole data set (x [N, features], y [N, 1]) in nats, in closed form."""
        if self.config.inference == "exact":
            raise ValueError("the ELBO needs Gamma factors q(alpha), q(beta); `exact` has point estimates")
        q = self.posterior().model
        return tf.reduce_sum(expected_log_likelihood(features(x), y, q["w"], q["beta"])) - self.global_kl()

    def log_evidence(self, x, y) -> tf.Tensor:
        """log p(y | alpha, beta) at the current point estimates (Bishop eq. 3.86), in nats."""
        phi, y = features(x), tf.reshape(tf.cast(y, DTYPE), [-1])
        alpha = self.alpha_concentration / self.alpha_rate
        beta = self.beta_concentration / self.beta_rate
        n, dim = tf.cast(tf.shape(phi)[0], DTYPE), tf.cast(tf.shape(phi)[1], DTYPE)
        precision = alpha * tf.eye(tf.shape(phi)[1], dtype=DTYPE) + beta * tf.matmul(phi, phi, transpose_a=True)
        chol = tf.linalg.cholesky(precision)
        m = beta * tf.linalg.cholesky_solve(chol, tf.linalg.matvec(phi, y, transpose_a=True)[:, None])[:, 0]
        misfit = 0.5 * beta * tf.reduce_sum(tf.square(y - tf.linalg.matvec(phi, m))) + 0.5 * alpha * tf.reduce_sum(
            tf.square(m))
        log_det = 2.0 * tf.reduce_sum(tf.math.log(tf.linalg.diag_part(chol)))
        return (0.5 * dim * tf.math.log(alpha) + 0.5 * n * tf.math.log(beta) - misfit - 0.5 * log_det
                - 0.5 * n * math.log(2.0 * math.pi))

    def elbo_terms(self, batch, seed, training: bool = True) -> ElboTerms:
        """Mini-batch ELBO pieces for gradient VI: nll [batch] by reparameterized sampling, analytic global KL."""
        del training
        x, y = batch
        phi = features(x)
        draw = self.posterior().sample(self.config.mc_samples, seed=seed)
        loc = tf.einsum("sd,bd->sb", draw["w"], phi)
        log_lik = tfd.Normal(loc, tf.math.rsqrt(draw["beta"])[:, None]).log_prob(
            tf.reshape(tf.cast(y, DTYPE), [1, -1]))
        return ElboTerms(nll=-tf.reduce_mean(log_lik, axis=0), global_kl=self.global_kl())

    # -- closed-form fitting ------------------------------------------------------------------------------------

    @property
    def supports_elbo(self) -> bool:
        """The ELBO needs distributions over alpha and beta; `exact` has point estimates instead."""
        return self.config.inference != "exact"

    def extra_metrics(self, dataset) -> dict:
        """`train/log_evidence` (exact) or the closed-form `train/elbo_closed_form`, per example, original units."""
        n = float(dataset.num_train)
        shift = math.log(dataset.target_scale)
        if self.config.inference == "exact":
            return {"train/log_evidence": float(self.log_evidence(dataset.x_train, dataset.y_train)) / n - shift}
        return {"train/elbo_closed_form": float(self.closed_form_elbo(dataset.x_train, dataset.y_train)) / n - shift}

    @property
    def closed_form(self) -> bool:
        """True when `fit_closed_form` replaces the gradient loop."""
        return self.config.inference in ("exact", "cavi")

    def fit_closed_form(self, x, y) -> list:
        """Fits `exact` (evidence maximization) or `cavi` on all of (x [N, features], y [N, 1]).

        Returns:
          The objective after each iteration: the log evidence (`exact`) or the ELBO (`cavi`), in nats.
        """
        phi, y = features(x), tf.reshape(tf.cast(y, DTYPE), [-1])
        gram = tf.matmul(phi, phi, transpose_a=True)
        phi_y = tf.linalg.matvec(phi, y, transpose_a=True)
        if self.config.inference == "exact":
            return self._fit_evidence(phi, y, gram, phi_y)
        if self.config.inference == "cavi":
            return self._fit_cavi(x, y, phi, gram, phi_y)
        raise ValueError("gradient inference trains through the training loop, not in closed form")

    def _set_gaussian(self, precision, phi_y, beta_mean):
        """q(w) = N(m, S) with S = precision^-1 and m = E[beta] S Phi^T y."""
        dim = tf.shape(precision)[0]
        chol = tf.linalg.cholesky(precision)
        covariance = tf.linalg.cholesky_solve(chol, tf.eye(dim, dtype=DTYPE))
        self.loc.assign(beta_mean * tf.linalg.matvec(covariance, phi_y))
        self._scale_tril.assign(tf.linalg.cholesky(0.5 * (covariance + tf.transpose(covariance))))
        return covariance

    def _converged(self, history) -> bool:
        return len(history) > 1 and abs(history[-1] - history[-2]) <= self.config.tolerance * max(
            1.0, abs(history[-1]))

    def _fit_evidence(self, phi, y, gram, phi_y) -> list:
        n = float(phi.shape[0])
        eigenvalues = tf.linalg.eigvalsh(gram)
        eye = tf.eye(tf.shape(gram)[0], dtype=DTYPE)
        alpha, beta = tf.constant(1.0, DTYPE), tf.constant(1.0, DTYPE)
        history = []
        for _ in range(self.config.max_iterations):
            self._set_gaussian(alpha * eye + beta * gram, phi_y, beta)
            m = self.loc
            gamma = tf.reduce_sum(beta * eigenvalues / (alpha + beta * eigenvalues))
            previous = (float(alpha), float(beta))
            alpha = gamma / tf.reduce_sum(tf.square(m))
            beta = (n - gamma) / tf.reduce_sum(tf.square(y - tf.linalg.matvec(phi, m)))
            self._set_point_precisions(alpha, beta)
            history.append(float(self.log_evidence(phi[:, :-1], y)))
            # The evidence is flat at its maximum, so convergence is judged on (alpha, beta) themselves.
            if max(abs(float(alpha) - previous[0]) / float(alpha),
                   abs(float(beta) - previous[1]) / float(beta)) <= self.config.tolerance:
                break
        self._set_gaussian(alpha * eye + beta * gram, phi_y, beta)
        return history

    def _set_point_precisions(self, alpha, beta):
        for variable, value in ((self.alpha_concentration, alpha), (self.beta_concentration, beta),
                                (self.alpha_rate, 1.0), (self.beta_rate, 1.0)):
            variable.assign(tf.cast(value, DTYPE))

    def _fit_cavi(self, x, y, phi, gram, phi_y) -> list:
        (a0, b0), (c0, d0) = self.config.alpha_prior, self.config.beta_prior
        n, dim = float(phi.shape[0]), float(phi.shape[1])
        eye = tf.eye(tf.shape(gram)[0], dtype=DTYPE)
        history = []
        for _ in range(self.config.max_iterations):
            alpha_mean = self.alpha_concentration / self.alpha_rate
            beta_mean = self.beta_concentration / self.beta_rate
            covariance = self._set_gaussian(alpha_mean * eye + beta_mean * gram, phi_y, beta_mean)
            m = tf.convert_to_tensor(self.loc)
            self.alpha_concentration.assign(a0 + 0.5 * dim)
            self.alpha_rate.assign(b0 + 0.5 * (tf.reduce_sum(tf.square(m)) + tf.linalg.trace(covariance)))
            residual = y - tf.linalg.matvec(phi, m)
            self.beta_concentration.assign(c0 + 0.5 * n)
            self.beta_rate.assign(d0 + 0.5 * (tf.reduce_sum(tf.square(residual))
                                              + tf.reduce_sum(gram * covariance)))
            history.append(float(self.closed_form_elbo(x, y)))
            if self._converged(history):
                break
        return history


def build_model(config: Config, dataset) -> BayesianLinearRegression:
    """The model for a regression `training.data.Dataset`."""
    if dataset.task != "regression":
        raise ValueError(f"Bayesian linear regression needs a regression dataset; {dataset.name} is {dataset.task}")
    return BayesianLinearRegression(dataset.input_shape[-1], config)
