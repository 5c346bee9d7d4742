"""Memory and speed of ``jaxce.linear_cross_entropy`` against the materialized LM-head loss.

::

    python benchmarks/linear.py            # memory: Gemma-2 head; time: 4096 x 512 x 32768
    python benchmarks/linear.py --quick    # small shapes, a minute
    python benchmarks/linear.py --blocks 256,512,1024,2048   # the block-size sweep

The baseline is what a training step does without jaxce: the logits ``hidden @ weight``
materialized (the matmul in the inputs' dtype, accumulated in float32) and
``optax.losses.softmax_cross_entropy_with_integer_labels`` on them, mean over tokens. Both are
``jax.value_and_grad`` with respect to ``hidden`` and ``weight``.

* Memory: ``jit(...).lower(...).compile().memory_analysis().temp_size_in_bytes``, compile only
  (no arrays are allocated, so the Gemma-2 head, 8192 tokens x 2304 x 256000, costs seconds).
* Time: both functions compiled ahead of time, warmed up, then sampled round-robin
  (``--repeats`` samples of at least ``--min-time`` seconds each, the median reported).

The ratios are taken within one run, on one machine (printed with the table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).parent))
from run import _call_time, machine, temp_bytes

import jaxce

GEMMA2 = (8192, 2304, 256000)
TIMED = (4096, 512, 32768)


def materialized(h: jax.Array, w: jax.Array, y: jax.Array) -> jax.Array:
    z = jnp.dot(h, w, preferred_element_type=jnp.float32)
    return optax.losses.softmax_cross_entropy_with_integer_labels(z, y).mean()


def blockwise(block: int | None) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    def loss(h: jax.Array, w: jax.Array, y: jax.Array) -> jax.Array:
        return jaxce.linear_cross_entropy(h, w, y, block_size=block)

    return loss


def compiled(loss: Callable[..., jax.Array], args: tuple[Any, ...]) -> Any:
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return step.lower(*args).compile()


def specs(shape: tuple[int, int, int], dtype: str) -> tuple[Any, ...]:
    n, d, v = shape
    dt = jnp.dtype(dtype)
    s = jax.ShapeDtypeStruct
    return (s((n, d), dt), s((d, v), dt), s((n,), jnp.int32))


def inputs(shape: tuple[int, int, int], dtype: str, seed: int = 0) -> tuple[jax.Array, ...]:
    n, d, v = shape
    kh, kw, ky = jax.random.split(jax.random.key(seed), 3)
    h = jax.random.normal(kh, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) * (2.0 / np.sqrt(d))
    y = jax.random.randint(ky, (n,), 0, v)
    return h.astype(dtype), w.astype(dtype), y


def memory(shape: tuple[int, int, int], dtype: str, blocks: list[int | None]) -> list[dict]:
    args = specs(shape, dtype)
    base = temp_bytes(compiled(materialized, args))
    rows = []
    for block in blocks:
        t = temp_bytes(compiled(blockwise(block), args))
        rows.append(
            {
                "shape": shape,
                "dtype": dtype,
                "block": block,
                "temp_base": base,
                "temp_jaxce": t,
                "ratio": base / t if base and t else None,
            }
        )
    return rows


def timing(
    shape: tuple[int, int, int], dtype: str, blocks: list[int | None], repeats: int, min_time: float
) -> list[dict]:
    args = inputs(shape, dtype)
    fns = {"materialized": compiled(materialized, args)}
    for block in blocks:
        fns[f"jaxce/{block}"] = compiled(blockwise(block), args)
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            samples[k].append(_call_time(lambda k=k: fns[k](*args), min_time))
    base = statistics.median(samples["materialized"])
    rows = []
    for block in blocks:
        t = statistics.median(samples[f"jaxce/{block}"])
        rows.append(
            {
                "shape": shape,
                "dtype": dtype,
                "block": block,
                "ms_base": base * 1e3,
                "ms_jaxce": t * 1e3,
                "ratio": t / base,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small shapes (a minute)")
    p.add_argument("--blocks", default="default", help="comma-separated block sizes")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-time", type=float, default=1.0)
    p.add_argument("--no-time", action="store_true", help="memory only")
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    blocks = [None if b == "default" else int(b) for b in a.blocks.split(",")]
    mem_shape, time_shape = ((1024, 256, 16000), (512, 128, 8000)) if a.quick else (GEMMA2, TIMED)
    dtypes = a.dtypes.split(",")
    mem = [r for dt in dtypes for r in memory(mem_shape, dt, blocks)]
    tim = (
        []
        if a.no_time
        else [r for dt in dtypes for r in timing(time_shape, dt, blocks, a.repeats, a.min_time)]
    )
    env = machine()
    print(
        f"{env['cpu_model']}, {env['cpus_available']} cores, jax {env['versions']['jax']}, "
        f"{env['backend']}"
    )
    print(
        "\n| tokens x D x V | dtype | block | temp materialized MiB | temp jaxce MiB | "
        "materialized/jaxce |"
    )
    print("|:--|:--|--:|--:|--:|--:|")
    for r in mem:
        n, d, v = r["shape"]
        print(
            f"| {n} x {d} x {v} | {r['dtype']} | {r['block'] or 'default'} | "
            f"{r['temp_base'] / 2**20:,.0f} | {r['temp_jaxce'] / 2**20:,.0f} | "
            f"{r['ratio']:.0f}x |"
        )
    if tim:
        print(
            "\n| tokens x D x V | dtype | block | materialized ms | jaxce ms | jaxce/materialized |"
        )
        print("|:--|:--|--:|--:|--:|--:|")
        for r in tim:
            n, d, v = r["shape"]
            print(
                f"| {n} x {d} x {v} | {r['dtype']} | {r['block'] or 'default'} | "
                f"{r['ms_base']:,.0f} | {r['ms_jaxce']:,.0f} | {r['ratio']:.2f} |"
            )
    if a.json:
        a.json.write_text(json.dumps({"machine": env, "memory": mem, "time": tim}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
