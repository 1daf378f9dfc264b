"""DVCLive logging for the stages: metrics and curves in DVCLive's file layout, nothing else.

The stages' DVCLive folders are DVC stage outputs, so DVC already versions them and
``dvc metrics show`` / ``dvc plots show|diff`` / ``dvc exp show`` read them. DVCLive's own
integration (experiment names from git, Studio posts, dvc.yaml edits) is not wanted inside a
stage and breaks in a git repository without commits (``SCMError: Empty git repo``); it is
switched off here, and every stage opens its logger through :func:`open_live`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dvclive import Live


class _FilesOnlyLive(Live):
    """:class:`dvclive.Live` writing only its files under ``dir``."""

    def _init_dvc(self) -> None:  # no git / DVC lookups
        self._dvc_file = "dvc.yaml"

    def _init_studio(self) -> None:  # never post to DVC Studio from a stage
        self._studio_events_to_skip.update({"start", "data", "done"})


def open_live(folder: str | Path) -> Any:
    """A DVCLive logger writing ``metrics.json`` and ``plots/`` under ``folder`` (use it as a context manager)."""
    return _FilesOnlyLive(dir=str(folder), save_dvc_exp=False, dvcyaml=None, report=None)
