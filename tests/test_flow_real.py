"""Simulator flow on a real MuJoCo episode recorded by the collect stage (dm_control cheetah-run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.config import CollectParams, FlowParams, WeightsParams
from pipeline.flow.base import inside_mask
from pipeline.flow.dis import DISBackend
from pipeline.flow.metrics import photometric_error
from pipeline.flow.run import run
from pipeline.flow.simulator import SimulatorBackend
from pipeline.sim.episodes import list_episodes, load_episode


@pytest.fixture(scope="module")
def cheetah(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 20-step cheetah-run episode at 64x64 with depth and segmentation
    (random policy, action repeat 4: visible motion)."""
    from pipeline.collect import collect_task

    folder = tmp_path_factory.mktemp("episodes") / "cheetah-run"
    params = CollectParams(
        tasks=["cheetah-run"],
        episodes_per_task=1,
        episode_steps=20,
        action_repeat={"cheetah-run": 4},
        image_size=64,
        depth=True,
        segmentation=True,
        policy={"kind": "random"},
        workers=1,
        preview_episodes=0,
    )
    collect_task("cheetah-run", params, folder, workers=1)
    return folder


def mean_photometric(frames: np.ndarray, flow: np.ndarray, masks: np.ndarray) -> float:
    """Mean absolute RGB error (0-255) of frame t+1 warped back onto frame t, over ``masks``."""
    errors = [photometric_error(frames[t], frames[t + 1], flow[t])[masks[t]] for t in range(len(flow))]
    return float(np.concatenate(errors).mean())


def test_simulator_flow_warps_frame_t1_onto_frame_t_better_than_zero_flow_and_dis(cheetah: Path) -> None:
    episode = load_episode(list_episodes(cheetah)[0])
    exact = SimulatorBackend().episode_flow(episode)
    assert exact.flow.shape == (20, 2, 64, 64)
    has_geom = episode.segmentation[:-1] >= 0
    assert not exact.valid[~has_geom].any()  # no geom (empty background): no flow
    assert exact.valid[has_geom].mean() > 0.85  # most of what is seen stays visible
    moving = np.hypot(exact.flow[:, 0], exact.flow[:, 1])[exact.valid]
    assert moving.mean() > 0.3  # the test means something only if things move

    mask = exact.valid
    sim_error = mean_photometric(episode.frames, exact.flow, mask)
    zero_error = mean_photometric(episode.frames, np.zeros_like(exact.flow), mask)
    dis_error = mean_photometric(episode.frames, DISBackend().episode_flow(episode).flow, mask)
    assert sim_error < 0.8 * zero_error, (sim_error, zero_error)
    assert sim_error < 0.9 * dis_error, (sim_error, dis_error)


def test_simulator_mask_keeps_only_pixels_that_land_inside_the_image(cheetah: Path) -> None:
    episode = load_episode(list_episodes(cheetah)[0])
    exact = SimulatorBackend().episode_flow(episode)
    assert np.all(inside_mask(exact.flow)[exact.valid])
    assert np.all(exact.flow[:, 0][~exact.valid] == 0) and np.all(exact.flow[:, 1][~exact.valid] == 0)


def test_stage_on_the_real_episode_scores_dis_against_exact_flow(cheetah: Path, tmp_path: Path) -> None:
    sim = run(
        cheetah, tmp_path / "sim", FlowParams(backend="simulator", previews=2, metrics_every=1), WeightsParams()
    ).metrics()
    dis = run(
        cheetah, tmp_path / "dis", FlowParams(backend="dis", previews=2, metrics_every=1), WeightsParams()
    ).metrics()
    assert sim["epe"]["mean"] < 0.01 and dis["epe"]["mean"] > 0.05  # DIS is an estimate, the simulator exact
    assert sim["exact_valid_fraction"] == dis["exact_valid_fraction"] == sim["valid_fraction"]
    assert dis["valid_fraction"] > sim["valid_fraction"]  # DIS masks only pixels leaving the image
    assert (
        sim["photometric"]["flow"]["mean"]
        < dis["photometric"]["flow"]["mean"]
        < dis["photometric"]["zero_flow"]["mean"]
    )
    assert len(list((tmp_path / "dis" / "previews").glob("*.png"))) == 2


@pytest.mark.parametrize("backend", ["simulator", "dis"])
def test_metrics_every_k_measures_exactly_pairs_0_k_2k(cheetah: Path, tmp_path: Path, backend: str) -> None:
    """flow.metrics_every: the errors are those of the sampled pairs, computed here by hand from the written flow."""
    from pipeline.flow.files import read_flow
    from pipeline.flow.metrics import end_point_error

    path = list_episodes(cheetah)[0]
    metrics = run(
        cheetah, tmp_path / "out", FlowParams(backend=backend, previews=0, metrics_every=3), WeightsParams()
    ).metrics()
    flow, valid = read_flow(tmp_path / "out" / path.name)
    exact = SimulatorBackend().episode_flow(load_episode(path))
    sampled = np.arange(0, 20, 3)
    mask = exact.valid[sampled]
    epe = end_point_error(flow[sampled].astype(np.float32), exact.flow[sampled])[mask]
    assert metrics["pairs"] == 20 and metrics["measured_pairs"] == len(sampled) == 7
    assert metrics["epe"]["pixels"] == mask.sum() == metrics["epe_zero_flow"]["pixels"]
    assert metrics["epe"]["mean"] == pytest.approx(epe.mean(), abs=1e-6)
    assert metrics["exact_valid_fraction"] == pytest.approx(mask.mean(), abs=1e-6)
    assert metrics["valid_fraction"] == pytest.approx(valid.mean(), abs=1e-6)  # the written mask: every pair
