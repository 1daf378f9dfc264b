"""What the finetune stage writes for people and DVC: metrics JSON, learning-curve plots, evaluation video."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.io import atomic_path, write_bytes_atomic, write_json_atomic


def summarise(returns: Sequence[float]) -> dict[str, float]:
    """Mean, std (population), min and max of episode returns."""
    r = np.asarray(returns, dtype=np.float64)
    return {"return_mean": float(r.mean()), "return_std": float(r.std()), "return_min": float(r.min()), "return_max": float(r.max())}


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    write_json_atomic(path, metrics)


def _csv_bytes(rows: list[dict[str, Any]], fields: list[str]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{row[k]:.6g}" if isinstance(row[k], float) else row[k]) for k in fields})
    return text.getvalue().encode()


def write_plots(folder: str | Path, evals: list[dict[str, Any]], episodes: list[dict[str, Any]], title: str) -> None:
    """``eval.csv`` (frames, return_std, return_min, return_max, return_mean), ``train.csv``
    (frames, episode_return) and ``learning_curve.png`` into ``folder``, atomically.

    The plotted quantity is each CSV's last column: DVC plots it against ``frames`` by default."""
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        (tmp / "eval.csv").write_bytes(_csv_bytes(evals, ["frames", "return_std", "return_min", "return_max", "return_mean"]))
        (tmp / "train.csv").write_bytes(_csv_bytes(episodes, ["frames", "episode_return"]))
        (tmp / "learning_curve.png").write_bytes(_curve_png(evals, episodes, title))


def _curve_png(evals: list[dict[str, Any]], episodes: list[dict[str, Any]], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if episodes:
        ax.plot([e["frames"] for e in episodes], [e["episode_return"] for e in episodes], ".", color="0.6", label="training episodes")
    x = np.array([e["frames"] for e in evals], dtype=float)
    mean = np.array([e["return_mean"] for e in evals])
    std = np.array([e["return_std"] for e in evals])
    ax.plot(x, mean, "o-", color="C0", label="evaluation (mean)")
    ax.fill_between(x, mean - std, mean + std, color="C0", alpha=0.2, label="evaluation (+- std)")
    ax.set_xlabel("environment frames (after action repeat)")
    ax.set_ylabel("episode return")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """An animated GIF of (H, W, 3) uint8 frames (deterministic bytes), atomically."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=max(20, int(round(1000 / fps))), loop=0)
    write_bytes_atomic(path, buffer.getvalue())
