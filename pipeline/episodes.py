"""The episode file: what the collect stage writes and every later stage reads.

One ``.npz`` per episode (``data/episodes/<task>/episode_<i:06d>.npz``), written
atomically with deterministic bytes (:func:`pipeline.io.write_npz_atomic`).
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
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from pipeline.io import dumps_json, write_json_atomic, write_npz_atomic

SCHEMA_VERSION = 1
OPTIONAL_ARRAYS = ("depth", "segmentation")


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
        """Check shapes and dtypes against the schema; raise ValueError naming the bad member."""
        t = self.length
        n, h, w = self.frames.shape[0], self.frames.shape[1], self.frames.shape[2]
        expect: dict[str, tuple[tuple[int | None, ...], type]] = {
            "frames": ((t + 1, h, w, 3), np.uint8),
            "actions": ((t, None), np.float32),
            "rewards": ((t,), np.float32),
            "discounts": ((t,), np.float32),
            "terminated": ((t,), np.bool_),
            "truncated": ((t,), np.bool_),
            "qpos": ((t + 1, None), np.float64),
            "qvel": ((t + 1, None), np.float64),
            "body_pos": ((t + 1, None, 3), np.float64),
            "body_quat": ((t + 1, None, 4), np.float64),
            "camera_extrinsics": ((t + 1, 4, 4), np.float64),
            "camera_intrinsics": ((3, 3), np.float64),
            "geom_body": ((None,), np.int32),
            "depth": ((t + 1, h, w), np.float32),
            "segmentation": ((t + 1, h, w), np.int32),
        }
        if n != t + 1:
            raise ValueError(f"episode: frames has {n} entries, expected T+1 = {t + 1}")
        for name, (shape, dtype) in expect.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_ARRAYS:
                continue
            if value.dtype != dtype:
                raise ValueError(f"episode member {name!r}: dtype {value.dtype}, expected {np.dtype(dtype)}")
            if len(value.shape) != len(shape) or any(e is not None and e != s for e, s in zip(shape, value.shape)):
                raise ValueError(f"episode member {name!r}: shape {value.shape}, expected {shape} (None = any)")

    def to_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "meta"}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        arrays["meta"] = np.array(dumps_json(asdict(self.meta)))
        return arrays


def episode_filename(index: int) -> str:
    return f"episode_{index:06d}.npz"


def save_episode(path: str | Path, episode: Episode) -> None:
    """Validate and write ``episode`` atomically with deterministic bytes."""
    episode.validate()
    write_npz_atomic(path, episode.to_arrays())


def load_meta(path: str | Path) -> EpisodeMeta:
    """Read only the ``meta`` member of an episode file."""
    with np.load(path, allow_pickle=False) as npz:
        return EpisodeMeta(**json.loads(npz["meta"].item()))


def load_episode(path: str | Path, fields_: Iterable[str] | None = None) -> Episode:
    """Read an episode file; ``fields_`` limits which arrays are decompressed (others are empty arrays).

    Raises:
        ValueError: the file is not a schema-valid episode (names the file and the member).
    """
    path = Path(path)
    wanted = set(fields_) if fields_ is not None else None
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = set(npz.files)
            meta = EpisodeMeta(**json.loads(npz["meta"].item()))
            data: dict[str, Any] = {}
            for f in fields(Episode):
                if f.name == "meta":
                    continue
                if f.name not in names:
                    if f.name in OPTIONAL_ARRAYS:
                        data[f.name] = None
                        continue
                    raise ValueError(f"{path}: missing member {f.name!r} (not an episode file of schema {SCHEMA_VERSION}?)")
                data[f.name] = npz[f.name] if wanted is None or f.name in wanted else np.empty((0,))
    except (OSError, KeyError, EOFError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable episode file ({type(exc).__name__}: {exc}); rerun the collect stage") from exc
    return Episode(meta=meta, **data)


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
    write_json_atomic(Path(folder) / "index.json", {"schema_version": SCHEMA_VERSION, "episodes": rows})
