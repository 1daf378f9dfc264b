"""The flow stage end to end on synthetic episode files: outputs, metrics, previews, reruns, errors, CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_episodes import damage_crc
from test_flow_backends import quat_z, synthetic_episode

from pipeline.cli import main as cli_main
from pipeline.common.errors import UserError
from pipeline.common.io import sha256_of, write_npz_atomic
from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import FlowResult
from pipeline.flow.dis import DISBackend
from pipeline.flow.run import FlowSummary, run
from pipeline.flow.simulator import SimulatorBackend
from pipeline.sim.episodes import Episode, episode_filename, read_header, save_episode

SIZE = 40


def moving_scene(steps: int, seed: int) -> Episode:
    """A wall drifting right and a near square spinning and sliding left in front of it."""
    n = steps + 1
    rng = np.random.default_rng(seed)
    pos = np.zeros((n, 3, 3))
    quat = np.tile(np.array([1.0, 0, 0, 0]), (n, 3, 1))
    drift = rng.uniform(0.02, 0.04)
    for t in range(n):
        pos[t, 1] = [drift * t, 0.0, 3.0]
        pos[t, 2] = [0.1 - 0.03 * t, 0.02 * t, 1.5]
        quat[t, 2] = quat_z(math.radians(3.0 * t))
    return synthetic_episode(SIZE, pos, quat, [(10.0, 10.0), (0.25, 0.25)])


def write_episodes(folder: Path, lengths: list[int], drop_truth: bool = False, seed_offset: int = 0) -> list[Path]:
    paths = []
    for i, steps in enumerate(lengths):
        episode = moving_scene(steps, seed=i + seed_offset)
        if drop_truth:
            episode.depth = episode.segmentation = None
        path = folder / episode_filename(i)
        save_episode(path, episode)
        paths.append(path)
    return paths


def run_flow(
    episodes: Path,
    out: Path,
    metrics: Path,
    params: FlowParams,
    weights: WeightsParams,
    backend: SimulatorBackend | None = None,
) -> dict:
    """The stage as the CLI runs it: :func:`run`, then its metrics written to ``metrics``."""
    summary = run(episodes, out, params, weights, backend=backend)
    assert isinstance(summary, FlowSummary) and summary.stage == "flow" and summary.out == str(out)
    summary.write_metrics(metrics)
    return summary.metrics()


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Counting(SimulatorBackend):
    """The simulator backend, counting the episodes it computes (and failing on request)."""

    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__()
        self.calls = 0
        self.fail_on = fail_on

    def episode_flow(self, episode: Episode) -> FlowResult:
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        return super().episode_flow(episode)


def test_simulator_stage_writes_the_documented_outputs_deterministically(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [3, 5])
    params = FlowParams(backend="simulator", previews=3)
    metrics = run_flow(episodes, tmp_path / "a", tmp_path / "a.json", params, WeightsParams())

    with np.load(tmp_path / "a" / "episode_000001.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["flow", "meta", "valid"]
        flow, valid, meta = npz["flow"], npz["valid"], json.loads(npz["meta"].item())
    assert flow.shape == (5, 2, SIZE, SIZE) and flow.dtype == np.float16
    assert valid.shape == (5, SIZE, SIZE) and valid.dtype == np.bool_
    assert meta["source"]["backend"]["backend"] == "simulator" and meta["pairs"] == 5
    assert "channel 0 = dx (right" in meta["format"]
    assert 0.5 < valid.mean() < 1.0  # occlusions and pixels leaving the image are masked
    truth = SimulatorBackend().episode_flow(moving_scene(5, seed=1))
    np.testing.assert_allclose(flow.astype(np.float32), truth.flow, atol=0.02)  # float16 of the exact flow
    np.testing.assert_array_equal(valid, truth.valid)

    assert metrics == json.loads((tmp_path / "a.json").read_text())
    assert metrics["pairs"] == 8 and metrics["episodes"] == 2 and metrics["backend"] == "simulator"
    assert metrics["epe"]["mean"] < 0.01  # itself, up to float16 rounding
    assert metrics["epe_zero_flow"]["mean"] > 0.5
    assert metrics["photometric"]["flow"]["mean"] < 0.5 * metrics["photometric"]["zero_flow"]["mean"]
    previews = sorted(p.name for p in (tmp_path / "a" / "previews").glob("*.png"))
    assert previews == [
        "episode_000000_pair00000.png",
        "episode_000001_pair00001.png",
        "episode_000001_pair00004.png",
    ]  # pairs 0, 4, 7 of 8

    run_flow(episodes, tmp_path / "b", tmp_path / "b.json", params, WeightsParams())
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_dis_stage_batches_across_episodes_and_scores_against_exact_flow(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [2, 4, 1])
    params = FlowParams(backend="dis", batch_size=3, previews=2)
    metrics = run_flow(episodes, tmp_path / "out", tmp_path / "m.json", params, WeightsParams())
    alone = DISBackend("medium", batch_size=1)
    for i, steps in enumerate([2, 4, 1]):
        with np.load(tmp_path / "out" / episode_filename(i)) as npz:
            expected = alone.episode_flow(moving_scene(steps, seed=i))
            np.testing.assert_array_equal(npz["flow"], expected.flow.astype(np.float16))
            np.testing.assert_array_equal(npz["valid"], expected.valid)
    assert metrics["backend"] == "dis" and metrics["pairs"] == 7
    assert metrics["epe"]["mean"] < 0.6 * metrics["epe_zero_flow"]["mean"]
    assert metrics["photometric"]["flow"]["mean"] < metrics["photometric"]["zero_flow"]["mean"]
    # previews show the exact flow beside the estimate: 4 tiles instead of 3
    image = next((tmp_path / "out" / "previews").glob("*.png"))
    import cv2

    assert cv2.imread(str(image)).shape[1] > 4 * cv2.imread(str(image)).shape[0] * 0.9


def test_frames_only_episodes_work_with_dis_and_have_no_epe(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [2], drop_truth=True)
    metrics = run_flow(episodes, tmp_path / "out", tmp_path / "m.json", FlowParams(backend="dis"), WeightsParams())
    assert metrics["epe"] is None and metrics["exact_valid_fraction"] is None
    assert metrics["photometric"]["flow"]["pixels"] > 0


def test_simulator_backend_without_depth_fails_before_any_output(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [2])
    write_episodes(tmp_path / "bare", [2], drop_truth=True)
    (tmp_path / "bare" / episode_filename(0)).rename(episodes / episode_filename(1))
    with pytest.raises(
        UserError,
        match=r"(?s)episode_000001.npz: the episode has no depth and segmentation"
        r".*collect\.depth: true and collect\.segmentation: true",
    ):
        run_flow(episodes, tmp_path / "out", tmp_path / "m.json", FlowParams(), WeightsParams())
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "m.json").exists()


def test_rerun_keeps_finished_episodes_and_an_interrupt_leaves_no_partial_file(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [2, 2, 2])
    out, metrics = tmp_path / "out", tmp_path / "m.json"
    params = FlowParams(previews=1)
    with pytest.raises(KeyboardInterrupt):
        run_flow(episodes, out, metrics, params, WeightsParams(), backend=Counting(fail_on=2))
    assert sorted(p.name for p in out.iterdir() if p.name != "previews") == [
        "episode_000000.npz"
    ]  # nothing half-written
    assert not metrics.exists()

    def inodes() -> dict[str, int]:  # an atomic rewrite gives a file a new inode
        return {p.name: p.stat().st_ino for p in sorted(out.glob("episode_*.npz"))}

    kept = inodes()["episode_000000.npz"]
    first = run_flow(episodes, out, metrics, params, WeightsParams())
    after = inodes()
    assert after["episode_000000.npz"] == kept and len(after) == 3  # episode 0 was kept, 1 and 2 computed

    (out / "episode_000007.npz").write_bytes(b"stale")
    assert run_flow(episodes, out, metrics, params, WeightsParams()) == first
    assert inodes() == after  # nothing recomputed
    assert not (out / "episode_000007.npz").exists()

    run_flow(episodes, out, metrics, FlowParams(previews=1, occlusion_tolerance=0.2), WeightsParams())
    # another backend record: all recomputed (each new file is created while the old one still exists)
    assert all(inode != after[name] for name, inode in inodes().items())


def test_no_episodes_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no episode_\*\.npz files; run the collect stage first"):
        run_flow(tmp_path / "empty", tmp_path / "out", tmp_path / "m.json", FlowParams(), WeightsParams())


def test_cli_runs_the_stage_and_reports_bad_input_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [2])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump({"flow": {"backend": "simulator", "previews": 1}}))
    argv = [
        "--params",
        str(params_file),
        "flow",
        "--episodes",
        str(episodes),
        "--out",
        str(tmp_path / "out"),
        "--metrics",
        str(tmp_path / "m" / "flow.json"),
    ]
    assert cli_main(argv) == 0
    assert json.loads((tmp_path / "m" / "flow.json").read_text())["pairs"] == 2
    assert (tmp_path / "out" / "episode_000000.npz").is_file()

    write_episodes(tmp_path / "bare", [2], drop_truth=True)
    argv[argv.index(str(episodes))] = str(tmp_path / "bare")
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "collect.depth: true" in err and "Traceback" not in err


# ---- inputs that do not belong, or that break the schema or the numbers ----------------------


def test_flow_computed_from_another_episode_is_recomputed(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [2, 3])
    out, params = tmp_path / "out", FlowParams(previews=0)
    run(episodes, out, params, WeightsParams())
    fresh = files(out)
    # a flow file copied over another episode's, as a careless copy or a stale folder leaves it
    (out / "episode_000000.npz").write_bytes(fresh["episode_000001.npz"])
    run(episodes, out, params, WeightsParams())
    assert files(out) == fresh
    with np.load(out / "episode_000000.npz") as npz:
        source = json.loads(npz["meta"].item())["source"]
    assert source["episode_sha256"] == sha256_of(episodes / "episode_000000.npz")

    # the episodes collected again with another seed: every flow file names an episode that is gone
    write_episodes(episodes, [2, 3], seed_offset=10)
    before = {p.name: p.stat().st_ino for p in out.glob("episode_*.npz")}
    run(episodes, out, params, WeightsParams())
    assert all(p.stat().st_ino != before[p.name] for p in out.glob("episode_*.npz"))  # all recomputed
    for name in ("episode_000000.npz", "episode_000001.npz"):
        with np.load(out / name) as npz:
            assert json.loads(npz["meta"].item())["source"]["episode_sha256"] == sha256_of(episodes / name)


def test_frames_disagreeing_with_actions_are_refused_before_any_output(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [3, 3])
    bad = moving_scene(3, seed=1)
    arrays = bad.to_arrays()
    arrays["frames"] = arrays["frames"][:-1]  # 3 frames for 3 actions
    write_npz_atomic(episodes / "episode_000001.npz", arrays)
    with pytest.raises(
        UserError,
        match=r"episode_000001\.npz: episode: frames has 3 entries but actions 3.*\n  Fix: rerun the collect stage",
    ):
        run(episodes, tmp_path / "out", FlowParams(), WeightsParams())
    assert not (tmp_path / "out").exists()


def test_a_damaged_episode_found_while_loading_is_named_and_leaves_only_whole_files(tmp_path: Path) -> None:
    episodes = tmp_path / "episodes"
    paths = write_episodes(episodes, [3, 3, 3])
    damage_crc(paths[2])
    read_header(paths[2])  # the zip directory and headers are fine: the damage shows when the frames are read
    out = tmp_path / "out"
    with pytest.raises(
        UserError,
        match=rf"(?s){paths[2]}: unreadable episode file.*(Bad CRC-32 for file 'frames\.npy'|Error -3)"
        r".*rerun the collect stage .*--task synthetic-planes",
    ):
        run(episodes, out, FlowParams(previews=0), WeightsParams())
    assert {p.name for p in out.iterdir()} <= {
        "episode_000000.npz",
        "episode_000001.npz",
    }  # no partial file, no temporary
    for path in out.iterdir():
        with np.load(path) as npz:
            assert npz["flow"].shape == (3, 2, SIZE, SIZE)


class Broken(DISBackend):
    """DIS whose estimate of pair 1 (of the stream) has ``value`` at one pixel."""

    def __init__(self, value: float) -> None:
        super().__init__("fast", batch_size=2)
        self.value, self.seen = value, 0

    def pairs_flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        flow = super().pairs_flow(first, second)
        if self.seen <= 1 < self.seen + len(flow):
            flow[1 - self.seen, 0, 3, 4] = self.value
        self.seen += len(flow)
        return flow


@pytest.mark.parametrize("value", [np.nan, np.inf, 1e6])  # 1e6 px is finite in float32 but inf in float16
def test_non_finite_flow_is_refused_naming_the_episode(tmp_path: Path, value: float) -> None:
    episodes = tmp_path / "episodes"
    write_episodes(episodes, [3])
    out = tmp_path / "out"
    with pytest.raises(
        UserError,
        match=r"(?s)episode_000000\.npz: the flow backend returned non-finite flow .* for pair\(s\) 1 of this episode; "
        r"its flow file was not written.*Fix:",
    ):
        run(episodes, out, FlowParams(backend="dis", previews=0), WeightsParams(), backend=Broken(value))
    assert not list(out.glob("*.npz")) and not list(out.glob(".*"))


def test_exact_flow_is_deflated_and_estimated_flow_stored(tmp_path: Path) -> None:
    import zipfile

    episodes = tmp_path / "episodes"
    write_episodes(episodes, [3])
    methods = {}
    for backend in ("simulator", "dis"):
        run(episodes, tmp_path / backend, FlowParams(backend=backend, previews=0), WeightsParams())
        with zipfile.ZipFile(tmp_path / backend / "episode_000000.npz") as zf:
            methods[backend] = {i.filename: i.compress_type for i in zf.infolist()}
    deflated, stored = zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED
    assert methods["simulator"] == {"flow.npy": deflated, "meta.npy": deflated, "valid.npy": deflated}
    assert methods["dis"] == {
        "flow.npy": stored,
        "meta.npy": deflated,
        "valid.npy": deflated,
    }  # deflate barely shrinks an estimate
    with np.load(tmp_path / "dis" / "episode_000000.npz") as npz:  # still an ordinary .npz
        np.testing.assert_array_equal(
            npz["flow"], DISBackend().episode_flow(moving_scene(3, seed=0)).flow.astype(np.float16)
        )


def test_a_rerun_sweeps_what_a_killed_run_left_in_the_output(tmp_path: Path) -> None:
    """SIGKILL mid-write leaves `.episode_*.npz.XXXXXXXX.tmp` in the output; the next run removes it."""
    episodes, out = tmp_path / "episodes", tmp_path / "out"
    write_episodes(episodes, [2])
    out.mkdir()
    stale = out / ".episode_000000.npz.k1ll3d00.tmp"
    stale.write_bytes(b"half-written")
    run_flow(episodes, out, tmp_path / "m.json", FlowParams(previews=0), WeightsParams())
    assert not stale.exists() and (out / "episode_000000.npz").is_file()
