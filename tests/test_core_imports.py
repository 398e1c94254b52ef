"""The core package works without the Ray / Tune / serving extras: every module outside `raymlc.distributed`
(and the FastAPI app) imports with those packages made unimportable, and only `raymlc.distributed` imports Ray."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import raymlc

PACKAGE = Path(raymlc.__file__).resolve().parent
BLOCKED = ("ray", "optuna", "fastapi", "starlette", "uvicorn", "prometheus_client")
NEEDS_EXTRAS = ("raymlc.distributed", "raymlc.serving.app", "raymlc.serving.review_app")

WITHOUT_EXTRAS = f"""
import contextlib, importlib, io, pkgutil, sys

BLOCKED = {BLOCKED!r}
assert not [name for name in sys.modules if name.split(".")[0] in BLOCKED], "imported before the blocker"


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
import raymlc

skipped = {NEEDS_EXTRAS!r}
names = [
    info.name
    for info in pkgutil.walk_packages(raymlc.__path__, "raymlc.")
    if not any(info.name == s or info.name.startswith(s + ".") for s in skipped)
]
for name in names:
    importlib.import_module(name)
expected = {{"raymlc.cli", "raymlc.bundle", "raymlc.training", "raymlc.scoring", "raymlc.data.dataset",
            "raymlc.serving.protocol", "raymlc.thresholds", "raymlc.checkpoint"}}
assert expected <= set(names), sorted(expected - set(names))

from raymlc.cli import build_parser, main

build_parser()
with contextlib.redirect_stdout(io.StringIO()) as shown:
    try:
        main(["--help"])
    except SystemExit as exit:
        assert exit.code == 0, exit.code
assert "pipeline" in shown.getvalue()
# A command that needs Ray says so and exits 2 instead of raising.
with contextlib.redirect_stderr(io.StringIO()) as error:
    assert main(["pipeline", "--config", "unused.yaml", "--output", "unused"]) == 2
assert "'ray'" in error.getvalue(), error.getvalue()
assert not [name for name in sys.modules if name.split(".")[0] in BLOCKED]
print(len(names), "modules")
"""


def test_core_modules_import_without_the_extras() -> None:
    done = subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert int(done.stdout.split()[0]) >= 20


def _imports(tree: ast.AST) -> set[str]:
    """Top-level package names of every import statement (at any depth: function-level imports count too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_distributed_package_imports_ray() -> None:
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) >= 20
    offenders = [
        str(path.relative_to(PACKAGE.parent))
        for path in sources
        if path.relative_to(PACKAGE).parts[0] != "distributed" and "ray" in _imports(ast.parse(path.read_text()))
    ]
    assert offenders == []
    # The check does see Ray where it is imported.
    assert "ray" in _imports(ast.parse((PACKAGE / "distributed" / "training.py").read_text()))
