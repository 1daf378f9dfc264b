"""Flow backends on synthetic scenes with known motion: simulator, DIS and ptlflow.

The scenes are textured rectangles (planes) carried by rigid bodies and seen by
a pinhole camera; frames, depth and segmentation are ray-traced exactly, so the
true flow is known in closed form. ``synthetic_episode`` is shared with the
stage tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.episodes import make_episode

from pipeline.common.errors import UserError
from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import inside_mask, pixel_grid
from pipeline.flow.dis import DISBackend
from pipeline.flow.metrics import end_point_error
from pipeline.flow.registry import BACKENDS, make_backend
from pipeline.flow.simulator import SimulatorBackend, quat_to_matrix
from pipeline.sim.episodes import Episode, EpisodeHeader

FOCAL = 60.0
BACKGROUND_DEPTH = 50.0


def intrinsics(size: int) -> np.ndarray:
    c = (size - 1) / 2.0
    return np.array([[FOCAL, 0.0, c], [0.0, FOCAL, c], [0.0, 0.0, 1.0]])


def quat_z(angle: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by ``angle`` radians about +z."""
    return np.array([math.cos(angle / 2), 0.0, 0.0, math.sin(angle / 2)])


def texture(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """Smooth RGB texture (..., 3) uint8 of body-frame coordinates in metres."""
    rng = np.random.default_rng(seed)
    channels = []
    for _ in range(3):
        value = np.zeros_like(x)
        for _ in range(4):
            freq = rng.uniform(6.0, 14.0)
            angle = rng.uniform(0, 2 * np.pi)
            value += np.sin(freq * (np.cos(angle) * x + np.sin(angle) * y) + rng.uniform(0, 2 * np.pi))
        channels.append(127.5 + 30.0 * value)
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def synthetic_episode(
    size: int,
    body_pos: np.ndarray,
    body_quat: np.ndarray,
    half_sizes: list[tuple[float, float]],
    camera_pos: np.ndarray | None = None,
) -> Episode:
    """Ray-trace textured planes; plane ``g`` (geom g) lies in the z = 0 plane of body ``g + 1``.

    Args:
        size: image side in pixels.
        body_pos, body_quat: (T+1, nbody, 3), (T+1, nbody, 4) wxyz; body 0 is the static world.
        half_sizes: half extents (m) of each plane along its body's x and y.
        camera_pos: (T+1, 3) camera centre (camera axes = world axes); zeros by default.
    """
    n, nbody = body_pos.shape[:2]
    camera_pos = np.zeros((n, 3)) if camera_pos is None else camera_pos
    k = intrinsics(size)
    u, v = pixel_grid(size, size)
    rays = np.stack([u, v, np.ones_like(u)], -1).astype(np.float64) @ np.linalg.inv(k).T  # (H, W, 3), z = 1
    frames = np.zeros((n, size, size, 3), np.uint8)
    depth = np.full((n, size, size), BACKGROUND_DEPTH, np.float32)
    seg = np.full((n, size, size), -1, np.int32)
    extrinsics = np.tile(np.eye(4), (n, 1, 1))
    extrinsics[:, :3, 3] = camera_pos
    for t in range(n):
        best = np.full((size, size), np.inf)
        for g, (hx, hy) in enumerate(half_sizes):
            rot = quat_to_matrix(body_quat[t, g + 1])
            normal = rot[:, 2]
            s = ((body_pos[t, g + 1] - camera_pos[t]) @ normal) / (rays @ normal)
            point = camera_pos[t] + rays * s[..., None]
            local = (point - body_pos[t, g + 1]) @ rot  # body-frame coordinates
            hit = (s > 0) & (np.abs(local[..., 0]) <= hx) & (np.abs(local[..., 1]) <= hy) & (s < best)
            best = np.where(hit, s, best)
            seg[t][hit] = g
            depth[t][hit] = s[hit]
            frames[t][hit] = texture(local[..., 0], local[..., 1], seed=g)[hit]
    return make_episode(
        frames,
        body_pos=body_pos,
        body_quat=body_quat,
        camera_extrinsics=extrinsics,
        camera_intrinsics=k,
        geom_body=np.arange(1, len(half_sizes) + 1),
        depth=depth,
        segmentation=seg,
    )


def translating_wall(
    size: int = 64, steps: int = 2, shift_px: tuple[float, float] = (2.0, -1.5), z: float = 2.0
) -> Episode:
    """A large textured wall at depth ``z`` moving by ``shift_px`` pixels per step (flow is exactly that)."""
    n = steps + 1
    pos = np.zeros((n, 2, 3))
    quat = np.tile(np.array([1.0, 0, 0, 0]), (n, 2, 1))
    for t in range(n):
        pos[t, 1] = [t * shift_px[0] * z / FOCAL, t * shift_px[1] * z / FOCAL, z]
    return synthetic_episode(size, pos, quat, [(10.0, 10.0)])


def rotating_wall(size: int = 64, steps: int = 2, degrees: float = 4.0, z: float = 2.0) -> Episode:
    """A large wall at depth ``z`` spinning about the optical axis by ``degrees`` per step."""
    n = steps + 1
    pos = np.zeros((n, 2, 3))
    pos[:, 1, 2] = z
    quat = np.tile(np.array([1.0, 0, 0, 0]), (n, 2, 1))
    for t in range(n):
        quat[t, 1] = quat_z(math.radians(degrees) * t)
    return synthetic_episode(size, pos, quat, [(10.0, 10.0)])


def rotation_flow(size: int, degrees: float) -> np.ndarray:
    """(2, H, W) flow of a rotation by ``degrees`` about the image centre (image axes: x right, y down)."""
    c = (size - 1) / 2.0
    u, v = pixel_grid(size, size)
    a = math.radians(degrees)
    x, y = u - c, v - c
    return np.stack([math.cos(a) * x - math.sin(a) * y - x, math.sin(a) * x + math.cos(a) * y - y])


def sim(episode: Episode, tolerance: float = 0.03):
    return SimulatorBackend(tolerance).episode_flow(episode)


# --------------------------------------------------------------------------- simulator


def test_simulator_translation_is_exact_and_masks_pixels_leaving_the_image() -> None:
    episode = translating_wall(size=32, shift_px=(2.3, -1.7))
    result = sim(episode)
    assert result.flow.shape == (2, 2, 32, 32) and result.flow.dtype == np.float32
    u, v = pixel_grid(32, 32)
    leaving = (u + 2.3 > 31.5) | (v - 1.7 < -0.5)
    assert leaving.sum() == 2 * 32 + 2 * 32 - 4  # two columns on the right, two rows at the top
    np.testing.assert_array_equal(result.valid[0], ~leaving)
    np.testing.assert_allclose(result.flow[0, 0][~leaving], 2.3, atol=1e-4)
    np.testing.assert_allclose(result.flow[0, 1][~leaving], -1.7, atol=1e-4)
    assert np.all(result.flow[0][:, leaving] == 0.0)


def test_simulator_rotation_matches_closed_form() -> None:
    episode = rotating_wall(size=48, degrees=5.0)
    result = sim(episode)
    truth = rotation_flow(48, 5.0)
    mask = result.valid[0]
    assert mask.mean() > 0.9
    assert np.abs(result.flow[0] - truth)[:, mask].max() < 1e-3
    np.testing.assert_array_equal(mask, inside_mask(truth))


def test_simulator_follows_camera_motion_and_flags_occlusion() -> None:
    """A small near square slides right over a static wall while the camera moves up."""
    size, n = 48, 2
    pos = np.zeros((n, 3, 3))
    quat = np.tile(np.array([1.0, 0, 0, 0]), (n, 3, 1))
    pos[:, 1] = [0.0, 0.0, 3.0]  # wall, static
    pos[0, 2] = [0.0, 0.0, 1.5]  # square, moves +0.1 m in x
    pos[1, 2] = [0.1, 0.0, 1.5]
    cam = np.zeros((n, 3))
    cam[1] = [0.0, -0.05, 0.0]  # camera moves up: the scene moves down in the image
    episode = synthetic_episode(size, pos, quat, [(10.0, 10.0), (0.2, 0.2)], camera_pos=cam)
    result = sim(episode)
    seg0, seg1 = episode.segmentation
    wall0 = seg0 == 0
    square0 = seg0 == 1
    valid = result.valid[0]
    # wall: dy = f * 0.05 / 3, square: dx = f * 0.1 / 1.5 and dy = f * 0.05 / 1.5
    np.testing.assert_allclose(result.flow[0, 1][wall0 & valid], FOCAL * 0.05 / 3.0, atol=1e-3)
    np.testing.assert_allclose(result.flow[0, 0][square0 & valid], FOCAL * 0.1 / 1.5, atol=1e-3)
    np.testing.assert_allclose(result.flow[0, 1][square0 & valid], FOCAL * 0.05 / 1.5, atol=1e-3)
    # wall pixels that land under the square in frame t+1 are occluded: invalid
    u, v = pixel_grid(size, size)
    tu = np.clip(np.round(u + result.flow[0, 0]), 0, size - 1).astype(int)
    tv = np.clip(np.round(v + FOCAL * 0.05 / 3.0), 0, size - 1).astype(int)
    square1 = seg1 == 1
    square1_inner = square1.copy()  # eroded by one pixel: away from the square's edge
    square1_inner[1:-1, 1:-1] = np.all(
        [np.roll(np.roll(square1, a, 0), b, 1) for a in (-1, 0, 1) for b in (-1, 0, 1)], axis=0
    )[1:-1, 1:-1]
    covered = wall0 & square1_inner[tv, tu]
    assert covered.sum() > 30  # a band 4 px wide along the square's right side, and 2 px below it
    assert not valid[covered].any()
    # everything else that stays in view is valid, so the mask is not simply "all invalid"
    assert valid[square0].mean() > 0.9
    assert valid[wall0 & ~covered].mean() > 0.9


def test_simulator_marks_background_invalid() -> None:
    size, n = 32, 2
    pos = np.zeros((n, 2, 3))
    pos[:, 1] = [0.0, 0.0, 2.0]
    quat = np.tile(np.array([1.0, 0, 0, 0]), (n, 2, 1))
    episode = synthetic_episode(size, pos, quat, [(0.3, 0.3)])  # small square, sky around it
    result = sim(episode)
    background = episode.segmentation[0] < 0
    assert background.sum() > 100
    assert not result.valid[0][background].any()
    assert result.valid[0][~background].all()
    assert np.all(result.flow[0][:, background] == 0.0)  # invalid pixels carry zero flow
    np.testing.assert_allclose(result.flow[0][:, ~background], 0.0, atol=1e-5)  # static square


def test_simulator_refuses_episodes_without_depth_naming_the_collect_param() -> None:
    def header(*members: str) -> EpisodeHeader:
        return EpisodeHeader(
            Path("ep.npz"), translating_wall(size=8, steps=1).meta, {m: ((2,), np.dtype("f4")) for m in members}
        )

    backend = SimulatorBackend()
    with pytest.raises(UserError, match=r"ep\.npz: the episode has no depth.*\n.*collect\.depth: true"):
        backend.check_episode(header("frames", "segmentation"))
    with pytest.raises(UserError, match=r"collect\.depth: true and collect\.segmentation: true"):
        backend.check_episode(header("frames"))
    backend.check_episode(header("frames", "depth", "segmentation"))
    DISBackend.check_episode(header("frames"))  # image backends need frames only


def test_quaternion_convention_is_wxyz() -> None:
    rot = quat_to_matrix(quat_z(math.pi / 2))
    np.testing.assert_allclose(rot @ [1.0, 0, 0], [0.0, 1.0, 0.0], atol=1e-12)


# --------------------------------------------------------------------------- DIS


def _interior(size: int, border: int) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[border:-border, border:-border] = True
    return mask


def test_dis_recovers_translation_and_rotation() -> None:
    backend = DISBackend("medium", batch_size=4)
    episode = translating_wall(size=64, shift_px=(2.0, -1.5))
    estimate = backend.episode_flow(episode)
    truth = sim(episode)
    inner = _interior(64, 8)
    epe = end_point_error(estimate.flow[0], truth.flow[0])[inner]
    assert epe.mean() < 0.3, epe.mean()
    # the estimate's mask is "lands inside the image"
    np.testing.assert_array_equal(estimate.valid, inside_mask(estimate.flow))

    episode = rotating_wall(size=64, degrees=4.0)
    estimate = backend.episode_flow(episode)
    epe = end_point_error(estimate.flow[0], rotation_flow(64, 4.0))[inner]
    zero = end_point_error(np.zeros_like(estimate.flow[0]), rotation_flow(64, 4.0))[inner]
    assert epe.mean() < 0.3 and zero.mean() > 1.0, (epe.mean(), zero.mean())


def test_registry_builds_each_backend_by_name() -> None:
    assert set(BACKENDS) == {"simulator", "dis", "ptlflow"}
    weights = WeightsParams()
    assert isinstance(make_backend(FlowParams(backend="simulator", occlusion_tolerance=0.1), weights), SimulatorBackend)
    dis = make_backend(FlowParams(backend="dis", dis_preset="fast", batch_size=5), weights)
    assert isinstance(dis, DISBackend) and dis.preset == "fast" and dis.batch_size == 5


# --------------------------------------------------------------------------- ptlflow

PTL_MODEL = "raft_small"


@pytest.fixture(scope="module")
def ptlflow_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ptlflow-format checkpoint file of a randomly initialised raft_small, saved here."""
    import torch

    from pipeline.flow.ptlflow_backend import import_ptlflow

    ptlflow = import_ptlflow()
    torch.manual_seed(123)
    model = ptlflow.get_model(PTL_MODEL)
    path = tmp_path_factory.mktemp("ckpt") / "raft_small_random.ckpt"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": {}}, path)
    return path


def _ptl_backend(source: str, min_size: int = 128, **weights: object):
    from pipeline.flow.ptlflow_backend import PtlflowBackend

    return PtlflowBackend(
        PTL_MODEL, source, WeightsParams(**weights), batch_size=2, device="cpu", fp16=True, min_size=min_size
    )


def test_ptlflow_loads_a_local_checkpoint_and_runs_batched(ptlflow_checkpoint: Path) -> None:
    import torch

    backend = _ptl_backend(str(ptlflow_checkpoint))
    # the weights really came from the file
    saved = torch.load(ptlflow_checkpoint, weights_only=True)["state_dict"]
    name = next(k for k, v in saved.items() if v.dtype.is_floating_point and v.numel() > 100)
    assert torch.equal(backend.net.state_dict()[name].cpu(), saved[name])
    record = backend.describe()
    assert record["model"] == PTL_MODEL and record["precision"] == "fp32"  # fp16 only on CUDA
    assert record["weights"]["random_init"] is False
    assert record["weights"]["sha256"] and record["weights"]["path"] == str(ptlflow_checkpoint)
    json.dumps(record)

    episode = translating_wall(size=64, steps=3)
    result = backend.episode_flow(episode)  # 3 pairs in batches of 2
    assert result.flow.shape == (3, 2, 64, 64) and result.flow.dtype == np.float32
    assert np.isfinite(result.flow).all()
    # batching does not change the answer: the third pair alone gives the same flow
    alone = backend.pairs_flow(episode.frames[2:3], episode.frames[3:4])
    np.testing.assert_allclose(alone[0], result.flow[2], atol=1e-4)
    np.testing.assert_array_equal(result.valid, inside_mask(result.flow))


def test_ptlflow_input_is_bgr_in_unit_range() -> None:
    import torch

    from pipeline.flow.ptlflow_backend import to_ptlflow_images

    first = torch.zeros((1, 2, 3, 3), dtype=torch.uint8)
    first[..., 0] = 255  # pure red
    second = torch.zeros_like(first)
    second[..., 2] = 51  # some blue
    images = to_ptlflow_images(first, second)
    assert images.shape == (1, 2, 3, 2, 3) and images.dtype == torch.float32
    assert torch.all(images[0, 0, 2] == 1.0) and torch.all(images[0, 0, :2] == 0.0)  # red is the last channel
    assert torch.allclose(images[0, 1, 0], torch.tensor(0.2)) and torch.all(images[0, 1, 1:] == 0.0)  # blue first


def test_ptlflow_unknown_model_lists_the_models() -> None:
    from pipeline.flow.ptlflow_backend import PtlflowBackend

    with pytest.raises(UserError, match=r"(?s)not a ptlflow model \(did you mean raft_small .*one of: ccmr") as info:
        PtlflowBackend("raft_smal", "random", WeightsParams(), device="cpu")
    assert "rapidflow" in str(info.value)


def test_ptlflow_missing_checkpoint_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # ptlflow's cache is empty
    cache = tmp_path / "weights"
    with pytest.raises(UserError, match=r"not found.*offline") as info:
        _ptl_backend("things", on_missing="error", cache_dir=str(cache), offline=True)
    message = str(info.value)
    assert str(cache / "things") in message and str(tmp_path / "torch" / "hub" / "checkpoints") in message

    backend = _ptl_backend("things", on_missing="random", cache_dir=str(cache), offline=True)
    provenance = backend.describe()["weights"]
    assert provenance["random_init"] is True and "missing" in provenance["reason"]

    with pytest.raises(UserError, match=r"not a checkpoint tag.*things"):
        _ptl_backend("thingz", on_missing="random", cache_dir=str(cache), offline=True)


def test_ptlflow_finds_a_named_checkpoint_in_the_torch_hub_cache(
    ptlflow_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tag resolves to ptlflow's own cached file name under $TORCH_HOME/hub/checkpoints."""
    from pipeline.flow.ptlflow_backend import import_ptlflow

    url = import_ptlflow().get_model_reference(PTL_MODEL).pretrained_checkpoints["things"]
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / Path(url).name).write_bytes(ptlflow_checkpoint.read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    backend = _ptl_backend("things", on_missing="error", cache_dir=str(tmp_path / "empty"), offline=True)
    provenance = backend.describe()["weights"]
    assert provenance["random_init"] is False and provenance["path"] == str(hub / Path(url).name)


def test_ptlflow_checkpoint_of_another_model_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    bad = tmp_path / "bad.ckpt"
    torch.save({"state_dict": {"not.a.raft.weight": torch.zeros(3)}}, bad)
    with pytest.raises(UserError, match=r"cannot be loaded into ptlflow model 'raft_small'"):
        _ptl_backend(str(bad))


def test_ptlflow_small_frames_are_upsampled_or_refused_clearly(ptlflow_checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    tiny = rng.integers(0, 255, (1, 24, 24, 3), dtype=np.uint8)
    with pytest.raises(UserError, match=r"(?s)24x24 pixels \(model input 24x24\) are too small.*flow.min_size"):
        _ptl_backend(str(ptlflow_checkpoint), min_size=0).pairs_flow(tiny, tiny)
    # at 64 px RAFT's coarsest correlation level is 1 px wide: ptlflow returns NaN, which is refused
    with pytest.raises(UserError, match=r"(?s)non-finite flow.*flow.min_size"):
        _ptl_backend(str(ptlflow_checkpoint), min_size=0).pairs_flow(
            *translating_wall(size=64, steps=1).frames[None].swapaxes(0, 1)
        )
    flow = _ptl_backend(str(ptlflow_checkpoint), min_size=128).pairs_flow(tiny, tiny)
    assert flow.shape == (1, 2, 24, 24) and np.isfinite(flow).all()


def test_ptlflow_upsampled_flow_is_brought_back_to_frame_pixels(ptlflow_checkpoint: Path) -> None:
    """The resize path alone: a stand-in network that answers a constant (3, -2) px at its input size."""
    import torch

    class Constant(torch.nn.Module):
        def forward(self, inputs: dict) -> dict:
            images = inputs["images"]
            self.seen = tuple(images.shape)
            flow = torch.ones((images.shape[0], 1, 2, *images.shape[-2:]))
            return {"flows": flow * torch.tensor([3.0, -2.0]).view(1, 1, 2, 1, 1)}

    backend = _ptl_backend(str(ptlflow_checkpoint), min_size=128)
    backend.net = Constant()
    frames = np.zeros((2, 32, 64, 3), np.uint8)
    flow = backend.pairs_flow(frames, frames)
    assert backend.net.seen == (2, 2, 3, 128, 256)  # shorter side 32 -> 128: factor 4
    np.testing.assert_allclose(flow[:, 0], 0.75, atol=1e-6)
    np.testing.assert_allclose(flow[:, 1], -0.5, atol=1e-6)
