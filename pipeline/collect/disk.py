"""Up-front disk-space check of a collect run: estimate the bytes its episode files take, refuse when
the disk cannot hold them.

Episode files are zip-deflated ``.npz`` archives (:mod:`pipeline.sim.episodes`), so their size depends on
the content. The estimate uses per-array compression ratios a few times worse than any measured on
the default tasks (cartpole-swingup and cheetah-run at 84 px, fast render, 2026-11-30): RGB frames
compressed to 6.4-11.5% of their raw bytes, depth to 2.6-5.2%, segmentation to 0.9-1.4%, and the
float64 simulator state hardly at all (92-96%). A textured scene (gymnasium's checkered floor) or a
faithful render compresses worse than these, hence the margins; the estimate errs on the large side.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.collect.errors import DiskSpaceError

#: Assumed compressed / raw bytes per array kind (measured maxima above, times about 3 to 7).
COMPRESSION = {"rgb": 0.35, "depth": 0.25, "segmentation": 0.1, "state": 1.0}
#: Index, preview GIF and slack, bytes.
FIXED_OVERHEAD = 8 * 2**20


@dataclass(frozen=True)
class FrameLayout:
    """What one recorded frame holds, to size it.

    Attributes:
        image_size: H = W, pixels.
        depth, segmentation: whether the float32 depth / int32 segmentation images are recorded.
        nq, nv, nbody, action_dim: MuJoCo model sizes (qpos, qvel, body poses) and the action size.
    """

    image_size: int
    depth: bool
    segmentation: bool
    nq: int
    nv: int
    nbody: int
    action_dim: int

    def bytes_per_frame(self) -> float:
        """Estimated bytes one frame takes in an episode file (compressed, conservatively)."""
        pixels = self.image_size * self.image_size
        size = 3 * pixels * COMPRESSION["rgb"]
        if self.depth:
            size += 4 * pixels * COMPRESSION["depth"]
        if self.segmentation:
            size += 4 * pixels * COMPRESSION["segmentation"]
        # qpos, qvel, body_pos (3), body_quat (4), camera extrinsics (16) as float64; action, reward,
        # discount as float32; the two flags.
        state = 8 * (self.nq + self.nv + 7 * self.nbody + 16) + 4 * (self.action_dim + 2) + 2
        return size + state * COMPRESSION["state"]


def estimate_run_bytes(layout: FrameLayout, episodes: int, frames_per_episode: int, workers: int = 1) -> int:
    """Bytes a collect run needs on disk: its episode files, plus one episode per worker for the
    temporary file each writes before renaming it into place, plus :data:`FIXED_OVERHEAD`."""
    per_episode = layout.bytes_per_frame() * frames_per_episode
    return int(per_episode * (episodes + min(workers, episodes)) + FIXED_OVERHEAD)


def free_bytes(path: str | Path) -> int:
    """Free bytes (for an unprivileged user) on the file system that holds ``path`` or, when it
    does not exist yet, its nearest existing parent folder."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_disk_space(
    out_dir: str | Path, layout: FrameLayout, *, task: str, episodes: int, frames_per_episode: int, workers: int = 1
) -> int:
    """Refuse a collect run the disk under ``out_dir`` cannot hold; return the estimate (bytes).

    Raises:
        DiskSpaceError: the estimate exceeds the free space; the message names both, the folder
            and the fixes.
    """
    if episodes <= 0:
        return 0
    needed = estimate_run_bytes(layout, episodes, frames_per_episode, workers)
    free = free_bytes(out_dir)
    if needed > free:
        raise DiskSpaceError(
            f"collect {task}: {episodes} episode(s) x {frames_per_episode} frames need about {_human(needed)} "
            f"(estimated at {_human(layout.bytes_per_frame())} per frame), "
            f"but only {_human(free)} are free on the disk of {out_dir}.\n"
            "  Fix: free disk space or choose an --out folder on a larger disk, "
            "or record less: lower collect.episodes_per_task, "
            "collect.episode_steps or collect.image_size, or set collect.depth / collect.segmentation to false."
        )
    return needed
