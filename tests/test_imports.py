"""Every module imports on its own (catches import cycles), and services never import each other."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for pkg in ("shared", "services") for p in (REPO / pkg).rglob("*.py")
)
SERVICES = ("collector", "bigdata", "warning", "publisher", "simulator")


@pytest.mark.parametrize("module", MODULES)
def test_module_imports_alone(module: str) -> None:
    proc = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("service", SERVICES)
def test_services_do_not_import_each_other(service: str) -> None:
    others = {f"services.{s}" for s in SERVICES if s != service}
    for path in (REPO / "services" / service).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert not any(name == o or name.startswith(o + ".") for o in others), (
                    f"{path.relative_to(REPO)} imports {name}")


def test_shared_does_not_import_services() -> None:
    for module in (m for m in MODULES if m.startswith("shared")):
        mod = importlib.import_module(module)
        src = Path(mod.__file__ or "").read_text(encoding="utf-8")
        assert "from services" not in src and "import services" not in src, module
