"""jaxce's losses on sharded logits: values, collectives and per-device memory against optax.

Run on simulated CPU devices (the flag is set before jax is imported, unless ``XLA_FLAGS``
already asks for a device count)::

    python benchmarks/sharding.py                      # 256 x 32768 float32, meshes 1x8 2x4 8x1
    python benchmarks/sharding.py --rows 32 --classes 4096 --json out.json
    python benchmarks/sharding.py --linear --modes shard_map,explicit,jit  # the LM head

For every public loss, every mesh ``data x model`` and every placement of the logits (rows
sharded, classes sharded, both), ``jax.jit(jax.value_and_grad(sum of the loss))`` is compiled
with the inputs placed by ``jax.device_put(..., NamedSharding)`` (plain ``jit``, shardings
propagated by XLA), and:

* its value and gradient are compared with the same function on one device;
* the collectives of the compiled (per-device) HLO are listed with their result shapes;
* its compiled temp memory per device (``memory_analysis().temp_size_in_bytes``) is put next to
  optax's, for the losses optax has, compiled the same way.

A collective is *row-sized* when its result has at most ``rows x model`` elements (a row
statistic per row and shard, or fewer); the ``largest`` column says how big the biggest one is,
so an all-gather of ``[rows, classes / k]`` partial sums stands out.

``--linear`` measures ``linear_cross_entropy`` with its weight split along the vocabulary over
the ``model`` axis instead: called with ``axis_name`` inside ``jax.shard_map``
(``shard_map``), as the plain call on an explicit-sharding mesh (``explicit``), or as the plain
call on an auto mesh with ``NamedSharding`` inputs (``jit``); value, gradients and forward mode
against one device, a confident token's tiny loss, collectives (with their device groups) and
per-device temp memory.
"""

from __future__ import annotations

import os
import re

# Only when run as a script: imported (tests read its HLO parser) it must not change jax's
# devices or the environment of later subprocesses.
if __name__ == "__main__" and "device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import platform
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxce

#: (first argument, second argument) kinds: ``logits``, ``log_probs``, ``probs`` (rows sum to
#: 1), ``int`` (class indices), ``uniform`` (elementwise in [0, 1)), ``weights`` (a fixed
#: random cotangent for the array-valued functions), or None.
KINDS: dict[str, tuple[str, str | None]] = {
    "softmax_cross_entropy_with_integer_labels": ("logits", "int"),
    "softmax_cross_entropy": ("logits", "probs"),
    "safe_softmax_cross_entropy": ("logits", "probs"),
    "sigmoid_binary_cross_entropy": ("logits", "uniform"),
    "sigmoid_focal_loss": ("logits", "uniform"),
    "poly_loss_cross_entropy": ("logits", "probs"),
    "kl_divergence": ("log_probs", "probs"),
    "kl_divergence_with_log_targets": ("log_probs", "log_probs"),
    "generalized_kl_divergence": ("log_probs", "probs"),
    "convex_kl_divergence": ("log_probs", "probs"),
    "softmax_focal_loss": ("logits", "probs"),
    "entropy": ("logits", None),
    "kl_divergence_with_logits": ("logits", "logits"),
    "jensen_shannon_divergence": ("logits", "logits"),
    "binary_cross_entropy": ("uniform", "uniform"),
    "categorical_cross_entropy": ("probs", "probs"),
    "logsumexp": ("logits", None),
    "log_softmax": ("logits", "weights"),
    "softmax": ("logits", "weights"),
}
#: optax's function of the same meaning, where it has one
OPTAX: dict[str, Callable[..., jax.Array]] = {
    **{name: getattr(optax.losses, name) for name in jaxce.OPTAX_LOSSES},
    "logsumexp": jax.nn.logsumexp,
    "log_softmax": jax.nn.log_softmax,
    "softmax": jax.nn.softmax,
}


def _staged_row_sum(chunks: int) -> Callable[[jax.Array], jax.Array]:
    def row_sum(x: jax.Array) -> jax.Array:
        reduction = dataclasses.replace(jaxce._rows.STAGED, chunks=chunks)
        return jaxce._rows.row_sum(x, (1,), reduction)

    return row_sum


def _fused_row_sum(x: jax.Array) -> jax.Array:
    return jaxce._rows.row_sum(x, (1,), jaxce._rows.FUSED)


#: Row sums with a given strategy, not public losses (``--losses``): the XLA:CPU strided stages
#: over a whole row (what jaxce did before it cut rows into chunks; the partitioner gathers
#: their partial sums), the same within chunks, and the one reduction of GPUs and TPUs.
CONTROLS: dict[str, Callable[..., jax.Array]] = {
    "staged_row_sum_unchunked": _staged_row_sum(1),
    "staged_row_sum": _staged_row_sum(64),
    "fused_row_sum": _fused_row_sum,
}
KINDS.update(dict.fromkeys(CONTROLS, ("logits", None)))
PLACEMENTS = {"rows": P("data", None), "classes": P(None, "model"), "both": P("data", "model")}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_COLLECTIVE = re.compile(
    r"=\s*(\([^)]*\)|\S+)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(",
)
_ARRAY = re.compile(r"(pred|[a-z]+\d+)\[([\d,]*)\]")
_GROUPS_LISTED = re.compile(r"replica_groups=\{((?:\{[\d,]*\},?)*)\}")
# the iota form: [groups, size]<=[dims] with an optional transpose T(perm)
_GROUPS_IOTA = re.compile(r"replica_groups=\[(\d+),(\d+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?")


def _groups(line: str) -> tuple[tuple[int, ...], ...]:
    if m := _GROUPS_LISTED.search(line):
        return tuple(
            tuple(int(d) for d in g.split(",") if d) for g in re.findall(r"\{([\d,]*)\}", m[1])
        )
    if m := _GROUPS_IOTA.search(line):
        dims = [int(d) for d in m[3].split(",")]
        ids = np.arange(math.prod(dims)).reshape(dims)
        if m[4]:
            ids = ids.transpose([int(p) for p in m[4].split(",")])
        return tuple(tuple(int(i) for i in g) for g in ids.reshape(int(m[1]), int(m[2])))
    return ()


@dataclasses.dataclass(frozen=True)
class Collective:
    """One collective of a compiled program: its kind, its result arrays' shapes and the
    device groups it runs over (empty when the HLO does not say)."""

    kind: str
    shapes: tuple[tuple[int, ...], ...]
    bytes: int
    groups: tuple[tuple[int, ...], ...] = ()

    @property
    def elements(self) -> int:
        return max((math.prod(s) for s in self.shapes), default=0)


def collectives(hlo: str) -> list[Collective]:
    """The collectives in optimized HLO text (``compiled.as_text()``)."""
    out = []
    for m in _COLLECTIVE.finditer(hlo):
        end = hlo.find("\n", m.end())
        line = hlo[m.start() : end if end >= 0 else None]
        shapes, size = [], 0
        for dtype, dims in _ARRAY.findall(m.group(1)):
            shape = tuple(int(d) for d in dims.split(",") if d)
            shapes.append(shape)
            bits = 8 if dtype == "pred" else int(re.sub(r"\D", "", dtype))
            size += math.prod(shape) * bits // 8
        out.append(Collective(m.group(2), tuple(shapes), size, _groups(line)))
    return out


def draw(kind: str | None, rows: int, classes: int, seed: int) -> jax.Array | None:
    """An input of ``kind`` (see ``KINDS``), float32, from a fixed seed."""
    if kind is None:
        return None
    rng = np.random.default_rng(seed)
    if kind == "int":
        return jnp.asarray(rng.integers(0, classes, rows), jnp.int32)
    if kind == "uniform":
        return jnp.asarray(rng.uniform(0.01, 0.99, (rows, classes)), jnp.float32)
    z = jnp.asarray(2.0 * rng.normal(size=(rows, classes)), jnp.float32)
    if kind == "probs":
        return jax.nn.softmax(z, axis=-1)
    if kind == "log_probs":
        return jax.nn.log_softmax(z, axis=-1)
    if kind == "weights":
        return jnp.asarray(rng.normal(size=(rows, classes)), jnp.float32)
    return z


def objective(fn: Callable[..., jax.Array], second: str | None) -> Callable[..., jax.Array]:
    """The scalar a training step differentiates: the sum of the loss (array-valued functions
    weighted by a fixed cotangent)."""
    if second is None:
        return lambda x, t: jnp.sum(fn(x))
    if second == "weights":
        return lambda x, t: jnp.sum(fn(x) * t)
    return lambda x, t: jnp.sum(fn(x, t))


@dataclasses.dataclass
class Result:
    loss: str
    mesh: str
    placement: str
    temp_bytes: int  # per device
    one_device_temp_bytes: int
    optax_temp_bytes: int | None
    collectives: list[Collective]
    optax_collectives: list[Collective] | None
    value_error: float  # relative to the one-device value
    grad_error: float  # max |g - g1| / max |g1|

    def largest(self, which: str = "jaxce") -> int:
        cs = self.collectives if which == "jaxce" else (self.optax_collectives or [])
        return max((c.elements for c in cs), default=0)


def _compile(f: Callable[..., Any], *args: Any) -> Any:
    return jax.jit(jax.value_and_grad(f)).lower(*args).compile()


def run_case(
    loss: str, mesh: Mesh, placement: str, rows: int, classes: int, seed: int = 0
) -> Result:
    """One loss on one mesh and placement (see the module docstring)."""
    first, second = KINDS[loss]
    x = draw(first, rows, classes, seed)
    t = draw(second, rows, classes, seed + 1)
    spec = PLACEMENTS[placement]
    place_x = NamedSharding(mesh, spec)
    place_t = NamedSharding(mesh, P(spec[0]) if second == "int" else spec)
    xs = jax.device_put(x, place_x)
    ts = None if t is None else jax.device_put(t, place_t)
    f = objective(CONTROLS[loss] if loss in CONTROLS else getattr(jaxce, loss), second)
    compiled = _compile(f, xs, ts)
    value, grad = compiled(xs, ts)
    one = _compile(f, x, t)  # the same function on one device
    value1, grad1 = one(x, t)
    scale = float(jnp.max(jnp.abs(grad1)))
    ours_hlo = compiled.as_text()
    optax_temp = optax_colls = None
    if loss in OPTAX:
        theirs = _compile(objective(OPTAX[loss], second), xs, ts)
        optax_temp = theirs.memory_analysis().temp_size_in_bytes
        optax_colls = collectives(theirs.as_text())
    return Result(
        loss,
        "x".join(str(s) for s in mesh.devices.shape),
        placement,
        compiled.memory_analysis().temp_size_in_bytes,
        one.memory_analysis().temp_size_in_bytes,
        optax_temp,
        collectives(ours_hlo),
        optax_colls,
        abs(float(value) - float(value1)) / max(abs(float(value1)), 1e-30),
        float(jnp.max(jnp.abs(grad - grad1))) / max(scale, 1e-30),
    )


def make_mesh(shape: tuple[int, int]) -> Mesh:
    devices = np.array(jax.devices()[: math.prod(shape)]).reshape(shape)
    return Mesh(devices, ("data", "model"))


def _summary(cs: Sequence[Collective]) -> str:
    kinds: dict[str, int] = {}
    for c in cs:
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "none"


def table(results: Sequence[Result]) -> str:
    lines = [
        "| loss | mesh | sharded | jaxce collectives | largest (elements) | bytes | "
        "temp KiB jaxce | one device | temp KiB optax | optax largest | value err | grad err |",
        "|:--|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        ot = "—" if r.optax_temp_bytes is None else f"{r.optax_temp_bytes / 1024:,.0f}"
        ol = "—" if r.optax_collectives is None else f"{r.largest('optax'):,}"
        lines.append(
            f"| {r.loss} | {r.mesh} | {r.placement} | {_summary(r.collectives)} | "
            f"{r.largest():,} | {sum(c.bytes for c in r.collectives):,} | "
            f"{r.temp_bytes / 1024:,.0f} | {r.one_device_temp_bytes / 1024:,.0f} | {ot} | "
            f"{ol} | {r.value_error:.1e} | {r.grad_error:.1e} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The vocabulary-parallel LM-head loss
# --------------------------------------------------------------------------------------------

LINEAR_OPTIONS: dict[str, dict[str, Any]] = {
    "plain": {},
    "all": {"label_smoothing": 0.1, "z_loss": 1e-3, "logit_soft_cap": 5.0, "return_lse": True},
}


@dataclasses.dataclass
class LinearResult:
    """``linear_cross_entropy`` with the vocabulary split over the mesh's ``model`` axis."""

    mesh: str
    option: str
    layout: str
    # "shard_map": axis_name inside shard_map; "jit": the plain call, inputs placed with
    # NamedSharding; "explicit": the plain call under an explicit-sharding mesh
    mode: str
    tokens: int
    dim: int
    vocab: int
    temp_bytes: int  # per device
    one_device_temp_bytes: int
    collectives: list[Collective]
    value_error: float  # |v - v1| / |v1|
    grad_error: float  # max over hidden, weight, bias of max |g - g1| / max |g1|
    jvp_error: float
    tiny_loss: float  # a confident token's loss on one device (about 1e-30)
    tiny_error: float  # its relative error when sharded


def linear_case(
    shape: tuple[int, int],
    option: str,
    layout: str,
    mode: str = "shard_map",
    tokens: int = 32,
    dim: int = 16,
    vocab: int = 4096,
    seed: int = 0,
) -> LinearResult:
    """Value, gradients and forward mode of a weighted sum of per-token losses (and
    log-normalizers with ``return_lse``) on ``mesh``, against one device."""
    mesh = make_mesh(shape)
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(tokens, dim))
    w = rng.normal(size=(dim, vocab)) / math.sqrt(dim)
    y = rng.integers(0, vocab, tokens)
    y[1] = -100  # an ignored token
    # token 0 is confident: its target's logit ~70 above the rest, a loss of ~1e-30
    h[0] = 0.0
    h[0, 0] = 1.0
    w[0, :] = 0.0
    w[0, y[0]] = 70.0
    arrays = [jnp.asarray(a, jnp.float32) for a in (h, w if layout == "dv" else w.T)]
    hj, wj = arrays
    bj = jnp.asarray(rng.normal(size=(vocab,)) * 0.1, jnp.float32)
    yj = jnp.asarray(y, jnp.int32)
    c = jnp.asarray(rng.normal(size=(tokens, 2)), jnp.float32)
    kw = dict(LINEAR_OPTIONS[option], weight_layout=layout, reduction="none")
    lse = kw.get("return_lse", False)

    def weighted(out: Any, c: jax.Array) -> jax.Array:
        loss, norm = out if lse else (out, jnp.zeros_like(out))
        return jnp.sum(c[:, 0] * loss) + jnp.sum(c[:, 1] * norm)

    def one(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        return weighted(jaxce.linear_cross_entropy(h, w, yj, bias=b, **kw), c)

    def per_token_one(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
        out = jaxce.linear_cross_entropy(h, w, yj, bias=b, **kw)
        return out[0] if lse else out

    w_spec = P(None, "model") if layout == "dv" else P("model", None)
    context: Callable[[], Any] = contextlib.nullcontext
    if mode == "shard_map":

        def local(h: Any, w: Any, b: Any, y: Any, c: Any, total: bool = True) -> Any:
            out = jaxce.linear_cross_entropy(h, w, y, bias=b, axis_name="model", **kw)
            if not total:
                return out[0] if lse else out
            return jax.lax.psum(weighted(out, c), "data")

        specs = (P("data", None), w_spec, P("model"), P("data"), P("data", None))
        mapped = jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=P())
        per_token = jax.shard_map(
            functools.partial(local, total=False),
            mesh=mesh,
            in_specs=specs,
            out_specs=P("data"),
        )

        def sharded(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
            return mapped(h, w, b, yj, c)

        def sharded_per_token(h: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
            return per_token(h, w, b, yj, c)

        args = (hj, wj, bj)
    else:  # "jit" (auto sharding) or "explicit" (sharding in types): the plain call
        if mode == "explicit":
            mesh = Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Explicit,) * 2)
            context = functools.partial(jax.set_mesh, mesh)  # (set_mesh acts when called)
        sharded, sharded_per_token = one, per_token_one
        places = (P("data", None), w_spec, P("model"))
        pairs = zip((hj, wj, bj), places, strict=True)
        args = tuple(jax.device_put(a, NamedSharding(mesh, s)) for a, s in pairs)
    # one device, outside any mesh context
    one_c = jax.jit(jax.value_and_grad(one, argnums=(0, 1, 2))).lower(hj, wj, bj).compile()
    value1, grads1 = one_c(hj, wj, bj)
    tangents = tuple(jnp.asarray(rng.normal(size=a.shape), jnp.float32) for a in (hj, wj, bj))
    t1 = jax.jit(lambda *a: jax.jvp(one, a, tangents)[1])(hj, wj, bj)
    tiny1 = float(np.asarray(jax.jit(per_token_one)(hj, wj, bj))[0])
    with context():  # the explicit mesh, where the arrays' shardings refer to it
        compiled = jax.jit(jax.value_and_grad(sharded, argnums=(0, 1, 2))).lower(*args).compile()
        value, grads = compiled(*args)
        grad_error = max(
            float(jnp.max(jnp.abs(g - g1))) / float(jnp.max(jnp.abs(g1)))
            for g, g1 in zip(grads, grads1, strict=True)
        )
        t = jax.jit(lambda *a: jax.jvp(sharded, a, tangents)[1])(*args)
        tiny = float(np.asarray(jax.jit(sharded_per_token)(*args))[0])
        return LinearResult(
            "x".join(str(s) for s in shape),
            option,
            layout,
            mode,
            tokens,
            dim,
            vocab,
            compiled.memory_analysis().temp_size_in_bytes,
            one_c.memory_analysis().temp_size_in_bytes,
            collectives(compiled.as_text()),
            abs(float(value) - float(value1)) / abs(float(value1)),
            grad_error,
            abs(float(t) - float(t1)) / abs(float(t1)),
            tiny1,
            abs(tiny - tiny1) / abs(tiny1),
        )


def linear_table(results: Sequence[LinearResult]) -> str:
    lines = [
        "| mesh | options | layout | mode | collectives | largest (elements) | bytes | "
        "temp KiB per device | one device | value err | grad err | jvp err | tiny-loss err |",
        "|:--|:--|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in results:
        largest = max((c.elements for c in r.collectives), default=0)
        lines.append(
            f"| {r.mesh} | {r.option} | {r.layout} | {r.mode} | {_summary(r.collectives)} | "
            f"{largest:,} | {sum(c.bytes for c in r.collectives):,} | "
            f"{r.temp_bytes / 1024:,.0f} | {r.one_device_temp_bytes / 1024:,.0f} | "
            f"{r.value_error:.1e} | {r.grad_error:.1e} | {r.jvp_error:.1e} | {r.tiny_error:.1e} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--classes", type=int, default=32768)
    parser.add_argument("--meshes", default="1x8,2x4,8x1", help="data x model meshes")
    public = [name for name in KINDS if name not in CONTROLS]
    parser.add_argument("--losses", default=",".join(public), help="comma-separated names")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument(
        "--linear",
        action="store_true",
        help="the vocabulary-parallel linear_cross_entropy instead of the losses",
    )
    parser.add_argument(
        "--modes", default="shard_map,explicit", help="with --linear: shard_map,explicit,jit"
    )
    args = parser.parse_args(argv)
    meshes = [tuple(int(s) for s in m.split("x")) for m in args.meshes.split(",")]
    if args.linear:
        linear = [
            linear_case((shape[0], shape[1]), option, layout, mode)
            for shape in meshes
            for mode in args.modes.split(",")
            for option in LINEAR_OPTIONS
            for layout in ("dv", "vd")
        ]
        print(linear_table(linear))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump([dataclasses.asdict(r) for r in linear], fh, indent=1)
        return 0
    results = []
    for shape in meshes:
        mesh = make_mesh((shape[0], shape[1]))
        for loss in args.losses.split(","):
            for placement in PLACEMENTS:
                r = run_case(loss, mesh, placement, args.rows, args.classes)
                print(f"{loss} {r.mesh} {placement}: largest {r.largest()}", file=sys.stderr)
                results.append(r)
    print(
        f"{platform.processor() or platform.machine()}, {len(jax.devices())} simulated "
        f"{jax.default_backend()} devices, jax {jax.__version__}; logits "
        f"{args.rows} x {args.classes} float32, value + gradient\n"
    )
    print(table(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([dataclasses.asdict(r) for r in results], fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
