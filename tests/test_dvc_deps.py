"""dvc.yaml's code deps cover the code each stage runs, so that a change to it reruns the stage.

DVC reruns a stage when one of its ``deps`` changes. The deps are kept by hand; this test follows
every project import (module level and inside functions) from each stage's entry module
(``stages/<name>.py``) and asks that every module reached is a dep, or a file or folder under one,
unless it is listed in :data:`OUTPUT_NEUTRAL` with the reason it cannot change an output.
"""

from __future__ import annotations

import pytest
import yaml

from tests.support.imports import ROOT, module_file, project_imports

#: Modules whose code cannot change what a stage writes, and why. Imports are not followed through them.
OUTPUT_NEUTRAL = {
    "pipeline/__init__.py": "package marker",
    "stages/__init__.py": "package marker",
    "pipeline/common/__init__.py": "package marker (a docstring)",
    "pipeline/sim/__init__.py": "package marker (a docstring)",
    "pipeline/config": "params are deps by value (each stage's `params:`); these modules validate them",
    "pipeline/common/errors.py": "exception classes and messages",
    "pipeline/common/logs.py": "logging and progress bars",
    "pipeline/common/registry.py": "name -> backend class lookup; the classes themselves are deps",
    "pipeline/common/device.py": "picks the device a param names; the machine, not this code, decides the numerics",
    "pipeline/common/processes.py": "ends worker processes with their parent; what they compute is elsewhere",
    "pipeline/common/source.py": "digests of source files for cache keys; a hit returns what a rerun would compute",
}


def _covered(relative: str, entries: list[str]) -> bool:
    return any(relative == entry or relative.startswith(entry.rstrip("/") + "/") for entry in entries)


def _reached(entry: str) -> set[str]:
    """Repository-relative files of the project modules reachable from ``entry`` (not through neutral ones)."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        path = module_file(todo.pop())
        if path is None:
            continue
        relative = str(path.relative_to(ROOT))
        if relative in seen:
            continue
        seen.add(relative)
        if not _covered(relative, list(OUTPUT_NEUTRAL)):
            todo.extend(project_imports(path))
    return seen


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_every_module_a_stage_runs_is_one_of_its_deps(stage: str) -> None:
    deps = [d for d in _stages()[stage]["deps"] if not d.startswith("data/")]
    missing = sorted(f for f in _reached(f"stages.{stage}") if not _covered(f, deps + list(OUTPUT_NEUTRAL)))
    assert not missing, (
        f"dvc.yaml stage {stage!r} runs code that is not among its deps, so changing it would not rerun "
        f"the stage: {missing}. Add each (or its folder) to the stage's deps, or, if it cannot change "
        "the stage's outputs, to OUTPUT_NEUTRAL with the reason."
    )


def test_the_import_walk_follows_function_level_imports_and_stops_at_neutral_modules() -> None:
    """The walk itself: the flow stage imports pipeline.flow.run inside a function, which imports pipeline.common.io;
    pipeline.config is reached but not followed."""
    reached = _reached("stages.flow")
    assert {"stages/flow.py", "pipeline/flow/run.py", "pipeline/common/io.py", "pipeline/flow/simulator.py"} <= reached
    assert not any(
        f.startswith("pipeline/config/") and f != "pipeline/config/__init__.py" for f in reached
    )  # not followed
    assert not _covered("pipeline/flowers.py", ["pipeline/flow"]) and _covered(
        "pipeline/flow/run.py", ["pipeline/flow"]
    )
