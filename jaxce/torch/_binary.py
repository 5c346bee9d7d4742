"""PyTorch's binary losses: ``binary_cross_entropy_with_logits`` and ``binary_cross_entropy``."""

from __future__ import annotations

import jax
from jax.typing import ArrayLike

from jaxce._checks import float_array
from jaxce._probabilities import binary_cross_entropy as _bce_probs
from jaxce._sigmoid import sigmoid_binary_cross_entropy
from jaxce._validate import check_nonnegative
from jaxce.torch._reduction import check_reduction, reduce

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits"]


def binary_cross_entropy_with_logits(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    pos_weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.binary_cross_entropy_with_logits`` on jaxce's stable BCE.

    .. math::
       l = w\,\big[p_w\,t\,\operatorname{softplus}(-x) + (1 - t)\operatorname{softplus}(x)\big]

    which is PyTorch's :math:`w[(1 - t)x - (1 + (p_w - 1)t)\log\sigma(x)]`; ``"mean"`` divides
    the sum by the number of elements (not by the weights), ``"sum"`` sums, ``"none"`` keeps
    the element-wise losses. Built on :func:`jaxce.sigmoid_binary_cross_entropy`.

    Differences from PyTorch (both NaN there, pytorch #49844 / #102894 / #135359):

    ===================================  =====================  ==========================
    case                                 jaxce                  PyTorch
    ===================================  =====================  ==========================
    ``x=+inf, t=1`` (or ``-inf, t=0``)   0, gradient 0          NaN
    ``x=+inf, t=0``                      ``+inf``, gradient 1   ``+inf`` / NaN gradient
    ``weight=0`` on an infinite loss     0, gradient 0          NaN
    negative ``weight``/``pos_weight``   ValueError / NaN       a number
    label outside ``[0, 1]``             the exact value        a number
    ===================================  =====================  ==========================

    Args:
      logits: any shape (PyTorch's ``input``).
      labels: targets, same rank as ``logits`` (PyTorch's ``target``); any real number.
      weight: optional non-negative element weights broadcastable to ``logits``.
      pos_weight: optional non-negative positive-class weights broadcastable to ``logits``,
        typically ``[num_classes]`` along the last axis.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
      The loss: a scalar for ``"mean"``/``"sum"``, ``logits``' shape for ``"none"``.

    >>> import jax.numpy as jnp
    >>> from jaxce.torch import binary_cross_entropy_with_logits
    >>> binary_cross_entropy_with_logits(jnp.array([jnp.inf, 0.0]), jnp.array([1.0, 0.0]))
    Array(0.3465736, dtype=float32)
    """
    check_reduction(reduction)
    if weight is not None:
        # Checked here under PyTorch's name (the core loss would report `weights`).
        check_nonnegative("weight", float_array("weight", weight))
    loss = sigmoid_binary_cross_entropy(logits, labels, weights=weight, pos_weight=pos_weight)
    return reduce(loss, reduction)


def binary_cross_entropy(
    probs: ArrayLike,
    labels: ArrayLike,
    *,
    weight: ArrayLike | None = None,
    reduction: str = "mean",
) -> jax.Array:
    r"""``torch.nn.functional.binary_cross_entropy`` without PyTorch's clamp of the logs.

    .. math::
       l = -w\,\big[t \log p + (1 - t)\log(1 - p)\big]

    Built on :func:`jaxce.binary_cross_entropy` (``0·log 0 = 0``, ``log1p(-p)``), reduced
    like PyTorch (``"mean"`` divides by the number of elements).

    **Deliberate difference.** PyTorch clamps each ``log`` at ``-100``, so ``p = 0, t = 1``
    gives 100 (and ``p = 1e-50``, which rounds to 0 in float32, as well) with a finite
    gradient; jaxce returns the true ``+inf`` with gradient ``-inf``. Where the clamp is not
    active (``log p > -100``, i.e. ``p > 3.7e-44``) both agree to rounding.

    ==================================  =====================  =====================
    case                                jaxce                  PyTorch
    ==================================  =====================  =====================
    ``p=0, t=1`` (or ``p=1, t=0``)      ``+inf``               100
    ``p=0, t=0``                        0, gradient 1          0, gradient 1
    prob outside ``[0, 1]``             ValueError / NaN       RuntimeError
    label outside ``[0, 1]``            the exact value        a number
    ==================================  =====================  =====================

    Args:
      probs: probabilities in ``[0, 1]``, any shape (PyTorch's ``input``).
      labels: targets, same rank as ``probs``; any real number.
      weight: optional non-negative element weights broadcastable to ``probs``.
      reduction: ``"none"``, ``"mean"`` or ``"sum"``.

    Returns:
      The loss: a scalar for ``"mean"``/``"sum"``, ``probs``' shape for ``"none"``.

    >>> import jax.numpy as jnp
    >>> from jaxce.torch import binary_cross_entropy
    >>> binary_cross_entropy(jnp.array([0.0, 0.5]), jnp.array([1.0, 0.0]), reduction="none")
    Array([      inf, 0.6931472], dtype=float32)
    """
    check_reduction(reduction)
    return reduce(_bce_probs(probs, labels, weights=weight), reduction)
