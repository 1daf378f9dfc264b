"""Finished RL runs, kept so that a stopped evaluation resumes where it stopped.

A study is dozens of runs of minutes each; a stage killed in its last hour must not lose the
runs it finished. Each finished run is written atomically to
``<evaluate.cache_dir>/<key>.json``; a rerun reads it back instead of training again.

The key hashes everything a run's result depends on, so a hit is the result the run would
compute now: the job (arm, task, action repeat, seed index, backbone label and its weights or
architecture), the stage's params except those that only choose *which* runs exist or how they
are scheduled, the device type, and the source of the code that computes a run. Change any of
them and the run trains again; the stale entry stays on disk, unread. An entry is trusted only if it
records its own key and the code's digest and holds a well-formed curve (:func:`check_record`): a copied,
swapped, truncated or corrupted entry is set aside (``.rejected``) and its run trains again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from pipeline.common.io import atomic_path
from pipeline.common.source import source_digest

log = logging.getLogger(__name__)

#: Params that choose which runs exist, how they are scheduled, or how results are summarised,
#: but not what one run computes.
_NOT_IN_KEY = {
    "tasks",
    "action_repeat",
    "heldout_episodes",
    "heldout_frames",
    "heldout_policy_noise",
    "image_size",
    "frame_stack",
    "random_inits",
    "frozen_random",
    "checkpoints",
    "allow_mismatch",
    "arms",
    "seeds",
    "feature_batch",
    "probe",
    "min_final_return",
    "workers",
    "group_by",
    "device",
    "threads",
    "cache_dir",
}
#: Source that computes one run (relative to the repository root): a change here retrains.
#: Deliberately narrow (no pretraining losses, no collect stage), so that work on pretraining
#: keeps the state and random-init runs, which it cannot change.
_CODE = (
    "models/actor.py",
    "models/backbone.py",
    "models/checkpoint.py",
    "models/critic.py",
    "models/interaction.py",
    "models/layers.py",
    "pipeline/evaluate/workspace.py",
    "pipeline/evaluate/group.py",
    "pipeline/finetune/ensemble_sac.py",
    "models/ensemble.py",
    "pipeline/evaluate/arms.py",
    "pipeline/evaluate/backbones.py",
    "pipeline/evaluate/seeding.py",
    "pipeline/common/seeding.py",
    "pipeline/finetune/sac.py",
    "pipeline/finetune/encoder.py",
    "pipeline/collect/envs",
    "pipeline/collect/render.py",
    "pipeline/common/rendering.py",
)


def code_digest() -> str:
    """SHA-256 over the Python source that computes a run (paths and bytes, sorted)."""
    return source_digest(_CODE)


def job_key(
    job: dict[str, Any],
    backbone: dict[str, Any] | None,
    section: dict[str, Any],
    device_type: str,
    group: list[str] | None = None,
) -> str:
    """24 hex digits naming one run's computation.

    Args:
        job: the job's fields (``dataclasses.asdict`` of an ``RLJob``; its path is left out, the
            backbone's identity is in ``backbone``).
        backbone: ``{"class", "config", "sha256"}`` of the weights used (``sha256`` None for a
            random initialisation, which its label and the seed fix), or None for the state arm.
        section: the evaluate section as ``model_dump(mode="json")``.
        device_type: ``cpu`` or ``cuda`` (numerics differ).
        group: the runs trained with it as one batched group (:mod:`pipeline.evaluate.group`), or None
            for a run trained alone: batched kernels round differently, so the grouping is part of the key.
    """
    record = {
        "job": {k: v for k, v in job.items() if k != "backbone_path"},
        "backbone": backbone,
        "params": {k: v for k, v in section.items() if k not in _NOT_IN_KEY},
        "device": device_type,
        "code": code_digest(),
    }
    if group is not None:
        record["group"] = group
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


class RunCache:
    """``<folder>/<key>.json`` per finished run; None as the folder turns caching off."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder).expanduser() if folder else None

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored result (``curve``, ``final_return``, ``speed``), or None (absent, off, or failing
        :func:`check_record`: that entry is set aside as ``<key>.json.rejected`` and the run trains again)."""
        if self.folder is None:
            return None
        path = self.folder / f"{key}.json"
        try:
            record = json.loads(path.read_text())
            check_record(record, key)
            return {k: record[k] for k in ("curve", "final_return", "speed")}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
            aside = path.with_name(path.name + ".rejected")
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            log.warning("cached run %s is not to be trusted (%s); set aside as %s, running it again", path, exc, aside)
            return None

    def put(self, key: str, result: dict[str, Any]) -> None:
        """Store a finished run's ``curve``, ``final_return`` and ``speed``, with its key and the code's digest
        (:meth:`get` checks both), atomically."""
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "code": code_digest(), **{k: result[k] for k in ("curve", "final_return", "speed")}}
        with atomic_path(self.folder / f"{key}.json") as tmp:
            tmp.write_text(json.dumps(record, sort_keys=True) + "\n")


#: Largest return magnitude a cached run may record: far above any benchmark task's (dm_control's are at most
#: 1000 per episode), far below what a corrupted number looks like.
MAX_ABS_RETURN = 1e6


def check_record(record: Any, key: str) -> None:
    """Raise ValueError unless ``record`` is the entry of ``key`` made by this code, with a well-formed
    evaluation curve: frames increasing from 0, finite returns within :data:`MAX_ABS_RETURN`, the final
    return its last point's."""
    if not isinstance(record, dict) or record.get("key") != key:
        raise ValueError(f"it records the key {record.get('key') if isinstance(record, dict) else None!r}")
    if record.get("code") != code_digest():
        raise ValueError("it was made by other code")
    curve = record["curve"]
    if not isinstance(curve, list) or not curve:
        raise ValueError("its curve is empty")
    frames = [point["frames"] for point in curve]
    if any(type(f) is not int for f in frames) or frames[0] != 0 or frames != sorted(set(frames)):
        raise ValueError(f"its curve's frames are not increasing from 0: {frames[:5]}")
    for point in curve:
        for name in ("return_mean", "return_std"):
            value = point[name]
            if type(value) not in (int, float) or not math.isfinite(value) or abs(value) > MAX_ABS_RETURN:
                raise ValueError(f"its {name} at frame {point['frames']} is {value!r}")
    if record["final_return"] != curve[-1]["return_mean"]:
        raise ValueError("its final return is not its curve's last")
    if not isinstance(record["speed"], dict):
        raise ValueError("its speed figures are missing")
