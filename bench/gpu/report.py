"""The GPU check's report: rows of figures, skip reasons or errors, written as ``gpu_check.json`` and
``gpu_check.md`` after every row so a run cut short keeps what it measured.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECTIONS = ("flow", "clip", "vlm", "pretrain", "sac", "e2e")
TITLES = {
    "flow": "1. Optical flow (ptlflow, random weights): pairs/s",
    "clip": "2. CLIP encode: images/s and texts/s",
    "vlm": "3. VLM annotate: frames/s",
    "pretrain": "4. Pretraining: samples/s, torchrun loss match",
    "sac": "5. SAC: updates/s, online frames/s",
    "e2e": "6. End to end, device auto (collect -> flow -> annotate -> encode -> pretrain)",
}
#: Published anchor: DrQ-v2 trains at about 96 frames/s on a V100 (action repeat 2, one update per agent step).
DRQV2_V100_FPS = 96.0
DRQV2_V100_UPS = 24.0  # the reading of that figure at batch 256
#: What the figures are compared with (the issue's anchor; docs/NOTES CPU figures of the project's 2-core machine).
ANCHORS = (
    f"DrQ-v2 ~{DRQV2_V100_FPS:.0f} frames/s on a V100 (~{DRQV2_V100_UPS:.0f} SAC updates/s at batch 256)",
    "2-core CPU: one SAC update at batch 32 (84 px, 1 thread) 1335 ms dual-path / 334 ms DrQ-style",
    "2-core CPU: random ViT-B-32 ~17 images/s and ~21 texts/s; "
    "ptlflow raft_small 19 pairs/s at 88 px (NaN there: RAFT needs 128)",
)


@dataclass
class Report:
    """Every section's rows; :meth:`write` puts ``gpu_check.json`` and ``gpu_check.md`` under ``out``."""

    out: Path
    meta: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    notes: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    started: float = field(default_factory=time.perf_counter)

    def ok(self, section: str, name: str, figures: dict[str, float], **checks: Any) -> None:
        """A measured row: ``figures`` are rates / seconds (finite, > 0); ``checks`` anything else."""
        row = {"name": name, "status": "ok", "figures": {k: float(v) for k, v in figures.items()}, "checks": checks}
        self.sections[section].append(row)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row["figures"].items())
        print(f"[{section}] {name}: {shown} {checks if checks else ''}", flush=True)
        self.write()

    def skip(self, section: str, name: str, reason: str) -> None:
        self.sections[section].append({"name": name, "status": "skipped", "reason": reason})
        print(f"[{section}] {name}: {reason}", flush=True)
        self.write()

    def error(self, section: str, name: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.sections[section].append(
            {"name": name, "status": "error", "reason": text, "traceback": traceback.format_exc(limit=8)}
        )
        print(f"[{section}] {name}: ERROR {text}\n{traceback.format_exc(limit=8)}", flush=True)
        self.write()

    def note(self, section: str, text: str) -> None:
        self.notes[section].append(text)
        print(f"[{section}] note: {text}", flush=True)

    def write(self) -> None:
        """Rewrite both files (after every row: a run killed at its time limit keeps what it measured)."""
        self.meta["wall_s"] = time.perf_counter() - self.started
        self.out.mkdir(parents=True, exist_ok=True)
        body = {
            "meta": self.meta,
            "sections": {s: {"title": TITLES[s], "rows": self.sections[s], "notes": self.notes[s]} for s in SECTIONS},
        }
        _write_text(self.out / "gpu_check.json", json.dumps(body, indent=1, sort_keys=False, default=str) + "\n")
        _write_text(self.out / "gpu_check.md", self.markdown())

    def markdown(self) -> str:
        m = self.meta
        lines = [
            "# GPU check (issue 17)",
            "",
            f"mode **{m.get('mode')}**, device {m.get('device')} ({m.get('gpu_name') or 'no GPU'}), "
            f"torch {m.get('torch')}, "
            f"Python {m.get('python')}, EGL renderer: {m.get('egl_renderer')}, wall {m.get('wall_s', 0):.0f} s",
            "",
            "Anchors: " + "; ".join(ANCHORS),
            "",
        ]
        for section in SECTIONS:
            lines += [f"## {TITLES[section]}", "", "| check | status | figures | checks |", "| --- | --- | --- | --- |"]
            for row in self.sections[section]:
                if row["status"] == "ok":
                    figures = ", ".join(f"{k} {_fmt(v)}" for k, v in row["figures"].items())
                    checks = ", ".join(f"{k} {_fmt(v)}" for k, v in row["checks"].items())
                    lines.append(f"| {row['name']} | ok | {figures} | {checks} |")
                else:
                    lines.append(f"| {row['name']} | {row['status']} | {row['reason'].splitlines()[0][:200]} | |")
            lines += [""] + [f"- {n}" for n in self.notes[section]] + [""]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
