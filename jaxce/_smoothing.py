r"""Label smoothing, optax-compatible (``optax.losses.smooth_labels``)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import Axis, canonical_axes, float_array, mask_array
from jaxce._options import UNIT, scalar_option

__all__ = ["smooth_labels"]


def smooth_labels(
    labels: ArrayLike,
    alpha: ArrayLike,
    *,
    axis: Axis = -1,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Label smoothing: move a fraction ``alpha`` of the mass to the uniform distribution.

    .. math::
       t' = (1 - \alpha)\, t + \alpha / K

    with :math:`K` the number of classes along ``axis`` or, with ``where``, the number of
    included classes of the row (optax 0.2.8's semantics: the masked entries get the same
    formula; they are dropped by the loss that consumes the labels).

    **Stable form.** Nothing cancels; 16-bit labels are computed in float32 and rounded once
    to their own dtype (optax rounds each step in the 16-bit dtype).

    ======================================  =================================================
    case                                    result
    ======================================  =================================================
    ``alpha = 0``                           ``labels`` unchanged
    ``alpha = 1``                           uniform ``1/K``
    all classes masked (``where``)          ``(1 - alpha) t`` (optax: ``alpha/0 = inf``)
    ``alpha`` outside ``[0, 1]`` (eager)    ``ValueError``; NaN under ``jit``
    integer ``labels``                      ``TypeError`` (as optax)
    ======================================  =================================================

    Args:
      labels: floating labels (e.g. one-hot), ``[..., num_classes]``.
      alpha: the smoothing factor, a scalar in ``[0, 1]``.
      axis: class axis or tuple of axes (``None``: all axes).
      where: optional boolean mask of the included classes, ``labels``' shape or its batch
        shape.

    Returns:
      The smoothed labels, ``labels``' shape and dtype.

    >>> import jax.numpy as jnp, jaxce
    >>> jaxce.smooth_labels(jnp.array([0.0, 1.0, 0.0, 0.0]), 0.2).tolist()
    [0.05000000074505806, 0.8500000238418579, 0.05000000074505806, 0.05000000074505806]

    References:
      Müller et al., *When does label smoothing help?*, 2019; optax ``smooth_labels``.
    """
    dtype = jnp.asarray(labels).dtype
    t = float_array("labels", labels)
    axes = canonical_axes(axis, t.ndim)
    a = scalar_option("alpha", alpha, t.dtype, UNIT)
    mask = mask_array(where, tuple(t.shape), axes)
    return _smooth_core(t, a, mask, axes).astype(dtype)


@functools.partial(jax.jit, static_argnums=(3,))
def _smooth_core(
    t: jax.Array, a: jax.Array, mask: jax.Array | None, axes: tuple[int, ...]
) -> jax.Array:
    if mask is None:
        n = jnp.asarray(math.prod(t.shape[ax] for ax in axes), t.dtype)
    else:
        n = jnp.sum(mask, axis=axes, keepdims=True, dtype=t.dtype)
    one, zero = jnp.ones((), t.dtype), jnp.zeros((), t.dtype)
    return (1.0 - a) * t + jnp.where(n > 0, a / jnp.where(n > 0, n, one), zero)
