"""Find and read the encode stage's inputs: episodes, flow and annotations, one subfolder per task.

Everything is checked before any work starts where that is cheap (every episode
has its flow and annotation file); file contents are checked when each episode
is read. Problems raise :class:`EncodeInputError` naming the file and the fix.
"""
from __future__ import annotations

import json
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.encode.schema import empty_annotation, sanitize_task
from pipeline.errors import UserError

log = logging.getLogger(__name__)

_EPISODE_RE = re.compile(r"^episode_(\d+)$")


class EncodeInputError(UserError, ValueError):
    """An input file of the encode stage is missing or malformed; the message names it and the fix."""


@dataclass(frozen=True)
class EpisodeInputs:
    """The three files that describe one episode of one task."""

    task: str
    episode: int
    episode_path: Path
    flow_path: Path
    annotation_path: Path


@dataclass(frozen=True)
class FrameAnnotation:
    """The annotation of one frame, normalised to the sample schema (see ``schema.JSON_DOCS``)."""

    status: str  # "ok" | "failed" | "none"
    record: dict[str, Any]  # status, caption, objects, motion, error


@dataclass
class AnnotationFile:
    """One episode's annotation file: header fields and a record per annotated step."""

    header: dict[str, Any]
    frames: dict[int, FrameAnnotation] = field(default_factory=dict)


def _episode_index(path: Path) -> int | None:
    match = _EPISODE_RE.match(path.stem)
    return int(match.group(1)) if match else None


def discover(episodes_dir: str | Path, flow_dir: str | Path, annotations_dir: str | Path) -> list[EpisodeInputs]:
    """Every (task, episode) with its three files, sorted by task then episode.

    Raises:
        EncodeInputError: no episodes, an episode without its flow or annotation file,
            or two task names that collide once sanitised for sample keys.
    """
    episodes_dir, flow_dir, annotations_dir = Path(episodes_dir), Path(flow_dir), Path(annotations_dir)
    if not episodes_dir.is_dir():
        raise EncodeInputError(f"--episodes {episodes_dir}: no such folder; run the collect stage first (semore collect)")
    tasks = sorted(p.name for p in episodes_dir.iterdir() if p.is_dir() and any(p.glob("episode_*.npz")))
    if not tasks:
        raise EncodeInputError(
            f"--episodes {episodes_dir}: no task folders with episode_*.npz files; expected {episodes_dir}/<task>/episode_000000.npz (run semore collect)"
        )
    seen: dict[str, str] = {}
    for task in tasks:
        other = seen.setdefault(sanitize_task(task), task)
        if other != task:
            raise EncodeInputError(f"tasks {other!r} and {task!r} give the same sample key prefix {sanitize_task(task)!r}; rename one")

    found: list[EpisodeInputs] = []
    missing: list[str] = []
    for task in tasks:
        for path in sorted(p for p in (episodes_dir / task).glob("episode_*.npz")):
            index = _episode_index(path)
            if index is None:
                continue
            flow = flow_dir / task / path.name
            annotation = annotations_dir / task / f"{path.stem}.json"
            if not flow.is_file():
                missing.append(f"{flow} (run: semore flow --episodes {episodes_dir / task} --out {flow_dir / task})")
            if not annotation.is_file():
                missing.append(f"{annotation} (run: semore annotate --episodes {episodes_dir / task} --out {annotations_dir / task})")
            found.append(EpisodeInputs(task, index, path, flow, annotation))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise EncodeInputError(f"{len(missing)} input file(s) missing for the episodes in {episodes_dir}:\n  {shown}{more}")
    found.sort(key=lambda e: (e.task, e.episode))
    return found


def load_flow(path: Path, length: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a flow file: ``flow`` (T, 2, H, W) float16 pixels, ``valid`` (T, H, W) bool, ``meta`` dict.

    Raises:
        EncodeInputError: unreadable file, missing member, or shapes that do not match the episode.
    """
    fix = "rerun the flow stage for this task"
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            for member in ("flow", "valid"):
                if member not in names:
                    raise EncodeInputError(f"{path}: missing member {member!r}; {fix}")
            flow, valid = npz["flow"], npz["valid"]
            meta = json.loads(npz["meta"].item()) if "meta" in names else {}
    except (OSError, ValueError, EOFError, json.JSONDecodeError) as exc:
        if isinstance(exc, EncodeInputError):
            raise
        raise EncodeInputError(f"{path}: unreadable flow file ({type(exc).__name__}: {exc}); {fix}") from exc
    if flow.shape != (length, 2, height, width):
        raise EncodeInputError(f"{path}: flow has shape {flow.shape}, expected (T, 2, H, W) = {(length, 2, height, width)} for its episode; {fix}")
    if valid.shape != (length, height, width):
        raise EncodeInputError(f"{path}: valid has shape {valid.shape}, expected (T, H, W) = {(length, height, width)}; {fix}")
    if not np.issubdtype(flow.dtype, np.floating):
        raise EncodeInputError(f"{path}: flow has dtype {flow.dtype}, expected float16; {fix}")
    if valid.dtype != np.bool_:
        raise EncodeInputError(f"{path}: valid has dtype {valid.dtype}, expected bool; {fix}")
    return flow.astype(np.float16, copy=False), valid, meta if isinstance(meta, dict) else {"meta": meta}


def _box(value: Any, where: str) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and len(value) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        box = [float(v) for v in value]
        if all(math.isfinite(v) for v in box):
            return box
    raise ValueError(f"{where}: box must be [x0, y0, x1, y1] (numbers) or null, got {value!r}")


def _ok_annotation(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where}: status 'ok' needs an annotation object, got {type(value).__name__}")
    caption, motion, objects = value.get("caption", ""), value.get("motion", ""), value.get("objects", [])
    if not isinstance(caption, str) or not isinstance(motion, str):
        raise ValueError(f"{where}: caption and motion must be strings")
    if not isinstance(objects, list):
        raise ValueError(f"{where}: objects must be a list")
    clean = []
    for i, obj in enumerate(objects):
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ValueError(f"{where}: objects[{i}] must be an object with a string 'name'")
        description = obj.get("description", "")
        if description is None:
            description = ""
        if not isinstance(description, str):
            raise ValueError(f"{where}: objects[{i}].description must be a string")
        clean.append({"box": _box(obj.get("box"), f"{where}: objects[{i}]"), "description": description, "name": obj["name"]})
    return {"status": "ok", "caption": caption, "objects": clean, "motion": motion, "error": ""}


def load_annotations(path: Path, length: int) -> AnnotationFile:
    """Read an annotation file; records are keyed by frame index (0..T).

    Raises:
        EncodeInputError: unreadable JSON, or a record that does not follow the annotate stage's schema.
    """
    fix = "rerun the annotate stage for this task"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EncodeInputError(f"{path}: unreadable annotation file ({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise EncodeInputError(f"{path}: expected a JSON object with a 'records' list; {fix}")
    header = {k: v for k, v in data.items() if k != "records"}
    result = AnnotationFile(header=header)
    for i, rec in enumerate(data["records"]):
        where = f"{path}: records[{i}]"
        try:
            if not isinstance(rec, dict):
                raise ValueError(f"{where}: expected an object")
            step = rec.get("step")
            if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= length:
                raise ValueError(f"{where}: step {step!r} is not a frame index of this episode (0..{length})")
            status = rec.get("status")
            if status == "ok":
                frame = FrameAnnotation("ok", _ok_annotation(rec.get("annotation"), where))
            elif status == "failed":
                error = rec.get("error") or "annotation failed"
                frame = FrameAnnotation("failed", empty_annotation("failed", str(error)))
            else:
                raise ValueError(f"{where}: status must be 'ok' or 'failed', got {status!r}")
        except ValueError as exc:
            raise EncodeInputError(f"{exc}; {fix}") from exc
        if step in result.frames:
            raise EncodeInputError(f"{where}: step {step} appears twice; {fix}")
        result.frames[step] = frame
    return result


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an ``.npz`` file, read from the headers only (nothing is decompressed in full)."""
    shapes: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            if not name.endswith(".npy"):
                continue
            with zf.open(name) as fh:
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(fh)
            shapes[name[: -len(".npy")]] = (tuple(shape), dtype)
    return shapes


def check_inputs(items: list[EpisodeInputs]) -> None:
    """Check every episode's, flow's and annotation's structure before any work (headers only for arrays).

    Raises:
        EncodeInputError: the first problem found, naming the file, the member and the fix.
    """
    for item in items:
        try:
            ep = npz_shapes(item.episode_path)
            fl = npz_shapes(item.flow_path)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise EncodeInputError(f"{item.episode_path} / {item.flow_path}: unreadable ({type(exc).__name__}: {exc}); rerun the collect / flow stage") from exc
        for member in ("frames", "actions"):
            if member not in ep:
                raise EncodeInputError(f"{item.episode_path}: missing member {member!r}; rerun the collect stage")
        frames, _ = ep["frames"]
        if len(frames) != 4 or frames[3] != 3:
            raise EncodeInputError(f"{item.episode_path}: frames has shape {frames}, expected (T+1, H, W, 3); rerun the collect stage")
        length, height, width = frames[0] - 1, frames[1], frames[2]
        if ep["actions"][0][:1] != (length,):
            raise EncodeInputError(f"{item.episode_path}: actions has shape {ep['actions'][0]}, expected ({length}, A); rerun the collect stage")
        expected = {"flow": (length, 2, height, width), "valid": (length, height, width)}
        for member, shape in expected.items():
            if member not in fl:
                raise EncodeInputError(f"{item.flow_path}: missing member {member!r}; rerun the flow stage for this task")
            if fl[member][0] != shape:
                raise EncodeInputError(
                    f"{item.flow_path}: {member} has shape {fl[member][0]}, expected {shape} for its episode; rerun the flow stage for this task"
                )
        load_annotations(item.annotation_path, length)
