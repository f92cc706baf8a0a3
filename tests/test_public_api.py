"""auto-resume uses Dagster's public API only: ruff's TID251 bans every private Dagster module.

Ruff matches a banned name at dot boundaries (``dagster._core`` bans ``dagster._core.events``,
but ``dagster._`` bans nothing), so pyproject.toml lists each private package of Dagster. This
test fails when the installed Dagster has a private package the list misses, and when the
package has a private import that ruff would not see.
"""

import ast
import pkgutil
import tomllib
from pathlib import Path

import dagster

ROOT = Path(__file__).resolve().parent.parent


def _banned() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["ruff"]["lint"]["flake8-tidy-imports"]["banned-api"])


def test_every_private_dagster_package_is_banned() -> None:
    private = {
        f"dagster.{module.name}"
        for module in pkgutil.iter_modules(dagster.__path__)
        if module.name.startswith("_") and not module.name.startswith("__")
    }
    assert private, "no private Dagster packages found: has Dagster's layout changed?"
    assert private - _banned() == set(), "add these to [tool.ruff.lint.flake8-tidy-imports.banned-api]"
    assert "dagster_shared" in _banned()


def test_the_package_imports_no_private_dagster_module() -> None:
    banned = _banned()
    found = []
    for path in sorted((ROOT / "auto_resume").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if any(name == b or name.startswith(b + ".") for b in banned):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert found == []
