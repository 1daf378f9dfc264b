""".dvcignore with real dvc: Python bytecode in a code dependency never makes a finished run stale.

A tiny DVC project of its own (two trivial stages whose deps are a Python package that the
stage commands import, so they leave ``__pycache__`` folders behind) with the project's
``.dvcignore``. Without its patterns, DVC hashed those folders into ``dvc.lock``: deleting
them, a new ``.pyc``, or a fresh clone (which has none) made ``dvc status`` report the code
dependency as modified and ``dvc repro`` rerun every stage.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_pipeline_dvc import _dvc, _env

ROOT = Path(__file__).resolve().parents[1]

DVC_YAML = """\
stages:
  first:
    cmd: python -c "import pkg; open('a.txt', 'w').write(str(pkg.VALUE))"
    deps:
      - pkg
    outs:
      - a.txt
  second:
    cmd: python -c "import pkg.sub; open('b.txt', 'w').write(open('a.txt').read() + pkg.sub.SUFFIX)"
    deps:
      - a.txt
      - pkg/sub
    outs:
      - b.txt
"""

SOURCES = {
    "pkg/__init__.py": "from pkg.core import VALUE\n",
    "pkg/core.py": "VALUE = 3\n",
    "pkg/sub/__init__.py": "SUFFIX = '!'\n",
    # Like the project's own .gitignore: bytecode is never committed, so a clone has none.
    ".gitignore": "__pycache__/\n*.pyc\n",
    "dvc.yaml": DVC_YAML,
}


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=cwd,
        env=_env(),
        check=True,
        capture_output=True,
    )


def _pycache_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("__pycache__") if p.is_dir())


def _status(cwd: Path) -> dict:
    """``dvc status`` of the whole pipeline as JSON: ``{}`` when everything is up to date."""
    return json.loads(_dvc(cwd, "status", "--json").strip() or "{}")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git + DVC project whose pipeline has run once, committed to git; its path.

    Shared by the tests of this module (one repro); neither changes what the other relies on
    (the committed sources, dvc.lock and the DVC cache), so either may run first.
    """
    project = tmp_path_factory.mktemp("dvcignore") / "project"
    for rel, text in SOURCES.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    _git(project, "init", "-q")
    _dvc(project, "init", "-q")
    shutil.copy2(ROOT / ".dvcignore", project / ".dvcignore")  # after init, which writes its own
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)  # the stage commands must write bytecode
        _dvc(project, "repro")
    assert (project / "b.txt").read_text() == "3!"
    # Up to date right after the run, although `second` wrote bytecode into `first`'s dependency.
    assert _status(project) == {}
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "finished run")
    return project


def test_finished_run_ignores_deleted_and_new_bytecode(finished_run: Path) -> None:
    project = finished_run
    # The scenario is real: the stage commands left bytecode inside both code dependencies.
    assert {p.parent.name for p in _pycache_dirs(project / "pkg")} == {"pkg", "sub"}
    for folder in _pycache_dirs(project):
        shutil.rmtree(folder)
    assert _status(project) == {}, "deleting __pycache__ made the finished run stale"

    (project / "pkg/__pycache__").mkdir()
    (project / "pkg/__pycache__/core.cpython-399.pyc").write_bytes(b"\x00new bytecode")
    (project / "pkg/sub/stray.pyc").write_bytes(b"\x01stray")
    assert _status(project) == {}, "a new .pyc made the finished run stale"

    # A real source change is still seen (left uncommitted: the other test clones the commit).
    (project / "pkg/core.py").write_text("VALUE = 4\n")
    assert "first" in _status(project)


def test_fresh_clone_plus_pull_is_up_to_date(finished_run: Path, tmp_path: Path) -> None:
    project = finished_run
    remote = tmp_path / "remote"
    _dvc(project, "remote", "add", "-d", "local", str(remote))
    _dvc(project, "push")
    _git(project, "commit", "-q", "-m", "remote", "--", ".dvc/config")  # what a collaborator clones

    clone = tmp_path / "clone"
    _git(tmp_path, "clone", "-q", str(project), str(clone))
    assert not _pycache_dirs(clone)
    _dvc(clone, "pull")
    assert (clone / "b.txt").read_text() == "3!"
    assert _status(clone) == {}, "a fresh clone plus dvc pull is not up to date"
