"""What the simulator knows about a recorded frame: which bodies are in view, where, how fast.

Built from the episode files (:mod:`pipeline.sim.episodes`) alone: the segmentation
(geom id per pixel) mapped to bodies through ``geom_body``, ``body_pos`` /
``body_quat`` and their finite differences (linear and angular velocities), and the
camera pose and intrinsics. The simulator annotator describes it
(:mod:`pipeline.annotate.describe` words it); the accuracy metric checks VLM answers
against it.

An *entity* is something an annotation can name: every body but the world body
(MuJoCo body 0), and every named geom of the world body (static scenery such as
``floor`` or a cart-pole's ``rail1``). Unnamed geoms and bodies carry the
collect stage's placeholder names (``geom12``, ``body3``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pipeline.sim.episodes import Episode

WORLD_BODY = 0
_PLACEHOLDER_RE = re.compile(r"^(geom|body)\d+$")


def is_placeholder(name: str) -> bool:
    """True for the collect stage's stand-in names of unnamed geoms and bodies (``geom12``) or empty ones."""
    return not name or bool(_PLACEHOLDER_RE.match(name))


@dataclass(frozen=True)
class Entity:
    """A nameable thing of the model.

    Attributes:
        kind: ``body`` (a body of the agent or a moving object) or ``scenery`` (a named world geom).
        index: body id (kind ``body``) or geom id (kind ``scenery``).
        name: the body or geom name.
        aliases: names used for matching: the name, then the names of the body's named geoms.
    """

    kind: Literal["body", "scenery"]
    index: int
    name: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class Visible:
    """An entity in view: ``pixels`` of it in the segmentation and its box ``(x0, y0, x1, y1)``,
    integer pixel edges (columns ``x0 .. x1 - 1``, rows ``y0 .. y1 - 1``)."""

    entity: Entity
    pixels: int
    box: tuple[int, int, int, int]


def model_entities(body_names: list[str], geom_names: list[str], geom_body: np.ndarray) -> list[Entity]:
    """Every entity of the model: non-world bodies (by id), then named world geoms (by id)."""
    geoms_of: dict[int, list[str]] = {}
    for g, b in enumerate(np.asarray(geom_body).tolist()):
        if g < len(geom_names) and not is_placeholder(geom_names[g]):
            geoms_of.setdefault(int(b), []).append(geom_names[g])
    entities = []
    for b, name in enumerate(body_names):
        if b == WORLD_BODY:
            continue
        aliases = tuple(dict.fromkeys([name, *geoms_of.get(b, [])]))
        entities.append(Entity("body", b, name, aliases))
    for g, b in enumerate(np.asarray(geom_body).tolist()):
        if b == WORLD_BODY and g < len(geom_names) and not is_placeholder(geom_names[g]):
            entities.append(Entity("scenery", g, geom_names[g], (geom_names[g],)))
    return entities


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def visible_entities(
    segmentation: np.ndarray, geom_body: np.ndarray, entities: list[Entity], min_pixels: int
) -> list[Visible]:
    """The entities with at least ``min_pixels`` pixels in ``segmentation`` (H, W) int32 geom ids (-1 background)."""
    seg = np.asarray(segmentation)
    geom_body = np.asarray(geom_body)
    valid = (seg >= 0) & (seg < len(geom_body))
    geom_ids = np.where(valid, seg, 0)
    body_map = np.where(valid, geom_body[geom_ids], -1)
    body_counts = np.bincount(body_map[valid].ravel(), minlength=int(geom_body.max(initial=0)) + 1)
    geom_counts = np.bincount(seg[valid].ravel(), minlength=len(geom_body))
    out = []
    for entity in entities:
        if entity.kind == "body":
            count = int(body_counts[entity.index]) if entity.index < len(body_counts) else 0
            if count >= min_pixels:
                out.append(Visible(entity, count, _box(body_map == entity.index)))
        else:
            count = int(geom_counts[entity.index]) if entity.index < len(geom_counts) else 0
            if count >= min_pixels:
                out.append(Visible(entity, count, _box(valid & (seg == entity.index))))
    return out


def body_velocities(body_pos: np.ndarray, dt: float) -> np.ndarray:
    """World linear velocities (T+1, nbody, 3) float64 in m/s of body frames from positions (T+1, nbody, 3) in m.

    Central differences inside the episode, one-sided at its ends; zeros for a one-frame episode.
    """
    if body_pos.shape[0] < 2:
        return np.zeros_like(body_pos)
    return np.gradient(body_pos, dt, axis=0)


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` of (..., 4) float64 quaternions (w, x, y, z), broadcast over leading axes."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )


def _rotation_vector(q: np.ndarray) -> np.ndarray:
    """(..., 3) axis * angle (rad, in [0, pi]) of (..., 4) unit quaternions (w, x, y, z); the shorter way round."""
    q = np.where(q[..., :1] < 0, -q, q)
    vec = q[..., 1:]
    sin_half = np.linalg.norm(vec, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    return np.where(sin_half > 1e-12, vec / np.maximum(sin_half, 1e-300) * angle, 2.0 * vec)


def body_angular_velocities(body_quat: np.ndarray, dt: float) -> np.ndarray:
    """World angular velocities (T+1, nbody, 3) float64 in rad/s from body orientations (T+1, nbody, 4) (w, x, y, z).

    The rotation between the neighbouring frames (``q[t+1] * conj(q[t-1])``, a world-frame
    rotation) as a rotation vector over their time apart: central inside the episode,
    one-sided at its ends, zeros for a one-frame episode. Exact for a constant angular
    velocity of less than half a turn per ``2 dt``.
    """
    q = np.asarray(body_quat, np.float64)
    if q.shape[0] < 2:
        return np.zeros(q.shape[:-1] + (3,))
    conj = q * np.array([1.0, -1.0, -1.0, -1.0])
    out = np.empty(q.shape[:-1] + (3,))
    out[1:-1] = _rotation_vector(quat_multiply(q[2:], conj[:-2])) / (2.0 * dt)
    out[0] = _rotation_vector(quat_multiply(q[1], conj[0])) / dt
    out[-1] = _rotation_vector(quat_multiply(q[-1], conj[-2])) / dt
    return out


@dataclass(frozen=True)
class SceneTruth:
    """The simulator's view of frame ``step`` of an episode.

    Attributes:
        task: task name; ``step``: frame index.
        entities: every entity of the model; ``visible``: those in view, in entity order.
        body_pos: (nbody, 3) float64 world positions of the body frames (m); ``body_vel``: (nbody, 3)
            float64 their velocities (m/s, finite differences over the episode).
        body_quat: (nbody, 4) float64 world orientations (w, x, y, z); ``body_ang_vel``: (nbody, 3)
            float64 world angular velocities (rad/s, finite differences of ``body_quat``).
        world_from_camera: (4, 4) float64, OpenCV camera axes (x right, y down, z forward).
        camera_intrinsics: (3, 3) float64 K in pixels (pixel (u, v) centre at integer (u, v)).
        qpos, qvel: (nq,), (nv,) float64 MuJoCo state (for contacts).
        geom_body: (ngeom,) int32; ``image_size``: (H, W).
        suite: the simulator suite that recorded it (``meta.suite``: ``dm_control`` or ``gymnasium``).
    """

    task: str
    step: int
    entities: tuple[Entity, ...]
    visible: tuple[Visible, ...]
    body_pos: np.ndarray
    body_vel: np.ndarray
    body_quat: np.ndarray
    body_ang_vel: np.ndarray
    world_from_camera: np.ndarray
    camera_intrinsics: np.ndarray
    qpos: np.ndarray
    qvel: np.ndarray
    geom_body: np.ndarray
    image_size: tuple[int, int]
    suite: str = ""


#: Episode members :func:`scene_truths` reads.
TRUTH_FIELDS = (
    "segmentation",
    "geom_body",
    "body_pos",
    "body_quat",
    "camera_extrinsics",
    "camera_intrinsics",
    "qpos",
    "qvel",
)


def scene_truths(episode: Episode, steps: list[int], min_pixels: int) -> dict[int, SceneTruth]:
    """The :class:`SceneTruth` of each frame in ``steps``; the episode must hold :data:`TRUTH_FIELDS`."""
    if episode.segmentation is None:
        raise ValueError("the episode has no segmentation")
    meta = episode.meta
    entities = tuple(model_entities(meta.body_names, meta.geom_names, episode.geom_body))
    velocities = body_velocities(episode.body_pos, meta.control_timestep)
    spins = body_angular_velocities(episode.body_quat, meta.control_timestep)
    height, width = episode.segmentation.shape[1:3]
    out = {}
    for t in steps:
        out[t] = SceneTruth(
            task=meta.task,
            step=t,
            entities=entities,
            visible=tuple(visible_entities(episode.segmentation[t], episode.geom_body, list(entities), min_pixels)),
            body_pos=episode.body_pos[t].copy(),
            body_vel=velocities[t].copy(),
            body_quat=episode.body_quat[t].copy(),
            body_ang_vel=spins[t].copy(),
            world_from_camera=episode.camera_extrinsics[t].copy(),
            camera_intrinsics=episode.camera_intrinsics.copy(),
            qpos=episode.qpos[t].copy(),
            qvel=episode.qvel[t].copy(),
            geom_body=episode.geom_body,
            image_size=(int(height), int(width)),
            suite=meta.suite,
        )
    return out


@dataclass(frozen=True)
class PhysicsState:
    """What the restored physics adds to a frame's truth.

    Attributes:
        contacts: geom id pairs (g1, g2), g1 < g2, sorted, of MuJoCo's contact list.
        com_pos: (nbody, 3) float64 body centres of mass in the world (m).
        lin_vel: (nbody, 3) float64 centre-of-mass linear velocities in the world (m/s).
        ang_vel: (nbody, 3) float64 angular velocities in the world (rad/s).
    """

    contacts: list[tuple[int, int]]
    com_pos: np.ndarray
    lin_vel: np.ndarray
    ang_vel: np.ndarray
