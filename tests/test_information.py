"""Information measures from logits: entropy, kl_divergence_with_logits, jensen_shannon_divergence.

The reinforcement-learning case is the point: actions masked with ``-inf`` logits or ``where``
give exact zeros in value, gradient and Hessian (PyTorch #40553, huggingface/trl #7221: NaN).
Accuracy is scored in condition-scaled ulps against mpmath (docs/numerics.md), with the
condition numbers documented in ``jaxce._reference`` (mp_entropy, mp_kl_divergence_with_logits,
mp_jensen_shannon_divergence).
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxce
from jaxce import _reference as ref
from jaxce._grid import softmax_grid
from tests.test_accuracy import Worst, _cast, _errors, bounds

INF = math.inf
NAN = math.nan
LOG2 = math.log(2.0)

ENTROPY = jaxce.entropy
KL = jaxce.kl_divergence_with_logits
JS = jaxce.jensen_shannon_divergence
PAIR_FNS = {"kl_divergence_with_logits": KL, "jensen_shannon_divergence": JS}


def _np_softmax(x, where=None):
    x = np.asarray(x, np.float64)
    if where is not None:
        x = np.where(where, x, -INF)
    m = np.max(x)
    if m == -INF:
        return np.zeros_like(x)
    if m == INF:  # the +inf entries share the mass
        return (x == INF) / np.sum(x == INF)
    e = np.exp(x - m)
    return e / e.sum()


def _xlogy(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(a > 0, a * np.log(np.where(a > 0, b, 1.0)), 0.0)


def _naive_entropy(x):
    p = jax.nn.softmax(x)
    return -jnp.sum(p * jax.nn.log_softmax(x))


# --------------------------------------------------------------------------------------------
# The reinforcement-learning masking case: value, gradient and Hessian, exactly
# --------------------------------------------------------------------------------------------

LEGAL = np.array([True, False, True, True, False])
A_RL = np.array([0.5, -INF, -1.0, 2.0, -INF])  # actions 1 and 4 illegal (-inf logits)
B_RL = np.array([-0.3, -INF, 0.7, 1.1, -INF])


def _dense(a, where=None):
    """The same row with the masked classes dropped: the exact reference for every output."""
    keep = LEGAL if where is None else np.asarray(where)
    return np.asarray(a)[keep], keep


@pytest.mark.parametrize("how", ["-inf logits", "where", "both"])
def test_rl_masked_actions_entropy_exact_value_grad_hessian(how):
    """Masked actions leave no trace: value, gradient and Hessian equal those of the row
    without them (exact zeros on the masked actions), no NaN anywhere (jax.debug_nans)."""
    x = np.where(LEGAL, A_RL, 0.0 if how == "where" else -INF)
    w = None if how == "-inf logits" else jnp.asarray(LEGAL)
    f = functools.partial(ENTROPY, where=w)
    dense = A_RL[LEGAL]
    with jax.debug_nans(True):
        v = f(jnp.asarray(x))
        g = jax.jit(jax.grad(f))(jnp.asarray(x))
        h = jax.jit(jax.hessian(f))(jnp.asarray(x))
    v_d = ENTROPY(jnp.asarray(dense))
    g_d = jax.grad(ENTROPY)(jnp.asarray(dense))
    h_d = jax.hessian(ENTROPY)(jnp.asarray(dense))
    assert float(v) == float(v_d)
    np.testing.assert_array_equal(np.asarray(g)[LEGAL], g_d)
    np.testing.assert_array_equal(np.asarray(g)[~LEGAL], 0.0)
    np.testing.assert_allclose(np.asarray(h)[np.ix_(LEGAL, LEGAL)], h_d, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(h)[~LEGAL], 0.0)
    np.testing.assert_array_equal(np.asarray(h)[:, ~LEGAL], 0.0)
    # And the dense row is right (float64 numpy): H, dH/dx = p(-log p - H).
    p = _np_softmax(dense)
    H = -np.sum(p * np.log(p))
    np.testing.assert_allclose(float(v_d), H, rtol=1e-6)
    np.testing.assert_allclose(g_d, p * (-np.log(p) - H), rtol=1e-5, atol=1e-7)


def test_rl_masked_actions_naive_entropy_is_nan():
    """What jaxce replaces: -sum(softmax * log_softmax) is NaN at a -inf logit, in value and
    gradient (PyTorch #40553, huggingface/trl #7221 in PyTorch; the same 0 · -inf in JAX)."""
    x = jnp.asarray(A_RL)
    assert np.isnan(float(_naive_entropy(x)))
    assert np.all(np.isnan(jax.grad(_naive_entropy)(x)))
    assert np.isfinite(float(ENTROPY(x)))


@pytest.mark.parametrize("name", list(PAIR_FNS))
@pytest.mark.parametrize(
    "how",
    [
        pytest.param("-inf logits", marks=pytest.mark.slow),
        pytest.param("where", marks=pytest.mark.slow),
        "both",
    ],
)
def test_rl_masked_actions_pair_exact_value_grad_hessian(name, how):
    """KL / JS between two policies over the same legal actions: the masked actions contribute
    exact zeros to the value, both gradients and the full Hessian."""
    fn = PAIR_FNS[name]
    fill = 0.0 if how == "where" else -INF
    a, b = np.where(LEGAL, A_RL, fill), np.where(LEGAL, B_RL, fill)
    w = None if how == "-inf logits" else jnp.asarray(LEGAL)

    def f(z):
        return fn(z[:5], z[5:], where=w)

    def f_d(z):
        return fn(z[:3], z[3:])

    z = jnp.asarray(np.concatenate([a, b]))
    z_d = jnp.asarray(np.concatenate([A_RL[LEGAL], B_RL[LEGAL]]))
    with jax.debug_nans(True):
        v, g, h = f(z), jax.jit(jax.grad(f))(z), jax.jit(jax.hessian(f))(z)
    keep = np.concatenate([LEGAL, LEGAL])
    assert float(v) == float(f_d(z_d))
    np.testing.assert_allclose(np.asarray(g)[keep], jax.grad(f_d)(z_d), rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.asarray(g)[~keep], 0.0)
    # The Hessian's reductions run over rows of different length: equal to rounding.
    np.testing.assert_allclose(
        np.asarray(h)[np.ix_(keep, keep)], jax.hessian(f_d)(z_d), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_array_equal(np.asarray(h)[~keep], 0.0)
    np.testing.assert_array_equal(np.asarray(h)[:, ~keep], 0.0)
    # The dense values against float64 numpy.
    p, q = _np_softmax(A_RL[LEGAL]), _np_softmax(B_RL[LEGAL])
    m = (p + q) / 2
    expect = (
        np.sum(p * np.log(p / q))
        if name == "kl_divergence_with_logits"
        else 0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))
    )
    np.testing.assert_allclose(float(v), expect, rtol=2e-6)


def test_rl_action_masked_in_q_only_kl_is_inf_gradient_wrt_q_finite():
    """Documented: KL(P||Q) = +inf when Q forbids an action P can take; d/dq_logits = q - p stays
    finite (and exact); d/dp_logits is the +-inf limit. JS stays finite everywhere."""
    a = jnp.array([0.0, 1.0, -1.0])
    b = jnp.array([0.0, -INF, 0.5])
    v = KL(a, b)
    ga, gb = jax.grad(KL, (0, 1))(a, b)
    p, q = _np_softmax(a), _np_softmax(b)
    assert float(v) == INF
    np.testing.assert_allclose(gb, q - p, rtol=1e-6)
    assert np.all(np.asarray(ga) == [-INF, INF, -INF])
    with jax.debug_nans(True):
        js, (ja, jb) = JS(a, b), jax.grad(JS, (0, 1))(a, b)
        hj = jax.hessian(JS, (0, 1))(a, b)
    assert 0 < float(js) < LOG2
    assert np.all(np.isfinite(ja))
    assert np.all(np.isfinite(jb))
    assert float(jb[1]) == 0.0  # the -inf logit itself gets 0
    assert all(np.all(np.isfinite(hh)) for row in hj for hh in row)


def test_rl_action_masked_in_p_only_kl_is_finite():
    """An action P never takes but Q can: finite KL, its term is 0, d/dq there is q_k."""
    a = jnp.array([0.0, -INF, 0.5])
    b = jnp.array([0.2, 0.1, -0.4])
    with jax.debug_nans(True):
        v = KL(a, b)
        ga, gb = jax.grad(KL, (0, 1))(a, b)
        h = jax.hessian(KL, (0, 1))(a, b)
    p, q = _np_softmax(a), _np_softmax(b)
    np.testing.assert_allclose(float(v), np.sum(_xlogy(p, p) - _xlogy(p, q)), rtol=1e-6)
    assert float(ga[1]) == 0.0
    np.testing.assert_allclose(gb, q - p, rtol=1e-6)
    assert all(np.all(np.isfinite(hh)) for row in h for hh in row)


# --------------------------------------------------------------------------------------------
# Edge tables (as in the docstrings), row by row
# --------------------------------------------------------------------------------------------

# (name, logits, where, value, gradient); None: computed from the dense row in float64.
ENTROPY_EDGES = [
    ("ordinary", [2.0, 0.0, -1.0], None, None, None),
    ("-inf logit", [1.0, -INF, 0.0], None, None, None),
    ("where=False", [1.0, 7.0, 0.0], [True, False, True], None, None),
    ("all -inf", [-INF, -INF, -INF], None, 0.0, [0.0, 0.0, 0.0]),
    ("all masked", [1.0, 2.0, 3.0], [False, False, False], 0.0, [0.0, 0.0, 0.0]),
    ("one +inf", [INF, 0.0, 1.0], None, 0.0, [0.0, 0.0, 0.0]),
    ("two +inf", [INF, INF, 1.0], None, LOG2, [0.0, 0.0, 0.0]),
    ("NaN logit", [NAN, 0.0, 1.0], None, NAN, [NAN, NAN, NAN]),
    ("masked NaN", [NAN, 0.0, 1.0], [False, True, True], None, None),
    ("single class", [3.0], None, 0.0, [0.0]),
]


@pytest.mark.parametrize(
    ("x", "where", "value", "grad"),
    [e[1:] for e in ENTROPY_EDGES],
    ids=[e[0] for e in ENTROPY_EDGES],
)
def test_entropy_edge_table(x, where, value, grad):
    xa = np.asarray(x, np.float64)
    w = None if where is None else np.asarray(where)
    if value is None:
        keep = np.isfinite(xa) if w is None else w & np.isfinite(xa)
        p = _np_softmax(xa[keep])
        value = -np.sum(p * np.log(p))
        grad = np.zeros_like(xa)
        grad[keep] = p * (-np.log(p) - value)
    f = functools.partial(ENTROPY, where=None if w is None else jnp.asarray(w))
    v = float(f(jnp.asarray(xa, jnp.float32)))
    g = np.asarray(jax.grad(f)(jnp.asarray(xa, jnp.float32)))
    np.testing.assert_allclose(v, value, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g, grad, rtol=1e-5, atol=1e-7)
    if not np.isnan(value):
        h = jax.hessian(f)(jnp.asarray(xa, jnp.float32))
        assert np.all(np.isfinite(h))


# (name, a, b, where, kl, js); None: from float64 numpy on the given row.
PAIR_EDGES = [
    ("ordinary", [1.0, 0.0, -1.0], [0.0, 0.5, 0.0], None, None, None),
    ("masked in both", [1.0, -INF, 0.0], [0.5, -INF, 0.0], None, None, None),
    ("where in both", [1.0, 9.0, 0.0], [0.5, -9.0, 0.0], [True, False, True], None, None),
    ("-inf in p only", [1.0, -INF, 0.0], [0.5, 0.3, 0.0], None, None, None),
    ("-inf in q only", [1.0, 0.3, 0.0], [0.5, -INF, 0.0], None, INF, None),
    ("disjoint supports", [0.0, -INF], [-INF, 0.0], None, INF, LOG2),
    ("identical", [3.0, -2.0, 0.5], [3.0, -2.0, 0.5], None, 0.0, 0.0),
    ("shifted (same distribution)", [3.0, -2.0, 0.5], [13.0, 8.0, 10.5], None, 0.0, 0.0),
    ("all masked", [1.0, 2.0], [3.0, 4.0], [False, False], 0.0, 0.0),
    ("all -inf", [-INF, -INF], [-INF, -INF], None, 0.0, 0.0),
    # p empty (no mass): the Bregman forms give KL = sum q = 1, JS = (1/2)(1/2 + log 2 - 1/2).
    ("p all -inf", [-INF, -INF], [0.0, 1.0], None, 1.0, 0.5 * LOG2),
    ("+inf in both, same place", [INF, 0.0], [INF, 5.0], None, 0.0, 0.0),
    ("NaN in p", [NAN, 0.0], [0.0, 0.0], None, NAN, NAN),
    ("NaN in q", [0.0, 0.0], [0.0, NAN], None, NAN, NAN),
]


def _pair_expect(a, b, w):
    p, q = _np_softmax(a, w), _np_softmax(b, w)
    m = (p + q) / 2
    with np.errstate(divide="ignore"):
        kl = np.sum(_xlogy(p, p) - _xlogy(p, q))
    js = 0.5 * np.sum(_xlogy(p, p) - _xlogy(p, m)) + 0.5 * np.sum(_xlogy(q, q) - _xlogy(q, m))
    return p, q, kl, js


# One compiled gradient and Hessian per function, shared by the rows of the table (a fresh
# ``jax.jit(jax.hessian(...))`` per row would compile it again for every row).
_PAIR_GRAD = {fn: jax.jit(jax.grad(fn, (0, 1))) for fn in (KL, JS)}
_PAIR_HESSIAN = {fn: jax.jit(jax.hessian(fn, (0, 1))) for fn in (KL, JS)}


@pytest.mark.parametrize(
    ("a", "b", "where", "kl", "js"), [e[1:] for e in PAIR_EDGES], ids=[e[0] for e in PAIR_EDGES]
)
def test_pair_edge_table(a, b, where, kl, js):
    aa, bb = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = None if where is None else np.asarray(where)
    p, q, kl_e, js_e = _pair_expect(aa, bb, w)
    kl = kl_e if kl is None else kl
    js = js_e if js is None else js
    wj = None if w is None else jnp.asarray(w)
    af, bf = jnp.asarray(aa, jnp.float32), jnp.asarray(bb, jnp.float32)
    nan = np.isnan(kl)
    np.testing.assert_allclose(float(KL(af, bf, where=wj)), kl, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(float(JS(af, bf, where=wj)), js, rtol=2e-6, atol=1e-7)
    ga, gb = _PAIR_GRAD[KL](af, bf, where=wj)
    ja, jb = _PAIR_GRAD[JS](af, bf, where=wj)
    if nan:
        assert np.all(np.isnan(ga))
        assert np.all(np.isnan(gb))
        assert np.all(np.isnan(ja))
        assert np.all(np.isnan(jb))
        return
    # d/db KL = q - p everywhere (finite, also for an infinite KL); JS gradients finite.
    np.testing.assert_allclose(gb, q - p, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(ja))
    assert np.all(np.isfinite(jb))
    masked = (p == 0) & (q == 0)
    for g in (ga, gb, ja, jb):
        assert np.all(np.asarray(g)[masked] == 0.0)
    if np.isfinite(kl):
        assert np.all(np.isfinite(ga))
        with jax.debug_nans(True):
            h = _PAIR_HESSIAN[KL](af, bf, where=wj)
        assert all(np.all(np.isfinite(hh)) for row in h for hh in row)
    with jax.debug_nans(True):
        hj = _PAIR_HESSIAN[JS](af, bf, where=wj)
    assert all(np.all(np.isfinite(hh)) for row in hj for hh in row)


# --------------------------------------------------------------------------------------------
# Accuracy where the usual formulas lose everything
# --------------------------------------------------------------------------------------------


def test_entropy_near_deterministic_full_relative_precision():
    """logits [0, -80]: H = e^-80 (1 + 80) + O(e^-160) = 1.46e-33 to full relative precision
    (the naive formula gives 0); the gradient too."""
    x64 = np.array([0.0, -80.0])
    r = ref.mp_entropy(x64)
    v = ENTROPY(jnp.asarray(x64, jnp.float32))
    g = jax.grad(ENTROPY)(jnp.asarray(x64, jnp.float32))
    assert _errors(v, r.value, r.kappa, "float32").max() <= 4.0
    assert _errors(g, r.grad, r.kappa_grad, "float32").max() <= 8.0
    assert abs(float(v) / float(r.value) - 1) < 1e-6
    # -sum(p log p) drops log1p(e^-80) = 1.8e-35 from -log p_0: 1.2% off, ~1e5 ulps.
    naive = _naive_entropy(jnp.asarray(x64, jnp.float32))
    assert _errors(naive, r.value, r.kappa, "float32").max() > 1e3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(PAIR_FNS))
@pytest.mark.parametrize(
    "scale",
    [pytest.param(1e-4, marks=pytest.mark.slow), 1.0, pytest.param(30.0, marks=pytest.mark.slow)],
)
@pytest.mark.parametrize("eps", [1e-3, pytest.param(1e-6, marks=pytest.mark.slow)])
def test_nearly_equal_distributions_no_cancellation(name, scale, eps, dtype, x64):
    """Two nearly equal policies (logits of size `scale`, perturbed by `eps`): the tiny KL / JS
    within 4 condition-scaled ulps, gradients within 8; sum p·(log p - log q) in the same dtype
    is off by orders of magnitude (it cancels)."""
    rng = np.random.default_rng(7)
    V = 100
    a64 = _cast(rng.normal(size=V) * scale, dtype)
    b64 = _cast(a64 + rng.normal(size=V) * eps * max(scale, 1.0), dtype)
    r = (
        ref.mp_kl_divergence_with_logits(a64, b64)
        if name == "kl_divergence_with_logits"
        else ref.mp_jensen_shannon_divergence(a64, b64)
    )
    fn = PAIR_FNS[name]
    a, b = jnp.asarray(a64, dtype), jnp.asarray(b64, dtype)
    v = fn(a, b)
    ga, gb = jax.grad(fn, (0, 1))(a, b)
    ev = _errors(v, r.value, r.kappa, dtype).max()
    eg = _errors(np.concatenate([ga, gb]), r.grad, r.kappa_grad, dtype).max()
    assert ev <= 4.0, ev
    assert eg <= 8.0, eg
    if name == "kl_divergence_with_logits":
        naive = jnp.sum(jax.nn.softmax(a) * (jax.nn.log_softmax(a) - jax.nn.log_softmax(b)))
        assert _errors(naive, r.value, r.kappa, dtype).max() > 16 * ev + 16


# --------------------------------------------------------------------------------------------
# mpmath accuracy grids (condition-scaled ulps, docs/numerics.md)
# --------------------------------------------------------------------------------------------


def _pairs(batch, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A second logit row for each grid row: close to it, far from it, or a permutation."""
    x = batch.x
    if kind == "near 1e-3":
        return x + 1e-3 * rng.normal(size=x.shape)
    if kind == "near 1e-6":
        scale = np.maximum(1.0, np.where(np.isfinite(x), np.abs(x), 1.0))
        return x + 1e-6 * rng.normal(size=x.shape) * scale
    if kind == "independent":
        return x + rng.normal(size=x.shape) * 2.0
    return x[:, rng.permutation(x.shape[1])]  # "permuted": masks move, KL can be +inf


PAIR_KINDS = ("near 1e-3", "near 1e-6", "independent", "permuted")


@functools.cache
def _info_grid(slow: bool):
    classes = (2, 3, 10, 100, 1000, 10_000) if slow else (2, 3, 10, 100)
    return softmax_grid(classes=classes, rows=3 if slow else 1, seed=3)


def _score_rows(values, grads, refs, dtype, worst: Worst, label: str) -> None:
    for i, r in enumerate(refs):
        ev = _errors(values[i], r.value, r.kappa, dtype)
        worst.update("value", float(np.max(ev)), f"{label} row {i}")
        eg = _errors(grads[i], r.grad, r.kappa_grad, dtype)
        worst.update("grad", float(np.max(eg)), f"{label} row {i}")


@functools.partial(jax.jit, static_argnums=(0,))
def _value_and_grads(name, a, b, w):
    if name == "entropy":
        v, vjp = jax.vjp(lambda x: ENTROPY(x, where=w), a)
        (g,) = vjp(jnp.ones_like(v))
        return v, g
    v, vjp = jax.vjp(lambda x, y: PAIR_FNS[name](x, y, where=w), a, b)
    ga, gb = vjp(jnp.ones_like(v))
    return v, jnp.concatenate([ga, gb], axis=-1)


def _grid_check(name: str, dtype: str, slow: bool) -> tuple[Worst, Worst]:
    """Worst errors over the rows of up to 1000 classes and over the larger ones (which
    allow 16 / 32, as for the losses)."""
    small, large = Worst(), Worst()
    rng = np.random.default_rng(11)
    kinds = ("",) if name == "entropy" else PAIR_KINDS
    for batch in _info_grid(slow):
        if batch.num_classes > 1000 and not slow:
            continue
        for kind in kinds:
            a64 = _cast(batch.x, dtype)
            b64 = None if name == "entropy" else _cast(_pairs(batch, kind, rng), dtype)
            w = None if batch.where is None else jnp.asarray(batch.where)
            b = jnp.zeros(()) if b64 is None else jnp.asarray(b64, dtype)
            v, g = _value_and_grads(name, jnp.asarray(a64, dtype), b, w)
            v, g = np.asarray(v, np.float64), np.asarray(g, np.float64)
            refs = []
            for i in range(a64.shape[0]):
                wi = None if batch.where is None else batch.where[i]
                if name == "entropy":
                    refs.append(ref.mp_entropy(a64[i], wi))
                elif name == "kl_divergence_with_logits":
                    refs.append(ref.mp_kl_divergence_with_logits(a64[i], b64[i], wi))
                else:
                    refs.append(ref.mp_jensen_shannon_divergence(a64[i], b64[i], wi))
            worst = small if batch.num_classes <= 1000 else large
            _score_rows(v, g, refs, dtype, worst, f"{batch.name} {kind}")
    return small, large


@pytest.mark.parametrize("name", list(PAIR_FNS))
def test_two_class_dominant_rows_float64_gradients(name, x64):
    """Two-class rows with a 130-nat gap, swapped between p and q: the gradient's dominant
    entry ``p_j (delta_j - KL)`` is ``1e-55`` from differences of size 130. The mpmath reference
    once formed it as ``delta_j - KL`` at 60 digits, 3e-5 off (2e9 "ulps" blamed on jaxce); it
    now sums ``p_k (delta_j - delta_k)`` over the other classes, and its gradient w.r.t. each
    row's logits sums to 0 as the shift invariance says."""
    a64 = np.array([-116.98265190163016, 13.89991017621057])
    b64 = a64[::-1].copy()
    mp_fn = (
        ref.mp_kl_divergence_with_logits
        if name == "kl_divergence_with_logits"
        else ref.mp_jensen_shannon_divergence
    )
    r = mp_fn(a64, b64)
    grad = np.array([float(g) for g in r.grad])
    for half in (grad[:2], grad[2:]):
        assert abs(half.sum()) <= 1e-14 * np.abs(half).max()
    g = np.concatenate(jax.grad(PAIR_FNS[name], (0, 1))(jnp.asarray(a64), jnp.asarray(b64)))
    assert _errors(g, r.grad, r.kappa_grad, "float64").max() <= 8.0


def test_js_reference_value_of_a_tiny_divergence(x64):
    """Two nearly equal two-class rows with a 100-nat gap: JS = 4.7e-54 from terms of 1e-48.
    The mpmath reference once summed ``p·log(p/m)`` with ``log(p/m) = log 2 - eps`` at 60
    digits and was 8e-9 off (7 "ulps" blamed on jaxce); it now sums the Bregman terms. Checked
    against the definition at 120 digits, and jaxce against the reference."""
    mp = pytest.importorskip("mpmath")
    a64 = np.array([99.52357025614019, -0.8191201803277345])
    b64 = np.array([99.52415017106367, -0.8185778360729198])
    r = ref.mp_jensen_shannon_divergence(a64, b64)
    with mp.workdps(120):
        a, b = [mp.mpf(float(v)) for v in a64], [mp.mpf(float(v)) for v in b64]
        za, zb = mp.fsum(mp.exp(v) for v in a), mp.fsum(mp.exp(v) for v in b)
        p, q = [mp.exp(v) / za for v in a], [mp.exp(v) / zb for v in b]
        m = [(pk + qk) / 2 for pk, qk in zip(p, q, strict=True)]
        js = sum(p[k] * mp.log(p[k] / m[k]) + q[k] * mp.log(q[k] / m[k]) for k in range(2)) / 2
        assert abs(r.value - js) <= mp.mpf(10) ** -40 * js
    v = JS(jnp.asarray(a64), jnp.asarray(b64))
    assert _errors(v, r.value, r.kappa, "float64").max() <= 4.0


def _grad_errors(name, a64, b64, dtype):
    fn = ENTROPY if name == "entropy" else PAIR_FNS[name]
    args = (a64,) if b64 is None else (a64, b64)
    g = jax.grad(fn, tuple(range(len(args))))(*(jnp.asarray(x, dtype) for x in args))
    if name == "entropy":
        r = ref.mp_entropy(a64)
    elif name == "kl_divergence_with_logits":
        r = ref.mp_kl_divergence_with_logits(a64, b64)
    else:
        r = ref.mp_jensen_shannon_divergence(a64, b64)
    return _errors(
        np.concatenate([np.asarray(x, np.float64) for x in g]), r.grad, r.kappa_grad, dtype
    )


@pytest.mark.parametrize("name", ["entropy", *PAIR_FNS])
def test_gradients_of_small_logits_around_zero_at_v1000(name, x64):
    """Logits of size 1e-4 around 0 over 1000 classes (and a second row 1e-3 away): the
    gradient's differences (``x_j`` minus the p-weighted mean of the row; ``delta_j - KL``) are
    the size of the logits, but the shifted forms ``m - x_j`` and ``A = sum p_k (m - x_k)``
    (and ``dx = (a - b) - (m_a - m_b)``, ``D``) are several times larger, and their roundings
    were 10.5-10.6 ulps of the condition number (--run-slow grid, bound 8). The rounding of
    ``m - x_j`` is now carried (``RowParts.lo``), ``A``'s error comes back as
    ``sum p_k d_k``, and ``delta`` is refined by ``log1p(sum q_k expm1(delta_k))``."""
    rng = np.random.default_rng(2024)
    for dtype in ("float64", "float32"):
        worst = 0.0
        for _ in range(2):
            a64 = _cast(rng.normal(size=1000) * 1e-4, dtype)
            b64 = None if name == "entropy" else _cast(a64 + 1e-3 * rng.normal(size=1000), dtype)
            worst = max(worst, float(_grad_errors(name, a64, b64, dtype).max()))
        assert worst <= 4.0, (dtype, worst)


def test_js_gradient_of_two_confident_rows_float64(x64):
    """A V = 3 row pair with a 100-nat gap (--run-slow grid, 10.8 ulps, bound 8): ``p_k`` of
    the two small classes came from ``exp(fl(x_k - m))``, each with its own rounding of the
    100-nat shift (relative error ``100 u``), and the gradient's two opposite terms cancel.
    ``p_k`` now carries the shift's rounding error."""
    a64 = np.array([0.7059948367398967, 100.85941716150433, 0.8594171615043201])
    b64 = np.array([-0.1664858211625284, 101.15300063279994, 2.9558958532001562])
    assert _grad_errors("jensen_shannon_divergence", a64, b64, "float64").max() <= 2.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["entropy", *PAIR_FNS])
def test_accuracy_grid(name, dtype, request, x64):
    """Value <= 4 and gradient <= 8 condition-scaled ulps on the hard grid (V <= 100 by default,
    up to 10^4 with --run-slow, where V > 1000 rows allow 16 / 32 as for the losses)."""
    slow = request.config.getoption("--run-slow")
    if dtype == "float64" and name in PAIR_FNS and not slow:
        # ~70 s of mpmath; the default run keeps the two float64 rows that once failed
        # (test_two_class_dominant_rows_float64_gradients, test_js_reference_value_...).
        pytest.skip("long run: pass --run-slow")
    small, large = _grid_check(name, dtype, slow)
    for v, worst in ((1000, small), (10_000, large)):
        print(
            f"{name} {dtype} V{'<=' if v == 1000 else '>'}1000: value {worst.value:.3g} "
            f"({worst.where_value}), grad {worst.grad:.3g} ({worst.where_grad})"
        )
    for v, worst in ((10_000, large), (1000, small)):
        vb, gb = bounds(v)
        assert worst.value <= vb, (worst.value, worst.where_value)
        assert worst.grad <= gb, (worst.grad, worst.where_grad)


# --------------------------------------------------------------------------------------------
# Transformations, consistency, units, anchors
# --------------------------------------------------------------------------------------------


def _rows(shape=(4, 6), seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=shape).astype(np.float32) * 2,
        rng.normal(size=shape).astype(np.float32) * 2,
    )


def _sum_of(fn):
    return lambda *z: jnp.sum(fn(*z))


@pytest.mark.slow  # tests/test_common.py checks the same for every loss in the default run
def test_jit_vmap_jvp_agree_and_hessians_finite():
    a, b = _rows()
    for fn, args in ((ENTROPY, (a,)), (KL, (a, b)), (JS, (a, b))):
        eager = fn(*args)
        np.testing.assert_allclose(jax.jit(fn)(*args), eager, rtol=1e-6)
        looped = np.stack([fn(*(x[i] for x in args)) for i in range(a.shape[0])])
        np.testing.assert_allclose(jax.vmap(fn)(*args), looped, rtol=1e-6)
        tangents = tuple(np.ones_like(x) * 0.1 for x in args)
        _, t = jax.jvp(fn, args, tangents)
        grads = jax.grad(_sum_of(fn), argnums=tuple(range(len(args))))(*args)
        expect = sum(jnp.sum(g * tt, axis=-1) for g, tt in zip(grads, tangents, strict=True))
        np.testing.assert_allclose(t, expect, rtol=1e-4, atol=1e-6)
        h = jax.jit(jax.hessian(_sum_of(fn)))(*(x[0] for x in args))
        assert np.all(np.isfinite(h))


@pytest.mark.slow
@pytest.mark.parametrize("fn", [ENTROPY, KL, JS], ids=["entropy", "kl", "js"])
def test_check_grads_order_2(fn, x64):
    """Second-order derivatives of the custom JVP rules against finite differences (float64)."""
    a, b = _rows((2, 5), seed=3)
    args = (
        (a.astype(np.float64),) if fn is ENTROPY else (a.astype(np.float64), b.astype(np.float64))
    )
    check_grads(fn, args, order=2, modes=("rev",), atol=1e-6, rtol=1e-6)


def test_base_two_gives_bits():
    a, b = _rows()
    np.testing.assert_allclose(ENTROPY(a, base=2), ENTROPY(a) / LOG2, rtol=1e-6)
    np.testing.assert_allclose(KL(a, b, base=2.0), KL(a, b) / LOG2, rtol=1e-6)
    np.testing.assert_allclose(JS(a, b, base=10), JS(a, b) / math.log(10), rtol=1e-6)
    assert float(ENTROPY(jnp.zeros(8), base=2)) == pytest.approx(3.0, rel=1e-7)
    assert float(JS(jnp.array([0.0, -INF]), jnp.array([-INF, 0.0]), base=2)) == 1.0


def test_js_is_symmetric_and_bounded_kl_is_not_symmetric():
    a, b = _rows((16, 7), seed=4)
    np.testing.assert_allclose(JS(a, b), JS(b, a), rtol=1e-6)
    assert np.all(np.asarray(JS(a * 50, b * 50)) <= LOG2 * (1 + 1e-6))
    assert not np.allclose(KL(a, b), KL(b, a))


def test_kl_with_logits_equals_kl_divergence_of_log_softmax():
    """KL(P || Q) from logits == jaxce.kl_divergence(log q, p) (note the argument order)."""
    a, b = _rows()
    np.testing.assert_allclose(
        KL(a, b), jaxce.kl_divergence(jaxce.log_softmax(b), jaxce.softmax(a)), rtol=1e-5
    )


@pytest.mark.parametrize("axis", [0, pytest.param(1, marks=pytest.mark.slow), (0, 2)])
def test_axis_equals_moveaxis(axis):
    rng = np.random.default_rng(5)
    a = rng.normal(size=(3, 4, 5)).astype(np.float32)
    b = rng.normal(size=(3, 4, 5)).astype(np.float32)
    axes = (axis,) if isinstance(axis, int) else axis
    dest = tuple(range(-len(axes), 0))
    am, bm = np.moveaxis(a, axes, dest), np.moveaxis(b, axes, dest)
    flat = (*am.shape[: -len(axes)], -1)
    am, bm = am.reshape(flat), bm.reshape(flat)
    np.testing.assert_allclose(ENTROPY(a, axis=axis), ENTROPY(am), rtol=1e-6)
    np.testing.assert_allclose(KL(a, b, axis=axis), KL(am, bm), rtol=1e-5)
    np.testing.assert_allclose(JS(a, b, axis=axis), JS(am, bm), rtol=1e-5)


def test_per_example_where_and_broadcasting():
    a, b = _rows((3, 5))
    w = np.array([True, False, True])
    out = np.asarray(KL(a, b, where=w))
    assert out[1] == 0.0
    np.testing.assert_allclose(out[[0, 2]], KL(a[[0, 2]], b[[0, 2]]), rtol=1e-6)
    # A [1, V] reference policy broadcasts against a batch.
    np.testing.assert_allclose(KL(a, b[:1]), KL(a, np.broadcast_to(b[:1], a.shape)), rtol=1e-6)


@pytest.mark.parity
def test_match_torch_distributions_on_ordinary_inputs():
    """Anchor: torch.distributions.Categorical entropy / kl_divergence (float64)."""
    torch = pytest.importorskip("torch")
    a, b = _rows((5, 9), seed=6)
    ta = torch.distributions.Categorical(logits=torch.tensor(a, dtype=torch.float64))
    tb = torch.distributions.Categorical(logits=torch.tensor(b, dtype=torch.float64))
    np.testing.assert_allclose(ENTROPY(a), ta.entropy().numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        KL(a, b), torch.distributions.kl_divergence(ta, tb).numpy(), rtol=1e-5
    )


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_16bit_inputs_compute_in_float32(dtype):
    a, b = _rows()
    a16, b16 = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
    for fn, args, args32 in (
        (ENTROPY, (a16,), (jnp.asarray(a16, jnp.float32),)),
        (KL, (a16, b16), (jnp.asarray(a16, jnp.float32), jnp.asarray(b16, jnp.float32))),
        (JS, (a16, b16), (jnp.asarray(a16, jnp.float32), jnp.asarray(b16, jnp.float32))),
    ):
        out = fn(*args)
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(out, fn(*args32))  # the exact upcast input, in float32
        g = jax.grad(lambda *z, f=fn: jnp.sum(f(*z)))(*args)
        assert g.dtype == dtype
        assert np.all(np.isfinite(np.asarray(g, np.float32)))


def test_float64_under_x64(x64):
    a, b = _rows()
    for fn, args in ((ENTROPY, (a,)), (KL, (a, b)), (JS, (a, b))):
        assert fn(*(x.astype(np.float64) for x in args)).dtype == jnp.float64


# --------------------------------------------------------------------------------------------
# Trace-time argument errors
# --------------------------------------------------------------------------------------------


def test_errors_name_the_argument():
    x = jnp.zeros((2, 3))
    with pytest.raises(TypeError, match="`logits` must be a floating-point"):
        ENTROPY(jnp.zeros(3, jnp.int32))
    with pytest.raises(TypeError, match="`q_logits` must be a floating-point"):
        KL(x, jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"`p_logits` of shape \(2, 3\) and `q_logits`"):
        JS(x, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"`axis`=2 is out of range"):
        ENTROPY(x, axis=2)
    with pytest.raises(TypeError, match="`where` must be a boolean mask"):
        KL(x, x, where=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="`base` must be a finite real number > 1"):
        ENTROPY(x, base=1)
    with pytest.raises(ValueError, match="`base` must be a finite real number > 1"):
        JS(x, x, base=0.5)
    with pytest.raises(TypeError, match="`base` must be a real number > 1"):
        KL(x, x, base="2")
    with pytest.raises(TypeError, match="`base` must be a real number > 1"):
        ENTROPY(x, base=jnp.array(2.0))


def test_errors_raise_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="`base`"):
        jax.jit(lambda z: ENTROPY(z, base=-1.0))(jnp.zeros(3))
    with pytest.raises(ValueError, match="do not match"):
        jax.jit(KL)(jnp.zeros((2, 3)), jnp.zeros((3, 3)))


def test_no_warnings_and_no_value_checks_needed():
    """Logits have no invalid values: any float is accepted, nothing is raised or warned."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = jnp.array([1e30, -1e30, 0.0])
        assert np.isfinite(float(ENTROPY(x)))
        assert np.isfinite(float(JS(x, -x)))
