"""Every notebook in notebooks/ runs top to bottom, and shows what its text says it shows."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def run_cells(path: Path) -> list[str]:
    """The stdout of each code cell, executed in order in one namespace."""
    namespace: dict = {"__name__": "__notebook__"}
    outputs = []
    with jax.numpy_rank_promotion("allow"):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] != "code":
                continue
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                exec(compile("".join(cell["source"]), f"{path.name}[{i}]", "exec"), namespace)
            outputs.append(buf.getvalue())
    return outputs


def numbers(line: str) -> list[float]:
    """The numbers on a printed line (``nan`` and ``inf`` included), in order."""
    return [float(t) for t in re.findall(r"-?(?:nan|inf|\d+\.?\d*(?:e[-+]?\d+)?)", line)]


def line(out: str, prefix: str) -> str:
    (found,) = [ln for ln in out.splitlines() if ln.startswith(prefix)]
    return found


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path):
    assert any(run_cells(path))


def test_why_jaxce_shows_each_failure_and_its_fix():
    """Each cell of the notebook pairs an anchor's failure with jaxce's result; the failure
    must be there (the anchor is not quietly fixed upstream) and jaxce's result right."""
    _, tiny, neg_inf, bce, lse, bf16 = run_cells(NOTEBOOK_DIR / "why_jaxce.ipynb")
    # A confident prediction's loss 9.4e-14: optax returns 0 (no correct digit), jaxce keeps
    # it within the accuracy bound, and its gradient too.
    assert numbers(line(tiny, "optax "))[0] == 0.0
    assert numbers(line(tiny, "optax "))[1] > 1e5
    exact = numbers(line(tiny, "exact "))[0]
    ours = numbers(line(tiny, "jaxce "))
    assert abs(ours[0] - exact) <= 1e-6 * exact
    assert ours[1] <= 4
    assert numbers(line(tiny, "d/dx_y jaxce"))[0] == pytest.approx(-exact, rel=1e-6)
    # A -inf logit with zero target: optax NaN, jaxce finite value and gradient.
    assert np.isnan(numbers(line(neg_inf, "optax"))[0])
    assert all(np.isfinite(numbers(line(neg_inf, "jaxce"))))
    # Sigmoid BCE at ±inf logits: optax NaN where jaxce gives the exact 0.
    assert np.isnan(numbers(line(bce, "optax"))).sum() == 2
    assert numbers(line(bce, "jaxce")) == [0.0, np.inf, 0.0, 0.0, 1.0, 0.0]
    # An all -inf row: jax.nn's gradient is NaN, jaxce's 0.
    assert np.all(np.isnan(numbers(line(lse, "jax.nn"))))
    assert numbers(line(lse, "jaxce")) == [-np.inf, 0.0, 0.0, 0.0, 0.0]
    # bfloat16 logits: optax's loss rounds to 0, jaxce's (float32) does not.
    assert numbers(line(bf16, "optax")) == [0.0]
    assert 0 < numbers(line(bf16, "jaxce"))[0] < 1e-5
