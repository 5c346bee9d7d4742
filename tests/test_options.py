"""The one validator of the losses' scalar options (``jaxce._options``)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce._options import EXPONENT, NONNEGATIVE, POSITIVE, UNIT, is_off, scalar_option


def test_is_off_only_for_a_python_zero():
    """0 and 0.0 switch an option off (nothing traced); a traced or array zero does not, and
    neither does ``False`` (a bool is not a number here: ``label_smoothing=False`` is an
    error, not a silent 0)."""
    assert is_off(0)
    assert is_off(0.0)
    assert not is_off(False)
    assert not is_off(jnp.zeros(()))
    assert not is_off(0.1)
    assert not is_off(None)


@pytest.mark.parametrize(
    ("domain", "good", "bad"),
    [(UNIT, [0.0, 1.0, 0.5], [-0.1, 1.5]), (NONNEGATIVE, [0.0, 3.0], [-1.0]),
     (EXPONENT, [0.0, 8.5], [-2.0]), (POSITIVE, [0.25, jnp.inf], [0.0, -1.0])],
)  # fmt: skip
def test_domains_eagerly_and_under_jit(domain, good, bad):
    for v in good:
        assert float(scalar_option("opt", v, jnp.float32, domain)) == v
    message = f"`opt` holds .*, outside {re.escape(domain.expected)}"
    for v in bad:
        with pytest.raises(ValueError, match=message):
            scalar_option("opt", v, jnp.float32, domain)
        under_jit = jax.jit(lambda a: scalar_option("opt", a, jnp.float32, domain))(v)
        assert np.isnan(float(under_jit))


def test_types_are_named():
    for bad in ("0.1", [0.1, 0.2], jnp.ones(2), True, jnp.array(1, bool)):
        with pytest.raises(TypeError, match="`opt` must be a real scalar"):
            scalar_option("opt", bad, jnp.float32, UNIT)
    assert scalar_option("opt", 2, jnp.float32, None).dtype == jnp.float32  # ints accepted


def test_every_loss_option_goes_through_the_validator():
    """The same messages from each option of each loss (one validator, not five copies)."""
    x, y = jnp.zeros((2, 3)), jnp.array([0, 1])
    t = jnp.full((2, 3), 1 / 3)
    calls = {
        "label_smoothing": lambda v: jaxce.softmax_cross_entropy_with_integer_labels(
            x, y, label_smoothing=v
        ),
        "z_loss": lambda v: jaxce.softmax_cross_entropy(x, t, z_loss=v),
        "temperature": lambda v: jaxce.softmax_cross_entropy(x, t, temperature=v),
        "logit_soft_cap": lambda v: jaxce.sigmoid_binary_cross_entropy(x, t, logit_soft_cap=v),
        "gamma": lambda v: jaxce.softmax_focal_loss(x, t, gamma=v),
        "alpha": lambda v: jaxce.smooth_labels(t, v),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=f"`{name}` holds -1"):
            call(-1.0)
        with pytest.raises(TypeError, match=f"`{name}` must be a real scalar"):
            call("x")
        assert np.all(np.isnan(np.asarray(jax.jit(call)(-1.0))))
