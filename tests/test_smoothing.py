"""``smooth_labels`` (``jaxce._smoothing``): optax's label smoothing, finite on masked rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce

# --------------------------------------------------------------------------------------------
# smooth_labels against optax, dtypes, errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("axis", [-1, 0, None])
def test_smooth_labels_equals_optax(alpha, axis):
    t = jnp.asarray(np.random.default_rng(0).dirichlet(np.ones(4), size=3), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(jaxce.smooth_labels(t, alpha, axis=axis)),
        np.asarray(optax.losses.smooth_labels(t, alpha, axis=axis)),
        rtol=1e-6,
    )


def test_smooth_labels_where_equals_optax_and_empty_row_is_finite():
    t = jnp.asarray(np.eye(4)[:3], jnp.float32)
    w = jnp.array([[True, True, False, True], [True] * 4, [False] * 4])
    ours = np.asarray(jaxce.smooth_labels(t, 0.2, where=w))
    theirs = np.asarray(optax.losses.smooth_labels(t, 0.2, where=w))
    np.testing.assert_allclose(ours[:2], theirs[:2], rtol=1e-6)
    assert np.all(np.isinf(theirs[2]))
    np.testing.assert_allclose(ours[2], 0.8 * np.asarray(t[2]))


def test_smooth_labels_dtype_errors_and_jit_nan():
    tb = jnp.asarray(np.eye(3), jnp.bfloat16)
    out = jaxce.smooth_labels(tb, 0.1)
    assert out.dtype == jnp.bfloat16
    with pytest.raises(TypeError, match="`labels` must be a floating-point array"):
        jaxce.smooth_labels(jnp.eye(3, dtype=jnp.int32), 0.1)
    with pytest.raises(ValueError, match=r"`alpha` holds 1\.5"):
        jaxce.smooth_labels(jnp.eye(3), 1.5)
    assert np.all(np.isnan(np.asarray(jax.jit(jaxce.smooth_labels)(jnp.eye(3), -0.5))))
    smoothed = jaxce.smooth_labels(jax.nn.one_hot(jnp.array([0, 2]), 3), 0.1)
    x = jnp.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    np.testing.assert_allclose(
        np.asarray(jaxce.softmax_cross_entropy(x, smoothed)),
        np.asarray(
            jaxce.softmax_cross_entropy_with_integer_labels(
                x, jnp.array([0, 2]), label_smoothing=0.1
            )
        ),
        rtol=2e-6,
    )
