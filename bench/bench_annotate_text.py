"""How much of the state the simulator's annotation texts carry, per task: v2 (state in words) against v1
and a constant.

For each task, noisy-policy episodes are recorded (the collect stage's default policy), every frame
is annotated by the simulator backend (the annotate stage, ``every_k: 1``), and
:func:`pipeline.annotate.information.text_information` reports, for each text, the number of
distinct texts, their entropy (bits) and the episode-grouped probe R^2 from the text's words to the
joint state (hinge angles as cos/sin, slide positions, velocities; no untracked root x). Beside
v2's caption, key-object text and motion, on the same frames:

* ``v1 caption``: the caption the simulator wrote before (``A <task> frame with <n> bodies in view:
  <names>; <k> contacts.``), rebuilt from the same truth;
* ``constant``: one caption for every frame (what a probe reads from nothing).

Prints a markdown table and writes it as JSON to ``bench/out/annotate_text.json``.

    .venv/bin/python bench/bench_annotate_text.py [--tasks cartpole-swingup cheetah-run ...] [--episodes 4]
        [--steps 100] [--size 84]

Measured here (4 noisy episodes x 101 frames per task, 84 px, collect's default action repeats; R^2 over all
state dimensions, v2 caption / v2 key objects / v1 caption / constant caption):

| task | distinct captions v2 (v1) | entropy bits v2 (v1) | probe R^2: v2 caption | v2 objects | v1 caption | constant |
| --- | --- | --- | --- | --- | --- | --- |
| cartpole-swingup | 212 (4) | 7.49 (1.02) | 0.70 | 0.48 | -0.07 | -0.10 |
| cheetah-run | 22 (3) | 3.57 (1.09) | 0.10 | 0.10 | -0.03 | -0.03 |
| reacher-easy | 174 (2) | 6.93 (0.02) | 0.38 | 0.38 | -0.11 | -0.11 |
| ball_in_cup-catch | 190 (3) | 7.12 (1.00) | 0.31 | 0.35 | -0.18 | -0.09 |
| walker-walk | 79 (11) | 5.17 (2.30) | -0.07 | -0.05 | -0.08 | -0.10 |
| finger-spin | 49 (3) | 4.64 (0.42) | 0.04 | 0.14 | -0.16 | -0.19 |

Most of cheetah's, walker's and finger's state is limb joint angles that the words do not name; on walker,
whose noisy episodes mostly lie on the ground, the v2 words are no better than v1 by this probe.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipeline.common.rendering import setup_headless_rendering  # noqa: E402

setup_headless_rendering()  # before anything opens an EGL context (it preloads triton)

from support.annotate import annotate, collect_episodes  # noqa: E402

TASKS = ("cartpole-swingup", "cheetah-run", "reacher-easy", "ball_in_cup-catch", "walker-walk", "finger-spin")


def v1_caption(scene, physics) -> str:
    """The simulator's caption before state words (model ``mujoco-truth-v1``), from the same truth."""
    bodies = [v.entity.name for v in scene.visible if v.entity.kind == "body"]
    caption = (
        f"A {scene.task} frame with {len(bodies)} bodies in view: {', '.join(bodies)}"
        if bodies
        else f"A {scene.task} frame with no body of the agent in view"
    )
    n = len(physics.contacts)
    return caption + f"; {n} contact{'s' if n != 1 else ''}."


def measure(task: str, episodes: int, steps: int, size: int, work: Path) -> dict:
    from pipeline.annotate.information import model_joints, state_matrix, text_information
    from pipeline.annotate.simulator import PhysicsReader
    from pipeline.annotate.truth import scene_truths
    from pipeline.config import parse_params
    from pipeline.dataset.schema import objects_text
    from pipeline.sim.episodes import list_episodes, load_episode

    folder = collect_episodes(work / task / "episodes", task=task, episodes=episodes, steps=steps, size=size)
    params = parse_params({"annotate": {"every_k": 1, "cache_dir": str(work / "cache")}})
    annotate(folder, work / task / "annotations", work / task / "metrics.json", params)
    texts: dict[str, list[str]] = {
        "v2 caption": [],
        "v2 objects": [],
        "v2 motion": [],
        "v1 caption": [],
        "constant": [],
    }
    qpos, qvel, episode = [], [], []
    reader = PhysicsReader()
    try:
        for i, path in enumerate(list_episodes(folder)):
            e = load_episode(path)
            doc = json.loads((work / task / "annotations" / path.with_suffix(".json").name).read_text())
            scenes = scene_truths(e, list(range(e.length + 1)), params.annotate.min_visible_pixels)
            for record in doc["records"]:
                note, scene = record["annotation"], scenes[record["step"]]
                texts["v2 caption"].append(note["caption"])
                texts["v2 objects"].append(objects_text(note["objects"]))
                texts["v2 motion"].append(note["motion"])
                texts["v1 caption"].append(v1_caption(scene, reader.read(scene)))
                texts["constant"].append(f"A {task} frame.")
                qpos.append(scene.qpos)
                qvel.append(scene.qvel)
                episode.append(i)
    finally:
        reader.close()
    state, kinds = state_matrix(model_joints(task), np.stack(qpos), np.stack(qvel))
    return text_information(texts, np.asarray(episode), state, kinds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--episodes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=84)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            results[task] = measure(task, args.episodes, args.steps, args.size, Path(tmp))
    print("| task | text | distinct | entropy (bits) | probe R^2 | R^2 position | R^2 velocity |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for task, info in results.items():
        for name in ("v2 caption", "v2 objects", "v2 motion", "v1 caption", "constant"):
            row = info[name]
            cells = [
                row["distinct"],
                row["entropy_bits"],
                row["probe_r2"],
                row["probe_r2_position"],
                row["probe_r2_velocity"],
            ]
            print(
                f"| {task} | {name} | "
                + " | ".join("-" if c is None else f"{c:.2f}" if isinstance(c, float) else str(c) for c in cells)
                + " |"
            )
    out = ROOT / "bench" / "out" / "annotate_text.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"episodes": args.episodes, "steps": args.steps, "size": args.size, "results": results},
            indent=1,
            sort_keys=True,
        )
    )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
