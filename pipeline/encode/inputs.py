"""Find and read the encode stage's inputs: episodes, flow and annotations, one subfolder per task.

Everything is checked before any work starts where that is cheap (every episode
has its flow and annotation file); file contents are checked when each episode
is read. Problems raise :class:`EncodeInputError` naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import UserError
from pipeline.common.io import sha256_of
from pipeline.dataset.schema import FLOW_MAX, FLOW_MIN, empty_annotation, sanitize_task
from pipeline.sim.episodes import EpisodeHeader, check_episodes, read_header

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
    header: EpisodeHeader | None = (
        None  # the episode file checked from its headers (:func:`pipeline.sim.episodes.read_header`)
    )


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
    """Every (task, episode) with its three files, sorted by task then episode; each episode file
    checked from its headers by :func:`pipeline.sim.episodes.check_episodes`.

    Raises:
        EncodeInputError: no episodes, an episode without its flow or annotation file,
            or two task names that collide once sanitised for sample keys.
        EpisodeFileError: a damaged or schema-breaking episode file (named, with the fix).
    """
    episodes_dir, flow_dir, annotations_dir = Path(episodes_dir), Path(flow_dir), Path(annotations_dir)
    if not episodes_dir.is_dir():
        raise EncodeInputError(
            f"--episodes {episodes_dir}: no such folder; run the collect stage first (semore collect)"
        )
    tasks = sorted(p.name for p in episodes_dir.iterdir() if p.is_dir() and any(p.glob("episode_*.npz")))
    if not tasks:
        raise EncodeInputError(
            f"--episodes {episodes_dir}: no task folders with episode_*.npz files; "
            f"expected {episodes_dir}/<task>/episode_000000.npz (run semore collect)"
        )
    seen: dict[str, str] = {}
    for task in tasks:
        other = seen.setdefault(sanitize_task(task), task)
        if other != task:
            raise EncodeInputError(
                f"tasks {other!r} and {task!r} give the same sample key prefix {sanitize_task(task)!r}; rename one"
            )

    found: list[EpisodeInputs] = []
    missing: list[str] = []
    for task in tasks:
        for header in check_episodes(episodes_dir / task):
            path = header.path
            index = _episode_index(path)
            if index is None:
                continue
            flow = flow_dir / task / path.name
            annotation = annotations_dir / task / f"{path.stem}.json"
            if not flow.is_file():
                missing.append(f"{flow} (run: semore flow --episodes {episodes_dir / task} --out {flow_dir / task})")
            if not annotation.is_file():
                missing.append(
                    f"{annotation} (run: semore annotate --episodes {episodes_dir / task} "
                    f"--out {annotations_dir / task})"
                )
            found.append(EpisodeInputs(task, index, path, flow, annotation, header))
    if missing:
        shown = "\n  ".join(missing[:10])
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise EncodeInputError(
            f"{len(missing)} input file(s) missing for the episodes in {episodes_dir}:\n  {shown}{more}"
        )
    found.sort(key=lambda e: (e.task, e.episode))
    return found


def assign_splits(episodes: list[EpisodeInputs], val_fraction: float, seed: int) -> dict[tuple[str, int], str]:
    """(task, episode) -> "train" | "validation", by episode, per task, deterministic.

    Episodes of a task are ranked by a hash of (seed, task, episode); the first
    ``round(n * val_fraction)`` go to validation, at least one when
    ``val_fraction > 0`` and the task has two or more episodes, never all of them.
    """
    by_task: dict[str, list[int]] = {}
    for e in episodes:
        by_task.setdefault(e.task, []).append(e.episode)
    split: dict[tuple[str, int], str] = {}
    for task, indices in by_task.items():
        n = len(indices)
        n_val = math.floor(n * val_fraction + 0.5)
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - 1)
        ranked = sorted(indices, key=lambda i: hashlib.sha256(f"{seed}/{task}/{i}".encode()).hexdigest())
        val = set(ranked[:n_val])
        for i in indices:
            split[(task, i)] = "validation" if i in val else "train"
    return split


def _check_flow_source(path: Path, meta: dict[str, Any], episode_path: Path, episode_sha256: str) -> None:
    """The flow file's ``meta.source.episode_sha256`` (and ``meta.episode``) must name this episode file."""
    fix = f"rerun the flow stage for this task (semore flow --episodes {episode_path.parent} --out {path.parent})"
    source = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    recorded = source.get("episode_sha256")
    if not isinstance(recorded, str):
        raise EncodeInputError(
            f"{path}: no meta.source.episode_sha256, so it cannot be matched to {episode_path}; {fix}"
        )
    if recorded != episode_sha256:
        raise EncodeInputError(
            f"{path} was computed from another episode than {episode_path} "
            f"(meta.source.episode_sha256 {recorded[:12]}..., "
            f"the episode file's SHA-256 is {episode_sha256[:12]}...): stale or copied flow; {fix}"
        )
    named = meta.get("episode")
    if named is not None and named != episode_path.name:
        raise EncodeInputError(f"{path}: meta.episode is {named!r}, but it sits beside {episode_path}; {fix}")


def load_flow(
    path: Path,
    length: int,
    height: int,
    width: int,
    *,
    episode_path: Path | None = None,
    episode_sha256: str | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a flow file: ``flow`` (T, 2, H, W) float16 pixels, ``valid`` (T, H, W) bool, ``meta`` dict.

    With ``episode_path`` and ``episode_sha256``, the file's provenance must name that episode.

    Raises:
        EncodeInputError: unreadable file, missing member, shapes that do not match the episode,
            non-finite values, or flow computed from another episode.
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
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        if isinstance(exc, EncodeInputError):
            raise
        raise EncodeInputError(f"{path}: unreadable flow file ({type(exc).__name__}: {exc}); {fix}") from exc
    meta = meta if isinstance(meta, dict) else {"meta": meta}
    if episode_path is not None and episode_sha256 is not None:
        _check_flow_source(path, meta, episode_path, episode_sha256)
    if flow.shape != (length, 2, height, width):
        raise EncodeInputError(
            f"{path}: flow has shape {flow.shape}, expected (T, 2, H, W) = {(length, 2, height, width)} "
            f"for its episode; {fix}"
        )
    if valid.shape != (length, height, width):
        raise EncodeInputError(
            f"{path}: valid has shape {valid.shape}, expected (T, H, W) = {(length, height, width)}; {fix}"
        )
    if not np.issubdtype(flow.dtype, np.floating):
        raise EncodeInputError(f"{path}: flow has dtype {flow.dtype}, expected float16; {fix}")
    if valid.dtype != np.bool_:
        raise EncodeInputError(f"{path}: valid has dtype {valid.dtype}, expected bool; {fix}")
    with np.errstate(over="ignore"):  # values beyond float16's range become inf, refused just below
        stored = flow.astype(np.float16, copy=False)
    bad = ~np.isfinite(stored)
    if bad.any():
        pair, channel, y, x = (int(v) for v in np.argwhere(bad)[0])
        raise EncodeInputError(
            f"{path}: flow is not finite at pair {pair}, channel {channel}, pixel (x={x}, y={y}) "
            f"(value {flow[pair, channel, y, x]!r}; float16 holds at most 65504 px): the flow backend diverged; {fix}"
        )
    low, high = float(stored.min(initial=0.0)), float(stored.max(initial=0.0))
    if low < FLOW_MIN or high > FLOW_MAX:
        raise EncodeInputError(
            f"{path}: flow spans {low:.1f}..{high:.1f} px, beyond what the dataset's KITTI flow PNG holds "
            f"({FLOW_MIN:g}..{FLOW_MAX:g} px): the flow backend diverged; {fix}"
        )
    return stored, valid, meta


def load_annotations(
    path: Path,
    length: int,
    *,
    task: str | None = None,
    episode: int | None = None,
    episode_path: Path | None = None,
    episode_sha256: str | None = None,
    frame_size: tuple[int, int] | None = None,
) -> AnnotationFile:
    """Read an annotation file through the annotate stage's own schema (``pipeline.annotate.schema``).

    Records are keyed by frame index (0..T). With ``task`` / ``episode`` / ``episode_path`` (and its
    ``episode_sha256``) given, the file must say it annotates exactly that episode of that task; a
    file without ``source`` (made before provenance was recorded) is refused by the schema: rerun annotate.

    Raises:
        EncodeInputError: unreadable or schema-invalid file, or one that belongs to another task or episode.
    """
    from pipeline.annotate.schema import AnnotationFileError, read_annotation_file

    fix = "rerun the annotate stage for this task"
    try:  # the annotate stage's own checks: schema, steps, boxes inside the frame, source = this episode file
        doc = read_annotation_file(
            path, length=length, frame_size=frame_size, episode=episode_path, episode_sha256=episode_sha256
        )
    except AnnotationFileError as exc:
        raise EncodeInputError(str(exc)) from exc
    if task is not None and doc.task != task:
        raise EncodeInputError(f"{path}: annotates task {doc.task!r} but sits in the folder of task {task!r}; {fix}")
    if episode is not None and doc.episode != episode:
        raise EncodeInputError(f"{path}: annotates episode {doc.episode} but is named for episode {episode}; {fix}")
    header = {k: v for k, v in doc.model_dump(mode="json").items() if k not in ("records", "source")}
    result = AnnotationFile(header=header)
    for rec in doc.records:
        if rec.status == "ok" and rec.annotation is not None:
            note = rec.annotation
            objects = [
                {"box": list(o.box) if o.box is not None else [], "description": o.description, "name": o.name}
                for o in note.objects
            ]
            record = {"status": "ok", "caption": note.caption, "objects": objects, "motion": note.motion, "error": ""}
            result.frames[rec.step] = FrameAnnotation("ok", record)
        else:
            result.frames[rec.step] = FrameAnnotation(
                "failed", empty_annotation("failed", str(rec.error or "annotation failed"))
            )
    return result


def check_inputs(items: list[EpisodeInputs]) -> None:
    """Check every input before any work, so nothing is written when one is bad.

    * episodes: the episode module's own check of the array headers (:func:`pipeline.sim.episodes.read_header`);
    * flow: shapes against the episode, every value finite, ``meta.source.episode_sha256`` equal to
      the episode file's SHA-256;
    * annotations: the annotate stage's schema (``read_annotation_file``), the task and episode they
      name, their ``source`` (episode file name and SHA-256); a task whose every annotated frame
      failed is refused (what a failed annotate run leaves).

    Raises:
        EncodeInputError: the first problem found, naming the file, the member and the fix.
    """
    failed_by_task: dict[str, list[int]] = {}
    for item in items:
        header = item.header if item.header is not None else read_header(item.episode_path)
        length, (height, width) = header.length, header.frame_size
        digest = sha256_of(item.episode_path)
        load_flow(item.flow_path, length, height, width, episode_path=item.episode_path, episode_sha256=digest)
        notes = load_annotations(
            item.annotation_path,
            length,
            task=item.task,
            episode=item.episode,
            episode_path=item.episode_path,
            episode_sha256=digest,
            frame_size=(height, width),
        )
        tally = failed_by_task.setdefault(item.task, [0, 0])
        tally[0] += len(notes.frames)
        tally[1] += sum(a.status == "failed" for a in notes.frames.values())
    for task, (annotated, failed) in failed_by_task.items():
        if annotated and failed == annotated:
            raise EncodeInputError(
                f"task {task!r}: all {annotated} annotated frames failed (status 'failed' in every annotation file): "
                "these are the leftovers of a failed annotate run; "
                "fix the annotation backend (see data/metrics/annotate_<task>.json) "
                "and rerun the annotate stage for this task"
            )
