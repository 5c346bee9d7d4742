"""Softmax cross-entropy losses: edge table, consistency, optax parity, bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxce

INF = math.inf
NAN = math.nan

# --------------------------------------------------------------------------------------------
# Edge table: one row each, integer label y; the soft-label loss gets one_hot(y) and must agree.
# (name, logits, label, where, value, gradient)
# --------------------------------------------------------------------------------------------
EDGES = [
    ("ordinary", [2.0, 0.0, -1.0], 1, None, None, None),
    ("target -inf", [-INF, 0.0, 3.0], 0, None, INF, [-1.0, 0.04742587, 0.95257413]),
    ("other -inf", [-INF, 0.0, 3.0], 2, None, 0.04858735, [0.0, 0.04742587, -0.04742587]),
    ("target the only +inf", [INF, 0.0, 1.0], 0, None, 0.0, [0.0, 0.0, 0.0]),
    ("+inf elsewhere", [INF, 0.0, 1.0], 1, None, INF, [1.0, -1.0, 0.0]),
    ("two +inf, target one", [INF, INF, 0.0], 0, None, math.log(2.0), [-0.5, 0.5, 0.0]),
    ("all -inf", [-INF, -INF, -INF], 1, None, INF, [0.0, -1.0, 0.0]),
    ("huge confident", [1e4, -1e4, 0.0], 0, None, 0.0, [0.0, 0.0, 0.0]),
    ("huge wrong", [1e4, -1e4, 0.0], 1, None, 2e4, [1.0, -1.0, 0.0]),
    ("tiny loss 1e-30", [69.0776, 0.0, 0.0], 0, None, "tiny", None),
    ("masked other", [5.0, 0.0, 1.0], 1, [False, True, True], 1.3132616, None),
    ("target masked", [5.0, 0.0, 1.0], 1, [True, False, True], 0.0, [0.0, 0.0, 0.0]),
    ("all masked", [5.0, 0.0, 1.0], 1, [False, False, False], 0.0, [0.0, 0.0, 0.0]),
    ("NaN logit", [NAN, 0.0, 1.0], 1, None, NAN, [NAN, NAN, NAN]),
]


def _expected(logits, label, where):
    x = np.asarray(logits, np.float64)
    if where is not None:
        x = np.where(where, x, -INF)
    m = np.max(x)
    p = np.exp(x - m) / np.sum(np.exp(x - m))
    return -np.log(p[label]), p - np.eye(len(x))[label]


@pytest.mark.parametrize(
    ("logits", "label", "where", "value", "grad"),
    [e[1:] for e in EDGES],
    ids=[e[0] for e in EDGES],
)
def test_edge_table(logits, label, where, value, grad):
    x = jnp.array(logits, jnp.float32)
    w = None if where is None else jnp.array(where)
    t = jax.nn.one_hot(label, len(logits))
    rtol = 2e-6
    if value == "tiny":
        # exact for the float32 input: loss = log1p(2 e^-x0) ~ 2e-30, gradient -(1 - p0), p1, p2.
        # kappa = |x0| q0 + ... ~ 70 * loss, so 4 condition-scaled ulps allow 4 * 2^-24 * 71.
        e = math.exp(-float(np.float32(logits[0])))
        value, grad, rtol = 2 * e, [-2 * e, e, e], 4 * 2**-24 * 71
    elif value is None:
        value, grad_ref = _expected(logits, label, where)
        grad = grad if grad is not None else grad_ref
    int_fn = lambda v: jaxce.softmax_cross_entropy_with_integer_labels(v, label, where=w)  # noqa: E731
    soft_fn = lambda v: jaxce.softmax_cross_entropy(v, t, where=w)  # noqa: E731
    for fn in (int_fn, soft_fn):
        np.testing.assert_allclose(float(fn(x)), value, rtol=rtol)
        g = jax.grad(fn)(x)
        if grad is None:
            assert np.all(np.isfinite(g))
        else:
            np.testing.assert_allclose(g, grad, rtol=rtol, atol=1e-37)


def test_soft_labels_with_neg_inf_logits_optax_896():
    """optax #896: softmax_cross_entropy is NaN for a -inf logit with a zero label."""
    x = jnp.array([[-INF, 0.0, 0.0], [-INF, 1.0, -INF]])
    t = jnp.array([[0.0, 0.5, 0.5], [0.0, 1.0, 0.0]])
    assert np.isnan(optax.softmax_cross_entropy(x, t)[0])
    with jax.debug_nans(True):
        v = jaxce.softmax_cross_entropy(x, t)
        gx, gt = jax.jit(jax.grad(lambda a, b: jnp.sum(jaxce.softmax_cross_entropy(a, b)), (0, 1)))(
            x, t
        )
    np.testing.assert_allclose(v, [math.log(2.0), 0.0], rtol=1e-6)
    np.testing.assert_allclose(gx, [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)
    # d/dlabels = -log p, and 0 for the absent classes (zero target, zero probability)
    np.testing.assert_allclose(gt, [[0.0, math.log(2.0), math.log(2.0)], [0.0, 0.0, 0.0]], 1e-6)


def test_confident_correct_gradient_is_relative_accurate():
    """The correct-class gradient -(1 - p_y) is exact even when it is far below float32 eps.

    The bound is 4 condition-scaled ulps: kappa = |x_y| (1 - p_y) + ... ~ 40 q here.
    """
    x = jnp.array([40.0, 0.0, -2.0], jnp.float32)
    q = math.exp(-40.0) + math.exp(-42.0)
    rtol = 4 * 2**-24 * 41
    for fn in (
        lambda v: jaxce.softmax_cross_entropy_with_integer_labels(v, 0),
        lambda v: jaxce.softmax_cross_entropy(v, jnp.array([1.0, 0.0, 0.0])),
    ):
        np.testing.assert_allclose(float(fn(x)), q, rtol=rtol)  # log1p(q) ~ q
        np.testing.assert_allclose(float(jax.grad(fn)(x)[0]), -q, rtol=rtol)
    assert float(optax.softmax_cross_entropy_with_integer_labels(x, 0)) == 0.0


def test_smoothed_labels_argmax_gradient():
    """At the arg-max, T p - t = (T - t) - T(1 - p): accurate when t is close to T p."""
    x = jnp.array([30.0, 0.0, 0.0, 0.0], jnp.float32)
    t = jnp.array([0.97, 0.01, 0.01, 0.01], jnp.float32)
    g = jax.grad(jaxce.softmax_cross_entropy)(x, t)
    q = 3 * math.exp(-30.0) / (1 + 3 * math.exp(-30.0))
    t0 = float(t[0])
    np.testing.assert_allclose(float(g[0]), (1.0 - t0) - q, rtol=1e-6)


# --------------------------------------------------------------------------------------------
# Consistency: integer == one-hot; where == boolean indexing; axis == moveaxis; == optax
# --------------------------------------------------------------------------------------------


def test_integer_equals_one_hot_values_and_gradients():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 11)) * 5, jnp.float32)
    y = jnp.asarray(rng.integers(0, 11, size=16))
    t = jax.nn.one_hot(y, 11)
    f_int = lambda v: jaxce.softmax_cross_entropy_with_integer_labels(v, y)  # noqa: E731
    f_soft = lambda v: jaxce.softmax_cross_entropy(v, t)  # noqa: E731
    np.testing.assert_allclose(f_int(x), f_soft(x), rtol=2e-6)
    g1 = jax.grad(lambda v: jnp.sum(f_int(v)))(x)
    g2 = jax.grad(lambda v: jnp.sum(f_soft(v)))(x)
    np.testing.assert_allclose(g1, g2, rtol=2e-6, atol=1e-8)


@pytest.mark.parametrize("fn_name", ["soft", "int"])
def test_where_equals_boolean_indexing(fn_name):
    rng = np.random.default_rng(1)
    x = rng.normal(size=9).astype(np.float32)
    w = np.array([1, 1, 0, 1, 0, 1, 1, 0, 1], bool)
    if fn_name == "soft":
        t = rng.dirichlet(np.ones(9)).astype(np.float32)
        a = jaxce.softmax_cross_entropy(x, t, where=w)
        b = jaxce.softmax_cross_entropy(x[w], t[w])
        ga = jax.grad(jaxce.softmax_cross_entropy)(x, t, where=w)
        gb = jax.grad(jaxce.softmax_cross_entropy)(x[w], t[w])
    else:
        a = jaxce.softmax_cross_entropy_with_integer_labels(x, 3, where=w)
        b = jaxce.softmax_cross_entropy_with_integer_labels(x[w], 2)
        ga = jax.grad(jaxce.softmax_cross_entropy_with_integer_labels)(x, 3, where=w)
        gb = jax.grad(jaxce.softmax_cross_entropy_with_integer_labels)(x[w], 2)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_allclose(ga[w], gb, rtol=1e-6, atol=1e-8)
    assert np.all(ga[~w] == 0)


def test_per_example_where():
    x = jnp.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    t = jax.nn.one_hot(jnp.array([0, 1]), 3)
    w = jnp.array([True, False])
    out = jaxce.softmax_cross_entropy(x, t, where=w)
    assert float(out[1]) == 0.0
    np.testing.assert_allclose(out[0], jaxce.softmax_cross_entropy(x[0], t[0]), rtol=1e-6)
    out_i = jaxce.softmax_cross_entropy_with_integer_labels(x, jnp.array([0, 1]), where=w)
    np.testing.assert_allclose(out_i, out, rtol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -2])
def test_axis_equals_moveaxis(axis):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    t = rng.dirichlet(np.ones(x.shape[axis]), size=np.moveaxis(x, axis, -1).shape[:-1])
    t = np.moveaxis(t, -1, axis).astype(np.float32)
    np.testing.assert_allclose(
        jaxce.softmax_cross_entropy(x, t, axis=axis),
        jaxce.softmax_cross_entropy(np.moveaxis(x, axis, -1), np.moveaxis(t, axis, -1)),
        rtol=1e-6,
    )
    y = rng.integers(0, x.shape[axis], size=np.moveaxis(x, axis, -1).shape[:-1])
    np.testing.assert_allclose(
        jaxce.softmax_cross_entropy_with_integer_labels(x, y, axis=axis),
        jaxce.softmax_cross_entropy_with_integer_labels(np.moveaxis(x, axis, -1), y),
        rtol=1e-6,
    )


def test_tuple_axis_flat_index_order_matches_optax():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    y = rng.integers(0, 15, size=(2, 4))
    for axis in [(1, 3), (3, 1)]:
        np.testing.assert_allclose(
            jaxce.softmax_cross_entropy_with_integer_labels(x, y, axis=axis),
            optax.softmax_cross_entropy_with_integer_labels(x, y, axis=axis),
            rtol=1e-6,
        )


def test_soft_label_axis_none_reduces_everything():
    x = np.random.default_rng(4).normal(size=(3, 4)).astype(np.float32)
    t = np.full((3, 4), 1 / 12, np.float32)
    out = jaxce.softmax_cross_entropy(x, t, axis=None)
    assert out.shape == ()
    np.testing.assert_allclose(out, optax.softmax_cross_entropy(x, t, axis=None), rtol=1e-6)


@pytest.mark.parametrize("scale", [0.01, 1.0, 10.0])
def test_matches_optax_on_ordinary_inputs(scale):
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(32, 10)) * scale).astype(np.float32)
    t = rng.dirichlet(np.ones(10), size=32).astype(np.float32)
    y = rng.integers(0, 10, size=32)
    pairs = [
        (jaxce.softmax_cross_entropy, optax.softmax_cross_entropy, (x, t)),
        (jaxce.safe_softmax_cross_entropy, optax.safe_softmax_cross_entropy, (x, t)),
        (
            jaxce.softmax_cross_entropy_with_integer_labels,
            optax.softmax_cross_entropy_with_integer_labels,
            (x, y),
        ),
    ]
    for ours, theirs, args in pairs:
        np.testing.assert_allclose(ours(*args), theirs(*args), rtol=3e-6, atol=1e-6)
        g1 = jax.grad(lambda v, f=ours, a=args: jnp.sum(f(v, a[1])))(x)
        g2 = jax.grad(lambda v, f=theirs, a=args: jnp.sum(f(v, a[1])))(x)
        np.testing.assert_allclose(g1, g2, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # second derivatives: tests/test_common.py and test_hessian_* in the default run
@pytest.mark.usefixtures("x64")
def test_check_grads_order_2_both_arguments():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(3, 5)))
    t = jnp.asarray(rng.dirichlet(np.ones(5), size=3))
    check_grads(jaxce.softmax_cross_entropy, (x, t), order=2, rtol=1e-4)
    check_grads(
        lambda v: jaxce.softmax_cross_entropy_with_integer_labels(v, jnp.array([0, 4, 2])),
        (x,),
        order=2,
        rtol=1e-4,
    )


@pytest.mark.usefixtures("x64")
def test_hessian_is_T_diag_p_minus_pp():
    x = jnp.array([1.0, 1.0, -0.5, 2.0])
    t = jnp.array([0.1, 0.2, 0.3, 0.6])  # T = 1.2: unnormalized targets scale the Hessian
    p = jax.nn.softmax(x)
    expect = 1.2 * (jnp.diag(p) - jnp.outer(p, p))
    np.testing.assert_allclose(jax.hessian(jaxce.softmax_cross_entropy)(x, t), expect, atol=1e-12)
    # mixed second derivative d2/dx dt_k = p - e_k
    mixed = jax.jacfwd(jax.grad(jaxce.softmax_cross_entropy), argnums=1)(x, t)
    np.testing.assert_allclose(mixed, p[:, None] - jnp.eye(4), atol=1e-12)


# --------------------------------------------------------------------------------------------
# Labels out of range: never a silently wrong number (optax wraps -1, gives NaN for >= C)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", [-1, 3, -100, 1000])
def test_out_of_range_label_is_nan_under_jit_and_an_error_eagerly(label):
    """optax wraps -1 to the last class; jaxce never picks a logit for a label that has none."""
    x = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    y = jnp.array([label, 1])
    fn = jaxce.softmax_cross_entropy_with_integer_labels
    out = jax.jit(fn)(x, y)
    assert np.isnan(out[0])
    assert np.isfinite(out[1])
    g = jax.jit(jax.grad(lambda v, w: jnp.sum(fn(v, w))))(x, y)
    assert np.all(np.isnan(g[0]))
    assert np.all(np.isfinite(g[1]))
    with pytest.raises(ValueError, match=rf"`labels` holds {label} at position \(0,\)"):
        fn(x, y)


# --------------------------------------------------------------------------------------------
# Bad input: trace-time errors naming the argument, what it got and what was expected
# --------------------------------------------------------------------------------------------


def test_bad_input_messages():
    x = jnp.zeros((4, 3))
    with pytest.raises(TypeError, match=r"`logits` must be a floating-point.*int32"):
        jaxce.softmax_cross_entropy(jnp.zeros((4, 3), jnp.int32), x)
    with pytest.raises(TypeError, match=r"`labels` must hold integer class indices.*float32"):
        jaxce.softmax_cross_entropy_with_integer_labels(x, jnp.zeros(4))
    with pytest.raises(ValueError, match=r"`labels` has shape \(3,\).*expects labels of shape"):
        jaxce.softmax_cross_entropy_with_integer_labels(x, jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match=r"`labels` has shape \(4,\).*same number of dimensions"):
        # (4,) against (4, 3): numpy would broadcast it along the class axis when batch == C
        jaxce.softmax_cross_entropy(jnp.zeros((4, 4)), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"`labels` has shape \(4, 2\)"):
        jaxce.softmax_cross_entropy(x, jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"`axis`=2 is out of range"):
        jaxce.softmax_cross_entropy(x, x, axis=2)
    with pytest.raises(TypeError, match=r"`axis` must be an int"):
        jaxce.softmax_cross_entropy(x, x, axis=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`where` has shape \(2,\)"):
        jaxce.softmax_cross_entropy(x, x, where=jnp.ones(2, bool))
    with pytest.raises(TypeError, match=r"`where` must be a boolean mask"):
        jaxce.softmax_cross_entropy(x, x, where=jnp.ones((4, 3)))


def test_errors_raise_at_trace_time_under_jit():
    f = jax.jit(jaxce.softmax_cross_entropy_with_integer_labels)
    with pytest.raises(TypeError, match="`labels`"):
        f(jnp.zeros((2, 3)), jnp.zeros(2))


def test_subnormal_bfloat16_label_on_zero_probability_class_is_not_nan():
    """A bfloat16 label of ~9e-41 (subnormal once upcast) on a class of probability 0, under
    jit: XLA:CPU flushed it in the product but not in the ``== 0`` test, so the term came back
    as 0 * inf = NaN. Found by ``python -m jaxce --dtype bfloat16`` on the grid row below."""
    from jaxce._grid import softmax_grid

    (batch,) = [b for b in softmax_grid(rows=1) if b.name == "+inf, label on it V=10000"]
    x = jnp.asarray(batch.x, jnp.bfloat16)
    t = jnp.asarray(batch.soft["sparse-dirichlet"], jnp.bfloat16)
    t_np = np.asarray(t, np.float32)  # numpy: XLA would flush the subnormal in the test too
    assert t_np[t_np > 0].min() < np.finfo(np.float32).tiny
    for fn in (jaxce.softmax_cross_entropy, lambda a, b: jaxce.kl_divergence(a, b)):
        value = jax.jit(fn)(x if fn is jaxce.softmax_cross_entropy else jaxce.log_softmax(x), t)
        assert value.tolist() == [INF]  # positive targets on classes of probability 0
