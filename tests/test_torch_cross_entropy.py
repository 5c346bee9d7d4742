"""jaxce.torch.cross_entropy / nll_loss: parity with torch.nn.functional, values and gradients.

The reference is PyTorch itself in float64 on the exact (float32) inputs; jaxce runs in float32
and is scored in condition-scaled ulps (docs/numerics.md): the value's condition number is
``Σ|x_k ∂L/∂x_k|`` and a gradient component's is ``Σ_k |x_k ∂²L/∂x_j∂x_k| + |∂L/∂x_j|``, both
from PyTorch's float64 autograd (Hessian included), for the scalar ``L = Σ_n v_n ℓ_n`` with a
random cotangent ``v`` (so ``reduction="none"`` is checked per example, not only in sum).

The default run checks a pairwise covering set of the option matrix (every value of every axis,
and every pair of values of two axes, at least once); ``--run-slow`` runs the full product.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxce.torch import cross_entropy, nll_loss

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
F = torch.nn.functional

U32 = 2.0**-24
C = 5
WEIGHT = np.array([0.5, 2.0, 1.0, 0.0, 3.0], np.float32)

# (name, logits shape, jax axis): PyTorch always gets [N, C, ...] (class dim 1).
LAYOUTS = {
    "classes-last [N,C]": ((6, C), -1),
    "axis=1 [N,C,d1]": ((4, C, 3), 1),
    "classes-last [N,d1,C]": ((4, 3, C), -1),
}


def _inputs(layout: str, target: str, seed: int = 0):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    batch = tuple(d for a, d in enumerate(shape) if a != axis % len(shape))
    if target == "int":
        y = rng.integers(0, C, size=batch)
        y.reshape(-1)[1] = 2  # label 2 is present: the "ignore a present label" case uses it
        return x, y, axis
    t = rng.dirichlet(np.ones(C), size=batch).astype(np.float32)
    return x, np.moveaxis(t, -1, axis), axis


def _torch_layout(a: np.ndarray, axis: int) -> np.ndarray:
    """PyTorch's layout: class axis at 1."""
    return np.moveaxis(a, axis, 1) if a.ndim > 1 else a


def _torch_reference(fn, x, y, axis, cotangent, **kw):
    """PyTorch float64: the scalar Σ v·ℓ (or the reduced loss), its gradient and Hessian."""
    xt = torch.tensor(_torch_layout(x.astype(np.float64), axis), requires_grad=True)
    if np.issubdtype(y.dtype, np.integer):
        yt = torch.tensor(y, dtype=torch.long)
    else:
        yt = torch.tensor(_torch_layout(y.astype(np.float64), axis))
    if kw.get("weight") is not None:
        kw["weight"] = torch.tensor(kw["weight"], dtype=torch.float64)
    v = None if cotangent is None else torch.tensor(cotangent, dtype=torch.float64)

    def scalar(a):
        out = fn(a, yt, **kw)
        return out.sum() if v is None else (out * v).sum()

    out = fn(xt, yt, **kw).detach().numpy()
    value = scalar(xt)
    (grad,) = torch.autograd.grad(value, xt)
    hess = torch.autograd.functional.hessian(scalar, xt.detach())
    back = lambda a: np.moveaxis(a, 1, axis) if a.ndim > 1 else a  # noqa: E731
    nd = xt.ndim
    h = np.moveaxis(hess.numpy(), [1, nd + 1], [axis % nd, nd + axis % nd])
    return out, back(grad.numpy()), h, float(value.detach())


def _ratio(err: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den == 0, np.where(err == 0, 0.0, np.inf), err / den)


def _scaled_errors(x, axis, out, grad, ref_out, ref_grad, ref_hess, v):
    """Worst condition-scaled error of the value (per example for "none") and the gradient."""
    xa = x.astype(np.float64)
    nx = xa.size
    xg = np.abs(xa * ref_grad)
    # κ of ℓ_n: Σ_k |x_k ∂ℓ_n/∂x_k|; the gradient is of Σ v_n ℓ_n, so divide by v_n.
    kappa_v = np.sum(xg) if v is None else np.sum(xg, axis=axis) / v
    ev = _ratio(np.abs(np.asarray(out, np.float64) - ref_out), U32 * (np.abs(ref_out) + kappa_v))
    h = ref_hess.reshape(nx, nx)
    g = ref_grad.reshape(nx)
    kappa_g = np.abs(h * xa.reshape(1, nx)).sum(axis=1) + np.abs(g)
    eg = _ratio(np.abs(np.asarray(grad, np.float64).reshape(nx) - g), U32 * (np.abs(g) + kappa_g))
    return float(np.max(ev, initial=0.0)), float(np.max(eg, initial=0.0))


def _pairwise(full):
    """A greedy pairwise covering subset of ``full`` (deterministic): every pair of values that
    two axes take together somewhere in ``full`` is in some chosen combination."""

    def pairs(c):
        return {(i, c[i], j, c[j]) for i, j in itertools.combinations(range(len(c)), 2)}

    needed = set().union(*(pairs(c) for c in full))
    chosen = []
    while needed:
        best = max(full, key=lambda c: len(pairs(c) & needed))
        chosen.append(best)
        needed -= pairs(best)
    return [c for c in full if c in chosen]


def _params(full, ids):
    """Every combination; those outside the pairwise cover only with --run-slow."""
    cover = set(_pairwise(full))
    return [
        pytest.param(c, id=ids(c), marks=[] if c in cover else [pytest.mark.slow]) for c in full
    ]


# ignore_index applies to class-index targets only (as in PyTorch): no "present" for "prob".
COMBOS = [
    c
    for c in itertools.product(
        list(LAYOUTS),
        ["int", "prob"],
        [None, "w"],
        ["default", "present"],
        [0.0, 0.1],
        ["none", "sum", "mean"],
    )
    if not (c[1] == "prob" and c[3] == "present")
]


def _id(c):
    layout, target, w, ig, eps, red = c
    return f"{layout}-{target}-weight={w}-ignore={ig}-eps={eps}-{red}"


@pytest.mark.parametrize("combo", _params(COMBOS, _id))
def test_cross_entropy_parity_with_torch_values_and_gradients(combo):
    layout, target, w, ig, eps, reduction = combo
    x, y, axis = _inputs(layout, target)
    kw = {
        "weight": None if w is None else WEIGHT,
        "ignore_index": 2 if ig == "present" else -100,
        "reduction": reduction,
        "label_smoothing": eps,
    }
    rng = np.random.default_rng(1)
    batch = y.shape if target == "int" else tuple(np.delete(np.array(x.shape), axis % x.ndim))
    v = rng.uniform(0.5, 1.5, size=batch) if reduction == "none" else None
    if target == "prob":
        kw.pop("ignore_index")
    ref_out, ref_grad, ref_hess, _ = _torch_reference(F.cross_entropy, x, y, axis, v, **kw)
    jw = None if w is None else jnp.asarray(WEIGHT)
    jy = jnp.asarray(y) if target == "int" else jnp.asarray(y, jnp.float32)
    jkw = dict(kw, weight=jw)

    def scalar(a):
        out = cross_entropy(a, jy, axis=axis, **jkw)
        return jnp.sum(out) if v is None else jnp.sum(out * jnp.asarray(v, jnp.float32))

    # one compiled program per combination (eager would compile every op separately)
    out, grad = jax.jit(lambda a: (cross_entropy(a, jy, axis=axis, **jkw), jax.grad(scalar)(a)))(
        jnp.asarray(x)
    )
    ev, eg = _scaled_errors(x, axis, out, grad, ref_out, ref_grad, ref_hess, v)
    assert ev <= 4.0, (ev, np.asarray(out), ref_out)
    assert eg <= 8.0, (eg, np.asarray(grad), ref_grad)
    # and PyTorch float32 itself agrees to float32 rounding
    t32 = F.cross_entropy(
        torch.tensor(_torch_layout(x, axis)),
        torch.tensor(y, dtype=torch.long)
        if target == "int"
        else torch.tensor(_torch_layout(y.astype(np.float32), axis)),
        **dict(kw, weight=None if w is None else torch.tensor(WEIGHT)),
    ).numpy()
    np.testing.assert_allclose(np.asarray(out), t32, rtol=2e-5, atol=1e-6)


NLL_COMBOS = list(
    itertools.product(list(LAYOUTS), [None, "w"], ["default", "present"], ["none", "sum", "mean"])
)


@pytest.mark.parametrize(
    "combo", _params(NLL_COMBOS, lambda c: "{}-weight={}-ignore={}-{}".format(*c))
)
def test_nll_loss_parity_with_torch_values_and_gradients(combo):
    layout, w, ig, reduction = combo
    x, y, axis = _inputs(layout, "int")
    lp = np.asarray(jax.nn.log_softmax(jnp.asarray(x), axis=axis))
    kw = {
        "weight": None if w is None else WEIGHT,
        "ignore_index": 2 if ig == "present" else -100,
        "reduction": reduction,
    }
    v = np.random.default_rng(1).uniform(0.5, 1.5, size=y.shape) if reduction == "none" else None
    ref_out, ref_grad, ref_hess, _ = _torch_reference(F.nll_loss, lp, y, axis, v, **kw)
    jkw = dict(kw, weight=None if w is None else jnp.asarray(WEIGHT))

    def scalar(a):
        out = nll_loss(a, jnp.asarray(y), axis=axis, **jkw)
        return jnp.sum(out) if v is None else jnp.sum(out * jnp.asarray(v, jnp.float32))

    out, grad = jax.jit(
        lambda a: (nll_loss(a, jnp.asarray(y), axis=axis, **jkw), jax.grad(scalar)(a))
    )(jnp.asarray(lp))
    ev, eg = _scaled_errors(lp, axis, out, grad, ref_out, ref_grad, ref_hess, v)
    assert ev <= 4.0, ev
    assert eg <= 8.0, eg


# --------------------------------------------------------------------------------------------
# Deliberate differences and jaxce-only behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_mean_over_all_ignored_is_zero_with_zero_gradient_torch_nan_70348(fn):
    """pytorch #70348 / #116349: PyTorch's mean over all-ignored targets is NaN; jaxce gives 0."""
    x = np.random.default_rng(0).normal(size=(3, C)).astype(np.float32)
    y = np.full(3, -100)
    f = {"cross_entropy": cross_entropy, "nll_loss": nll_loss}[fn]
    tf = {"cross_entropy": F.cross_entropy, "nll_loss": F.nll_loss}[fn]
    assert np.isnan(float(tf(torch.tensor(x), torch.tensor(y))))
    value, grad = jax.value_and_grad(lambda a: f(a, jnp.asarray(y)))(jnp.asarray(x))
    assert float(value) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)


def test_ignored_example_with_nan_and_inf_logits_gives_zero_value_and_gradient():
    x = jnp.array([[jnp.nan, 0.0, 1.0], [jnp.inf, -jnp.inf, 0.0], [1.0, 2.0, 3.0]])
    y = jnp.array([-100, -100, 1])
    with jax.debug_nans(False):
        value, grad = jax.value_and_grad(lambda a: cross_entropy(a, y, label_smoothing=0.1))(x)
    ref = F.cross_entropy(torch.tensor(np.asarray(x[2:])), torch.tensor([1]), label_smoothing=0.1)
    np.testing.assert_allclose(float(value), float(ref), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(grad[:2]), 0.0)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_confident_correct_loss_is_not_rounded_to_zero():
    x = jnp.array([[80.0, 0.0, 0.0]])
    ours = float(cross_entropy(x, jnp.array([0]), reduction="sum"))
    theirs = float(F.cross_entropy(torch.tensor(np.asarray(x)), torch.tensor([0]), reduction="sum"))
    assert theirs == 0.0
    # κ = n_y ≈ 80·loss: 4 condition-scaled ulps allow 4·2^-24·81 relative.
    np.testing.assert_allclose(ours, 2 * np.exp(-80.0), rtol=4 * U32 * 81)


def test_probability_target_zero_on_neg_inf_logit_is_finite():
    x = jnp.array([[-jnp.inf, 0.0, 1.0]])
    t = jnp.array([[0.0, 0.5, 0.5]])
    value, grad = jax.value_and_grad(lambda a: cross_entropy(a, t))(x)
    assert np.isfinite(float(value))
    assert np.all(np.isfinite(np.asarray(grad)))
    theirs = F.cross_entropy(torch.tensor(np.asarray(x)), torch.tensor(np.asarray(t)))
    assert np.isnan(float(theirs))


def test_zero_weight_on_neg_inf_target_log_prob_is_zero_nll():
    lp = jnp.array([[-jnp.inf, -0.1, -2.0], [-0.5, -1.0, -2.0]])
    w = jnp.array([0.0, 1.0, 1.0])
    out = nll_loss(lp, jnp.array([0, 1]), weight=w, reduction="none")
    np.testing.assert_array_equal(np.asarray(out), [0.0, 1.0])


def test_jit_vmap_jvp_and_16_bit():
    x, y, _ = _inputs("axis=1 [N,C,d1]", "int")
    f = lambda a: cross_entropy(a, jnp.asarray(y), axis=1, weight=WEIGHT, label_smoothing=0.1)  # noqa: E731
    per = lambda a, b: cross_entropy(a, b, reduction="none")  # noqa: E731
    xa = jnp.asarray(x)
    d = jnp.asarray(np.random.default_rng(2).normal(size=x.shape), jnp.float32)

    @jax.jit
    def transforms(a):
        return f(a), jax.grad(f)(a), jax.jvp(f, (a,), (d,))[1], jax.vmap(per)(a[..., 0], y[..., 0])

    jitted, g, tangent, vmapped = transforms(xa)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(f(xa)), rtol=1e-6)
    np.testing.assert_allclose(float(tangent), float(jnp.sum(g * d)), rtol=1e-5)
    np.testing.assert_allclose(
        np.asarray(vmapped),
        np.asarray(cross_entropy(xa[..., 0], jnp.asarray(y[..., 0]), reduction="none")),
        rtol=1e-6,
    )
    g16 = lambda a: cross_entropy(a, jnp.asarray(y), axis=1)  # noqa: E731
    for dtype in (jnp.bfloat16, jnp.float16):
        out, grad = jax.jit(lambda a: (g16(a), jax.grad(g16)(a)))(xa.astype(dtype))
        assert out.dtype == jnp.float32
        assert grad.dtype == dtype


def test_bad_arguments_name_themselves():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        cross_entropy(x, jnp.array([0, 1]), reduction="avg")
    with pytest.raises(TypeError, match="`axis` must be an int"):
        cross_entropy(x, jnp.array([0, 1]), axis=(0, 1))
    with pytest.raises(TypeError, match="`ignore_index` must be an int"):
        cross_entropy(x, jnp.array([0, 1]), ignore_index=1.5)
    with pytest.raises(ValueError, match="`labels` has shape"):
        cross_entropy(x, jnp.array([0, 1, 2]))
    with pytest.raises(ValueError, match="`weight` has shape"):
        nll_loss(x, jnp.array([0, 1]), weight=jnp.ones(4))
    with pytest.raises(TypeError, match="`labels` must hold integer"):
        nll_loss(x, jnp.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"`labels` holds 3 at position \(1,\)"):
        cross_entropy(x, jnp.array([0, 3]))
    with pytest.raises(ValueError, match=r"`weight` holds -1\.0"):  # PyTorch's name
        cross_entropy(x, jnp.array([0, 1]), weight=jnp.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"`weight` holds -1\.0"):
        nll_loss(x, jnp.array([0, 1]), weight=jnp.array([1.0, -1.0, 1.0]))


def test_bad_values_are_nan_under_jit():
    x = jnp.zeros((2, 3))
    out = jax.jit(lambda y: cross_entropy(x, y, reduction="none"))(jnp.array([0, 3]))
    assert np.isnan(np.asarray(out)[1])
    assert np.asarray(out)[0] == pytest.approx(np.log(3.0))
    out = jax.jit(lambda y: nll_loss(x, y, reduction="none"))(jnp.array([-1, 1]))
    assert np.isnan(np.asarray(out)[0])
    out = jax.jit(lambda w: cross_entropy(x, jnp.array([0, 1]), weight=w, reduction="none"))(
        jnp.array([1.0, -1.0, 1.0])
    )
    assert not np.isnan(np.asarray(out)[0])
    assert np.isnan(np.asarray(out)[1])
