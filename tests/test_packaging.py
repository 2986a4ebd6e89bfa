"""pyproject.toml declares every distribution that the provider package imports.

``pip install -e .`` installs the command-line tool from pyproject.toml alone,
so a module imported by provider/ but missing there fails only on a fresh
installation.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

PROJECT_DIR = Path(__file__).resolve().parents[1]


def imported_top_level_modules() -> set[str]:
    """Return the top-level modules that provider/ imports, outside the stdlib."""
    names: set[str] = set()
    for path in sorted((PROJECT_DIR / "provider").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "provider"}


def canonical(name: str) -> str:
    """Return a distribution name normalized as in PEP 503."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements() -> dict[str, Requirement]:
    document = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    requirements = [Requirement(line) for line in document["project"]["dependencies"]]
    return {canonical(requirement.name): requirement for requirement in requirements}


def installed_with(distributions: set[str]) -> set[str]:
    """Return ``distributions`` and the distributions they require, as installed."""
    found = set(distributions)
    for name in distributions:
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                found.add(canonical(requirement.name))
    return found


def test_pyproject_declares_imports():
    # A module of a dependency's own dependency (botocore of boto3) is
    # installed by pip too, so it needs no line of its own.
    declared = declared_requirements()
    available = installed_with(set(declared))
    distributions_of = importlib.metadata.packages_distributions()
    for module in sorted(imported_top_level_modules()):
        names = distributions_of.get(module, [module])
        distributions = {canonical(name) for name in names}
        assert distributions & available, (
            f"provider/ imports {module} (distribution "
            f"{', '.join(sorted(distributions))}), which pyproject.toml does not "
            f"list in [project] dependencies"
        )


def test_pyproject_ranges_admit_pins():
    declared = declared_requirements()
    text = (PROJECT_DIR / "requirements.txt").read_text()
    runtime = text.split("# Tests only.")[0]
    for line in runtime.splitlines():
        if "==" not in line or line.startswith("#"):
            continue
        pin = Requirement(line)
        name = canonical(pin.name)
        if name not in declared:
            continue
        (version,) = [specifier.version for specifier in pin.specifier]
        assert declared[name].specifier.contains(version), (
            f"pyproject.toml requires {declared[name]}, which excludes the "
            f"version {version} pinned in requirements.txt"
        )
