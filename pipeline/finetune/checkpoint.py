"""Resumable training state of one finetune run: ``agent.pt`` (networks, optimisers, RNGs, counters)
and ``replay.npz`` under ``<checkpoint_dir>/<run key>/``, written atomically as one folder.

A checkpoint that cannot be read (truncated, corrupted, from an incompatible version) is reported,
moved aside to ``<folder>.corrupt-<n>`` (kept for inspection, never read again) and the run starts
from scratch: it fails neither silently nor identically on every rerun.
"""

from __future__ import annotations

import json
import logging
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common.io import OUTPUT_MARKER, atomic_path
from pipeline.common.source import source_digest
from pipeline.finetune.replay_buffer import ReplayBuffer
from pipeline.finetune.sac import SAC

log = logging.getLogger(__name__)

AGENT_FILE = "agent.pt"
REPLAY_FILE = "replay.npz"
RUN_FILE = "run.json"


@dataclass
class TrainState:
    """Counters and curves that a checkpoint restores (plain numbers and lists: torch.load-safe)."""

    frame: int = 0
    episode: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)


#: Source whose change makes a resumed run another computation (repository-relative).
CODE = ("pipeline/finetune", "models", "pipeline/collect/envs", "pipeline/collect/render.py")


def code_digest() -> str:
    """The digest of :data:`CODE` that a checkpoint records (``run.json``'s ``code``)."""
    return source_digest(CODE)


#: The :data:`~pipeline.common.io.OUTPUT_MARKER` owner of a checkpoint folder.
CHECKPOINT_OWNER = "finetune checkpoint"


class ResumeCheckpoint:
    """The checkpoint folder of one run key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return all((self.folder / name).is_file() for name in (AGENT_FILE, REPLAY_FILE, RUN_FILE))

    def frame(self) -> int:
        """The frame the checkpoint was taken at (from ``run.json``)."""
        return int(json.loads((self.folder / RUN_FILE).read_text())["frame"])

    def mismatch(self, key: str) -> str | None:
        """Why this checkpoint is not run ``key``'s, made by this code (None: it is): ``run.json``
        unreadable, another key (a folder copied or renamed), or other code."""
        try:
            run = json.loads((self.folder / RUN_FILE).read_text())
            frame = run["frame"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            return f"{RUN_FILE} is unreadable ({type(exc).__name__})"
        if not isinstance(run, dict) or type(frame) is not int or frame < 0:
            return f"{RUN_FILE} holds no frame count"
        if run.get("key") != key:
            return f"it is the checkpoint of run {run.get('key')!r}, not {key!r}"
        if run.get("code") != code_digest():
            return "it was made by other code"
        return None

    def set_aside(self, reason: str) -> Path:
        """Move the folder to ``<name>.corrupt-<n>`` (kept for a look, never read again); returns where."""
        aside = self._aside()
        self.folder.rename(aside)
        log.warning(
            "resume checkpoint %s: %s; moved it to %s and starting this run from scratch", self.folder, reason, aside
        )
        return aside

    def save(
        self, agent: SAC, buffer: ReplayBuffer, state: TrainState, explore: np.random.Generator, run: dict[str, Any]
    ) -> None:
        payload = {
            "agent": agent.state_dict(),
            "state": state.__dict__,
            "explore_rng": explore.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if agent.device.type == "cuda" else [],
        }
        if self.exists() and not (self.folder / OUTPUT_MARKER).is_file():
            # a checkpoint written before folders carried the marker: it is this cache's, replace it
            (self.folder / OUTPUT_MARKER).write_text(CHECKPOINT_OWNER + "\n")
        with atomic_path(self.folder, owner=CHECKPOINT_OWNER) as tmp:
            tmp.mkdir()
            torch.save(payload, tmp / AGENT_FILE)
            np.savez(tmp / REPLAY_FILE, **buffer.state_dict())
            (tmp / RUN_FILE).write_text(json.dumps(run, sort_keys=True, indent=2) + "\n")
        log.info("checkpoint at frame %d -> %s", state.frame, self.folder)

    def load(self, agent: SAC, buffer: ReplayBuffer, explore: np.random.Generator) -> TrainState:
        """Restore everything into ``agent``, ``buffer`` and ``explore``; the counters it returns."""
        payload = torch.load(self.folder / AGENT_FILE, map_location=agent.device, weights_only=True)
        agent.load_state_dict(payload["agent"])
        with np.load(self.folder / REPLAY_FILE) as replay:
            buffer.load_state_dict({k: replay[k] for k in replay.files})
        explore.bit_generator.state = payload["explore_rng"]
        torch.set_rng_state(payload["torch_rng"].cpu())
        if agent.device.type == "cuda" and payload["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
        return TrainState(**payload["state"])

    def try_load(self, agent: SAC, buffer: ReplayBuffer, explore: np.random.Generator) -> TrainState | None:
        """:meth:`load`, or None after setting an unreadable checkpoint aside (the run starts afresh).

        ``agent`` and ``buffer`` may be partly overwritten by a failed load: build new ones then."""
        try:
            return self.load(agent, buffer, explore)
        except (
            OSError,
            EOFError,
            RuntimeError,
            KeyError,
            TypeError,
            ValueError,
            pickle.UnpicklingError,
            zipfile.BadZipFile,
        ) as exc:
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            self.set_aside(f"unreadable ({type(exc).__name__}: {detail})")
            return None

    def _aside(self) -> Path:
        n = 0
        while (candidate := self.folder.with_name(f"{self.folder.name}.corrupt-{n}")).exists():
            n += 1
        return candidate
