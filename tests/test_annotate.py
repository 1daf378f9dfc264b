"""Annotate stage: answer schema, simulator truth, name matching, the simulator backend end to end, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from support.annotate import annotate, collect_episodes

from pipeline.annotate.accuracy import AccuracyCounts, EntityMatcher, name_words
from pipeline.annotate.base import FrameItem, FrameResult
from pipeline.annotate.cache import AnnotationCache, cache_key
from pipeline.annotate.schema import (
    Annotation,
    AnnotationError,
    AnnotationFileError,
    annotated_steps,
    parse_annotation,
    read_annotation_file,
)
from pipeline.annotate.truth import Entity, model_entities, scene_truths, visible_entities
from pipeline.cli import main
from pipeline.common.errors import UserError
from pipeline.common.io import sha256_of
from pipeline.config import parse_params
from pipeline.sim.episodes import list_episodes, load_episode, save_episode

VALID = {"caption": "c", "objects": [{"name": "cart", "description": "d", "box": [1, 2, 3, 4]}], "motion": "m"}


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_episodes(tmp_path_factory.mktemp("annotate") / "episodes")


def params(tmp: Path, **annotate: object):
    return parse_params({"annotate": {"cache_dir": str(tmp / "cache"), **annotate}})


# -- schema -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        json.dumps(VALID),
        "Here is the answer:\n```json\n" + json.dumps(VALID) + "\n```\nHope it helps.",
        "```\n" + json.dumps(VALID) + "\n```",
        "Sure. " + json.dumps(VALID) + " That's all {not json}.",
        '{"note": "first object is not an annotation"} then ' + json.dumps(VALID),
    ],
)
def test_parse_tolerates_wrapping(text: str) -> None:
    annotation = parse_annotation(text)
    assert annotation.objects[0].name == "cart" and annotation.objects[0].box == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("", "empty answer"),
        ("no json here", "no JSON object"),
        ('{"caption": "c", "objects": []}', "motion"),
        ({**VALID, "extra": 1}, "extra"),
        ({**VALID, "caption": 5}, "caption"),
        ({**VALID, "objects": [{"name": " ", "description": "d", "box": None}]}, "blank"),
        ({**VALID, "objects": [{"name": "a", "description": "d", "box": [1, 2, 3]}]}, "4 numbers"),
        ({**VALID, "objects": [{"name": "a", "description": "d", "box": [5, 2, 3, 4]}]}, "x1 < x0"),
        ({**VALID, "objects": [{"name": "a", "description": "d", "box": [1, 5, 3, 4]}]}, "y1 < y0"),
        ({**VALID, "caption": ""}, "caption"),
        ({**VALID, "caption": " \n\t "}, "caption is blank"),
        ({**VALID, "objects": [{"name": "a", "description": "d", "box": ["1", 2, 3, 4]}]}, "valid number"),
        ({**VALID, "objects": [{"name": "a", "description": "d"}]}, "box"),
    ],
)
def test_parse_is_strict_on_the_schema(answer: object, message: str) -> None:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    with pytest.raises(AnnotationError, match=message):
        parse_annotation(text)


@pytest.mark.parametrize(
    "box", [[-1, 0, 10, 10], [0, -0.5, 10, 10], [0, 0, 49, 10], [0, 0, 10, 33], [100, 100, 200, 200]]
)
def test_boxes_outside_the_frame_are_invalid(box: list[float]) -> None:
    text = json.dumps({**VALID, "objects": [{"name": "a", "description": "d", "box": box}]})
    with pytest.raises(AnnotationError, match="outside the 48x32 image"):
        parse_annotation(text, frame_size=(32, 48))
    assert parse_annotation(text).objects[0].box == [float(v) for v in box]  # unchecked without a frame size


def test_boxes_on_the_frame_edges_are_valid() -> None:
    text = json.dumps({**VALID, "objects": [{"name": "a", "description": "d", "box": [0, 0, 48, 32]}]})
    assert parse_annotation(text, frame_size=(32, 48)).objects[0].box == [0.0, 0.0, 48.0, 32.0]


# -- truth and name matching ----------------------------------------------------------------------
def test_visible_entities_from_segmentation() -> None:
    body_names = ["world", "cart", "pole"]
    geom_names = ["floor", "cart", "pole", "geom3"]
    geom_body = np.array([0, 1, 2, 0], dtype=np.int32)
    entities = model_entities(body_names, geom_names, geom_body)
    assert [(e.kind, e.index, e.name) for e in entities] == [
        ("body", 1, "cart"),
        ("body", 2, "pole"),
        ("scenery", 0, "floor"),
    ]
    seg = np.full((10, 12), -1, dtype=np.int32)
    seg[2:4, 3:7] = 1  # cart: 8 px, columns 3..6, rows 2..3
    seg[5, 0] = 2  # pole: 1 px (below the threshold)
    seg[8:, :] = 0  # floor
    seg[9, 11] = 3  # unnamed world geom: never an entity
    visible = visible_entities(seg, geom_body, entities, min_pixels=2)
    assert [(v.entity.name, v.pixels, v.box) for v in visible] == [
        ("cart", 8, (3, 2, 7, 4)),
        ("floor", 23, (0, 8, 12, 10)),
    ]


CHEETAH = (
    Entity("body", 1, "torso", ("torso", "head")),
    Entity("body", 2, "bthigh", ("bthigh",)),
    Entity("body", 3, "ffoot", ("ffoot",)),
    Entity("body", 4, "bfoot", ("bfoot",)),
    Entity("scenery", 0, "ground", ("ground",)),
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("front foot", ["ffoot"]),
        ("the feet", ["ffoot", "bfoot"]),
        ("Back Thigh", ["bthigh"]),
        ("front thigh", []),  # qualifiers disagree
        ("head", ["torso"]),  # a geom name of the torso body
        ("floor", ["ground"]),  # synonym
        ("cheetah", ["torso", "bthigh", "ffoot", "bfoot"]),  # the whole agent
        ("red ball", []),
    ],
)
def test_entity_matching(name: str, expected: list[str]) -> None:
    assert [e.name for e in EntityMatcher(CHEETAH, "cheetah-run").match(name)] == expected


def test_mujoco_names_split_into_words() -> None:
    assert name_words("pole_1", mujoco_name=True).words == {"pole"}
    assert name_words("floor", mujoco_name=True).qualifiers == frozenset()  # 'f' + 'loor' is not a limb
    assert name_words("bshin", mujoco_name=True).qualifiers == {"back"}


def test_accuracy_counts_named_unknown_and_missed(episodes: Path) -> None:
    episode = load_episode(list_episodes(episodes)[0])
    scene = scene_truths(episode, [0], min_pixels=4)[0]
    in_view = {v.entity.name for v in scene.visible}
    assert {"cart", "pole_1"} <= in_view
    counts = AccuracyCounts()
    counts.add(
        Annotation.model_validate(
            {
                "caption": "c",
                "motion": "m",
                "objects": [
                    {"name": "cart", "description": "", "box": None},
                    {"name": "purple ball", "description": "", "box": None},
                ],
            }
        ),
        scene,
    )
    metrics = counts.to_json()
    assert (metrics["named_objects"], metrics["named_in_view"], metrics["named_unknown"]) == (2, 1, 1)
    assert (metrics["bodies_in_view"], metrics["bodies_missed"]) == (2, 1)  # the pole was not named


# -- the simulator backend end to end ------------------------------------------------------------------
def test_simulator_backend_end_to_end(episodes: Path, tmp_path: Path) -> None:
    p = params(tmp_path, every_k=7)
    summary = annotate(episodes, tmp_path / "out", tmp_path / "metrics.json", p)
    files = sorted((tmp_path / "out").glob("*.json"))
    assert [f.name for f in files] == ["episode_000000.json", "episode_000001.json"]
    doc = json.loads(files[0].read_text())
    assert {k: doc[k] for k in ("task", "episode", "backend", "every_k", "weights")} == {
        "task": "cartpole-swingup",
        "episode": 0,
        "backend": "simulator",
        "every_k": 7,
        "weights": None,
    }
    assert "cartpole-swingup" in doc["prompt"] and "{task}" not in doc["prompt"]
    first = list_episodes(episodes)[0]
    assert doc["source"] == {"episode": "episode_000000.npz", "episode_sha256": sha256_of(first)}
    assert [r["step"] for r in doc["records"]] == annotated_steps(20, 7) == [0, 7, 14]
    episode = load_episode(list_episodes(episodes)[0])
    for record in doc["records"]:
        assert record["status"] == "ok" and record["error"] is None
        annotation = Annotation.model_validate(record["annotation"])
        truth = scene_truths(episode, [record["step"]], 4)[record["step"]]
        assert [o.name for o in annotation.objects] == [v.entity.name for v in truth.visible]
        assert [o.box for o in annotation.objects] == [list(map(float, v.box)) for v in truth.visible]
        assert (
            annotation.caption.startswith("The pole is ") and "; the cart is " in annotation.caption
        )  # the state in words
        assert annotation.motion and all(o.box is not None for o in annotation.objects)
    # The simulator is its own ground truth: everything named is in view, nothing missed.
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["frames"] == metrics["ok"] == 6 and metrics["failed"] == 0
    acc = metrics["accuracy"]
    assert acc["frames_checked"] == 6 and acc["named_in_view_rate"] == 1.0 and acc["bodies_missed"] == 0
    assert summary.cache_hits == 0  # the simulator does not use the cache
    assert not (tmp_path / "cache").exists()


def test_simulator_velocities_follow_the_physics(episodes: Path, tmp_path: Path) -> None:
    """A moving cart is described as moving, in the direction its recorded x position changes."""
    episode = load_episode(list_episodes(episodes)[0])
    cart = episode.meta.body_names.index("cart")
    dx = np.diff(episode.body_pos[:, cart, 0])
    t = int(np.argmax(np.abs(dx))) + 1
    p = params(tmp_path, every_k=1, physics=False)
    annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
    record = json.loads((tmp_path / "out" / "episode_000000.json").read_text())["records"][t]
    cart_desc = next(o["description"] for o in record["annotation"]["objects"] if o["name"] == "cart")
    # the camera looks along +y at the cart-pole: world +x is image right
    assert ("to the right" if dx[t - 1] > 0 else "to the left") in cart_desc


def test_annotation_files_are_validated_on_open(episodes: Path, tmp_path: Path) -> None:
    annotate(episodes, tmp_path / "out", tmp_path / "m.json", params(tmp_path, every_k=7))
    first, second = list_episodes(episodes)
    path = tmp_path / "out" / "episode_000000.json"
    doc = read_annotation_file(path, length=20, frame_size=(48, 48), episode=first)
    assert [r.step for r in doc.records] == [0, 7, 14] and doc.source.episode == first.name
    # Paired with another episode: both files named.
    with pytest.raises(AnnotationFileError, match=rf"{path} was computed from another episode than {second}"):
        read_annotation_file(path, episode=second)
    # Another episode length, a box outside a smaller frame.
    with pytest.raises(AnnotationFileError, match="expected every 7th frame of an episode of 30 steps"):
        read_annotation_file(path, length=30)
    with pytest.raises(AnnotationFileError, match="outside the 8x8 image"):
        read_annotation_file(path, frame_size=(8, 8))
    body = json.loads(path.read_text())
    broken = tmp_path / "broken.json"
    for change, message in [
        (lambda d: d.pop("source"), "source"),
        (lambda d: d["source"].update(episode_sha256="abc"), "episode_sha256"),
        (lambda d: d["records"][0].update(status="failed"), "status 'failed' needs an error"),
        (lambda d: d["records"].reverse(), "not sorted"),
        (lambda d: d["records"][1]["annotation"].update(caption=" "), "caption is blank"),
    ]:
        changed = json.loads(json.dumps(body))
        change(changed)
        broken.write_text(json.dumps(changed))
        with pytest.raises(
            AnnotationFileError, match=rf"(?s){broken}: not an annotation file.*{message}.*rerun the annotate stage"
        ):
            read_annotation_file(broken)
    broken.write_text("{")
    with pytest.raises(AnnotationFileError, match="not JSON"):
        read_annotation_file(broken)
    with pytest.raises(AnnotationFileError, match="no such annotation file"):
        read_annotation_file(tmp_path / "nothing.json")


def test_same_params_same_bytes(episodes: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        annotate(episodes, tmp_path / run, tmp_path / f"{run}.json", params(tmp_path, every_k=10))
    for f in sorted((tmp_path / "a").glob("*.json")):
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_simulator_needs_segmentation(episodes: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    episode = load_episode(list_episodes(episodes)[0])
    episode.segmentation = None
    save_episode(bare / "episode_000000.npz", episode)
    with pytest.raises(UserError, match="collect.segmentation: true"):
        annotate(bare, tmp_path / "out", tmp_path / "m.json", params(tmp_path))
    assert not (tmp_path / "out").exists()


def test_cli(episodes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"annotate:\n  every_k: 10\n  cache_dir: {tmp_path / 'cache'}\n")
    out, metrics = tmp_path / "out", tmp_path / "metrics" / "m.json"
    argv = [
        "--params",
        str(params_file),
        "annotate",
        "--episodes",
        str(episodes),
        "--out",
        str(out),
        "--metrics",
        str(metrics),
    ]
    assert main(argv) == 0
    assert "6 frames, 6 ok, 0 failed" in capsys.readouterr().out  # 2 episodes x steps (0, 10, 20)
    assert json.loads(metrics.read_text())["frames"] == 6
    assert main([*argv[:3], "--episodes", str(tmp_path / "nothing"), *argv[5:]]) == 2
    assert "no episode_*.npz files" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["truncated", "corrupt data"])
def test_damaged_episode_is_a_clear_error(
    episodes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    folder = tmp_path / "episodes"
    folder.mkdir()
    for f in list_episodes(episodes):
        (folder / f.name).write_bytes(f.read_bytes())
    bad = folder / "episode_000001.npz"
    data = bytearray(bad.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2 :]
    else:  # flip bytes inside the first member's compressed data: the zip directory still reads
        for i in range(200, 400):
            data[i] ^= 0xFF
    bad.write_bytes(bytes(data))
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"annotate:\n  cache_dir: {tmp_path / 'cache'}\n")
    argv = [
        "--params",
        str(params_file),
        "annotate",
        "--episodes",
        str(folder),
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "m.json"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "Fix:" in err and "Traceback" not in err


# -- cache ----------------------------------------------------------------------------------------------
def test_cache_never_serves_a_damaged_entry(tmp_path: Path) -> None:
    cache = AnnotationCache(tmp_path)
    image = np.zeros((4, 4, 3), np.uint8)
    item = FrameItem("t", 0, 0, image, "p", key=cache_key(image, "openai", "m", "p"))
    assert cache_key(image, "openai", "m", "p2") != item.key and cache_key(image + 1, "openai", "m", "p") != item.key
    result = FrameResult(item, "ok", Annotation.model_validate(VALID), "raw", None)
    assert cache.put(result)
    assert cache.get(item).annotation == result.annotation
    path = cache.path(item.key)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])  # a torn write
    assert cache.get(item) is None
    path.write_text(text.replace('"ok"', '"failed"'))  # status and annotation disagree
    assert cache.get(item) is None
    assert not cache.put(FrameResult(item, "failed", None, None, "timeout", final=False))  # transient: not cached
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left behind


def test_bad_prompt_template_is_a_params_error() -> None:
    from pipeline.config import ParamsError

    with pytest.raises(ParamsError, match=r"annotate.prompt = 'describe \{object\}'.*only \{task\}"):
        parse_params({"annotate": {"prompt": "describe {object}"}})
    assert (
        parse_params({"annotate": {"prompt": "JSON {{caption}} of {task}"}}).annotate.prompt.format(task="t")
        == "JSON {caption} of t"
    )
