"""The documentation site: every public name documented, every page reachable, built strictly
in CI with its notebooks executed, and Flax an extra rather than a dependency."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import jaxce
import jaxce.torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_api_reference_lists_every_public_name():
    api = (DOCS / "api.md").read_text()
    for name in jaxce.__all__:
        assert re.search(rf"(autofunction|autodata):: jaxce\.{name}\n", api), name
    for name in jaxce.torch.__all__:
        assert f"jaxce.torch.{name}" in api, name


def test_every_page_is_in_a_toctree():
    index = (DOCS / "index.md").read_text()
    trees = " ".join(re.findall(r"```\{toctree\}(.*?)```", index, flags=re.S))
    entries = {ln.strip() for ln in trees.splitlines() if ln.strip() and ":" not in ln}
    pages = {p.stem for p in DOCS.glob("*.md")} - {"index"}
    assert pages <= entries, f"pages outside the toctree: {pages - entries}"
    for entry in entries:
        assert (DOCS / f"{entry}.md").exists() or (DOCS / f"{entry}.ipynb").exists(), entry


def test_the_build_is_strict_and_executes_the_notebooks():
    conf = (DOCS / "conf.py").read_text()
    assert 'nb_execution_mode = "force"' in conf
    assert "nb_execution_raise_on_error = True" in conf
    assert (DOCS / "notebooks").resolve() == ROOT / "notebooks"
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet ".[docs]"' in ci
    assert "python -m sphinx -W --keep-going -b html docs" in ci


def test_flax_is_a_docs_extra_not_a_dependency():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith(("flax", "sphinx", "myst")) for d in project["dependencies"])
    docs = project["optional-dependencies"]["docs"]
    for name in ("sphinx", "myst-nb", "flax"):
        assert any(d.startswith(name) for d in docs), name


def test_shipped_files_cite_nothing_outside_the_repository():
    shipped = [ROOT / "README.md", *DOCS.glob("*.md"), *(ROOT / "notebooks").glob("*.ipynb")]
    for path in shipped:
        assert "../shared" not in path.read_text(), path.name


def _python_blocks(page: Path) -> str:
    """The page's static ```python blocks, in order, as one script (later blocks may use what
    earlier ones defined, as a reader running them would)."""
    return "\n".join(re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL))


SINGLE_DEVICE_PAGES = sorted(
    p for p in DOCS.glob("*.md") if p.name != "sharding.md" and _python_blocks(p)
)


@pytest.mark.parametrize("page", SINGLE_DEVICE_PAGES, ids=[p.name for p in SINGLE_DEVICE_PAGES])
def test_every_python_block_of_the_docs_runs(page):
    with jax.numpy_rank_promotion("allow"):
        exec(compile(_python_blocks(page), page.name, "exec"), {})


def test_the_sharding_page_runs_on_eight_devices():
    """docs/sharding.md's blocks on 8 simulated CPU devices, in a subprocess so that this
    session keeps one device."""
    script = _python_blocks(DOCS / "sharding.md")
    assert "Mesh" in script
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    env["JAX_PLATFORMS"] = "cpu"
    run = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_every_doc_role_names_a_page():
    """Links to notebooks are ``{doc}`` roles (the docs' notebooks/ is a link to the
    repository's, which Markdown links would resolve outside the docs)."""
    found = 0
    for page in DOCS.glob("*.md"):
        for target in re.findall(r"\{doc\}`[^`<]*<([^>`]+)>`", page.read_text()):
            assert (DOCS / f"{target}.ipynb").exists() or (DOCS / f"{target}.md").exists()
            found += 1
    assert found >= 3


def test_the_pages_the_issue_asks_for():
    """Getting started, accuracy and edge cases, migration (optax, torch.nn.functional,
    Keras), benchmarks with a plot, large vocabularies and sharding."""
    text = {p.stem: p.read_text() for p in DOCS.glob("*.md")}
    assert "optax.losses" in text["getting_started"]
    for table in ("## Edge cases", "## Inf/NaN policy", "## Bad values", "## Measured against"):
        assert table in text["accuracy"], table
    for source in ("## From optax", "## From PyTorch", "## From Keras"):
        assert source in text["migration"], source
    assert "from_logits" in text["migration"]
    assert "torch.nn.functional" in text["migration"]
    image = re.search(r"```\{image\} (\S+)", text["benchmarks"])
    assert image, "no plot on the benchmarks page"
    assert (DOCS / image.group(1)).exists()
    assert "python benchmarks/run.py" in text["benchmarks"]
    assert "linear_cross_entropy" in text["large_vocab"]
    assert "shard_map" in text["sharding"]


def test_readme_is_short_and_links_to_the_docs():
    """The README keeps one short accuracy table and one short speed table, dated, and leaves
    the reference tables to the docs."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    tables = re.findall(r"\n\n(\|.*?)\n\n", readme, flags=re.S)
    assert len(tables) == 2, f"{len(tables)} tables"
    assert all(len(t.splitlines()) <= 8 for t in tables)
    for section in ("## Accuracy", "## Speed"):
        body = readme.split(section, 1)[1].split("\n## ", 1)[0]
        assert re.search(r"20\d\d-\d\d-\d\d", body), f"{section} has no date"
    for page in ("docs/accuracy.md", "docs/benchmarks.md", "docs/api.md", "docs/migration.md"):
        assert f"({page})" in readme, page
