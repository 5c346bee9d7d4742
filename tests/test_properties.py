"""Property-based tests (hypothesis) for every public loss and primitive of jaxce.

Each test is parametrized by function and dtype (float32, bfloat16, float16, and float64 under
the ``x64`` fixture) and draws whole batches: shapes from a fixed set (so compiled programs are
reused), logits over 1e-4…1e4 with offsets up to 1e8, confident rows, ties, ``-inf`` entries,
``+inf`` entries, empty rows and ``where`` masks, with soft / integer / binary / log-space
labels (soft targets also weighted above 1, signed advantages and rows of both signs; binary
labels also outside [0, 1]; KL targets are kept >= 0).

Properties (see each test's docstring):

* agreement with the float64 reference of ``jaxce._reference`` (mpmath for float64 results)
  within the accuracy standard of ``docs/numerics.md``: value <= 4, gradient <= 8
  condition-scaled ulps;
* range: losses >= 0 (exactly), KL >= the log-sum bound, ``log_softmax``/``log_sigmoid`` <= 0,
  ``softmax``/``sigmoid`` in [0, 1], ``max <= logsumexp <= max + log n``;
* invariance to adding a constant to every logit of a row (exact shifts on a binary grid);
* permutation equivariance over classes;
* gradients over classes sum to 0 (1 for ``logsumexp``) within a propagated rounding bound;
* ``jit`` == eager for every loss, ``vmap`` == a python loop over rows for the core functions
  (the other losses' vmap, and size-1 / empty batches: ``tests/test_common.py``);
* a fuzz test on random bit patterns (NaN payloads, subnormals, ±0, ±inf): nothing raises, the
  NaN policy holds row by row (a NaN stays in its example, for every loss), and the
  documented ``±inf`` limits hold.

Hypothesis profiles (registered here, not in conftest): ``ci`` (the default: few examples per
test, derandomized so that CI is reproducible, no example database) and ``nightly`` (10x the
examples, random seeds, the example database in ``.hypothesis/``). ``nightly`` is selected by
``--run-slow``; the environment variable ``JAXCE_HYPOTHESIS_PROFILE=ci|nightly`` overrides both.
Each test records the number of examples it ran as the ``hypothesis_examples`` user property
(visible with ``--junitxml``) and fails if too few of them were non-vacuous.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import jaxce
import jaxce.torch as jt
from jaxce import _reference as ref
from jaxce._transforms import scale_logits

# --------------------------------------------------------------------------------------------
# Hypothesis profiles
# --------------------------------------------------------------------------------------------

CI_EXAMPLES = 12
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    deadline=None,  # the first example of a shape compiles
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "nightly",
    parent=settings.get_profile("ci"),
    max_examples=10 * CI_EXAMPLES,
    derandomize=False,
    database=settings.default.database,
)
PROFILE_ENV = "JAXCE_HYPOTHESIS_PROFILE"


def _profile_name(request: pytest.FixtureRequest) -> str:
    return os.environ.get(PROFILE_ENV) or (
        "nightly" if request.config.getoption("--run-slow") else "ci"
    )


def _profile(request: pytest.FixtureRequest, factor: float = 1.0) -> settings:
    base = settings.get_profile(_profile_name(request))
    return settings(base, max_examples=max(1, round(base.max_examples * factor)))


def _run(
    request: pytest.FixtureRequest,
    strategy: st.SearchStrategy[Any],
    check: Callable[[Any], int],
    factor: float = 1.0,
    min_effective: float = 0.25,
    shrink: bool | None = None,
) -> None:
    """Run ``check`` on examples of ``strategy`` under the selected profile.

    ``check`` returns how many values it checked; an example that checked nothing (an empty
    batch, say) is vacuous. The test fails if fewer than ``min_effective`` of the examples
    checked something: a property that silently never runs is a broken test. Tests marked
    xfail (known bugs) skip shrinking by default: their first failure is enough.
    """
    if shrink is None:
        shrink = request.node.get_closest_marker("xfail") is None
    counts = {"examples": 0, "effective": 0}
    prof = _profile(request, factor)
    if not shrink:
        prof = settings(prof, phases=[Phase.explicit, Phase.reuse, Phase.generate])

    @prof
    @given(strategy)
    def inner(example: Any) -> None:
        checked = check(example)
        counts["examples"] += 1
        counts["effective"] += int(checked > 0)

    inner()
    request.node.user_properties.append(("hypothesis_examples", counts["examples"]))
    request.node.user_properties.append(("hypothesis_effective_examples", counts["effective"]))
    assert counts["effective"] >= min_effective * prof.max_examples, counts


# --------------------------------------------------------------------------------------------
# The functions under test
# --------------------------------------------------------------------------------------------


class Aux(NamedTuple):
    """Every non-logit argument; each function takes what it needs."""

    t: jax.Array  # soft labels (CE) / targets (KL)
    y: jax.Array  # integer labels, batch shape
    lt: jax.Array  # log targets (KL with log targets)
    tb: jax.Array  # binary labels (sigmoid BCE)
    w: jax.Array  # cotangent for the per-class outputs (log_softmax, softmax)
    where: jax.Array | None


FNS: dict[str, Callable[[jax.Array, Aux], jax.Array]] = {
    "logsumexp": lambda x, a: jaxce.logsumexp(x, where=a.where),
    "log_softmax": lambda x, a: jaxce.log_softmax(x, where=a.where),
    "softmax": lambda x, a: jaxce.softmax(x, where=a.where),
    "softmax_cross_entropy": lambda x, a: jaxce.softmax_cross_entropy(x, a.t, where=a.where),
    "safe_softmax_cross_entropy": lambda x, a: jaxce.safe_softmax_cross_entropy(x, a.t),
    "softmax_cross_entropy_with_integer_labels": (
        lambda x, a: jaxce.softmax_cross_entropy_with_integer_labels(x, a.y, where=a.where)
    ),
    "kl_divergence": lambda x, a: jaxce.kl_divergence(x, a.t, where=a.where),
    "kl_divergence_with_log_targets": (
        lambda x, a: jaxce.kl_divergence_with_log_targets(x, a.lt, where=a.where)
    ),
    "softplus": lambda x, a: jaxce.softplus(x),
    "log_sigmoid": lambda x, a: jaxce.log_sigmoid(x),
    "sigmoid": lambda x, a: jaxce.sigmoid(x),
    "sigmoid_binary_cross_entropy": lambda x, a: jaxce.sigmoid_binary_cross_entropy(x, a.tb),
}
ROW_FNS = (
    "logsumexp",
    "log_softmax",
    "softmax",
    "softmax_cross_entropy",
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "kl_divergence",
    "kl_divergence_with_log_targets",
)
ELEMENTWISE_FNS = ("softplus", "log_sigmoid", "sigmoid", "sigmoid_binary_cross_entropy")
PUBLIC_FNS = ROW_FNS + ELEMENTWISE_FNS
PER_CLASS = ("log_softmax", "softmax")  # output has the logits' shape; gradient = VJP with w
KL_FNS = ("kl_divergence", "kl_divergence_with_log_targets")
CE_FNS = (
    "softmax_cross_entropy",
    "safe_softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
)


def test_every_public_function_is_covered():
    assert set(jaxce.CORE_LOSSES) <= set(PUBLIC_FNS)  # LOSSES: test_every_loss_is_covered
    primitives = {"softplus", "log_sigmoid", "sigmoid", "logsumexp", "log_softmax", "softmax"}
    assert primitives <= set(PUBLIC_FNS)


def _eval_all(x: jax.Array, a: Aux) -> dict[str, tuple[jax.Array, jax.Array]]:
    """(value, gradient wrt x) of every function: d sum(value) for losses, a VJP with w else."""
    out = {}
    for name, f in FNS.items():
        value, vjp = jax.vjp(lambda z, f=f: f(z, a), x)
        cot = a.w.astype(value.dtype) if name in PER_CLASS else jnp.ones_like(value)
        out[name] = (value, vjp(cot)[0])
    return out


# One compiled program per (dtype, shape, masked or not) evaluates every function: the tests
# of all functions share it, which keeps compilation to a few dozen programs per worker.
_bundle = jax.jit(_eval_all)
_bundle_vmapped = jax.jit(jax.vmap(_eval_all))


def _eager(name: str, x: jax.Array, a: Aux) -> tuple[jax.Array, jax.Array]:
    f = FNS[name]
    value = f(x, a)
    _, vjp = jax.vjp(lambda z: f(z, a), x)
    cot = a.w.astype(value.dtype) if name in PER_CLASS else jnp.ones_like(value)
    return value, vjp(cot)[0]


# --------------------------------------------------------------------------------------------
# dtypes
# --------------------------------------------------------------------------------------------

DTYPES = ("float32", "bfloat16", "float16", "float64")
U = {"float32": 2.0**-24, "float64": 2.0**-53, "bfloat16": 2.0**-8, "float16": 2.0**-11}
VALUE_BOUND, GRAD_BOUND = 4.0, 8.0


@pytest.fixture(params=DTYPES)
def dtype(request: pytest.FixtureRequest) -> str:
    if request.param == "float64":
        request.getfixturevalue("x64")
    return request.param


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(jnp.dtype(name))


def _u(dt: Any) -> float:
    return U[jnp.dtype(dt).name]


def _tiny(dt: Any) -> float:
    return float(jnp.finfo(dt).tiny)


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` rounded to ``dtype`` and back in float64: the exact input the function sees."""
    fmax = float(jnp.finfo(dtype).max)
    with np.errstate(invalid="ignore"):
        a = np.where(np.isfinite(a), np.clip(a, -fmax, fmax), a)
    return np.asarray(a, np.float64).astype(_np_dtype(dtype)).astype(np.float64)


def _f64(a: jax.Array) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # signalling NaNs
        return np.asarray(a).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------

# (shape, masked): a size-1 batch with one class, an empty batch, two batch axes with a mask,
# a size-1 batch with 64 classes. Each (dtype, variant) compiles one program for every
# function (``_bundle``): a few seconds each, the bulk of this file's run time.
MAIN = ((2, 3, 7), True)
SINGLE, EMPTY, WIDE = ((1, 1), False), ((0, 6), True), ((1, 64), False)
VARIANTS = {  # every shape in float32 and float64; the 16-bit dtypes share them out
    "float32": (SINGLE, EMPTY, MAIN, WIDE),
    "float64": (SINGLE, EMPTY, MAIN, WIDE),
    "bfloat16": (EMPTY, MAIN, WIDE),
    "float16": (SINGLE, EMPTY, MAIN),
}
SCALES = (1e-4, 1e-2, 1.0, 5.0, 30.0, 1e3, 1e4)
OFFSETS = {
    "float16": (0.0, 1.0, -3.0, 100.0, -1e3, 8e3),  # |x| <= 16000: no overflow in float16
    "default": (0.0, 1.0, -3.0, 100.0, -1e4, 1e6, -1e8, 1e8),
}
F16_LIMIT = 16000.0


@dataclasses.dataclass
class Inputs:
    """One batch; float arrays hold exactly the values the function sees (in float64)."""

    dtype: str
    x: np.ndarray  # logits, or log-predictions for the KL functions
    t: np.ndarray
    y: np.ndarray  # int32
    lt: np.ndarray
    tb: np.ndarray
    w: np.ndarray
    where: np.ndarray | None
    raw: np.ndarray | None = None  # x's exact bit patterns in dtype (NaN payloads), if any

    @property
    def shape(self) -> tuple[int, ...]:
        return self.x.shape

    def replace(self, **kw: Any) -> Inputs:
        return dataclasses.replace(self, **kw)

    def jax(self) -> tuple[jax.Array, Aux]:
        d = _np_dtype(self.dtype)

        def c(a: np.ndarray) -> jax.Array:
            return jnp.asarray(a.astype(d))

        where = None if self.where is None else jnp.asarray(self.where)
        aux = Aux(c(self.t), jnp.asarray(self.y), c(self.lt), c(self.tb), c(self.w), where)
        x = c(self.x) if self.raw is None else jnp.asarray(self.raw)
        return x, aux

    def mask(self) -> np.ndarray:
        """The effective class mask (all True where ``where`` is None)."""
        return np.ones(self.shape, bool) if self.where is None else self.where

    def describe(self, row: tuple[int, ...] | None = None) -> str:
        pick = (lambda a: a) if row is None else (lambda a: a[row])
        parts = [f"dtype={self.dtype} shape={self.shape}", f"x={pick(self.x)!r}"]
        for k in ("t", "y", "lt", "tb", "w"):
            parts.append(f"{k}={pick(getattr(self, k))!r}")
        if self.where is not None:
            parts.append(f"where={pick(self.where)!r}")
        return "\n  ".join(parts)


def _evaluate(inp: Inputs) -> dict[str, tuple[jax.Array, jax.Array]]:
    x, aux = inp.jax()
    return _bundle(x, aux)


def _rows(a: np.ndarray, v: int) -> np.ndarray:
    return a.reshape(-1, v)


@st.composite
def logits_arrays(draw: st.DrawFn, rng: np.random.Generator, dtype: str, shape: tuple[int, ...]):
    """Logits with scale 1e-4..1e4, offsets to 1e8, confident rows, ties, ±inf, empty rows."""
    V = shape[-1]
    batch = shape[:-1]
    scale = draw(st.sampled_from(SCALES))
    offset = draw(st.sampled_from(OFFSETS["float16" if dtype == "float16" else "default"]))
    x = rng.standard_normal(shape) * scale + offset
    if draw(st.booleans()):  # confident rows: one class ahead by a gap of 10..100
        gap = draw(st.sampled_from([10.0, 17.0, 40.0, 100.0]))
        j = rng.integers(0, V, size=(*batch, 1))
        np.put_along_axis(x, j, x.max(axis=-1, keepdims=True) + gap, axis=-1)
    if draw(st.booleans()):  # ties with another class
        src = rng.integers(0, V, size=(*batch, 1))
        dst = rng.integers(0, V, size=(*batch, 1))
        np.put_along_axis(x, dst, np.take_along_axis(x, src, axis=-1), axis=-1)
    if dtype == "float16":
        x = np.clip(x, -F16_LIMIT, F16_LIMIT)
    ninf = draw(st.sampled_from([0.0, 0.0, 0.2, 0.6]))
    if ninf:
        x[rng.random(shape) < ninf] = -np.inf
    if draw(st.integers(0, 7)) == 0:  # some rows empty (every class -inf)
        x[rng.random(batch) < 0.5] = -np.inf
    if draw(st.integers(0, 7)) == 0:  # +inf entries
        x[rng.random(shape) < 0.15] = np.inf
    return _cast(x, dtype)


PROBABILITY_KINDS = ["onehot_argmax", "onehot", "smoothed", "dirichlet", "sparse"]
#: Targets outside [0, 1]: per-example weights folded in (w > 1, any loss), signed advantages
#: on one-hot targets and rows of both signs (the losses linear in their targets).
SCALED_KINDS = ["weighted"]
SIGNED_KINDS = ["advantage", "signed"]


def _soft_labels(draw: st.DrawFn, rng: np.random.Generator, x: np.ndarray, dtype: str, kinds=None):
    shape, V = x.shape, x.shape[-1]
    batch = shape[:-1]
    kinds = kinds or PROBABILITY_KINDS + SCALED_KINDS + SIGNED_KINDS
    kind = draw(st.sampled_from(kinds))
    if kind in SCALED_KINDS + SIGNED_KINDS:
        base = _soft_labels(draw, rng, x, dtype, ["onehot_argmax", "onehot", "smoothed"])
        base = np.asarray(base, np.float64)
        if kind == "weighted":
            t = base * rng.uniform(1.0, 10.0, size=(*batch, 1))
        elif kind == "advantage":
            t = base * rng.choice([-1.0, 1.0], size=(*batch, 1)) * rng.uniform(0.01, 10.0)
        else:
            t = base + rng.dirichlet(np.ones(V), size=batch) - rng.dirichlet(np.ones(V), size=batch)
        return _cast(t + 0.0, dtype)
    if kind in ("onehot_argmax", "onehot", "smoothed"):
        j = np.argmax(x, axis=-1) if kind == "onehot_argmax" else rng.integers(0, V, size=batch)
        t = (np.arange(V) == j[..., None]).astype(np.float64)
        if kind == "smoothed":
            alpha = draw(st.sampled_from([0.01, 0.1, 0.3]))
            t = t * (1 - alpha) + alpha / V
    else:
        t = rng.dirichlet(np.full(V, draw(st.sampled_from([0.1, 1.0]))), size=batch)
        if kind == "sparse":
            t = np.where(rng.random(shape) < 0.5, 0.0, t)
    if draw(st.booleans()):  # no target mass on -inf logits (0 log 0); else +inf losses
        t = np.where(x == -np.inf, 0.0, t)
    return _cast(t.reshape(shape), dtype)


def _int_labels(draw: st.DrawFn, rng: np.random.Generator, x: np.ndarray, invalid: bool):
    V, batch = x.shape[-1], x.shape[:-1]
    kind = draw(st.sampled_from(["argmax", "random"] + (["invalid"] if invalid else [])))
    y = np.argmax(x, axis=-1) if kind == "argmax" else rng.integers(0, V, size=batch)
    if kind == "invalid":
        y = np.where(rng.random(batch) < 0.5, y, rng.choice([-1, V, V + 3], size=batch))
    return np.asarray(y, np.int32).reshape(batch)


def _binary_labels(draw: st.DrawFn, rng: np.random.Generator, shape, dtype: str):
    kind = draw(st.sampled_from(["binary", "uniform", "mixed", "outside"]))
    b = rng.integers(0, 2, size=shape).astype(np.float64)
    if kind == "binary":
        return _cast(b, dtype)
    if kind == "outside":  # labels outside [0, 1]: the loss is affine in its label
        return _cast(np.where(rng.random(shape) < 0.5, b, rng.uniform(-3.0, 4.0, shape)), dtype)
    u = rng.random(shape)
    return _cast(u if kind == "uniform" else np.where(rng.random(shape) < 0.5, b, u), dtype)


def _mask(draw: st.DrawFn, rng: np.random.Generator, shape, masked: bool):
    if not masked:
        return None
    kind = draw(st.sampled_from(["all", "dense", "sparse", "empty_rows"]))
    if kind == "all":
        return np.ones(shape, bool)
    where = rng.random(shape) < (0.8 if kind in ("dense", "empty_rows") else 0.3)
    if kind == "empty_rows":
        where[rng.random(shape[:-1]) < 0.5] = False
    return where


@st.composite
def inputs(
    draw: st.DrawFn,
    dtype: str,
    name: str,
    variants: tuple | None = None,
    invalid_labels: bool = False,
) -> Inputs:
    """A batch for function ``name``: logits, labels of every kind, cotangent and mask."""
    shape, masked = draw(st.sampled_from(variants or VARIANTS[dtype]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = draw(logits_arrays(rng, dtype, shape))
    # KL-type targets need t >= 0 (t·log t); the cross-entropies take any real target.
    nonneg = PROBABILITY_KINDS + SCALED_KINDS
    t = _soft_labels(draw, rng, x, dtype, nonneg if name in KL_FNS else None)
    where = _mask(draw, rng, shape, masked)
    lt_src = _soft_labels(draw, rng, x, dtype, nonneg)
    with np.errstate(divide="ignore"):
        lt = _cast(np.log(lt_src), dtype)
    if name in KL_FNS and draw(st.booleans()):
        # Normalized log-predictions: log_softmax of the logits (float64), then rounded.
        with np.errstate(all="ignore"):
            x = _cast(ref.np_log_softmax(x, where).value, dtype)
    return Inputs(
        dtype=dtype,
        x=x,
        t=t,
        y=_int_labels(draw, rng, x, invalid_labels),
        lt=lt,
        tb=_binary_labels(draw, rng, shape, dtype),
        w=_cast(rng.standard_normal(shape), dtype),
        where=where,
    )


# --------------------------------------------------------------------------------------------
# References and the error measure
# --------------------------------------------------------------------------------------------


def np_reference(name: str, inp: Inputs) -> ref.Ref:
    """float64 numpy reference (value, grad, kappa, kappa_grad) of ``name`` on ``inp``."""
    with np.errstate(all="ignore"):  # inf - inf in a row sum is NaN, as it should be
        return _np_reference(name, inp)


def _np_reference(name: str, inp: Inputs) -> ref.Ref:
    x, w = inp.x, inp.where
    if name == "logsumexp":
        return ref.np_logsumexp(x, w)
    if name == "log_softmax":
        return ref.np_log_softmax(x, w)
    if name == "softmax":
        return ref.np_softmax(x, w)
    if name == "softmax_cross_entropy":
        return ref.np_softmax_cross_entropy(x, inp.t, w)
    if name == "safe_softmax_cross_entropy":
        return ref.np_softmax_cross_entropy(x, inp.t)
    if name == "softmax_cross_entropy_with_integer_labels":
        return ref.np_softmax_cross_entropy_with_integer_labels(x, inp.y, w)
    if name == "kl_divergence":
        return ref.np_kl_divergence(x, inp.t, w)
    if name == "kl_divergence_with_log_targets":
        return ref.np_kl_divergence_with_log_targets(x, inp.lt, w)
    if name == "sigmoid_binary_cross_entropy":
        return ref.np_sigmoid_binary_cross_entropy(x, inp.tb)
    return getattr(ref, f"np_{name}")(x)


def _mp_row_reference(name: str, x, t, y, lt, where) -> ref.Ref:
    if name == "logsumexp":
        return ref.mp_logsumexp(x, where)
    if name == "log_softmax":
        return ref.mp_log_softmax(x, where)
    if name == "softmax":
        return ref.mp_softmax(x, where)
    if name == "softmax_cross_entropy":
        return ref.mp_softmax_cross_entropy(x, t, where)
    if name == "safe_softmax_cross_entropy":
        return ref.mp_softmax_cross_entropy(x, t)
    if name == "softmax_cross_entropy_with_integer_labels":
        return ref.mp_softmax_cross_entropy_with_integer_labels(x, int(y), where)
    if name == "kl_divergence":
        return ref.mp_kl_divergence(x, t, where)
    if name == "kl_divergence_with_log_targets":
        return ref.mp_kl_divergence_with_log_targets(x, lt, where)
    raise KeyError(name)


def _vjp_reference(
    name: str, inp: Inputs, p: np.ndarray, kappa_p: np.ndarray, u_c: float, tiny_c: float
):
    """Exact VJP of log_softmax / softmax with cotangent w, and a rounding bound for it.

    From p = softmax(x) (exact) and its accuracy |p^ - p| <= 4 u_c (p + kappa_p) (the softmax
    standard, in the compute precision u_c): log_softmax's VJP is g = w' - p S (w' = w on
    unmasked classes, S = sum w'), softmax's is g = p (w' - <p, w'>). The bound adds
    |S| |p^ - p| (resp. the propagated error of <p, w'>) to a few roundings of each product and
    of the V-term sums, and ``tiny_c`` times the factor multiplying p (a probability below the
    smallest normal is flushed to 0 by XLA). Returns (g, bound) without the output rounding,
    which the caller adds.
    """
    m = inp.mask()
    wm = np.where(m, inp.w, 0.0)
    dp = 8.0 * u_c * (p + kappa_p) + tiny_c  # twice the softmax standard, and the flush
    V = inp.shape[-1]
    if name == "log_softmax":
        S = wm.sum(-1, keepdims=True)
        Sabs = np.abs(wm).sum(-1, keepdims=True)
        g = wm - p * S
        bound = np.abs(S) * dp + 8.0 * u_c * (np.abs(wm) + p * (np.abs(S) + V * Sabs))
        # An empty row (every kept logit -inf) is the constant -inf: derivative 0 (jaxce's
        # documented limit, issue-5 bug 1).
        empty = ~np.any(m & ~np.isneginf(inp.x), axis=-1, keepdims=True)
        g = np.where(empty, 0.0, g)
        return np.where(m | np.isnan(p), g, 0.0), bound  # a NaN row is NaN, masked included
    pw = (p * wm).sum(-1, keepdims=True)
    pwa = (p * np.abs(wm)).sum(-1, keepdims=True)
    dpw = (dp * np.abs(wm)).sum(-1, keepdims=True) + 8.0 * u_c * V * pwa
    g = p * (wm - pw)
    bound = dp * (np.abs(wm) + np.abs(pw)) + p * dpw + 8.0 * u_c * p * (np.abs(wm) + np.abs(pw))
    return g, bound


@dataclasses.dataclass
class Errors:
    value: np.ndarray  # condition-scaled errors, value's shape
    grad: np.ndarray  # gradient's shape


def _score(name: str, inp: Inputs, value: jax.Array, grad: jax.Array) -> Errors:
    """Condition-scaled errors of jaxce's value and gradient against the reference.

    u is the unit roundoff of the *output* dtype (float32 for losses of 16-bit inputs, the
    input dtype for primitives and gradients); ``tiny`` its smallest normal (XLA flushes
    subnormals). float32 / 16-bit results are scored against the numpy float64 reference
    (a few float64 ulps: negligible); float64 results against mpmath, row by row.
    """
    uv, ug = _u(value.dtype), _u(grad.dtype)
    tv, tg = _tiny(value.dtype), _tiny(grad.dtype)
    v, g = _f64(value), _f64(grad)
    if name in ("softmax_cross_entropy", "safe_softmax_cross_entropy"):
        # a flushed subnormal p_j times T inside T·p_j − t_j (targets above 1)
        tg = np.broadcast_to(ref.flush_floor(inp.t, tg), g.shape)
    exact = inp.dtype == "float64"
    if name in PER_CLASS:
        # Value: the reference. Gradient (a VJP): the propagated bound of _vjp_reference.
        compute = "float64" if exact else "float32"  # 16-bit inputs are computed in float32
        sm = np_reference("softmax", inp)
        p, kp = sm.value, sm.kappa
        if exact:
            p = _mp_rows(inp, "softmax", lambda r: np.array([float(a) for a in r.value]))
        gref, gb = _vjp_reference(name, inp, p, kp, _u(compute), _tiny(compute))
        eg = _bounded_error(g, gref, gb + ug * np.abs(gref), tg)
        if exact:
            ev = _mp_scored(name, inp, v, None, uv, tv, ug, tg)[0]
        else:
            r = np_reference(name, inp)
            ev = ref.condition_scaled_error(v, r.value, r.kappa, uv, tv)
        return Errors(np.asarray(ev), eg * GRAD_BOUND)  # reported on the 8-ulp scale
    if exact and name in ROW_FNS:
        ev, eg = _mp_scored(name, inp, v, g, uv, tv, ug, tg)
        return Errors(ev, eg)
    if exact:  # elementwise, float64: mpmath on the flattened array
        mp_fn = getattr(ref, f"mp_{name}")
        if v.size == 0:
            return Errors(np.zeros(v.shape), np.zeros(g.shape))
        r = mp_fn(inp.x, inp.tb) if name == "sigmoid_binary_cross_entropy" else mp_fn(inp.x)
        ev = ref.condition_scaled_error(v.ravel(), r.value, r.kappa, uv, tv)
        eg = ref.condition_scaled_error(g.ravel(), r.grad, r.kappa_grad, ug, tg)
        return Errors(np.reshape(ev, v.shape), np.reshape(eg, g.shape))
    r = np_reference(name, inp)
    ev = ref.condition_scaled_error(v, r.value, r.kappa, uv, tv)
    eg = ref.condition_scaled_error(g, r.grad, r.kappa_grad, ug, tg)
    return Errors(np.asarray(ev), np.asarray(eg))


def _bounded_error(v: np.ndarray, r: np.ndarray, bound: np.ndarray, tiny: float) -> np.ndarray:
    """|v - r| / bound, in units of ``bound`` (0 for equal values and flushed subnormals)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.abs(v - r)
        e = np.where(bound > 0, d / bound, np.where(d == 0, 0.0, np.inf))
        e = np.where((v == r) | (d < tiny), 0.0, e)
        e = np.where(np.isnan(r), np.where(np.isnan(v), 0.0, np.inf), e)
        e = np.where(np.isnan(v) & ~np.isnan(r), np.inf, e)
    return e


def _mp_rows(inp: Inputs, name: str, fn: Callable[[ref.Ref], np.ndarray]) -> np.ndarray:
    V = inp.shape[-1]
    xs = _rows(inp.x, V)
    ws = None if inp.where is None else _rows(inp.where, V)
    out = [fn(_mp_row_reference(name, xs[i], None, None, None, None if ws is None else ws[i]))
           for i in range(xs.shape[0])]  # fmt: skip
    return np.asarray(out, np.float64).reshape(inp.shape)


def _mp_scored(name, inp: Inputs, v, g, uv, tv, ug, tg) -> tuple[np.ndarray, np.ndarray | None]:
    pytest.importorskip("mpmath")
    V = inp.shape[-1]
    xs, ts, lts = _rows(inp.x, V), _rows(inp.t, V), _rows(inp.lt, V)
    ys = inp.y.reshape(-1)
    ws = None if inp.where is None else _rows(inp.where, V)
    per_class = name in PER_CLASS
    vr = v.reshape(-1, V) if per_class else v.reshape(-1)
    gr = None if g is None else g.reshape(-1, V)
    ev = np.zeros(vr.shape)
    eg = None if g is None else np.zeros(gr.shape)
    for i in range(xs.shape[0]):
        w = None if ws is None else ws[i]
        if name == "safe_softmax_cross_entropy":
            w = None
        r = _mp_row_reference(name, xs[i], ts[i], ys[i] if ys.size else 0, lts[i], w)
        ev[i] = ref.condition_scaled_error(vr[i], r.value, r.kappa, uv, tv)
        if eg is not None:
            tgi = tg if np.ndim(tg) == 0 else np.asarray(tg).reshape(-1, V)[i]
            eg[i] = ref.condition_scaled_error(gr[i], r.grad, r.kappa_grad, ug, tgi)
    return ev.reshape(v.shape), None if eg is None else eg.reshape(g.shape)


def _assert_within(e: np.ndarray, bound: float, what: str, inp: Inputs, extra: str = "") -> int:
    """Assert every error is <= bound; returns how many values were checked."""
    e = np.asarray(e, np.float64)
    bad = ~(e <= bound)
    if bad.any():
        worst = np.where(bad, np.nan_to_num(e, nan=np.inf), -1.0)
        idx = np.unravel_index(np.argmax(worst), e.shape)
        row = idx[: len(inp.shape) - 1]
        raise AssertionError(
            f"{what}: error {e[idx]:.4g} > {bound} at index {idx}\n  {extra}\n"
            f"  row inputs: {inp.describe(row)}"
        )
    return int(e.size)


# --------------------------------------------------------------------------------------------
# 1. Agreement with the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PUBLIC_FNS)
def test_matches_reference(name, dtype, request):
    """Value <= 4 and gradient <= 8 condition-scaled ulps of the float64 reference.

    Rows include confident predictions, ties, 1e8 offsets, -inf/+inf entries, empty rows,
    masks and invalid integer labels (NaN by convention, matched against the reference).
    Gradients of log_softmax / softmax are VJPs with a random cotangent, scored against the
    rounding bound propagated from the softmax standard (``_vjp_reference``).
    """

    def check(inp: Inputs) -> int:
        value, grad = _evaluate(inp)[name]
        err = _score(name, inp, value, grad)
        n = _assert_within(err.value, VALUE_BOUND, f"{name} value", inp, f"value={value!r}")
        n += _assert_within(err.grad, GRAD_BOUND, f"{name} gradient", inp, f"grad={grad!r}")
        return n

    factor = 0.5 if dtype == "float64" else 1.0  # mpmath references are slow
    _run(request, inputs(dtype, name, invalid_labels=True), check, factor)


# --------------------------------------------------------------------------------------------
# 2. Range: non-negative losses, bounded primitives
# --------------------------------------------------------------------------------------------


def _kl_lower_bound(inp: Inputs, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(T log(T/P), T) per row: the log-sum inequality sum t log(t/p) >= T log(T/P).

    T and P sum t and p = exp(log_predictions) over the unmasked classes with t > 0. For
    normalized predictions (P <= 1) and targets (T = 1) this is the usual KL >= 0; the bound
    stays exact for the rounded (slightly unnormalized) 16-bit inputs.
    """
    t = np.exp(inp.lt) if name == "kl_divergence_with_log_targets" else inp.t
    pos = inp.mask() & (t > 0)
    T = np.where(pos, t, 0.0).sum(-1)
    log_p = np_reference("logsumexp", inp.replace(where=pos)).value  # log P without under/overflow
    with np.errstate(divide="ignore", invalid="ignore"):
        lb = np.where(T > 0, T * (np.log(T) - log_p), 0.0)
    return lb, T


@pytest.mark.parametrize("name", PUBLIC_FNS)
def test_range(name, dtype, request):
    """Losses >= 0, log-probabilities <= 0, probabilities in [0, 1], max <= lse <= max + log n.

    Exact (no tolerance) where every term of the stable form is non-negative, so rounding
    cannot cross the bound (for the losses: targets >= 0, binary labels in [0, 1]; signed
    targets make any sign): CE sums t(m - x) >= 0 and T log1p(S') >= 0; BCE and softplus sum
    softplus values; log_softmax is (x - m) - log1p(S') <= 0; softmax e/(1 + S') with e <= 1;
    logsumexp m + log1p(S') >= m (m is an input value, so also after 16-bit rounding). KL can
    be below 0 by rounding only: KL >= T log(T/P) - 4u(|r| + kappa + T) (log-sum inequality;
    the T term covers the float64 rounding of the bound itself).
    """

    def check(inp: Inputs) -> int:
        value, _ = _evaluate(inp)[name]
        v = _f64(value)
        if v.size == 0:
            return 0
        if name in CE_FNS:
            # >= 0 for targets that are probabilities (signed ones make any sign)
            signed = False if name.endswith("integer_labels") else np.any(inp.t < 0, axis=-1)
            ok = (v >= 0) | signed
        elif name == "sigmoid_binary_cross_entropy":
            ok = (v >= 0) | (inp.tb < 0) | (inp.tb > 1)
        elif name == "softplus":
            ok = v >= 0
        elif name in ("log_sigmoid", "log_softmax"):
            ok = v <= 0
        elif name in ("sigmoid", "softmax"):
            ok = (v >= 0) & (v <= 1)
        elif name == "logsumexp":
            xm = np.where(inp.mask(), inp.x, -np.inf)
            mx = xm.max(-1)
            n = np.maximum((xm > -np.inf).sum(-1), 1)
            with np.errstate(invalid="ignore"):
                upper = mx + np.log(n) + 4 * _u(value.dtype) * (np.abs(mx) + np.log(n))
            ok = (v >= mx) & ((v <= upper) | np.isinf(mx) & (v == mx))
        else:
            lb, T = _kl_lower_bound(inp, name)
            r = np_reference(name, inp)
            with np.errstate(invalid="ignore"):
                tol = VALUE_BOUND * _u(value.dtype) * (np.abs(r.value) + r.kappa + T)
                ok = np.where(lb == np.inf, v == np.inf, v >= lb - tol)
                ok |= np.isnan(r.value)  # +inf and -inf log-predictions: undefined
        if not np.all(ok):
            i = np.unravel_index(np.argmin(ok), ok.shape)
            row = i[: len(inp.shape) - 1]
            raise AssertionError(f"{name} out of range at {i}: {v[i]!r}\n  {inp.describe(row)}")
        return v.size

    _run(request, inputs(dtype, name), check)


# --------------------------------------------------------------------------------------------
# 3. Shift invariance
# --------------------------------------------------------------------------------------------

SHIFT_FNS = ("logsumexp", "log_softmax", "softmax", *CE_FNS)
P_BITS = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}
# Exponents s of the grid 2^s: x = m 2^s stays normal and, for float16, below 2^14.
GRID_EXPONENTS = {
    "float16": (-14, 3),
    "bfloat16": (-40, 40),
    "float32": (-40, 5),
    "float64": (-60, -10),
}


@st.composite
def shifted_inputs(draw: st.DrawFn, dtype: str, name: str) -> tuple[Inputs, Inputs, float]:
    """A batch on the grid m 2^s (|m| <= 2^(p-1)) and the same batch shifted by c = j 2^s.

    With |m + j| <= 2^p both x and x + c are exactly representable, so the shift is exact:
    the exact results are equal (logsumexp: shifted by c) and any difference is rounding.
    """
    base = draw(inputs(dtype, name))
    shape = base.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    M = 2 ** (P_BITS[dtype] - 1)
    s = draw(st.integers(*GRID_EXPONENTS[dtype]))
    spread = min(draw(st.sampled_from([0, 1, 3, 30, 1000, M // 4])), M)
    center = draw(st.integers(-M // 2, M // 2))
    m = center + rng.integers(-spread, spread + 1, size=shape)
    if draw(st.booleans()):  # confident rows
        j = rng.integers(0, shape[-1], size=(*shape[:-1], 1))
        gap = draw(st.sampled_from([10, 40, 1000, M]))
        np.put_along_axis(m, j, m.max(axis=-1, keepdims=True) + gap, axis=-1)
    m = np.clip(m, -M, M)
    shift = draw(st.one_of(st.integers(-4, 4), st.integers(-M, M), st.sampled_from([-M, M])))
    x = m.astype(np.float64) * 2.0**s
    c = float(shift) * 2.0**s
    special = ~np.isfinite(base.x)  # keep the +-inf entries and empty rows of the base draw
    x = np.where(special, base.x, x)
    xc = x + c
    assert np.array_equal(_cast(x, dtype), x)
    assert np.array_equal(_cast(xc, dtype), xc)
    t = base.t
    if draw(st.booleans()):
        t = np.where(x == -np.inf, 0.0, t)
    y = np.argmax(x, axis=-1).astype(np.int32) if draw(st.booleans()) else base.y
    a = base.replace(x=x, t=t, y=y.reshape(base.y.shape))
    return a, a.replace(x=xc), c


def _pairwise_tol(bound: float, u: float, tiny: float, r0: ref.Ref, r1: ref.Ref, grad: bool):
    """bound u (|r| + kappa) for each of the two results: both are within it of the same r."""
    if grad:
        return bound * u * (np.abs(r0.grad) + r0.kappa_grad + np.abs(r1.grad) + r1.kappa_grad) + (
            2 * tiny
        )
    return bound * u * (np.abs(r0.value) + r0.kappa + np.abs(r1.value) + r1.kappa) + 2 * tiny


def _assert_close(a, b, tol, what: str, inp: Inputs) -> int:
    """a == b (also for infinities and NaN) or |a - b| <= tol, elementwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore"):
        ok = (a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= tol)
    if not np.all(ok):
        i = np.unravel_index(np.argmin(ok), ok.shape)
        row = i[: len(inp.shape) - 1]
        raise AssertionError(
            f"{what} at {i}: {a[i]!r} vs {b[i]!r} (tolerance {np.broadcast_to(tol, ok.shape)[i]!r})"
            f"\n  {inp.describe(row)}"
        )
    return int(ok.size)


def _grad_tol(name: str, inp: Inputs, grad: jax.Array, r: ref.Ref | None) -> np.ndarray:
    """Allowed gradient error: 8 u (|g| + kappa_g), or the VJP bound for log_softmax/softmax."""
    ug, tg = _u(grad.dtype), _tiny(grad.dtype)
    if name in PER_CLASS:
        compute = "float64" if inp.dtype == "float64" else "float32"
        sm = np_reference("softmax", inp)
        gref, gb = _vjp_reference(name, inp, sm.value, sm.kappa, _u(compute), _tiny(compute))
        return gb + ug * np.abs(gref) + tg
    assert r is not None
    return GRAD_BOUND * ug * (np.abs(r.grad) + r.kappa_grad) + tg


@pytest.mark.parametrize("name", SHIFT_FNS)
def test_shift_invariance(name, dtype, request):
    """f(x + c) == f(x) (logsumexp: + c) for a constant c added to every logit of a row.

    x and x + c are exact (binary grid), so the two exact results coincide and each computed
    result is within the accuracy bound of it: |f(x + c) - f(x)| <= 4u(|r| + kappa(x)) +
    4u(|r| + kappa(x + c)) for values, 8u(...) for gradients (kappa from the float64 reference;
    it grows with |c|, as it must: the result of a shifted row is rounded at the scale of c).
    """

    def check(example: tuple[Inputs, Inputs, float]) -> int:
        a, b, c = example
        (va, ga), (vb, gb) = _evaluate(a)[name], _evaluate(b)[name]
        ra, rb = np_reference(name, a), np_reference(name, b)
        uv, tv = _u(va.dtype), _tiny(va.dtype)
        tol = _pairwise_tol(VALUE_BOUND, uv, tv, ra, rb, grad=False)
        vb64 = _f64(vb)
        if name == "logsumexp":  # float64 subtraction: error <= 2^-53 |vb - c|
            vb64 = vb64 - c
            tol = tol + 2.0**-52 * (np.abs(vb64) + abs(c))
        n = _assert_close(vb64, _f64(va), tol, f"{name}(x + {c!r}) value", a)
        gtol = _grad_tol(name, a, ga, ra if name not in PER_CLASS else None)
        gtol = gtol + _grad_tol(name, b, gb, rb if name not in PER_CLASS else None)
        n += _assert_close(_f64(gb), _f64(ga), gtol, f"{name}(x + {c!r}) gradient", a)
        return n if a.x.size else 0

    _run(request, shifted_inputs(dtype, name), check)


# --------------------------------------------------------------------------------------------
# 4. Permutation equivariance
# --------------------------------------------------------------------------------------------


@st.composite
def permuted_inputs(draw: st.DrawFn, dtype: str, name: str) -> tuple[Inputs, Inputs, np.ndarray]:
    """A batch and the same batch with its classes permuted (labels follow their class)."""
    a = draw(inputs(dtype, name))
    V = a.shape[-1]
    perm = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(V)
    inv = np.argsort(perm)
    b = a.replace(
        x=a.x[..., perm],
        t=a.t[..., perm],
        lt=a.lt[..., perm],
        tb=a.tb[..., perm],
        w=a.w[..., perm],
        where=None if a.where is None else a.where[..., perm],
        y=inv[a.y].astype(np.int32),
    )
    return a, b, perm


@pytest.mark.parametrize("name", PUBLIC_FNS)
def test_permutation_equivariance(name, dtype, request):
    """Permuting the classes permutes per-class outputs and gradients, and keeps row values.

    Summation order changes with the permutation, so the results agree within the sum of the
    two accuracy bounds (kappa is permutation-invariant), not bitwise.
    """

    def check(example: tuple[Inputs, Inputs, np.ndarray]) -> int:
        a, b, perm = example
        (va, ga), (vb, gb) = _evaluate(a)[name], _evaluate(b)[name]
        r = np_reference(name, a)
        uv, tv = _u(va.dtype), _tiny(va.dtype)
        per_class_value = name in PER_CLASS or name in ELEMENTWISE_FNS
        va64 = _f64(va)[..., perm] if per_class_value else _f64(va)
        rv = dataclasses.replace(
            r,
            value=r.value[..., perm] if per_class_value else r.value,
            kappa=r.kappa[..., perm] if per_class_value else r.kappa,
        )
        tol = _pairwise_tol(VALUE_BOUND, uv, tv, rv, rv, grad=False)
        n = _assert_close(_f64(vb), va64, tol, f"{name} value under permutation {perm}", b)
        rb = None if name in PER_CLASS else np_reference(name, b)
        gtol = _grad_tol(name, a, ga, None if name in PER_CLASS else r)[..., perm]
        gtol = gtol + _grad_tol(name, b, gb, rb)
        n += _assert_close(_f64(gb), _f64(ga)[..., perm], gtol, f"{name} gradient, {perm}", b)
        return n if a.x.size else 0

    _run(request, permuted_inputs(dtype, name), check)


# --------------------------------------------------------------------------------------------
# 5. Gradients sum to zero over the classes
# --------------------------------------------------------------------------------------------

ZERO_SUM_FNS = (
    *CE_FNS,
    "log_softmax",
    "softmax",
    "logsumexp",
)


@pytest.mark.parametrize("name", ZERO_SUM_FNS)
def test_gradient_sums_to_zero(name, dtype, request):
    """sum_j dL/dx_j = 0 for every non-empty row (logsumexp: sum_j p_j = 1).

    CE: the gradient is T p - t, which sums to T (sum p - 1) = 0 for ANY target mass T (so
    also for 16-bit targets that no longer sum to 1); the VJPs of log_softmax (w' - p S) and
    softmax (p (w' - <p, w'>)) sum to 0 for any cotangent (so the chain rule through them
    keeps it, e.g. for KL(t || softmax(x))). The KL divergences take log-probabilities, whose
    gradient -t has no such property. Rounding bound: the exact components sum to 0, so
    |sum_j g^_j| <= sum_j |g^_j - g_j| <= sum_j 8u(|g_j| + kappa_j) (the gradient standard per
    component; for the VJPs the propagated bound of ``_vjp_reference``) plus V tiny (flushed
    components) plus the float64 summation of the computed components (V 2^-53 sum |g^|).
    Empty rows (no class with p > 0) are excluded: there the CE gradient is -t.
    """

    def check(inp: Inputs) -> int:
        _, grad = _evaluate(inp)[name]
        g = _f64(grad)
        V = inp.shape[-1]
        ug, tg = _u(grad.dtype), _tiny(grad.dtype)
        mask = np.ones(inp.shape, bool) if name == "safe_softmax_cross_entropy" else inp.mask()
        nonempty = np.any(mask & (inp.x > -np.inf), axis=-1)
        if name in PER_CLASS:
            per = _grad_tol(name, inp, grad, None) + ug * np.abs(g)
            target = 0.0
        else:
            r = np_reference(name, inp)
            per = GRAD_BOUND * ug * (np.abs(r.grad) + r.kappa_grad)
            target = np.where(nonempty, 1.0, 0.0) if name == "logsumexp" else 0.0
        tol = per.sum(-1) + V * tg + V * 2.0**-53 * np.abs(g).sum(-1)
        total = g.sum(-1)
        if name == "logsumexp":
            nonempty = np.ones_like(nonempty)  # empty rows: sum 0, checked too
        ok = ~nonempty | (np.abs(total - target) <= tol)
        if not np.all(ok):
            i = np.unravel_index(np.argmin(ok), ok.shape)
            raise AssertionError(
                f"{name}: gradient sums to {total[i]!r} (expected {target}, tolerance "
                f"{tol[i]!r}) at row {i}: {g[i]!r}\n  {inp.describe(i)}"
            )
        return int(nonempty.sum())

    _run(request, inputs(dtype, name), check)


@pytest.mark.parametrize(
    "name",
    [
        "logsumexp",
        "log_softmax",
        "softmax",
    ],
)
def test_empty_rows_have_zero_derivatives(name, dtype, request):
    """Documented (jaxce/_primitives.py): an empty row (every class masked or -inf) gives
    logsumexp = -inf, log_softmax = -inf, softmax = 0, and all derivatives 0, never NaN."""

    @st.composite
    def empty(draw: st.DrawFn) -> Inputs:
        inp = draw(inputs(dtype, name))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        rows = rng.random(inp.shape[:-1]) < 0.5
        if inp.where is not None and draw(st.booleans()):
            return inp.replace(where=inp.where & ~rows[..., None])
        return inp.replace(x=np.where(rows[..., None], -np.inf, inp.x))

    def check(inp: Inputs) -> int:
        value, grad = _evaluate(inp)[name]
        v, g = _f64(value), _f64(grad)
        empty_rows = ~np.any(inp.mask() & (inp.x > -np.inf), axis=-1)
        if not empty_rows.any():
            return 0
        expect = 0.0 if name == "softmax" else -np.inf
        assert np.all(v[empty_rows] == expect), v[empty_rows]
        assert np.all(g[empty_rows] == 0.0), (g[empty_rows], inp.describe())
        return int(empty_rows.sum())

    _run(request, empty(), check, min_effective=0.1)


# --------------------------------------------------------------------------------------------
# 6. jit == eager, vmap == loop
# --------------------------------------------------------------------------------------------

_UINT = {"float16": np.uint16, "bfloat16": np.uint16, "float32": np.uint32, "float64": np.uint64}


def _ulp_distance(a: jax.Array, b: jax.Array) -> np.ndarray:
    """Number of representable values between a and b (same dtype); 0 for NaN vs NaN."""
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    ut = _UINT[jnp.dtype(a.dtype).name]
    it = np.dtype(ut.__name__.replace("uint", "int"))
    bits = 8 * it.itemsize

    def ordered(v: jax.Array) -> np.ndarray:
        i = np.asarray(v).view(it).astype(object)  # Python ints: no overflow
        sign = 1 << (bits - 1)
        return np.vectorize(lambda k: -(k + sign) if k < 0 else k, otypes=[object])(i)

    an, bn = np.isnan(_f64(a)), np.isnan(_f64(b))
    d = np.abs(ordered(a) - ordered(b)) if np.size(a) else np.zeros(np.shape(a), object)
    d = np.where(an & bn, 0, np.where(an ^ bn, 1 << 62, d))
    return np.asarray(d, np.float64)


# One shape per dtype: each costs an eager compile of every function and of its VJP (about
# 1 s a function). float32 always; bfloat16 (the 16-bit path) in the nightly profile only;
# float16 and float64 take the same code paths.
EAGER_VARIANT = {"float32": MAIN, "bfloat16": WIDE}


@pytest.mark.parametrize("name", PUBLIC_FNS)
@pytest.mark.parametrize("edtype", list(EAGER_VARIANT))
def test_jit_matches_eager(name, edtype, request):
    """f under jax.jit (fused with every other function and its VJP) == f called eagerly.

    Same shapes and the same jitted core (each public function runs its computation as one
    jitted core, inlined in an outer jit), so XLA emits the same elementwise code; fusion
    only changes where an operation is evaluated, and the order of a reduction. The sums that
    form values are compensated (``row_sum``: the exact sum rounded once), so that order does
    not show either. We allow 1 ulp of the output dtype (a last rounding on the other side of
    a convert); on XLA:CPU the results are observed bitwise equal. (With plain reductions, as
    before ``row_sum`` was compensated, 2-ulp differences were seen.) The gradient path
    differs more (an eager VJP partially evaluates and transposes the core on its own):
    same bound, also observed bitwise.
    """

    def check(inp: Inputs) -> int:
        x, aux = inp.jax()
        v, g = _bundle(x, aux)[name]
        ve, ge = _eager(name, x, aux)
        dv, dg = _ulp_distance(v, ve), _ulp_distance(g, ge)
        assert np.all(dv <= 1), (f"{name} value: jit {v!r} vs eager {ve!r}", inp.describe())
        assert np.all(dg <= 1), (f"{name} gradient: jit {g!r} vs eager {ge!r}", inp.describe())
        return int(dv.size + dg.size)

    if edtype != "float32" and _profile_name(request) == "ci":
        pytest.skip("16-bit eager compiles: nightly profile only (--run-slow)")
    # Valid labels only: an eager call may check its arguments (where jit cannot).
    _run(request, inputs(edtype, name, variants=(EAGER_VARIANT[edtype],)), check)


VMAP_VARIANT = MAIN  # vmap over the leading axis: each "row" is a (3, 7) batch


@pytest.mark.parametrize("name", PUBLIC_FNS)
def test_vmap_matches_loop(name, request):
    """jax.vmap over the rows == a python loop calling the function on each row.

    Not bitwise: XLA compiles the (V,) and the (B, V) programs with different vector code
    (the 1-ulp differences of exp/log1p between loop shapes are observed even for softplus),
    and the difference is amplified by the function's conditioning. Both results satisfy the
    accuracy standard, so they agree within the sum of the two bounds (value 4, gradient 8
    condition-scaled ulps; the VJP bound for log_softmax/softmax). float32 only: each dtype
    compiles two more programs, and the batching rules do not depend on it.
    """

    def check(inp: Inputs) -> int:
        x, aux = inp.jax()
        vv, gv = _bundle_vmapped(x, aux)[name]
        rows = [_bundle(x[i], Aux(*(None if a is None else a[i] for a in aux)))[name]
                for i in range(x.shape[0])]  # fmt: skip
        vl = jnp.stack([r[0] for r in rows])
        gl = jnp.stack([r[1] for r in rows])
        assert vv.dtype == vl.dtype
        assert gv.dtype == gl.dtype
        r = np_reference(name, inp)
        uv, tv = _u(vv.dtype), _tiny(vv.dtype)
        tol = _pairwise_tol(VALUE_BOUND, uv, tv, r, r, grad=False)
        n = _assert_close(_f64(vv), _f64(vl), tol, f"{name} value: vmap vs loop", inp)
        gtol = 2 * _grad_tol(name, inp, gv, None if name in PER_CLASS else r)
        n += _assert_close(_f64(gv), _f64(gl), gtol, f"{name} gradient: vmap vs loop", inp)
        return n

    strategy = inputs("float32", name, variants=(VMAP_VARIANT,), invalid_labels=True)
    _run(request, strategy, check)


# --------------------------------------------------------------------------------------------
# 7. Fuzz: random bit patterns
# --------------------------------------------------------------------------------------------


def _specials(dtype: str) -> np.ndarray:
    """±0, ±inf, NaNs (quiet, signalling, negative, payloads), subnormals, extremes, ±1."""
    fi = jnp.finfo(dtype)
    ut = _UINT[dtype]
    nbits = 8 * np.dtype(ut).itemsize
    mant = int(fi.nmant)
    exp_all = ((1 << (nbits - 1 - mant)) - 1) << mant  # exponent all ones
    sign = 1 << (nbits - 1)
    pats = [
        0,
        sign,  # -0
        exp_all,  # +inf
        sign | exp_all,  # -inf
        exp_all | (1 << (mant - 1)),  # quiet NaN
        sign | exp_all | (1 << (mant - 1)) | 1,  # negative quiet NaN with payload
        exp_all | 1,  # signalling NaN
        exp_all | ((1 << mant) - 1),  # NaN, all payload bits
        1,  # smallest subnormal
        (1 << mant) - 1,  # largest subnormal
        sign | 1,
        1 << mant,  # smallest normal
        sign | (exp_all - 1),  # -max
        exp_all - 1,  # max
    ]
    out = np.array(pats, dtype=ut).view(_np_dtype(dtype))
    return np.concatenate([out, np.array([1.0, -1.0], _np_dtype(dtype))])


def _random_bits(rng: np.random.Generator, dtype: str, shape) -> np.ndarray:
    """Random bit patterns of ``dtype`` mixed with special values, row by row."""
    ut = _UINT[dtype]
    n = int(np.prod(shape))
    bits = rng.integers(0, np.iinfo(ut).max, size=n, dtype=ut, endpoint=True)
    raw = np.frombuffer(bits.tobytes(), dtype=_np_dtype(dtype)).copy().reshape(shape)
    sp = _specials(dtype)
    V = shape[-1]
    rows = raw.reshape(-1, V)
    for r in rows:
        mode = rng.integers(0, 5)
        if mode == 1:  # specials only
            r[:] = rng.choice(sp, size=V)
        elif mode == 2:  # half specials
            pick = rng.random(V) < 0.5
            r[pick] = rng.choice(sp, size=V)[pick]
        elif mode == 3:  # mostly -inf (empty rows, lone survivors)
            r[rng.random(V) < 0.7] = -np.inf
        elif mode == 4:  # infinities
            pick = rng.random(V) < 0.6
            r[pick] = rng.choice(np.array([np.inf, -np.inf], r.dtype), size=V)[pick]
        if rng.random() < 0.5:  # half the rows have no NaN
            r[np.isnan(r)] = 0
    return rows.reshape(shape)


def _raw_to_f64(raw: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        x = raw.astype(np.float64)
    return np.where(np.isnan(x), np.nan, x)  # quiet NaN (float16 -> float64 keeps signalling)


@st.composite
def fuzz_inputs(draw: st.DrawFn, dtype: str, name: str) -> Inputs:
    inp = draw(inputs(dtype, name, invalid_labels=True))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    with np.errstate(invalid="ignore"):  # signalling NaNs
        raw = _random_bits(rng, dtype, inp.shape)
        if name in KL_FNS:  # log-probabilities: sign bit set (NaN and -inf included)
            raw = np.frombuffer(
                (raw.view(_UINT[dtype]) | _UINT[dtype](1 << (8 * raw.itemsize - 1))).tobytes(),
                dtype=raw.dtype,
            ).reshape(raw.shape)
        x = _raw_to_f64(raw)
        lt = -np.abs(_random_bits(rng, dtype, inp.shape).astype(np.float64))
    lt = np.where(np.isnan(lt), -np.inf, lt)  # NaN targets are unsupported by convention
    # Log targets whose exp underflows in the compute dtype have their own test
    # (test_kl_log_targets_underflowing_target): here they are -inf.
    compute = "float64" if dtype == "float64" else "float32"
    lt = np.where(lt < math.log(_tiny(compute)), -np.inf, lt)
    return inp.replace(x=x, raw=raw, lt=lt)


def _nan_rows(inp: Inputs, name: str) -> np.ndarray:
    """Rows (elements for elementwise functions) holding an unmasked NaN input."""
    if name in ELEMENTWISE_FNS:
        return np.isnan(inp.x)
    m = np.ones(inp.shape, bool) if name == "safe_softmax_cross_entropy" else inp.mask()
    return np.any(m & np.isnan(inp.x), axis=-1)


@pytest.mark.parametrize("name", PUBLIC_FNS)
def test_fuzz_random_bits(name, dtype, request):
    """Random bit patterns (±0, ±inf, NaN payloads, subnormals, extremes) as logits.

    Nothing raises; values and gradients agree with the reference's NaN / inf policy and its
    accuracy bound (a result beyond the dtype's range may overflow to inf of the right
    sign); a NaN logit makes its row (element) NaN in value and gradient; the other rows are
    bitwise unchanged when the NaN rows are replaced; the documented ±inf limits hold
    (``_check_documented_limits``).
    """

    def check(inp: Inputs) -> int:
        x, aux = inp.jax()
        value, grad = _bundle(x, aux)[name]
        v, g = _f64(value), _f64(grad)
        nan = _nan_rows(inp, name)
        # KL: the reference drops a term with zero target whatever its log-prediction, NaN
        # included; the Inf/NaN policy (docs/accuracy.md, followed here) makes any NaN input
        # NaN for its example. The gradient wrt the log-predictions stays -t in both.
        skip = nan if name in KL_FNS else np.zeros_like(nan)
        n = _fuzz_against_reference(name, inp, value, grad, skip_value=skip)
        assert np.all(np.isnan(v[nan])), (f"{name}: NaN input, non-NaN value", v)
        if name not in KL_FNS:
            assert np.all(np.isnan(g[nan])), (f"{name}: NaN input, non-NaN gradient", g)
        # The other rows are untouched: replace the NaN rows by zeros and compare bitwise (the
        # same compiled program computes each row from that row's inputs only).
        if nan.any() and not nan.all():
            assert inp.raw is not None
            drop = nan if name in ELEMENTWISE_FNS else nan[..., None]
            clean_raw = np.where(drop, np.zeros((), inp.raw.dtype), inp.raw)
            clean = inp.replace(raw=clean_raw, x=_raw_to_f64(clean_raw))
            v2, g2 = _bundle(*clean.jax())[name]
            keep = ~nan
            assert np.array_equal(v[keep], _f64(v2)[keep], equal_nan=True), (name, "value")
            assert np.array_equal(g[keep], _f64(g2)[keep], equal_nan=True), (name, "gradient")
        n += _check_documented_limits(name, inp, v, g)
        return n

    factor = 0.5 if dtype == "float64" else 1.0
    _run(request, fuzz_inputs(dtype, name), check, factor)


def _fuzz_against_reference(
    name: str, inp: Inputs, value: jax.Array, grad: jax.Array, skip_value: np.ndarray
) -> int:
    """The accuracy check of test_matches_reference; an exact value beyond the output dtype's
    range may come back as the infinity of its sign (overflow is the correctly rounded
    result)."""
    err = _score(name, inp, value, grad)
    with np.errstate(invalid="ignore", over="ignore"):
        r = np.asarray(np_reference(name, inp).value, np.float64)
        v = _f64(value)
        over = (np.abs(r) > float(jnp.finfo(value.dtype).max)) & (v == np.sign(r) * np.inf)
    skip = skip_value if skip_value.ndim == err.value.ndim else skip_value[..., None]
    ev = np.where(over | skip, 0.0, err.value)
    n = _assert_within(ev, VALUE_BOUND, f"{name} value", inp, f"value={value!r}")
    n += _assert_within(err.grad, GRAD_BOUND, f"{name} gradient", inp, f"grad={grad!r}")
    return n


def _check_documented_limits(name: str, inp: Inputs, v: np.ndarray, g: np.ndarray) -> int:
    """The edge-case tables of the docstrings and docs/accuracy.md, wherever the batch has one.

    Independent of the reference: each clause is a row of a documented table. Returns how
    many cases were checked.
    """
    x = inp.x
    n = 0

    def expect(cond: np.ndarray, got: np.ndarray, want: Any, what: str) -> None:
        nonlocal n
        cond = np.broadcast_to(np.asarray(cond, bool), got.shape)
        if not cond.any():
            return
        want_b = np.broadcast_to(np.asarray(want, np.float64), got.shape)[cond]
        got_c = got[cond]
        ok = (got_c == want_b) | (np.isnan(got_c) & np.isnan(want_b))
        assert np.all(ok), f"{name}: {what}: got {got_c!r}, documented {want_b!r}\n{inp.describe()}"
        n += int(cond.sum())

    if name in ELEMENTWISE_FNS:
        pinf, ninf = x == np.inf, x == -np.inf
        if name == "softplus":
            expect(pinf, v, np.inf, "softplus(+inf)"), expect(pinf, g, 1.0, "softplus'(+inf)")
            expect(ninf, v, 0.0, "softplus(-inf)"), expect(ninf, g, 0.0, "softplus'(-inf)")
        elif name == "log_sigmoid":
            expect(pinf, v, 0.0, "log_sigmoid(+inf)"), expect(pinf, g, 0.0, "d at +inf")
            expect(ninf, v, -np.inf, "log_sigmoid(-inf)"), expect(ninf, g, 1.0, "d at -inf")
        elif name == "sigmoid":
            expect(pinf, v, 1.0, "sigmoid(+inf)"), expect(pinf, g, 0.0, "sigmoid'(+inf)")
            expect(ninf, v, 0.0, "sigmoid(-inf)"), expect(ninf, g, 0.0, "sigmoid'(-inf)")
        else:
            t = inp.tb
            for xs, ts, val, der in [(np.inf, 1, 0, 0), (np.inf, 0, np.inf, 1),
                                     (-np.inf, 0, 0, 0), (-np.inf, 1, np.inf, -1)]:  # fmt: skip
                c = (x == xs) & (t == ts)
                expect(c, v, val, f"BCE(x={xs}, t={ts})"), expect(c, g, der, f"BCE' at {xs}, {ts}")
        return n

    mask = np.ones(x.shape, bool) if name == "safe_softmax_cross_entropy" else inp.mask()
    xm = np.where(mask, x, -np.inf)
    nan_row = np.any(mask & np.isnan(x), axis=-1)
    clean = ~nan_row
    n_inf = np.sum(xm == np.inf, axis=-1)
    empty = clean & np.all(xm == -np.inf, axis=-1)
    inf_row = clean & (n_inf > 0)
    row = lambda c: c[..., None]  # noqa: E731  (a row condition over the classes)

    if name in ("logsumexp", "log_softmax", "softmax"):
        share = np.where(xm == np.inf, 1.0 / np.maximum(n_inf, 1)[..., None], 0.0)
        if name == "logsumexp":
            expect(empty, v, -np.inf, "empty row"), expect(row(empty), g, 0.0, "empty row d")
            expect(inf_row, v, np.inf, "+inf row")
            expect(row(inf_row) & (n_inf[..., None] == 1), g, share, "+inf row d (one +inf)")
        elif name == "softmax":
            expect(row(empty), v, 0.0, "empty row")
            expect(row(inf_row) & (n_inf[..., None] == 1), v, share, "+inf row (one +inf)")
            expect(row(inf_row) & (xm != np.inf), v, 0.0, "+inf row, finite entries")
        else:
            expect(row(empty), v, -np.inf, "empty row")
            expect(row(inf_row) & (n_inf[..., None] == 1) & (xm == np.inf), v, 0.0, "lone +inf")
            expect(row(inf_row) & (xm != np.inf), v, -np.inf, "+inf row, finite entries")
        return n

    if name in ("softmax_cross_entropy", "safe_softmax_cross_entropy"):
        t = inp.t
        tm = np.where(mask, t, 0.0)
        expect(row(clean) & mask & (x == -np.inf) & (t == 0), g, 0.0, "zero target on -inf: d")
        pos_ninf = clean & np.any(mask & (x == -np.inf) & (t > 0), axis=-1)
        neg_ninf = clean & np.any(mask & (x == -np.inf) & (t < 0), axis=-1)
        expect(pos_ninf & ~neg_ninf, v, np.inf, "positive target on -inf")
        expect(neg_ninf & ~pos_ninf, v, -np.inf, "negative target on -inf")
        expect(pos_ninf & neg_ninf, v, np.nan, "targets of both signs on -inf")
        fin = row(clean) & np.isfinite(g)
        expect(row(clean), fin.astype(np.float64), 1.0, "finite gradient on non-NaN rows")
        all_masked = ~np.any(mask, axis=-1)
        expect(all_masked, v, 0.0, "all masked"), expect(row(all_masked), g, 0.0, "all masked d")
        expect(row(clean) & ~mask, g, 0.0, "masked class d")
        del tm
        return n

    if name == "softmax_cross_entropy_with_integer_labels":
        V = x.shape[-1]
        y = inp.y
        valid = (y >= 0) & (y < V)
        yc = np.clip(y, 0, V - 1)[..., None]
        xy = np.take_along_axis(x, yc, axis=-1)[..., 0]
        y_on = np.take_along_axis(mask, yc, axis=-1)[..., 0] & valid
        onehot = np.arange(V) == yc
        ok = clean & y_on
        expect(~valid, v, np.nan, "label out of range"), expect(row(~valid), g, np.nan, "its d")
        off = valid & ~y_on & clean
        expect(off, v, 0.0, "target class masked"), expect(row(off), g, 0.0, "its d")
        c = ok & (xy == -np.inf)
        expect(c, v, np.inf, "target logit -inf")
        expect(row(c) & onehot, g, -1.0, "target logit -inf: d at y")
        others_inf = np.any(mask & (x == np.inf) & ~onehot, axis=-1)
        c = ok & (xy == np.inf) & ~others_inf
        expect(c, v, 0.0, "target logit the only +inf"), expect(row(c), g, 0.0, "its d")
        c = ok & (xy != np.inf) & others_inf
        expect(c, v, np.inf, "+inf on another class")
        expect(row(c), np.isfinite(g).astype(np.float64), 1.0, "+inf on another class: finite d")
        if V == 1:
            c = ok & (xy > -np.inf)
            expect(c, v, 0.0, "single class"), expect(row(c), g, 0.0, "single class d")
        return n

    # KL divergences: zero target -> absent term (0 gradient), positive target on lp = -inf.
    t = inp.t if name == "kl_divergence" else np.exp(inp.lt)
    zero_t = t == 0
    expect(zero_t | ~mask, g, 0.0, "zero target or masked: d")
    pos_ninf = mask & (t > 0) & (x == -np.inf)
    nan_row = np.any(mask & np.isnan(x), axis=-1)
    expect(np.any(pos_ninf, axis=-1) & ~nan_row, v, np.inf, "positive target on lp = -inf")
    if name == "kl_divergence":
        expect(pos_ninf, g, -t, "positive target on lp = -inf: d = -t")
    expect(~np.any(mask & (t > 0), axis=-1) & ~nan_row, v, 0.0, "no target mass")
    return n


def test_kl_log_targets_underflowing_target(dtype, request):
    """Documented: ``log t_k`` finite and ``log p_k = -inf`` gives ``+inf``; and the loss is
    within the accuracy bound of the exact value when its terms are representable."""

    @st.composite
    def case(draw: st.DrawFn) -> Inputs:
        inp = draw(inputs(dtype, "kl_divergence_with_log_targets", variants=(MAIN,)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        lt = -rng.uniform(90.0, 700.0, size=inp.shape)
        x = np.where(rng.random(inp.shape) < 0.5, -np.inf, inp.x)
        return inp.replace(lt=_cast(lt, dtype), x=x)

    def check(inp: Inputs) -> int:
        value, _ = _evaluate(inp)["kl_divergence_with_log_targets"]
        # A +inf log-prediction (not a log-probability) gives a -inf term: inf - inf = NaN
        # for the row, in the references too; those rows say nothing about this bug.
        pos_inf = np.any(inp.mask() & (inp.x == np.inf), axis=-1)
        pos_ninf = np.any(inp.mask() & (inp.x == -np.inf), axis=-1) & ~pos_inf
        assert np.all(_f64(value)[pos_ninf] == np.inf), (_f64(value), inp.describe())
        return int(pos_ninf.sum())

    _run(request, case(), check)


def test_nan_row_with_masked_label(dtype, request):
    """A NaN logit (unmasked) makes its row NaN, also when the label's class is masked."""
    name = "softmax_cross_entropy_with_integer_labels"

    @st.composite
    def case(draw: st.DrawFn) -> Inputs:
        inp = draw(inputs(dtype, name, variants=(MAIN,)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        V = inp.shape[-1]
        y = inp.y[..., None]
        k = (y + 1 + rng.integers(0, V - 1, size=y.shape)) % V  # another class
        where, x = inp.mask().copy(), inp.x.copy()
        np.put_along_axis(where, y, False, axis=-1)  # the label's class is masked
        np.put_along_axis(where, k, True, axis=-1)
        np.put_along_axis(x, k, np.nan, axis=-1)  # an unmasked NaN logit
        return inp.replace(x=x, where=where)

    def check(inp: Inputs) -> int:
        value, grad = _evaluate(inp)[name]
        assert np.all(np.isnan(_f64(grad))), grad
        assert np.all(np.isnan(_f64(value))), (value, inp.describe())
        return int(value.size)

    _run(request, case(), check)


@pytest.mark.parametrize("name", ["softmax_cross_entropy", "safe_softmax_cross_entropy"])
def test_soft_ce_logit_range_beyond_max(name, request):
    """docs/accuracy.md: no inf where the exact result is finite (float32 logits near +-max)."""

    @st.composite
    def case(draw: st.DrawFn) -> Inputs:
        inp = draw(inputs("float32", name, variants=(MAIN,)))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        x = rng.uniform(-1.0, 1.0, size=inp.shape) * 1e30
        x[..., 0] = -draw(st.floats(1.8e38, 3.4e38))
        x[..., 1] = draw(st.floats(1.8e38, 3.4e38))
        t = np.full(inp.shape, 0.01)
        t[..., 1] = 1.0 - 0.01 * (inp.shape[-1] - 1)
        where = np.ones(inp.shape, bool)
        return inp.replace(x=_cast(x, "float32"), t=_cast(t, "float32"), where=where)

    def check(inp: Inputs) -> int:
        value, _ = _evaluate(inp)[name]
        r = np_reference(name, inp)
        assert np.all(np.isfinite(r.value))  # the exact losses are < 1.2e37
        assert np.all(np.isfinite(_f64(value))), (value, r.value)
        return int(value.size)

    _run(request, case(), check)


# --------------------------------------------------------------------------------------------
# 8. The rest of jaxce.LOSSES (issue 5): focal, poly, information measures, generalized and
#    convex KL, probability-input losses, with their keyword options
# --------------------------------------------------------------------------------------------
#
# One compiled program (``_ext_bundle``) evaluates every loss below and its gradient with
# respect to the logits (probabilities for the probability losses) on one (2, 3, 5) batch;
# all the tests of this section share it. Few examples per test (``EXT_FACTOR``).

EXT_SHAPE = (2, 3, 5)
EXT_FACTOR = 0.25  # 3 examples per test in the ci profile, 30 nightly
_EXT_W = jnp.array([1.0, 0.5, 2.0, 0.0, 1.5])  # per-class weights / alpha / pos_weight


class ExtAux(NamedTuple):
    q: jax.Array  # second logits (KL / JS from logits)
    t: jax.Array  # soft labels / targets, rows on the simplex
    tb: jax.Array  # binary labels in [0, 1]
    y: jax.Array  # integer labels (some == -100: ignore_index)
    w: jax.Array  # per-class weights


def _lp(x: jax.Array) -> jax.Array:
    return jaxce.log_softmax(x)


def _pr(x: jax.Array) -> jax.Array:  # probabilities in [0.01, 0.99]: finite losses
    return 0.01 + 0.98 * jaxce.sigmoid(x)


def _pc(x: jax.Array) -> jax.Array:  # rows of probabilities >= 0.02 on the simplex (V = 5)
    return 0.02 + 0.9 * jaxce.softmax(x)


# name -> f(x, aux): per-example losses; x are logits (log-predictions and probabilities are
# derived from them inside, so that one gradient wrt x serves every function)
EXT_FNS: dict[str, Callable[[jax.Array, ExtAux], jax.Array]] = {
    "sigmoid_focal_loss": lambda x, a: jaxce.sigmoid_focal_loss(x, a.tb, alpha=0.25),
    "poly_loss_cross_entropy": lambda x, a: jaxce.poly_loss_cross_entropy(x, a.t),
    "generalized_kl_divergence": lambda x, a: jaxce.generalized_kl_divergence(_lp(x), a.t),
    "convex_kl_divergence": lambda x, a: jaxce.convex_kl_divergence(_lp(x), a.t),
    "softmax_focal_loss": lambda x, a: jaxce.softmax_focal_loss(x, a.t, alpha=a.w),
    "entropy": lambda x, a: jaxce.entropy(x),
    "kl_divergence_with_logits": lambda x, a: jaxce.kl_divergence_with_logits(x, a.q),
    "jensen_shannon_divergence": lambda x, a: jaxce.jensen_shannon_divergence(x, a.q),
    "binary_cross_entropy": lambda x, a: jaxce.binary_cross_entropy(_pr(x), a.tb, weights=a.w),
    "categorical_cross_entropy": (
        lambda x, a: jaxce.categorical_cross_entropy(_pc(x), a.t, weights=a.w)
    ),
    # the keyword options of the core losses
    "softmax_cross_entropy+options": lambda x, a: jaxce.softmax_cross_entropy(
        x, a.t, weights=a.w, label_smoothing=0.1, temperature=2.0
    ),
    "softmax_cross_entropy+z_loss+cap": lambda x, a: jaxce.softmax_cross_entropy(
        x, a.t, z_loss=1e-3, logit_soft_cap=30.0
    ),
    "softmax_cross_entropy_with_integer_labels+options": (
        lambda x, a: jaxce.softmax_cross_entropy_with_integer_labels(
            x, a.y, weights=a.w, label_smoothing=0.1, temperature=0.5, ignore_index=-100
        )
    ),
    "sigmoid_binary_cross_entropy+options": lambda x, a: jaxce.sigmoid_binary_cross_entropy(
        x, a.tb, weights=a.w, pos_weight=a.w, label_smoothing=0.1, temperature=2.0
    ),
    "sigmoid_binary_cross_entropy+cap": lambda x, a: jaxce.sigmoid_binary_cross_entropy(
        x, a.tb, logit_soft_cap=20.0
    ),
}
# The two losses of probabilities, as (derived input, loss of it): the probabilities made from
# x are fused with contractions under jit (0.01 + 0.98 * sigmoid(x) as one FMA) and differ from
# the eager ones by an ulp, which the loss amplifies near p = 1 (14 ulps of log1p(-p) at
# p = 0.99 seen). Given the same p, jit and eager agree bitwise.
EXT_DERIVED: dict[str, tuple[Callable[[jax.Array], jax.Array], Callable[..., jax.Array]]] = {
    "binary_cross_entropy": (
        _pr,
        lambda p, a: jaxce.binary_cross_entropy(p, a.tb, weights=a.w),
    ),
    "categorical_cross_entropy": (
        _pc,
        lambda p, a: jaxce.categorical_cross_entropy(p, a.t, weights=a.w),
    ),
    # The capped logits x' = c·tanh(x/c) likewise: under jit XLA contracts c·tanh into its
    # consumer (x' - max as one FMA), an ulp of |x'| <= c that the loss's conditioning in x does
    # not cover where sech² is small (the soft cap's own derivative is checked against mpmath
    # in test_soft_cap_derivative_accuracy_far_beyond_the_cap).
    "softmax_cross_entropy+z_loss+cap": (
        lambda x: scale_logits(x, logit_soft_cap=30.0),
        lambda p, a: jaxce.softmax_cross_entropy(p, a.t, z_loss=1e-3),
    ),
    "sigmoid_binary_cross_entropy+cap": (
        lambda x: scale_logits(x, logit_soft_cap=20.0),
        lambda p, a: jaxce.sigmoid_binary_cross_entropy(p, a.tb),
    ),
}
EXT_ELEMENTWISE = (
    "sigmoid_focal_loss",
    "binary_cross_entropy",
    "sigmoid_binary_cross_entropy+options",
    "sigmoid_binary_cross_entropy+cap",
)
# Invariant to adding a constant to a row of logits (of both arguments for KL / JS).
EXT_SHIFT = (
    "poly_loss_cross_entropy",
    "generalized_kl_divergence",
    "convex_kl_divergence",
    "softmax_focal_loss",
    "entropy",
    "kl_divergence_with_logits",
    "jensen_shannon_divergence",
    "categorical_cross_entropy",
    "softmax_cross_entropy+options",
    "softmax_cross_entropy_with_integer_labels+options",
)
EXT_DIVERGENCES = ("kl_divergence_with_logits", "jensen_shannon_divergence")


def test_every_loss_is_covered():
    """Every name of jaxce.LOSSES has properties in this file (core or extended section)."""
    covered = set(PUBLIC_FNS) | {n.split("+")[0] for n in EXT_FNS}
    assert set(jaxce.LOSSES) <= covered, set(jaxce.LOSSES) - covered


def _ext_eval(x: jax.Array, a: ExtAux) -> dict[str, tuple[jax.Array, jax.Array]]:
    out = {}
    for name, f in EXT_FNS.items():
        value, vjp = jax.vjp(lambda z, f=f: f(z, a), x)
        out[name] = (value, vjp(jnp.ones_like(value))[0])
    return out


_ext_bundle = jax.jit(_ext_eval)


@dataclasses.dataclass
class ExtInputs:
    x: np.ndarray
    q: np.ndarray
    t: np.ndarray
    tb: np.ndarray
    y: np.ndarray
    w: np.ndarray

    def jax(self, dtype: str = "float32") -> tuple[jax.Array, ExtAux]:
        d = _np_dtype(dtype)
        c = lambda a: jnp.asarray(np.asarray(a).astype(d))  # noqa: E731
        return c(self.x), ExtAux(c(self.q), c(self.t), c(self.tb), jnp.asarray(self.y), c(self.w))


@st.composite
def ext_inputs(draw: st.DrawFn, grid: bool = False) -> ExtInputs:
    """Logits on the grid m 2^-6 (|x| <= 64: exact shifts by integers) or scaled normals."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    V = EXT_SHAPE[-1]
    scale = draw(st.sampled_from([0.1, 1.0, 5.0, 30.0]))
    x, q = (rng.standard_normal(EXT_SHAPE) * scale for _ in range(2))
    if draw(st.booleans()):  # confident rows
        j = rng.integers(0, V, size=(*EXT_SHAPE[:-1], 1))
        np.put_along_axis(x, j, x.max(axis=-1, keepdims=True) + 20.0, axis=-1)
    if grid:
        x, q = (np.clip(np.round(a * 64) / 64, -32, 32) for a in (x, q))
    t = rng.dirichlet(np.full(V, draw(st.sampled_from([0.1, 1.0]))), size=EXT_SHAPE[:-1])
    if draw(st.booleans()):  # one-hot rows
        t = (t == t.max(-1, keepdims=True)).astype(np.float64)
    tb = rng.random(EXT_SHAPE)
    if draw(st.booleans()):
        tb = np.round(tb)
    y = rng.integers(0, V, size=EXT_SHAPE[:-1])
    y = np.where(rng.random(y.shape) < 0.2, -100, y).astype(np.int32)
    return ExtInputs(x=x, q=q, t=_cast(t, "float32"), tb=_cast(tb, "float32"), y=y,
                     w=np.asarray(_EXT_W))  # fmt: skip


def _close(a, b, rtol: float, atol: float, what: str) -> int:
    a, b = _f64(a), _f64(b)
    with np.errstate(invalid="ignore"):
        ok = (a == b) | (np.isnan(a) & np.isnan(b)) | (np.abs(a - b) <= atol + rtol * np.abs(b))
    assert np.all(ok), f"{what}: {a[~ok]!r} vs {b[~ok]!r}"
    return int(ok.size)


@pytest.mark.parametrize("name", list(EXT_FNS))
def test_ext_range_and_finite(name, request):
    """Losses >= 0 (divergences: >= -a few ulps of the terms), finite values and gradients."""

    def check(inp: ExtInputs) -> int:
        v, g = (_f64(a) for a in _ext_bundle(*inp.jax())[name])
        assert np.all(np.isfinite(v)), v
        assert np.all(np.isfinite(g)), g
        tol = 0.0
        if name in (*EXT_DIVERGENCES, "generalized_kl_divergence", "convex_kl_divergence"):
            tol = 64 * U["float32"] * (1 + np.abs(inp.x).max() + np.abs(inp.q).max())
        assert np.all(v >= -tol), (name, v.min(), tol)
        return v.size

    _run(request, ext_inputs(), check, EXT_FACTOR)


# The losses linear (soft labels) or affine (binary labels) in their targets: every real
# target is the same formula, so the loss of a signed combination of targets is that
# combination of losses (advantages, weights folded in, finite-difference steps).
LINEAR_IN_TARGETS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax_cross_entropy": jaxce.softmax_cross_entropy,
    "safe_softmax_cross_entropy": jaxce.safe_softmax_cross_entropy,
    "poly_loss_cross_entropy": jaxce.poly_loss_cross_entropy,
    "softmax_focal_loss": lambda x, t: jaxce.softmax_focal_loss(x, t, gamma=2.0),
    "softmax_cross_entropy+weights": lambda x, t: jaxce.softmax_cross_entropy(x, t, weights=_EXT_W),
    "categorical_cross_entropy": jaxce.categorical_cross_entropy,  # of probabilities
    "torch.cross_entropy": lambda x, t: jt.cross_entropy(x, t, reduction="none"),
}
AFFINE_IN_LABELS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "sigmoid_binary_cross_entropy": jaxce.sigmoid_binary_cross_entropy,
    "sigmoid_binary_cross_entropy+pos_weight": lambda x, t: jaxce.sigmoid_binary_cross_entropy(
        x, t, pos_weight=_EXT_W
    ),
    "binary_cross_entropy": jaxce.binary_cross_entropy,  # of probabilities
}
# fed probabilities made once from the logits (not inside the differentiated program)
PROBABILITY_INPUTS = {"categorical_cross_entropy": _pc, "binary_cross_entropy": _pr}


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad_of(name: str, x: jax.Array, t: jax.Array):
    f = {**LINEAR_IN_TARGETS, **AFFINE_IN_LABELS}[name]
    value, vjp = jax.vjp(lambda z: f(z, t), x)
    return value, vjp(jnp.ones_like(value))[0]


@pytest.mark.parametrize("name", [*LINEAR_IN_TARGETS, *AFFINE_IN_LABELS])
def test_ext_signed_and_scaled_targets_are_the_linear_extension(name, request):
    """With signed per-row coefficients a, b (|a|, |b| up to 10): for soft labels
    ``f(x, a·t + b·s) = a·f(x, t) + b·f(x, s)``; for binary labels, ``f(x, l)`` with ``l``
    outside [0, 1] equals ``(1 - l)·f(x, 0) + l·f(x, 1)``. Values and gradients, no NaN; the
    tolerance is a few ulps of the terms' magnitudes."""
    linear = name in LINEAR_IN_TARGETS

    def check(ex: tuple[ExtInputs, int]) -> int:
        inp, seed = ex
        rng = np.random.default_rng(seed)
        x, a = inp.jax()
        if name in PROBABILITY_INPUTS:
            x = jax.jit(PROBABILITY_INPUTS[name])(x)
        rows = EXT_SHAPE[:-1]
        ca = rng.choice([-1.0, 1.0], (*rows, 1)) * 10.0 ** rng.uniform(-2, 1, (*rows, 1))
        cb = rng.choice([-1.0, 1.0], (*rows, 1)) * 10.0 ** rng.uniform(-2, 1, (*rows, 1))
        if linear:
            t = np.asarray(a.t, np.float64)
            s_ = np.asarray(jax.nn.softmax(jnp.asarray(rng.standard_normal(t.shape))), np.float64)
            mixed = jnp.asarray(ca * t + cb * s_, jnp.float32)
            v, g = (_f64(o) for o in _value_and_grad_of(name, x, mixed))
            vt, gt = (_f64(o) for o in _value_and_grad_of(name, x, jnp.asarray(t, jnp.float32)))
            vs, gs = (_f64(o) for o in _value_and_grad_of(name, x, jnp.asarray(s_, jnp.float32)))
            wa, wb = ca[..., 0], cb[..., 0]
            expected_v, expected_g = wa * vt + wb * vs, ca * gt + cb * gs
            scale_v, scale_g = np.abs(wa * vt) + np.abs(wb * vs), np.abs(ca * gt) + np.abs(cb * gs)
            # the mixed target is rounded to float32: its rounding enters as a target change
            scale_v = scale_v + np.abs(np.asarray(mixed)).sum(-1) * np.abs(_f64(x)).max()
        else:
            lab = jnp.asarray(rng.uniform(-3.0, 4.0, EXT_SHAPE), jnp.float32)
            v, g = (_f64(o) for o in _value_and_grad_of(name, x, lab))
            v0, g0 = (_f64(o) for o in _value_and_grad_of(name, x, jnp.zeros_like(lab)))
            v1, g1 = (_f64(o) for o in _value_and_grad_of(name, x, jnp.ones_like(lab)))
            lab = _f64(lab)
            expected_v, expected_g = (1 - lab) * v0 + lab * v1, (1 - lab) * g0 + lab * g1
            scale_v = np.abs((1 - lab) * v0) + np.abs(lab * v1)
            scale_g = np.abs((1 - lab) * g0) + np.abs(lab * g1)
        assert np.all(np.isfinite(v)), v
        assert np.all(np.isfinite(g)), g
        tol = 32 * U["float32"]
        ok_v = np.abs(v - expected_v) <= tol * (scale_v + 1e-30)
        ok_g = np.abs(g - expected_g) <= tol * (scale_g + 1e-30)
        assert np.all(ok_v), (name, v[~ok_v], expected_v[~ok_v])
        assert np.all(ok_g), (name, g[~ok_g], expected_g[~ok_g])
        return v.size

    _run(request, st.tuples(ext_inputs(), st.integers(0, 2**32 - 1)), check, EXT_FACTOR)


@pytest.mark.parametrize("name", EXT_SHIFT)
def test_ext_shift_invariance(name, request):
    """Adding an exact constant to each row of logits (both arguments for KL / JS from
    logits) leaves the loss unchanged up to rounding (options included: weights, alpha,
    label_smoothing, temperature, ignore_index)."""

    def check(ex: tuple[ExtInputs, int]) -> int:
        inp, c = ex
        shifted = dataclasses.replace(inp, x=inp.x + c, q=inp.q - 2 * c)
        v0, _ = _ext_bundle(*inp.jax())[name]
        v1, _ = _ext_bundle(*shifted.jax())[name]
        scale = 1.0 + np.abs(inp.x).max() + np.abs(inp.q).max() + 3 * abs(c)
        return _close(v1, v0, 1e-5, 64 * U["float32"] * scale, f"{name} shifted by {c}")

    _run(request, st.tuples(ext_inputs(grid=True), st.integers(-32, 32)), check, EXT_FACTOR)


@pytest.mark.parametrize("name", list(EXT_FNS))
def test_ext_permutation_equivariance(name, request):
    """Permuting the classes (and the per-class weights with them) permutes elementwise
    outputs and keeps row values; gradients permute."""

    def check(ex: tuple[ExtInputs, list[int]]) -> int:
        inp, perm = ex
        p = np.asarray(perm)
        y = np.where(inp.y >= 0, np.argsort(p)[np.maximum(inp.y, 0)], inp.y).astype(np.int32)
        b = ExtInputs(inp.x[..., p], inp.q[..., p], inp.t[..., p], inp.tb[..., p], y, inp.w[p])
        (va, ga), (vb, gb) = _ext_bundle(*inp.jax())[name], _ext_bundle(*b.jax())[name]
        va = va[..., p] if name in EXT_ELEMENTWISE else va
        atol = 64 * U["float32"] * (1 + np.abs(inp.x).max() + np.abs(inp.q).max())
        n = _close(vb, va, 1e-5, atol, f"{name} value, permutation {perm}")
        return n + _close(gb, ga[..., p], 1e-4, atol, f"{name} gradient, permutation {perm}")

    perms = st.permutations(list(range(EXT_SHAPE[-1])))
    _run(request, st.tuples(ext_inputs(), perms), check, EXT_FACTOR)


@pytest.mark.parametrize("name", list(EXT_FNS))
def test_ext_matches_float64(name, request):
    """float32 value and gradient agree with the same loss computed in float64 (moderate
    logits: relative 1e-4 of the value plus a few ulps of the logits' scale)."""

    def check(inp: ExtInputs) -> int:
        v32, g32 = _ext_bundle(*inp.jax())[name]
        with jax.enable_x64(True):
            v64, g64 = (np.asarray(a) for a in _ext_bundle(*inp.jax("float64"))[name])
        assert v64.dtype == np.float64
        atol = 256 * U["float32"] * (1 + np.abs(inp.x).max() + np.abs(inp.q).max())
        n = _close(v32, v64, 1e-4, atol, f"{name} value vs float64")
        return n + _close(g32, g64, 1e-3, atol, f"{name} gradient vs float64")

    _run(request, ext_inputs(), check, EXT_FACTOR)


@functools.cache
def _hessian_of_sum(loss: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    return jax.jit(jax.hessian(lambda z, a: jnp.sum(loss(z, a))))


def _grad_kappa(loss: Callable[..., jax.Array], z: jax.Array, aux: ExtAux) -> np.ndarray:
    """κ_j = Σ_k |z_k · ∂g_j/∂z_k| of the gradient g of Σ loss(z, aux) (docs/numerics.md), from
    the Hessian (jit; a bound, not a reference)."""
    h = np.abs(_f64(_hessian_of_sum(loss)(z, aux))).reshape(z.size, z.size)
    return (h @ np.abs(_f64(z)).ravel()).reshape(z.shape)


@pytest.mark.parametrize("name", list(EXT_FNS))
def test_ext_jit_matches_eager(name, request):
    """f under jit (fused with the others and its VJP) == f called eagerly: value within 4
    ulps (plus one ulp of each derived input for ``EXT_DERIVED``), gradient within 4 ulps of
    its row's largest entry plus its own condition κ_j.

    Looser than test_jit_matches_eager's 1 ulp: the derived inputs of this section (the
    log_softmax / affine-sigmoid probabilities and capped logits built in ``EXT_FNS``) and the
    weights are evaluated op by op eagerly but fused (with contractions) under jit.
    """

    def check(inp: ExtInputs) -> int:
        x, aux = inp.jax()
        v, g = _ext_bundle(x, aux)[name]
        f = EXT_FNS[name]
        ve = f(x, aux)
        ge = jax.grad(lambda z: jnp.sum(f(z, aux)))(x)
        if name in EXT_DERIVED:
            # 4 ulps of the loss, plus what one ulp of each derived input (probability, capped
            # logit) moves it by (twice: either path's rounding).
            derive, loss_of_p = EXT_DERIVED[name]
            p = derive(x)
            gp = np.abs(_f64(jax.grad(lambda q: jnp.sum(loss_of_p(q, aux)))(p)))
            slack = gp * np.spacing(np.abs(np.asarray(p)))
            if slack.ndim > np.ndim(ve):
                slack = slack.sum(axis=-1)
            bound = 4 * np.spacing(np.abs(np.asarray(ve))) + 2 * slack
            assert np.all(np.abs(_f64(v) - _f64(ve)) <= bound), (name, v, ve)
            # Given the same derived inputs, jit and eager agree to 4 ulps, value and gradient
            # (the gradient wrt x moves with p's ulp as the value does; it is checked wrt p).
            vp = jax.jit(loss_of_p)(p, aux)
            assert np.all(_ulp_distance(vp, loss_of_p(p, aux)) <= 4), (name, vp)
            grad_p = jax.grad(lambda q: jnp.sum(loss_of_p(q, aux)))
            ge, g = grad_p(p), jax.jit(grad_p)(p)
        else:
            assert np.all(_ulp_distance(v, ve) <= 4), (name, v, ve)
        # The gradient: 4 ulps of the row's largest entry plus of the entry's condition κ_j
        # (docs/numerics.md). Entries cancel (p_j - t_j with label smoothing: 0.93 - 0.92), and
        # an FMA under jit moves such a difference by an ulp of its terms: 18.6 ulps of the
        # row's largest entry were seen (weights, label_smoothing=0.1, T = 0.5), within 4 ulps
        # of (|g_j| + κ_j).
        if name in EXT_DERIVED:
            kappa = _grad_kappa(EXT_DERIVED[name][1], p, aux)
        else:
            kappa = _grad_kappa(f, x, aux)
        gs = np.abs(_f64(g)).max(axis=-1, keepdims=True)
        _close(ge, g, 0.0, 4 * U["float32"] * (gs + kappa), f"{name} gradient, eager vs jit")
        return int(v.size)

    _run(request, ext_inputs(), check, 1 / CI_EXAMPLES)


@pytest.mark.parametrize("name", list(EXT_FNS))
def test_ext_fuzz_nan_stays_in_its_example(name, request):
    """Random bit patterns (NaN payloads, subnormals, ±0, ±inf) as logits: nothing raises,
    and a NaN logit makes its example NaN while the other examples' values and gradients are
    bitwise those of the batch with the NaN replaced by 0 (the home of NaN isolation for
    these losses; the core functions': test_fuzz_random_bits)."""

    @st.composite
    def case(draw: st.DrawFn) -> ExtInputs:
        inp = draw(ext_inputs())
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        with np.errstate(invalid="ignore"):
            raw = _raw_to_f64(_random_bits(rng, "float32", EXT_SHAPE))
        return dataclasses.replace(inp, x=raw)

    def check(inp: ExtInputs) -> int:
        v, g = (_f64(a) for a in _ext_bundle(*inp.jax())[name])
        nan_in = np.isnan(inp.x)
        nan_ex = nan_in if name in EXT_ELEMENTWISE else nan_in.any(-1)
        if name == "softmax_cross_entropy_with_integer_labels+options":
            nan_ex = nan_ex & (inp.y != -100)  # an ignored example is 0 whatever its logits
        assert np.all(np.isnan(v[nan_ex])), (name, v, inp.x)
        if nan_in.any() and not nan_in.all():
            clean = dataclasses.replace(inp, x=np.where(nan_in, 0.0, inp.x))
            v2, g2 = (_f64(a) for a in _ext_bundle(*clean.jax())[name])
            keep = ~(nan_in if name in EXT_ELEMENTWISE else nan_in.any(-1))
            assert np.array_equal(v[keep], v2[keep], equal_nan=True), (name, v, v2)
            rows = ~nan_in.any(-1)  # the gradient of a row without a NaN logit
            assert np.array_equal(g[rows], g2[rows], equal_nan=True), (name, g, g2)
        return int(v.size)

    _run(request, case(), check, EXT_FACTOR)
