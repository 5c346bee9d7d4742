"""Scalar hyperparameters of the losses (``label_smoothing``, ``z_loss``, ``gamma``, ...).

One validator for all of them: a real scalar, else a ``TypeError``; outside its domain a
``ValueError`` eagerly (a check in :func:`jaxce.checked`), and NaN for the loss under ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxce._validate import is_concrete, nan_where, negative, outside_unit_interval, report

__all__ = ["EXPONENT", "NONNEGATIVE", "POSITIVE", "UNIT", "Domain", "is_off", "scalar_option"]


class Domain(NamedTuple):
    """Where an option is valid: ``bad(v)`` is True outside it; ``expected`` names it."""

    bad: Callable[[jax.Array], jax.Array]
    expected: str


UNIT = Domain(outside_unit_interval, "[0, 1]")
NONNEGATIVE = Domain(negative, "[0, inf) (a non-negative coefficient)")
EXPONENT = Domain(negative, "[0, inf) (a non-negative exponent)")
POSITIVE = Domain(lambda v: ~(v > 0), "(0, inf] (a positive scale)")


def is_off(value: object) -> bool:
    """A Python number equal to 0 (not a bool): the option is off and nothing is traced."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


def scalar_option(
    name: str, value: ArrayLike, dtype: jnp.dtype, domain: Domain | None
) -> jax.Array:
    """``value`` as a scalar of ``dtype``, checked against ``domain`` (None: any real)."""
    try:
        v = jnp.asarray(value)
    except TypeError:
        raise TypeError(f"`{name}` must be a real scalar; got {value!r}.") from None
    if v.ndim != 0 or not (
        jnp.issubdtype(v.dtype, jnp.floating) or jnp.issubdtype(v.dtype, jnp.integer)
    ):
        raise TypeError(
            f"`{name}` must be a real scalar; got dtype {v.dtype}, shape {tuple(v.shape)}."
        )
    v = v.astype(dtype)
    if domain is None:
        return v
    report(name, v, domain.bad(v), domain.expected)
    # Concrete values were checked above: no NaN constant (quiet under jax.debug_nans).
    return v if is_concrete(v) else nan_where(domain.bad(v), v)
