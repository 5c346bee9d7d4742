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
