"""The dataset's layout and sample schema: folder, shards, keys, fields, shapes, dtypes, units.

A dataset folder holds ``README.md`` (the card), ``stats.json`` (the shard list with sizes and
SHA-256, per-field statistics, provenance) and ``<split>/shard-<n:06d>.tar``: one WebDataset
sample per frame; members are named ``<key>.<field>`` where the key has no dots (HF ``datasets``
and ``webdataset`` split key and field at the first dot of the basename).

``FIELD_DOCS`` is the single description of every field: the dataset card and
``docs/ARCHITECTURE.md`` show it, :mod:`pipeline.dataset.codec` encodes and decodes it and
:mod:`pipeline.dataset.reader` checks it.
"""

from __future__ import annotations

import re
from typing import Any

from pipeline.common.errors import UserError


class DatasetError(UserError, ValueError):
    """A dataset folder is missing, incomplete or corrupt; the message names the file (and sample key) and the fix."""


#: Version of the folder layout and sample schema, written to ``stats.json``
#: (2: flow as one KITTI flow PNG, ``flow.png``, instead of ``flow.npy`` + ``flowvalid.npy``; the CLIP image
#: and text embeddings in one ``clip.npy`` instead of ``clipimage.npy`` + ``cliptext.npy``: 8.4 -> 7.4 KB a frame;
#: 3: ``clip.npy`` gains a row, the embedding of the annotation's motion sentence).
SCHEMA_VERSION = 3
#: The folder's metadata files.
STATS_FILE = "stats.json"
CARD_FILE = "README.md"

#: Split folders, in the order they are written and listed in the card.
SPLITS: tuple[str, ...] = ("train", "validation")
#: Shard file name pattern inside a split folder (``%`` formatting, as webdataset's ShardWriter takes it).
SHARD_PATTERN = "shard-%06d.tar"
#: The same as a glob, for the card's ``data_files`` (readers take the shard list from ``stats.json``).
SHARD_GLOB = "shard-*.tar"
#: Every sample has exactly these members (field = member name after the key and its dot).
FIELDS: tuple[str, ...] = ("clip.npy", "flow.png", "json", "rgb.png")
#: The KITTI flow PNG encoding of ``flow.png``: channel value = round(flow * FLOW_SCALE) + FLOW_OFFSET (uint16).
FLOW_SCALE = 64
FLOW_OFFSET = 2**15
#: The flow a ``flow.png`` can hold, in pixels: [-512, 511.984375].
FLOW_MIN, FLOW_MAX = -FLOW_OFFSET / FLOW_SCALE, (2**16 - 1 - FLOW_OFFSET) / FLOW_SCALE
#: Rows of ``clip.npy``: the image embedding, then the text embeddings (``TEXT_ROWS``).
CLIP_ROWS: tuple[str, ...] = ("image", "caption", "objects", "motion")
TEXT_ROWS: tuple[str, ...] = CLIP_ROWS[1:]
#: The values ``json.annotation.status`` takes.
ANNOTATION_STATUSES: tuple[str, ...] = ("ok", "failed", "none")

_KEY_RE = re.compile(r"^(?P<task>[A-Za-z0-9_-]+?)__ep(?P<episode>\d{6,})__(?P<step>\d{6,})$")

#: field -> (shape, dtype, meaning with units). H, W: frame size; D: CLIP embedding size; A: action size.
FIELD_DOCS: dict[str, tuple[str, str, str]] = {
    "rgb.png": ("(H, W, 3)", "uint8", "RGB frame t as rendered by the collect stage (lossless PNG)."),
    "flow.png": (
        "(H, W, 3)",
        "uint16 PNG",
        "Optical flow frame t -> t+1 and its validity, as a KITTI flow PNG (16-bit RGB): R = dx, G = dy stored as "
        "round(flow * 64) + 32768 (flow = (value - 32768) / 64 pixels, exact to 1/128 px, range -512..511.98 px), "
        "B = 1 where the flow is valid, 0 elsewhere. dx points right, dy down: the content at pixel (u, v) of frame t "
        "is at (u + dx, v + dy) in frame t+1. Zero flow and all invalid at an episode's last frame. Decode with "
        "cv2.imread(path, cv2.IMREAD_UNCHANGED) (BGR order: [..., 2] = R) or pipeline.dataset.codec.decode_flow; "
        "PIL reads it as 8 bits and loses the flow.",
    ),
    "clip.npy": (
        "(4, D)",
        "float16",
        "CLIP embeddings, L2-normalised (unit norm up to float16 rounding): row 0 = the image embedding of frame t; "
        "row 1 = the text embedding of the annotation's caption, row 2 = of its key objects joined as text "
        "('name: description; ...'), row 3 = of its motion sentence. "
        "A text row is all zeros when the frame has no ok annotation or that text is empty.",
    ),
    "json": ("-", "JSON object", "Per-frame record, see the json keys table."),
}

#: json key -> (type, meaning with units).
JSON_DOCS: dict[str, tuple[str, str]] = {
    "task": ("str", "Task name as collected (e.g. cartpole-swingup); the key holds a sanitised form."),
    "episode": ("int", "Episode index within the task."),
    "step": ("int", "Frame index t within the episode, 0..T."),
    "length": ("int", "T, the episode's number of agent steps (it has T+1 frames)."),
    "has_action": ("bool", "False at the last frame (t = T): no action or transition follows it."),
    "action": ("list[float] (A)", "Action taken after frame t, environment units; zeros when has_action is false."),
    "reward": ("float", "Reward of transition t -> t+1 (summed over the action repeat); 0 at the last frame."),
    "discount": ("float", "Environment discount of transition t (0 at a true terminal); 1 at the last frame."),
    "terminated": ("bool", "Transition t ended in a true terminal state; false at the last frame."),
    "truncated": ("bool", "Transition t hit the time limit; false at the last frame."),
    "qpos": ("list[float] (nq)", "MuJoCo generalised positions at frame t (m or rad per joint)."),
    "qvel": ("list[float] (nv)", "MuJoCo generalised velocities at frame t (m/s or rad/s per joint)."),
    "annotated": ("bool", "The VLM annotated this frame successfully (annotation.status == 'ok')."),
    "annotation.status": (
        "str",
        "'ok', 'failed' (the VLM answer was invalid; see error) or 'none' (frame not annotated).",
    ),
    "annotation.caption": ("str", "One-sentence caption; '' unless status is 'ok'."),
    "annotation.objects": (
        "list[{name: str, description: str, box: list[float]}]",
        "Key objects; box = [x0, y0, x1, y1] in pixels of the frame, or [] when the VLM gave none; "
        "[] unless status is 'ok'.",
    ),
    "annotation.motion": ("str", "One sentence on how things move; '' unless status is 'ok'."),
    "annotation.error": ("str", "Why the annotation failed; '' otherwise."),
}


def sanitize_task(task: str) -> str:
    """The task name as it appears in sample keys: only ``[A-Za-z0-9_-]``, no ``__`` runs."""
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", task)
    cleaned = re.sub(r"_{2,}", "_", cleaned).strip("_")
    return cleaned or "task"


def make_key(task: str, episode: int, step: int) -> str:
    """Sample key ``<task>__ep<episode:06d>__<step:06d>`` (no dots)."""
    return f"{sanitize_task(task)}__ep{episode:06d}__{step:06d}"


def parse_key(key: str) -> tuple[str, int, int]:
    """Inverse of :func:`make_key`: (sanitised task, episode, step). Raises ValueError on a malformed key."""
    match = _KEY_RE.match(key)
    if not match:
        raise ValueError(f"malformed sample key {key!r}: expected <task>__ep<episode:06d>__<step:06d>")
    return match["task"], int(match["episode"]), int(match["step"])


def empty_annotation(status: str = "none", error: str = "") -> dict[str, Any]:
    """The annotation record of a frame without an ok annotation: same keys and types as a full one."""
    return {"status": status, "caption": "", "objects": [], "motion": "", "error": error}


def objects_text(objects: list[dict[str, Any]]) -> str:
    """Key objects joined as one text for CLIP: ``'name: description; name: description'``."""
    parts = []
    for obj in objects:
        name, description = obj["name"].strip(), obj["description"].strip()
        parts.append(f"{name}: {description}" if description else name)
    return "; ".join(p for p in parts if p)


def text_targets(annotation: dict[str, Any]) -> tuple[str, ...]:
    """The texts of an ok annotation record that ``clip.npy``'s text rows embed, in :data:`TEXT_ROWS` order
    (caption, key objects as :func:`objects_text`, motion sentence); '' where the VLM gave none."""
    return (annotation["caption"].strip(), objects_text(annotation["objects"]), annotation.get("motion", "").strip())


#: The sample's HF ``datasets`` features in the card's YAML form (``dataset_info.features``): the one
#: definition of the schema as HF ``datasets`` infers it from a full sample (plus the ``__key__`` and
#: ``__url__`` columns its webdataset loader adds). Kept free of imports so the card needs no ``datasets``.
FEATURES_YAML: list[dict[str, Any]] = [
    {"name": "clip.npy", "list": {"list": "float16"}},
    {"name": "flow.png", "dtype": "binary"},
    {
        "name": "json",
        "struct": [
            {"name": "action", "list": "float64"},
            {"name": "annotated", "dtype": "bool"},
            {
                "name": "annotation",
                "struct": [
                    {"name": "caption", "dtype": "string"},
                    {"name": "error", "dtype": "string"},
                    {"name": "motion", "dtype": "string"},
                    {
                        "name": "objects",
                        "list": [
                            {"name": "box", "list": "float64"},
                            {"name": "description", "dtype": "string"},
                            {"name": "name", "dtype": "string"},
                        ],
                    },
                    {"name": "status", "dtype": "string"},
                ],
            },
            {"name": "discount", "dtype": "float64"},
            {"name": "episode", "dtype": "int64"},
            {"name": "has_action", "dtype": "bool"},
            {"name": "length", "dtype": "int64"},
            {"name": "qpos", "list": "float64"},
            {"name": "qvel", "list": "float64"},
            {"name": "reward", "dtype": "float64"},
            {"name": "step", "dtype": "int64"},
            {"name": "task", "dtype": "string"},
            {"name": "terminated", "dtype": "bool"},
            {"name": "truncated", "dtype": "bool"},
        ],
    },
    {"name": "rgb.png", "dtype": "image"},
    {"name": "__key__", "dtype": "string"},
    {"name": "__url__", "dtype": "string"},
]


def hf_features() -> datasets.Features:  # noqa: F821
    """The ``datasets.Features`` of a sample (:data:`FEATURES_YAML`).

    Pass them as ``features=`` to ``load_dataset("webdataset", ...)``: ``flow.png`` then comes back
    as its bytes (without them HF decodes it with PIL, which keeps 8 of its 16 bits), and a shard
    whose first samples have no key objects (or failed annotations) still loads with one schema; the
    card's ``dataset_info`` carries the same features for the Hub and ``load_dataset(<folder or repo>)``.
    """
    import copy

    from datasets import Features

    return Features._from_yaml_list(copy.deepcopy(FEATURES_YAML))
