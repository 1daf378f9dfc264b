"""GPU check, section ``vlm``: the ``transformers`` annotate backend with a random Llava model built here (about
0.45B parameters on CUDA, bf16; the library's tiny one on the CPU): frames/s of the stage
against bare ``generate`` at batch 1 and batched; and the ``openai`` backend against a local
stand-in chat-completions server on 127.0.0.1 (bare: PNG + ``requests.post`` pool).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu.harness import NEEDS_CUDA, Ctx, annotate_stage, chat_server, episode_frames, find_key, synthetic_inputs


def section_vlm(ctx: Ctx) -> None:
    import torch

    s = ctx.sizes
    steps = s.vlm_frames - 1
    episodes, _, _ = synthetic_inputs(ctx.work / "vlm-inputs", "vlmcheck", 1, steps, 84, every_k=4)
    episodes = episodes / "vlmcheck"
    frames = [f for e in episode_frames(episodes) for f in e]
    n = len(frames)
    try:
        vlm_transformers(ctx, episodes, frames)
    except Exception as exc:
        ctx.report.error("vlm", "transformers backend", exc)
    if ctx.cuda:
        torch.cuda.empty_cache()
    # the OpenAI-compatible path against a local stand-in server
    import requests

    openai_frames = frames[: s.openai_frames]
    with chat_server() as server:
        session = requests.Session()
        concurrency = 8

        def post(frame: Any) -> None:
            server.post_frame(session, frame)

        def bare() -> None:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(post, openai_frames))

        counter = itertools.count()
        result: dict[str, Any] = {}

        def stage() -> None:
            k = next(counter)
            section = ctx.section(
                "annotate",
                backend="openai",
                model=server.model,
                base_url=server.base_url,
                every_k=1,
                concurrency=concurrency,
                max_retries=0,
                cache_dir=str(ctx.work / f"vlm-http-cache-{k}"),
            )
            result["summary"] = annotate_stage(episodes, ctx.work / f"vlm-http-{k}", section, ctx)

        bare_s, stage_s = ctx.best_of([bare, stage])
    stage_n = n  # the stage annotates every frame of the episode (every_k 1)
    ok = summary_metric(result.get("summary"), "ok")
    ctx.report.ok(
        "vlm",
        f"openai backend, local stand-in server on 127.0.0.1, {concurrency} in flight",
        {
            "stage_frames_s": stage_n / stage_s,
            "bare_frames_s": len(openai_frames) / bare_s,
            "stage_over_bare": (stage_n / stage_s) / (len(openai_frames) / bare_s),
        },
        frames=stage_n,
        ok_frames=ok,
    )


def summary_metric(summary: Any, key: str) -> Any:
    """``key`` of a stage summary's metrics (:meth:`pipeline.common.stage.StageSummary.metrics`), None when absent."""
    metrics = summary.metrics() if callable(getattr(summary, "metrics", None)) else {}
    return find_key(metrics, key)


def vlm_transformers(ctx: Ctx, episodes: Path, frames: list[Any]) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    s = ctx.sizes
    n = len(frames)
    folder, n_params = build_llava(s.vlm_scale, ctx.work / f"llava-{s.vlm_scale}")
    dtype = "bf16" if ctx.cuda else "fp32"
    if ctx.tiny:
        ctx.report.skip(
            "vlm",
            "random Llava ~0.5B in bf16",
            f"{NEEDS_CUDA} (bf16 on CUDA; --cpu-tiny runs the library's tiny random VLM in fp32)",
        )
    label = f"random Llava {n_params / 1e9:.2f}B params, {dtype}, {s.vlm_new_tokens} new tokens"
    section = ctx.section(
        "annotate",
        backend="transformers",
        model=str(folder),
        device="auto",
        batch_size=s.vlm_batch,
        max_new_tokens=s.vlm_new_tokens,
        max_retries=0,
        every_k=1,
        max_failure_rate=1.0,
    )
    from pipeline.common.device import select_device

    device = select_device("auto")
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    net = AutoModelForImageTextToText.from_pretrained(folder).to(device)
    if device.type == "cuda":
        net = net.to(torch.bfloat16)
    net.eval()
    prompt = section.prompt.format(task="vlmcheck")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True,
        tokenize=False,
    )

    def bare(batch: int, count: int = n) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for i in range(0, count, batch):
                    chunk = frames[i : min(i + batch, count)]
                    inputs = processor(
                        images=[Image.fromarray(f) for f in chunk],
                        text=[text] * len(chunk),
                        padding=True,
                        return_tensors="pt",
                    ).to(device)
                    if inputs["pixel_values"].is_floating_point():
                        inputs["pixel_values"] = inputs["pixel_values"].to(net.dtype)
                    out = net.generate(**inputs, max_new_tokens=s.vlm_new_tokens, do_sample=False)
                    processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

        return run

    if s.warm_up:
        bare(s.vlm_batch)()
    few = min(n, 8)  # batch 1 on a few frames only: one generate call per frame is slow
    one_s, batched_s = ctx.best_of([bare(1, few), bare(s.vlm_batch)])
    net = None  # free the weights before the stage loads its own copy (``bare``'s closure reads ``net``)
    if ctx.cuda:
        torch.cuda.empty_cache()
    counter = itertools.count()
    summary: dict[str, Any] = {}

    def stage() -> None:
        k = next(counter)
        sec = section.model_copy(update={"cache_dir": str(ctx.work / f"vlm-tf-cache-{k}")})
        summary["s"] = annotate_stage(episodes, ctx.work / f"vlm-tf-{k}", sec, ctx, backend=backend)

    from pipeline.annotate.base import create_backend

    backend = create_backend(section, ctx.weights())
    backend_dtype = str(getattr(getattr(backend, "net", None), "dtype", None))
    try:
        stage_s = ctx.best_of([stage])[0]
    finally:
        backend.close()
    ctx.report.ok(
        "vlm",
        f"transformers backend, {label}, batch {s.vlm_batch}",
        {
            "stage_frames_s": n / stage_s,
            "bare_frames_s": n / batched_s,
            "bare_batch1_frames_s": few / one_s,
            "stage_over_bare": batched_s / stage_s,
            "batching_speedup": (n / batched_s) / (few / one_s),
        },
        frames=n,
        parameters=n_params,
        backend_dtype=backend_dtype,
        ok_frames=summary_metric(summary.get("s"), "ok"),
    )


def build_llava(scale: str, folder: Path) -> tuple[Path, int]:
    """Save a random Llava model (``tiny``: the library's; ``0.5b``: ViT-B/14 at 336 px + a Qwen2-0.5B-shaped
    Llama, about 0.45B parameters, bf16, built on CUDA) with its processor into ``folder``; returns it and its size."""
    import torch

    from pipeline.annotate.tiny_vlm import LlavaShape, build_tiny_vlm, llava_config, llava_processor

    model, processor = build_tiny_vlm()
    model.generation_config.eos_token_id = None  # random weights: every answer runs to max_new_tokens
    if scale != "tiny":
        from transformers import LlavaForConditionalGeneration

        shape = LlavaShape(336, 768, 3072, 12, 12, 896, 4864, 24, 14, 2, 2048)
        processor = llava_processor(processor.tokenizer, shape.image_size)
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlavaForConditionalGeneration(llava_config(processor.tokenizer, shape))
        model = model.to(torch.bfloat16).eval()
        model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
        model.generation_config.eos_token_id = None
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder, params


if __name__ == "__main__":  # this measurement alone: cd bench && ../.venv/bin/python -m gpu.vlm --cpu-tiny --out /tmp/o
    from gpu_check import main

    sys.exit(main(["--sections", "vlm", *sys.argv[1:]]))
