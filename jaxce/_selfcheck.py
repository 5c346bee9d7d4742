"""``python -m jaxce``: the numerics self-check, on whatever backend ``jax.devices()`` gives.

Every public loss and the primitives it is built on are evaluated on the hard-input grid of
:mod:`jaxce._grid` (tiny losses, huge logits, ``-inf`` masks, ``±inf``, ties, offsets up to 1e8,
soft labels), value and gradient, under ``jit``, and scored in condition-scaled ulps (see
``docs/numerics.md``) against a reference computed in this process: accurate float64 NumPy
formulas for 16- and 32-bit results, mpmath (when installed) for float64 results. The same inputs
go through optax / ``jax.nn``, side by side.

The reference is always evaluated on the exact inputs the function saw (the grid cast to the
dtype under test). ``u`` is the unit roundoff of the dtype a result comes back in: a loss from
16-bit logits is float32 and is scored with ``u = 2^-24``; a gradient or a primitive's value in
bfloat16 is scored with bfloat16's ``u = 2^-8`` (it was computed in float32, then rounded once).

Bounds (jaxce's promise): value <= 4 and every gradient component <= 8 condition-scaled ulps for
up to 1,000 classes, 16 / 32 for up to 10^4 classes; no NaN/inf where the reference is finite.
The exit status is 1 if jaxce misses a bound anywhere, 0 otherwise (the anchors' results are
reported, never judged).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jaxce
from jaxce import _reference as ref
from jaxce._grid import (
    NONNEGATIVE_KINDS,
    REAL_BINARY_LABELS,
    TARGET_KINDS,
    RowBatch,
    elementwise_grid,
    softmax_grid,
)

__all__ = ["main", "run"]

DTYPES = ("float32", "bfloat16", "float16", "float64")


def unit_roundoff(dtype: Any) -> float:
    """Unit roundoff ``u = 2^-p`` of a float dtype with a ``p``-bit significand."""
    return float(2.0 ** -(jnp.finfo(dtype).nmant + 1))


def bounds(num_classes: int) -> tuple[float, float]:
    """jaxce's (value, gradient) bound in condition-scaled ulps for rows of ``num_classes``."""
    return (4.0, 8.0) if num_classes <= 1000 else (16.0, 32.0)


# ----------------------------------------------------------------------------------------------
# What is checked: each entry is a jaxce function and its anchor, called as (x, t, where)
# ----------------------------------------------------------------------------------------------

Call = Callable[[jax.Array, Any, Any], jax.Array]


@dataclass(frozen=True)
class Spec:
    """One checked function.

    ``kind`` is ``"elementwise"`` (x), ``"binary"`` (x, t), or ``"row"`` (a class axis, last).
    ``labels`` is None, ``"int"`` or ``"soft"`` (the grid's target kinds ``kinds``, stacked:
    every kind for the cross-entropies, the non-negative ones for the KL divergences).
    ``per_class`` row outputs score the value only; other outputs score value and gradient wrt
    the first argument. ``inputs="log-probs"`` feeds log_softmax of the row (the KL functions);
    ``log_labels`` passes log-targets.
    """

    name: str
    anchor: str
    kind: str
    labels: str | None = None
    per_class: bool = False
    masks: bool = True
    inputs: str = "logits"
    log_labels: bool = False
    kinds: tuple[str, ...] = TARGET_KINDS


SPECS: tuple[Spec, ...] = (
    Spec("softplus", "jax.nn.softplus", "elementwise"),
    Spec("log_sigmoid", "jax.nn.log_sigmoid", "elementwise"),
    Spec("sigmoid", "jax.nn.sigmoid", "elementwise"),
    Spec("sigmoid_binary_cross_entropy", "optax", "binary"),
    Spec("logsumexp", "jax.nn.logsumexp", "row"),
    Spec("log_softmax", "jax.nn.log_softmax", "row", per_class=True),
    Spec("softmax", "jax.nn.softmax", "row", per_class=True),
    Spec("softmax_cross_entropy_with_integer_labels", "optax", "row", labels="int"),
    Spec("softmax_cross_entropy", "optax", "row", labels="soft"),
    Spec("safe_softmax_cross_entropy", "optax", "row", labels="soft", masks=False),
    Spec(
        "kl_divergence", "optax", "row", labels="soft", inputs="log-probs", kinds=NONNEGATIVE_KINDS
    ),
    Spec(
        "kl_divergence_with_log_targets",
        "optax",
        "row",
        labels="soft",
        inputs="log-probs",
        log_labels=True,
        kinds=NONNEGATIVE_KINDS,
    ),
)


def _call(fn: Callable[..., jax.Array], spec: Spec) -> Call:
    if spec.kind == "elementwise":
        return lambda x, t, w: fn(x)
    if spec.kind == "binary" or not spec.masks:
        return lambda x, t, w: fn(x, t)
    if spec.labels is None:
        return lambda x, t, w: fn(x, axis=-1, where=w)
    return lambda x, t, w: fn(x, t, axis=-1, where=w)


def _functions(spec: Spec) -> tuple[Call, Call | None]:
    """(jaxce call, anchor call or None when the anchor cannot be imported)."""
    ours = _call(getattr(jaxce, spec.name), spec)
    try:
        if spec.anchor == "optax":
            import optax

            theirs = getattr(optax.losses, spec.name)
        else:
            theirs = getattr(jax.nn, spec.anchor.rsplit(".", 1)[1])
    except ImportError:  # optax is optional: its columns stay empty (see main)
        return ours, None
    if spec.name == "logsumexp":
        return ours, lambda x, t, w: theirs(x, axis=-1, where=w)
    return ours, _call(theirs, spec)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _value_and_grad(
    fn: Call, x: jax.Array, t: Any, w: Any, per_class: bool
) -> tuple[jax.Array, jax.Array | None]:
    """The outputs, and the gradient of their sum wrt ``x`` (None for per-class outputs)."""
    if per_class:
        return fn(x, t, w), None
    value, vjp = jax.vjp(lambda a: fn(a, t, w), x)
    (grad,) = vjp(jnp.ones_like(value))
    return value, grad


# ----------------------------------------------------------------------------------------------
# Inputs and references
# ----------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """One batch of a spec's inputs in float64 (exactly representable in the dtype under test)."""

    label: str
    num_classes: int
    x: np.ndarray
    t: np.ndarray | None
    where: np.ndarray | None


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    """``a`` as ``dtype`` represents it, back in float64: the exact input the function sees."""
    with np.errstate(over="ignore"):
        return np.asarray(jnp.asarray(a, dtype), np.float64)


def _row_inputs(spec: Spec, batch: RowBatch, dtype: str) -> Inputs:
    x = _cast(batch.x, dtype)
    where = batch.where if spec.masks else None
    if not spec.masks and batch.where is not None:
        x = np.where(batch.where, x, -np.inf)  # no `where` argument: mask with -inf logits
    if spec.inputs == "log-probs":
        x = _cast(np.asarray(ref.np_log_softmax(x, where).value, np.float64), dtype)
    if spec.labels is None:
        return Inputs(batch.name, batch.num_classes, x, None, where)
    if spec.labels == "int":
        return Inputs(batch.name, batch.num_classes, x, batch.y, where)
    t = np.concatenate([batch.soft[k] for k in spec.kinds])
    if spec.log_labels:
        with np.errstate(divide="ignore"):
            t = np.log(t)
    reps = len(spec.kinds)
    x = np.tile(x, (reps, 1))
    where = None if where is None else np.tile(where, (reps, 1))
    return Inputs(batch.name, batch.num_classes, x, _cast(t, dtype), where)


def _inputs(spec: Spec, dtype: str, classes: Sequence[int], rows: int) -> Iterator[Inputs]:
    if spec.kind == "elementwise":
        yield Inputs("logit grid", 1, _cast(elementwise_grid(), dtype), None, None)
        return
    if spec.kind == "binary":
        xs, ts = np.meshgrid(elementwise_grid(), REAL_BINARY_LABELS, indexing="ij")
        yield Inputs(
            "logit x label grid", 1, _cast(xs.ravel(), dtype), _cast(ts.ravel(), dtype), None
        )
        return
    for batch in _grid(tuple(classes), rows):
        yield _row_inputs(spec, batch, dtype)


@functools.cache
def _grid(classes: tuple[int, ...], rows: int) -> list[RowBatch]:
    return softmax_grid(classes=classes, rows=rows, seed=0)


def _errors(v: np.ndarray, r: Any, kappa: Any, u: float, tiny: Any) -> np.ndarray:
    e = ref.condition_scaled_error(np.asarray(v, np.float64), r, kappa, u, tiny)
    return np.atleast_1d(np.asarray(e, np.float64))


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


@dataclass
class Score:
    """Worst errors of one implementation on one function and dtype."""

    value: float = 0.0
    grad: float | None = None
    nonfinite: int = 0  # outputs whose inf/NaN status differs from the exact result's
    worst_value_at: str = ""
    worst_grad_at: str = ""
    misses: int = 0  # batches over jaxce's bound

    def add(
        self,
        kind: str,
        err: np.ndarray,
        v: np.ndarray,
        r: Any,
        dtype: Any,
        bound: float,
        label: str,
    ) -> bool:
        """Fold in one row's errors; True if within ``bound``.

        Outputs whose inf/NaN status differs from that of the exact result rounded to the
        output ``dtype`` (NaN or inf where it is finite, finite or NaN where it is infinite)
        are counted in ``nonfinite``; the worst error is taken over the others. An exact result
        beyond the dtype's range returned as that ``±inf`` is exact.
        """
        rf = np.asarray([float(a) for a in r] if isinstance(r, list) else r, np.float64)
        rf = np.broadcast_to(rf, err.shape)
        with np.errstate(over="ignore"):
            rounded = np.asarray(jnp.asarray(rf, dtype), np.float64)
        vf = np.broadcast_to(np.asarray(v, np.float64), err.shape)
        wrong = (np.isfinite(vf) != np.isfinite(rounded)) | (np.isnan(vf) != np.isnan(rounded))
        wrong |= np.isinf(rounded) & (vf != rounded)
        self.nonfinite += int(np.sum(wrong))
        overflow = np.isinf(rounded) & np.isfinite(rf) & (vf == rounded)
        err = err[~wrong & ~overflow]
        worst = float(np.max(err)) if err.size else 0.0
        current = getattr(self, kind)
        if current is None or worst > current:
            setattr(self, kind, worst)
            setattr(self, f"worst_{kind}_at", label)
        return worst <= bound and not wrong.any()


@dataclass
class Result:
    function: str
    dtype: str
    anchor: str
    jaxce: Score
    other: Score | None
    value_bound: float
    grad_bound: float | None
    outputs: int = 0
    passed: bool = True
    notes: list[str] = field(default_factory=list)


def _score_batch(
    spec: Spec,
    fn: Call,
    inp: Inputs,
    dtype: str,
    reference: Ref | list[Ref],
    score: Score,
) -> bool:
    """Evaluate ``fn`` on one batch, fold its errors into ``score``; True if within bounds."""
    x = jnp.asarray(inp.x, dtype)
    if inp.t is None:
        t = None
    elif spec.labels == "int":
        t = jnp.asarray(inp.t, jnp.int32)
    else:
        t = jnp.asarray(inp.t, dtype)
    w = None if inp.where is None else jnp.asarray(inp.where)
    value, grad = _value_and_grad(fn, x, t, w, spec.per_class)
    u_v, tiny_v = unit_roundoff(value.dtype), float(jnp.finfo(value.dtype).tiny)
    v = np.asarray(value.astype(jnp.float32) if value.dtype.itemsize < 4 else value, np.float64)
    g = None
    if grad is not None:
        u_g, tiny_g = unit_roundoff(grad.dtype), float(jnp.finfo(grad.dtype).tiny)
        g = np.asarray(grad.astype(jnp.float32) if grad.dtype.itemsize < 4 else grad, np.float64)
    vb, gb = bounds(inp.num_classes)
    refs = reference if isinstance(reference, list) else [reference]
    rows = v.reshape(len(refs), -1) if isinstance(reference, list) else [v]
    grows = (
        None if g is None else (g.reshape(len(refs), -1) if isinstance(reference, list) else [g])
    )
    # A soft-label gradient T·p_j − t_j carries a flushed subnormal p_j times T.
    floors: Any = None
    if g is not None:
        floor = np.full(g.shape, tiny_g)
        if inp.t is not None and spec.labels == "soft" and spec.inputs == "logits":
            floor = np.broadcast_to(ref.flush_floor(inp.t, tiny_g), g.shape)
        floors = floor.reshape(len(refs), -1) if isinstance(reference, list) else [floor]
    ok = True
    for i, r in enumerate(refs):
        ev = _errors(rows[i], r.value, r.kappa, u_v, tiny_v)
        ok &= score.add("value", ev, rows[i], r.value, value.dtype, vb, inp.label)
        if grows is not None:
            eg = _errors(grows[i], r.grad, r.kappa_grad, u_g, floors[i])
            ok &= score.add("grad", eg, grows[i], r.grad, grad.dtype, gb, inp.label)
    if not ok:
        score.misses += 1
    return ok


Ref = ref.Ref


def _reference(spec: Spec, inp: Inputs, exact: bool) -> Ref | list[Ref]:
    """``ref.np_<name>`` on the whole batch, or ``ref.mp_<name>`` row by row (float64)."""
    fn = getattr(ref, ("mp_" if exact else "np_") + spec.name.removeprefix("safe_"))

    def call(x: np.ndarray, t: Any, w: Any) -> Ref:
        if spec.kind == "elementwise":
            return fn(x)
        if spec.kind == "binary":
            return fn(x, t)
        if spec.labels is None:
            return fn(x, w)
        return fn(x, int(t) if exact and spec.labels == "int" else t, w)

    if not exact or spec.kind != "row":
        return call(inp.x, inp.t, inp.where)
    return [
        call(
            inp.x[i],
            None if inp.t is None else inp.t[i],
            None if inp.where is None else inp.where[i],
        )
        for i in range(inp.x.shape[0])
    ]


def check(
    spec: Spec,
    dtype: str,
    classes: Sequence[int],
    rows: int = 1,
    anchors: bool = True,
) -> Result:
    """Score jaxce (and its anchor) on ``spec``'s inputs in ``dtype``."""
    exact = dtype == "float64"
    ours, theirs = _functions(spec)
    if not anchors:
        theirs = None
    result = Result(
        spec.name,
        dtype,
        "jax.nn" if spec.anchor.startswith("jax") else "optax",
        Score(grad=None if spec.per_class else 0.0),
        None if theirs is None else Score(grad=None if spec.per_class else 0.0),
        4.0,
        None if spec.per_class else 8.0,
    )
    largest = 1
    for inp in _inputs(spec, dtype, classes, rows):
        reference = _reference(spec, inp, exact)
        result.passed &= _score_batch(spec, ours, inp, dtype, reference, result.jaxce)
        if theirs is not None and result.other is not None:
            _score_batch(spec, theirs, inp, dtype, reference, result.other)
        result.outputs += inp.x.size
        largest = max(largest, inp.num_classes)
    if largest > 1000:
        result.notes.append("bound 16/32 for rows of more than 1,000 classes")
    return result


# ----------------------------------------------------------------------------------------------
# The run, the table, the plot
# ----------------------------------------------------------------------------------------------


def _have_mpmath() -> bool:
    try:
        import mpmath  # noqa: F401
    except ImportError:
        return False
    return True


def _have_optax() -> bool:
    try:
        import optax  # noqa: F401
    except ImportError:
        return False
    return True


#: Printed when optax is missing: jaxce does not need it, only the side-by-side columns do.
NO_OPTAX = (
    "optax is not installed: the optax columns are left empty. For them: "
    "pip install 'jaxce[selfcheck]' (or pip install optax)."
)


def run(
    dtypes: Sequence[str],
    classes: Sequence[int],
    rows: int = 1,
    f64_max_classes: int = 1000,
    functions: Sequence[str] | None = None,
    anchors: bool = True,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Score every function in every dtype; float64 (mpmath reference) up to ``f64_max_classes``.

    float64 needs ``jax_enable_x64`` on and mpmath installed; it raises ``RuntimeError`` otherwise.
    """
    if "float64" in dtypes:
        if not jax.config.jax_enable_x64:  # type: ignore[attr-defined]
            raise RuntimeError("float64 needs jax.config.update('jax_enable_x64', True) first")
        if not _have_mpmath():
            raise RuntimeError("float64 is checked against mpmath: pip install mpmath")
    specs = [s for s in SPECS if functions is None or s.name in functions]
    jobs = [(spec, dtype) for dtype in dtypes for spec in specs]
    x64 = bool(jax.config.jax_enable_x64)  # type: ignore[attr-defined]
    done = 0
    lock = threading.Lock()

    def job(spec: Spec, dtype: str) -> Result:
        nonlocal done
        start = time.perf_counter()
        cls = [c for c in classes if dtype != "float64" or c <= f64_max_classes]
        with _x64(x64):  # the flag is thread-local under jax.enable_x64
            result = check(spec, dtype, cls, rows, anchors)
        with lock:
            done += 1
            if progress is not None:
                progress(
                    f"[{done}/{len(jobs)}] {spec.name} {dtype}: "
                    f"{'ok' if result.passed else 'MISS'} ({time.perf_counter() - start:.1f} s)"
                )
        return result

    # XLA compiles (most of the time here) release the GIL: one thread per core.
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda a: job(*a), jobs))


def _x64(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    ctx: Any = getattr(jax, "enable_x64", None)
    if ctx is None:  # older jax
        import importlib

        ctx = importlib.import_module("jax.experimental").enable_x64
    manager: contextlib.AbstractContextManager[Any] = ctx(enabled)
    return manager


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if x >= 0.01 else ("0" if x == 0 else f"{x:.1e}")


def table(results: Sequence[Result]) -> str:
    """The results as a markdown table."""
    lines = [
        "| function | dtype | jaxce value | jaxce grad | jaxce inf/NaN | anchor | "
        "anchor value | anchor grad | anchor inf/NaN | bound | jaxce |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        o = r.other
        bound = f"{r.value_bound:g}" + ("" if r.grad_bound is None else f" / {r.grad_bound:g}")
        if r.notes:
            bound += "*"
        lines.append(
            f"| {r.function} | {r.dtype} | {_fmt(r.jaxce.value)} | {_fmt(r.jaxce.grad)} | "
            f"{r.jaxce.nonfinite} | {r.anchor} | {_fmt(o.value if o else None)} | "
            f"{_fmt(o.grad if o else None)} | {o.nonfinite if o else '—'} | {bound} | "
            f"{'PASS' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """Where the check ran: backend, devices, versions, date."""
    versions = {"jax": jax.__version__, "jaxce": jaxce.__version__, "numpy": np.__version__}
    if _have_optax():
        import optax

        versions["optax"] = optax.__version__
    return {
        "date": datetime.date.today().isoformat(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.system()}",
        "versions": versions,
    }


def plot(path: str) -> None:
    """Loss and gradient vs logit gap, float32: naive formula, optax, jaxce, exact (log scale).

    Two classes ``[z, 0]`` with label 0: the loss is ``softplus(-z)`` and its gradient wrt ``z`` is
    ``-sigmoid(-z)``. The naive ``-log(softmax(x)[y])`` and optax's ``lse(x) - x_y`` round the
    loss to 0 once ``z`` passes ~17 (float32); the naive one overflows to ``inf`` for ``z << 0``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = np.linspace(-120.0, 120.0, 481)
    x = jnp.stack([jnp.asarray(z, jnp.float32), jnp.zeros(z.size, jnp.float32)], axis=-1)
    y = jnp.zeros(z.size, jnp.int32)

    def naive(a: jax.Array, b: jax.Array) -> jax.Array:
        p = jnp.exp(a) / jnp.sum(jnp.exp(a), axis=-1, keepdims=True)
        return -jnp.log(jnp.take_along_axis(p, b[:, None], axis=-1)[:, 0])

    fns: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {"naive -log(softmax)": naive}
    if _have_optax():
        import optax

        fns[f"optax {optax.__version__}"] = optax.losses.softmax_cross_entropy_with_integer_labels
    fns["jaxce"] = jaxce.softmax_cross_entropy_with_integer_labels
    exact = ref.np_softmax_cross_entropy_with_integer_labels(
        z[:, None] * [1.0, 0.0], np.zeros(z.size, int)
    )
    floor = 1e-45
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, fn in fns.items():
        style = {"naive -log(softmax)": "-", "jaxce": ":"}.get(label, "--")
        value, vjp = jax.vjp(lambda a, fn=fn: fn(a, y), x)
        (grad,) = vjp(jnp.ones_like(value))
        for ax, data in zip(axes, (np.asarray(value), -np.asarray(grad)[:, 0]), strict=True):
            shown = np.where(np.isfinite(data), np.clip(data, floor, None), np.nan)
            ax.semilogy(z, shown, style, label=label, linewidth=2 if label == "jaxce" else 1.2)
    for ax, data in zip(axes, (exact.value, -exact.grad[:, 0]), strict=True):
        ax.semilogy(
            z,
            np.clip(data, floor, None),
            color="0.6",
            linewidth=6,
            alpha=0.35,
            zorder=0,
            label="exact",
        )
    axes[0].set_title("loss, label on class 0 of [z, 0]")
    axes[1].set_title("-d loss / dz  (= 1 - p_0)")
    for ax in axes:
        ax.set_xlabel("logit gap z")
        ax.axhline(floor, color="k", linewidth=0.5)
        ax.text(z[0], floor * 3, "0 (underflow)", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
    fig.suptitle(f"float32 on {jax.default_backend()}: NaN/inf are left out of the lines")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse_dtypes(text: str | None, parser: argparse.ArgumentParser) -> list[str]:
    if text is None:
        chosen = ["float32", "bfloat16", "float16"]
        if _have_mpmath():
            chosen.append("float64")
        return chosen
    chosen = [d.strip() for d in text.split(",") if d.strip()]
    for d in chosen:
        if d not in DTYPES:
            parser.error(f"--dtype: got {d!r}, expected a comma-separated subset of {DTYPES}")
    if "float64" in chosen and not _have_mpmath():
        parser.error("--dtype float64 is checked against mpmath: pip install mpmath")
    return chosen


def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become the strings "inf", "-inf", "nan"."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jaxce``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxce",
        description="jaxce numerics self-check on this machine's JAX backend: every public loss "
        "on hard inputs, in condition-scaled ulps against an in-process reference, next to "
        "optax / jax.nn. Exits 1 if jaxce misses its bound.",
    )
    parser.add_argument(
        "--dtype",
        help="comma-separated dtypes (default: float32,bfloat16,float16, plus float64 when "
        "mpmath is installed)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON ('-' = stdout)")
    parser.add_argument("--plot", metavar="FILE.png", help="plot loss and gradient vs logit")
    parser.add_argument("--quick", action="store_true", help="classes up to 100 only (seconds)")
    parser.add_argument(
        "--max-classes", type=int, default=10_000, help="largest class count V (default 10000)"
    )
    parser.add_argument("--rows", type=int, default=1, help="rows per grid case (default 1)")
    parser.add_argument("--function", action="append", help="check only this function")
    args = parser.parse_args(argv)
    dtypes = _parse_dtypes(args.dtype, parser)
    if args.max_classes < 2:
        parser.error(f"--max-classes: got {args.max_classes}, expected at least 2")
    if args.function:
        unknown = sorted(set(args.function) - {s.name for s in SPECS})
        if unknown:
            parser.error(
                f"--function: unknown {unknown}; expected some of {[s.name for s in SPECS]}"
            )
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    max_classes = min(args.max_classes, 100 if args.quick else args.max_classes)
    classes = [c for c in (2, 3, 10, 100, 1000, 10_000) if c <= max_classes]
    env = environment()
    log = functools.partial(print, file=sys.stderr, flush=True)
    log(
        f"jaxce {jaxce.__version__} self-check on {env['backend']} ({env['device_kind']}), "
        f"dtypes {', '.join(dtypes)}, classes {classes}"
    )
    if not _have_optax():
        log(NO_OPTAX)
    start = time.perf_counter()
    results = run(
        dtypes,
        classes,
        rows=args.rows,
        f64_max_classes=min(max_classes, 100 if args.quick else 1000),
        functions=args.function,
        progress=log,
    )
    elapsed = time.perf_counter() - start
    passed = all(r.passed for r in results)
    text = table(results)
    summary = (
        f"{sum(r.passed for r in results)}/{len(results)} within bound "
        f"({sum(r.outputs for r in results)} outputs, {elapsed:.0f} s). "
        "Errors in condition-scaled ulps (docs/numerics.md); bound = value / gradient for "
        "up to 1,000 classes (* 16 / 32 for rows of 10^4 classes); value / grad = worst error "
        "over the outputs with the right inf/NaN status; inf/NaN = outputs that are NaN or "
        "infinite where the exact result is finite, or vice versa."
    )
    if args.json != "-":
        print(text)
        print()
        print(summary)
    if args.json:
        payload = {
            "environment": env,
            "classes": classes,
            "passed": passed,
            "seconds": elapsed,
            "results": [asdict(r) for r in results],
        }
        out = json.dumps(_finite(payload), indent=1, allow_nan=False)
        if args.json == "-":
            print(out)
        else:
            with open(args.json, "w") as f:
                f.write(out + "\n")
    if args.plot:
        plot(args.plot)
        log(f"plot written to {args.plot}")
    if not passed:
        log(
            "FAIL: jaxce missed its bound: "
            + ", ".join(f"{r.function} {r.dtype}" for r in results if not r.passed)
        )
    return 0 if passed else 1
