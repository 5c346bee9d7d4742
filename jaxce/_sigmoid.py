r"""Sigmoid (binary) cross-entropy, optax-compatible."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._checks import float_array, same_rank_broadcast
from jaxce._primitives import safe_mul, softplus
from jaxce._validate import (
    check_probabilities,
    nan_where,
    outside_unit_interval,
    targets_checked,
)

__all__ = ["sigmoid_binary_cross_entropy"]


def sigmoid_binary_cross_entropy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    r"""Element-wise sigmoid (binary) cross-entropy from logits.

    .. math::
       \ell = -t \log\sigma(x) - (1 - t)\log(1 - \sigma(x))
            = (1 - t)\operatorname{softplus}(x) + t\operatorname{softplus}(-x)

    **Stable form.** :math:`\log(1 - \sigma(x)) = \log\sigma(-x)`, and both are softplus
    values, which never overflow and keep tiny losses exact. Each product is taken with the
    zero convention of :func:`jaxce.safe_mul`, so a coefficient of 0 removes its term even
    where the softplus is infinite. Gradient (from the softplus rule):
    :math:`(1 - t)\sigma(x) - t\sigma(-x)`.

    ==================  ==========  =========
    case                value       gradient
    ==================  ==========  =========
    ``x=+inf, t=1``     0           0
    ``x=+inf, t=0``     ``+inf``    1
    ``x=-inf, t=0``     0           0
    ``x=-inf, t=1``     ``+inf``    -1
    NaN logit           NaN         NaN
    ==================  ==========  =========

    optax and PyTorch give NaN at ``±inf`` logits (pytorch #49844).

    Args:
      logits: any shape; each element is the logit of an independent binary event.
      labels: targets in ``[0, 1]``, same rank as ``logits`` and broadcastable to it.

    Returns:
      Element-wise loss, ``logits``' shape, float32 for 16-bit logits.

    >>> import jax.numpy as jnp, jaxce
    >>> jaxce.sigmoid_binary_cross_entropy(jnp.array([jnp.inf, 0.0]), jnp.array([1.0, 0.0]))
    Array([0.       , 0.6931472], dtype=float32)
    """
    x = float_array("logits", logits)
    t = same_rank_broadcast("labels", jnp.asarray(labels), tuple(x.shape)).astype(x.dtype)
    check_probabilities("labels", t)
    return _bce_core(x, t, targets_checked())


@functools.partial(jax.jit, static_argnums=(2,))
def _bce_core(x: jax.Array, t: jax.Array, check_targets: bool = True) -> jax.Array:
    if check_targets:
        t = nan_where(outside_unit_interval(t), t)  # a label outside [0, 1]: NaN, not a number
    return safe_mul(1.0 - t, softplus(x)) + safe_mul(t, softplus(-x))
