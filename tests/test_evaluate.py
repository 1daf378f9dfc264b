"""The evaluate stage end to end at a tiny size, and every refusal before work."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import yaml
from support.processes import assert_workers_die_with_their_parent

from models.backbone import DualPathBackbone
from models.checkpoint import save_module
from pipeline.collect.errors import UnknownTaskError
from pipeline.common import probe as probes
from pipeline.common.errors import UserError
from pipeline.config.evaluate import EvaluateParams
from pipeline.evaluate.backbones import MismatchError, check_backbone, load_backbones
from pipeline.evaluate.run import NotLearningError, run

BACKBONE = dict(frame_stack=2, image_size=24, feature_dim=8, channels=4, depth=2)
# cartpole at action repeat 8: 6 agent steps per episode, 2 training episodes, evaluations at 0, 48 and 96 frames.
TINY = dict(
    tasks=["cartpole-swingup"],
    heldout_episodes=4,
    heldout_frames=64,
    random_inits=1,
    seeds=1,
    frames=96,
    seed_frames=48,
    eval_every_frames=48,
    eval_episodes=1,
    episode_frames=48,
    agent={"batch_size": 8, "hidden_dim": 16},
    probe={"bootstrap": 100, "folds": 3},
    device="cpu",
    threads=1,
    workers=1,
    cache_dir=None,
)


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pretrain-stage output folder holding a small backbone that records its observation."""
    root = tmp_path_factory.mktemp("pretrain")
    torch.manual_seed(7)
    save_module(
        root / "backbone",
        DualPathBackbone(**BACKBONE),
        BACKBONE,
        {"observation": {"action_repeat": {"cartpole-swingup": 8}}},
    )
    return root


def params(**overrides) -> EvaluateParams:
    return EvaluateParams(**{**TINY, **overrides})


def test_tiny_evaluation_writes_report_results_plots_and_dvclive(
    tmp_path: Path, backbone: Path, torch_one_thread
) -> None:
    summary = run(backbone, tmp_path / "eval", params())
    out = tmp_path / "eval"
    results = json.loads((out / "results.json").read_text())
    assert set(results["probe"]["cartpole-swingup"]["r2"]) == {"pretrained", "random-0"}
    gap = results["probe"]["cartpole-swingup"]["pretrained_minus"]["random-0"]["all"]
    assert gap["ci_low"] <= gap["value"] <= gap["ci_high"] or gap["ci_low"] <= gap["ci_high"]
    arms = {(r["arm"], r["seed"]) for r in results["rl"]}
    assert arms == {("state", 0), ("frozen:pretrained", 0), ("frozen:random-0", 0)}
    assert [p["frames"] for p in results["rl"][0]["curve"]] == [0, 48, 96]  # frames after action repeat
    report = (out / "report.md").read_text()
    assert "after action repeat" in report and "| cartpole-swingup (8) | state |" in report
    assert (out / "plots" / "probe.png").stat().st_size > 0 and (
        out / "plots" / "learning_curves.png"
    ).stat().st_size > 0
    dvclive = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert "probe" in dvclive and "rl" in dvclive
    assert len(list((out / "dvclive" / "plots" / "custom").glob("*.json"))) == 3
    assert summary.probe_gap["cartpole-swingup"]["value"] == pytest.approx(gap["value"])


def test_same_params_give_the_same_bytes(tmp_path: Path, backbone: Path, torch_one_thread) -> None:
    p = params(arms=["probe", "state"])
    run(backbone, tmp_path / "a", p)
    run(backbone, tmp_path / "b", p)
    for name in (
        "results.json",
        "report.md",
        "probe/cartpole-swingup.npz",
        "plots/probe.png",
        "plots/learning_curves.png",
        "dvclive/metrics.json",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_probe_file_gives_back_every_probe_number_exactly(tmp_path: Path, backbone: Path, torch_one_thread) -> None:
    """Re-analysis starts from ``probe/<task>.npz``: the stage's own statistics on it reproduce results.json,
    through the import path README gives (``pipeline.probe``)."""
    from pipeline import probe as readme_probes

    run(backbone, tmp_path / "eval", params(arms=["probe"], random_inits=2))
    recorded = json.loads((tmp_path / "eval" / "results.json").read_text())["probe"]["cartpole-swingup"]
    assert readme_probes.read_probe_file is probes.read_probe_file
    oofs, weights = readme_probes.read_probe_file(tmp_path / "eval" / "probe" / "cartpole-swingup.npz")
    assert list(oofs) == ["pretrained", "random-0", "random-1"] and weights.shape == (100, 4)
    assert {n: list(o.alphas) for n, o in oofs.items()} == recorded["alphas"]
    for group in probes.GROUPS:
        for name, oof in oofs.items():
            assert probes.r2_with_ci(oof, group, weights).as_dict() == recorded["r2"][name][group]
        for name in ("random-0", "random-1"):
            assert (
                probes.paired_difference(oofs["pretrained"], oofs[name], group, weights).as_dict()
                == recorded["pretrained_minus"][name][group]
            )


def test_unknown_task_is_refused_before_work(tmp_path: Path, backbone: Path) -> None:
    with pytest.raises(UnknownTaskError, match="cartpole-swingup"):
        run(backbone, tmp_path / "eval", params(tasks=["cartpol-swingup"]))
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"image_size": 32}, "image size: backbone 24 px, evaluation 32 px"),
        ({"frame_stack": 3}, "frame stack: backbone 2 frames, evaluation 3"),
        (
            {"action_repeat": {"cartpole-swingup": 4}},
            "action repeat: backbone pretrained at 8, evaluation of cartpole-swingup uses 4",
        ),
    ],
)
def test_a_backbone_that_does_not_match_the_task_is_refused_before_work(
    tmp_path: Path, backbone: Path, overrides: dict, message: str
) -> None:
    with pytest.raises(MismatchError, match=message.replace("(", r"\(")):
        run(backbone, tmp_path / "eval", params(**overrides))
    assert not (tmp_path / "eval").exists()


def test_allowed_mismatch_warns_and_is_recorded(backbone: Path) -> None:
    [b] = load_backbones(backbone, random_inits=0, checkpoints=[], seed=0, device=torch.device("cpu"))
    check_backbone(b, "cartpole-swingup", image_size=24, frame_stack=2, action_repeat=2, allow_mismatch=True)
    assert b.warnings and "action repeat" in b.warnings[0] and b.provenance()["warnings"] == b.warnings


def test_a_state_arm_that_does_not_learn_stops_the_stage(tmp_path: Path, backbone: Path, torch_one_thread) -> None:
    with pytest.raises(NotLearningError, match="min_final_return = 900"):
        run(backbone, tmp_path / "eval", params(arms=["state", "frozen"], min_final_return=900.0))
    assert not (tmp_path / "eval").exists()


def test_random_inits_are_seeded_and_distinct(backbone: Path) -> None:
    a = load_backbones(backbone, random_inits=2, checkpoints=[], seed=5, device=torch.device("cpu"))
    b = load_backbones(backbone, random_inits=2, checkpoints=[], seed=5, device=torch.device("cpu"))
    weights = [next(x.module.parameters()).detach() for x in a]
    assert torch.equal(weights[1], next(b[1].module.parameters()).detach())
    assert not torch.equal(weights[1], weights[2]) and not torch.equal(weights[0], weights[1])


def test_the_pixel_finetune_arm_runs_when_asked(tmp_path: Path, backbone: Path, torch_one_thread) -> None:
    from pipeline.config.finetune import FinetuneParams

    pixel = FinetuneParams(batch_size=8, hidden_dim=16, device="cpu", threads=1)
    run(
        backbone,
        tmp_path / "eval",
        params(arms=["finetune"], frames=48, seed_frames=24, eval_every_frames=24),
        finetune=pixel,
    )
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {r["arm"] for r in results["rl"]} == {"finetune:pretrained", "finetune:scratch"}
    assert [p["frames"] for p in results["rl"][0]["curve"]] == [0, 24, 48]


def test_a_rerun_reads_finished_runs_and_retrains_when_what_they_depend_on_changes(
    tmp_path: Path, backbone: Path, torch_one_thread, monkeypatch
) -> None:
    from pipeline.evaluate.group import GroupWorkspace
    from pipeline.evaluate.workspace import VectorWorkspace

    p = params(arms=["state", "frozen"], cache_dir=str(tmp_path / "cache"))
    run(backbone, tmp_path / "a", p)
    assert len(list((tmp_path / "cache").glob("*.json"))) == 3  # state, frozen:pretrained, frozen:random-0

    def no_training(self):
        raise AssertionError("trained a run that had finished before")

    monkeypatch.setattr(VectorWorkspace, "train", no_training)
    monkeypatch.setattr(GroupWorkspace, "train", no_training)
    run(
        backbone, tmp_path / "b", p.model_copy(update={"workers": 2, "random_inits": 1, "min_final_return": -1.0})
    )  # scheduling only
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
    with pytest.raises(AssertionError, match="finished before"):  # another learning rate is another run
        run(backbone, tmp_path / "c", p.model_copy(update={"agent": p.agent.model_copy(update={"lr": 3e-4})}))
    with pytest.raises(AssertionError, match="finished before"):  # trained alone, not in its group: another run
        run(backbone, tmp_path / "d", p.model_copy(update={"group_by": "run"}))
    with pytest.raises(AssertionError, match="finished before"):  # a group with another member: trained again
        run(backbone, tmp_path / "e", p.model_copy(update={"seeds": 2}))


def test_runs_in_worker_processes_report_progress_each_under_its_own_name(
    tmp_path: Path, backbone: Path, capfd, caplog
) -> None:
    """Spawned workers start with unconfigured logging; their evaluation lines must still reach
    stderr at the parent's level, and say which arm and seed they belong to (several run side by side)."""
    from pipeline.evaluate.arms import job_pool, run_jobs
    from pipeline.evaluate.run import _rl_jobs

    caplog.set_level(logging.INFO)  # the parent's level, passed on to the workers
    section = params(seeds=2, group_by="run")  # one process per run (a group is one unit of work)
    backbones = load_backbones(backbone, random_inits=1, checkpoints=[], seed=0, device=torch.device("cpu"))
    jobs = _rl_jobs("state", section, backbones, {"cartpole-swingup": 8}, 24)
    with job_pool(2) as pool:
        results = run_jobs(jobs, section, pool=pool, device_name="cpu")
        workers = set(pool._processes)
        again = run_jobs(jobs[:1] * 2, section, pool=pool, device_name="cpu")  # a second arm reuses the same processes
        assert set(pool._processes) == workers and len(workers) == 2
    assert [r["job"].seed_index for r in results] == [0, 1]
    assert [r["final_return"] for r in again] == [results[0]["final_return"]] * 2  # same job, same result in any worker
    err = capfd.readouterr().err
    for s in (0, 1):
        assert err.count(f"state on cartpole-swingup seed {s} eval at frame") == 3 + 6 * (s == 0)  # frames 0, 48 and 96
    assert job_pool(1) is None


def test_paired_random_arm_runs_seed_s_on_random_init_s(backbone: Path) -> None:
    from pipeline.evaluate.run import _rl_jobs

    backbones = load_backbones(backbone, random_inits=3, checkpoints=[], seed=0, device=torch.device("cpu"))
    jobs = _rl_jobs("frozen", params(seeds=3, frozen_random="paired"), backbones, {"cartpole-swingup": 8}, 24)
    assert [(j.label, j.backbone, j.seed_index) for j in jobs] == [
        ("frozen:pretrained", "pretrained", 0),
        ("frozen:random", "random-0", 0),
        ("frozen:pretrained", "pretrained", 1),
        ("frozen:random", "random-1", 1),
        ("frozen:pretrained", "pretrained", 2),
        ("frozen:random", "random-2", 2),
    ]
    crossed = _rl_jobs("frozen", params(seeds=2), backbones, {"cartpole-swingup": 8}, 24)
    assert sorted({j.label for j in crossed}) == [
        "frozen:pretrained",
        "frozen:random-0",
        "frozen:random-1",
        "frozen:random-2",
    ]
    assert len(crossed) == 8


def test_the_state_arm_renders_no_frames(backbone: Path) -> None:
    from functools import partial

    from pipeline.collect import make_env
    from pipeline.evaluate.workspace import Schedule, StateObserver, VectorWorkspace

    mk = partial(lambda seed: make_env("cartpole-swingup", image_size=24, action_repeat=8, episode_steps=6, seed=seed))
    ws = VectorWorkspace(
        "cartpole-swingup",
        mk,
        partial(StateObserver, 5),
        params().agent,
        Schedule(48, 48, 48, 1, 48, 8),
        0,
        torch.device("cpu"),
    )
    try:
        result = ws.env.reset(seed=0)
        assert result.frame is None and ws.env.unwrapped.render_frames is False
        assert ws.observer.reset(ws.env, result).shape == (5,)
    finally:
        ws.close()


@pytest.fixture(scope="module")
def recorded_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backbone whose checkpoint records every observation fact, as the pretrain stage writes them."""
    root = tmp_path_factory.mktemp("pretrain_facts")
    torch.manual_seed(7)
    facts = {
        "action_repeat": {"cartpole-swingup": 8},
        "image_size": 24,
        "camera": {"cartpole-swingup": 0},
        "render_mode": {"cartpole-swingup": "fast"},
        "frame_stack": 2,
    }
    save_module(root / "backbone", DualPathBackbone(**BACKBONE), BACKBONE, {"observation": facts})
    return root


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"render_mode": "faithful"},
            "render mode: backbone pretrained on 'fast' frames, evaluation of cartpole-swingup uses 'faithful'",
        ),
        ({"camera": 1}, "camera: backbone pretrained on camera 0, evaluation of cartpole-swingup uses camera 1"),
    ],
)
def test_a_backbone_rendered_otherwise_is_refused_before_work(
    tmp_path: Path, recorded_backbone: Path, overrides: dict, message: str
) -> None:
    with pytest.raises(MismatchError, match=message) as info:
        run(recorded_backbone, tmp_path / "eval", params(**overrides))
    assert "evaluate.allow_mismatch: true" in str(info.value)
    assert not (tmp_path / "eval").exists()


def test_an_allowed_render_mode_mismatch_is_recorded_for_the_pretrained_backbone_only(recorded_backbone: Path) -> None:
    pretrained, random = load_backbones(
        recorded_backbone, random_inits=1, checkpoints=[], seed=0, device=torch.device("cpu")
    )
    for b in (pretrained, random):
        check_backbone(
            b,
            "cartpole-swingup",
            image_size=24,
            frame_stack=2,
            action_repeat=8,
            camera=0,
            render_mode="faithful",
            allow_mismatch=True,
        )
    assert (
        len(pretrained.warnings) == 1 and "render mode: backbone pretrained on 'fast' frames" in pretrained.warnings[0]
    )
    assert random.warnings == []  # a random initialisation was pretrained on nothing
    check_backbone(
        pretrained,
        "cartpole-swingup",
        image_size=24,
        frame_stack=2,
        action_repeat=8,
        camera=0,
        render_mode="fast",
        allow_mismatch=False,
    )


def test_the_finetune_arm_is_checked_before_any_work(
    tmp_path: Path, recorded_backbone: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.config.finetune import FinetuneParams
    from pipeline.evaluate import run as evaluate_run
    from pipeline.evaluate.arms import finetune_params
    from pipeline.finetune.encoder import read_spec
    from pipeline.finetune.run import check_observation

    def no_work(*args, **kwargs):
        raise AssertionError("the probe started before the finetune arm was checked")

    monkeypatch.setattr(evaluate_run, "collect_heldout", no_work)

    pixel = FinetuneParams(batch_size=8, hidden_dim=16, device="cpu", threads=1, render_mode="fast", camera=0)
    with pytest.raises(
        UserError, match="render mode: backbone pretrained on 'fast' frames, [a-z]+ of cartpole-swingup uses 'faithful'"
    ):
        run(recorded_backbone, tmp_path / "eval", params(arms=["finetune"], render_mode="faithful"), finetune=pixel)
    assert not (tmp_path / "eval").exists()
    # The pixel arm sees what the evaluation renders, whatever the finetune section says, and
    # evaluate.allow_mismatch governs it too.
    section = params(arms=["finetune"], render_mode="faithful", camera=1, allow_mismatch=True)
    arm = finetune_params(pixel, section, "cartpole-swingup", 8)
    assert (arm.task, arm.action_repeat, arm.camera, arm.render_mode, arm.allow_mismatch) == (
        "cartpole-swingup",
        8,
        1,
        "faithful",
        True,
    )
    warnings = check_observation(read_spec(recorded_backbone), arm)
    assert any("render mode" in w for w in warnings) and any("camera" in w for w in warnings)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_evaluate_stage_leaves_no_worker_running(tmp_path: Path, backbone: Path) -> None:
    """SIGKILL on `semore evaluate` while its two pool workers train (the state arm of two tasks, runs far
    longer than the wait): the workers end within seconds instead of training on and writing the cache."""
    section = {
        **TINY,
        "tasks": ["cartpole-swingup", "cartpole-balance"],
        "action_repeat": {"cartpole-balance": 8},
        "arms": ["state"],
        "frames": 10_000_000,
        "workers": 2,
        "cache_dir": str(tmp_path / "cache"),
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"evaluate": section}))
    command = [sys.executable, "-m", "pipeline.cli", "--params", str(params), "evaluate", "--backbone", str(backbone)]
    command += ["--out", str(tmp_path / "evaluation"), "--metrics", str(tmp_path / "evaluate.json")]
    assert_workers_die_with_their_parent(command, workers=2, settle_s=5.0)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_swapped_or_corrupted_cache_entries_are_set_aside_and_retrained(
    tmp_path: Path, backbone: Path, torch_one_thread
) -> None:
    """Reliability kind 3: two finished runs' entries swapped (each file holds the other's result), one with a
    NaN return: exit 0 with swapped results before the fix; now each is set aside and its run trains again."""
    p = params(arms=["state", "frozen"], cache_dir=str(tmp_path / "cache"))
    run(backbone, tmp_path / "a", p)
    entries = sorted((tmp_path / "cache").glob("*.json"))
    assert len(entries) == 3
    first, second = (json.loads(e.read_text()) for e in entries[:2])
    entries[0].write_text(json.dumps(second))
    entries[1].write_text(json.dumps(first))
    third = json.loads(entries[2].read_text())
    third["curve"][-1]["return_mean"] = third["final_return"] = float("nan")
    entries[2].write_text(json.dumps(third))
    run(backbone, tmp_path / "b", p)
    assert (tmp_path / "a" / "results.json").read_bytes() == (tmp_path / "b" / "results.json").read_bytes()
    assert sorted(e.name for e in (tmp_path / "cache").glob("*.rejected")) == sorted(
        e.name + ".rejected" for e in entries
    )


def test_a_cache_entry_is_checked_before_it_is_trusted(tmp_path: Path) -> None:
    from pipeline.evaluate.cache import RunCache, code_digest

    cache = RunCache(tmp_path)
    good = {"curve": [{"frames": 0, "return_mean": 1.0, "return_std": 0.0}], "final_return": 1.0, "speed": {}}
    cache.put("k1", good)
    assert cache.get("k1") == good
    bad_curves = [
        [{"frames": 8, "return_mean": 1.0, "return_std": 0.0}],  # not from frame 0
        [{"frames": 0, "return_mean": 1e9, "return_std": 0.0}],  # absurd
        [{"frames": 0, "return_mean": "1.0", "return_std": 0.0}],  # not a number
    ]
    for i, curve in enumerate(bad_curves):
        record = {
            "key": f"b{i}",
            "code": code_digest(),
            **good,
            "curve": curve,
            "final_return": curve[-1]["return_mean"],
        }
        (tmp_path / f"b{i}.json").write_text(json.dumps(record))
        assert cache.get(f"b{i}") is None and (tmp_path / f"b{i}.json.rejected").is_file()
    stale = json.loads((tmp_path / "k1.json").read_text()) | {"code": "0" * 64}  # made by other code
    (tmp_path / "k2.json").write_text(json.dumps(stale | {"key": "k2"}))
    (tmp_path / "k3.json").write_text('{"key": "k3", "cur')  # truncated
    assert cache.get("k2") is None and cache.get("k3") is None
