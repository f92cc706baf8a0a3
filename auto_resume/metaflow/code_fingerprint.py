"""A fingerprint of a flow's code as deployed: its flow file and what it imports from the same tree.

What a resume executes is the flow file on disk: every task is a ``python <flow file> step ...``
subprocess, which imports the flow's own modules from the flow file's directory (Python puts it
first on ``sys.path``). So the fingerprint covers exactly that: the flow file, and every module
it imports (directly or through another such module) that lives in the flow file's directory
tree. Installed packages (Metaflow, numpy...) are left out: they are not the flow's code, and a
new version of one is not the fix of a bug in it. The definitions file metaflow-dagster writes
is left out too: it holds absolute paths and compile options, it runs none of the flow's code
in a resume, and a recompile with no code change would otherwise look like a fix.

The files are read when asked (the sensor asks on every tick with parked failures), so a fix
counts as deployed once it is on disk, with no reload of any code location.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

FINGERPRINT_LENGTH = 16


def code_files(flow_file: Path) -> list[Path]:
    """The flow file and the modules of its directory tree it imports, transitively, sorted.

    Args:
        flow_file: The flow's Metaflow file.

    Returns:
        Absolute paths, the flow file first.

    Raises:
        OSError: The flow file cannot be read.
    """
    root = flow_file.resolve().parent
    first = flow_file.resolve()
    found = {first}
    todo = [first]
    while todo:
        source = todo.pop()
        try:
            tree = ast.parse(source.read_bytes(), filename=str(source))
        except (SyntaxError, ValueError):
            continue  # its bytes still count; what it would import cannot be known
        for module in _imported(tree, source, root):
            if module not in found:
                found.add(module)
                todo.append(module)
    return [first, *sorted(found - {first})]


def code_fingerprint(flow_file: Path) -> str:
    """A short hash of the contents (and relative paths) of :func:`code_files`.

    Raises:
        OSError: The flow file cannot be read.
    """
    files = code_files(flow_file)
    root = files[0].parent
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_LENGTH]


def _imported(tree: ast.Module, source: Path, root: Path) -> list[Path]:
    """Files under ``root`` that the imports of ``tree`` (the module at ``source``) load."""
    names: list[tuple[Path, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(root, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = root
            if node.level:
                base = source.parent
                for _ in range(node.level - 1):
                    base = base.parent
            module = node.module or ""
            names.append((base, module))
            # `from package import name` may name a submodule.
            names += [(base, f"{module}.{alias.name}".lstrip(".")) for alias in node.names]
    files = []
    for base, dotted in names:
        parts = [part for part in dotted.split(".") if part]
        # Each package on the way is imported too (its __init__.py runs).
        for depth in range(1, len(parts) + 1):
            files += _module_file(base, parts[:depth], root)
    return files


def _module_file(base: Path, parts: list[str], root: Path) -> list[Path]:
    target = base.joinpath(*parts)
    for candidate in (target.with_name(target.name + ".py"), target / "__init__.py"):
        resolved = candidate.resolve()
        if resolved.is_file() and resolved.is_relative_to(root):
            return [resolved]
    return []
