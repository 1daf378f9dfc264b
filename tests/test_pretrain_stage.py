"""The pretrain stage through its CLI: outputs, determinism, errors, torchrun, and the probe."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from support.datasets import restamp, simulate_inputs, write_synthetic_inputs

from models.backbone import DualPathBackbone
from models.checkpoint import load_module, read_checkpoint_config
from models.heads import PretrainModel
from pipeline.cli import main
from pipeline.config import EncodeParams, WeightsParams
from pipeline.config.pretrain import PretrainParams
from pipeline.encode.run import run as build_dataset
from pipeline.pretrain.losses import TERMS
from pipeline.pretrain.run import backbone_config

TINY = {
    "channels": 4,
    "depth": 2,
    "feature_dim": 8,
    "head_hidden": 16,
    "batch_size": 8,
    "steps": 6,
    "workers": 0,
    "shuffle_buffer": 16,
    "device": "cpu",
}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small dataset written by the encode stage's own code (synthetic episodes, tiny random CLIP)."""
    root = tmp_path_factory.mktemp("pretrain_stage")
    inputs = write_synthetic_inputs(
        root / "inputs", tasks=("cartpole-swingup", "walker-walk"), episodes=3, length=10, size=16, every_k=3
    )
    build_dataset(
        *inputs, root / "dataset", EncodeParams(val_fraction=0.34, shard_maxcount=12, batch_size=16), WeightsParams()
    )
    return root / "dataset"


def write_params(path: Path, **pretrain) -> Path:
    path.write_text(yaml.safe_dump({"pretrain": pretrain}))
    return path


def run_stage(tmp: Path, dataset: Path, params: Path, name: str = "run") -> tuple[int, Path]:
    out = tmp / name
    rc = main(
        [
            "--params",
            str(params),
            "pretrain",
            "--dataset",
            str(dataset),
            "--out",
            str(out / "pretrain"),
            "--metrics",
            str(out / "metrics.json"),
            "--plots",
            str(out / "plots"),
        ]
    )
    return rc, out


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_stage_writes_checkpoints_metrics_and_curves_deterministically(tmp_path: Path, dataset: Path) -> None:
    params = write_params(
        tmp_path / "params.yaml", **TINY, interaction_kind="attention", weight_clip_motion=1.0
    )  # every term on
    rc, out = run_stage(tmp_path, dataset, params)
    assert rc == 0
    backbone, meta = load_module(out / "pretrain" / "backbone")
    assert isinstance(backbone, DualPathBackbone) and backbone.feature_dim == 8
    assert read_checkpoint_config(out / "pretrain" / "backbone")["config"]["interaction_kind"] == "attention"
    obs = torch.randint(0, 256, (2, 9, 16, 16), dtype=torch.uint8)
    assert backbone(obs).shape == (2, 8) and backbone(obs).dtype == torch.float32
    model, _ = load_module(out / "pretrain" / "model")
    assert isinstance(model, PretrainModel)
    assert torch.equal(model.backbone(obs), backbone(obs))
    assert meta["clip_dim"] == model.clip_dim and meta["params"]["steps"] == 6

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["loss"]) == {"total", *TERMS}
    assert all(isinstance(v, float) for v in metrics["loss"].values())
    assert set(metrics["probe_r2"]) == {"pretrained", "random"}
    assert set(metrics["probe_r2_per_task"]["pretrained"]) == {"cartpole-swingup", "walker-walk"}
    assert metrics["feature_dim"] == 8 and metrics["samples_seen"] == 48

    curve = (out / "plots" / "plots" / "metrics" / "loss" / "flow.tsv").read_text().splitlines()  # DVCLive
    assert curve[0] == "step\tflow" and len(curve) == 7 and curve[1].startswith("1\t")
    # every batch held annotated frames (pretrain.annotated_per_batch), so the total over the fixed terms
    # is logged every step
    assert metrics["empty_term_steps"] == {t: 0 for t in TERMS}
    assert len((out / "plots" / "plots" / "metrics" / "loss" / "total.tsv").read_text().splitlines()) == 7
    assert set(metrics["validation_loss"]) == set(metrics["loss"]) and all(
        isinstance(v, float) for v in metrics["validation_loss"].values()
    )
    # the targets' centring travels with the model: the train split's means from stats.json
    train_clip = json.loads((dataset / "stats.json").read_text())["stats"]["train"]["fields"]["clip.npy"]
    assert meta["targets"]["clip_mean"] == {
        "clip_image": train_clip["image"]["mean"],
        "clip_caption": train_clip["caption"]["mean"],
        "clip_objects": train_clip["objects"]["mean"],
        "clip_motion": train_clip["motion"]["mean"],
    }
    assert str(tmp_path) not in json.dumps(meta)

    rc, again = run_stage(tmp_path, dataset, params, "again")
    assert rc == 0
    assert digests(again) == digests(out)  # same params, same bytes
    rc, other = run_stage(tmp_path, dataset, write_params(tmp_path / "seed1.yaml", **TINY, seed=1), "other")
    assert digests(other)["pretrain/backbone/model.safetensors"] != digests(out)["pretrain/backbone/model.safetensors"]


def test_validation_points_are_logged_and_leave_training_unchanged(tmp_path: Path, dataset: Path) -> None:
    """pretrain.validate_every adds validation-loss points (metrics and DVCLive curves) without
    touching the trajectory: the weights are the same bytes as without them."""
    rc, every = run_stage(tmp_path, dataset, write_params(tmp_path / "every.yaml", **TINY, validate_every=2), "every")
    assert rc == 0
    rc, end = run_stage(tmp_path, dataset, write_params(tmp_path / "end.yaml", **TINY, validate_every=0), "end")
    assert rc == 0
    weights = "pretrain/backbone/model.safetensors"
    assert digests(every)[weights] == digests(end)[weights]
    curve = json.loads((every / "metrics.json").read_text())["validation_curve"]
    assert [r["step"] for r in curve] == [2, 4, 6]
    assert json.loads((end / "metrics.json").read_text())["validation_curve"] == [curve[-1]]
    assert curve[0]["total"] != curve[-1]["total"]
    logged = (every / "plots" / "plots" / "metrics" / "validation" / "total.tsv").read_text().splitlines()
    assert logged[0] == "step\ttotal" and [line.split("\t")[0] for line in logged[1:]] == ["2", "4", "6"]


def test_threads_param_sets_the_torch_thread_count_and_the_metrics_record_it(tmp_path: Path, dataset: Path) -> None:
    assert torch.get_num_threads() == 1  # the torch_one_thread fixture
    rc, out = run_stage(tmp_path, dataset, write_params(tmp_path / "p.yaml", **{**TINY, "steps": 2}, threads=2))
    assert rc == 0 and json.loads((out / "metrics.json").read_text())["threads"] == 2


def test_checkpoints_record_the_datasets_observation_facts(tmp_path: Path) -> None:
    """meta.observation of backbone/ and model/ carries each task's action repeat, camera and render
    mode from the dataset's provenance (here different per task), the frame size and the frame stack."""
    from dataclasses import replace

    from pipeline.sim.episodes import episode_filename, load_episode, save_episode
    from pipeline.sim.observation import ObservationMeta

    inputs = write_synthetic_inputs(
        tmp_path / "inputs", tasks=("cartpole-swingup", "walker-walk"), episodes=2, length=8, size=16, every_k=3
    )
    facts = {
        "cartpole-swingup": {"action_repeat": 8, "camera": 0, "render_mode": "fast"},
        "walker-walk": {"action_repeat": 2, "camera": "side", "render_mode": "faithful"},
    }
    for task, changes in facts.items():
        for i in range(2):
            path = inputs[0] / task / episode_filename(i)
            episode = load_episode(path)
            save_episode(path, replace(episode, meta=replace(episode.meta, **changes)))
            restamp(inputs, task, i)
    build_dataset(
        *inputs, tmp_path / "dataset", EncodeParams(val_fraction=0.5, shard_maxcount=12, batch_size=16), WeightsParams()
    )

    rc, out = run_stage(
        tmp_path, tmp_path / "dataset", write_params(tmp_path / "params.yaml", **{**TINY, "steps": 2}, frame_stack=2)
    )
    assert rc == 0
    expected = {
        "action_repeat": {"cartpole-swingup": 8, "walker-walk": 2},
        "image_size": 16,
        "camera": {"cartpole-swingup": 0, "walker-walk": "side"},
        "render_mode": {"cartpole-swingup": "fast", "walker-walk": "faithful"},
        "frame_stack": 2,
    }
    for folder in ("backbone", "model"):
        assert read_checkpoint_config(out / "pretrain" / folder)["meta"]["observation"] == expected
    recorded = ObservationMeta.read(out / "pretrain" / "backbone")
    assert recorded is not None and recorded.to_dict() == expected
    assert (
        recorded.mismatches(
            "walker-walk",
            who="finetune",
            action_repeat=2,
            camera="side",
            render_mode="faithful",
            image_size=16,
            frame_stack=2,
        )
        == []
    )


def test_missing_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc, out = run_stage(tmp_path, tmp_path / "no-dataset", write_params(tmp_path / "p.yaml", **TINY))
    assert rc == 2
    err = capsys.readouterr().err
    assert "no-dataset': no such folder (run the encode stage first" in err and "Traceback" not in err
    (tmp_path / "empty").mkdir()
    rc, out = run_stage(tmp_path, tmp_path / "empty", write_params(tmp_path / "p.yaml", **TINY))
    assert rc == 2
    assert (
        "empty/stats.json is missing: not a complete semore dataset folder; rebuild the dataset (semore encode)"
        in capsys.readouterr().err
    )
    assert not (out / "pretrain").exists() and not (out / "metrics.json").exists()


def test_batch_must_split_over_processes(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.pretrain import run as run_module
    from pipeline.pretrain.trainer import DistContext

    monkeypatch.setattr(run_module, "distributed_context", lambda device: DistContext(rank=0, world_size=3))
    rc, _ = run_stage(tmp_path, dataset, write_params(tmp_path / "p.yaml", **TINY))
    assert rc == 2 and "pretrain.batch_size = 8 does not split evenly over 3 processes" in capsys.readouterr().err


def test_sparse_annotations_still_give_every_step_its_text_terms(tmp_path: Path) -> None:
    """Every 10th frame annotated: without pretrain.annotated_per_batch some batches of 8 have no caption
    target (NaN text losses, NaN total, counted); with it, none."""
    from support.datasets import write_synthetic_dataset

    write_synthetic_dataset(
        tmp_path / "dataset",
        tasks=("cartpole-swingup",),
        episodes=4,
        steps=19,
        size=16,
        clip_dim=8,
        annotate_every=10,
        shard_maxcount=12,
    )
    runs = {}
    for need in (0, 2):
        rc, out = run_stage(
            tmp_path,
            tmp_path / "dataset",
            write_params(tmp_path / f"p{need}.yaml", **{**TINY, "steps": 8}, annotated_per_batch=need),
            f"n{need}",
        )
        assert rc == 0
        runs[need] = json.loads((out / "metrics.json").read_text())["empty_term_steps"]
    assert runs[0]["clip_caption"] > 0 and runs[0]["clip_image"] == 0
    assert runs[2] == {t: 0 for t in runs[2]}


def test_nproc_relaunches_the_same_command_under_torchrun(tmp_path: Path, dataset: Path) -> None:
    params = write_params(tmp_path / "params.yaml", **{**TINY, "steps": 3}, nproc=2)
    rc, out = run_stage(tmp_path, dataset, params)
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["processes"] == 2 and metrics["samples_seen"] == 24
    backbone, _ = load_module(out / "pretrain" / "backbone")
    assert backbone(torch.zeros(1, 9, 16, 16)).shape == (1, 8)


def test_probe_target_is_the_joint_state_a_frame_shows(dataset: Path) -> None:
    """The diagnostic probe regresses on hinge angles as cos/sin, without the untracked root x
    (pipeline.sim.joint_state), not on raw qpos/qvel; frames of another model are refused by name."""
    from pipeline.common.errors import UserError
    from pipeline.dataset import open_dataset
    from pipeline.pretrain.probe import extract

    shards = open_dataset(dataset).shards["train"]
    backbone = DualPathBackbone(frame_stack=3, image_size=16, feature_dim=8, channels=4, depth=2)
    out = extract(backbone, shards, 3, torch.device("cpu"))
    cartpole, walker = out["cartpole-swingup"][1], out["walker-walk"][1]
    assert cartpole.shape[1] == 5  # cart x, cos and sin of the pole, 2 velocities (raw: 4 values)
    assert walker.shape[1] == 1 + 2 * 7 + 9  # rootz, 7 hinges as cos/sin (rootx left out), 9 velocities (raw: 18)
    np.testing.assert_allclose(cartpole[:, 1] ** 2 + cartpole[:, 2] ** 2, 1.0)
    np.testing.assert_allclose(walker[:, 1] ** 2 + walker[:, 2] ** 2, 1.0)  # rooty, a hinge

    other = write_synthetic_inputs(
        dataset.parent / "misnamed", tasks=("walker.walk",), episodes=1, length=6, size=16, every_k=3
    )
    renamed = dataset.parent / "misnamed-dataset"
    build_dataset(*other, renamed, EncodeParams(val_fraction=0.0, shard_maxcount=12, batch_size=16), WeightsParams())
    import pipeline.pretrain.probe as probe_module

    walker_joints = probe_module.model_joints("walker-walk")
    with pytest.MonkeyPatch.context() as mp:  # frames recorded with 3 qpos values read as walker-walk's (nq 9)
        mp.setattr(probe_module, "model_joints", lambda task: walker_joints)
        with pytest.raises(UserError, match="walker.walk.*nq=9"):
            extract(backbone, open_dataset(renamed).shards["train"], 3, torch.device("cpu"))


def test_probe_beats_the_random_backbone_on_collected_episodes(tmp_path: Path) -> None:
    """collect (dm_control) -> flow (simulator) -> annotate (simulator) -> encode -> pretrain."""
    task = "cartpole-balance"  # the pole falls and swings: the state varies a lot
    collect = {"episodes_per_task": 6, "episode_steps": 40, "action_repeat": {task: 4}, "image_size": 32}
    params, episodes, flow, notes = simulate_inputs(tmp_path, task, collect, 5)
    build_dataset(
        episodes, flow, notes, tmp_path / "dataset", EncodeParams(val_fraction=0.25, shard_maxcount=50), params.weights
    )

    pretrain = {
        "channels": 8,
        "depth": 2,
        "feature_dim": 16,
        "head_hidden": 32,
        "batch_size": 16,
        "steps": 300,
        "lr": 1e-3,
        "workers": 0,
        "shuffle_buffer": 64,
        "device": "cpu",
        "seed": 0,
    }
    rc, out = run_stage(tmp_path, tmp_path / "dataset", write_params(tmp_path / "params.yaml", **pretrain))
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    r2 = metrics["probe_r2"]
    assert r2["pretrained"] > r2["random"] + 0.05, r2
    assert r2["pretrained"] > 0.3, r2
    first_flow = float(
        (out / "plots" / "plots" / "metrics" / "loss" / "flow.tsv").read_text().splitlines()[1].split("\t")[1]
    )
    assert metrics["loss"]["flow"] < first_flow


def test_every_backbone_param_reaches_the_backbone() -> None:
    """Each pretrain param named as a DualPathBackbone argument is carried into the checkpoint's
    config with its value: a new backbone option cannot be declared in params and silently dropped."""
    shared = set(inspect.signature(DualPathBackbone).parameters) & set(PretrainParams.model_fields)
    assert {"channels", "semantic_channels", "semantic_stride", "padding", "paths"} <= shared
    params = PretrainParams(
        channels=8,
        semantic_channels=4,
        semantic_stride=2,
        padding=0,
        paths="semantic",
        interaction=False,
        frame_stack=4,
        feature_dim=16,
        depth=3,
    )
    config = backbone_config(params, SimpleNamespace(image_size=32))
    assert {name: config[name] for name in shared} == {name: getattr(params, name) for name in shared}
    assert config["image_size"] == 32
    DualPathBackbone(**config)  # and it builds
