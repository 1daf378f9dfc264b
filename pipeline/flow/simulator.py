"""Exact optical flow of a MuJoCo episode from its recorded depth, segmentation and poses.

Every MuJoCo geom is rigid and fixed to one body, so the 3D point seen at a
pixel of frame ``t`` moves with that body. For each pixel with a geom:

1. back-project with the z-depth: ``X_cam_t = depth * K^-1 [u, v, 1]``;
2. carry it with its body: ``X_cam_t1 = E_t1^-1 B_t1 B_t^-1 E_t X_cam_t``
   (``E`` = world_from_camera, ``B`` = world_from_body, 4x4);
3. project with ``K``: ``(u', v')``; the flow is ``(u' - u, v' - v)``.

The pixel is valid when it has a geom (segmentation >= 0) with a finite
positive depth, the moved point is in front of the camera and inside frame
``t + 1``, and it is not occluded there: frame ``t + 1``'s depth at one of the
four pixels around ``(u', v')`` agrees with the moved point's depth within
``occlusion_tolerance`` (relative). Invalid pixels have flow 0.

Background pixels (segmentation -1: no geom, e.g. empty sky) have no depth and
no rigid motion, so they are invalid. In dm_control the floor is a geom, so
most pixels are valid.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from pipeline.common.errors import UserError
from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import FlowBackend, FlowResult, pixel_grid
from pipeline.sim.episodes import Episode, EpisodeHeader

#: Episode members the simulator flow reads.
SIMULATOR_FIELDS = (
    "depth",
    "segmentation",
    "geom_body",
    "body_pos",
    "body_quat",
    "camera_extrinsics",
    "camera_intrinsics",
)


class MissingSimulatorDataError(UserError, ValueError):
    """The episode was collected without depth or segmentation."""


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from unit quaternions (..., 4) in (w, x, y, z) order."""
    q = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def body_transforms(body_pos: np.ndarray, body_quat: np.ndarray) -> np.ndarray:
    """world_from_body (..., 4, 4) float64 from positions (..., 3) in metres and quaternions (..., 4) wxyz."""
    out = np.zeros((*body_pos.shape[:-1], 4, 4))
    out[..., :3, :3] = quat_to_matrix(np.asarray(body_quat, np.float64))
    out[..., :3, 3] = body_pos
    out[..., 3, 3] = 1.0
    return out


def rigid_inverse(transform: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 transforms (..., 4, 4)."""
    rot_t = np.swapaxes(transform[..., :3, :3], -1, -2)
    out = np.zeros_like(transform)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ transform[..., :3, 3, None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def simulator_flow(
    depth: np.ndarray,
    segmentation: np.ndarray,
    geom_body: np.ndarray,
    body_pos: np.ndarray,
    body_quat: np.ndarray,
    camera_extrinsics: np.ndarray,
    camera_intrinsics: np.ndarray,
    occlusion_tolerance: float = 0.03,
    pairs: np.ndarray | None = None,
) -> FlowResult:
    """Exact forward flow for every consecutive frame pair, or for the pairs ``pairs`` (see the module docstring).

    Args:
        depth: (T+1, H, W) float32 z-depth in metres.
        segmentation: (T+1, H, W) int32 geom id, -1 background.
        geom_body: (ngeom,) int32 body of each geom.
        body_pos, body_quat: (T+1, nbody, 3) metres and (T+1, nbody, 4) wxyz, world frame.
        camera_extrinsics: (T+1, 4, 4) world_from_camera, OpenCV axes.
        camera_intrinsics: (3, 3) K in pixels, pixel centres at integer coordinates.
        occlusion_tolerance: a moved point is visible in frame t+1 when that frame's depth
            near its target is within this fraction of the point's depth.
        pairs: (P,) int indices t in [0, T) of the pairs t -> t+1 to compute, in the order wanted (None: all T).

    Returns:
        :class:`FlowResult`: flow (T, 2, H, W) float32 pixels, valid (T, H, W) bool (P rows with ``pairs``).
    """
    n, h, w = depth.shape
    if segmentation.shape != depth.shape:
        raise ValueError(f"segmentation {segmentation.shape} and depth {depth.shape} differ in shape")
    world_from_body = body_transforms(body_pos, body_quat)  # (T+1, nbody, 4, 4)
    body_from_world = rigid_inverse(world_from_body)
    cam_from_world = rigid_inverse(np.asarray(camera_extrinsics, np.float64))
    k = np.asarray(camera_intrinsics, np.float64)
    u, v = pixel_grid(h, w)
    rays = np.stack([u.ravel(), v.ravel(), np.ones(h * w, np.float32)], -1) @ np.linalg.inv(k).T  # (HW, 3)
    geom_body = np.asarray(geom_body, np.int64)

    pairs = np.arange(max(n - 1, 0)) if pairs is None else np.asarray(pairs, np.int64)
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n - 1):
        raise ValueError(f"pairs {pairs.min()}..{pairs.max()} outside the episode's {n - 1} pairs")
    flow = np.zeros((len(pairs), 2, h, w), np.float32)
    valid = np.zeros((len(pairs), h, w), bool)
    for row, t in enumerate(pairs):
        # camera t -> camera t+1 through each body: (nbody, 4, 4)
        moves = cam_from_world[t + 1] @ world_from_body[t + 1] @ body_from_world[t] @ camera_extrinsics[t]
        seg = segmentation[t].ravel()
        z = depth[t].ravel().astype(np.float64)
        idx = np.flatnonzero((seg >= 0) & np.isfinite(z) & (z > 0))
        if idx.size == 0:
            continue
        move = moves[geom_body[seg[idx]]]  # (P, 4, 4)
        point = rays[idx] * z[idx, None]
        moved = np.einsum("pij,pj->pi", move[:, :3, :3], point) + move[:, :3, 3]
        proj = moved @ k.T
        zn = moved[:, 2]
        in_front = zn > 1e-6
        safe_z = np.where(in_front, zn, 1.0)
        tu, tv = proj[:, 0] / safe_z, proj[:, 1] / safe_z
        ok = in_front & (tu >= -0.5) & (tu <= w - 0.5) & (tv >= -0.5) & (tv <= h - 0.5)
        ok &= _visible(depth[t + 1], tu, tv, zn, ok, occlusion_tolerance)
        flow[row, 0].flat[idx] = np.where(ok, tu - u.flat[idx], 0.0)
        flow[row, 1].flat[idx] = np.where(ok, tv - v.flat[idx], 0.0)
        valid[row].flat[idx] = ok
    return FlowResult(flow, valid)


def _visible(
    next_depth: np.ndarray, tu: np.ndarray, tv: np.ndarray, zn: np.ndarray, ok: np.ndarray, tolerance: float
) -> np.ndarray:
    """True where one of the 4 pixels around (tu, tv) in ``next_depth`` matches depth ``zn`` within ``tolerance``."""
    h, w = next_depth.shape
    u0 = np.floor(np.where(ok, tu, 0.0)).astype(np.int64)
    v0 = np.floor(np.where(ok, tv, 0.0)).astype(np.int64)
    limit = tolerance * np.abs(zn)
    seen = np.zeros(tu.shape, bool)
    # the 2 columns and 2 rows around the target, clamped to the image
    # (np.minimum/np.maximum: np.clip's Python wrapper costs more than the work here)
    columns = [np.minimum(np.maximum(u0 + du, 0), w - 1) for du in (0, 1)]
    rows = [np.minimum(np.maximum(v0 + dv, 0), h - 1) for dv in (0, 1)]
    for uu in columns:
        for vv in rows:
            seen |= np.abs(next_depth[vv, uu] - zn) <= limit
    return seen


class SimulatorBackend(FlowBackend):
    """Exact flow from the episode's depth, segmentation, body poses and camera poses (no weights)."""

    name: ClassVar[str] = "simulator"
    fields: ClassVar[tuple[str, ...]] = SIMULATOR_FIELDS

    def __init__(self, occlusion_tolerance: float = 0.03) -> None:
        self.occlusion_tolerance = occlusion_tolerance

    @classmethod
    def from_params(cls, params: FlowParams, weights: WeightsParams) -> SimulatorBackend:
        return cls(params.occlusion_tolerance)

    @classmethod
    def check_episode(cls, header: EpisodeHeader) -> None:
        missing = [name for name in ("depth", "segmentation") if not header.has(name)]
        path = header.path
        if missing:
            keys = " and ".join(f"collect.{name}: true" for name in missing)
            raise MissingSimulatorDataError(
                f"{path}: the episode has no {' and '.join(missing)}, which flow.backend 'simulator' needs.\n"
                f"  Fix: set {keys} in params.yaml and rerun the collect stage, "
                f"or choose a backend that reads frames only (flow.backend: dis or ptlflow)."
            )

    def episode_flow(self, episode: Episode, pairs: np.ndarray | None = None) -> FlowResult:
        """The exact flow of every pair of ``episode``, or of the pairs ``pairs`` (see :func:`simulator_flow`)."""
        return simulator_flow(
            episode.depth,
            episode.segmentation,
            episode.geom_body,
            episode.body_pos,
            episode.body_quat,
            episode.camera_extrinsics,
            episode.camera_intrinsics,
            self.occlusion_tolerance,
            pairs,
        )

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "occlusion_tolerance": self.occlusion_tolerance}
