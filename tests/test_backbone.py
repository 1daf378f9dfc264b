"""The dual-path backbone and its heads: shapes, dtypes, path separation, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from models.backbone import DualPathBackbone
from models.checkpoint import load_module, save_module
from models.heads import PretrainModel
from models.interaction import INTERACTIONS, GlobalGatedExchange

TINY = dict(frame_stack=3, image_size=16, feature_dim=8, channels=4, depth=3)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _obs(batch: int = 2, k: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3 * k, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("kind", list(INTERACTIONS))
@pytest.mark.parametrize("interaction", [True, False])
def test_shapes_and_dtypes_through_every_head(kind: str, interaction: bool) -> None:
    torch.manual_seed(0)
    model = PretrainModel(
        backbone={**TINY, "interaction": interaction, "interaction_kind": kind}, clip_dim=12, head_hidden=16
    )
    obs = _obs()
    paths = model.backbone.forward_paths(obs)
    assert paths.semantic.shape == paths.motion.shape == paths.fused.shape == (2, 8)
    assert paths.semantic_map.shape == paths.motion_map.shape == (2, 4, 8, 8)
    out = model(obs)
    expected = {
        "clip_image": (2, 12),
        "clip_caption": (2, 12),
        "clip_objects": (2, 12),
        "clip_motion": (2, 12),
        "flow": (2, 2, 16, 16),
        "reward": (2,),
        "fused": (2, 8),
    }
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(v.dtype == torch.float32 for v in out.values())
    assert all(torch.isfinite(v).all() for v in out.values())


def test_uint8_and_float_pixels_give_the_same_features() -> None:
    torch.manual_seed(0)
    backbone = DualPathBackbone(**TINY)
    obs = _obs()
    assert torch.allclose(backbone(obs), backbone(obs.float()), atol=1e-6)
    assert backbone.feature_dim == 8 and backbone(obs).dtype == torch.float32


def test_odd_image_size_and_84px_default() -> None:
    torch.manual_seed(0)
    odd = PretrainModel(backbone={**TINY, "image_size": 15}, clip_dim=4, head_hidden=8)
    assert odd(_obs(size=15))["flow"].shape == (2, 2, 15, 15)
    default = DualPathBackbone()
    assert default(_obs(batch=1, size=84)).shape == (1, 64)
    assert default.num_parameters < 3_000_000  # small enough for CPU


def test_flow_input_is_required_and_used() -> None:
    torch.manual_seed(0)
    backbone = DualPathBackbone(**TINY, flow_input=True)
    obs = _obs()
    with pytest.raises(ValueError, match="flow_input=True"):
        backbone(obs)
    flow = torch.zeros(2, 2, 16, 16)
    a = backbone(obs, flow)
    b = backbone(obs, flow + 3.0)
    assert a.shape == (2, 8) and not torch.allclose(a, b)


def test_bad_obs_shape_is_named() -> None:
    backbone = DualPathBackbone(**TINY)
    with pytest.raises(ValueError, match=r"expected \(B, 9, 16, 16\)"):
        backbone(_obs(k=2))


def test_interaction_switch_separates_the_paths() -> None:
    """The semantic path sees only the current frame unless the paths exchange information."""
    obs = _obs()
    changed = obs.clone()
    changed[:, :6] = 255 - changed[:, :6]  # older frames only
    for interaction, should_differ in ((False, False), (True, True)):
        torch.manual_seed(0)
        backbone = DualPathBackbone(**TINY, interaction=interaction)
        a, b = backbone.forward_paths(obs), backbone.forward_paths(changed)
        assert torch.allclose(a.semantic, b.semantic) is not should_differ
        assert not torch.allclose(a.motion, b.motion)


def test_backbone_checkpoint_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    config = {**TINY, "interaction_kind": "attention"}
    backbone = DualPathBackbone(**config)
    save_module(tmp_path / "backbone", backbone, config, {"stage": "pretrain"})
    loaded, meta = load_module(tmp_path / "backbone")
    assert isinstance(loaded, DualPathBackbone) and meta == {"stage": "pretrain"}
    obs = _obs()
    assert torch.equal(loaded(obs), backbone(obs))
    assert json.loads((tmp_path / "backbone" / "config.json").read_text())["config"] == config


def test_full_model_checkpoint_round_trips(tmp_path) -> None:
    torch.manual_seed(0)
    config = {"backbone": TINY, "clip_dim": 6, "head_hidden": 8}
    model = PretrainModel(**config)
    save_module(tmp_path / "model", model, config)
    loaded, _ = load_module(tmp_path / "model")
    obs = _obs()
    for key, value in model(obs).items():
        assert torch.equal(loaded(obs)[key], value), key


def test_global_exchange_sends_each_path_a_per_channel_message_from_the_other() -> None:
    """s' - s is one value per (sample, channel), and it depends on m only (and the gate on both)."""
    torch.manual_seed(0)
    exchange = GlobalGatedExchange(4)
    s, m = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    s2, m2 = exchange(s, m)
    delta_s, delta_m = s2 - s, m2 - m
    assert torch.allclose(delta_s, delta_s[:, :, :1, :1].expand_as(delta_s)) and delta_s.abs().sum() > 0
    assert torch.allclose(delta_m, delta_m[:, :, :1, :1].expand_as(delta_m)) and delta_m.abs().sum() > 0
    # A message carries the other path's content: moving m's mean changes s' but not m's own message source.
    shifted_s, _ = exchange(s, m + 1.0)
    assert not torch.allclose(shifted_s, s2)
    # Gates start mostly closed (sigmoid(-2) ~ 0.12 per channel) so each path first learns its own task.
    gates = torch.sigmoid(exchange.gates(torch.cat([s.mean((2, 3)), m.mean((2, 3))], dim=1)))
    assert gates.mean() < 0.3


@pytest.mark.parametrize("paths", ["semantic", "motion"])
def test_one_path_ablation_feeds_every_head_from_that_path(paths: str) -> None:
    """A one-path backbone has only that trunk; its vector and map serve every head; what it sees
    is that path's input (the semantic path: the current frame only)."""
    torch.manual_seed(0)
    model = PretrainModel(backbone={**TINY, "paths": paths}, clip_dim=12, head_hidden=16)
    backbone = model.backbone
    assert (backbone.semantic_trunk is None) == (paths == "motion") and (backbone.motion_trunk is None) == (
        paths == "semantic"
    )
    assert not backbone.exchange and backbone.num_parameters < DualPathBackbone(**TINY).num_parameters
    obs = _obs()
    out = backbone.forward_paths(obs)
    assert out.semantic is out.motion and out.semantic_map is out.motion_map and out.fused.shape == (2, 8)
    assert {k: tuple(v.shape) for k, v in model(obs).items()}["flow"] == (2, 2, 16, 16)
    changed = obs.clone()
    changed[:, :6] = 255 - changed[:, :6]  # older frames only
    assert torch.allclose(backbone(obs), backbone(changed)) is (paths == "semantic")


def test_one_path_checkpoint_round_trips_and_bad_paths_are_named(tmp_path) -> None:
    config = {**TINY, "paths": "motion"}
    backbone = DualPathBackbone(**config)
    save_module(tmp_path / "b", backbone, config, {})
    loaded, _ = load_module(tmp_path / "b")
    assert loaded.paths == "motion" and torch.equal(loaded(_obs()), backbone(_obs()))
    with pytest.raises(ValueError, match="paths='both-ish'"):
        DualPathBackbone(**TINY, paths="both-ish")
    with pytest.raises(ValueError, match="flow_input=True feeds the motion path"):
        DualPathBackbone(**TINY, paths="semantic", flow_input=True)


@pytest.mark.parametrize("paths", ["both", "semantic"])
@pytest.mark.parametrize("size", [16, 15])
def test_semantic_stride_halves_the_semantic_maps_and_keeps_every_head(paths: str, size: int) -> None:
    """semantic_stride 2: the semantic map is half the motion map each way (ceil), only the second
    semantic conv strides, the heads and the flow decoder keep their shapes, and the semantic path
    still sees the current frame only (without exchange)."""
    torch.manual_seed(0)
    config = {**TINY, "image_size": size, "paths": paths, "semantic_stride": 2, "interaction": False}
    model = PretrainModel(backbone=config, clip_dim=12, head_hidden=16)
    obs = _obs(size=size)
    out = model.backbone.forward_paths(obs)
    half = -(-size // 2)
    assert out.semantic_map.shape == (2, 4, -(-half // 2), -(-half // 2))
    if paths == "both":
        assert out.motion_map.shape == (2, 4, half, half)
    expected = {
        "clip_image": (2, 12),
        "clip_caption": (2, 12),
        "clip_objects": (2, 12),
        "clip_motion": (2, 12),
        "flow": (2, 2, size, size),
        "reward": (2,),
        "fused": (2, 8),
    }
    assert {k: tuple(v.shape) for k, v in model(obs).items()} == expected
    changed = obs.clone()
    changed[:, :6] = 255 - changed[:, :6]  # older frames only
    assert torch.allclose(model.backbone.forward_paths(changed).semantic, out.semantic)
    second = model.backbone.semantic_trunk[1]
    assert second.stride == (2, 2) and all(layer.stride == (1, 1) for layer in model.backbone.semantic_trunk[2:])


@pytest.mark.parametrize("kind", ["global", "attention"])
def test_semantic_stride_exchanges_across_map_sizes_and_round_trips(kind: str, tmp_path) -> None:
    torch.manual_seed(0)
    config = {**TINY, "semantic_stride": 2, "interaction_kind": kind}
    backbone = DualPathBackbone(**config)
    obs = _obs()
    changed = obs.clone()
    changed[:, :6] = 255 - changed[:, :6]  # older frames: reach the semantic vector only through the exchange
    if kind == "global":  # the attention exchange starts at scale 0 (ReZero), so it passes nothing yet
        assert not torch.allclose(backbone.forward_paths(obs).semantic, backbone.forward_paths(changed).semantic)
    save_module(tmp_path / "b", backbone, config, {})
    loaded, _ = load_module(tmp_path / "b")
    assert loaded.semantic_stride == 2 and torch.equal(loaded(obs), backbone(obs))


def test_checkpoint_without_semantic_stride_rebuilds_the_one_resolution_layout(tmp_path) -> None:
    """Checkpoints written before the options hold no semantic_stride or padding: they load as stride 1, padded."""
    torch.manual_seed(0)
    backbone = DualPathBackbone(**TINY)
    save_module(tmp_path / "b", backbone, dict(TINY), {})
    loaded, _ = load_module(tmp_path / "b")
    assert loaded.semantic_stride == 1 and loaded.semantic_trunk[1].stride == (1, 1)
    assert loaded.padding == 1 and all(
        layer.padding == (1, 1) for layer in loaded.motion_trunk
    )  # nor padding: padded trunks
    assert torch.equal(loaded(_obs()), backbone(_obs()))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"semantic_stride": 3}, "semantic_stride=3: expected 1 or 2"),
        ({"semantic_stride": 2, "depth": 1}, "depth=1 has none"),
        ({"semantic_stride": 2, "interaction_kind": "gated"}, "needs both paths' maps the same size"),
    ],
)
def test_bad_semantic_stride_is_named(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DualPathBackbone(**{**TINY, **config})
    # the gated exchange is fine without it, and a motion-only backbone ignores it
    DualPathBackbone(**{**TINY, "interaction_kind": "gated"})
    DualPathBackbone(**{**TINY, "semantic_stride": 2, "depth": 1, "paths": "motion", "pool": 1})


@pytest.mark.parametrize("paths", ["both", "semantic", "motion"])
@pytest.mark.parametrize("size", [16, 15])
def test_valid_padding_shrinks_the_maps_as_drq_and_keeps_every_head(paths: str, size: int, tmp_path) -> None:
    """padding 0: every trunk conv is valid (DrQ-v2's (H - 3) // 2 + 1 - 2 (depth - 1) a side), the
    heads and the flow decoder keep their output shapes, the map border is recorded, and the
    option survives a checkpoint round trip."""
    torch.manual_seed(0)
    config = {**TINY, "image_size": size, "paths": paths, "padding": 0, "pool": 1}
    model = PretrainModel(backbone=config, clip_dim=12, head_hidden=16)
    obs = _obs(size=size)
    out = model.backbone.forward_paths(obs)
    side = (size - 3) // 2 + 1 - 4  # depth 3: two valid convs after the first, each 2 px narrower
    assert out.semantic_map.shape == out.motion_map.shape == (2, 4, side, side)
    assert model.backbone.map_border == 2 and model.flow.border == 2
    assert all(
        layer.padding == (0, 0)
        for trunk in (model.backbone.semantic_trunk, model.backbone.motion_trunk)
        if trunk is not None
        for layer in trunk
    )
    expected = {
        "clip_image": (2, 12),
        "clip_caption": (2, 12),
        "clip_objects": (2, 12),
        "clip_motion": (2, 12),
        "flow": (2, 2, size, size),
        "reward": (2,),
        "fused": (2, 8),
    }
    assert {k: tuple(v.shape) for k, v in model(obs).items()} == expected
    save_module(tmp_path / "b", model.backbone, config, {})
    loaded, _ = load_module(tmp_path / "b")
    assert loaded.padding == 0 and torch.equal(loaded(obs), model.backbone(obs))


def test_flow_decoder_pads_the_valid_border_back_so_the_flow_stays_on_its_pixels() -> None:
    """An unpadded 84 px trunk's last map (35 x 35) has cell j centred on image pixel 2j + 7. With
    pass-through decoder convs, the decoded value at pixel x must come from the cell over x, not
    from a map stretched over the whole image (which is 3 cells off at x = 75)."""
    model = PretrainModel(backbone={"padding": 0}, clip_dim=4, head_hidden=8)
    decoder = model.flow
    with torch.no_grad():  # conv1: channel 0 through (ReLU keeps the non-negative ramp), conv2 likewise
        for conv in (decoder.conv1, decoder.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
    side = model.backbone.map_size
    assert side == 35
    ramp = torch.arange(side, dtype=torch.float32).expand(1, 32, side, side).contiguous()  # value = column index j
    decoded = decoder(ramp)[0, 0, 0]  # (84,) along x
    x = torch.arange(7, 76, dtype=torch.float32)
    assert (decoded[7:76] - (x - 7) / 2).abs().max() <= 1.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"padding": 2}, "padding=2: expected 1"),
        ({"padding": 0, "image_size": 8}, "image_size=8 is too small for 3 unpadded"),
    ],
)
def test_bad_padding_is_named(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DualPathBackbone(**{**TINY, **config})


@pytest.mark.parametrize("kind", list(INTERACTIONS))
@pytest.mark.parametrize("paths", ["both", "semantic", "motion"])
def test_semantic_channels_narrows_the_semantic_path_only(kind: str, paths: str, tmp_path) -> None:
    """semantic_channels: the semantic trunk (and its map) has that width, the motion trunk keeps
    ``channels``, every exchange kind passes messages between the two widths, every head keeps its
    shape (the flow decoder reads the map of the path it reads), and the checkpoint rebuilds it."""
    torch.manual_seed(0)
    config = {**TINY, "channels": 8, "semantic_channels": 4, "interaction_kind": kind, "paths": paths}
    model = PretrainModel(backbone=config, clip_dim=12, head_hidden=16)
    backbone = model.backbone
    obs = _obs()
    out = backbone.forward_paths(obs)
    if paths != "motion":
        assert all(layer.out_channels == 4 for layer in backbone.semantic_trunk)
        assert out.semantic_map.shape == (2, 4, 8, 8)
    if paths != "semantic":
        assert all(layer.out_channels == 8 for layer in backbone.motion_trunk)
        assert out.motion_map.shape == (2, 8, 8, 8)
    expected = {
        "clip_image": (2, 12),
        "clip_caption": (2, 12),
        "clip_objects": (2, 12),
        "clip_motion": (2, 12),
        "flow": (2, 2, 16, 16),
        "reward": (2,),
        "fused": (2, 8),
    }
    assert {k: tuple(v.shape) for k, v in model(obs).items()} == expected
    if paths == "both":
        assert backbone.num_parameters < DualPathBackbone(**{**TINY, "channels": 8}).num_parameters
        for exchange in backbone.exchange.values():  # residual messages of each path's own width
            s, m = torch.randn(2, 4, 8, 8), torch.randn(2, 8, 8, 8)
            s2, m2 = exchange(s, m)
            assert s2.shape == s.shape and m2.shape == m.shape
    save_module(tmp_path / "b", backbone, config, {})
    loaded, _ = load_module(tmp_path / "b")
    assert loaded.semantic_channels == 4 and torch.equal(loaded(obs), backbone(obs))


def test_global_exchange_between_widths_carries_the_other_paths_content() -> None:
    torch.manual_seed(0)
    exchange = GlobalGatedExchange(4, 8)
    s, m = torch.randn(2, 4, 6, 6), torch.randn(2, 8, 6, 6)
    s2, m2 = exchange(s, m)
    assert not torch.allclose(exchange(s, m + 1.0)[0], s2)  # the semantic map hears the motion one
    assert not torch.allclose(exchange(s + 1.0, m)[1], m2)  # and the other way round


def test_semantic_channels_default_is_channels_and_bad_width_is_named() -> None:
    assert DualPathBackbone(**TINY).semantic_channels == 4
    with pytest.raises(ValueError, match="semantic_channels=0"):
        DualPathBackbone(**TINY, semantic_channels=0)
