"""jaxce.torch binary_cross_entropy_with_logits / binary_cross_entropy: parity with PyTorch.

Values AND gradients against ``torch.nn.functional`` (float32 on both sides) for every
combination of weight, pos_weight, reduction, soft and hard labels, pos_weight broadcast over
the last axis; the documented differences (NaN at ±inf logits in PyTorch, its -100 clamp) are
asserted as differences.
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce.torch import binary_cross_entropy, binary_cross_entropy_with_logits

pytestmark = pytest.mark.parity
torch = pytest.importorskip("torch")
F = torch.nn.functional

N, C = 6, 4
# Condition-scaled float32 ulps (docs/numerics.md). jaxce against PyTorch in float64 (the truth):
# within jaxce's own bound (ULPS); against PyTorch in float32: PYTORCH_ULPS, because PyTorch's
# gradient forms σ(x) - t, which cancels (130 plain ulps at x = 5.5, t = 1; about 10 scaled).
ULPS = 8
PYTORCH_ULPS = 32
EPS32 = float(np.finfo(np.float32).eps)


def _data(labels: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(N, C)) * 4).astype(np.float32)
    t = rng.uniform(size=(N, C)) if labels == "soft" else rng.integers(0, 2, size=(N, C))
    return x, t.astype(np.float32)


def _weights(kind: str | None):
    rng = np.random.default_rng(1)
    if kind is None:
        return None
    shape = {"elementwise": (N, C), "per-row": (N, 1), "per-class": (C,)}[kind]
    return rng.uniform(0.0, 2.0, size=shape).astype(np.float32)


def _pos_weight(kind: str | None):
    if kind is None:
        return None
    if kind == "per-class":
        return np.array([0.5, 1.0, 2.0, 7.0], np.float32)  # broadcast over the last axis
    return np.float32(3.0)[None]  # shape (1,)


def _close(ours, theirs, scale, what, bound=None):
    """max |ours - theirs| / (eps32 · scale): scale is |r| + κ (condition-scaled, float64)."""
    ours = np.asarray(ours, np.float64)
    theirs = np.asarray(theirs, np.float64)
    err = float(np.max(np.abs(ours - theirs) / (EPS32 * np.asarray(scale, np.float64))))
    bound = ULPS if bound is None else bound
    assert err <= bound, f"{what}: {err:.2f} condition-scaled float32 ulps"
    return err


def _scales(x, t, w, pw, reduction):
    """|r| + κ for the value and the gradient, per element, reduced like the loss.

    Value: loss + |x·g|; gradient: the summands' magnitudes w·((1-t')σ(x) + p_w t σ(-x)) plus
    |x|·w·((1-t) + p_w t)σ(x)σ(-x), float64 (docs/numerics.md's κ for sigmoid BCE, weighted).
    """
    x = x.astype(np.float64)
    w = np.ones_like(x) if w is None else np.broadcast_to(w, x.shape).astype(np.float64)
    pw = np.ones_like(x) if pw is None else np.broadcast_to(pw, x.shape).astype(np.float64)
    s, sn = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))
    sp, spn = np.logaddexp(0, x), np.logaddexp(0, -x)
    loss = w * ((1 - t) * sp + pw * t * spn)
    g = w * ((1 - t) * s - pw * t * sn)
    gmag = w * ((1 - t) * s + pw * t * sn)
    h = w * ((1 - t) + pw * t) * s * sn
    value_scale, grad_scale = loss + np.abs(x * g), gmag + np.abs(x * h)
    if reduction == "none":
        return value_scale, grad_scale
    n = 1.0 if reduction == "sum" else x.size
    return value_scale.sum() / n, grad_scale / n


@pytest.mark.parametrize(
    ("labels", "weight", "pos_weight", "reduction"),
    list(
        itertools.product(
            ["hard", "soft"],
            [None, "elementwise", "per-row", "per-class"],
            [None, "per-class", "scalar"],
            ["none", "sum", "mean"],
        )
    ),
)
def test_binary_cross_entropy_with_logits_matches_torch(labels, weight, pos_weight, reduction):
    x, t = _data(labels)
    w, pw = _weights(weight), _pos_weight(pos_weight)

    def ours(a):
        return binary_cross_entropy_with_logits(
            a,
            jnp.asarray(t),
            weight=None if w is None else jnp.asarray(w),
            pos_weight=None if pw is None else jnp.asarray(pw),
            reduction=reduction,
        )

    xt = torch.tensor(x, requires_grad=True)
    theirs = F.binary_cross_entropy_with_logits(
        xt,
        torch.tensor(t),
        weight=None if w is None else torch.tensor(w),
        pos_weight=None if pw is None else torch.tensor(pw),
        reduction=reduction,
    )
    theirs.sum().backward()
    x64 = torch.tensor(x.astype(np.float64), requires_grad=True)
    exact = F.binary_cross_entropy_with_logits(
        x64,
        torch.tensor(t, dtype=torch.float64),
        weight=None if w is None else torch.tensor(w, dtype=torch.float64),
        pos_weight=None if pw is None else torch.tensor(pw, dtype=torch.float64),
        reduction=reduction,
    )
    exact.sum().backward()
    value = ours(jnp.asarray(x))
    grad = jax.grad(lambda a: jnp.sum(ours(a)))(jnp.asarray(x))
    assert value.shape == tuple(theirs.shape)
    vs, gs = _scales(x, t, w, pw, reduction)
    _close(value, exact.detach().numpy(), vs, "value vs float64", 4)
    _close(grad, x64.grad.numpy(), gs, "grad vs float64", 8)
    _close(value, theirs.detach().numpy(), vs, "value vs torch", PYTORCH_ULPS)
    _close(grad, xt.grad.numpy(), gs, "grad vs torch", PYTORCH_ULPS)


@pytest.mark.parametrize(
    ("labels", "weight", "reduction"),
    list(
        itertools.product(
            ["hard", "soft"], [None, "elementwise", "per-row", "per-class"], ["none", "sum", "mean"]
        )
    ),
)
def test_binary_cross_entropy_matches_torch(labels, weight, reduction):
    x, t = _data(labels)
    p = (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)
    p = np.clip(p, 1e-6, 1 - 1e-6).astype(np.float32)  # away from the -100 clamp
    w = _weights(weight)

    def ours(a):
        return binary_cross_entropy(
            a, jnp.asarray(t), weight=None if w is None else jnp.asarray(w), reduction=reduction
        )

    pt = torch.tensor(p, requires_grad=True)
    theirs = F.binary_cross_entropy(
        pt, torch.tensor(t), weight=None if w is None else torch.tensor(w), reduction=reduction
    )
    theirs.sum().backward()
    value = ours(jnp.asarray(p))
    grad = jax.grad(lambda a: jnp.sum(ours(a)))(jnp.asarray(p))
    assert value.shape == tuple(theirs.shape)
    # Probability inputs: scale |r| + Σ|p·∂r/∂p| and the gradient summands' magnitudes.
    p64 = p.astype(np.float64)
    ww = np.ones_like(p64) if w is None else np.broadcast_to(w, p64.shape).astype(np.float64)
    loss = -ww * (t * np.log(p64) + (1 - t) * np.log1p(-p64))
    gmag = ww * (t / p64 + (1 - t) / (1 - p64))
    vs, gs = loss + p64 * gmag, gmag + p64 * ww * (t / p64**2 + (1 - t) / (1 - p64) ** 2)
    if reduction != "none":
        n = 1.0 if reduction == "sum" else p64.size
        vs, gs = vs.sum() / n, gs / n
    _close(value, theirs.detach().numpy(), vs, "value")
    _close(grad, pt.grad.numpy(), gs, "grad")


def test_binary_cross_entropy_with_logits_infinite_logits_differ_from_torch():
    """pytorch #49844 / #102894: NaN at ±inf logits; jaxce gives the exact limits."""
    x = np.array([np.inf, -np.inf, np.inf], np.float32)
    t = np.array([1.0, 0.0, 0.0], np.float32)
    xt = torch.tensor(x, requires_grad=True)
    theirs = F.binary_cross_entropy_with_logits(xt, torch.tensor(t), reduction="none")
    theirs.sum().backward()
    assert math.isnan(float(theirs.detach()[0])) or math.isnan(float(xt.grad[0]))
    ours = binary_cross_entropy_with_logits(jnp.asarray(x), jnp.asarray(t), reduction="none")
    grad = jax.grad(
        lambda a: jnp.sum(binary_cross_entropy_with_logits(a, jnp.asarray(t), reduction="none"))
    )(jnp.asarray(x))
    np.testing.assert_array_equal(ours, [0.0, 0.0, np.inf])
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0])


def test_binary_cross_entropy_no_minus_100_clamp():
    """PyTorch clamps log p at -100 (p = 0, t = 1 gives 100); jaxce gives +inf."""
    p = np.array([0.0, 1.0, 0.0, 1e-30], np.float32)
    t = np.array([1.0, 0.0, 0.0, 1.0], np.float32)
    theirs = F.binary_cross_entropy(torch.tensor(p), torch.tensor(t), reduction="none").numpy()
    np.testing.assert_allclose(theirs[:2], [100.0, 100.0])
    ours = np.asarray(binary_cross_entropy(jnp.asarray(p), jnp.asarray(t), reduction="none"))
    np.testing.assert_array_equal(ours[:3], [np.inf, np.inf, 0.0])
    # Where the clamp is inactive both agree.
    np.testing.assert_allclose(ours[3], theirs[3], rtol=1e-6)
    np.testing.assert_allclose(ours[3], 30 * math.log(10), rtol=1e-6)


def test_torch_layer_is_built_on_the_jaxce_losses():
    x = jnp.array([[0.5, -2.0]])
    t = jnp.array([[1.0, 0.25]])
    np.testing.assert_array_equal(
        binary_cross_entropy_with_logits(x, t, pos_weight=jnp.array([2.0, 3.0]), reduction="none"),
        jaxce.sigmoid_binary_cross_entropy(x, t, pos_weight=jnp.array([2.0, 3.0])),
    )


def test_torch_reduction_errors():
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        binary_cross_entropy_with_logits(jnp.zeros(2), jnp.zeros(2), reduction="avg")
    with pytest.raises(ValueError, match="`reduction` must be one of"):
        binary_cross_entropy(jnp.zeros(2), jnp.zeros(2), reduction=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`pos_weight` has shape \(3,\)"):
        binary_cross_entropy_with_logits(
            jnp.zeros((2, 4)), jnp.zeros((2, 4)), pos_weight=jnp.ones(3)
        )
    with pytest.raises(ValueError, match=r"`weight` holds|`weights` holds"):
        binary_cross_entropy_with_logits(jnp.zeros(2), jnp.zeros(2), weight=jnp.array([1.0, -1.0]))
