"""Camera pose and intrinsics of a MuJoCo render, in the conventions of the episode files.

Conventions (the same as :mod:`pipeline.sim.episodes`):

* **extrinsics** are ``world_from_camera``: a (4, 4) float64 matrix whose upper-left (3, 3)
  block holds the camera axes as columns in world coordinates and whose last column holds the
  camera centre (metres). The camera axes are OpenCV's: x right, y down, z forward (the optical
  axis). MuJoCo's own camera frame is x right, y up, looking along -z; the two differ by
  ``diag(1, -1, -1)``.
* **intrinsics** are the (3, 3) float64 pinhole matrix ``K`` in pixels, for the image as stored
  (row 0 at the top). Pixel ``(u, v)`` (column, row) covers ``[u - 0.5, u + 0.5] x [v - 0.5, v + 0.5]``,
  i.e. pixel centres sit at integer coordinates; the centre of a square image of size S is at
  ``((S - 1) / 2, (S - 1) / 2)``.
* A world point ``X`` projects to ``(u, v, 1) * z = K @ (camera_from_world @ X)[:3]``,
  where ``z`` is the z-depth stored in the depth images.
"""

from __future__ import annotations

import numpy as np

#: MuJoCo camera axes (x right, y up, z backward) -> OpenCV axes (x right, y down, z forward).
MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def extrinsics_from_mujoco(position: np.ndarray, xmat: np.ndarray) -> np.ndarray:
    """``world_from_camera`` (4, 4) float64 from a MuJoCo camera's ``cam_xpos`` (3,) and ``cam_xmat`` (9,) or (3, 3)."""
    pose = np.eye(4)
    pose[:3, :3] = np.asarray(xmat, dtype=np.float64).reshape(3, 3) @ MUJOCO_TO_OPENCV
    pose[:3, 3] = position
    return pose


def extrinsics_from_gl_camera(gl_camera) -> np.ndarray:
    """``world_from_camera`` (4, 4) float64 from a ``mujoco.MjvGLCamera`` (pos, forward, up; float32).

    Used for free (non-model) cameras; model cameras use :func:`extrinsics_from_mujoco`,
    which keeps float64 precision.
    """
    forward = np.asarray(gl_camera.forward, dtype=np.float64)
    up = np.asarray(gl_camera.up, dtype=np.float64)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = right, down, forward
    pose[:3, 3] = np.asarray(gl_camera.pos, dtype=np.float64)
    return pose


def intrinsics_from_gl_camera(gl_camera, width: int, height: int) -> np.ndarray:
    """Pinhole ``K`` (3, 3) float64 in pixels of a ``width`` x ``height`` render through ``gl_camera``.

    Mirrors the projection ``mjr_render`` builds from the camera's frustum: vertical extent
    ``[frustum_bottom, frustum_top]`` at distance ``frustum_near``, horizontal half-width
    ``frustum_width`` around ``frustum_center`` (0 means: from the viewport's aspect ratio).
    """
    near = float(gl_camera.frustum_near)
    top, bottom = float(gl_camera.frustum_top), float(gl_camera.frustum_bottom)
    half_width = float(gl_camera.frustum_width) or 0.5 * width / height * (top - bottom)
    center = float(gl_camera.frustum_center)
    if gl_camera.orthographic:
        raise ValueError("orthographic cameras have no pinhole intrinsics; use a perspective camera")
    fx = width * near / (2.0 * half_width)
    fy = height * near / (top - bottom)
    cx = (width - 1) / 2.0 - width * center / (2.0 * half_width)
    cy = (height - 1) / 2.0 + height * (top + bottom) / (2.0 * (top - bottom))
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def project(points_world: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (..., 3) in metres; returns pixel coordinates (..., 2) as (u, v) and z-depth (...,)."""
    camera_from_world = np.linalg.inv(extrinsics)
    points = np.asarray(points_world, dtype=np.float64)
    cam = points @ camera_from_world[:3, :3].T + camera_from_world[:3, 3]
    z = cam[..., 2]
    uvw = cam @ intrinsics.T
    return uvw[..., :2] / z[..., None], z


def unproject(
    depth: np.ndarray, extrinsics: np.ndarray, intrinsics: np.ndarray, pixels: np.ndarray | None = None
) -> np.ndarray:
    """World points (metres) seen at ``pixels`` (N, 2) as (u, v) (default: every pixel) of a z-depth image (H, W).

    Returns (N, 3), or (H, W, 3) when ``pixels`` is None.
    """
    if pixels is None:
        v, u = np.mgrid[0 : depth.shape[0], 0 : depth.shape[1]]
        uv = np.stack([u, v], axis=-1).reshape(-1, 2)
    else:
        uv = np.asarray(pixels)
    z = depth[uv[:, 1].astype(int), uv[:, 0].astype(int)].astype(np.float64)
    homogeneous = np.concatenate([uv.astype(np.float64), np.ones((len(uv), 1))], axis=1)
    cam = (homogeneous @ np.linalg.inv(intrinsics).T) * z[:, None]
    world = cam @ extrinsics[:3, :3].T + extrinsics[:3, 3]
    return world.reshape(*depth.shape, 3) if pixels is None else world
