"""The accuracy bar, measured as in docs/numerics.md: condition-scaled ulps vs mpmath.

For every function, in float32 and float64, on the hard-input grid of ``jaxce._grid``:
value error <= 4 and every gradient component <= 8 condition-scaled ulps for up to 1,000 classes
(<= 16 / <= 32 up to 10^4 classes), and no NaN/inf where the reference is finite. The reference
is mpmath at 60 digits on the exact (cast) inputs.

The default run keeps V = 10^4 to the two cross-entropy losses on a subset of cases (mpmath costs
~0.1 ms per class); ``--run-slow`` runs every function at every V with more rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import _reference as ref
from jaxce._grid import REAL_BINARY_LABELS, TARGET_KINDS, RowBatch, elementwise_grid, softmax_grid

pytest.importorskip("mpmath")

U = {"float32": 2.0**-24, "float64": 2.0**-53}
TINY = {"float32": float(np.finfo(np.float32).tiny), "float64": float(np.finfo(np.float64).tiny)}


def bounds(num_classes: int) -> tuple[float, float]:
    """(value bound, gradient bound) in condition-scaled ulps."""
    return (4.0, 8.0) if num_classes <= 1000 else (16.0, 32.0)


@dataclass
class Worst:
    value: float = 0.0
    grad: float = 0.0
    where_value: str = ""
    where_grad: str = ""

    def update(self, kind: str, err: float, label: str) -> None:
        if err > getattr(self, kind):
            setattr(self, kind, err)
            setattr(self, f"where_{kind}", label)


def _errors(v, r, kappa, dtype: str, targets=None) -> np.ndarray:
    """Condition-scaled errors; ``targets`` (a soft-label row) scales the flush floor of the
    gradient (``jaxce._reference.flush_floor``)."""
    tiny = TINY[dtype] if targets is None else ref.flush_floor(targets, TINY[dtype])
    e = ref.condition_scaled_error(np.asarray(v, np.float64), r, kappa, U[dtype], tiny)
    return np.atleast_1d(np.asarray(e, np.float64))


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """The grid value as the dtype under test represents it, back in float64 (the exact input)."""
    return np.asarray(a, np.dtype(dtype)).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Row functions: (jaxce call, mpmath reference, has_grad, wants label kind)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowFn:
    call: Callable[..., jax.Array]  # (x, labels, where) -> per-row value(s)
    reference: Callable[..., ref.Ref]  # (x_row, labels_row, where_row) -> Ref
    labels: str | None  # None, "int", or a soft label kind
    per_class: bool = False  # value is per class (no gradient scored)
    inputs: str = "logits"  # "logits", or "log-probs" for the KL divergences
    log_labels: bool = False  # pass log(labels), made in float64 then cast: the exact input


def _kl_inputs(x: np.ndarray, where) -> np.ndarray:
    """log_predictions for the KL checks: log_softmax of the grid row, computed in float64."""
    return np.asarray(ref.np_log_softmax(x, where).value, np.float64)


def _per_kind(name: str, call, reference, kinds, **kw) -> dict[str, RowFn]:
    """``name[kind]`` entries: the same function scored on each target kind."""
    return {f"{name}[{kind}]": RowFn(call, reference, kind, **kw) for kind in kinds}


ROW_FUNCTIONS: dict[str, RowFn] = {
    "logsumexp": RowFn(
        lambda x, t, w: jaxce.logsumexp(x, where=w),
        lambda x, t, w: ref.mp_logsumexp(x, w),
        None,
    ),
    "log_softmax": RowFn(
        lambda x, t, w: jaxce.log_softmax(x, where=w),
        lambda x, t, w: ref.mp_log_softmax(x, w),
        None,
        per_class=True,
    ),
    "softmax": RowFn(
        lambda x, t, w: jaxce.softmax(x, where=w),
        lambda x, t, w: ref.mp_softmax(x, w),
        None,
        per_class=True,
    ),
    "softmax_cross_entropy_with_integer_labels": RowFn(
        lambda x, t, w: jaxce.softmax_cross_entropy_with_integer_labels(x, t, where=w),
        lambda x, t, w: ref.mp_softmax_cross_entropy_with_integer_labels(x, int(t), w),
        "int",
    ),
    **_per_kind(
        "softmax_cross_entropy",
        lambda x, t, w: jaxce.softmax_cross_entropy(x, t, where=w),
        lambda x, t, w: ref.mp_softmax_cross_entropy(x, t, w),
        TARGET_KINDS,
    ),
    **_per_kind(
        "safe_softmax_cross_entropy",
        lambda x, t, w: jaxce.safe_softmax_cross_entropy(x, t),
        lambda x, t, w: ref.mp_softmax_cross_entropy(x, t),
        ("dirichlet", "signed"),
    ),
    # Unnormalized targets ("weighted": t > 1) are in the KL divergences' domain too.
    **_per_kind(
        "kl_divergence",
        lambda lp, t, w: jaxce.kl_divergence(lp, t, where=w),
        lambda lp, t, w: ref.mp_kl_divergence(lp, t, w),
        ("dirichlet", "weighted"),
        inputs="log-probs",
    ),
    **_per_kind(
        "kl_divergence_with_log_targets",
        lambda lp, lt, w: jaxce.kl_divergence_with_log_targets(lp, lt, where=w),
        lambda lp, lt, w: ref.mp_kl_divergence_with_log_targets(lp, lt, w),
        ("sparse-dirichlet", "weighted"),
        inputs="log-probs",
        log_labels=True,
    ),
}


# Cases that also run at V = 10^4 in the default (non-slow) run, for the two CE losses.
LARGE_V_CASES = ("confident-correct gap 30", "scale 30", "offset 1e+08", "-inf masks")
LARGE_V_FUNCTIONS = (
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy[dirichlet]",
    # signed advantages up to 10: "scale 30" has a subnormal p_j times T = 4.5 (flush floor)
    "softmax_cross_entropy[advantage]",
)


@functools.cache
def _grid(slow: bool) -> list[RowBatch]:
    if slow:
        return softmax_grid(rows=3, seed=1)
    return softmax_grid(rows=1, seed=0)


def _selected(name: str, batch: RowBatch, slow: bool) -> bool:
    if batch.num_classes < 10_000 or slow:
        return True
    return name in LARGE_V_FUNCTIONS and batch.name.rsplit(" V=", 1)[0] in LARGE_V_CASES


@functools.partial(jax.jit, static_argnums=(0, 4))
def _evaluate(name, x, t, w, per_class):
    fn = ROW_FUNCTIONS[name].call
    if per_class:
        return fn(x, t, w), None
    value, vjp = jax.vjp(lambda a: fn(a, t, w), x)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


def _score(name: str, batch: RowBatch, dtype: str, worst: Worst) -> None:
    spec = ROW_FUNCTIONS[name]
    x64 = _cast(batch.x, dtype)
    if spec.inputs == "log-probs":
        x64 = _cast(_kl_inputs(x64, batch.where), dtype)
    if spec.labels is None:
        t64 = None
    elif spec.labels == "int":
        t64 = batch.y
    else:
        t64 = batch.soft[spec.labels]
        if spec.log_labels:
            with np.errstate(divide="ignore"):
                t64 = np.log(t64)
        t64 = _cast(t64, dtype)
    x = jnp.asarray(x64, dtype)
    t = None if t64 is None else jnp.asarray(t64, jnp.int32 if spec.labels == "int" else dtype)
    w = None if batch.where is None else jnp.asarray(batch.where)
    value, grad = _evaluate(name, x, t, w, spec.per_class)
    value = np.asarray(value, np.float64)
    grad = None if grad is None else np.asarray(grad, np.float64)
    for i in range(x64.shape[0]):
        r = spec.reference(
            x64[i], None if t64 is None else t64[i], None if batch.where is None else batch.where[i]
        )
        label = f"{batch.name} row {i}"
        ev = _errors(value[i], r.value, r.kappa, dtype)
        worst.update("value", float(np.max(ev)), label)
        if grad is not None:
            # soft labels: a flushed subnormal p_j times T inside T·p_j − t_j
            soft = spec.labels not in (None, "int") and spec.inputs == "logits"
            floor = t64[i] if soft else None
            eg = _errors(grad[i], r.grad, r.kappa_grad, dtype, floor)
            worst.update("grad", float(np.max(eg)), label)


def _check(name: str, dtype: str, slow: bool) -> None:
    by_size: dict[bool, Worst] = {False: Worst(), True: Worst()}
    for batch in _grid(slow):
        if _selected(name, batch, slow):
            _score(name, batch, dtype, by_size[batch.num_classes > 1000])
    report = []
    for large, worst in by_size.items():
        vb, gb = bounds(10_000 if large else 1000)
        report.append(
            f"V{'>' if large else '<='}1000: value {worst.value:.3g} ({worst.where_value}), "
            f"grad {worst.grad:.3g} ({worst.where_grad})"
        )
        assert worst.value <= vb, report[-1]
        assert worst.grad <= gb, report[-1]
    print(f"{name} {dtype}: " + "; ".join(report))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ROW_FUNCTIONS))
def test_row_function_accuracy(name, dtype, request, x64):
    _check(name, dtype, request.config.getoption("--run-slow"))


# --------------------------------------------------------------------------------------------
# Elementwise functions
# --------------------------------------------------------------------------------------------

ELEMENTWISE: dict[str, tuple[Callable[..., jax.Array], Callable[..., ref.Ref]]] = {
    "softplus": (jaxce.softplus, ref.mp_softplus),
    "log_sigmoid": (jaxce.log_sigmoid, ref.mp_log_sigmoid),
    "sigmoid": (jaxce.sigmoid, ref.mp_sigmoid),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_accuracy(name, dtype, x64):
    fn, reference = ELEMENTWISE[name]
    xs = _cast(elementwise_grid(), dtype)
    x = jnp.asarray(xs, dtype)
    value = np.asarray(jax.jit(fn)(x), np.float64)
    grad = np.asarray(jax.jit(jax.vmap(jax.grad(fn)))(x), np.float64)
    r = reference(xs)
    ev = _errors(value, r.value, r.kappa, dtype)
    eg = _errors(grad, r.grad, r.kappa_grad, dtype)
    assert ev.max() <= 4.0, (xs[ev.argmax()], ev.max())
    assert eg.max() <= 8.0, (xs[eg.argmax()], eg.max())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_binary_cross_entropy_accuracy(dtype, x64):
    """Labels in [0, 1] and outside it (the loss is affine in its label)."""
    xs, ts = np.meshgrid(elementwise_grid(), REAL_BINARY_LABELS, indexing="ij")
    xs, ts = _cast(xs.ravel(), dtype), _cast(ts.ravel(), dtype)
    x, t = jnp.asarray(xs, dtype), jnp.asarray(ts, dtype)
    fn = jaxce.sigmoid_binary_cross_entropy
    value = np.asarray(jax.jit(fn)(x, t), np.float64)
    grad = np.asarray(jax.jit(jax.grad(lambda a, b: jnp.sum(fn(a, b))))(x, t), np.float64)
    r = ref.mp_sigmoid_binary_cross_entropy(xs, ts)
    ev = _errors(value, r.value, r.kappa, dtype)
    eg = _errors(grad, r.grad, r.kappa_grad, dtype)
    assert ev.max() <= 4.0, (xs[ev.argmax()], ts[ev.argmax()], ev.max())
    assert eg.max() <= 8.0, (xs[eg.argmax()], ts[eg.argmax()], eg.max())


# --------------------------------------------------------------------------------------------
# Regressions: class-axis sums whose rounding reached the loss unscaled
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["STAGED", "STAGED_CHUNKED", "FUSED"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1000), (3, 1000), (64, 1000), (1, 10_000), (3, 300)])
def test_row_sum_is_correctly_rounded_on_many_equal_terms(shape, dtype, strategy, x64):
    """The label total of a smoothed label: 0.9 + many copies of 0.1/V.

    A plain reduction returned it up to 7 ulps off (the error of each addition is the same for
    equal terms, so they do not cancel); the compensated sum is within one rounding, staged
    (XLA:CPU) or in one reduction (accelerators).
    """
    from jaxce import _rows

    b, v = shape
    t = np.full(shape, 0.1 / v, np.dtype(dtype))
    t[np.arange(b), np.arange(b) % v] = np.dtype(dtype).type(0.9)
    total = np.asarray(
        jax.jit(lambda a: _rows.row_sum(a, (1,), getattr(_rows, strategy)))(jnp.asarray(t)),
        np.float64,
    )
    for got, row in zip(total.tolist(), t, strict=True):
        exact = sum(Fraction(v) for v in row.astype(np.float64).tolist())
        # Within half an ulp of the exact sum (plus the O(u^2) of the compensation).
        assert abs(Fraction(got) - exact) <= Fraction(1.001) * U[dtype] * exact, (got, exact)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_smoothed_label_ce_on_flat_logits(dtype, x64):
    """Smoothed labels on near-uniform logits (the slow grid's 'scale 0.0001 V=1000' rows).

    The loss is ``T·log1p(S')`` with a tiny condition number, so the label total T must be
    right to the last bit or two: the plain sum gave 5.6 (float64) and 5.1 (float32) ulps.
    """
    rng = np.random.default_rng(1)
    v = 1000
    x64 = _cast(rng.normal(size=(3, v)) * 1e-4, dtype)
    y = rng.integers(0, v, size=3)
    t64 = np.full((3, v), 0.1 / v)
    t64[np.arange(3), y] += 0.9
    t64 = _cast(t64, dtype)
    x, t = jnp.asarray(x64, dtype), jnp.asarray(t64, dtype)
    value, grad = _evaluate("softmax_cross_entropy[smoothed]", x, t, None, False)
    for i in range(3):
        r = ref.mp_softmax_cross_entropy(x64[i], t64[i])
        assert _errors(np.asarray(value, np.float64)[i], r.value, r.kappa, dtype).max() <= 4.0
        eg = _errors(np.asarray(grad, np.float64)[i], r.grad, r.kappa_grad, dtype)
        assert eg.max() <= 8.0


# --------------------------------------------------------------------------------------------
# The anchors fail where jaxce does not: the reason this library exists, measured here
# --------------------------------------------------------------------------------------------


def test_optax_integer_label_ce_misses_the_bar():
    """optax 0.2.8 returns 0 for a loss of ~1e-13 (error ~ 1/u), jaxce is within 4 ulps."""
    optax = pytest.importorskip("optax")
    x64 = np.array([30.0, 0.0, -5.0])
    r = ref.mp_softmax_cross_entropy_with_integer_labels(x64, 0)
    x = jnp.asarray(x64, jnp.float32)
    theirs = float(optax.softmax_cross_entropy_with_integer_labels(x, 0))
    ours = float(jaxce.softmax_cross_entropy_with_integer_labels(x, 0))
    assert _errors(theirs, r.value, r.kappa, "float32").max() > 1e3
    assert _errors(ours, r.value, r.kappa, "float32").max() <= 4.0
    assert not math.isnan(ours)
