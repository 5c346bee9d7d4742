"""The notebooks are committed executed, with their plots, and the docs build runs them.

Executing them is the docs build's job (myst-nb, ``nb_execution_mode = "force"``, a failing
cell fails the strict build that ``.ci/run`` runs): the claims of their text are ``assert``
statements in their cells. These tests check, without a kernel, what a reader of the stored
notebook relies on: it ran top to bottom without an error, it has its plots, it says what it
is about, and it is reachable from the README and the docs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = {
    "where_cross_entropy_breaks.ipynb",
    "training_with_jaxce.ipynb",
    "large_vocabularies.ipynb",
}


def cells(path: Path, kind: str) -> list[dict]:
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == kind]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def test_the_three_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_was_executed_top_to_bottom_without_error(path):
    nb = json.loads(path.read_text())
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    code = cells(path, "code")
    assert code, "no code cells"
    counts = [c["execution_count"] for c in code if source(c).strip()]
    assert counts == list(range(1, len(counts) + 1)), f"not run in order once: {counts}"
    for c in code:
        for out in c["outputs"]:
            assert out["output_type"] != "error", f"stored error in {path.name}: {out}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_shows_plots_and_checks_its_claims(path):
    code = cells(path, "code")
    images = [o for c in code for o in c["outputs"] if "image/png" in o.get("data", {})]
    assert len(images) >= 2, f"{path.name} has {len(images)} plots"
    asserts = sum(len(re.findall(r"^\s*assert ", source(c), flags=re.M)) for c in code)
    assert asserts >= 5, f"{path.name}: only {asserts} asserts on its claims"
    size = path.stat().st_size
    assert size < 3 * 2**20, f"{path.name} is {size / 2**20:.1f} MiB"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_one_title_and_no_relative_links(path):
    """One H1 (its title in the docs' navigation); no relative links, since the same file is
    read on GitHub from notebooks/ and in the docs from another folder."""
    md = [source(c) for c in cells(path, "markdown")]
    titles = [ln for text in md for ln in text.splitlines() if re.match(r"# \S", ln)]
    assert len(titles) == 1, titles
    assert md[0].startswith("# "), "the first cell is not the title"
    for text in md:
        for link in re.findall(r"\]\(([^)\s]+)\)", text):
            assert re.match(r"https?://", link), f"{path.name}: relative link {link}"


def test_where_cross_entropy_breaks_answers_the_questions():
    path = NOTEBOOK_DIR / "where_cross_entropy_breaks.ipynb"
    text = " ".join(source(c) for c in cells(path, "markdown")).lower()
    for topic in ("log(0)", "log_softmax", "nll", "clip", "softplus", "binary", "-inf", "16"):
        assert topic in text, f"no section on {topic!r}"
    code = " ".join(source(c) for c in cells(path, "code"))
    for name in ("optax", "jaxce", "bfloat16", "float32"):
        assert name in code


def test_training_notebook_uses_flax_nnx_and_the_optax_swap():
    path = NOTEBOOK_DIR / "training_with_jaxce.ipynb"
    code = " ".join(source(c) for c in cells(path, "code"))
    assert "from flax import nnx" in code
    assert "optax.losses." in code
    assert "jaxce." in code
    assert "bfloat16" in code


def test_large_vocabulary_notebook_measures_linear_cross_entropy():
    path = NOTEBOOK_DIR / "large_vocabularies.ipynb"
    code = " ".join(source(c) for c in cells(path, "code"))
    assert "linear_cross_entropy" in code
    assert "memory_analysis" in code


def test_every_notebook_is_in_the_docs_and_the_readme():
    index = (ROOT / "docs" / "index.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"notebooks/{path.stem}\n" in index, f"{path.name} not in the docs toctree"
        assert f"(notebooks/{path.name})" in readme, f"{path.name} not linked from the README"
