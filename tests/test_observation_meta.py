"""The observation-facts contract (pipeline.sim.observation): written from a dataset, read back from a checkpoint,
compared with a run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.backbone import DualPathBackbone
from models.checkpoint import save_module
from pipeline.sim.observation import ObservationMeta, ObservationMetaError

STATS = {
    "provenance": {
        "tasks": {
            "walker-walk": {"collect": {"action_repeat": 2, "camera": "side", "render_mode": "fast", "image_size": 16}},
            "cartpole-swingup": {"collect": {"action_repeat": 8, "camera": 0, "render_mode": "fast", "image_size": 16}},
        }
    }
}


def test_dataset_facts_round_trip_through_the_record() -> None:
    facts = ObservationMeta.from_dataset(STATS, image_size=16, frame_stack=3)
    record = facts.to_dict()
    assert record == {
        "action_repeat": {"cartpole-swingup": 8, "walker-walk": 2},
        "image_size": 16,
        "camera": {"cartpole-swingup": 0, "walker-walk": "side"},
        "render_mode": {"cartpole-swingup": "fast", "walker-walk": "fast"},
        "frame_stack": 3,
    }
    assert list(record["action_repeat"]) == ["cartpole-swingup", "walker-walk"]  # sorted: same dataset, same bytes
    assert ObservationMeta.from_dict(record) == facts


def test_mismatches_name_both_values_and_skip_what_is_unknown() -> None:
    facts = ObservationMeta.from_dataset(STATS, image_size=16, frame_stack=3)
    lines = facts.mismatches(
        "cartpole-swingup",
        who="finetune",
        action_repeat=4,
        image_size=32,
        camera="top",
        render_mode="faithful",
        frame_stack=2,
    )
    assert lines == [
        "action repeat: backbone pretrained at 8, finetune of cartpole-swingup uses 4",
        "image size: backbone pretrained at 16 px, finetune of cartpole-swingup uses 32 px",
        "camera: backbone pretrained on camera 0, finetune of cartpole-swingup uses camera 'top'",
        "render mode: backbone pretrained on 'fast' frames, finetune of cartpole-swingup uses 'faithful'",
        "frame stack: backbone pretrained on 3-frame stacks, finetune of cartpole-swingup uses 2 frames",
    ]
    assert facts.mismatches("cartpole-swingup", who="finetune", action_repeat=8, camera=0, render_mode="fast") == []
    assert facts.mismatches("cartpole-swingup", who="finetune") == []  # None: unchecked
    # A task the backbone never saw: its action repeat and camera are unknown, but the pixels' render mode is shared.
    assert facts.mismatches("cheetah-run", who="evaluation", action_repeat=4, camera=1, render_mode="faithful") == [
        "render mode: backbone pretrained on 'fast' frames, evaluation of cheetah-run uses 'faithful'"
    ]
    mixed = ObservationMeta(render_mode={"a-b": "fast", "c-d": "faithful"})
    assert mixed.for_task("render_mode", "e-f") is None and mixed.for_task("render_mode", "c-d") == "faithful"


def test_one_value_for_every_task_is_read_too() -> None:
    facts = ObservationMeta.from_dict({"action_repeat": 4, "render_mode": "fast"})
    assert facts.for_task("action_repeat", "any-task") == 4
    assert facts.mismatches("any-task", who="evaluation", action_repeat=2, image_size=84) == [
        "action repeat: backbone pretrained at 4, evaluation of any-task uses 2"
    ]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ([8], "meta.observation is list, expected a dict"),
        ({"action_repeats": 8}, "unknown keys ['action_repeats']"),
        (
            {"action_repeat": {"cartpole-swingup": "8"}},
            "meta.observation.action_repeat = {'cartpole-swingup': '8'}, expected an integer >= 1",
        ),
        ({"action_repeat": True}, "meta.observation.action_repeat = True"),
        ({"image_size": 0}, "meta.observation.image_size = 0, expected an integer >= 1 (pixels)"),
        ({"camera": 1.5}, "meta.observation.camera = 1.5"),
        ({"render_mode": {"cartpole-swingup": 3}}, "meta.observation.render_mode"),
    ],
)
def test_a_malformed_record_is_refused_naming_the_file_and_key(raw: object, fragment: str) -> None:
    with pytest.raises(ObservationMetaError) as info:
        ObservationMeta.from_dict(raw, source="ckpt/config.json")
    message = str(info.value)
    assert message.startswith("ckpt/config.json: ") and fragment in message and "rerun the pretrain stage" in message


def test_read_from_a_checkpoint_folder(tmp_path: Path) -> None:
    config = dict(frame_stack=2, image_size=16, feature_dim=8, channels=4, depth=2)
    torch.manual_seed(0)
    save_module(tmp_path / "old", DualPathBackbone(**config), config, {"note": "before the contract"})
    assert ObservationMeta.read(tmp_path / "old") is None  # accepted unchecked
    save_module(
        tmp_path / "new",
        DualPathBackbone(**config),
        config,
        {"observation": {"action_repeat": {"cartpole-swingup": 8}, "frame_stack": 2}},
    )
    assert ObservationMeta.read(tmp_path / "new") == ObservationMeta(
        action_repeat={"cartpole-swingup": 8}, frame_stack=2
    )
    save_module(tmp_path / "bad", DualPathBackbone(**config), config, {"observation": {"frame_stack": "two"}})
    with pytest.raises(ObservationMetaError, match=r"bad/config.json: meta.observation.frame_stack = 'two'"):
        ObservationMeta.read(tmp_path / "bad")
