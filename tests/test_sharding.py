"""Every public loss on logits sharded over 8 simulated CPU devices, under plain ``jit``.

Each test runs ``benchmarks/sharding.py`` in a subprocess with
``--xla_force_host_platform_device_count=8`` (the rest of the suite keeps one device) and
checks its JSON: values and gradients as on one device, only row-statistic collectives (no
all-gather of ``[rows, classes / k]`` partial sums, which the partitioner emits for XLA:CPU's
strided stages over a whole sharded row), and per-device temp memory that shrinks with the
shards.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxce

ROOT = Path(__file__).resolve().parents[1]
ROWS, CLASSES = 16, 4096
MAIN = (
    "softmax_cross_entropy_with_integer_labels",
    "softmax_cross_entropy",
    "kl_divergence",
    "logsumexp",
)


def run_sharded(tmp_path: Path, *args: str) -> list[dict]:
    out = tmp_path / "sharding.json"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [sys.executable, str(ROOT / "benchmarks" / "sharding.py"), "--json", str(out)]
    cmd += ["--rows", str(ROWS), "--classes", str(CLASSES), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def shards(r: dict) -> tuple[int, int]:
    """(devices the logits are split over, the model axis's size)."""
    data, model = (int(s) for s in r["mesh"].split("x"))
    return {"rows": data, "classes": model, "both": data * model}[r["placement"]], model


def problems(r: dict) -> list[str]:
    """What is wrong with one result (empty when it is right)."""
    k, model = shards(r)
    out = []
    if r["value_error"] > 1e-6 or r["grad_error"] > 1e-6:
        out.append(f"differs from one device: {r['value_error']:.1e} / {r['grad_error']:.1e}")
    for c in r["collectives"]:
        elements = max((math.prod(s) for s in c["shapes"]), default=0)
        if c["kind"] not in ("all-reduce", "all-gather") or elements > ROWS * model:
            out.append(f"{c['kind']} of {c['shapes']}")
    # Sharded k ways a device holds 1/k of the logits, and its temporaries must shrink with
    # it (gathered partial sums had kept them above the one-device size). XLA's partitioned
    # programs keep up to ~2.2x the temporaries of the one-device program for the heaviest
    # losses (entropy, KL of logits; the same with the fused strategy), hence 2.5 / k.
    if r["temp_bytes"] > 2.5 * r["one_device_temp_bytes"] / k + 65536:
        out.append(f"temp {r['temp_bytes']} B per device, {r['one_device_temp_bytes']} on one")
    return out


def check(results: list[dict]) -> None:
    bad = {f"{r['loss']} {r['mesh']} {r['placement']}": p for r in results if (p := problems(r))}
    assert not bad, json.dumps(bad, indent=1)


def test_every_loss_on_a_2x4_mesh(tmp_path):
    results = run_sharded(tmp_path, "--meshes", "2x4")
    names = {r["loss"] for r in results}
    assert names == {*jaxce.LOSSES, "logsumexp", "log_softmax", "softmax"}
    assert {r["placement"] for r in results} == {"rows", "classes", "both"}
    check(results)


def test_main_losses_on_1x8_and_8x1_meshes(tmp_path):
    results = run_sharded(tmp_path, "--meshes", "1x8,8x1", "--losses", ",".join(MAIN))
    assert len(results) == len(MAIN) * 2 * 3
    check(results)


def test_the_row_sum_strategies_and_the_detector(tmp_path):
    """The XLA:CPU strided stages over a whole row are flagged (the partitioner all-gathers
    their ``[rows, classes / 16]`` partial sums: the checks above can fail); within contiguous
    chunks they are not, nor is the one reduction that GPUs and TPUs get."""
    controls = "staged_row_sum_unchunked,staged_row_sum,fused_row_sum"
    results = run_sharded(tmp_path, "--meshes", "2x4", "--losses", controls)
    found = {(r["loss"], r["placement"]): problems(r) for r in results}
    assert any("all-gather" in p for p in found["staged_row_sum_unchunked", "classes"])
    assert any("all-gather" in p for p in found["staged_row_sum_unchunked", "both"])
    for name in ("staged_row_sum", "fused_row_sum"):
        for placement in ("rows", "classes", "both"):
            assert found[name, placement] == [], (name, placement)


def over_model(c: dict, model: int) -> bool:
    """Whether a collective runs across the model axis (devices are numbered data-major)."""
    return any(len({d % model for d in g}) > 1 for g in c["groups"])


@pytest.mark.parametrize("meshes", ["2x4", "1x8"])
def test_vocab_parallel_linear_cross_entropy(tmp_path, meshes):
    """The weight split along V over the ``model`` axis, either with ``axis_name="model"``
    inside ``shard_map`` or as the plain call on an explicit-sharding mesh: the same values,
    gradients (hidden, weight, bias) and forward mode as on one device, a confident token's
    ~1e-30 loss to float32 precision, and across the model axis only ``[tokens]``-sized
    statistics and the ``[tokens, D]`` hidden gradient (no weight- or logit-sized arrays)."""
    results = run_sharded(tmp_path, "--linear", "--meshes", meshes, "--modes", "shard_map,explicit")
    assert {(r["mode"], r["option"], r["layout"]) for r in results} == {
        (m, o, lay)
        for m in ("shard_map", "explicit")
        for o in ("plain", "all")
        for lay in ("dv", "vd")
    }
    for r in results:
        data, model = (int(s) for s in r["mesh"].split("x"))
        tokens = r["tokens"] // data
        case = (r["mode"], r["option"], r["layout"])
        assert r["value_error"] < 1e-6, case
        assert r["grad_error"] < 1e-5, case
        assert r["jvp_error"] < 1e-5, case
        if r["option"] == "plain":  # (the soft cap and smoothing keep token 0 from it)
            assert 0 < r["tiny_loss"] < 1e-25, case
        assert r["tiny_error"] <= 4 * 2.0**-24, case
        across = [c for c in r["collectives"] if over_model(c, model)]
        assert across, case  # the statistics are combined over the model axis
        for c in across:
            elements = max(math.prod(s) for s in c["shapes"])
            assert elements <= tokens * max(model, r["dim"]), (case, c)
        # a device holds 1/model of the weight and its blocks: less temp than one device
        assert r["temp_bytes"] < r["one_device_temp_bytes"], case


def test_the_docs_examples_run_on_8_devices():
    """docs/sharding.md's python blocks, in order, as one program on 8 simulated devices."""
    text = (ROOT / "docs" / "sharding.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 2
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    proc = subprocess.run(
        [sys.executable, "-c", "\n".join(blocks)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.parametrize(
    ("hlo", "want"),
    [
        ("%ag = f32[16,4]{0,1} all-gather(f32[16,1]{1,0} %x), dimensions={1}", [(16, 4)]),
        (
            "%ar = (f32[8]{0}, f32[8,1]{1,0}) all-reduce-start(%a, %b), to_apply=%sum",
            [(8,), (8, 1)],
        ),
        ("%s = f32[] all-reduce(f32[] %x), to_apply=%sum", [()]),
        ("%m = f32[16,4]{1,0} multiply(%a, %b)", None),
    ],
)
def test_collectives_are_read_from_the_hlo(hlo, want):
    spec = importlib.util.spec_from_file_location(
        "_jaxce_benchmarks_sharding", ROOT / "benchmarks" / "sharding.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    found = module.collectives(hlo)
    assert [list(c.shapes) for c in found] == ([] if want is None else [want])
