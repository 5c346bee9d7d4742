"""``python -m jaxce``: the self-check scores, judges and reports what it claims to."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import jaxce
from jaxce import _selfcheck as sc

INT_CE = "softmax_cross_entropy_with_integer_labels"


@pytest.fixture(scope="module")
def float32_results():
    return {r.function: r for r in sc.run(["float32"], [2, 3, 10])}


def test_every_public_loss_and_primitive_is_checked():
    checked = {s.name for s in sc.SPECS}
    assert set(jaxce.CORE_LOSSES) <= checked
    assert {"softplus", "log_sigmoid", "sigmoid", "logsumexp", "log_softmax", "softmax"} <= checked


def test_jaxce_within_bound_float32(float32_results):
    failed = [(n, r.jaxce) for n, r in float32_results.items() if not r.passed]
    assert not failed


def test_scores_are_real_numbers_not_placeholders(float32_results):
    # A backward-stable result is a few ulps, rarely exactly 0 over a whole grid.
    assert float32_results[INT_CE].jaxce.value > 0.1
    assert float32_results[INT_CE].jaxce.grad > 0.1
    assert float32_results[INT_CE].outputs > 100


def test_optax_integer_label_ce_is_reported_as_broken(float32_results):
    """A loss of 1e-13 comes back from optax as 0: ~1/u ulps (docs/numerics.md)."""
    other = float32_results[INT_CE].other
    assert other is not None
    assert other.value > 1e5
    assert other.grad > 1e5


def test_optax_soft_ce_nan_on_minus_inf_logits_is_counted(float32_results):
    other = float32_results["softmax_cross_entropy"].other
    assert other is not None
    assert other.nonfinite > 0
    assert float32_results["softmax_cross_entropy"].jaxce.nonfinite == 0


def test_16bit_losses_scored_at_float32_roundoff():
    (result,) = sc.run(["bfloat16"], [3, 10], functions=[INT_CE])
    assert result.passed
    # the loss is float32 (u = 2^-24); a bfloat16 loss would be ~2^16 ulps off on tiny values
    assert result.jaxce.value <= 4.0


def test_naive_implementation_fails_the_check(monkeypatch, capsys):
    def naive(logits, labels, axis=-1, where=None):
        log_p = jnp.log(jnp.exp(logits) / jnp.sum(jnp.exp(logits), axis=-1, keepdims=True))
        return -jnp.take_along_axis(log_p, jnp.asarray(labels)[..., None], axis=-1)[..., 0]

    monkeypatch.setattr(jaxce, INT_CE, naive)
    status = sc.main(["--quick", "--dtype", "float32", "--function", INT_CE])
    out = capsys.readouterr()
    assert status == 1
    assert "FAIL" in out.out
    assert INT_CE in out.err


def test_json_output(tmp_path):
    path = tmp_path / "r.json"
    status = sc.main(
        ["--quick", "--dtype", "float32", "--function", "softplus", "--json", str(path)]
    )
    data = json.loads(path.read_text())
    assert status == 0
    assert data["passed"] is True
    assert data["environment"]["backend"] == "cpu"
    (row,) = data["results"]
    assert row["function"] == "softplus"
    assert row["dtype"] == "float32"
    assert 0 < row["jaxce"]["value"] <= 4


def test_bad_arguments_name_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        sc.main(["--dtype", "int8"])
    assert exc.value.code == 2
    assert "--dtype" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sc.main(["--function", "no_such_loss"])
    assert "--function" in capsys.readouterr().err


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plot.png"
    sc.plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_float64_against_mpmath(x64):
    pytest.importorskip("mpmath")
    results = sc.run(
        ["float64"], [2, 10], functions=[INT_CE, "sigmoid_binary_cross_entropy", "logsumexp"]
    )
    assert all(r.passed for r in results), [(r.function, r.jaxce) for r in results]
    int_ce = next(r for r in results if r.function == INT_CE)
    assert int_ce.other is not None
    assert int_ce.other.value > 1e10  # optax in float64: no correct digit on the tiny losses


def test_float64_requires_x64():
    with pytest.raises(RuntimeError, match="jax_enable_x64"):
        sc.run(["float64"], [2])


def test_unit_roundoff_and_bounds():
    assert sc.unit_roundoff(np.float32) == 2.0**-24
    assert sc.unit_roundoff(jnp.bfloat16) == 2.0**-8
    assert sc.unit_roundoff(np.float16) == 2.0**-11
    assert sc.bounds(1000) == (4.0, 8.0)
    assert sc.bounds(10_000) == (16.0, 32.0)


def test_module_entry_point_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "jaxce", "--quick", "--dtype", "float32", "--function", INT_CE],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| softmax_cross_entropy_with_integer_labels | float32 |" in proc.stdout
    assert "PASS" in proc.stdout


def test_self_check_runs_without_optax_and_says_how_to_install_it():
    """optax is optional: with it unimportable the check still scores jaxce (exit 0), leaves
    the optax columns empty and prints how to get them."""
    code = (
        "import sys; sys.modules['optax'] = None\n"
        "from jaxce._selfcheck import main\n"
        "sys.exit(main(['--quick', '--dtype', 'float32', '--max-classes', '3',"
        " '--function', 'softmax_cross_entropy']))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sc.NO_OPTAX in out.stderr
    (row,) = [line for line in out.stdout.splitlines() if line.startswith("| softmax_cross")]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[-1] == "PASS"
    assert cells[6:9] == ["—", "—", "—"], cells  # optax's value, gradient, inf/NaN
