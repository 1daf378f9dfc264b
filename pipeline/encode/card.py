"""The dataset card (``README.md``): the Hub's YAML header plus documentation and provenance.

The header is built with huggingface_hub's :class:`DatasetCardData`: ``configs``
(data files per split, so the Hub viewer and ``load_dataset(<repo or folder>)``
find the shards), ``dataset_info.features`` (one explicit schema), license,
task categories, tags and size category. The body documents every field, its
shape, dtype and units, and the full provenance.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pipeline.dataset.schema import FEATURES_YAML, FIELD_DOCS, JSON_DOCS, SHARD_GLOB, sanitize_task

TASK_CATEGORIES = ["reinforcement-learning", "robotics", "image-feature-extraction"]
_SIZE_BOUNDS = [
    (1_000, "n<1K"),
    (10_000, "1K<n<10K"),
    (100_000, "10K<n<100K"),
    (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"),
    (100_000_000, "10M<n<100M"),
    (1_000_000_000, "100M<n<1B"),
]


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` samples."""
    for bound, name in _SIZE_BOUNDS:
        if n < bound:
            return name
    return "n>1B" if n < 10_000_000_000 else "n>10B"


def card_data(name: str, license_id: str, splits: dict[str, dict[str, Any]], tasks: list[str]) -> DatasetCardData:  # noqa: F821
    """The YAML header. ``splits``: split -> {"samples": int, ...}; only splits with samples are listed."""
    from huggingface_hub import DatasetCardData

    present = [s for s, info in splits.items() if info["samples"] > 0]
    total = sum(splits[s]["samples"] for s in present)
    return DatasetCardData(
        pretty_name=name,
        license=license_id,
        task_categories=TASK_CATEGORIES,
        tags=[
            "webdataset",
            "semore",
            "clip",
            "optical-flow",
            "vision-language",
            "mujoco",
            *sorted({sanitize_task(t).lower() for t in tasks}),
        ],
        size_categories=[size_category(total)],
        configs=[
            {"config_name": "default", "data_files": [{"split": s, "path": f"{s}/{SHARD_GLOB}"} for s in present]}
        ],
        dataset_info={
            "features": copy.deepcopy(FEATURES_YAML),
            "splits": [
                {
                    "name": s,
                    "num_bytes": sum(x["bytes"] for x in splits[s]["shards"]),
                    "num_examples": splits[s]["samples"],
                }
                for s in present
            ],
        },
    )


def _find(tree: Any, key: str) -> Any:
    """The first string value under ``key`` anywhere in a nested JSON tree (upstream metas nest differently)."""
    if isinstance(tree, dict):
        if isinstance(tree.get(key), str):
            return tree[key]
        for value in tree.values():
            found = _find(value, key)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for value in tree:
            found = _find(value, key)
            if found is not None:
                return found
    return None


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def card_body(name: str, splits: dict[str, dict[str, Any]], shapes: dict[str, str], provenance: dict[str, Any]) -> str:
    """Markdown body. ``shapes`` maps H, W, D, A to their values (as text) for the field table."""
    present = [s for s, info in splits.items() if info["samples"] > 0]
    clip = provenance["clip"]
    tasks = provenance["tasks"]
    sizes = ", ".join(f"{k} = {v}" for k, v in shapes.items())
    random_note = (
        "\n> **Warning: the CLIP model had random weights** (`random_init: true` in the provenance below): the "
        "`clip.npy` targets carry no semantics. Rebuild with real weights for research use.\n"
        if clip["random_init"]
        else ""
    )
    split_rows = [
        [s, str(splits[s]["episodes"]), str(splits[s]["samples"]), str(len(splits[s]["shards"]))] for s in present
    ]
    field_rows = [[f"`{f}`", shape, dtype, meaning] for f, (shape, dtype, meaning) in FIELD_DOCS.items()]
    json_rows = [[f"`{k}`", t, meaning] for k, (t, meaning) in JSON_DOCS.items()]
    task_lines = []
    for task, info in tasks.items():
        collect, flow, annotate = info.get("collect", {}), info.get("flow", {}), info.get("annotate", {})
        flow_model = _find(flow, "model")
        task_lines.append(
            f"- **{task}**: {len(info['episodes'])} episodes (train {info['splits'].get('train', [])}, "
            f"validation {info['splits'].get('validation', [])}); "
            f"suite {collect.get('suite')}, policy {collect.get('policy')}, "
            f"action repeat {collect.get('action_repeat')}, image {collect.get('image_size')} px, "
            f"render mode {collect.get('render_mode')}; "
            f"flow backend {_find(flow, 'backend')}{f' (model {flow_model})' if flow_model else ''}; "
            f"annotation backend {annotate.get('backend')} (model {annotate.get('model')}, "
            f"every {annotate.get('every_k')} frames)"
        )
    prompts = sorted({str(info.get("annotate", {}).get("prompt")) for info in tasks.values()})
    weights = clip["weights"]
    clip_weights = "RANDOM INIT" if clip["random_init"] else "sha256 " + str(weights.get("sha256"))
    preprocess = clip["preprocess"]
    last_train = max(len(splits.get("train", {}).get("shards", [])) - 1, 0)
    return f"""# {name}

Frames of simulated continuous-control tasks with everything the
Semore (VLM-guided semantic and motion representations) pretraining pipeline knows about each of them: the RGB
frame, the optical flow to the next frame and its validity mask, the CLIP embedding of the frame,
the CLIP embeddings of what a vision-language model (VLM) reads from it (a caption, the key
objects and how things move), and the agent's action, reward, discount and physics state. One
[WebDataset](https://github.com/webdataset/webdataset) sample per frame; train and validation are
split by episode, never by frame; the samples of an episode are contiguous and in step order.
{random_note}
## Loading

```python
from datasets import load_dataset
from pipeline.dataset import hf_features  # or datasets.Features from this card's dataset_info
ds = load_dataset("webdataset", data_files={{"train": "train/{SHARD_GLOB}", "validation": "validation/{SHARD_GLOB}"}}, \
features=hf_features(), split="train")
# or, from this folder or its Hub repo (uses the card's configs and features):
# ds = load_dataset("<user>/<repo>", split="train")

import webdataset as wds
samples = wds.WebDataset("train/shard-{{000000..{last_train:06d}}}.tar", shardshuffle=False).decode(kitti_flow, "rgb8")
```

`flow.png` is a KITTI flow PNG (16-bit RGB; see the field table): decode it with OpenCV, e.g.
`kitti_flow = lambda key, data: decode(data) if key.endswith("flow.png") else None` where
`decode(data)` is `img = cv2.imdecode(numpy.frombuffer(data, numpy.uint8), cv2.IMREAD_UNCHANGED)`
(BGR order), `flow = (img[..., [2, 1]].astype("float32") - 32768) / 64` (dx, dy in pixels, to 1/64 px),
`valid = img[..., 0] > 0`. PIL (webdataset's and HF's default image decoder) keeps only 8 of its 16
bits. `.npy` fields decode with `numpy.load`; `json` with `json.loads`. Pass
`features=pipeline.dataset.hf_features()` (the `dataset_info.features` of this card) to
`load_dataset("webdataset", ...)`: `flow.png` then comes back as its bytes, and shards whose first
samples lack key objects load with the same schema. `stats.json` holds per-field
statistics (count, mean, std, min, max) per split for normalisation, the shard list with SHA-256
hashes, and the provenance below.

### From your own training code (the semore reader)

```python
from pipeline.dataset import open_dataset                  # pip install the semore repository
ds = open_dataset("path/to/this/folder")                   # validated once: stats.json, shard sizes and SHA-256
loader = torch.utils.data.DataLoader(ds.frames("train", frame_stack=3, shuffle_buffer=256, repeat=True), batch_size=64)
```

Each sample is a dict: `obs` (3k, H, W) uint8 (k frames of the same episode, oldest first; the
first frame repeated at an episode's start), `flow` (2, H, W) float32 and `flow_valid` (H, W) bool
of the last transition, `clip_image` (D,) and `clip_text` (3, D) float32 (caption, key objects, motion) \
with `text_valid`,
`reward` and `reward_valid`, and `key`. `ds.field_stats("train")` gives the statistics of
`stats.json`; a corrupt or truncated shard raises `DatasetError` naming the shard and the sample.

## Splits

{_table(["split", "episodes", "samples", "shards"], split_rows)}

## Fields

Sample key: `<task>__ep<episode:06d>__<step:06d>` (task sanitised to `[A-Za-z0-9_-]`, no dots).
Sizes: {sizes}.

{_table(["field", "shape", "dtype", "meaning and units"], field_rows)}

### `json` keys

{_table(["key", "type", "meaning and units"], json_rows)}

## Provenance

- Tasks:
{chr(10).join("  " + line for line in task_lines)}
- VLM prompt(s): {"; ".join(f"`{p}`" for p in prompts)}
- CLIP: open_clip `{clip["model"]}`, weights `{clip["weights_param"]}` ({clip_weights}),
  embedding size {clip["embed_dim"]}, preprocessing {preprocess["resize_mode"]} resize to {preprocess["size"]}
  ({preprocess["interpolation"]}), mean {preprocess["mean"]}, std {preprocess["std"]}; {clip["precision"]}.
- Made by `semore encode` with the params below (the `encode` and `weights` sections of params.yaml).

```json
{json.dumps(provenance, indent=2, sort_keys=True)}
```
"""


def build_card(
    name: str, license_id: str, splits: dict[str, dict[str, Any]], shapes: dict[str, str], provenance: dict[str, Any]
) -> DatasetCard:  # noqa: F821
    """The full card (YAML header + body) as a huggingface_hub :class:`DatasetCard`."""
    from huggingface_hub import DatasetCard

    data = card_data(name, license_id, splits, list(provenance["tasks"]))
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(name, splits, shapes, provenance)}")
