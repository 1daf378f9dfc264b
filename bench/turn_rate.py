"""Where cartpole's turn rate (the pole's angular velocity) can be read from: docs/RESULTS.md 1l.

An analysis, not a benchmark of speed. On a dataset built by the pipeline (``semore encode`` output
with ``with_state`` physics in its json), for the pretrained models given (pretrain outputs: each
folder's ``model/`` checkpoint, heads included), it prints:

* **decoder**: the flow decoder's end-point error and cosine to the exact flow on the validation
  episodes, per target length bin, beside the error of predicting zero;
* **readouts**: R^2 of the turn rate and the cart velocity by the stage's probe
  (:func:`pipeline.common.probe.out_of_fold`, episode-grouped folds over every episode, ridge and the fixed
  MLP) from the exact flow, the decoded flow and the motion map, pooled;
* **supervised ceiling** (``--cnn``): a small CNN trained on the turn rate itself (train episodes)
  and scored on the validation episodes, from the exact flow and from the RGB stack, 3 seeds;
* **text targets**: the same probe from the stored CLIP targets (centred on their mean, as
  pretraining uses them), annotated frames only.

    .venv/bin/python bench/turn_rate.py --dataset <dataset> [--models <pretrain out> ...] [--cnn]

For 1l: the dataset is the default params with ``collect.tasks: [cartpole-swingup]`` and
``collect.episodes_per_task: 32`` (collect, flow, annotate, encode); the models are 1j's depth-4
bases (the default params at seeds 0, 1, 2 with ``pretrain.threads: 1``). About 10 minutes on 2
cores for 3 models, plus 6 with ``--cnn``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from pipeline.common import probe as P  # noqa: E402
from pipeline.dataset import open_dataset  # noqa: E402
from pipeline.dataset.schema import TEXT_ROWS  # noqa: E402

TASK = "cartpole-swingup"
#: Target flow length bins (pixels) of the decoder table; the first edge is the flow loss's "moving" threshold.
BINS = (0.0625, 1, 2, 4, 8, 16, np.inf)
ALPHAS = [0.1, 1, 10, 100, 1000, 10000]
NAMES = ("cart x", "cos pole", "sin pole", "cart vel", "turn rate")


def load_rows(folder: Path, split: str) -> list[dict]:
    """Stacked cartpole samples of ``split`` that have a flow target (frame t-1 exists)."""
    return [
        s
        for s in open_dataset(folder).frames(split, frame_stack=3, with_state=True)
        if s["task"] == TASK and s["flow_valid"].any()
    ]


def state(rows: list[dict]) -> np.ndarray:
    """(N, 5) cart x, cos and sin of the pole angle, cart velocity, pole angular velocity."""
    q, v = np.stack([r["qpos"] for r in rows]), np.stack([r["qvel"] for r in rows])
    return np.column_stack([q[:, 0], np.cos(q[:, 1]), np.sin(q[:, 1]), v[:, 0], v[:, 1]])


def r2_per_dim(
    features: np.ndarray, target: np.ndarray, episode: np.ndarray, model: str, kinds: list[str]
) -> np.ndarray:
    """Out-of-fold R^2 of each target column (the ridge's penalty is chosen for all columns together)."""
    oof = P.out_of_fold(features, target, episode, kinds, alphas=ALPHAS, folds=5, model=model)
    return 1 - ((oof.target - oof.prediction) ** 2).sum(0) / ((oof.target - oof.target.mean(0)) ** 2).sum(0)


def pool(x: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    return F.adaptive_avg_pool2d(torch.as_tensor(x, dtype=torch.float32), size).flatten(1).numpy()


def load_pretrain_model(folder: Path) -> nn.Module:
    """The ``model/`` checkpoint of a pretrain output. Checkpoints from before the ``clip_motion``
    head (RESULTS 1l) lack only that head's weights; they load with it left at random."""
    from safetensors.torch import load_file

    from models.checkpoint import WEIGHTS_FILE, build_module, read_checkpoint_config

    record = read_checkpoint_config(folder / "model")
    module = build_module(record["class"], record["config"])
    missing, unexpected = module.load_state_dict(load_file(str(folder / "model" / WEIGHTS_FILE)), strict=False)
    if unexpected or any(not k.startswith("clip_motion.") for k in missing):
        raise SystemExit(f"{folder}/model: weights do not fit (missing {missing}, unexpected {unexpected})")
    return module.eval()


def decoder_table(pred: np.ndarray, target: np.ndarray, valid: np.ndarray) -> str:
    length, pred_len = np.linalg.norm(target, axis=1), np.linalg.norm(pred, axis=1)
    err = np.linalg.norm(pred - target, axis=1)
    moving = valid & (length > BINS[0])
    cells = []
    for lo, hi in itertools.pairwise(BINS):
        m = valid & (length >= lo) & (length < hi)
        if m.any():
            cos = ((pred * target).sum(1)[m] / (pred_len[m] * length[m] + 1e-9)).mean()
            cells.append(
                f"[{lo:g}, {hi:g}) px: {m.sum() / moving.sum():.0%} of moving, "
                f"EPE {err[m].mean():.2f} (zero {length[m].mean():.2f}), cos {cos:.2f}"
            )
    return "\n    ".join(cells)


def supervised_ceiling(train: list[dict], held: list[dict], seeds: int = 3, steps: int = 3000) -> None:
    """A small CNN trained on (cart velocity, turn rate) from the exact flow and from the RGB stack."""

    def tensors(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        flow = torch.as_tensor(np.stack([r["flow"] * r["flow_valid"] for r in rows]))
        rgb = torch.as_tensor(np.stack([r["obs"] for r in rows])).float() / 255
        return flow, rgb, torch.as_tensor(state(rows)[:, 3:], dtype=torch.float32)

    tr, va = tensors(train), tensors(held)
    mu, sd = tr[2].mean(0), tr[2].std(0)
    for name, i in (("exact flow", 0), ("RGB stack", 1)):
        for seed in range(seeds):
            torch.manual_seed(seed)
            net = nn.Sequential(
                nn.Conv2d(tr[i].shape[1], 32, 3, 2),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, 2),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, 2),
                nn.ReLU(),
                nn.Conv2d(32, 32, 3, 1),
                nn.ReLU(),
                nn.Flatten(),
                nn.LazyLinear(256),
                nn.ReLU(),
                nn.Linear(256, 2),
            )
            net(tr[i][:2])
            opt = torch.optim.Adam(net.parameters(), 1e-3)
            g = torch.Generator().manual_seed(seed)
            for _ in range(steps):
                b = torch.randint(0, len(tr[2]), (64,), generator=g)
                loss = ((net(tr[i][b]) - (tr[2][b] - mu) / sd) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                p = torch.cat([net(va[i][k : k + 256]) for k in range(0, len(va[2]), 256)]) * sd + mu
            r2 = 1 - ((va[2] - p) ** 2).sum(0) / ((va[2] - va[2].mean(0)) ** 2).sum(0)
            print(
                f"  CNN on {name}, seed {seed}: validation R^2 cart vel {r2[0]:.2f}, turn rate {r2[1]:.2f}", flush=True
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", type=Path, required=True)
    ap.add_argument("--models", type=Path, nargs="*", default=[], help="pretrain output folders (each with model/)")
    ap.add_argument("--cnn", action="store_true", help="also train the supervised CNN ceiling")
    args = ap.parse_args()
    torch.set_num_threads(2)

    train, held = load_rows(args.dataset, "train"), load_rows(args.dataset, "validation")
    rows = train + held
    episode = np.array([r["episode"] for r in rows])
    y = state(rows)[:, 3:]
    target = np.stack([r["flow"] for r in rows])
    is_held = np.array([False] * len(train) + [True] * len(held))
    print(f"{len(rows)} samples of {len(set(episode))} episodes ({len(set(episode[is_held]))} validation)")

    def readout(name: str, x: np.ndarray) -> None:
        cells = [
            f"{m}: cart vel {r[0]:.2f}, turn rate {r[1]:.2f}"
            for m in ("ridge", "mlp")
            for r in [r2_per_dim(x, y, episode, m, ["velocity"] * 2)]
        ]
        print(f"  {name}: " + " | ".join(cells), flush=True)

    print("exact flow")
    readout("pooled 7x7", pool(target, 7))
    obs = torch.as_tensor(np.stack([r["obs"] for r in rows]))
    valid = np.stack([r["flow_valid"] for r in rows])
    for folder in args.models:
        model = load_pretrain_model(folder)
        with torch.no_grad():
            pred, maps = [], []
            for k in range(0, len(obs), 64):
                paths = model.backbone.forward_paths(obs[k : k + 64])
                pred.append(model.flow(paths.motion_map))
                maps.append(pool(paths.motion_map, 7))
        pred_np, motion_map = torch.cat(pred).numpy(), np.concatenate(maps)
        print(
            f"{folder}\n  decoder on the validation episodes:\n    "
            + decoder_table(pred_np[is_held], target[is_held], valid[is_held])
        )
        readout("decoded flow pooled 21x21", pool(pred_np, 21))
        readout("motion map pooled 7x7", motion_map)
    if args.cnn:
        print("supervised ceiling (train episodes -> validation episodes)")
        supervised_ceiling(train, held)

    print("text targets (centred CLIP embeddings, annotated frames; all 5 state columns probed together)")
    annotated = [
        s
        for split in ("train", "validation")
        for s in open_dataset(args.dataset).frames(split, frame_stack=1, with_state=True)
        if s["task"] == TASK and s["text_valid"]
    ]
    ep = np.array([r["episode"] for r in annotated])
    full = state(annotated)
    fields = {"image": np.stack([r["clip_image"] for r in annotated])}
    fields.update({name: np.stack([r["clip_text"][i] for r in annotated]) for i, name in enumerate(TEXT_ROWS)})
    for name, x in fields.items():
        x = x - x.mean(0)
        x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
        for m in ("ridge", "mlp"):
            r = r2_per_dim(x, full, ep, m, ["position"] * 3 + ["velocity"] * 2)
            print(f"  {name} ({m}): " + ", ".join(f"{n} {v:.2f}" for n, v in zip(NAMES, r, strict=True)), flush=True)


if __name__ == "__main__":
    main()
