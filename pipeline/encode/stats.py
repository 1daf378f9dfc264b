"""Per-field statistics (count, mean, std, min, max) that training code can normalise with.

Accumulated batch by batch with Chan's parallel update (float64), so the result
does not depend on how the data were chunked beyond float rounding, and large
datasets need no second pass. Written to ``stats.json`` per split.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.dataset.schema import TEXT_ROWS


class RunningStats:
    """Column-wise count, mean, population std, min and max of (N, d) batches."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.m2 = np.zeros(dim, np.float64)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)

    def update(self, batch: np.ndarray) -> None:
        """Add rows of ``batch`` ((N, d) or (N,) when d == 1); non-finite values are not expected."""
        x = np.asarray(batch, np.float64).reshape(-1, self.dim)
        if x.shape[0] == 0:
            return
        mean = x.mean(axis=0)
        self.merge(x.shape[0], mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))

    def update_uint8(self, batch: np.ndarray) -> None:
        """Add rows of a uint8 (N, d) batch exactly and fast, through per-column value histograms."""
        x = np.asarray(batch).reshape(-1, self.dim)
        if x.shape[0] == 0:
            return
        values = np.arange(256, dtype=np.float64)
        hists = [np.bincount(x[:, c], minlength=256).astype(np.float64) for c in range(self.dim)]
        n = x.shape[0]
        mean = np.array([h @ values / n for h in hists])
        m2 = np.array([h @ (values - m) ** 2 for h, m in zip(hists, mean, strict=True)])
        mn = np.array([np.flatnonzero(h)[0] for h in hists], np.float64)
        mx = np.array([np.flatnonzero(h)[-1] for h in hists], np.float64)
        self.merge(n, mean, m2, mn, mx)

    def merge(self, n: int, mean: np.ndarray, m2: np.ndarray, mn: np.ndarray, mx: np.ndarray) -> None:
        """Chan et al.'s parallel update with a batch of ``n`` rows given by its moments."""
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        self.min = np.minimum(self.min, mn)
        self.max = np.maximum(self.max, mx)

    def to_json(self, scalar: bool = False) -> dict[str, Any]:
        """``{"count", "mean", "std", "min", "max"}``; lists of d values (plain floats when ``scalar``)."""
        if self.count == 0:
            empty: Any = None if scalar else [None] * self.dim
            return {"count": 0, "mean": empty, "std": empty, "min": empty, "max": empty}
        std = np.sqrt(np.maximum(self.m2 / self.count, 0.0))
        values = {"mean": self.mean, "std": std, "min": self.min, "max": self.max}
        out: dict[str, Any] = {"count": int(self.count)}
        for name, v in values.items():
            out[name] = float(v[0]) if scalar else [float(x) for x in v]
        return out


class SplitStats:
    """Every field's statistics over one split; fed one episode at a time."""

    def __init__(self) -> None:
        self.samples = 0
        self.episodes = 0
        self.annotated = 0
        self.failed = 0
        self.rgb = RunningStats(3)
        self.flow = RunningStats(2)
        self.flow_valid = RunningStats(1)
        self.clip_image: RunningStats | None = None
        self.clip_text: list[RunningStats] | None = None
        self.reward = RunningStats(1)
        self.discount = RunningStats(1)
        self.per_task: dict[str, dict[str, RunningStats]] = {}

    def add_episode(
        self,
        task: str,
        frames: np.ndarray,
        flow: np.ndarray,
        valid: np.ndarray,
        clip_image: np.ndarray,
        clip_text: np.ndarray,
        text_present: np.ndarray,
        statuses: list[str],
        actions: np.ndarray,
        rewards: np.ndarray,
        discounts: np.ndarray,
        qpos: np.ndarray,
        qvel: np.ndarray,
    ) -> None:
        """Add one episode, with arrays exactly as stored (float16 embeddings, flow in 1/64 px steps).

        Shapes: frames (T+1, H, W, 3); flow (T, 2, H, W); valid (T, H, W); clip_image (T+1, D);
        clip_text (T+1, R, D) with text_present (T+1, R) bool (R = len(TEXT_ROWS)) marking non-zero rows;
        statuses per frame.
        """
        self.samples += frames.shape[0]
        self.episodes += 1
        self.annotated += sum(s == "ok" for s in statuses)
        self.failed += sum(s == "failed" for s in statuses)
        self.rgb.update_uint8(frames.reshape(-1, 3))
        # flow statistics over valid pixels of frames that have a next frame
        channels = [flow[:, c][valid].astype(np.float64) for c in range(flow.shape[1])]
        if channels[0].size:
            means = np.array([c.mean() for c in channels])
            self.flow.merge(
                channels[0].size,
                means,
                np.array([((c - m) ** 2).sum() for c, m in zip(channels, means, strict=True)]),
                np.array([c.min() for c in channels]),
                np.array([c.max() for c in channels]),
            )
        # the last frame's all-False mask counts in the valid fraction, as it is stored
        n, k = valid.size + valid[0].size, int(valid.sum())
        p = k / n
        self.flow_valid.merge(
            n,
            np.array([p]),
            np.array([n * p * (1 - p)]),
            np.array([0.0 if k < n else 1.0]),
            np.array([1.0 if k else 0.0]),
        )
        if self.clip_image is None:
            self.clip_image = RunningStats(clip_image.shape[1])
            self.clip_text = [RunningStats(clip_image.shape[1]) for _ in range(clip_text.shape[1])]
        self.clip_image.update(clip_image)
        assert self.clip_text is not None
        for row, acc in enumerate(self.clip_text):
            acc.update(clip_text[:, row][text_present[:, row]])
        self.reward.update(rewards)
        self.discount.update(discounts)
        task_stats = self.per_task.setdefault(
            task,
            {
                "action": RunningStats(actions.shape[1]),
                "qpos": RunningStats(qpos.shape[1]),
                "qvel": RunningStats(qvel.shape[1]),
            },
        )
        task_stats["action"].update(actions)
        task_stats["qpos"].update(qpos)
        task_stats["qvel"].update(qvel)

    def to_json(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "episodes": self.episodes,
            "annotated_frames": self.annotated,
            "failed_annotations": self.failed,
            "fields": {
                "rgb.png": {"axis": "channel (R, G, B)", "unit": "pixel value 0..255", **self.rgb.to_json()},
                "flow.png": {
                    "axis": "channel (dx, dy)",
                    "unit": "pixels",
                    "over": "valid pixels",
                    **self.flow.to_json(),
                },
                "flow.png:valid": {
                    "axis": "-",
                    "unit": "fraction of pixels valid (mean)",
                    **self.flow_valid.to_json(scalar=True),
                },
                "clip.npy": {
                    "image": {
                        "axis": "embedding dim",
                        "unit": "unit-norm embedding",
                        **(self.clip_image.to_json() if self.clip_image else {}),
                    },
                    **{
                        name: {"axis": "embedding dim", "over": "non-zero rows", **acc.to_json()}
                        # an empty split never set clip_text: it reports no text rows
                        for name, acc in (zip(TEXT_ROWS, self.clip_text, strict=True) if self.clip_text else ())
                    },
                },
                "json.reward": {"over": "frames with has_action", **self.reward.to_json(scalar=True)},
                "json.discount": {"over": "frames with has_action", **self.discount.to_json(scalar=True)},
                "json.per_task": {
                    task: {
                        "action": {"axis": "action dim", "over": "frames with has_action", **acc["action"].to_json()},
                        "qpos": {"axis": "qpos dim", **acc["qpos"].to_json()},
                        "qvel": {"axis": "qvel dim", **acc["qvel"].to_json()},
                    }
                    for task, acc in sorted(self.per_task.items())
                },
            },
        }
