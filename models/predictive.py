"""Monte Carlo model averaging: the posterior predictive from S posterior samples.

The posterior predictive integrates the model over the (approximate) posterior q(H) of its hidden quantities H:

    p(y | x, D) = integral p(y | x, H) q(H) dH  ~=  (1/S) sum_s p(y | x, H_s),   H_s ~ q(H).

It is a uniform mixture of S per-sample predictive distributions (Bayesian model averaging; an ensemble of size S
whose members are drawn from q). Every family hands this module one distribution whose batch shape carries the
sample axis first, `[S, batch, ...]`, and every statistic is a reduction over that axis (no Python loop over S).

Regression (per-sample predictive with mean mu_s and variance sigma_s^2), by the law of total variance:
    mean           = E_s[mu_s]
    aleatoric var  = E_s[sigma_s^2]               (noise the model expects even with H known)
    epistemic var  = Var_s[mu_s] = E_s[(mu_s - mean)^2]   (disagreement between posterior samples)
    total stddev   = sqrt(aleatoric var + epistemic var)
    [lower, upper] = the central 95% interval of the mixture, F^{-1}(0.025), F^{-1}(0.975) with
                     F(t) = (1/S) sum_s F_s(t), found by safeguarded Newton iterations.

Classification (per-sample class probabilities p_s = softmax(logits_s)):
    probabilities        = E_s[p_s]
    predictive entropy   = H[E_s p_s]
    expected entropy     = E_s[H[p_s]]            (aleatoric part)
    mutual information   = predictive - expected entropy = I(y; H | x, D) >= 0  (epistemic part)

Log predictive density of an observation (the test log-likelihood of the published tables), stably:
    log p(y | x, D) ~= logsumexp_s log p(y | x, H_s) - log S.

Only core TensorFlow ops run here, so these statistics can live inside an exported SavedModel signature.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

# Iteration cap of the mixture quantile search. Each step keeps a bracket and falls back to bisection when Newton
# would leave it, so even the worst case shrinks the bracket by half per step; typical cases stop after a few
# Newton steps, when the mixture CDF matches the target to a few ulps.
_QUANTILE_MAX_STEPS = 200


def assert_all_finite(x, message: str) -> tf.Tensor:
    """x, or `tf.debugging.assert_all_finite`'s error ("<message> : Tensor had NaN values") if it holds a NaN or Inf.

    The same check and error for less: TF's CheckNumerics kernel scans on one thread, a noticeable part of a
    request for a batch of images, while `is_finite` and `reduce_all` are vectorized and parallel; CheckNumerics
    runs only on the failing branch, for its message.
    """
    x = tf.convert_to_tensor(x)
    return tf.cond(tf.reduce_all(tf.math.is_finite(x)), lambda: tf.identity(x),
                   lambda: tf.debugging.assert_all_finite(x, message))


def _sample_mean(t: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(t, axis=0)


def mixture_quantiles(per_sample, probs, mean=None, stddev=None, resolution=None, shared_location=None) -> list:
    """Quantiles of the uniform mixture (1/S) sum_s per_sample[s].

    Args:
      per_sample: a distribution with batch shape [S, ...] and `cdf`, `prob`, `mean`, `stddev` (and `quantile`,
        for a tight starting bracket).
      probs: Python floats in (0, 1).
      mean, stddev: the mixture's mean and standard deviation [...] if already computed.
      resolution: relative precision the caller needs (see `mixture_quantile_search`); None: the dtype's.
      shared_location: False when the components' locations are known to differ (a network's posterior draws):
        the search runs directly, without building the mirrored route below; None: decided in the graph.

    Returns:
      One tensor [...] per entry of `probs`.

    Normal components that all share one location c (the linear model's, which differ only in their noise
    precision) make a mixture symmetric about c, F^{-1}(1 - p) = 2c - F^{-1}(p): then only max(p, 1 - p) is
    searched for each pair and the other quantile mirrored, half the work of the usual central interval.
    """
    if isinstance(per_sample, tfd.Normal) and shared_location is not False:
        upper = sorted({max(p, 1.0 - p) for p in probs})
        if len(upper) < len(probs):
            return _mirrored_quantiles(per_sample, probs, upper, mean, stddev, resolution)
    quantiles, _ = mixture_quantile_search(per_sample, probs, mean, stddev, resolution)
    return tf.unstack(quantiles, axis=0)


def _mirrored_quantiles(per_sample, probs, upper, mean, stddev, resolution) -> list:
    """`mixture_quantiles` of Normal components: mirrored about their shared location when they share one."""
    loc = per_sample.mean()
    centre = loc[0]
    shared = tf.reduce_all(tf.equal(loc, centre))

    def mirrored():
        found, _ = mixture_quantile_search(per_sample, upper, mean, stddev, resolution)
        offsets = tf.unstack(found - centre, axis=0)
        return tf.stack([centre + math.copysign(1.0, p - 0.5) * offsets[upper.index(max(p, 1.0 - p))]
                         for p in probs])

    def direct():
        return mixture_quantile_search(per_sample, probs, mean, stddev, resolution)[0]

    return tf.unstack(tf.cond(shared, mirrored, direct), axis=0)


def mixture_quantile_search(per_sample, probs, mean=None, stddev=None, resolution=None):
    """The search behind `mixture_quantiles`: (quantiles [P, ...] for P = len(probs), number of steps taken).

    Safeguarded Halley iterations on g(t) = F(t) - p, F(t) = (1/S) sum_s F_s(t), from the moment-matched Normal's
    quantile inside the bracket [min_s F_s^{-1}(p), max_s F_s^{-1}(p)]:
        t <- t - (g / F') / (1 - c),   c = g F'' / (2 F'^2),   F' = (1/S) sum_s f_s,   F'' = (1/S) sum_s f_s'
    (cubic convergence; f_s' = -z_s f_s / sigma_s for Normal components, 0 otherwise), Newton's step (c = 0) while
    |c| > 1/2, and a step that would leave the bracket bisects instead. An entry stops when its CDF is within a few
    ulps of p, its bracket has closed, or the next step |g / F'| is below `resolution * max(|t|, stddev)`: with
    float32 outputs (the signatures') that saves the last of the usual two to four steps. Entries stop one by one;
    the loop runs until the slowest has.
    """
    loc, scale = per_sample.mean(), per_sample.stddev()
    dtype = loc.dtype
    if mean is None:
        mean = _sample_mean(loc)
    if stddev is None:
        stddev = tf.sqrt(_sample_mean(tf.square(scale)) + _sample_mean(tf.square(loc - mean)))
    for p in probs:
        if not 0.0 < p < 1.0:
            raise ValueError(f"quantile probability must be in (0, 1), got {p}")
    # Targets and iterates carry a leading axis over `probs`; components broadcast against it.
    shape = [len(probs)] + [1] * mean.shape.rank
    target = tf.reshape(tf.constant(probs, dtype), shape)
    z = tf.reshape(tf.constant([math.sqrt(2.0) * _erfinv(2.0 * p - 1.0) for p in probs], dtype), shape)
    eps = tf.constant(np.finfo(dtype.as_numpy_dtype).eps, dtype)
    tiny = tf.constant(np.finfo(dtype.as_numpy_dtype).tiny, dtype)
    step_floor = tf.constant(resolution, dtype) * stddev if resolution is not None else None
    lo, hi = _quantile_bracket(per_sample, target, z, loc, scale, tf.shape(mean + target))
    q = tf.clip_by_value(mean + _start_offset(per_sample, loc, scale, mean, stddev, z) * stddev, lo, hi)

    component_derivatives = _component_cdf_and_derivatives(per_sample, loc, scale)

    def mixture_derivatives(q):
        cdf, density, slope = component_derivatives(q[:, None])  # [P, 1, ...] against components [S, ...]
        return tf.reduce_mean(cdf, axis=1), tf.reduce_mean(density, axis=1), tf.reduce_mean(slope, axis=1)

    def searching(q, lo, hi, cdf, density):
        # Done entries are frozen, so later steps taken for other entries cannot move them.
        excess = tf.abs(cdf - target)
        open_bracket = (hi - lo) > 4.0 * eps * tf.maximum(tf.abs(q), stddev)  # closed, relative to the scale
        active = (excess > 8.0 * eps) & open_bracket
        if step_floor is not None:
            active &= excess > tf.maximum(tf.abs(q) * resolution, step_floor) * density
        return active

    def not_done(i, q, lo, hi, cdf, density, slope):
        del slope
        return (i < _QUANTILE_MAX_STEPS) & tf.reduce_any(searching(q, lo, hi, cdf, density))

    def step(i, q, lo, hi, cdf, density, slope):
        active = searching(q, lo, hi, cdf, density)
        excess = cdf - target
        lo = tf.where(active & (excess < 0), q, lo)
        hi = tf.where(active & (excess > 0), q, hi)
        newton_step = excess / tf.maximum(density, tiny)
        # Halley's step is Newton's divided by 1 - c, c = g F'' / (2 F'^2): taken near the root only (|c| <= 1/2);
        # far out in a Normal tail, F'' / F' is large and Halley would crawl where Newton overshoots into bisection.
        correction = excess * slope / tf.maximum(2.0 * tf.square(density), tiny)
        use_halley = tf.abs(correction) <= 0.5
        candidate = q - tf.where(use_halley, newton_step / (1.0 - tf.where(use_halley, correction, 0.0)),
                                 newton_step)
        inside = (candidate > lo) & (candidate < hi) & (density > tiny)
        q = tf.where(active, tf.where(inside, candidate, 0.5 * (lo + hi)), q)
        return (i + 1, q, lo, hi) + mixture_derivatives(q)

    steps, q, _, _, _, _, _ = tf.while_loop(not_done, step, (tf.constant(0), q, lo, hi) + mixture_derivatives(q))
    return q, steps


def _start_offset(per_sample, loc, scale, mean, stddev, z):
    """Where the search starts, in standard deviations from the mean: [P, ...].

    The moment-matched Normal's quantile z_p (exact for S = 1 with a Normal component), corrected for Normal
    components by the mixture's skewness g and excess kurtosis k (Cornish-Fisher, to second order):
        z_p + (z_p^2 - 1) g / 6 + (z_p^3 - 3 z_p) k / 24 - (2 z_p^3 - 5 z_p) g^2 / 36,
    with, for d_s = mu_s - mean, the mixture's central moments
        m3 = E_s[d_s^3 + 3 d_s sigma_s^2],   m4 = E_s[d_s^4 + 6 d_s^2 sigma_s^2 + 3 sigma_s^4].
    A mixture of Normals that share their mean (the linear model's) is a scale mixture, heavier-tailed than its
    moment-matched Normal; the correction starts the search that much closer, one step fewer to converge. For a
    multimodal mixture the expansion can be poor: the start is clipped to the bracket and the iterations are
    safeguarded either way.
    """
    if not isinstance(per_sample, tfd.Normal):
        return z
    # In units of the mixture's standard deviation, so that no power over- or underflows at extreme scales.
    unit = tf.where(stddev > 0, stddev, tf.ones_like(stddev))
    d = (loc - mean) / unit
    d2, s2 = tf.square(d), tf.square(scale / unit)
    g = _sample_mean(d * (d2 + 3.0 * s2))
    k = _sample_mean(d2 * (d2 + 6.0 * s2) + 3.0 * tf.square(s2)) - 3.0
    z2 = tf.square(z)
    offset = z + (z2 - 1.0) * g / 6.0 + (z2 - 3.0) * z * k / 24.0 - (2.0 * z2 - 5.0) * z * tf.square(g) / 36.0
    return tf.where(tf.math.is_finite(offset), offset, z)


def _component_cdf_and_derivatives(per_sample, loc, scale):
    """t -> (F_s(t), f_s(t), f_s'(t)) for every component s, broadcasting t against the batch shape [S, ...].

    Normal components take the closed forms, with z = (t - mu_s) / sigma_s:
        F_s(t) = erfc(-z / sqrt 2) / 2,    f_s(t) = exp(-z^2 / 2) / (sigma_s sqrt(2 pi)),    f_s'(t) = -z f_s / sigma_s,
    in a few fused-friendly ops sharing z (about half the time of the distribution's own `cdf` and `prob`, which
    each standardize, and whose `cdf` evaluates both tails); other families use their `cdf` and `prob`, with
    f_s' = 0 (Newton steps).
    """
    if isinstance(per_sample, tfd.Normal):
        inverse_scale = tf.math.reciprocal(scale)
        density_scale = inverse_scale * (1.0 / math.sqrt(2.0 * math.pi))

        def normal(t):
            z = (t - loc) * inverse_scale
            density = tf.exp(-0.5 * tf.square(z)) * density_scale
            return 0.5 * tf.math.erfc(z * (-1.0 / math.sqrt(2.0))), density, -z * inverse_scale * density

        return normal

    def other(t):
        density = per_sample.prob(t)
        return per_sample.cdf(t), density, tf.zeros_like(density)

    return other


def _quantile_bracket(per_sample, target, z, loc, scale, shape):
    """[lo, hi] holding the mixture's p-quantile for each p in `target` [P, 1, ...]; each [P, ...].

    The mixture CDF F = (1/S) sum_s F_s is at most p where every component's CDF is, and at least p where every
    component's CDF is, so the smallest and largest component p-quantiles bracket the mixture's p-quantile.
    A Normal component's p-quantile is mu_s + sigma_s z_p, z [P, 1, ...] the standard Normal's (a multiply-add
    where `quantile` would evaluate the inverse error function S x batch times). Without a component quantile
    function, Chebyshev's bound gives a wider bracket: every component puts at most 1/k^2 of its mass beyond k
    standard deviations, so k = 1e3 holds any p in [1e-6, 1 - 1e-6].
    """
    try:
        if isinstance(per_sample, tfd.Normal):
            component = loc + scale * z[:, None]  # [P, S, ...]
        else:
            component = per_sample.quantile(target[:, None])  # [P, S, ...]
        return (tf.broadcast_to(tf.reduce_min(component, axis=1), shape),
                tf.broadcast_to(tf.reduce_max(component, axis=1), shape))
    except NotImplementedError:
        width = tf.constant(1e3, loc.dtype) * scale
        return (tf.broadcast_to(tf.reduce_min(loc - width, axis=0), shape),
                tf.broadcast_to(tf.reduce_max(loc + width, axis=0), shape))


def _erfinv(y: float) -> float:
    """Inverse error function on (-1, 1) for a Python float (bisection; only used for a starting point)."""
    lo, hi = -6.0, 6.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if math.erf(mid) < y else (lo, mid)
    return 0.5 * (lo + hi)


def regression_summary(per_sample, interval_mass: float = 0.95, integrated_variance=None, resolution=None,
                       shared_location=None) -> dict:
    """Posterior predictive statistics of a regression model from per-sample predictive distributions.

    Args:
      per_sample: a distribution (e.g. `tfd.Normal`) with batch shape [S, batch, outputs]: the predictive
        distribution p(y | x, H_s) of each posterior sample H_s.
      interval_mass: mass of the central interval [lower, upper].
      integrated_variance: optional [batch, outputs], epistemic variance the model integrated into every
        component in closed form (Rao-Blackwellization: a linear model's Var_q[w . phi] with the weights
        integrated out). It is counted as epistemic instead of aleatoric; nothing else depends on it.
      resolution: relative precision the interval is needed to (`mixture_quantile_search`); None: the dtype's.
      shared_location: see `mixture_quantiles`.

    Returns:
      A dict of [batch, outputs] tensors: `mean`, `stddev`, `aleatoric_stddev`, `epistemic_stddev`, `lower`,
      `upper`.
    """
    loc, scale = per_sample.mean(), per_sample.stddev()
    # Two passes around the first sample: components that share their location give exactly that mean and
    # exactly zero spread (a plain mean of S equal numbers can be off by an ulp, and its spread by rounding).
    offset = loc - loc[:1]
    shift = _sample_mean(offset)
    mean = loc[0] + shift
    aleatoric_var = _sample_mean(tf.square(scale))
    epistemic_var = _sample_mean(tf.square(offset - shift))
    stddev = tf.sqrt(aleatoric_var + epistemic_var)
    if integrated_variance is not None:
        integrated_variance = tf.cast(integrated_variance, aleatoric_var.dtype)
        aleatoric_var = tf.maximum(aleatoric_var - integrated_variance, 0.0)
        epistemic_var = epistemic_var + integrated_variance
    tail = 0.5 * (1.0 - interval_mass)
    lower, upper = mixture_quantiles(per_sample, [tail, 1.0 - tail], mean=mean, stddev=stddev, resolution=resolution,
                                     shared_location=shared_location)
    return {
        "mean": mean,
        "stddev": stddev,
        "aleatoric_stddev": tf.sqrt(aleatoric_var),
        "epistemic_stddev": tf.sqrt(epistemic_var),
        "lower": lower,
        "upper": upper,
    }


def regression_predictive(model, x, num_samples, seed, shift=None, scale=None, predictive_fn=None,
                          resolution=None) -> dict:
    """The posterior predictive summary of a regression model, in the data's units.

    Args:
      model: has `predictive(x, num_samples, seed)` -> per-sample distributions [S, batch, outputs], and
        optionally `integrated_variance(x)` -> [batch, outputs], the epistemic variance its components hold in
        closed form (see `regression_summary`), and `components_share_location` (False: its per-sample
        predictives' locations differ; see `mixture_quantiles`).
      x: [batch, features] standardized inputs.
      num_samples, seed: S and an int32 [2] stateless seed.
      shift, scale: the targets' standardization, y = shift + scale * y_standardized (None: identity).
      predictive_fn: another route with `predictive`'s signature (e.g. `moment_predictive`); its components
        are taken as they are.
      resolution: see `regression_summary`.

    Returns:
      The `regression_summary` dict plus `per_sample`, the per-sample predictive in the data's units.
    """
    per_sample = (predictive_fn or model.predictive)(x, num_samples, seed)
    integrated = None
    if predictive_fn is None and hasattr(model, "integrated_variance"):
        integrated = model.integrated_variance(x)
    if scale is not None:
        shift, scale = tf.cast(shift, per_sample.dtype), tf.cast(scale, per_sample.dtype)
        per_sample = affine(per_sample, shift, scale)
        if integrated is not None:
            integrated = integrated * tf.square(scale)
    summary = regression_summary(per_sample, integrated_variance=integrated, resolution=resolution,
                                 shared_location=getattr(model, "components_share_location", None))
    summary["per_sample"] = per_sample
    return summary


def classification_summary(per_sample) -> dict:
    """Posterior predictive statistics of a classifier from per-sample categorical distributions.

    Args:
      per_sample: a `tfd.Categorical` (or anything with `.logits_parameter()`) with batch shape [S, batch] over
        `classes` categories, i.e. logits [S, batch, classes].

    Returns:
      A dict: `probabilities` [batch, classes], `predicted_class` int64 [batch], `predictive_entropy`,
      `expected_entropy`, `mutual_information` [batch] (nats).

    With z = l - max_c l (the logits shifted, per sample and example) and Z = sum_c e^z:
        p_s = e^z / Z,    H[p_s] = log Z - sum_c p_sc z_c,    P = (1/S) sum_s p_s,    H[P] = -sum_c P_c log P_c,
    with 0 log 0 = 0. The work runs class-major, on [classes, S, batch]: every reduction over the few classes is
    then a sum of long contiguous rows, where reductions over a short last axis (log-softmax, per-class sums)
    vectorize poorly.
    """
    logits = per_sample.logits_parameter()
    rank = logits.shape.rank
    z = tf.transpose(logits, [rank - 1] + list(range(rank - 1)))  # [C, S, batch...]
    z = z - tf.reduce_max(z, axis=0)
    e = tf.exp(z)
    total = tf.reduce_sum(e, axis=0)  # Z [S, batch...], >= 1
    inverse = tf.math.reciprocal(total)
    # multiply_no_nan: a class with logit -inf (z = -inf, e^z = 0) adds 0, not 0 * inf.
    cross = tf.reduce_sum(tf.math.multiply_no_nan(z, e), axis=0)  # sum_c e^z z
    expected_entropy = _sample_mean(tf.math.log(total) - cross * inverse)
    mean = tf.reduce_mean(e * inverse, axis=1)  # P [C, batch...]
    probabilities = tf.transpose(mean, list(range(1, rank - 1)) + [0])
    # 0 log 0 = 0: a class whose probability underflows to exactly zero adds nothing.
    predictive_entropy = -tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(probabilities), probabilities), -1)
    return {
        "probabilities": probabilities,
        "predicted_class": tf.argmax(probabilities, axis=-1),
        "predictive_entropy": predictive_entropy,
        "expected_entropy": expected_entropy,
        # Clipped at zero: the difference of two rounded entropies can be a hair negative.
        "mutual_information": tf.maximum(predictive_entropy - expected_entropy, 0.0),
    }


def log_predictive_density(per_sample, y: tf.Tensor) -> tf.Tensor:
    """log p(y | x, D) ~= logsumexp_s log p(y | x, H_s) - log S.

    Args:
      per_sample: a distribution with batch shape [S, batch, ...].
      y: observations broadcastable to the distribution's event, [batch, ...].

    Returns:
      [batch, ...] log predictive densities (sum over outputs is the caller's choice).
    """
    log_probs = per_sample.log_prob(y)
    num_samples = tf.cast(tf.shape(log_probs)[0], log_probs.dtype)
    return tf.reduce_logsumexp(log_probs, axis=0) - tf.math.log(num_samples)


def affine(per_sample, shift, scale):
    """The per-sample predictive of shift + scale * y for a location-scale family (Normal, StudentT, ...).

    Models fit standardized targets; this maps their predictive back to original units before any statistic is
    taken, so means, standard deviations, intervals and densities all come out in the data's units.
    """
    return per_sample.copy(loc=per_sample.loc * scale + shift, scale=per_sample.scale * scale)
