"""``benchmarks/run.py``: the machinery runs and reports what it measured (never how fast)."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

import jaxce

RUN_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"
TINY = (4, 16)


@pytest.fixture(scope="module")
def bench() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("_jaxce_benchmarks_run", RUN_PY)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def _check_record(bench: ModuleType, rec: dict) -> None:
    assert set(rec["impls"]) == set(bench.IMPLS)
    for impl in rec["impls"].values():
        assert len(impl["samples_ms"]) == rec["repeats"]
        assert impl["median_ms"] == statistics.median(impl["samples_ms"])
        assert impl["calls_per_sample"] >= 1
        assert impl["temp_bytes"] is None or impl["temp_bytes"] >= 0
        assert impl["faults_per_call"] is None or impl["faults_per_call"] >= 0
    for a, b in bench.RATIOS:
        expected = rec["impls"][a]["median_ms"] / rec["impls"][b]["median_ms"]
        assert rec["ratios"][f"{a}/{b}"] == expected
    temp_j, temp_o = (rec["impls"][n]["temp_bytes"] for n in ("jaxce", "optax"))
    if temp_j is not None and temp_o:
        assert rec["temp_ratios"]["jaxce/optax"] == temp_j / temp_o
    else:
        assert rec["temp_ratios"]["jaxce/optax"] is None


def test_cases_cover_every_loss_and_both_dtypes(bench):
    cases = bench.make_cases(bench.QUICK_SHAPES)
    assert {c.loss for c in cases} == set(jaxce.CORE_LOSSES)
    main = [c for c in cases if c.loss == "softmax_cross_entropy_with_integer_labels"]
    assert {(c.dtype, c.shape) for c in main} == {
        (d, s) for d in ("float32", "bfloat16") for s in bench.QUICK_SHAPES
    }
    assert len({c.id for c in cases}) == len(cases)
    assert [c.id for c in bench.select(cases, ["ce_soft/bfloat16"])] == [
        f"ce_soft/bfloat16/{r}x{c}" for r, c in bench.QUICK_SHAPES
    ]


def test_inputs_fixed_seed_soft_labels_normalized(bench):
    soft = bench.Case("softmax_cross_entropy", "float32", TINY)
    x1, t1 = bench.make_inputs(soft, seed=3)
    x2, t2 = bench.make_inputs(soft, seed=3)
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    np.testing.assert_array_equal(np.asarray(t1), np.asarray(t2))
    np.testing.assert_allclose(np.asarray(t1).sum(-1), 1.0, rtol=1e-5)
    integer = bench.Case("softmax_cross_entropy_with_integer_labels", "bfloat16", TINY)
    _, y = bench.make_inputs(integer)
    assert y.shape == (TINY[0],)
    assert int(y.min()) >= 0
    assert int(y.max()) < TINY[1]


def test_plan_fills_min_time_and_caps_budget(bench):
    est = {"jaxce": 0.01, "floor": 0.001}
    calls, repeats = bench.plan(est, bench.Settings(repeats=4, min_time=0.2, budget=1e9))
    assert calls == {"jaxce": 20, "floor": 200}
    assert repeats == 4
    calls, repeats = bench.plan(est, bench.Settings(repeats=100, min_time=0.2, budget=0.1))
    assert calls == {"jaxce": 1, "floor": 1}
    assert repeats == 9  # floor(0.1 / 0.011)


def test_run_case_reports_measured_quotients(bench):
    case = bench.Case("softmax_cross_entropy", "float32", TINY)
    rec = bench.run_case(case, bench.Settings(repeats=2, min_time=0.0), log=lambda _: None)
    assert rec["id"] == "ce_soft/float32/4x16"
    assert rec["repeats"] == 2
    _check_record(bench, rec)


def test_main_writes_table_json_plot_and_hlo(bench, tmp_path, capsys):
    out_json, out_png, hlo = tmp_path / "r.json", tmp_path / "r.png", tmp_path / "hlo"
    argv = ["--shapes", "4x16", "--filter", "ce_int/float32", "--repeats", "1", "--min-time", "0"]
    argv += ["--json", str(out_json), "--plot", str(out_png), "--hlo", str(hlo)]
    assert bench.main(argv) == 0

    lines = capsys.readouterr().out.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(bench.TABLE_COLUMNS)
    assert len(lines) == 3  # header, alignment, one case
    assert lines[2].startswith("| ce_int/float32/4x16 |")

    doc = json.loads(out_json.read_text())
    assert {"machine", "settings", "results", "wall_s"} <= set(doc)
    assert {"platform", "cpu_count", "backend", "device_kind", "date", "versions"} <= set(
        doc["machine"]
    )
    assert {"jax", "jaxlib", "optax"} <= set(doc["machine"]["versions"])
    probe = doc["write_probe"]
    assert probe["shape"] == [4, 16]
    assert probe["pages"] == 1
    assert min(probe[k] for k in ("fresh_ms", "in_place_ms", "read_ms")) > 0
    (rec,) = doc["results"]
    assert rec["loss"] == "softmax_cross_entropy_with_integer_labels"
    _check_record(bench, rec)

    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dumps = sorted(p.name for p in hlo.iterdir())
    assert dumps == ["ce_int__float32__4x16.jaxce.hlo.txt", "ce_int__float32__4x16.optax.hlo.txt"]
    assert "ENTRY" in (hlo / dumps[0]).read_text()


def test_linear_benchmark_reports_memory_ratios(capsys, tmp_path):
    """benchmarks/linear.py: the compile-only memory table, ratio = materialized / jaxce."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "linear.py"
    spec = importlib.util.spec_from_file_location("_jaxce_benchmarks_linear", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "linear.json"
    args = ["--quick", "--no-time", "--dtypes", "float32", "--blocks", "512", "--json", str(out)]
    assert module.main(args) == 0
    (row,) = json.loads(out.read_text())["memory"]
    assert row["ratio"] == pytest.approx(row["temp_base"] / row["temp_jaxce"])
    assert row["temp_jaxce"] < row["temp_base"]
    assert "materialized/jaxce" in capsys.readouterr().out
