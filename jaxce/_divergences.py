r"""Kullback-Leibler divergences, optax-compatible."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import Axis, broadcast_pair, canonical_axes, float_array, mask_array
from jaxce._primitives import row_sum, safe_mul, xlogy
from jaxce._validate import (
    check_log_probabilities,
    check_probabilities,
    nan_where,
    outside_unit_interval,
    targets_checked,
)

__all__ = ["kl_divergence", "kl_divergence_with_log_targets"]


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
    return lp.astype(dtype), t.astype(dtype), axes, mask


def _masked_sum(terms: jax.Array, axes: tuple[int, ...], mask: jax.Array | None) -> jax.Array:
    if mask is not None:
        # where, not multiply: a masked term may be inf or NaN.
        terms = jnp.where(mask, terms, jnp.zeros((), terms.dtype))
    return row_sum(terms, axes)


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
    lp, t, axes, mask = _prepare(
        "log_predictions", log_predictions, "targets", targets, axis, where
    )
    check_probabilities("targets", t, mask)
    return _kl_core(lp, t, mask, axes, targets_checked())


@functools.partial(jax.jit, static_argnums=(3, 4))
def _kl_core(
    lp: jax.Array,
    t: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    check_targets: bool = True,
) -> jax.Array:
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)  # not a probability: NaN for that example
    return _masked_sum(xlogy(t, t) - safe_mul(t, lp), axes, mask)


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
    masked class                                  excluded    0
    ============================================  ==========  ==================================

    Args:
      log_predictions: log-probabilities of the prediction, ``[..., num_classes]``.
      log_targets: log-probabilities of the target, same rank, broadcastable.
      axis: class axis or tuple of axes (``None``: all).
      where: optional boolean mask, full shape or batch shape.

    Returns:
      Per-example divergence, class axes removed, float32 for 16-bit inputs.
    """
    lp, lt, axes, mask = _prepare(
        "log_predictions", log_predictions, "log_targets", log_targets, axis, where
    )
    check_log_probabilities("log_targets", lt, mask)
    return _kl_log_targets_core(lp, lt, mask, axes, targets_checked())


@functools.partial(jax.jit, static_argnums=(3, 4))
def _kl_log_targets_core(
    lp: jax.Array,
    lt: jax.Array,
    mask: jax.Array | None,
    axes: tuple[int, ...],
    check_targets: bool = True,
) -> jax.Array:
    if check_targets:
        lt = nan_where(~(lt <= 0), lt)  # not a log-probability: NaN for that example
    # lt = lp = -inf: an absent class, not inf - inf (NaN stays NaN: safe_mul keeps 0 * NaN).
    both = jnp.isneginf(lt) & jnp.isneginf(lp)
    diff = jnp.where(both, jnp.zeros((), lt.dtype), lt - lp)
    return _masked_sum(safe_mul(jnp.exp(lt), diff), axes, mask)
