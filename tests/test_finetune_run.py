"""Finetune stage, end to end on a real dm_control task: outputs, determinism, resuming, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from models.backbone import DualPathBackbone
from models.checkpoint import load_module, save_module
from pipeline.cli import main
from pipeline.config.finetune import FinetuneParams
from pipeline.finetune import workspace as trainer
from pipeline.finetune.encoder import BackboneError, build_encoder, read_spec
from pipeline.finetune.run import FinetuneSummary
from pipeline.finetune.run import run as finetune
from pipeline.finetune.sac import SAC

BACKBONE = dict(frame_stack=2, image_size=24, feature_dim=8, channels=4, depth=2)
# 10 agent steps per episode, 3 episodes; updates start after the first episode.
TINY = dict(
    task="cartpole-swingup",
    frames=120,
    action_repeat=4,
    episode_frames=40,
    seed_frames=40,
    batch_size=8,
    hidden_dim=16,
    eval_every_frames=40,
    eval_episodes=1,
    checkpoint_every_frames=40,
    device="cpu",
    threads=1,
)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrain-stage output folder holding a (randomly initialised) backbone checkpoint."""
    root = tmp_path_factory.mktemp("pretrain")
    torch.manual_seed(123)
    save_module(root / "backbone", DualPathBackbone(**BACKBONE), BACKBONE, {"note": "test"})
    return root


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(tmp: Path, backbone: Path, name: str, **overrides) -> FinetuneSummary:
    params = FinetuneParams(**{**TINY, "checkpoint_dir": str(tmp / "ckpt"), **overrides})
    return finetune(
        backbone, tmp / name / "out", params, metrics=tmp / name / "metrics.json", plots=tmp / name / "plots"
    )


def test_stage_cli_runs_a_short_finetune_and_writes_everything(tmp_path: Path, backbone: Path) -> None:
    params = {"finetune": {**TINY, "checkpoint_dir": str(tmp_path / "ckpt")}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, metrics_path, plots = tmp_path / "finetune", tmp_path / "metrics" / "finetune.json", tmp_path / "plots"
    rc = main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "finetune",
            "--backbone",
            str(backbone),
            "--out",
            str(out),
            "--metrics",
            str(metrics_path),
            "--plots",
            str(plots),
        ]
    )
    assert rc == 0

    metrics = json.loads(metrics_path.read_text())
    assert metrics["task"] == "cartpole-swingup" and metrics["encoder_init"] == "pretrained"
    assert metrics["frames"] == 120 and metrics["episodes"] == 3
    assert metrics["updates"] == 21  # one per agent step from frame 40 (step 10) to 120 (step 30)
    assert metrics["eval"]["frames"] == 120 and metrics["eval"]["episodes"] == 1
    assert 0.0 <= metrics["eval"]["return_mean"] <= 10.0  # cartpole rewards are in [0, 1] per frame
    evals = (
        (plots / "plots" / "metrics" / "eval" / "return_mean.tsv").read_text().splitlines()
    )  # DVCLive, step = frames
    assert evals[0] == "step\treturn_mean"
    assert [row.split("\t")[0] for row in evals[1:]] == ["0", "40", "80", "120"]
    assert len((plots / "plots" / "metrics" / "train" / "episode_return.tsv").read_text().splitlines()) == 1 + 3
    assert json.loads((plots / "metrics.json").read_text())["eval"]["return_mean"] == pytest.approx(
        metrics["eval"]["return_mean"], abs=1e-3
    )
    assert (out / "eval_video.gif").read_bytes()[:6] == b"GIF89a"

    # The actor is what the collect stage's checkpoint policy loads.
    policy, meta = load_module(out / "actor")
    assert {
        "task": "cartpole-swingup",
        "action_dim": 1,
        "frame_stack": 2,
        "image_size": 24,
        "action_repeat": 4,
    }.items() <= meta.items()
    obs = torch.randint(0, 256, (3, 6, 24, 24), dtype=torch.uint8)
    action = policy.act(obs)
    assert action.shape == (3, 1) and action.abs().max() <= 1.0


def test_interrupted_run_resumes_to_the_same_state(
    tmp_path: Path, backbone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = run(tmp_path / "a", backbone, "straight")

    # Interrupt the second run after its checkpoint at frame 80 (the 15th update happens at frame 96).
    real_update = SAC.update
    calls = {"n": 0}

    def interrupted(self: SAC, batch: dict) -> dict:
        calls["n"] += 1
        if calls["n"] == 15:
            raise KeyboardInterrupt
        return real_update(self, batch)

    monkeypatch.setattr(SAC, "update", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", backbone, "resumed")
    assert not (tmp_path / "b" / "resumed" / "out").exists()  # nothing half-written
    (checkpoint,) = (tmp_path / "b" / "ckpt").iterdir()
    assert json.loads((checkpoint / "run.json").read_text())["frame"] == 80
    monkeypatch.setattr(SAC, "update", real_update)

    resumed = run(tmp_path / "b", backbone, "resumed")
    assert resumed.timing["env_frames"] == 40  # only the last episode was run again
    assert resumed.metrics() == straight.metrics()
    assert resumed.evals == straight.evals and resumed.train_episodes == straight.train_episodes
    a, b = tmp_path / "a" / "straight" / "out", tmp_path / "b" / "resumed" / "out"
    assert (a / "actor" / "model.safetensors").read_bytes() == (b / "actor" / "model.safetensors").read_bytes()
    assert (a / "eval_video.gif").read_bytes() == (b / "eval_video.gif").read_bytes()
    for name in (
        "metrics.json",
        "plots/metrics/eval/return_mean.tsv",
        "plots/metrics/train/episode_return.tsv",
    ):  # same params, same bytes
        assert (a.parent / "plots" / name).read_bytes() == (b.parent / "plots" / name).read_bytes(), name
    assert (a.parent / "metrics.json").read_bytes() == (b.parent / "metrics.json").read_bytes()

    # More frames continue the same run; a finished run rerun redoes no training.
    again = run(tmp_path / "b", backbone, "again")
    assert again.timing["env_frames"] == 0 and again.metrics() == straight.metrics()


def test_encoder_init_modes_are_one_param_apart(backbone: Path) -> None:
    spec = read_spec(backbone)
    assert spec.frame_stack == 2 and spec.image_size == 24 and spec.folder == backbone / "backbone"
    saved, _ = load_module(backbone / "backbone")
    pretrained = build_encoder(spec, "pretrained")
    torch.manual_seed(0)
    scratch = build_encoder(spec, "scratch")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(pretrained.state_dict()[name], tensor)
    assert not all(torch.equal(scratch.state_dict()[k], v) for k, v in saved.state_dict().items())
    assert type(scratch) is type(saved) and scratch.feature_dim == saved.feature_dim


def test_frozen_run_keeps_the_backbone_weights(tmp_path: Path, backbone: Path) -> None:
    run(tmp_path, backbone, "frozen", encoder_init="frozen", frames=80, video=False)
    policy, meta = load_module(tmp_path / "frozen" / "out" / "actor")
    saved, _ = load_module(backbone / "backbone")
    assert meta["encoder_init"] == "frozen"
    for name, tensor in saved.state_dict().items():
        assert torch.equal(policy.encoder.state_dict()[name], tensor)
    assert not (tmp_path / "frozen" / "out" / "eval_video.gif").exists()


def test_missing_backbone_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="run the pretrain stage first"):
        read_spec(tmp_path / "nothing")
    (tmp_path / "params.yaml").write_text("finetune: {frames: 8}\n")
    rc = main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "finetune",
            "--backbone",
            str(tmp_path / "nothing"),
            "--out",
            str(tmp_path / "o"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "p"),
        ]
    )
    assert rc == 2
    assert not (tmp_path / "o").exists()


def test_bad_params_are_rejected() -> None:
    with pytest.raises(ValueError, match="log_std_min"):
        FinetuneParams(log_std_min=2.0, log_std_max=1.0)
    with pytest.raises(ValueError, match="episode_frames"):
        FinetuneParams(action_repeat=8, episode_frames=4)


def test_run_key_ignores_frames_but_not_what_changes_the_result(backbone: Path) -> None:
    spec = read_spec(backbone)
    base = FinetuneParams(**TINY)
    assert trainer.run_key(base, spec) == trainer.run_key(
        base.model_copy(update={"frames": 10_000, "device": "cuda"}), spec
    )
    assert trainer.run_key(base, spec) != trainer.run_key(base.model_copy(update={"encoder_init": "scratch"}), spec)
    assert trainer.run_key(base, spec) != trainer.run_key(base.model_copy(update={"seed": 1}), spec)
    assert np.all([trainer.derive_seed(0, "train_env", i) != trainer.derive_seed(0, "eval_env", i) for i in range(5)])


def test_a_corrupt_resume_checkpoint_is_set_aside_and_the_run_restarts(
    tmp_path: Path, backbone: Path, caplog: pytest.LogCaptureFixture
) -> None:
    straight = run(tmp_path / "a", backbone, "straight", frames=80, video=False)
    (checkpoint,) = (tmp_path / "a" / "ckpt").iterdir()
    (checkpoint / "agent.pt").write_bytes(b"not a torch file")
    with caplog.at_level("WARNING"):
        again = run(tmp_path / "a", backbone, "again", frames=80, video=False)
    assert "unreadable" in caplog.text and str(checkpoint) in caplog.text
    assert (checkpoint.parent / f"{checkpoint.name}.corrupt-0" / "agent.pt").read_bytes() == b"not a torch file"
    assert again.timing["env_frames"] == 80  # trained from scratch, to the same result
    assert again.metrics() == straight.metrics()
    assert (checkpoint / "agent.pt").is_file()  # a good checkpoint replaces the corrupt one


@pytest.mark.parametrize("damage", ["truncated", "another key", "other code"])
def test_a_checkpoint_that_is_not_this_runs_is_set_aside(
    tmp_path: Path, backbone: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """Reliability kind 3: a truncated run.json (a traceback on every rerun before), a checkpoint copied under
    another run's key, or one made by other code (resumed before): set aside, the run trains afresh."""
    straight = run(tmp_path / "a", backbone, "straight", frames=80, video=False)
    (checkpoint,) = (tmp_path / "a" / "ckpt").iterdir()
    run_json = checkpoint / "run.json"
    if damage == "truncated":
        run_json.write_text(run_json.read_text()[:25])
    elif damage == "another key":
        checkpoint = checkpoint.rename(checkpoint.with_name("0123456789abcdef"))
        monkeypatch.setattr(trainer, "run_key", lambda params, spec: "0123456789abcdef")
        doc = json.loads((checkpoint / "run.json").read_text())
        assert doc["key"] != "0123456789abcdef"
    else:
        import pipeline.finetune.checkpoint as checkpoints

        monkeypatch.setattr(checkpoints, "code_digest", lambda: "0" * 64)
    with caplog.at_level("WARNING"):
        again = run(tmp_path / "a", backbone, "again", frames=80, video=False)
    reason = {"truncated": "unreadable", "another key": "not '0123456789abcdef'", "other code": "other code"}[damage]
    assert reason in caplog.text and (checkpoint.parent / f"{checkpoint.name}.corrupt-0").is_dir()
    assert again.timing["env_frames"] == 80  # trained afresh, to the same result
    assert again.metrics() == straight.metrics()


# --- observation facts: the backbone's pretraining data against this run ----------------------
FACTS = {
    "action_repeat": {"cartpole-swingup": 8},
    "image_size": 24,
    "camera": {"cartpole-swingup": 0},
    "render_mode": {"cartpole-swingup": "fast"},
    "frame_stack": 2,
}


@pytest.fixture(scope="module")
def recorded_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backbone whose checkpoint records its pretraining observations (cartpole at action repeat 8),
    as the pretrain stage writes it."""
    root = tmp_path_factory.mktemp("pretrain_facts")
    torch.manual_seed(123)
    save_module(root / "backbone", DualPathBackbone(**BACKBONE), BACKBONE, {"observation": FACTS})
    return root


def test_action_repeat_defaults_to_the_benchmark_value_of_the_task() -> None:
    assert FinetuneParams().action_repeat == 8  # cartpole-swingup
    assert (
        FinetuneParams(task="cheetah-run").action_repeat == 4
        and FinetuneParams(task="walker-walk", action_repeat=None).action_repeat == 2
    )
    assert FinetuneParams(task="cheetah-run", action_repeat=3).action_repeat == 3


def test_a_backbone_pretrained_at_another_action_repeat_is_refused_before_work(
    tmp_path: Path, recorded_backbone: Path, capsys: pytest.CaptureFixture
) -> None:
    from pipeline.finetune.run import ObservationMismatchError

    with pytest.raises(ObservationMismatchError) as info:
        run(tmp_path, recorded_backbone, "refused")  # TINY acts at action repeat 4
    message = str(info.value)
    assert "action repeat: backbone pretrained at 8, finetune of cartpole-swingup uses 4" in message
    assert "finetune.action_repeat" in message and "finetune.allow_mismatch: true" in message
    assert not (tmp_path / "refused").exists() and not (tmp_path / "ckpt").exists()  # no work, no checkpoint

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"finetune": {**TINY, "render_mode": "faithful", "checkpoint_dir": str(tmp_path / "ckpt")}})
    )
    rc = main(
        [
            "--params",
            str(tmp_path / "params.yaml"),
            "finetune",
            "--backbone",
            str(recorded_backbone),
            "--out",
            str(tmp_path / "o"),
            "--metrics",
            str(tmp_path / "m.json"),
            "--plots",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        rc == 2
        and "render mode: backbone pretrained on 'fast' frames, finetune of cartpole-swingup uses 'faithful'" in err
        and "Traceback" not in err
    )
    assert not (tmp_path / "o").exists()


def test_allow_mismatch_trains_with_a_loud_warning_recorded_in_the_outputs(
    tmp_path: Path, recorded_backbone: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        summary = run(tmp_path, recorded_backbone, "allowed", allow_mismatch=True, frames=40, video=False)
    assert (
        "pretrained at 8, finetune of cartpole-swingup uses 4" in caplog.text
        and "allowed by finetune.allow_mismatch" in caplog.text
    )
    metrics = json.loads((tmp_path / "allowed" / "metrics.json").read_text())
    assert len(metrics["warnings"]) == 1 and "action repeat: backbone pretrained at 8" in metrics["warnings"][0]
    _, meta = load_module(tmp_path / "allowed" / "out" / "actor")
    assert meta["observation_warnings"] == summary.warnings == metrics["warnings"]


def test_a_matching_or_unrecorded_backbone_passes_the_check(recorded_backbone: Path, backbone: Path) -> None:
    from pipeline.finetune.run import check_observation

    assert check_observation(read_spec(recorded_backbone), FinetuneParams(**{**TINY, "action_repeat": 8})) == []
    assert (
        check_observation(read_spec(backbone), FinetuneParams(**TINY)) == []
    )  # an old checkpoint records nothing: accepted as before
    assert trainer.run_key(FinetuneParams(**TINY), read_spec(backbone)) == trainer.run_key(
        FinetuneParams(**TINY, allow_mismatch=True), read_spec(backbone)
    )
