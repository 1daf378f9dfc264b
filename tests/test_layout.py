"""The repository's layout as a contract: what ``pipeline/`` shows a newcomer, and no import cycles."""

from __future__ import annotations

import sys

from tests.support.imports import PACKAGES, ROOT, module_name, project_imports

# The stage packages, in pipeline order, and the few supporting packages beside them.
STAGES = ("collect", "flow", "annotate", "encode", "pretrain", "finetune", "evaluate", "headline")
SUPPORT = ("common", "sim", "config", "dataset")
# Modules kept at the top for users: the CLI, and README's ``pipeline.probe.read_probe_file``.
TOP_MODULES = ("__init__.py", "cli.py", "probe.py")


def _graph() -> dict[str, set[str]]:
    """Each project module -> the project modules it names in an import statement (any scope)."""
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p): p for p in files}
    return {name: project_imports(path, modules_only=True) & modules.keys() - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_two_project_modules_import_each_other_directly_or_through_others() -> None:
    cycles = _cycles(_graph())
    assert not cycles, (
        f"import cycles: {cycles}. Move what both sides need into a module both can import "
        "(as pipeline/dataset/shards.py and pipeline/annotate/truth.py do)."
    )


def test_the_cycle_finder_finds_a_cycle_through_a_third_module() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_top_of_pipeline_lists_the_stages_and_a_few_supporting_packages() -> None:
    entries = {p.name for p in (ROOT / "pipeline").iterdir() if p.name != "__pycache__"}
    assert entries == set(STAGES) | set(SUPPORT) | set(TOP_MODULES), (
        f"pipeline/ holds {sorted(entries - set(STAGES) - set(SUPPORT) - set(TOP_MODULES))} beyond its stages "
        "and supporting packages: put shared machinery in pipeline/common and simulator-side facts in pipeline/sim"
    )


def test_readmes_probe_import_path_still_reads_the_probe_module() -> None:
    from pipeline import probe
    from pipeline.common import probe as common_probe

    assert probe.read_probe_file is common_probe.read_probe_file
