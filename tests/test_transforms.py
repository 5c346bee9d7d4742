"""Logit transforms of the keyword options (``jaxce._transforms``): temperature and the soft cap,
their edge table, their order, and the cap's derivative against mpmath (condition-scaled ulps,
docs/numerics.md)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import _reference as ref
from jaxce._transforms import scale_logits, soft_cap
from tests.test_accuracy import TINY, U, _cast

INF = math.inf


@pytest.mark.parametrize(
    ("x", "value", "derivative"),
    [(INF, 3.0, 0.0), (-INF, -INF, 1.0), (0.0, 0.0, 1.0), (300.0, 3.0, 0.0)],
)
def test_soft_cap_edge_table(x, value, derivative):
    """+inf caps to c with derivative 0; -inf stays -inf (a masked class stays masked) and
    passes its tangent through; far beyond the cap the derivative underflows to 0 exactly."""
    f = lambda a: scale_logits(a, logit_soft_cap=3.0)  # noqa: E731
    assert float(f(jnp.float32(x))) == value
    assert float(jax.grad(f)(jnp.float32(x))) == derivative


def test_nan_stays_nan_and_none_traces_nothing():
    x = jnp.array([jnp.nan, 1.0])
    for kw in ({"temperature": 2.0}, {"logit_soft_cap": 5.0}):
        assert np.isnan(np.asarray(scale_logits(x, **kw))[0])
    jaxpr = jax.make_jaxpr(lambda a: scale_logits(a))(x)
    assert not jaxpr.jaxpr.eqns


def test_temperature_then_cap():
    """``c·tanh(x / (T c))``: the cap bounds the logits the loss sees."""
    x = jnp.array([-50.0, -1.0, 0.5, 40.0])
    got = scale_logits(x, temperature=2.0, logit_soft_cap=10.0)
    exact = 10.0 * np.tanh(np.asarray(x, np.float64) / 20.0)
    np.testing.assert_allclose(np.asarray(got, np.float64), exact, rtol=2.0**-22)


def test_soft_cap_derivative_wrt_the_cap(x64):
    """d/dc [c·tanh(x/c)] = tanh(u) - u·sech²(u), u = x/c: against central differences, and 1
    (tanh -> 1, u·sech² -> 0) far beyond the cap without NaN."""
    x = jnp.array([0.3, 2.0, -7.0, 1e4])
    c = jnp.float64(3.0)
    g = jax.vmap(jax.grad(soft_cap, argnums=1), in_axes=(0, None))(x, c)
    h = 1e-6
    fd = (soft_cap(x, c + h) - soft_cap(x, c - h)) / (2 * h)
    np.testing.assert_allclose(g[:3], fd[:3], rtol=1e-7)
    assert float(g[3]) == 1.0


def test_temperature_gradient_through_a_loss():
    """The chain rule through ``x / T``: the loss's gradient wrt the logits is 1/T of the
    gradient at the scaled logits."""
    x = jnp.array([[2.0, -1.0, 0.5]])
    y = jnp.array([0])
    loss = jaxce.softmax_cross_entropy_with_integer_labels
    g = jax.grad(lambda a: loss(a, y, temperature=4.0).sum())(x)
    g_scaled = jax.grad(lambda a: loss(a, y).sum())(x / 4.0)
    np.testing.assert_allclose(g, g_scaled / 4.0, rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_cap_derivative_accuracy_far_beyond_the_cap(dtype, x64):
    """The cap's derivative sech²(x/c) in condition-scaled ulps against mpmath, out to
    |x| = 60c, and through a loss. JAX's own derivative of tanh, (1 - t)(1 + t) from the rounded
    t, cancels: with c = 30 in float32, 7.3 condition-scaled ulps at x = 81 (and a jit-vs-eager
    flake of test_ext_jit_matches_eager), 700 at x = 150, and exactly 0 from x ≈ 9c, where t
    rounds to 1."""
    mp = pytest.importorskip("mpmath")
    u = U[dtype]
    c = 30.0
    xs = _cast(np.concatenate([np.linspace(-60 * c, 60 * c, 2001), [-81.33, 81.33, 1e-3]]), dtype)
    v, g = jax.vmap(jax.value_and_grad(lambda a: scale_logits(a, logit_soft_cap=c)))(
        jnp.asarray(xs, dtype)
    )
    errs_v, errs_g = [], []
    with mp.workdps(60):
        for xi, vi, gi in zip(
            xs, np.asarray(v, np.float64), np.asarray(g, np.float64), strict=True
        ):
            w = mp.mpf(float(xi)) / c
            th, s2 = mp.tanh(w), mp.sech(w) ** 2
            # κ of c·tanh(x/c): |x|·sech²; of sech²(x/c): |x|·|2 sech² tanh / c|
            errs_v.append(ref.condition_scaled_error(vi, c * th, abs(w) * c * s2, u, TINY[dtype]))
            errs_g.append(
                ref.condition_scaled_error(gi, s2, abs(w) * 2 * s2 * abs(th), u, TINY[dtype])
            )
        sech2 = float(mp.sech(10) ** 2)
        expected = float(mp.sigmoid(c * mp.tanh(10))) * sech2
    print("soft cap worst value / derivative ulps", dtype, max(errs_v), max(errs_g))
    assert max(errs_g) <= 4, max(errs_g)
    i = int(np.argmax(errs_v))
    assert max(errs_v) <= 4, (max(errs_v), xs[i], np.asarray(v)[i])
    # Through the loss: d/dx bce(c·tanh(x/c), t) = (σ(x') - t)·sech²(x/c), nonzero at x = 10c.
    x = jnp.asarray([300.0, -300.0], dtype)
    t = jnp.asarray([0.0, 1.0], dtype)
    bce = jaxce.sigmoid_binary_cross_entropy
    gl = np.asarray(jax.grad(lambda a: jnp.sum(bce(a, t, logit_soft_cap=c)))(x), np.float64)
    np.testing.assert_allclose(gl, [expected, -expected], rtol=8e-6)
    assert gl[0] > 0
