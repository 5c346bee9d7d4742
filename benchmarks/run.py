"""Speed and memory of jaxce's losses against optax, a naive formula and the memory floor.

One entry point, one process::

    python benchmarks/run.py            # full run: large shapes, float32 and bfloat16
    python benchmarks/run.py --quick    # small shapes, under a minute on a 2-core CPU

For every case (a loss, a dtype, a ``(rows, classes)`` shape) four functions are compiled with
``jax.jit`` and timed on the same inputs:

* ``jaxce``, ``optax`` (``optax.losses.<name>``) and ``naive`` (the textbook formula, e.g.
  ``-log(softmax(x))[y]``): value *and* gradient with respect to the logits (the first
  argument), ``jax.value_and_grad(lambda x, y: loss(x, y).sum())``, as a training step uses it;
* ``floor``: ``x * 2`` over the logits, one read and one write of the logits, the least memory
  traffic that producing a logits-shaped gradient can cost.

Timing: each function is compiled ahead of time (``jit(...).lower(...).compile()``, which also
gives the compiled temp memory and, with ``--hlo``, the optimized HLO), called once to warm up,
then sampled ``--repeats`` times. A sample is the mean wall time of enough back-to-back calls,
each one waited for with ``jax.block_until_ready``, to last ``--min-time`` seconds; the samples
are taken round-robin (repeat 1 of every function, then repeat 2, ..., the starting function
rotating each repeat) so that load drifting on the machine hits every function alike, and the
reported time is the median sample. ``--budget`` caps the timing seconds spent on one case.

The results are printed as a markdown table (stdout; progress goes to stderr), written as JSON
with a description of the machine (``--json``) and plotted as ratios (``--plot``). See
``benchmarks/README.md`` for the columns.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxce

Shape = tuple[int, int]
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
Timed = Callable[[jax.Array, jax.Array], Any]

#: The functions timed for every case, in table order.
IMPLS = ("jaxce", "optax", "naive", "floor")
#: The ratios of median times reported for every case (numerator, denominator).
RATIOS = (("jaxce", "optax"), ("jaxce", "floor"), ("optax", "floor"), ("naive", "floor"))

FULL_SHAPES: tuple[Shape, ...] = ((4096, 32768), (65536, 1000), (256, 262144))
QUICK_SHAPES: tuple[Shape, ...] = ((512, 4096), (8192, 128))
DTYPES = ("float32", "bfloat16")

HERE = Path(__file__).resolve().parent
DEFAULT_JSON = HERE / "results" / "latest.json"
DEFAULT_PLOT = HERE / "results" / "latest.png"


# --------------------------------------------------------------------------------------------
# The losses: naive formulas and how their inputs are drawn
# --------------------------------------------------------------------------------------------


def _naive_ce_int(x: jax.Array, y: jax.Array) -> jax.Array:
    return -jnp.take_along_axis(jnp.log(jax.nn.softmax(x, axis=-1)), y[:, None], axis=-1)[:, 0]


def _naive_ce_soft(x: jax.Array, t: jax.Array) -> jax.Array:
    return -jnp.sum(t * jnp.log(jax.nn.softmax(x, axis=-1)), axis=-1)


def _naive_bce(x: jax.Array, t: jax.Array) -> jax.Array:
    p = jax.nn.sigmoid(x)
    return -(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))


def _naive_kl(log_p: jax.Array, t: jax.Array) -> jax.Array:
    return jnp.sum(t * (jnp.log(t) - log_p), axis=-1)


def _naive_kl_log_targets(log_p: jax.Array, log_t: jax.Array) -> jax.Array:
    return jnp.sum(jnp.exp(log_t) * (log_t - log_p), axis=-1)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A loss of ``jaxce.CORE_LOSSES``: its short tag, its naive formula and its inputs.

    ``first`` is how the first argument (the one differentiated) is drawn: ``logits`` (normal,
    scale 2) or ``log_probs`` (log-softmax of such logits). ``second`` is the second argument:
    ``int`` (uniform class indices), ``probs`` (softmax of random logits, rows sum to 1),
    ``log_probs`` or ``uniform`` (elementwise in [0, 1), binary targets).
    """

    name: str
    tag: str
    first: str
    second: str
    naive: LossFn


LOSS_SPECS: dict[str, LossSpec] = {
    s.name: s
    for s in (
        LossSpec(
            "softmax_cross_entropy_with_integer_labels", "ce_int", "logits", "int", _naive_ce_int
        ),
        LossSpec("softmax_cross_entropy", "ce_soft", "logits", "probs", _naive_ce_soft),
        LossSpec("safe_softmax_cross_entropy", "safe_ce", "logits", "probs", _naive_ce_soft),
        LossSpec("sigmoid_binary_cross_entropy", "bce", "logits", "uniform", _naive_bce),
        LossSpec("kl_divergence", "kl", "log_probs", "probs", _naive_kl),
        LossSpec(
            "kl_divergence_with_log_targets",
            "kl_log",
            "log_probs",
            "log_probs",
            _naive_kl_log_targets,
        ),
    )
}
#: Losses run on every shape and dtype; the others on the first shape, float32.
MAIN_LOSSES = (
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
)


@dataclasses.dataclass(frozen=True)
class Case:
    """One row of the table: a loss on inputs of one shape and dtype."""

    loss: str
    dtype: str
    shape: Shape

    @property
    def spec(self) -> LossSpec:
        return LOSS_SPECS[self.loss]

    @property
    def id(self) -> str:
        return f"{self.spec.tag}/{self.dtype}/{self.shape[0]}x{self.shape[1]}"


def make_cases(shapes: Sequence[Shape], dtypes: Sequence[str] = DTYPES) -> list[Case]:
    """Every main loss on every shape and dtype, then the other losses on ``shapes[0]``."""
    cases = [Case(loss, d, s) for loss in MAIN_LOSSES for d in dtypes for s in shapes]
    others = [name for name in jaxce.CORE_LOSSES if name not in MAIN_LOSSES]
    cases += [Case(loss, dtypes[0], shapes[0]) for loss in others]
    return cases


def select(cases: Sequence[Case], filters: Sequence[str] | None) -> list[Case]:
    """Cases whose id (``tag/dtype/RxC``) or loss name contains any of ``filters``."""
    if not filters:
        return list(cases)
    return [c for c in cases if any(f in c.id or f in c.loss for f in filters)]


def make_inputs(case: Case, seed: int = 0) -> tuple[jax.Array, jax.Array]:
    """The two arguments of the loss, drawn from a fixed seed (same seed, same inputs)."""
    dtype = jnp.dtype(case.dtype)
    k1, k2 = jax.random.split(jax.random.key(seed))
    rows, cols = case.shape

    def draw(key: jax.Array, kind: str) -> jax.Array:
        if kind == "int":
            return jax.random.randint(key, (rows,), 0, cols, jnp.int32)
        if kind == "uniform":
            return jax.random.uniform(key, case.shape, jnp.float32).astype(dtype)
        z = 2.0 * jax.random.normal(key, case.shape, jnp.float32)
        if kind == "probs":
            return jax.nn.softmax(z, axis=-1).astype(dtype)
        if kind == "log_probs":
            return jax.nn.log_softmax(z, axis=-1).astype(dtype)
        return z.astype(dtype)

    x, y = draw(k1, case.spec.first), draw(k2, case.spec.second)
    return jax.block_until_ready((x, y))


def functions(case: Case) -> dict[str, Timed]:
    """The four functions timed for ``case``, in ``IMPLS`` order (not yet jitted)."""
    losses: dict[str, LossFn] = {
        "jaxce": getattr(jaxce, case.loss),
        "optax": getattr(optax.losses, case.loss),
        "naive": case.spec.naive,
    }
    out: dict[str, Timed] = {}
    for name, loss in losses.items():

        def total(x: jax.Array, y: jax.Array, loss: LossFn = loss) -> jax.Array:
            return jnp.sum(loss(x, y))

        out[name] = jax.value_and_grad(total)

    def floor(x: jax.Array, y: jax.Array) -> jax.Array:
        del y
        return x * 2

    out["floor"] = floor
    return out


# --------------------------------------------------------------------------------------------
# Compiling and timing
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Settings:
    """How long to time: samples per function, seconds per sample, seconds per case."""

    repeats: int = 10
    min_time: float = 0.2
    budget: float = 60.0
    seed: int = 0


def temp_bytes(compiled: Any) -> int | None:
    """``memory_analysis().temp_size_in_bytes`` of a compiled function, None if unavailable."""
    try:
        stats = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        return None
    value = getattr(stats, "temp_size_in_bytes", None) if stats is not None else None
    return int(value) if value is not None else None


def _call_time(fn: Callable[[], Any], min_time: float) -> float:
    """Seconds per blocked call, averaged over calls lasting ``min_time`` (at least one)."""
    calls = 0
    start = time.perf_counter()
    elapsed = 0.0
    while calls == 0 or elapsed < min_time:
        jax.block_until_ready(fn())
        calls += 1
        elapsed = time.perf_counter() - start
    return elapsed / calls


def _minor_faults() -> int | None:
    """Minor page faults of this process so far (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)


def _sample(fn: Callable[[], Any], calls: int) -> tuple[float, float | None]:
    """Seconds and minor page faults per call, over ``calls`` back-to-back calls."""
    faults = _minor_faults()
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(fn())
    seconds = (time.perf_counter() - start) / calls
    after = _minor_faults()
    return seconds, None if faults is None or after is None else (after - faults) / calls


def write_probe(shape: Shape, repeats: int = 7) -> dict[str, Any]:
    """What writing a logits-sized float32 array costs: ``x * 2`` into a fresh buffer (as the
    floor, and every gradient, is written) against the same in place (the input donated), and
    a read-only ``sum(x)``; median milliseconds, and minor page faults per fresh write.

    On Linux a buffer this large comes from a fresh ``mmap`` on every call, and the kernel
    zero-fills each 4 KiB page on first touch: that, not memory bandwidth, can dominate the
    floor (2-core EPYC, 65536 x 1000: 74 ms fresh, 10 ms in place, 9 ms for the read).
    """
    x = jax.random.normal(jax.random.PRNGKey(0), shape, jnp.float32)
    fresh = jax.jit(lambda a: a * 2).lower(x).compile()
    read = jax.jit(jnp.sum).lower(x).compile()
    in_place = jax.jit(lambda a: a * 2, donate_argnums=0)
    y = in_place(x * 1.0)
    jax.block_until_ready((fresh(x), read(x), y))
    times: dict[str, list[float]] = {"fresh_ms": [], "in_place_ms": [], "read_ms": []}
    faults: list[float] = []
    for _ in range(repeats):
        t, f = _sample(lambda: fresh(x), 1)
        times["fresh_ms"].append(1e3 * t)
        if f is not None:
            faults.append(f)
        start = time.perf_counter()
        y = jax.block_until_ready(in_place(y))
        times["in_place_ms"].append(1e3 * (time.perf_counter() - start))
        times["read_ms"].append(1e3 * _sample(lambda: read(x), 1)[0])
    out: dict[str, Any] = {"shape": list(shape)}
    out.update({k: statistics.median(v) for k, v in times.items()})
    out["faults_per_fresh_write"] = statistics.median(faults) if faults else None
    out["pages"] = math.ceil(math.prod(shape) * 4 / 4096)
    return out


def plan(estimates: dict[str, float], settings: Settings) -> tuple[dict[str, int], int]:
    """Calls per sample (each sample >= ``min_time``) and repeats, within ``budget`` seconds.

    Over budget, the calls per sample shrink first (down to 1), then the repeats (down to 3,
    or fewer if fewer were asked for).
    """
    calls = {k: max(1, math.ceil(settings.min_time / max(t, 1e-9))) for k, t in estimates.items()}
    repeats = max(1, settings.repeats)

    def cost() -> float:
        return repeats * sum(calls[k] * estimates[k] for k in calls)

    if cost() > settings.budget:
        scale = settings.budget / cost()
        calls = {k: max(1, math.floor(n * scale)) for k, n in calls.items()}
    if cost() > settings.budget:
        per_repeat = sum(calls[k] * estimates[k] for k in calls)
        repeats = max(min(3, repeats), math.floor(settings.budget / per_repeat))
    return calls, repeats


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _safe_name(case: Case) -> str:
    return case.id.replace("/", "__")


def run_case(
    case: Case,
    settings: Settings,
    hlo_dir: Path | None = None,
    log: Callable[[str], None] = _progress,
) -> dict[str, Any]:
    """Compile, warm up and time the four functions of ``case``; the JSON record of the case."""
    x, y = make_inputs(case, settings.seed)
    compiled: dict[str, Any] = {}
    compile_s: dict[str, float] = {}
    for name, fn in functions(case).items():
        start = time.perf_counter()
        compiled[name] = jax.jit(fn).lower(x, y).compile()
        compile_s[name] = time.perf_counter() - start
        if hlo_dir is not None and name in ("jaxce", "optax"):
            hlo_dir.mkdir(parents=True, exist_ok=True)
            (hlo_dir / f"{_safe_name(case)}.{name}.hlo.txt").write_text(compiled[name].as_text())

    calls_of = {name: functools.partial(c, x, y) for name, c in compiled.items()}
    for call in calls_of.values():  # warm-up: first execution, allocations
        jax.block_until_ready(call())
    estimates = {
        name: _call_time(call, min(settings.min_time, 0.05)) for name, call in calls_of.items()
    }
    calls, repeats = plan(estimates, settings)

    samples: dict[str, list[float]] = {name: [] for name in IMPLS}
    faults: dict[str, list[float]] = {name: [] for name in IMPLS}
    for r in range(repeats):
        order = IMPLS[r % len(IMPLS) :] + IMPLS[: r % len(IMPLS)]
        for name in order:
            seconds, f = _sample(calls_of[name], calls[name])
            samples[name].append(seconds)
            if f is not None:
                faults[name].append(f)

    impls: dict[str, dict[str, Any]] = {}
    for name in IMPLS:
        ms = [1e3 * s for s in samples[name]]
        impls[name] = {
            "median_ms": statistics.median(ms),
            "min_ms": min(ms),
            "max_ms": max(ms),
            "samples_ms": ms,
            "calls_per_sample": calls[name],
            "compile_s": compile_s[name],
            "temp_bytes": temp_bytes(compiled[name]),
            "faults_per_call": statistics.median(faults[name]) if faults[name] else None,
        }
    ratios = {f"{a}/{b}": _ratio(impls[a]["median_ms"], impls[b]["median_ms"]) for a, b in RATIOS}
    logits_bytes = x.size * x.dtype.itemsize
    floor_s = impls["floor"]["median_ms"] / 1e3
    record = {
        "id": case.id,
        "loss": case.loss,
        "tag": case.spec.tag,
        "labels": case.spec.second,
        "dtype": case.dtype,
        "shape": list(case.shape),
        "logits_bytes": int(logits_bytes),
        # one read + one write of the logits per floor call
        "floor_gb_per_s": 2 * logits_bytes / floor_s / 1e9 if floor_s > 0 else None,
        "repeats": repeats,
        "impls": impls,
        "ratios": ratios,
        "temp_ratios": {
            "jaxce/optax": _ratio(impls["jaxce"]["temp_bytes"], impls["optax"]["temp_bytes"])
        },
    }
    log(
        f"    {case.id}: "
        + ", ".join(f"{n} {_fmt_ms(impls[n]['median_ms'])} ms" for n in IMPLS)
        + f"; jaxce/optax {_fmt_ratio(ratios['jaxce/optax'])}"
        + f" ({repeats} repeats)"
    )
    return record


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------------------------
# Reporting: table, machine, JSON, plot
# --------------------------------------------------------------------------------------------


def _fmt_ms(v: float) -> str:
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}"


def _fmt_mib(b: int | None) -> str:
    if b is None:
        return "—"
    mib = b / 2**20
    return f"{mib:.1f}" if mib >= 1 else f"{mib:.3g}"


TABLE_COLUMNS = (
    "case",
    "jaxce ms",
    "optax ms",
    "naive ms",
    "floor ms",
    "jaxce/optax",
    "jaxce/floor",
    "optax/floor",
    "temp jaxce MiB",
    "temp optax MiB",
    "temp naive MiB",
    "temp floor MiB",
    "temp jaxce/optax",
)


def table(records: Sequence[dict[str, Any]]) -> str:
    """The markdown table: median times, their ratios, compiled temp memory."""
    lines = [
        "| " + " | ".join(TABLE_COLUMNS) + " |",
        "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(TABLE_COLUMNS))) + "|",
    ]
    for rec in records:
        impls, ratios = rec["impls"], rec["ratios"]
        cells = [
            rec["id"],
            *(_fmt_ms(impls[n]["median_ms"]) for n in IMPLS),
            *(_fmt_ratio(ratios[k]) for k in ("jaxce/optax", "jaxce/floor", "optax/floor")),
            *(_fmt_mib(impls[n]["temp_bytes"]) for n in IMPLS),
            _fmt_ratio(rec["temp_ratios"]["jaxce/optax"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Where the benchmark ran: platform, CPU, cores, backend, device, versions, date."""
    device = jax.devices()[0]
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_available": len(affinity(0)) if affinity is not None else None,
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "versions": {
            "jax": jax.__version__,
            "jaxlib": _version("jaxlib"),
            "optax": optax.__version__,
            "jaxce": jaxce.__version__,
            "numpy": np.__version__,
        },
        "env": {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_PLATFORMS") if k in os.environ},
    }


def report(
    records: Sequence[dict[str, Any]],
    settings: Settings,
    argv: Sequence[str],
    wall_s: float,
    probe: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document: machine, settings, the write probe, per-case records."""
    return {
        "schema": 1,
        "machine": machine(),
        "settings": {**dataclasses.asdict(settings), "argv": list(argv)},
        "wall_s": wall_s,
        "write_probe": probe,
        "columns": list(TABLE_COLUMNS),
        "results": list(records),
    }


def plot(records: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    """Bar charts per case: time jaxce/optax, time over the floor, temp memory jaxce/optax."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = [r["id"] for r in records]
    pos = np.arange(len(ids))
    width = max(8.0, 0.55 * len(ids) + 2)
    fig, (top, middle, bottom) = plt.subplots(
        3, 1, figsize=(width, 10), sharex=True, height_ratios=(3, 3, 2)
    )

    def bars(ax: Any, series: Sequence[tuple[str, list[float | None]]]) -> None:
        step = 0.8 / len(series)
        for i, (label, values) in enumerate(series):
            heights = [np.nan if v is None else v for v in values]
            ax.bar(pos + (i - (len(series) - 1) / 2) * step, heights, step, label=label)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_yscale("log")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)

    bars(top, [("time jaxce/optax", [r["ratios"]["jaxce/optax"] for r in records])])
    top.set_ylabel("time jaxce / optax")
    top.set_title(title or "jaxce vs optax (value + grad, jit); < 1 is better for jaxce")
    bars(
        middle,
        [(f"{n}/floor", [r["ratios"][f"{n}/floor"] for r in records]) for n in IMPLS[:3]],
    )
    middle.set_ylabel("time / floor (x * 2)")
    temp = [("temp jaxce/optax", [r["temp_ratios"]["jaxce/optax"] for r in records])]
    bars(bottom, temp)
    bottom.set_ylabel("temp memory\njaxce / optax")
    bottom.set_xticks(pos)
    bottom.set_xticklabels(ids, rotation=60, ha="right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _shapes(text: str) -> tuple[Shape, ...]:
    try:
        pairs = [s.lower().split("x") for s in text.split(",") if s.strip()]
        shapes = tuple((int(a), int(b)) for a, b in pairs)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected ROWSxCLASSES[,...], got {text!r}") from err
    if not shapes or any(r < 1 or c < 1 for r, c in shapes):
        raise argparse.ArgumentTypeError(f"expected positive ROWSxCLASSES[,...], got {text!r}")
    return shapes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/run.py",
        description="Time jaxce vs optax vs a naive formula vs the memory floor (value+grad).",
    )
    p.add_argument("--quick", action="store_true", help="small shapes, short samples (< 1 min)")
    p.add_argument(
        "--filter",
        action="append",
        metavar="SUBSTRING",
        help="run only cases whose id (tag/dtype/RxC) or loss name contains it (repeatable)",
    )
    p.add_argument("--repeats", type=int, help="samples per function (default 10; quick 5)")
    p.add_argument(
        "--min-time", type=float, help="seconds per sample, at least (default 0.2; quick 0.02)"
    )
    p.add_argument(
        "--budget", type=float, help="timing seconds per case, at most (default 60; quick 2)"
    )
    p.add_argument(
        "--shapes", type=_shapes, help="ROWSxCLASSES[,...] instead of the default shapes"
    )
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the inputs (default 0)")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="JSON output path")
    p.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG output path")
    p.add_argument("--no-json", action="store_true", help="do not write JSON")
    p.add_argument("--no-plot", action="store_true", help="do not write the plot")
    p.add_argument(
        "--hlo", type=Path, metavar="DIR", help="dump the optimized HLO of jaxce and optax here"
    )
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(args_list)
    quick = args.quick
    settings = Settings(
        repeats=args.repeats if args.repeats is not None else (5 if quick else 10),
        min_time=args.min_time if args.min_time is not None else (0.02 if quick else 0.2),
        budget=args.budget if args.budget is not None else (2.0 if quick else 60.0),
        seed=args.seed,
    )
    shapes = args.shapes or (QUICK_SHAPES if quick else FULL_SHAPES)
    cases = select(make_cases(shapes), args.filter)
    if not cases:
        _progress(f"no case matches --filter {args.filter}")
        return 2
    if args.list:
        print("\n".join(c.id for c in cases))
        return 0

    backend = jax.default_backend()
    _progress(f"{len(cases)} cases on {backend} ({jax.devices()[0].device_kind}), {settings}")
    start = time.perf_counter()
    records = []
    for i, case in enumerate(cases, 1):
        _progress(f"[{i}/{len(cases)}] {case.id} ({case.loss})")
        records.append(run_case(case, settings, args.hlo))
    wall_s = time.perf_counter() - start
    # The largest logits of the run: what one fresh [B, V] write costs on this machine.
    probe = write_probe(max((c.shape for c in cases), key=math.prod))
    _progress(
        f"write probe {probe['shape'][0]}x{probe['shape'][1]} float32: x * 2 into a fresh "
        f"buffer {probe['fresh_ms']:.1f} ms ({probe['faults_per_fresh_write']} page faults, "
        f"{probe['pages']} pages), in place {probe['in_place_ms']:.1f} ms, "
        f"read only {probe['read_ms']:.1f} ms"
    )

    print(table(records))
    doc = report(records, settings, args_list, wall_s, probe)
    if not args.no_json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
        _progress(f"wrote {args.json}")
    if not args.no_plot:
        title = f"jaxce vs optax, {backend} ({doc['machine']['device_kind']})"
        plot(records, args.plot, title)
        _progress(f"wrote {args.plot}")
    _progress(f"done in {wall_s:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
