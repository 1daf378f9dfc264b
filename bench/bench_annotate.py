"""Benchmark of the annotate stage: frames/s of each backend, against a bare loop doing the same core work.

Episodes of a real task are recorded first (not timed). Then, for each backend, the
stage (``pipeline.annotate.run.run``: episode loading, cache, schema parsing, JSON outputs,
metrics) is timed on every ``--every-k``-th frame, next to a bare loop measured in the
same run that does only the backend's core work on the same frames:

* ``simulator``: bare = everything the backend computes, on episodes already in memory: the
  task's model compiled without a renderer (``load_task_physics``, its per-process cache cleared
  first, as the stage's cold run has it), each frame's scene truth (``scene_truths``: visible
  entities and their boxes from the segmentation, body velocities), the physics read
  (``PhysicsReader.read``: qpos/qvel -> ``mj_forward`` -> contacts and body velocities, with
  ``physics: true``) and the caption and key objects (``describe``); stage = ``backend:
  simulator``. Two earlier, narrower bare loops are shown on further rows: segmentation ->
  visible bodies and ``mj_forward`` -> contacts only (no captions: they were written before the
  annotator described the state), and the same with the model built through ``make_env`` (with a
  renderer, as the stage once did).
* ``transformers`` (the tiny random VLM saved to a folder; CPU unless CUDA is present):
  bare = processor + ``generate`` in batches of ``--batch-size``, no retries; stage =
  ``backend: transformers`` with ``max_retries: 0`` (so both generate once per frame).
* ``openai`` (a chat-completions server on 127.0.0.1 answering a canned valid
  annotation): bare = PNG encode + ``requests.post`` on a thread pool of the same size;
  stage = ``backend: openai`` with a cold cache; also the warm-cache rerun.

Every figure is the best of ``--repeat`` runs (the machine is shared; the first run
of anything in a process also pays imports and warm-up), stage and bare alike.

    .venv/bin/python bench/bench_annotate.py [--task cartpole-swingup] [--episodes 2] [--steps 100]
        [--every-k 1] [--torch-threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pipeline.common.rendering import setup_headless_rendering  # noqa: E402

setup_headless_rendering()  # before anything opens an EGL context (it preloads triton)

from support.annotate import ChatServer, collect_episodes, save_tiny_vlm  # noqa: E402

REPEAT = 3


def timed(fn: Callable[[], Any]) -> float:
    """Best wall time of :data:`REPEAT` calls of ``fn`` (s)."""
    best = float("inf")
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cartpole-swingup")
    parser.add_argument("--episodes", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--every-k", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--backends", default="simulator,transformers,openai")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch CPU threads (a tiny model on a shared 2-core machine runs best on 1)",
    )
    parser.add_argument("--repeat", type=int, default=REPEAT, help="runs of each measurement; the best is reported")
    args = parser.parse_args()
    globals()["REPEAT"] = args.repeat
    logging.basicConfig(level=logging.WARNING)

    import requests
    import torch

    torch.set_num_threads(args.torch_threads)

    from pipeline.annotate.run import run as annotate
    from pipeline.annotate.schema import annotated_steps
    from pipeline.annotate.simulator import PhysicsReader, describe
    from pipeline.annotate.truth import model_entities, scene_truths, visible_entities
    from pipeline.config import parse_params
    from pipeline.sim.episodes import list_episodes, load_episode
    from pipeline.sim.task_physics import clear_model_cache

    tmp = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    episodes_dir = collect_episodes(tmp / "episodes", args.task, args.episodes, args.steps, args.size)
    episodes = [load_episode(p) for p in list_episodes(episodes_dir)]
    frames = [ep.frames[t] for ep in episodes for t in annotated_steps(ep.length, args.every_k)]
    n = len(frames)
    rows: list[tuple[str, float, str, float]] = []

    def params(**annotate: Any):
        return parse_params(
            {"annotate": {"every_k": args.every_k, **annotate}, "weights": {"cache_dir": str(tmp / "w")}}
        )

    def stage(name: str, cold_cache: bool = True, **annotate_params: Any) -> float:
        """Best time of the stage; each run with an empty answer cache unless ``cold_cache`` is False
        (then one shared cache)."""

        def once() -> None:
            clear_model_cache()  # a cold run, as the stage's own process has: it compiles the task's model once
            out = tmp / f"out-{name}-{time.monotonic_ns()}"
            p = params(cache_dir=str(out / "cache" if cold_cache else tmp / f"cache-{name}"), **annotate_params)
            annotate(episodes_dir, out, p.annotate, p.weights, metrics=out / "metrics.json")

        return timed(once)

    wanted = args.backends.split(",")
    if "simulator" in wanted:
        import mujoco

        from pipeline.sim.task_physics import load_task_physics

        def bare_simulator() -> None:
            clear_model_cache()
            model, data, close = load_task_physics(args.task, episodes[0].meta.suite)
            for ep in episodes:
                entities = model_entities(ep.meta.body_names, ep.meta.geom_names, ep.geom_body)
                for t in annotated_steps(ep.length, args.every_k):
                    visible_entities(ep.segmentation[t], ep.geom_body, entities, 4)
                    data.qpos[:], data.qvel[:] = ep.qpos[t], ep.qvel[t]
                    mujoco.mj_forward(model, data)
                    [(data.contact.geom1[i], data.contact.geom2[i]) for i in range(data.ncon)]
            close()

        def bare_simulator_make_env() -> (
            None
        ):  # the previous baseline: the model from make_env, which also opens a renderer
            from pipeline.collect import make_env

            env = make_env(args.task, image_size=8)
            for ep in episodes:
                entities = model_entities(ep.meta.body_names, ep.meta.geom_names, ep.geom_body)
                for t in annotated_steps(ep.length, args.every_k):
                    visible_entities(ep.segmentation[t], ep.geom_body, entities, 4)
                    env.data.qpos[:], env.data.qvel[:] = ep.qpos[t], ep.qvel[t]
                    mujoco.mj_forward(env.model, env.data)
                    [(env.data.contact.geom1[i], env.data.contact.geom2[i]) for i in range(env.data.ncon)]
            env.close()

        min_pixels = params().annotate.min_visible_pixels

        def bare_backend(physics: bool) -> Callable[[], None]:
            def run() -> None:  # everything the backend computes, on episodes already in memory
                clear_model_cache()
                reader = PhysicsReader() if physics else None
                for ep in episodes:
                    for scene in scene_truths(ep, annotated_steps(ep.length, args.every_k), min_pixels).values():
                        describe(scene, reader.read(scene) if reader is not None else None)
                if reader is not None:
                    reader.close()

            return run

        bare = timed(bare_simulator)
        bare_make_env = timed(bare_simulator_make_env)
        sim, simnp = stage("sim", backend="simulator"), stage("simnp", backend="simulator", physics=False)
        own = "the backend's own work: scene truth, physics read, captions"
        rows.append(("simulator (physics: true)", n / sim, own, n / timed(bare_backend(True))))
        rows.append(
            ("simulator (physics: false)", n / simnp, own.replace("physics read, ", ""), n / timed(bare_backend(False)))
        )
        rows.append(
            (
                "simulator (physics: true), earlier baseline",
                n / sim,
                "model + segmentation + mj_forward + contacts",
                n / bare,
            )
        )
        rows.append(
            (
                "simulator (physics: false), earlier baseline",
                n / simnp,
                "model + segmentation + mj_forward + contacts",
                n / bare,
            )
        )
        rows.append(
            ("simulator (physics: true), first baseline", n / sim, "make_env (renderer) + the same", n / bare_make_env)
        )

    if "transformers" in wanted:
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from pipeline.common.device import select_device

        folder = save_tiny_vlm(tmp / "tiny-vlm")
        device = select_device("auto")
        model = AutoModelForImageTextToText.from_pretrained(folder).to(device).eval()
        processor = AutoProcessor.from_pretrained(folder)
        processor.tokenizer.padding_side = "left"
        prompt = params().annotate.prompt.format(task=args.task)
        text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
            add_generation_prompt=True,
            tokenize=False,
        )

        def bare_generate() -> None:
            with torch.inference_mode():
                for i in range(0, n, args.batch_size):
                    chunk = frames[i : i + args.batch_size]
                    inputs = processor(
                        images=[Image.fromarray(f) for f in chunk],
                        text=[text] * len(chunk),
                        padding=True,
                        return_tensors="pt",
                    ).to(device)
                    out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
                    processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

        bare_generate()  # warm-up (first calls are slow)
        bare = timed(bare_generate)
        tf = stage(
            "tf",
            backend="transformers",
            model=str(folder),
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            max_retries=0,
            max_failure_rate=1.0,
        )  # a random model's answers are noise
        rows.append(
            (
                f"transformers (tiny VLM, {device.type}, batch {args.batch_size})",
                n / tf,
                "processor + generate",
                n / bare,
            )
        )

    if "openai" in wanted:
        with ChatServer() as server:
            session = requests.Session()

            def post(frame: Any) -> None:
                server.post_frame(session, frame)

            def bare_http() -> None:
                with ThreadPoolExecutor(args.concurrency) as pool:
                    list(pool.map(post, frames))

            bare = timed(bare_http)
            http = {
                "backend": "openai",
                "model": server.model,
                "base_url": server.base_url,
                "concurrency": args.concurrency,
            }
            cold = stage("http", **http)
            warm = stage(
                "http-warm", cold_cache=False, **http
            )  # the first of its runs fills the cache; the best is a rerun
        rows.append(
            (
                f"openai (local canned server, {args.concurrency} in flight)",
                n / cold,
                "PNG + requests.post pool",
                n / bare,
            )
        )
        rows.append(("openai, rerun (all from the cache)", n / warm, "PNG + requests.post pool", n / bare))

    print(
        f"\n{args.task}: {n} frames ({args.episodes} episodes x {args.steps} steps, every {args.every_k}, "
        f"{args.size}x{args.size}), torch threads {torch.get_num_threads()}"
    )
    print(f"{'backend':<52} {'stage fr/s':>11} {'bare fr/s':>10} {'ratio':>6}  bare loop")
    for name, stage_fps, bare_name, bare_fps in rows:
        print(f"{name:<52} {stage_fps:>11.1f} {bare_fps:>10.1f} {stage_fps / bare_fps:>6.2f}  {bare_name}")


if __name__ == "__main__":
    main()
