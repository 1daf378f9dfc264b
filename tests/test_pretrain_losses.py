"""Pretraining losses: values, overfitting one batch, zero weights, the training loop."""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from models.heads import PretrainModel
from pipeline.pretrain.losses import TERMS, alignment, flow_epe, loss_terms, reward_mse, term_weights
from pipeline.pretrain.trainer import make_optimizer, train

TINY = dict(frame_stack=3, image_size=16, feature_dim=8, channels=4, depth=2)
CLIP_DIM = 6


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def make_batch(batch: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text_valid = torch.zeros(batch, dtype=torch.bool)
    text_valid[: batch // 2] = True
    flow_valid = torch.rand(batch, 16, 16, generator=g) > 0.3
    reward_valid = torch.ones(batch, dtype=torch.bool)
    reward_valid[-1] = False
    return {
        "obs": torch.randint(0, 256, (batch, 9, 16, 16), generator=g, dtype=torch.uint8),
        # smooth, like real flow (the decoder upsamples from half resolution)
        "flow": F.interpolate(torch.randn(batch, 2, 4, 4, generator=g) * 2, size=(16, 16), mode="bilinear", align_corners=False),
        "flow_valid": flow_valid,
        "clip_image": F.normalize(torch.randn(batch, CLIP_DIM, generator=g), dim=1),
        "clip_text": F.normalize(torch.randn(batch, 2, CLIP_DIM, generator=g), dim=2) * text_valid[:, None, None],
        "text_valid": text_valid,
        "reward": torch.randn(batch, generator=g),
        "reward_valid": reward_valid,
    }


def only(term: str) -> dict[str, float]:
    return {t: (1.0 if t == term else 0.0) for t in TERMS}


def test_flow_epe_and_reward_values() -> None:
    pred = torch.zeros(1, 2, 2, 2)
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0], target[0, 1] = 3.0, 4.0
    valid = torch.tensor([[[True, True], [False, False]]])
    total, count = flow_epe(pred, target, valid)
    assert count.item() == 2 and total.item() == pytest.approx(10.0)
    total, count = reward_mse(torch.tensor([1.0, 5.0]), torch.tensor([3.0, 0.0]), torch.tensor([True, False]))
    assert (total.item(), count.item()) == (4.0, 1.0)


@pytest.mark.parametrize("kind", ["cosine", "infonce"])
def test_alignment_rewards_matching_and_skips_invalid_rows(kind: str) -> None:
    target = torch.eye(4)
    valid = torch.tensor([True, True, True, False])
    good, n = alignment(target * 5, target, valid, kind, temperature=0.05)
    bad, _ = alignment(target.roll(1, dims=0), target, valid, kind, temperature=0.05)
    assert n.item() == 3
    assert good.item() < 0.01 and bad.item() > 1.0
    # the invalid row contributes nothing, whatever its prediction
    worse_last, _ = alignment(torch.cat([target[:3] * 5, -target[3:]]), target, valid, kind, temperature=0.05)
    assert worse_last.item() == pytest.approx(good.item(), abs=1e-6)
    # zero targets (a frame without annotation) count as invalid too
    _, n_zero = alignment(target, torch.zeros(4, 4), torch.ones(4, dtype=torch.bool), kind, 0.1)
    assert n_zero.item() == 0


def test_infonce_matches_cross_entropy_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(5, 3, generator=g), F.normalize(torch.randn(5, 3, generator=g), dim=1)
    total, count = alignment(pred, target, torch.ones(5, dtype=torch.bool), "infonce", temperature=0.2)
    expected = F.cross_entropy(F.normalize(pred, dim=1) @ target.T / 0.2, torch.arange(5), reduction="sum")
    assert count.item() == 5 and total.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("term", TERMS)
def test_each_loss_decreases_when_overfitting_one_batch(term: str) -> None:
    torch.manual_seed(0)
    model = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=32)
    batch = make_batch()
    optimizer = make_optimizer(model, "adam", 1e-2, 0.0)
    history = train(
        model, iter([batch] * 50), steps=50, optimizer=optimizer, weights=only(term),
        clip_loss="cosine", temperature=0.1, device=torch.device("cpu"), show_progress=False,
    )
    first, last = history[0][term], history[-1][term]
    assert set(history[0]) == {"step", "total", term}
    assert last < 0.6 * first, (term, first, last)


def _grads(model: PretrainModel, weights: dict[str, float], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    model.zero_grad(set_to_none=True)
    out = model(batch["obs"])
    terms = loss_terms(out, batch, weights)
    total = sum(weights[n] * s / c.clamp(min=1) for n, (s, c) in terms.items())
    total.backward()
    return {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}


@pytest.mark.parametrize("term", TERMS)
def test_zero_weight_stops_that_terms_gradient(term: str) -> None:
    torch.manual_seed(0)
    model = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=16)
    batch = make_batch()
    weights = {t: 1.0 for t in TERMS}
    with_term = _grads(model, weights, batch)
    without = _grads(model, {**weights, term: 0.0}, batch)
    alone = _grads(model, only(term), batch)
    head = {"clip_image": "clip_image.", "clip_caption": "clip_caption.", "clip_objects": "clip_objects.", "flow": "flow.", "reward": "reward."}[term]
    for name, grad in without.items():
        if name.startswith(head):
            assert grad is None, name  # the head of a zero-weight term gets no gradient at all
            assert with_term[name] is not None and with_term[name].abs().sum() > 0
    # and the shared backbone's gradient is exactly the sum of the other terms' gradients
    trunk = "backbone.motion_trunk.0.weight" if term in ("flow", "reward") else "backbone.semantic_trunk.0.weight"
    assert not torch.allclose(with_term[trunk], without[trunk])
    assert torch.allclose(with_term[trunk], without[trunk] + alone[trunk], atol=1e-6)


def test_term_weights_share_the_text_weight() -> None:
    assert term_weights(1.0, 0.5, 2.0, 0.1) == {"clip_image": 1.0, "clip_caption": 0.5, "clip_objects": 0.5, "flow": 2.0, "reward": 0.1}


def test_batch_without_annotations_logs_nan_and_trains_the_rest() -> None:
    torch.manual_seed(0)
    model = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=8)
    batch = make_batch()
    batch["text_valid"][:] = False
    batch["clip_text"].zero_()
    history = train(
        model, iter([batch]), steps=1, optimizer=make_optimizer(model, "adamw", 1e-3, 0.01), weights={t: 1.0 for t in TERMS},
        clip_loss="infonce", temperature=0.1, device=torch.device("cpu"), show_progress=False,
    )
    assert math.isnan(history[0]["clip_caption"]) and math.isfinite(history[0]["total"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
