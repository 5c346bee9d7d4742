"""Sigmoid binary cross-entropy: edge table, optax parity, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce

INF = math.inf

# (logit, label, value, d/dlogit)
EDGES = [
    (INF, 1.0, 0.0, 0.0),
    (INF, 0.0, INF, 1.0),
    (-INF, 0.0, 0.0, 0.0),
    (-INF, 1.0, INF, -1.0),
    (INF, 0.5, INF, 0.5),
    (0.0, 1.0, math.log(2.0), -0.5),
    (1e4, 0.0, 1e4, 1.0),
    (-40.0, 0.0, math.exp(-40.0), math.exp(-40.0)),  # tiny loss, relative precision
    (40.0, 1.0, math.exp(-40.0), -math.exp(-40.0)),
]


@pytest.mark.parametrize(("x", "t", "value", "grad"), EDGES)
def test_edge_table(x, t, value, grad):
    """pytorch #49844 / optax: NaN at +-inf logits; jaxce gives the exact limits."""
    fn = jaxce.sigmoid_binary_cross_entropy
    xa, ta = jnp.array([x], jnp.float32), jnp.array([t], jnp.float32)
    with jax.debug_nans(True):
        v = fn(xa, ta)
        g = jax.jit(jax.grad(lambda a: jnp.sum(fn(a, ta))))(xa)
    np.testing.assert_allclose(float(v[0]), value, rtol=1e-6)
    np.testing.assert_allclose(float(g[0]), grad, rtol=1e-6)


def test_optax_is_nan_at_infinite_logits():
    x, t = jnp.array([INF, -INF]), jnp.array([1.0, 0.0])
    assert np.all(np.isnan(optax.sigmoid_binary_cross_entropy(x, t)))
    assert np.all(jaxce.sigmoid_binary_cross_entropy(x, t) == 0)


def test_matches_optax_on_ordinary_inputs():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 5)) * 4).astype(np.float32)
    t = rng.uniform(size=(8, 5)).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.sigmoid_binary_cross_entropy(x, t),
        optax.sigmoid_binary_cross_entropy(x, t),
        rtol=2e-6,
        atol=1e-7,
    )
    g1 = jax.grad(lambda a: jnp.sum(jaxce.sigmoid_binary_cross_entropy(a, t)))(x)
    np.testing.assert_allclose(g1, jax.nn.sigmoid(x) - t, rtol=1e-5, atol=1e-7)


def test_hessian_is_sigmoid_derivative():
    x = jnp.array([-3.0, 0.0, 2.5, 1e4, -1e4])
    t = jnp.array([0.2, 1.0, 0.0, 1.0, 0.0])
    h = jax.hessian(lambda a: jnp.sum(jaxce.sigmoid_binary_cross_entropy(a, t)))(x)
    s = jax.nn.sigmoid(x)
    np.testing.assert_allclose(h, jnp.diag(s * (1 - s)), atol=1e-7)


def test_labels_broadcast_same_rank_only():
    x = jnp.zeros((4, 3))
    out = jaxce.sigmoid_binary_cross_entropy(x, jnp.ones((1, 3)))
    assert out.shape == (4, 3)
    with pytest.raises(ValueError, match=r"`labels` has shape \(3,\)"):
        jaxce.sigmoid_binary_cross_entropy(x, jnp.ones(3))
    with pytest.raises(TypeError, match="`logits` must be a floating-point"):
        jaxce.sigmoid_binary_cross_entropy(jnp.zeros(3, jnp.int32), jnp.ones(3))


def test_summed_value_and_gradient_store_at_most_one_array():
    """The value ends in one select, so XLA:CPU's reduction of a summed loss reads one stored
    array: compiled temp memory of ``value_and_grad(sum of the loss)`` is at most one array of
    the logits' size. Written as ``(1 - t)·softplus(x) + t·softplus(-x)``, the reduction took
    the products into itself and stored their four operands (4 arrays; optax's stores 3)."""
    shape = (64, 4096)
    x = jnp.linspace(-30.0, 30.0, shape[0] * shape[1]).reshape(shape)
    t = jnp.abs(jnp.sin(x))
    f = jax.jit(
        jax.value_and_grad(
            lambda a, b: jaxce.sigmoid_binary_cross_entropy(a, b).sum(), argnums=(0, 1)
        )
    )
    temp = f.lower(x, t).compile().memory_analysis().temp_size_in_bytes
    assert temp <= 4 * shape[0] * shape[1], temp
