"""The episode file: what the collect stage writes and every later stage reads.

One ``.npz`` per episode (``data/episodes/<task>/episode_<i:06d>.npz``), written
atomically with deterministic bytes (:func:`pipeline.common.io.write_npz_atomic`).
An episode of ``T`` agent steps holds ``T + 1`` frames; step ``t`` is the
transition from frame ``t`` to frame ``t + 1``.

=====================  ===================  =========  ==========================================
member                 shape                dtype      meaning
=====================  ===================  =========  ==========================================
frames                 (T+1, H, W, 3)       uint8      RGB frames
actions                (T, A)               float32    action taken after frame t (env units)
rewards                (T,)                 float32    reward of transition t (summed over action repeat)
discounts              (T,)                 float32    env discount of transition t (0 at a true terminal)
terminated             (T,)                 bool       transition t ended in a true terminal state
truncated              (T,)                 bool       transition t hit the time limit (not terminal)
qpos                   (T+1, nq)            float64    MuJoCo generalised positions at frame t
qvel                   (T+1, nv)            float64    MuJoCo generalised velocities at frame t
body_pos               (T+1, nbody, 3)      float64    world position of each body frame (m)
body_quat              (T+1, nbody, 4)      float64    world orientation of each body (w, x, y, z)
camera_extrinsics      (T+1, 4, 4)          float64    world_from_camera, OpenCV axes (x right, y down, z forward)
camera_intrinsics      (3, 3)               float64    K in pixels; pixel (u, v) centre at integer (u, v)
depth                  (T+1, H, W)          float32    z-depth along the optical axis (m); optional
segmentation           (T+1, H, W)          int32      geom id per pixel, -1 for background; optional
geom_body              (ngeom,)             int32      body id of each geom (segmentation -> body)
meta                   ()                   str        JSON, see :class:`EpisodeMeta`
=====================  ===================  =========  ==========================================

This module is the one place that reads and validates episode files; every stage goes
through it:

* :func:`check_episodes` (a task folder) / :func:`read_header` (one file): the members'
  shapes and dtypes from their ``.npy`` headers and the ``meta`` JSON, checked against
  :data:`SCHEMA` without decompressing the arrays: what a stage calls before any work.
* :func:`load_episode`: the arrays themselves (only the members asked for are decompressed).

A file that cannot be read (truncated, damaged zip data or CRC) or breaks the schema raises
:class:`EpisodeFileError`, a :class:`~pipeline.common.errors.UserError` that names the file and the
fix (rerun collect); it is also a ``ValueError``.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.errors import UserError
from pipeline.common.io import dumps_json, write_json_atomic, write_npz_atomic

SCHEMA_VERSION = 1
OPTIONAL_ARRAYS = ("depth", "segmentation")
#: The per-task table of episodes written beside the episode files.
INDEX_FILE = "index.json"

#: Shape and dtype of every array member. A shape entry is a size, ``"T"`` (agent steps),
#: ``"T+1"`` (frames), ``"H"`` / ``"W"`` (frame size), or None (any size).
SCHEMA: dict[str, tuple[tuple[int | str | None, ...], type]] = {
    "frames": (("T+1", "H", "W", 3), np.uint8),
    "actions": (("T", None), np.float32),
    "rewards": (("T",), np.float32),
    "discounts": (("T",), np.float32),
    "terminated": (("T",), np.bool_),
    "truncated": (("T",), np.bool_),
    "qpos": (("T+1", None), np.float64),
    "qvel": (("T+1", None), np.float64),
    "body_pos": (("T+1", None, 3), np.float64),
    "body_quat": (("T+1", None, 4), np.float64),
    "camera_extrinsics": (("T+1", 4, 4), np.float64),
    "camera_intrinsics": ((3, 3), np.float64),
    "geom_body": ((None,), np.int32),
    "depth": (("T+1", "H", "W"), np.float32),
    "segmentation": (("T+1", "H", "W"), np.int32),
}
#: What to do about a damaged or malformed episode file (``{task}`` and ``{folder}`` from its path).
FIX = (
    "rerun the collect stage for this task "
    "(`semore collect --task {task} --out {folder}`, or `dvc repro collect@{task}`), "
    "which records damaged episodes again"
)

#: (shape, dtype) of an array member, as read from its ``.npy`` header.
Shape = tuple[tuple[int, ...], np.dtype]


class SchemaError(ValueError):
    """Arrays that do not follow :data:`SCHEMA` (the message names the member)."""


class EpisodeFileError(UserError, ValueError):
    """An episode file that cannot be read or breaks the schema; the message names the file and the fix."""

    @classmethod
    def of(cls, path: str | Path, problem: str, task: str | None = None) -> EpisodeFileError:
        """The error for ``problem`` in the episode file ``path``; ``task`` defaults to its folder's name
        (``<episodes>/<task>/``)."""
        folder = Path(path).parent
        return cls(f"{path}: {problem}.\n  Fix: {FIX.format(task=task or folder.name, folder=folder)}.")


def check_shapes(shapes: Mapping[str, Shape]) -> int:
    """Check array members' shapes and dtypes against :data:`SCHEMA`; return T (agent steps).

    Args:
        shapes: member name -> (shape, dtype) for every array present; optional members may be absent.

    Raises:
        SchemaError: a required member is missing, or one has the wrong dtype, rank or size (named).
    """
    missing = [name for name in SCHEMA if name not in OPTIONAL_ARRAYS and name not in shapes]
    if missing:
        raise SchemaError(
            f"missing member(s) {', '.join(map(repr, missing))} (not an episode file of schema {SCHEMA_VERSION}?)"
        )
    for name in ("frames", "actions"):
        shape, dtype = shapes[name]
        spec, want = SCHEMA[name]
        if len(shape) != len(spec) or np.dtype(dtype) != want:
            raise SchemaError(
                f"episode member {name!r}: {np.dtype(dtype)} {tuple(shape)}, expected {np.dtype(want)} of shape {spec}"
            )
    t = int(shapes["actions"][0][0])
    n, h, w = (int(x) for x in shapes["frames"][0][:3])
    if n != t + 1:
        raise SchemaError(f"episode: frames has {n} entries but actions {t}: an episode of T steps has T+1 frames")
    sizes: dict[str, int] = {"T": t, "T+1": t + 1, "H": h, "W": w}
    for name, (spec, want) in SCHEMA.items():
        if name not in shapes:
            continue
        shape, dtype = shapes[name]
        if np.dtype(dtype) != want:
            raise SchemaError(f"episode member {name!r}: dtype {np.dtype(dtype)}, expected {np.dtype(want)}")
        expected = tuple(sizes[e] if isinstance(e, str) else e for e in spec)
        if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape, strict=True)):
            raise SchemaError(f"episode member {name!r}: shape {tuple(shape)}, expected {expected} (None = any)")
    return t


@dataclass(frozen=True)
class EpisodeMeta:
    """Scalar facts about an episode, stored as JSON in the ``meta`` member."""

    task: str
    suite: str  # "dm_control" or "gymnasium"
    episode: int
    seed: int
    policy: str
    action_repeat: int
    image_size: int
    camera: int | str
    render_mode: str
    control_timestep: float  # seconds of simulated time per agent step
    length: int  # T, agent steps
    episode_return: float
    terminated: bool
    truncated: bool
    action_low: list[float]
    action_high: list[float]
    body_names: list[str]
    geom_names: list[str]
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Episode:
    """In-memory episode; see the module docstring for every field's shape, dtype and unit."""

    frames: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    discounts: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray
    body_pos: np.ndarray
    body_quat: np.ndarray
    camera_extrinsics: np.ndarray
    camera_intrinsics: np.ndarray
    geom_body: np.ndarray
    meta: EpisodeMeta
    depth: np.ndarray | None = None
    segmentation: np.ndarray | None = None

    @property
    def length(self) -> int:
        """Number of agent steps T (frames hold T + 1)."""
        return int(self.actions.shape[0])

    def validate(self) -> None:
        """Check shapes and dtypes against :data:`SCHEMA`; raise :class:`SchemaError` (a ValueError) naming
        the bad member."""
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "meta"}
        check_shapes({name: (value.shape, value.dtype) for name, value in arrays.items() if value is not None})

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "meta"}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        arrays["meta"] = np.array(dumps_json(asdict(self.meta)))
        return arrays


def episode_filename(index: int) -> str:
    """``episode_<index:06d>.npz``."""
    return f"episode_{index:06d}.npz"


def save_episode(path: str | Path, episode: Episode) -> None:
    """Validate and write ``episode`` atomically with deterministic bytes."""
    episode.validate()
    write_npz_atomic(path, episode.to_arrays())


@dataclass(frozen=True)
class EpisodeHeader:
    """An episode file checked against the schema from its headers: what a stage needs to plan its work.

    Attributes:
        path: the file.
        meta: its ``meta`` member.
        shapes: member name -> (shape, dtype) of every array member present.
    """

    path: Path
    meta: EpisodeMeta
    shapes: dict[str, Shape]

    @property
    def length(self) -> int:
        """T, agent steps (the file holds T + 1 frames)."""
        return int(self.shapes["actions"][0][0])

    @property
    def frame_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        h, w = self.shapes["frames"][0][1:3]
        return int(h), int(w)

    def has(self, *members: str) -> bool:
        """True when every one of ``members`` (e.g. the optional ``depth``, ``segmentation``) is in the file."""
        return all(name in self.shapes for name in members)


#: What reading a damaged or foreign file raises, whichever layer notices (zip, zlib, npy, JSON, meta).
_READ_ERRORS = (OSError, EOFError, KeyError, TypeError, ValueError, zipfile.BadZipFile, zlib.error)


def _npy_shapes(zf: zipfile.ZipFile) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for name in zf.namelist():
        if not name.endswith(".npy"):
            continue
        with zf.open(name) as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
        shapes[name[: -len(".npy")]] = (tuple(shape), dtype)
    return shapes


def _meta_of(zf: zipfile.ZipFile) -> EpisodeMeta:
    with zf.open("meta.npy") as fh:
        text = np.lib.format.read_array(fh, allow_pickle=False).item()
    return EpisodeMeta(**json.loads(text))


def read_header(path: str | Path) -> EpisodeHeader:
    """Check one episode file from its headers and ``meta`` (the arrays are not decompressed).

    Raises:
        EpisodeFileError: the file is missing, unreadable (truncated, not a zip, bad ``meta``) or
            breaks the schema (a missing member, a wrong dtype or shape, T+1 frames for T actions,
            ``meta.length`` other than T); the message names the file, the member and the fix.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            shapes = _npy_shapes(zf)
            meta = _meta_of(zf)
    except _READ_ERRORS as exc:
        raise EpisodeFileError.of(path, f"unreadable episode file ({type(exc).__name__}: {exc})") from exc
    shapes.pop("meta", None)
    try:
        length = check_shapes(shapes)
    except SchemaError as exc:
        raise EpisodeFileError.of(path, str(exc), meta.task) from exc
    if meta.length != length:
        raise EpisodeFileError.of(path, f"meta.length is {meta.length} but the file holds {length} steps", meta.task)
    return EpisodeHeader(path, meta, shapes)


def check_episodes(folder: str | Path) -> list[EpisodeHeader]:
    """Every episode file of one task folder, each checked by :func:`read_header`, in episode order.

    What a stage calls before any work, so a bad file fails the run before anything is written.

    Raises:
        EpisodeFileError: no episode files, a bad file (named), or episodes of several tasks.
    """
    folder = Path(folder)
    paths = list_episodes(folder)
    if not paths:
        raise EpisodeFileError(
            f"{folder}: no episode_*.npz files; "
            f"run the collect stage first (semore collect --task <task> --out {folder})"
        )
    headers = [read_header(path) for path in paths]
    tasks = sorted({h.meta.task for h in headers})
    if len(tasks) > 1:
        raise EpisodeFileError(
            f"{folder}: episodes of several tasks ({', '.join(tasks)}); one folder holds one task's episodes.\n"
            f"  Fix: collect each task into its own folder (data/episodes/<task>)."
        )
    return headers


def load_meta(path: str | Path) -> EpisodeMeta:
    """Read only the ``meta`` member of an episode file.

    Raises:
        EpisodeFileError: the file or its ``meta`` is unreadable (names the file and the fix).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            return _meta_of(zf)
    except _READ_ERRORS as exc:
        raise EpisodeFileError.of(path, f"unreadable episode file ({type(exc).__name__}: {exc})") from exc


def load_episode(
    path: str | Path, fields_: Iterable[str] | None = None, header: EpisodeHeader | None = None
) -> Episode:
    """Read an episode file, checked against the schema.

    Args:
        path: the ``.npz`` file.
        fields_: array members to decompress (default all); the others are empty (0,) arrays.
        header: this file's :func:`read_header`, if the caller already has it (saves re-reading the headers).

    Raises:
        EpisodeFileError: the file is unreadable (truncated, damaged data or CRC) or breaks the schema;
            the message names the file and the fix. It is also a ValueError.
    """
    path = Path(path)
    if header is None:
        header = read_header(path)
    wanted = set(SCHEMA) if fields_ is None else set(fields_)
    data: dict[str, Any] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            for name in SCHEMA:
                if name not in header.shapes:
                    data[name] = None  # an optional member the file does not hold
                elif name in wanted:
                    data[name] = npz[name]
                else:
                    data[name] = np.empty((0,))
    except _READ_ERRORS as exc:
        raise EpisodeFileError.of(
            path, f"unreadable episode file ({type(exc).__name__}: {exc})", header.meta.task
        ) from exc
    for name, value in data.items():
        if value is not None and name in wanted and (value.shape, value.dtype) != header.shapes[name]:
            raise EpisodeFileError.of(path, f"member {name!r} changed while it was read", header.meta.task)
    return Episode(meta=header.meta, **data)


def list_episodes(folder: str | Path) -> list[Path]:
    """Episode files of one task folder, in episode order."""
    return sorted(Path(folder).glob("episode_*.npz"))


def write_index(folder: str | Path, metas: list[EpisodeMeta]) -> None:
    """Write ``index.json``: one row per episode (file, length, return, seed, task, policy, flags)."""
    rows = [
        {
            "file": episode_filename(m.episode),
            "episode": m.episode,
            "task": m.task,
            "length": m.length,
            "return": m.episode_return,
            "seed": m.seed,
            "policy": m.policy,
            "terminated": m.terminated,
            "truncated": m.truncated,
        }
        for m in sorted(metas, key=lambda m: m.episode)
    ]
    write_json_atomic(Path(folder) / INDEX_FILE, {"schema_version": SCHEMA_VERSION, "episodes": rows})
