"""GPU check, section ``clip``: open_clip ViT-B-32 fp16: images/s and texts/s of the library encoder
(``pipeline.encode.clip.load_clip``: uint8 frames / strings in, numpy out) and of the encode
stage, against the bare ``encode_image`` / ``encode_text`` on ready tensors.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from gpu.harness import NEEDS_CUDA, Ctx, encode_stage, synthetic_inputs


def section_clip(ctx: Ctx) -> None:
    import numpy as np
    import torch

    from pipeline.encode.clip import load_clip

    s = ctx.sizes
    if ctx.tiny:
        ctx.report.skip("clip", "ViT-B-32 fp16", f"{NEEDS_CUDA} (fp16); --cpu-tiny measures {s.clip_model} in fp32")
    section = ctx.section(
        "encode",
        clip_model=s.clip_model,
        weights="random",
        batch_size=s.clip_batch,
        device="auto",
        fp16=True,
        shard_maxcount=100_000,
    )
    encoder = load_clip(section, ctx.weights())
    precision = "fp16" if ctx.cuda else "fp32"
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (s.clip_frames, 84, 84, 3), dtype=np.uint8)
    texts = [
        f"a cheetah runs {i} steps to the {'left' if i % 2 else 'right'} of the floor" for i in range(s.clip_frames)
    ]
    model = encoder.model
    cfg = encoder.preprocess_cfg
    side = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    autocast = lambda: torch.autocast(encoder.device.type, dtype=torch.float16, enabled=ctx.cuda)  # noqa: E731
    images = [
        torch.rand(len(frames[i : i + s.clip_batch]), 3, side, side, device=encoder.device)
        for i in range(0, len(frames), s.clip_batch)
    ]
    tokens = [
        encoder.tokenizer(texts[i : i + s.clip_batch]).to(encoder.device) for i in range(0, len(texts), s.clip_batch)
    ]

    def bare_images() -> None:
        with torch.inference_mode(), autocast():
            for x in images:
                model.encode_image(x, normalize=True)

    def bare_texts() -> None:
        with torch.inference_mode(), autocast():
            for t in tokens:
                model.encode_text(t, normalize=True)

    out: dict[str, Any] = {}
    if s.warm_up:  # cudnn autotune, allocations
        bare_images()
        bare_texts()
        encoder.encode_images(frames[: s.clip_batch])
        encoder.encode_texts(texts[: s.clip_batch])
    bi, li, bt, lt = ctx.best_of(
        [
            bare_images,
            lambda: out.update(img=encoder.encode_images(frames)),
            bare_texts,
            lambda: out.update(txt=encoder.encode_texts(texts)),
        ]
    )
    n = len(frames)
    norms = np.linalg.norm(out["img"], axis=1)
    name = f"{s.clip_model} {precision}, batch {s.clip_batch}, {n} 84px frames (resized to {side})"
    ctx.report.ok(
        "clip",
        f"{name}: images",
        {"library_images_s": n / li, "bare_images_s": n / bi, "library_over_bare": bi / li},
        finite=bool(np.isfinite(out["img"]).all()),
        unit_norm=bool(np.allclose(norms, 1.0, atol=1e-2)),
        dim=int(out["img"].shape[1]),
    )
    ctx.report.ok(
        "clip",
        f"{name}: texts",
        {"library_texts_s": n / lt, "bare_texts_s": n / bt, "library_over_bare": bt / lt},
        finite=bool(np.isfinite(out["txt"]).all()),
    )
    # the encode stage on episode files (PNG/npy encoding, statistics and tar writing included)
    per_episode = max(2, s.clip_frames // 16)
    inputs = synthetic_inputs(ctx.work / "clip-inputs", "clipcheck", 4, per_episode - 1, 84, every_k=5)
    frames_in = 4 * per_episode
    stage_s = ctx.best_of(
        [lambda: encode_stage(inputs, ctx.work / f"clip-ds-{time.monotonic_ns()}", section, encoder)]
    )[0]
    ctx.report.ok(
        "clip",
        f"encode stage ({s.clip_model} {precision}, {frames_in} frames + their texts)",
        {
            "stage_frames_s": frames_in / stage_s,
            "bare_images_s": n / bi,
            "stage_over_bare": (frames_in / stage_s) / (n / bi),
        },
    )
    encoder = model = images = tokens = None  # free the weights and inputs (the timed closures read them)
    if ctx.cuda:
        torch.cuda.empty_cache()


if (
    __name__ == "__main__"
):  # this measurement alone: cd bench && ../.venv/bin/python -m gpu.clip --cpu-tiny --out /tmp/o
    from gpu_check import main

    sys.exit(main(["--sections", "clip", *sys.argv[1:]]))
