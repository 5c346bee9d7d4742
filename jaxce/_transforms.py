r"""Logit transforms shared by the keyword-only options of the losses: ``temperature`` and
``logit_soft_cap``.

Both are plain ``jnp`` code whose derivatives JAX gets right (also at ``±inf``), so the loss's
own custom rule sees the transformed logits and the chain rule does the rest, in forward and
reverse mode and for Hessians.

=================  ==============================  ===================================
logit              ``temperature`` T: ``x / T``    ``logit_soft_cap`` c: ``c·tanh(x/c)``
=================  ==============================  ===================================
finite             ``x / T``                       ``c·tanh(x/c)``, derivative ``1 - tanh²``
``+inf``           ``+inf``                        ``c``, derivative 0
``-inf``           ``-inf`` (stays masked)         ``-inf`` (stays masked), derivative 1
NaN                NaN                             NaN
=================  ==============================  ===================================

``-inf`` stays ``-inf`` under the soft cap on purpose: ``-inf`` is how a class is masked out, and
``c·tanh(-inf/c) = -c`` would hand a masked class a finite logit, and probability. Temperature is
applied first, then the cap (``c·tanh(x/(T c))``), so the cap bounds the logits that the softmax
sees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._validate import _is_concrete, check_positive, nan_where

__all__ = ["scale_logits"]


def _scale(name: str, value: ArrayLike, dtype: jnp.dtype) -> jax.Array:
    v = jnp.asarray(value)
    if v.ndim != 0 or not (
        jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
    ):
        raise TypeError(
            f"`{name}` must be a real scalar; got dtype {v.dtype}, shape {tuple(v.shape)}."
        )
    v = v.astype(dtype)
    check_positive(name, v)  # concrete: a ValueError already, so v is positive here
    if _is_concrete(v):
        return v  # no NaN constant built eagerly (jax.debug_nans would flag it)
    return nan_where(~(v > 0), v)  # a non-positive scale: NaN loss under jit, never a number


def scale_logits(
    x: jax.Array, *, temperature: ArrayLike | None = None, logit_soft_cap: ArrayLike | None = None
) -> jax.Array:
    """``x`` divided by ``temperature``, then soft-capped (see the module docstring).

    ``None`` leaves a step out (no operation is traced). ``x`` is already in its compute dtype.
    """
    if temperature is not None:
        x = x / _scale("temperature", temperature, x.dtype)
    if logit_soft_cap is not None:
        cap = _scale("logit_soft_cap", logit_soft_cap, x.dtype)
        x = jnp.where(jnp.isneginf(x), x, cap * jnp.tanh(x / cap))
    return x
