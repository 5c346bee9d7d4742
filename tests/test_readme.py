"""The README's Quickstart block has exactly two lines, and its usage example runs as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_is_two_lines_and_ci_runs_them():
    spec = importlib.util.spec_from_file_location("quickstart", ROOT / ".ci" / "quickstart.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    lines = mod.quickstart_lines(README)
    assert lines[0].endswith(("python -m jaxce", "python -m jaxce --quick"))
    assert "[test]" in lines[1]
    assert "pytest" in lines[1]
    assert "quickstart.py README.md" in (ROOT / ".ci" / "run").read_text()


def test_usage_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    assert blocks, "README has no python block"
    namespace: dict = {}
    # user code, written with ordinary numpy broadcasting (x @ w + b)
    with jax.numpy_rank_promotion("allow"):
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    np.testing.assert_allclose(namespace["loss"], [9.420674e-14, 0.31326166], rtol=1e-6)
    assert np.isfinite(float(namespace["value"]))


def test_every_python_block_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        with jax.numpy_rank_promotion("allow"):
            exec(compile(block, "README.md", "exec"), {})


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [
        ln for ln in links if not re.match(r"[a-z][a-z0-9+.-]*:", ln) and not ln.startswith("#")
    ]


def test_every_relative_link_resolves():
    """README -> docs -> notebooks -> examples without a dead link: each relative link of the
    README and the docs pages names a file or folder of the repository."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    checked = 0
    for page in pages:
        for link in _relative_links(page):
            target = (page.parent / link.split("#", 1)[0]).resolve()
            assert target.exists(), f"{page.relative_to(ROOT)} links to {link}: no such file"
            assert ROOT in target.parents or target == ROOT, f"{link} leaves the repository"
            checked += 1
    assert checked >= 3


def test_examples_run_in_ci_and_flax_stays_an_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("flax") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("flax") for d in extras["examples"])
    scripts = sorted((ROOT / "examples").glob("*.py"))
    assert len(scripts) >= 2
    assert any("nnx" in s.read_text() for s in scripts)
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet ".[examples]"' in ci
    assert "examples/*.py" in ci
