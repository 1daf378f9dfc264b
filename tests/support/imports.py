"""The project's own import graph, read from the source (``ast``), for the layout and DVC-deps tests."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "models", "stages")


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``), or None."""
    path = ROOT.joinpath(*name.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return None


def module_name(path: Path) -> str:
    """``pipeline/dataset/__init__.py`` -> ``pipeline.dataset``; ``pipeline/io.py`` -> ``pipeline.io``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path, *, modules_only: bool = False) -> set[str]:
    """Project names ``path`` imports anywhere: module level, inside functions and under ``TYPE_CHECKING``.

    ``from a import b`` gives ``a`` and ``a.b`` (``a.b`` may be an attribute, not a module); with
    ``modules_only`` it gives just the module it reads: ``a.b`` where that is a module, else ``a``.
    """
    # the package a relative import starts from (for __init__.py: its own)
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                if node.level
                else node.module
            )
            subs = {f"{base}.{alias.name}" for alias in node.names}
            if modules_only:
                found.update({s for s in subs if module_file(s)} or {base})
            else:
                found.add(base)
                found.update(subs)
    return {name for name in found if name and name.split(".")[0] in PACKAGES}
