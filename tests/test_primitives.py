"""The primitives: edge-case table, derivative conventions, composition under transforms."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxce

INF = math.inf
NAN = math.nan

# --------------------------------------------------------------------------------------------
# Elementwise edge table: (function, x, value, derivative)
# --------------------------------------------------------------------------------------------
ELEMENTWISE_EDGES = [
    (jaxce.softplus, INF, INF, 1.0),
    (jaxce.softplus, -INF, 0.0, 0.0),
    (jaxce.softplus, 0.0, math.log(2.0), 0.5),
    (jaxce.softplus, 1e4, 1e4, 1.0),
    (jaxce.softplus, -1e4, 0.0, 0.0),
    (jaxce.softplus, -30.0, math.log1p(math.exp(-30.0)), 1.0 / (1.0 + math.exp(30.0))),
    (jaxce.softplus, NAN, NAN, NAN),
    (jaxce.log_sigmoid, INF, 0.0, 0.0),
    (jaxce.log_sigmoid, -INF, -INF, 1.0),
    (jaxce.log_sigmoid, 30.0, -math.log1p(math.exp(-30.0)), 1.0 / (1.0 + math.exp(30.0))),
    (jaxce.log_sigmoid, -1e4, -1e4, 1.0),
    (jaxce.sigmoid, INF, 1.0, 0.0),
    (jaxce.sigmoid, -INF, 0.0, 0.0),
    (jaxce.sigmoid, 0.0, 0.5, 0.25),
    (jaxce.sigmoid, -80.0, 1.0 / (1.0 + math.exp(80.0)), math.exp(-80.0)),
    (jaxce.sigmoid, 1e4, 1.0, 0.0),
    (jaxce.sigmoid, NAN, NAN, NAN),
]


@pytest.mark.parametrize(("fn", "x", "value", "deriv"), ELEMENTWISE_EDGES)
def test_elementwise_edges(fn, x, value, deriv):
    v = fn(jnp.float32(x))
    g = jax.grad(fn)(jnp.float32(x))
    np.testing.assert_allclose(float(v), value, rtol=2e-6)
    np.testing.assert_allclose(float(g), deriv, rtol=2e-6)


@pytest.mark.parametrize("fn", [jaxce.softplus, jaxce.log_sigmoid, jaxce.sigmoid])
def test_elementwise_higher_order_finite_everywhere(fn):
    """Second and third derivatives stay finite from -inf to +inf (no 0*inf in the rules)."""
    xs = jnp.array([-INF, -1e4, -88.0, -30.0, -1.0, 0.0, 1.0, 30.0, 88.0, 1e4, INF], jnp.float32)
    with jax.debug_nans(True):
        for order_fn in (jax.grad(fn), jax.grad(jax.grad(fn)), jax.grad(jax.grad(jax.grad(fn)))):
            out = jax.jit(jax.vmap(order_fn))(xs)
            assert np.all(np.isfinite(out)), (fn.__name__, out)


@pytest.mark.parametrize("fn", [jaxce.softplus, jaxce.log_sigmoid, jaxce.sigmoid])
@pytest.mark.usefixtures("x64")
def test_elementwise_check_grads(fn):
    check_grads(fn, (jnp.array([-3.0, -0.5, 0.1, 2.0], jnp.float64),), order=2, rtol=1e-3)


def test_sigmoid_tails_relative_precision():
    """The negative tail is e/(1+e): relative precision where 1 - sigmoid(-x) would give 0."""
    x = jnp.array([-20.0, -50.0, -87.0], jnp.float32)
    exact = np.array([1.0 / (1.0 + math.exp(-float(v))) for v in x])
    np.testing.assert_allclose(jaxce.sigmoid(x), exact, rtol=3e-7)
    # jax #2107-style derivative checks at 0 (the kink of |x| inside the formula)
    assert float(jax.grad(jaxce.sigmoid)(0.0)) == 0.25
    assert float(jax.grad(jax.grad(jaxce.sigmoid))(0.0)) == 0.0


# --------------------------------------------------------------------------------------------
# Row reductions: edge table over rows
# --------------------------------------------------------------------------------------------
ROW_EDGES = [
    # (row, where, logsumexp, d logsumexp, softmax)
    ("all -inf (jax #6811)", [-INF, -INF], None, -INF, [0.0, 0.0], [0.0, 0.0]),
    ("all masked", [1.0, 2.0], [False, False], -INF, [0.0, 0.0], [0.0, 0.0]),
    ("one +inf", [INF, 0.0, 1.0], None, INF, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
    ("two +inf share", [INF, INF, 0.0], None, INF, [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]),
    ("-inf entry", [-INF, 0.0], None, 0.0, [0.0, 1.0], [0.0, 1.0]),
    ("masked +inf", [INF, 0.0], [False, True], 0.0, [0.0, 1.0], [0.0, 1.0]),
    ("masked NaN", [NAN, 0.0], [False, True], 0.0, [0.0, 1.0], [0.0, 1.0]),
    ("tie", [3.0, 3.0], None, 3.0 + math.log(2.0), [0.5, 0.5], [0.5, 0.5]),
    ("huge", [1e4, -1e4], None, 1e4, [1.0, 0.0], [1.0, 0.0]),
    ("NaN", [NAN, 0.0], None, NAN, [NAN, NAN], [NAN, NAN]),
]


@pytest.mark.parametrize(
    ("row", "where", "lse", "dlse", "probs"),
    [e[1:] for e in ROW_EDGES],
    ids=[e[0] for e in ROW_EDGES],
)
def test_row_edges(row, where, lse, dlse, probs):
    x = jnp.array(row, jnp.float32)
    w = None if where is None else jnp.array(where)
    np.testing.assert_allclose(float(jaxce.logsumexp(x, where=w)), lse, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(lambda v: jaxce.logsumexp(v, where=w))(x), dlse)
    np.testing.assert_allclose(jaxce.softmax(x, where=w), probs, atol=0)
    np.testing.assert_allclose(jnp.exp(jaxce.log_softmax(x, where=w)), probs, rtol=1e-6)


def test_empty_class_axis():
    x = jnp.zeros((3, 0), jnp.float32)
    assert np.all(jaxce.logsumexp(x) == -INF)


def test_log_softmax_keeps_tiny_log_probability():
    """x - logsumexp(x) rounds the dominant class to 0; (x - m) - log1p(S') does not."""
    x = jnp.array([20.0, 0.0, -3.0], jnp.float32)
    exact = -math.log1p(math.exp(-20.0) + math.exp(-23.0))
    assert float(jax.nn.log_softmax(x)[0]) == 0.0  # the anchor's failure
    np.testing.assert_allclose(float(jaxce.log_softmax(x)[0]), exact, rtol=2e-7)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("gap", [5.0, 17.0, 30.0, 80.0])
def test_nll_of_log_softmax_gradient_keeps_its_digits(gap, dtype):
    """``-log_softmax(x)[y]`` under ``jax.grad``: the label's cotangent is ``-(1 - p_y)``, tiny
    for a confident prediction; ``x_dot - <p, x_dot>`` rounds it to 0 from a gap of ~17 in
    float32, as the fused loss does not."""
    import mpmath

    x = jnp.array([gap, 0.0, -3.0, -jnp.inf]).astype(dtype)
    xs = [mpmath.mpf(float(v)) for v in np.asarray(x, np.float64)]
    with mpmath.workdps(40):
        e = [mpmath.exp(v) for v in xs]
        p = [v / sum(e) for v in e]
        q0 = sum(e[1:]) / sum(e)  # 1 - p_0 without cancellation
        nll = [-q0, *p[1:]]
    # The gradient is computed in float32 and rounded once to the input dtype.
    u = 2.0**-24 if dtype == jnp.float32 else 2.0**-8
    got = np.asarray(jax.grad(lambda a: -jaxce.log_softmax(a)[0])(x), np.float64)
    want = np.array([float(v) for v in nll])
    np.testing.assert_array_less(np.abs(got - want), 8 * u * np.abs(want) + 1e-45)
    fused = jax.grad(lambda a: jaxce.softmax_cross_entropy_with_integer_labels(a, 0))(x)
    composed = jax.grad(lambda a: -jaxce.log_softmax(a)[0])(x)
    np.testing.assert_allclose(
        np.asarray(composed, np.float64), np.asarray(fused, np.float64), rtol=16 * u
    )


def test_log_softmax_vjp_matches_jax_nn_on_ordinary_rows():
    """The rearranged rule is still ``g - p * sum(g)``: any cotangent, ties and masks."""
    x = jax.random.normal(jax.random.key(0), (6, 7)) * 3
    x = x.at[1, 2].set(x[1, 5]).at[2].set(1.0).at[3, 0].set(-jnp.inf)
    where = jnp.ones_like(x, bool).at[4, 1:3].set(False)
    g = jax.random.normal(jax.random.key(1), x.shape)
    for fn, ref in ((jaxce.log_softmax, jax.nn.log_softmax), (jaxce.softmax, jax.nn.softmax)):
        for mask in (None, where):
            ours = jax.vjp(lambda a, f=fn, m=mask: f(a, where=m), x)[1](g)[0]
            theirs = jax.vjp(lambda a, f=ref, m=mask: f(a, where=m), x)[1](g)[0]
            ours = jnp.where(mask if mask is not None else True, ours, 0.0)
            theirs = jnp.where(mask if mask is not None else True, theirs, 0.0)
            np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=2e-6)


def test_logsumexp_near_zero_result():
    """A result near 0 keeps relative precision (log1p of the non-max terms)."""
    x = jnp.array([1e-5, -20.0], jnp.float32)
    exact = 1e-5 + math.log1p(math.exp(-20.0 - 1e-5))
    np.testing.assert_allclose(float(jaxce.logsumexp(x)), exact, rtol=2e-7)


def test_masks_match_boolean_indexing():
    rng = np.random.default_rng(0)
    x = rng.normal(size=7).astype(np.float32)
    w = np.array([1, 0, 1, 1, 0, 1, 1], bool)
    np.testing.assert_allclose(jaxce.logsumexp(x, where=w), jaxce.logsumexp(x[w]), rtol=1e-6)
    np.testing.assert_allclose(jaxce.softmax(x, where=w)[w], jaxce.softmax(x[w]), rtol=1e-6)
    g = jax.grad(lambda v: jaxce.logsumexp(v, where=w))(x)
    assert np.all(g[~w] == 0)
    np.testing.assert_allclose(g[w], jax.grad(jaxce.logsumexp)(x[w]), rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, -1, (0, 2), None])
def test_axis_matches_jax(axis):
    x = np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.logsumexp(x, axis=axis), jax.nn.logsumexp(x, axis=axis), rtol=1e-6
    )
    np.testing.assert_allclose(
        jaxce.log_softmax(x, axis=axis), jax.nn.log_softmax(x, axis=axis), atol=1e-6
    )
    np.testing.assert_allclose(
        jaxce.logsumexp(x, axis=axis, keepdims=True),
        jax.nn.logsumexp(x, axis=axis, keepdims=True),
        rtol=1e-6,
    )


# --------------------------------------------------------------------------------------------
# Composition: jit, vmap, grad, jvp, hessian (finite at |x| = 1e4 and with -inf masks)
# --------------------------------------------------------------------------------------------
HARD_ROWS = {
    "ordinary": [0.3, -1.2, 2.0, 0.0],
    "huge": [1e4, -1e4, 5e3, 0.0],
    "-inf mask": [-INF, 2.0, -INF, 1.0],
    "tie": [5.0, 5.0, -1.0, 5.0],
    "all -inf": [-INF, -INF, -INF, -INF],
}

ROW_FUNCTIONS = {
    "logsumexp": jaxce.logsumexp,
    "log_softmax[1]": lambda x: jaxce.log_softmax(x)[1],
    "softmax[1]": lambda x: jaxce.softmax(x)[1],
    "masked logsumexp": lambda x: jaxce.logsumexp(x, where=jnp.array([True, True, False, True])),
}


@pytest.mark.parametrize("row", list(HARD_ROWS), ids=list(HARD_ROWS))
@pytest.mark.parametrize("name", list(ROW_FUNCTIONS))
def test_row_transforms_finite(name, row):
    fn = ROW_FUNCTIONS[name]
    x = jnp.array(HARD_ROWS[row], jnp.float32)
    with jax.debug_nans(True):
        g = jax.jit(jax.grad(fn))(x)
        h = jax.jit(jax.hessian(fn))(x)
        _, t = jax.jit(lambda v: jax.jvp(fn, (v,), (jnp.ones_like(v),)))(x)
    assert np.all(np.isfinite(g))
    assert np.all(np.isfinite(h))
    assert np.isfinite(t)
    # jvp and grad agree: <grad, v> == jvp(v)
    np.testing.assert_allclose(t, jnp.sum(g), rtol=1e-5, atol=1e-6)
    # jit == eager, vmap == loop
    np.testing.assert_array_equal(jax.jit(fn)(x), fn(x))
    batch = jnp.stack([x, x[::-1]])
    np.testing.assert_allclose(jax.vmap(fn)(batch), [fn(batch[0]), fn(batch[1])], rtol=1e-6)


@pytest.mark.usefixtures("x64")
def test_hessians_match_softmax_jacobian():
    """Hessian of logsumexp = diag(p) - p p^T, also at exact ties (the max derivative is split)."""
    for row in ([1.0, 1.0, 0.0], [2.0, -1.0, 0.5], [3.0, 3.0, 3.0]):
        x = jnp.array(row, jnp.float64)
        p = jax.nn.softmax(x)
        expect = jnp.diag(p) - jnp.outer(p, p)
        np.testing.assert_allclose(jax.hessian(jaxce.logsumexp)(x), expect, atol=1e-12)
        np.testing.assert_allclose(
            jax.hessian(lambda v: jaxce.log_softmax(v)[0])(x), -expect, atol=1e-12
        )


@pytest.mark.parametrize("fn", [jaxce.logsumexp, jaxce.log_softmax, jaxce.softmax])
@pytest.mark.usefixtures("x64")
def test_row_check_grads(fn):
    x = jnp.array([[0.5, -1.0, 2.0], [1.0, 1.0, -0.3]], jnp.float64)
    check_grads(fn, (x,), order=2, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Safe products
# --------------------------------------------------------------------------------------------


def test_xlogy_conventions():
    assert float(jaxce.xlogy(0.0, 0.0)) == 0.0
    gx, gy = jax.grad(jaxce.xlogy, argnums=(0, 1))(0.0, 0.0)
    assert float(gx) == 0.0
    assert float(gy) == 0.0
    assert float(jaxce.xlogy(1.0, 0.0)) == -INF
    gx, gy = jax.grad(jaxce.xlogy, argnums=(0, 1))(2.0, 3.0)
    np.testing.assert_allclose([gx, gy], [math.log(3.0), 2.0 / 3.0], rtol=1e-6)
    h = jax.hessian(jaxce.xlogy, argnums=(0, 1))(0.0, 0.0)
    assert np.all(np.isfinite(np.asarray(jax.tree_util.tree_leaves(h))))


def test_safe_mul_conventions():
    # 0 * NaN stays NaN: a NaN input is never hidden behind a zero target (issue 5's policy)
    assert math.isnan(float(jaxce.safe_mul(0.0, NAN)))
    for y in (INF, -INF):
        assert float(jaxce.safe_mul(0.0, y)) == 0.0
        gx, gy = jax.grad(jaxce.safe_mul, argnums=(0, 1))(0.0, y)
        assert float(gx) == 0.0
        assert float(gy) == 0.0
        _, t = jax.jvp(jaxce.safe_mul, (0.0, y), (1.0, 1.0))
        assert float(t) == 0.0
    assert float(jaxce.safe_mul(2.0, INF)) == INF
    gx, gy = jax.grad(jaxce.safe_mul, argnums=(0, 1))(2.0, 3.0)
    assert (float(gx), float(gy)) == (3.0, 2.0)


# --------------------------------------------------------------------------------------------
# Dtype policy of the primitives: compute in >= float32, return the input dtype
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize("fn", [jaxce.softplus, jaxce.logsumexp, jaxce.softmax, jaxce.log_softmax])
def test_primitive_dtype(fn, dtype):
    x = jnp.array([1.0, -2.0, 3.0], dtype)
    out = fn(x)
    assert out.dtype == dtype
    g = jax.grad(lambda v: jnp.sum(fn(v).astype(jnp.float32)))(x)
    assert g.dtype == dtype


def test_primitives_accept_integers_like_jax_nn():
    np.testing.assert_allclose(jaxce.softplus(jnp.arange(3)), jax.nn.softplus(jnp.arange(3.0)))
