"""Package surface: public names, typing marker, light import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jaxce


def test_public_names_resolve_and_are_documented():
    for name in jaxce.__all__:
        obj = getattr(jaxce, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"
            assert "Args:" in obj.__doc__, f"{name}'s docstring has no Args section"


def test_losses_have_optax_signatures():
    import inspect

    import optax

    for name in jaxce.OPTAX_LOSSES:
        ours = inspect.signature(getattr(jaxce, name))
        theirs = inspect.signature(getattr(optax.losses, name))
        positional = [
            p for p in theirs.parameters.values() if p.kind is not inspect.Parameter.KEYWORD_ONLY
        ]
        for p in positional:
            q = ours.parameters[p.name]
            assert q.kind is p.kind, (name, p.name)
            assert q.default == p.default, (name, p.name, q.default, p.default)
        assert list(ours.parameters)[: len(positional)] == [p.name for p in positional], name


def test_py_typed_shipped():
    assert (Path(jaxce.__file__).parent / "py.typed").exists()


def test_import_does_not_pull_optax_or_mpmath():
    code = "import sys, jaxce; print('optax' in sys.modules, 'mpmath' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_runtime_dependencies_are_what_the_library_imports():
    """jax, jaxlib and numpy only: optax (the self-check's side-by-side columns), mpmath and
    matplotlib are the ``selfcheck`` extra; the tests' tools the ``test`` extra."""
    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())[
        "project"
    ]
    names = sorted(d.split(">")[0].split("=")[0].split("<")[0] for d in project["dependencies"])
    assert names == ["jax", "jaxlib", "numpy"]
    assert any(d.startswith("optax") for d in project["optional-dependencies"]["selfcheck"])


def test_no_private_name_crosses_a_module_boundary():
    """Package modules share helpers by their public (package-internal) names only: no
    ``from jaxce._x import _y`` (a private name of another module)."""
    import ast

    pkg = Path(jaxce.__file__).parent
    crossing = []
    for path in sorted(pkg.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxce."):
                crossing += [f"{path.name}: {a.name}" for a in node.names if a.name[0] == "_"]
    assert not crossing, crossing


def test_ci_installs_the_parity_pin():
    """.ci/run installs the same PyTorch as pyproject's `parity` extra (so CI runs the matrix)."""
    import tomllib

    root = Path(__file__).parent.parent
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    (pin,) = extras["parity"]
    assert f'install --quiet "{pin}"' in (root / ".ci" / "run").read_text()


def test_ci_runs_the_readme_lines_before_installing_anything_else():
    """The README's Quickstart lines run first in a fresh venv; torch (the parity tests) only
    after them, so a step missing from the README cannot be hidden by a later install."""
    script = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    readme_step = script.index("python .ci/quickstart.py README.md")
    installs = [i for i in range(len(script)) if script.startswith("pip install", i)]
    assert installs, "no install step"
    assert all(i > readme_step for i in installs), "something is installed before the README"
    assert script.index("-m parity") > script.index('install --quiet "torch')
