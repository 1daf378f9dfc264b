"""What every stage's ``run(...)`` returns: a small summary the CLI prints and DVC reads as metrics.

Each stage package has ``pipeline/<stage>/run.py`` with
``run(inputs..., out, section, ...) -> <Stage>Summary``: inputs first, then the output path,
then its params section (plus the shared ``weights`` section where it loads weights).
The summary is a frozen dataclass deriving from :class:`StageSummary`; ``line()`` is the one
line the CLI prints and ``metrics()`` the JSON the stage writes to its metrics file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.common.io import write_json_atomic


@dataclasses.dataclass(frozen=True)
class StageSummary:
    """Base of every stage summary: subclasses add their fields (counts, seconds, paths)."""

    stage: str
    out: str

    def metrics(self) -> dict[str, Any]:
        """The fields as JSON-able values (paths as strings), without ``stage`` and ``out``."""
        return {
            f.name: (str(v) if isinstance(v, Path) else v)
            for f in dataclasses.fields(self)
            if f.name not in ("stage", "out") and not f.name.startswith("_")
            for v in [getattr(self, f.name)]
        }

    def line(self) -> str:
        """One human-readable line: ``<stage>: k=v, ... -> out``."""
        shown = ", ".join(f"{k}={v}" for k, v in self.metrics().items() if not isinstance(v, (dict, list)))
        return f"{self.stage}: {shown} -> {self.out}"

    def write_metrics(self, path: str | Path) -> None:
        """Write :meth:`metrics` atomically as JSON (a DVC metrics file)."""
        write_json_atomic(path, self.metrics())
