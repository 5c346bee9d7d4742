"""Reductions with PyTorch's denominators (shared by every loss of :mod:`jaxce.torch`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["REDUCTIONS", "check_reduction", "reduce"]

#: The values ``reduction`` accepts, as in ``torch.nn.functional``.
REDUCTIONS = ("none", "mean", "sum")


def check_reduction(reduction: str) -> str:
    """``reduction`` itself, or a ``ValueError`` naming what was received and expected."""
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}; got {reduction!r}.")
    return reduction


def reduce(loss: jax.Array, reduction: str, denominator: jax.Array | None = None) -> jax.Array:
    """Apply ``reduction`` to per-element ``loss``.

    ``"mean"`` divides the sum by ``denominator`` (default: the number of elements), PyTorch's
    ``Σ w[y]`` over non-ignored targets for weighted/ignored cross-entropy. A zero denominator
    (every target ignored, or an empty batch) gives 0 with a zero gradient instead of PyTorch's
    ``0/0 = NaN``; a NaN loss element still makes the mean NaN.
    """
    check_reduction(reduction)
    if reduction == "none":
        return loss
    total = jnp.sum(loss)
    if reduction == "sum":
        return total
    if denominator is None:
        denominator = jnp.asarray(loss.size, loss.dtype)
    denominator = jnp.asarray(denominator, loss.dtype)
    empty = denominator == 0
    # Double where: the untaken 0/0 branch must not leak a NaN into the gradient.
    safe = jnp.where(empty, jnp.ones((), loss.dtype), denominator)
    # total * 0: 0 for a finite total (zero gradient), NaN if the sum is NaN or infinite.
    return jnp.where(empty, total * 0, total / safe)
