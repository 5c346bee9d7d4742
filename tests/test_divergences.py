"""KL divergences: the zero conventions, optax parity, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxce

INF = math.inf


def test_zero_targets_with_neg_inf_log_predictions():
    """optax PR #1786: NaN gradient wrt targets at t = 0; jaxce: 0 (the term is absent)."""
    lp = jnp.array([-INF, -0.1, math.log(1 - math.exp(-0.1))])
    t = jnp.array([0.0, 0.6, 0.4])
    with jax.debug_nans(True):
        v = jaxce.kl_divergence(lp, t)
        g_lp, g_t = jax.jit(jax.grad(jaxce.kl_divergence, argnums=(0, 1)))(lp, t)
    assert np.isfinite(v)
    np.testing.assert_allclose(g_lp, -t, rtol=1e-6)
    assert float(g_t[0]) == 0.0
    np.testing.assert_allclose(g_t[1:], np.log(t[1:]) - lp[1:] + 1, rtol=1e-6)
    assert np.isnan(jax.grad(optax.losses.kl_divergence, argnums=1)(lp, t)[0])


def test_positive_target_on_zero_probability_is_inf():
    assert float(jaxce.kl_divergence(jnp.array([-INF, 0.0]), jnp.array([0.5, 0.5]))) == INF


def test_log_targets_neg_inf():
    """optax: exp(-inf) * (-inf - lp) = 0 * -inf = NaN; jaxce: the term is 0."""
    lp = jnp.array([-1.0, -0.5, -2.0])
    lt = jnp.array([-INF, 0.0, -INF])
    with jax.debug_nans(True):
        v = jaxce.kl_divergence_with_log_targets(lp, lt)
        g_lp, g_lt = jax.jit(jax.grad(jaxce.kl_divergence_with_log_targets, argnums=(0, 1)))(lp, lt)
    np.testing.assert_allclose(float(v), 0.5, rtol=1e-6)
    np.testing.assert_allclose(g_lp, [0.0, -1.0, 0.0])
    np.testing.assert_allclose(g_lt, [0.0, 1.5, 0.0], rtol=1e-6)
    assert np.isnan(optax.losses.kl_divergence_with_log_targets(lp, lt))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_match_optax_on_ordinary_inputs(axis):
    rng = np.random.default_rng(0)
    lp = np.log(rng.dirichlet(np.ones(6), size=4)).astype(np.float32)
    t = rng.dirichlet(np.ones(6), size=4).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.kl_divergence(lp, t, axis=axis),
        optax.losses.kl_divergence(lp, t, axis=axis),
        1e-5,
        1e-6,
    )
    np.testing.assert_allclose(
        jaxce.kl_divergence_with_log_targets(lp, np.log(t), axis=axis),
        optax.losses.kl_divergence_with_log_targets(lp, np.log(t), axis=axis),
        1e-5,
        1e-6,
    )


def test_where_equals_boolean_indexing():
    rng = np.random.default_rng(1)
    lp = rng.normal(size=7).astype(np.float32)
    t = rng.dirichlet(np.ones(7)).astype(np.float32)
    w = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    np.testing.assert_allclose(
        jaxce.kl_divergence(lp, t, where=w), jaxce.kl_divergence(lp[w], t[w]), rtol=1e-6
    )
    g = jax.grad(jaxce.kl_divergence)(lp, t, where=w)
    assert np.all(g[~w] == 0)


def test_bad_input():
    with pytest.raises(ValueError, match=r"`log_predictions` of shape \(4, 3\) and `targets`"):
        jaxce.kl_divergence(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(TypeError, match="`targets` must be a floating-point"):
        jaxce.kl_divergence(jnp.zeros(3), jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="`log_targets` must be a floating-point"):
        jaxce.kl_divergence_with_log_targets(jnp.zeros(3), jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("log_targets", [False, True])
def test_nan_log_prediction_is_not_hidden_by_a_zero_target(log_targets):
    """0 * NaN is NaN: a NaN input poisons its example even on a class with target 0."""
    t = jnp.array([[0.0, 0.5, 0.5], [0.0, 0.5, 0.5]])
    lp = jnp.log(jnp.array([[0.2, 0.4, 0.4], [0.2, 0.4, 0.4]])).at[0, 0].set(jnp.nan)
    fn = jaxce.kl_divergence_with_log_targets if log_targets else jaxce.kl_divergence
    out = fn(lp, jnp.log(t) if log_targets else t)
    assert np.isnan(out[0])
    assert np.isfinite(out[1])


def test_log_targets_absent_class_with_minus_inf_prediction_is_zero():
    lp = jnp.array([-jnp.inf, jnp.log(0.5), jnp.log(0.5)])
    lt = jnp.log(jnp.array([0.0, 0.5, 0.5]))
    value, grad = jax.value_and_grad(jaxce.kl_divergence_with_log_targets)(lp, lt)
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, [0.0, -0.5, -0.5])
