"""The package layout's rules, read from the source with ``ast`` (nothing is imported):

- ``models/`` (the model core, shipped as the MLflow model's only code) imports no serving or
  tracking framework and none of the project's other packages;
- ``serving/`` (shipped in the Bento) does not import ``training/``; it uses ``registry/`` (also
  shipped) only to import a model from MLflow at start-up, and ``registry/`` never uses it;
- every source module stays small enough to read: 300 lines at most, ``service.py`` 60.

Importing ``service.py`` with an empty BentoML store needs a fresh interpreter:
tests/integration/test_service_import.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from ..conftest import PROJECT_ROOT

SOURCE_PACKAGES = ("models", "registry", "scoring", "serving", "training", "benchmarks", "devtools")
MAX_MODULE_LINES = 300
MAX_SERVICE_LINES = 60

FORBIDDEN_IMPORTS = {
    "models": {"bentoml", "mlflow", "starlette", "fastapi", "serving", "registry", "training"},
    "serving": {"training"},
    "registry": {"serving", "training"},
}


def _modules(package: str) -> list[Path]:
    root = PROJECT_ROOT / package
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _source_files() -> list[Path]:
    files = [p for package in SOURCE_PACKAGES for p in _modules(package)]
    return [*files, PROJECT_ROOT / "service.py"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, path: Path) -> list[str]:
    """The absolute names an ``from ... import ...`` statement can load."""
    if node.level == 0:
        base = node.module or ""
    else:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    if node.module is None:  # `from . import x`: x may be a module of the package
        return [".".join(filter(None, (base, alias.name))) for alias in node.names]
    return [base]


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module a file imports: at the top, in functions, under TYPE_CHECKING, and through
    ``importlib.import_module``/``__import__`` with a literal name. ``path`` (inside the
    project) resolves relative imports; ``source`` is the file's text unless given."""
    text = path.read_text() if source is None else source
    tree = ast.parse(text, filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.update(_absolute(node, path))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in {"__import__", "import_module"}
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def test_the_import_reader_sees_every_kind_of_import():
    source = (
        "import os.path\n"
        "from typing import TYPE_CHECKING\n"
        "from . import labels\n"
        "from .artifact import X\n"
        "if TYPE_CHECKING:\n"
        "    from starlette.requests import Request\n"
        "def f():\n"
        "    import bentoml\n"
        "    from mlflow import pyfunc\n"
        "    importlib.import_module('fastapi')\n"
        "    return __import__('registry.bento_import')\n"
    )
    names = {
        "os.path", "typing", "models.labels", "models.artifact", "starlette.requests",
        "bentoml", "mlflow", "fastapi", "registry.bento_import",
    }  # fmt: skip
    # Read as a module of this project's models/ package (the file need not exist).
    assert imported_modules(PROJECT_ROOT / "models" / "probe.py", source) == names
    package_init = imported_modules(PROJECT_ROOT / "serving" / "__init__.py", "from .x import y")
    assert package_init == {"serving.x"}
    assert imported_modules(PROJECT_ROOT / "serving" / "a.py", "from .. import models") == {
        "models"
    }


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_packages_import_only_what_their_layer_allows(package):
    forbidden = FORBIDDEN_IMPORTS[package]
    modules = _modules(package)
    assert modules, f"{package}/ has no modules"
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)} imports {name}"
        for path in modules
        for name in sorted(imported_modules(path))
        if name.split(".")[0] in forbidden
    ]
    assert not offenders, "\n".join(offenders)


def test_no_source_module_is_over_300_lines():
    long = [
        f"{path.relative_to(PROJECT_ROOT)}: {count} lines"
        for path in _source_files()
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "\n".join(long)


def test_the_service_file_is_at_most_60_lines():
    lines = len((PROJECT_ROOT / "service.py").read_text().splitlines())
    assert lines <= MAX_SERVICE_LINES, f"service.py has {lines} lines"


SHIPPED_PACKAGES = ("models", "serving", "registry")


def _imports_inside_functions(path: Path) -> list[str]:
    """The project modules a file imports from inside a function body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = _absolute(node, path)
            else:
                continue
            found += [f"{path.name}:{node.lineno} {name}" for name in names]
    return [entry for entry in found if entry.split()[1].split(".")[0] in SHIPPED_PACKAGES]


def test_what_serves_imports_the_project_at_module_import_time():
    """Inside a containerized Bento, BentoML removes the Bento's source directory from sys.path
    once the service module is imported: a project module first imported later, from inside a
    function, is not found there (a model from the registry at start-up failed so)."""
    files = [PROJECT_ROOT / "service.py", *_modules("serving")]
    late = [entry for path in files for entry in _imports_inside_functions(path)]
    assert not late, late
