"""The softmax family of issue 3: keyword options of the two softmax losses (weights,
label_smoothing, z_loss, logit_soft_cap, temperature, ignore_index), smooth_labels,
poly_loss_cross_entropy and softmax_focal_loss.

Accuracy is scored in condition-scaled ulps against mpmath (shared/NUMERICS.md) with the
project's scorer (tests/test_accuracy.py); the worst errors are printed (run with ``-s``).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.test_util import check_grads

import jaxce
from jaxce import _reference as ref
from jaxce._grid import softmax_grid

pytest.importorskip("mpmath")

_spec = importlib.util.spec_from_file_location(
    "jaxce_test_accuracy", pathlib.Path(__file__).parent / "test_accuracy.py"
)
assert _spec is not None
assert _spec.loader is not None
_acc = importlib.util.module_from_spec(_spec)
sys.modules.setdefault(_spec.name, _acc)  # dataclasses look their module up there
_spec.loader.exec_module(_acc)
_errors, _cast = _acc._errors, _acc._cast

INF = math.inf
W3 = np.array([0.5, 2.0, 1.5])
OPTIONS = {
    "weights": {"weights": W3},
    "label_smoothing": {"label_smoothing": 0.1},
    "weights+label_smoothing": {"weights": W3, "label_smoothing": 0.2},
    "z_loss": {"z_loss": 1e-3},
    "temperature": {"temperature": 2.5},
    "logit_soft_cap": {"logit_soft_cap": 3.0},
    "all": {
        "weights": W3,
        "label_smoothing": 0.1,
        "z_loss": 1e-2,
        "temperature": 0.7,
        "logit_soft_cap": 5.0,
    },
}
ROWS = [
    ([2.0, 0.0, -1.0], 1, None),
    ([-INF, 0.0, 3.0], 2, None),
    ([-INF, 0.0, 3.0], 0, None),
    ([INF, 0.0, 1.0], 0, None),
    ([1e4, -1e4, 0.0], 1, None),
    ([30.0, 0.0, -5.0], 0, None),
    ([5.0, 0.0, 1.0], 1, [True, False, True]),
    ([5.0, 0.0, 1.0], 1, [False, False, False]),
]


def _kw(opts, dtype=jnp.float32):
    return {k: (jnp.asarray(v, dtype) if k == "weights" else v) for k, v in opts.items()}


# --------------------------------------------------------------------------------------------
# 1. Keyword options of the two softmax losses
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize(("logits", "label", "where"), ROWS)
def test_options_integer_labels_equal_one_hot_soft_labels(option, logits, label, where):
    kw = _kw(OPTIONS[option])
    x = jnp.array(logits, jnp.float32)
    w = None if where is None else jnp.array(where)
    t = jax.nn.one_hot(label, 3)
    f_int = lambda a: jaxce.softmax_cross_entropy_with_integer_labels(a, label, where=w, **kw)  # noqa: E731
    f_soft = lambda a: jaxce.softmax_cross_entropy(a, t, where=w, **kw)  # noqa: E731
    # scale_logits builds a NaN constant eagerly (jaxce._transforms), which jax.debug_nans
    # reports; the other options run under it.
    scaled = "temperature" in kw or "logit_soft_cap" in kw
    with jax.debug_nans(not scaled):
        vi, gi = jax.value_and_grad(f_int)(x)
        vs, gs = jax.value_and_grad(f_soft)(x)
    np.testing.assert_allclose(float(vi), float(vs), rtol=3e-6, atol=1e-30)
    np.testing.assert_allclose(np.asarray(gi), np.asarray(gs), rtol=3e-6, atol=1e-7)
    assert np.all(np.isfinite(np.asarray(gi)))


def test_options_at_defaults_trace_the_plain_path_unchanged():
    from jaxce._softmax import _integer_ce_core, _soft_ce_core

    x = jnp.ones((2, 3))
    t = jnp.full((2, 3), 1 / 3)
    y = jnp.array([0, 2])
    explicit = {
        "weights": None,
        "label_smoothing": 0.0,
        "z_loss": 0.0,
        "logit_soft_cap": None,
        "temperature": None,
    }

    def top(f):
        """The jitted cores called at the top level (the eager argument checks on the
        closed-over labels also show up in the trace; they are the same on both paths)."""
        eqns = jax.make_jaxpr(f)(x).jaxpr.eqns
        return [(e.primitive.name, e.params.get("name")) for e in eqns if "name" in e.params]

    soft = lambda a: jaxce.softmax_cross_entropy(a, t, **explicit)  # noqa: E731
    assert top(soft) == [("jit", "_soft_ce_core")]
    assert top(lambda a: _soft_ce_core(a, t, None, (1,), True)) == top(soft)
    integer = lambda a: jaxce.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        a, y, ignore_index=None, **explicit
    )
    assert top(integer) == [("jit", "_integer_ce_core")]
    assert top(lambda a: _integer_ce_core(a, y, None, (1,))) == top(integer)
    # and an option that is on does change the trace (the comparison can fail)
    assert top(lambda a: jaxce.softmax_cross_entropy(a, t, z_loss=1e-4)) != top(soft)


def test_integer_smoothing_and_weights_match_pytorch_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4)) * 3
    y = rng.integers(0, 4, size=6)
    w = np.array([0.2, 1.0, 3.0, 0.7])
    eps = 0.15
    lp = x - np.log(np.sum(np.exp(x), axis=1, keepdims=True))
    expected = (1 - eps) * w[y] * -lp[np.arange(6), y] + eps / 4 * np.sum(w * -lp, axis=1)
    got = jaxce.softmax_cross_entropy_with_integer_labels(
        jnp.asarray(x, jnp.float32), jnp.asarray(y), weights=jnp.asarray(w), label_smoothing=eps
    )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-6)


def test_masked_target_drops_only_the_one_minus_eps_part():
    x = jnp.array([5.0, 0.0, 1.0])
    w = jnp.array([True, False, True])
    eps = 0.3
    got = float(jaxce.softmax_cross_entropy_with_integer_labels(x, 1, where=w, label_smoothing=eps))
    lse = np.log(np.exp(5.0) + np.exp(1.0))
    expected = eps / 2 * ((lse - 5.0) + (lse - 1.0))
    np.testing.assert_allclose(got, expected, rtol=2e-6)


def test_z_loss_gradient_forward_and_reverse_mode():
    """2·z·lse·p in forward mode (jvp) and reverse mode (grad); T5X's custom_vjp has no jvp."""
    x = jnp.array([[3.0, -1.0, 0.5, 2.0]])
    z = 0.05
    f = lambda a: jnp.sum(jaxce.softmax_cross_entropy(a, jnp.zeros_like(a), z_loss=z))  # noqa: E731
    lse = float(jax.nn.logsumexp(x))
    p = np.asarray(jax.nn.softmax(x))
    expected = 2 * z * lse * p
    np.testing.assert_allclose(np.asarray(jax.grad(f)(x)), expected, rtol=2e-6)
    fwd = jax.jacfwd(f)(x)
    np.testing.assert_allclose(np.asarray(fwd), expected, rtol=2e-6)
    h = jax.hessian(f)(x)
    assert np.all(np.isfinite(np.asarray(h)))
    check_grads(f, (x,), order=2, modes=("fwd", "rev"))


def test_z_loss_of_an_empty_row_is_zero_not_inf_squared():
    x = jnp.array([[-INF, -INF, -INF], [1.0, 2.0, 3.0]])
    y = jnp.array([0, 1])
    f = lambda a: jnp.sum(  # noqa: E731
        jaxce.softmax_cross_entropy_with_integer_labels(
            a, y, where=jnp.array([[False] * 3, [True] * 3]), z_loss=1.0
        )
    )
    with jax.debug_nans(True):
        v, g = jax.value_and_grad(f)(x)
    lse = float(jax.nn.logsumexp(x[1]))
    np.testing.assert_allclose(float(v), lse - 2.0 + lse**2, rtol=2e-6)
    np.testing.assert_array_equal(np.asarray(g[0]), 0.0)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"z_loss": -1.0}, "z_loss"),
        ({"label_smoothing": 1.5}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"weights": jnp.array([1.0, -2.0, 1.0])}, "weights"),
        ({"temperature": 0.0}, "temperature"),
    ],
)
def test_bad_option_values_error_eagerly_and_nan_under_jit(kw, name):
    x = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = jnp.array([1, 0])
    with pytest.raises(ValueError, match=f"`{name}` holds"):
        jaxce.softmax_cross_entropy_with_integer_labels(x, y, **kw)
    with pytest.raises(ValueError, match=f"`{name}` holds"):
        jaxce.softmax_cross_entropy(x, jax.nn.one_hot(y, 3), **kw)
    out = jax.jit(lambda k: jaxce.softmax_cross_entropy_with_integer_labels(x, y, **k))(kw)
    if name == "weights":
        # label 1 uses the negative weight; label 0 does not (no smoothing)
        assert np.isnan(np.asarray(out)[0])
        assert not np.isnan(np.asarray(out)[1])
    else:
        assert np.all(np.isnan(np.asarray(out)))


def test_bad_option_arguments_name_themselves():
    x = jnp.zeros((2, 3))
    y = jnp.array([0, 1])
    with pytest.raises(ValueError, match="`weights` has shape"):
        jaxce.softmax_cross_entropy_with_integer_labels(x, y, weights=jnp.ones(4))
    with pytest.raises(TypeError, match="`z_loss` must be a real scalar"):
        jaxce.softmax_cross_entropy(x, x, z_loss=jnp.ones(2))
    with pytest.raises(TypeError, match="`ignore_index` must be an int"):
        jaxce.softmax_cross_entropy_with_integer_labels(x, y, ignore_index=0.5)
    with pytest.raises(TypeError, match="`label_smoothing` must be a real scalar"):
        jaxce.softmax_cross_entropy(x, x, label_smoothing="0.1")


def test_ignore_index_zero_loss_zero_gradient_and_exempt_from_range_check():
    x = jnp.array([[jnp.nan, 1.0, 2.0], [INF, -INF, 0.0], [1.0, 2.0, 3.0]])
    y = jnp.array([-100, -100, 2])
    f = lambda a: jaxce.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        a, y, ignore_index=-100, label_smoothing=0.1, z_loss=1e-3
    )
    v = f(x)  # eager: -100 would fail the range check if it were not ignored
    g = jax.grad(lambda a: jnp.sum(f(a)))(x)
    np.testing.assert_array_equal(np.asarray(v[:2]), 0.0)
    np.testing.assert_array_equal(np.asarray(g[:2]), 0.0)
    assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(ValueError, match="`labels` holds -100"):
        jaxce.softmax_cross_entropy_with_integer_labels(x, y)
    # an in-range class can be the ignored one, as in PyTorch
    v2 = jaxce.softmax_cross_entropy_with_integer_labels(x[2:], y[2:], ignore_index=2)
    assert float(v2[0]) == 0.0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_options_16_bit_inputs_compute_in_float32(dtype):
    x = jnp.array([[1.0, 2.0, -3.0]], dtype)
    kw = _kw(OPTIONS["all"], dtype)
    out = jaxce.softmax_cross_entropy_with_integer_labels(x, jnp.array([1]), **kw)
    assert out.dtype == jnp.float32
    ref32 = jaxce.softmax_cross_entropy_with_integer_labels(
        x.astype(jnp.float32), jnp.array([1]), **_kw(OPTIONS["all"])
    )
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref32), rtol=1e-6)
    g = jax.grad(lambda a: jnp.sum(jaxce.softmax_cross_entropy(a, a * 0 + 0.25, **kw)))(x)
    assert g.dtype == dtype


def test_options_jit_vmap_jvp_hessian():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, size=4))
    kw = _kw(OPTIONS["all"])
    f = lambda a, b: jaxce.softmax_cross_entropy_with_integer_labels(a, b, **kw)  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.jit(f)(x, y)), np.asarray(f(x, y)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(f)(x, y)), np.asarray(f(x, y)), rtol=1e-6)
    total = lambda a: jnp.sum(f(a, y))  # noqa: E731
    d = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    _, tangent = jax.jvp(total, (x,), (d,))
    np.testing.assert_allclose(float(tangent), float(jnp.sum(jax.grad(total)(x) * d)), rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(jax.hessian(total)(x))))


def _options_reference(x64, y, w, eps, z, where):
    """mpmath: soft CE with the label w·((1-ε)·one-hot + ε/C_row), plus z·lse² (value, grad, κ)."""
    v = x64.shape[0]
    act = np.ones(v, bool) if where is None else np.asarray(where)
    t = np.zeros(v)
    if act[y]:
        t[y] = 1.0 - eps
    t = np.where(act, t + eps / max(int(act.sum()), 1), 0.0) * w
    r = ref.mp_softmax_cross_entropy(x64, t, where)
    if z == 0:
        return r
    lse = ref.mp_logsumexp(x64, where)
    if lse.value == -INF:
        return r
    value = r.value + z * lse.value**2
    grad = [g + 2 * z * lse.value * p for g, p in zip(r.grad, lse.grad, strict=True)]
    kappa = r.kappa + 2 * z * abs(lse.value) * lse.kappa
    kg = [
        k + 2 * z * (p * lse.kappa + abs(lse.value) * kp)
        for k, p, kp in zip(r.kappa_grad, lse.grad, lse.kappa_grad, strict=True)
    ]
    return ref.Ref(value, grad, kappa, kg)


GRID_OPTIONS = {
    "weights": (np.array([0.5, 2.0, 1.5]), 0.0, 0.0),
    "label_smoothing": (None, 0.1, 0.0),
    "weights+label_smoothing": (np.array([0.5, 2.0, 1.5]), 0.2, 0.0),
    "z_loss": (None, 0.0, 1e-3),
    "weights+label_smoothing+z_loss": (np.array([0.5, 2.0, 1.5]), 0.1, 1e-2),
}
WORST: dict[str, tuple[float, float]] = {}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("option", list(GRID_OPTIONS))
@pytest.mark.parametrize("fn", ["integer", "soft"])
def test_options_accuracy_vs_mpmath(fn, option, dtype, x64):
    """Condition-scaled ulps on the hard grid (V = 3), value <= 4 and gradient <= 8."""
    wv, eps, z = GRID_OPTIONS[option]
    worst_v = worst_g = 0.0
    for batch in softmax_grid(classes=(3,), rows=2, seed=0):
        xs = _cast(batch.x, dtype)
        if np.any(np.isposinf(xs)) or np.any(np.isnan(xs)):
            continue  # +inf rows: value +inf or exact; covered by the edge tests
        w = np.ones(3) if wv is None else wv
        kw = {"label_smoothing": eps, "z_loss": z}
        if wv is not None:
            kw["weights"] = jnp.asarray(wv, dtype)
        where = None if batch.where is None else jnp.asarray(batch.where)
        x = jnp.asarray(xs, dtype)
        y = jnp.asarray(batch.y)
        t = jax.nn.one_hot(y, 3, dtype=dtype)
        if fn == "integer":
            f = lambda a, y=y, where=where, kw=kw: (  # noqa: E731
                jaxce.softmax_cross_entropy_with_integer_labels(a, y, where=where, **kw)
            )
        else:
            f = lambda a, t=t, where=where, kw=kw: (  # noqa: E731
                jaxce.softmax_cross_entropy(a, t, where=where, **kw)
            )
        value, vjp = jax.vjp(f, x)
        (grad,) = vjp(jnp.ones_like(value))
        for i in range(xs.shape[0]):
            wr = None if batch.where is None else batch.where[i]
            r = _options_reference(xs[i], int(batch.y[i]), w, eps, z, wr)
            worst_v = max(worst_v, float(np.max(_errors(value[i], r.value, r.kappa, dtype))))
            worst_g = max(worst_g, float(np.max(_errors(grad[i], r.grad, r.kappa_grad, dtype))))
    WORST[f"{fn} {option} {dtype}"] = (worst_v, worst_g)
    print(f"{fn} {option} {dtype}: value {worst_v:.3g}, grad {worst_g:.3g}")
    assert worst_v <= 4.0
    assert worst_g <= 8.0


# --------------------------------------------------------------------------------------------
# 2. smooth_labels
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


# --------------------------------------------------------------------------------------------
# 3. poly_loss_cross_entropy
# --------------------------------------------------------------------------------------------


def test_poly_loss_confident_correct_complement_is_not_cancelled():
    """1 - p_y = 1e-30 must come out as 1e-30: loss (1 + ε)·1e-30, not 0."""
    gap = -math.log(1e-30 / 2)
    x = jnp.array([gap, 0.0, 0.0], jnp.float32)
    t = jnp.array([1.0, 0.0, 0.0])
    q = 2 * math.exp(-float(np.float32(gap)))
    for eps in (2.0, 0.0, 5.45):
        got = float(jaxce.poly_loss_cross_entropy(x, t, epsilon=eps))
        np.testing.assert_allclose(got, (1 + eps) * q, rtol=4 * 2**-24 * 72)
    theirs = float(optax.losses.poly_loss_cross_entropy(x, t))
    assert theirs == 0.0
    g = jax.grad(lambda a: jaxce.poly_loss_cross_entropy(a, t))(x)
    np.testing.assert_allclose(np.asarray(g), [-3 * q, 1.5 * q, 1.5 * q], rtol=1e-5)


@pytest.mark.parametrize(
    ("logits", "labels", "where"),
    [
        ([-INF, 0.0, 3.0], [0.0, 0.5, 0.5], None),
        ([INF, 0.0, 1.0], [1.0, 0.0, 0.0], None),
        ([INF, INF, 1.0], [0.5, 0.5, 0.0], None),
        ([5.0, 0.0, 1.0], [0.2, 0.3, 0.5], [True, False, True]),
        ([5.0, 0.0, 1.0], [0.2, 0.3, 0.5], [False, False, False]),
        ([1e4, -1e4, 0.0], [0.0, 1.0, 0.0], None),
    ],
)
@pytest.mark.parametrize("fn", ["poly", "focal0", "focal0.5", "focal2"])
def test_edge_rows_have_finite_gradients(fn, logits, labels, where):
    x = jnp.array(logits)
    t = jnp.array(labels)
    w = None if where is None else jnp.array(where)
    if fn == "poly":
        f = lambda a: jaxce.poly_loss_cross_entropy(a, t, where=w)  # noqa: E731
    else:
        g_ = float(fn[5:])
        f = lambda a: jaxce.softmax_focal_loss(a, t, gamma=g_, where=w)  # noqa: E731
    with jax.debug_nans(True):
        v, g = jax.value_and_grad(f)(x)
    assert not np.isnan(float(v))
    assert np.all(np.isfinite(np.asarray(g)))
    if where is not None:
        assert np.all(np.asarray(g)[~np.asarray(where)] == 0)


def test_poly_loss_matches_optax_on_ordinary_inputs_and_mask():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(5, 6)) * 2, jnp.float32)
    t = jnp.asarray(rng.dirichlet(np.ones(6), size=5), jnp.float32)
    w = jnp.asarray(rng.integers(0, 2, size=(5, 6)).astype(bool)).at[:, 0].set(True)
    for eps in (2.0, -1.0, 0.5):
        np.testing.assert_allclose(
            np.asarray(jaxce.poly_loss_cross_entropy(x, t, epsilon=eps, where=w)),
            np.asarray(optax.losses.poly_loss_cross_entropy(x, t, epsilon=eps, where=w)),
            rtol=2e-5,
            atol=1e-6,
        )
    check_grads(lambda a: jaxce.poly_loss_cross_entropy(a, t), (x,), order=2, modes=("rev",))


# --------------------------------------------------------------------------------------------
# 4. softmax_focal_loss
# --------------------------------------------------------------------------------------------


def test_focal_gamma_zero_is_the_weighted_cross_entropy_exactly():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 5)) * 4, jnp.float32).at[0, 0].set(40.0)
    t = jnp.asarray(rng.dirichlet(np.ones(5), size=6), jnp.float32)
    alpha = jnp.array([0.25, 1.0, 2.0, 0.5, 1.0])
    focal = jaxce.softmax_focal_loss(x, t, gamma=0.0, alpha=alpha)
    ce = jaxce.softmax_cross_entropy(x, t, weights=alpha)
    np.testing.assert_array_equal(np.asarray(focal), np.asarray(ce))
    gf = jax.grad(lambda a: jnp.sum(jaxce.softmax_focal_loss(a, t, gamma=0.0, alpha=alpha)))(x)
    gc = jax.grad(lambda a: jnp.sum(jaxce.softmax_cross_entropy(a, t, weights=alpha)))(x)
    np.testing.assert_allclose(np.asarray(gf), np.asarray(gc), rtol=1e-6, atol=1e-7)


def _keras_style_focal(x, t, gamma):
    """Keras 3 CategoricalFocalCrossentropy on logits: softmax, clip to [1e-7, 1 - 1e-7]."""
    p = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(np.sum(-t * (1 - p) ** gamma * np.log(p)))


def test_focal_confident_correct_is_exact_where_keras_clipping_is_not():
    x = np.array([25.0, 2.0, 0.0])
    t = np.array([1.0, 0.0, 0.0])
    r = ref.mp_softmax_focal_loss(x, t, 2.0)
    ours = float(jaxce.softmax_focal_loss(jnp.asarray(x, jnp.float32), jnp.asarray(t)))
    assert _errors(ours, r.value, r.kappa, "float32").max() <= 4.0
    keras = _keras_style_focal(x, t, 2.0)
    assert keras > 1e8 * float(r.value)  # clipping: ~1e-21 instead of 1.6e-30


def test_focal_gradient_checks_and_hessian():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(3, 4)), jnp.float64 if jax.config.jax_enable_x64 else None)
    t = jnp.asarray(rng.dirichlet(np.ones(4), size=3), x.dtype)
    for gamma in (0.5, 1.0, 2.0):
        f = lambda a, b, g=gamma: jaxce.softmax_focal_loss(a, b, gamma=g)  # noqa: E731
        with jaxce.target_checks(False):
            check_grads(f, (x, t), order=1, modes=("fwd", "rev"), atol=2e-2, rtol=2e-2)
        assert np.all(np.isfinite(np.asarray(jax.hessian(lambda a, f=f: jnp.sum(f(a, t)))(x))))
    gg = jax.grad(lambda g: jnp.sum(jaxce.softmax_focal_loss(x, t, gamma=g)))(2.0)
    h = 1e-3
    fd = (
        jnp.sum(jaxce.softmax_focal_loss(x, t, gamma=2.0 + h))
        - jnp.sum(jaxce.softmax_focal_loss(x, t, gamma=2.0 - h))
    ) / (2 * h)
    np.testing.assert_allclose(float(gg), float(fd), rtol=1e-3)


def test_focal_errors_and_value_checks():
    x = jnp.zeros((2, 3))
    t = jnp.full((2, 3), 1 / 3)
    with pytest.raises(ValueError, match="`gamma` holds -1"):
        jaxce.softmax_focal_loss(x, t, gamma=-1.0)
    with pytest.raises(ValueError, match=r"`alpha` holds -0\.5"):
        jaxce.softmax_focal_loss(x, t, alpha=jnp.array([1.0, -0.5, 1.0]))
    with pytest.raises(ValueError, match="`alpha` has shape"):
        jaxce.softmax_focal_loss(x, t, alpha=jnp.ones(4))
    with pytest.raises(ValueError, match="`labels` holds 2"):
        jaxce.softmax_focal_loss(x, t * 6)
    out = jax.jit(lambda g: jaxce.softmax_focal_loss(x, t, gamma=g))(-1.0)
    assert np.all(np.isnan(np.asarray(out)))
    assert jaxce.softmax_focal_loss(x.astype(jnp.bfloat16), t).dtype == jnp.float32
    np.testing.assert_allclose(
        np.asarray(jaxce.softmax_focal_loss(x, t, alpha=0.25)),
        0.25 * np.asarray(jaxce.softmax_focal_loss(x, t)),
        rtol=1e-6,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("fn", "param"), [("focal", 0.5), ("focal", 2.0), ("poly", 2.0)])
def test_focal_and_poly_accuracy_vs_mpmath(fn, param, dtype, x64):
    """Condition-scaled ulps on the hard grid (V = 3 and 10, finite rows), one-hot and Dirichlet
    labels: value <= 4, gradient <= 8."""
    worst_v = worst_g = 0.0
    where_v = where_g = ""
    for batch in softmax_grid(classes=(3, 10), rows=1, seed=0):
        if batch.where is not None:
            continue
        xs = _cast(batch.x, dtype)
        if not np.all(np.isfinite(xs) | np.isneginf(xs)):
            continue
        for kind in ("one-hot", "dirichlet"):
            ts = _cast(batch.soft[kind], dtype)
            if np.any((ts > 0) & np.isneginf(xs)):
                continue
            x, t = jnp.asarray(xs, dtype), jnp.asarray(ts, dtype)
            if fn == "focal":
                f = lambda a, t=t: jaxce.softmax_focal_loss(a, t, gamma=param)  # noqa: E731
            else:
                f = lambda a, t=t: jaxce.poly_loss_cross_entropy(a, t, epsilon=param)  # noqa: E731
            value, vjp = jax.vjp(f, x)
            (grad,) = vjp(jnp.ones_like(value))
            for i in range(xs.shape[0]):
                if fn == "focal":
                    r = ref.mp_softmax_focal_loss(xs[i], ts[i], param)
                else:
                    r = ref.mp_poly_loss_cross_entropy(xs[i], ts[i], param)
                ev = float(np.max(_errors(value[i], r.value, r.kappa, dtype)))
                eg = float(np.max(_errors(grad[i], r.grad, r.kappa_grad, dtype)))
                if ev > worst_v:
                    worst_v, where_v = ev, f"{batch.name} {kind} row {i}"
                if eg > worst_g:
                    worst_g, where_g = eg, f"{batch.name} {kind} row {i}"
    print(f"{fn}({param}) {dtype}: value {worst_v:.3g} ({where_v}), grad {worst_g:.3g} ({where_g})")
    assert worst_v <= 4.0, where_v
    assert worst_g <= 8.0, where_g
