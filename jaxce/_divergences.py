r"""Kullback-Leibler divergences, optax-compatible."""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import Axis, broadcast_pair, canonical_axes, float_array, mask_array
from jaxce._primitives import safe_mul, xlogy
from jaxce._rows import Reduction, reduction_for, row_sum
from jaxce._validate import (
    check_log_probability_targets,
    check_nonnegative_targets,
    check_probability_targets,
    nan_where,
    negative,
    outside_unit_interval,
    strict_targets,
)

__all__ = [
    "convex_kl_divergence",
    "generalized_kl_divergence",
    "kl_divergence",
    "kl_divergence_with_log_targets",
]


def _prepare(
    name_p: str, log_predictions: ArrayLike, name_t: str, targets: ArrayLike, axis: Axis, where
):
    lp = float_array(name_p, log_predictions)
    t = float_array(name_t, targets)
    lp, t = broadcast_pair(name_p, lp, name_t, t)
    shape = tuple(lp.shape)
    dtype = jnp.promote_types(lp.dtype, t.dtype)
    axes = canonical_axes(axis, len(shape))
    mask = mask_array(where, tuple(shape), axes)
    lp = lp.astype(dtype)
    return lp, t.astype(dtype), axes, mask, reduction_for(lp)


def _masked_sum(
    terms: jax.Array, axes: tuple[int, ...], mask: jax.Array | None, reduction: Reduction
) -> jax.Array:
    if mask is not None:
        # where, not multiply: a masked term may be inf or NaN.
        terms = jnp.where(mask, terms, jnp.zeros((), terms.dtype))
    return row_sum(terms, axes, reduction)


def kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Kullback-Leibler divergence :math:`\sum_k t_k (\log t_k - \log p_k)` of ``p`` from ``t``.

    **Stable form.** Each term is ``xlogy(t, t) - safe_mul(t, log_p)``, both with the zero
    convention of :func:`jaxce.xlogy` / :func:`jaxce.safe_mul`: a term with :math:`t_k = 0` is 0
    in value and in both derivatives, even when :math:`\log p_k = -\infty` (optax returns a NaN
    gradient with respect to the targets there; optax PR #1786).

    ============================================  ==========  ==================================
    case                                          value       gradient
    ============================================  ==========  ==================================
    ``t_k = 0`` (any ``log p_k``, also ``-inf``)  term 0      0 for both arguments
    ``t_k > 0``, ``log p_k = -inf``               ``+inf``    ``-t_k`` wrt ``log p_k``
    masked class                                  excluded    0
    ============================================  ==========  ==================================

    Args:
      log_predictions: log-probabilities of the prediction, ``[..., num_classes]``.
      targets: probabilities of the target, same rank, broadcastable.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask, full shape or batch shape.

    Returns:
      Per-example divergence, class axes removed, float32 for 16-bit inputs.

    >>> import jax.numpy as jnp, jaxce
    >>> float(jaxce.kl_divergence(jnp.array([-jnp.inf, 0.0]), jnp.array([0.0, 1.0])))
    0.0
    """
    lp, t, axes, mask, reduction = _prepare(
        "log_predictions", log_predictions, "targets", targets, axis, where
    )
    check_nonnegative_targets("targets", t, mask)
    check_probability_targets("targets", t, mask)
    return _kl_core(lp, t, mask, axes, reduction, strict_targets())


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _kl_core(
    lp: jax.Array,
    t: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
    check_targets: bool = False,
) -> jax.Array:
    # A negative target (t·log t is not real) makes its example NaN, value and gradient; in
    # strict mode so does a target above 1.
    bad = outside_unit_interval(t) if check_targets else negative(t)
    t = nan_where(bad, t)
    # A zero target is an absent term, in value and both derivatives (the true derivative
    # with respect to t, log t + 1 - log p, is -inf there); a NaN log-prediction stays NaN.
    lp_t = jnp.where((t == 0) & ~jnp.isnan(lp), jnp.zeros((), lp.dtype), lp)
    return _masked_sum(xlogy(t, t) - t * lp_t, axes, mask, reduction)


def kl_divergence_with_log_targets(
    log_predictions: ArrayLike,
    log_targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""KL divergence with targets in log space: :math:`\sum_k e^{\ell_k}(\ell_k - \log p_k)`.

    **Stable form.** The coefficient :math:`e^{\ell_k}` multiplies with the zero convention,
    so a target of log-probability ``-inf`` contributes 0 to the value and to every
    derivative (optax: ``0 · (-inf) = NaN``).

    ============================================  ==========  ==================================
    case                                          value       gradient
    ============================================  ==========  ==================================
    ``log t_k = -inf``                            term 0      0 for both arguments
    ``log t_k`` finite, ``log p_k = -inf``        ``+inf``    ``-t_k`` wrt ``log p_k``
    ``log t_k < log(tiny)`` (``exp`` underflows,  ``+inf``    0 (``-t_k`` is below the normal
    e.g. ``-200``), ``log p_k = -inf``                        range)
    masked class                                  excluded    0
    ============================================  ==========  ==================================

    A finite log-target is a positive mass even when :math:`e^{\ell_k}` underflows: its term
    :math:`e^{\ell_k}(\ell_k - \log p_k)` is formed as a product of normal factors
    :math:`e^{\ell_k/4}`, so ``log_predictions [-inf, 0]`` with ``log_targets [-200, 0]`` is
    ``+inf`` (not 0), and ``[-3e38, 0]`` with ``[-100, 0]`` is ``1.1e-5`` (jaxce issue 5).

    Args:
      log_predictions: log-probabilities of the prediction, ``[..., num_classes]``.
      log_targets: log-probabilities of the target, same rank, broadcastable.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask, full shape or batch shape.

    Returns:
      Per-example divergence, class axes removed, float32 for 16-bit inputs.
    """
    lp, lt, axes, mask, reduction = _prepare(
        "log_predictions", log_predictions, "log_targets", log_targets, axis, where
    )
    check_log_probability_targets("log_targets", lt, mask)
    return _kl_log_targets_core(lp, lt, mask, axes, reduction, strict_targets())


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _kl_log_targets_core(
    lp: jax.Array,
    lt: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
    check_targets: bool = False,
) -> jax.Array:
    if check_targets:
        # Strict mode: a log-target above 0 (or +inf) makes its example NaN, value and
        # gradient. Checked on the row's maximum, which is cheaper than a select on every
        # element of the sum's input. A NaN log-target is NaN through its term.
        kept = lt if mask is None else jnp.where(mask, lt, -jnp.inf)
        top = jnp.max(kept, axis=axes, keepdims=True, initial=-jnp.inf)
        lt = lt + jnp.where(top <= 0, jnp.zeros((), lt.dtype), jnp.nan)
    return _masked_sum(_kl_log_term(lt, lp), axes, mask, reduction)


def _log_difference(lt: jax.Array, lp: jax.Array) -> jax.Array:
    """``lt - lp``, with ``lt = lp = -inf`` (an absent class) giving 0, not ``inf - inf``."""
    both = jnp.isneginf(lt) & jnp.isneginf(lp)
    return jnp.where(both, jnp.zeros((), lt.dtype), lt - lp)


@jax.custom_jvp
def _kl_log_term(lt: jax.Array, lp: jax.Array) -> jax.Array:
    """``exp(lt)·(lt - lp)`` per class, with the conventions of :func:`_exp_times`.

    Its derivative rule, ``exp(lt)·(lt - lp + 1)·dlt - exp(lt)·dlp``, is explicit so that each
    coefficient is recomputed from the inputs in the pass that needs it (JAX's own derivative
    of the ``where`` chains stores ``exp(lt)`` and the case masks; the optimization barrier
    keeps XLA from merging the recomputation with the value's exponential).
    """
    return _exp_times(lt, _log_difference(lt, lp))


@_kl_log_term.defjvp
def _kl_log_term_jvp(primals, tangents):
    lt, lp = primals
    lt_dot, lp_dot = tangents
    term = _kl_log_term(lt, lp)
    lt_g, lp_g = jax.lax.optimization_barrier((lt, lp))
    # d/dlt: exp(lt)·(d + 1), in the form of the value (also where exp(lt) underflows, +inf
    # where lp = -inf); d/dlp: -exp(lt), 0 for an absent class (and where it underflows).
    c_lt = _exp_times(lt_g, _log_difference(lt_g, lp_g) + 1.0)
    c_lp = jnp.exp(lt_g)
    return term, c_lt * lt_dot - c_lp * lp_dot


def _exp_times(lt: jax.Array, d: jax.Array) -> jax.Array:
    """``exp(lt) * d`` with ``exp(-inf) * d = 0`` (any ``d`` but NaN), also where ``exp(lt)``
    alone underflows.

    A finite ``lt`` is a positive target mass even when ``exp(lt)`` is below the normal range
    (``lt < -87.3`` in float32): the product must not treat it as an absent class. There
    ``exp(lt)·d`` is formed as ``(((a·d)·a)·a)·a`` with ``a = exp(lt/4)`` (``lt/4`` is exact):
    every factor is normal for ``lt >= 4·log(tiny)`` and every partial product is at most ``d``
    (so none overflows, and one that underflows leaves a final value that underflows too).
    ``d = ±inf`` gives ``±inf``. The case is decided on ``lt``, so that one exponential serves
    both: below ``log(tiny)·(1 - 2^-8)``, a margin (0.34 in float32) that keeps ``exp(lt)``
    normal above it despite the exponential's rounding. Plain ``jnp`` on both sides of the
    ``where`` (double-``where`` safe), so derivatives of any order are finite where the value
    is; with ``d = ±inf`` the scaled branch has derivative 0 (exact below the normal range,
    0 instead of about ``1e-38`` in the margin).
    """
    zero = jnp.zeros((), lt.dtype)
    log_tiny = math.log(float(jnp.finfo(lt.dtype).tiny)) * (1.0 - 2.0**-8)
    # `small` includes lt = -inf (a = 0, so the scaled branch gives 0 there, also for d = ±inf
    # by the last select's lt > -inf): excluding it made XLA:CPU store the mask between passes.
    small = lt < log_tiny
    e = jnp.exp(jnp.where(small, 0.25 * lt, lt))  # exp(lt/4) where small, else exp(lt)
    d_inf = jnp.isinf(d)
    a = jnp.where(small, e, zero)
    d_safe = jnp.where(small & ~d_inf, d, zero)
    scaled = (((a * d_safe) * a) * a) * a
    scaled = jnp.where(d_inf & (lt > -jnp.inf), jax.lax.stop_gradient(d), scaled)
    return jnp.where(small, scaled, safe_mul(jnp.where(small, zero, e), d))


# --------------------------------------------------------------------------------------------
# The Bregman term w·log(w/v) - w + v, shared by the generalized KL and the divergences from
# logits (jaxce/_information.py)
# --------------------------------------------------------------------------------------------


def _series_coefficients(n_max: int) -> tuple[float, ...]:
    # phi(r) = e^-r - 1 + r = r^2 · sum_{n>=2} (-r)^(n-2) (-1)^n / n!, Horner from the top.
    return tuple((-1.0) ** n / math.factorial(n) for n in range(n_max, 1, -1))


# Enough terms for full precision on -2 <= r <= 1: 2^n/n! below u·phi(r)/r^2 (~u/2).
_PHI_SERIES = {4: _series_coefficients(17), 8: _series_coefficients(28)}


def _phi_series(r: jax.Array) -> jax.Array:
    coeffs = _PHI_SERIES[8 if r.dtype == jnp.float64 else 4]
    acc = jnp.full_like(r, coeffs[0])
    for c in coeffs[1:]:
        acc = acc * r + c
    return acc * (r * r)


def bregman_term(w: jax.Array, v: jax.Array, r: jax.Array) -> jax.Array:
    r"""``w·φ(r) = w·log(w/v) - w + v`` for ``w > 0`` given ``r = log(w/v)``, without cancellation.

    ``φ(r) = e^{-r} - 1 + r >= 0`` is the generalized-KL term per unit of ``w`` (``v = w e^{-r}``).
    Every form of it cancels somewhere, so it is evaluated by range:

    * ``-2 <= r <= 1`` (``v`` within a factor ``e^2`` of ``w``): the Taylor series
      ``r²/2 - r³/6 + …`` by Horner (17 terms in float32, 28 in float64), full relative
      precision also for ``r`` = 1e-20, where ``expm1(-r) + r`` has no correct digit;
    * ``r > 1``: ``w·(expm1(-r) + r)``, at most a factor 1.7 of cancellation;
    * ``r < -2`` (``v > e² w``): ``v - w·(1 - r)``, at most a factor 1.7, and no overflow of
      ``e^{-r}`` when ``w`` is tiny.

    ``r = +inf`` (``v = 0``) gives ``+inf``. Every branch sees only inputs that are safe for it
    (double ``where``), so all derivatives are finite where the value is; the series is a
    polynomial and its derivative ``1 - e^{-r}`` (also a series) has no cancellation either.
    """
    zero = jnp.zeros((), r.dtype)
    lo = r < -2.0
    hi = r > 1.0
    mid = ~(lo | hi)
    r_lo = jnp.where(lo, r, zero - 3.0)
    r_mid = jnp.where(mid, r, zero)
    r_hi = jnp.where(hi, r, zero + 2.0)
    v_lo = jnp.where(lo, v, zero)
    out_lo = v_lo - w * (1.0 - r_lo)
    out_mid = w * _phi_series(r_mid)
    out_hi = w * (jnp.expm1(-r_hi) + r_hi)
    return jnp.where(lo, out_lo, jnp.where(mid, out_mid, out_hi))


def generalized_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generalized KL divergence :math:`\sum_k t_k(\log t_k - \log p_k) - t_k + p_k`.

    The Bregman divergence of :math:`f(x) = x\log x - x`, defined for unnormalized
    non-negative masses ``t`` and ``p = exp(log_predictions)``; it equals
    :func:`kl_divergence` plus :math:`\sum_k (p_k - t_k)` (optax's definition), and is the KL
    divergence when both sum to 1.

    **Stable form.** optax adds the two sums, which cancels: for ``p ≈ t`` each term is about
    :math:`(p_k - t_k)^2 / (2 t_k)` while the sums are of order 1. Here every term is computed
    on its own, as :math:`t_k\,\varphi(r_k)` with :math:`r_k = \log t_k - \log p_k` and
    :math:`\varphi(r) = e^{-r} - 1 + r \ge 0` evaluated without cancellation (a series near
    ``r = 0``); all terms are non-negative and their compensated sum is accurate to a few
    ulps of the value plus its condition number
    :math:`\kappa = \sum_k |\log p_k|\,|p_k - t_k|`. The gradient
    with respect to ``log_predictions`` is :math:`p_k - t_k` (computed as
    :math:`-t_k\,\mathrm{expm1}(-r_k)` near ``r = 0``).

    ============================================  ==============  ==============================
    case                                          value (term)    gradient wrt ``log p_k``
    ============================================  ==============  ==============================
    ``t_k = 0``, ``log p_k`` finite               :math:`p_k`     :math:`p_k` (0 wrt ``t_k``)
    ``t_k = 0``, ``log p_k = -inf``               0               0 for both arguments
    ``t_k > 0``, ``log p_k = -inf``               ``+inf``        :math:`-t_k`
    ``log p_k = +inf``                            ``+inf``        ``+inf`` or NaN
    NaN ``log p_k`` (any ``t_k``)                 NaN             NaN
    masked class                                  excluded        0
    ``t_k < 0`` or NaN                            ``ValueError``  (NaN for the example under
                                                                  ``jit``)
    ============================================  ==============  ==============================

    Targets below the normal range (subnormal) count as 0, as XLA flushes them.

    Args:
      log_predictions: log-masses of the prediction, ``[..., num_classes]`` (need not be
        normalized).
      targets: non-negative masses of the target, same rank, broadcastable (need not sum to 1).
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask, full shape or batch shape.

    Returns:
      Per-example divergence, class axes removed, float32 for 16-bit inputs.

    References:
      optax 0.2.8 ``generalized_kl_divergence`` (same definition; its gradient wrt the targets
      is NaN at ``t = 0``, optax PR #1786).

    >>> import jax.numpy as jnp, jaxce
    >>> lp = jnp.log(jnp.array([0.5, 0.5 + 1e-6]))
    >>> float(jaxce.generalized_kl_divergence(lp, jnp.array([0.5, 0.5])))  # optax: 0.0
    1.02...e-12
    """
    lp, t, axes, mask, reduction = _prepare(
        "log_predictions", log_predictions, "targets", targets, axis, where
    )
    check_nonnegative_targets("targets", t, mask)
    return _generalized_kl_core(lp, t, mask, axes, reduction)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _generalized_kl_core(
    lp: jax.Array,
    t: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    reduction: Reduction,
) -> jax.Array:
    t = nan_where(negative(t), t)  # not a mass: NaN for that example
    zero = jnp.zeros((), lp.dtype)
    one = jnp.ones((), lp.dtype)
    v = jnp.exp(lp)
    # A target is present when it is a normal positive number; NaN targets go to the present
    # branch, whose value is then NaN.
    pos = ~(t < jnp.finfo(t.dtype).tiny)
    t_safe = jnp.where(pos, t, one)
    lp_safe = jnp.where(pos & ~jnp.isposinf(lp), lp, zero)
    r = jnp.log(t_safe) - lp_safe
    present = bregman_term(t_safe, jnp.where(pos, v, one), r)
    present = jnp.where(jnp.isposinf(lp), jnp.array(jnp.inf, lp.dtype), present)
    return _masked_sum(jnp.where(pos, present, v), axes, mask, reduction)


def convex_kl_divergence(
    log_predictions: ArrayLike,
    targets: ArrayLike,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Deprecated alias of :func:`generalized_kl_divergence`, as in optax 0.2.8.

    Emits a ``DeprecationWarning`` ("Please use generalized_kl_divergence instead.") and returns
    :func:`generalized_kl_divergence` of the same arguments (see there for the formula, the
    stable form and the edge cases).

    Args:
      log_predictions: log-masses of the prediction, ``[..., num_classes]``.
      targets: non-negative masses of the target, same rank, broadcastable.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask, full shape or batch shape.

    Returns:
      Per-example divergence, class axes removed.
    """
    warnings.warn(
        "The function convex_kl_divergence is deprecated. Please use generalized_kl_divergence "
        "instead.",
        category=DeprecationWarning,
        stacklevel=2,
    )
    return generalized_kl_divergence(log_predictions, targets, axis=axis, where=where)
