"""Pretraining losses: values, overfitting one batch, zero weights, the training loop."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from models.heads import PretrainModel
from pipeline.dataset.schema import TEXT_ROWS
from pipeline.pretrain.losses import (
    DUPLICATE_DISTANCE,
    FLOW_MOVING_THRESHOLD,
    FLOW_STATIC_SHARE,
    TERMS,
    TEXT_TERMS,
    alignment,
    centre_targets,
    duplicates,
    flow_epe,
    flow_loss,
    flow_weights,
    loss_terms,
    reward_mse,
    term_weights,
)
from pipeline.pretrain.trainer import evaluate_losses, make_optimizer, train

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
        "flow": F.interpolate(
            torch.randn(batch, 2, 4, 4, generator=g) * 2, size=(16, 16), mode="bilinear", align_corners=False
        ),
        "flow_valid": flow_valid,
        "clip_image": F.normalize(torch.randn(batch, CLIP_DIM, generator=g), dim=1),
        "clip_text": F.normalize(torch.randn(batch, len(TEXT_ROWS), CLIP_DIM, generator=g), dim=2)
        * text_valid[:, None, None],
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
        model,
        iter([batch] * 50),
        steps=50,
        optimizer=optimizer,
        weights=only(term),
        clip_loss="cosine",
        temperature=0.1,
        device=torch.device("cpu"),
        show_progress=False,
    )
    first, last = history[0][term], history[-1][term]
    assert set(history[0]) == {"step", "total", "empty_terms", term}
    assert all(r["empty_terms"] == 0 and r["total"] == pytest.approx(r[term]) for r in history)
    assert last < 0.6 * first, (term, first, last)


def _grads(
    model: PretrainModel, weights: dict[str, float], batch: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor | None]:
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
    head = f"{term}."
    for name, grad in without.items():
        if name.startswith(head):
            assert grad is None, name  # the head of a zero-weight term gets no gradient at all
            assert with_term[name] is not None and with_term[name].abs().sum() > 0
    # and the shared backbone's gradient is exactly the sum of the other terms' gradients
    trunk = (
        "backbone.motion_trunk.0.weight"
        if term in ("flow", "reward", "clip_motion")
        else "backbone.semantic_trunk.0.weight"
    )
    assert not torch.allclose(with_term[trunk], without[trunk])
    assert torch.allclose(with_term[trunk], without[trunk] + alone[trunk], atol=1e-6)


def test_text_terms_follow_the_rows_of_clip_npy() -> None:
    """The i-th text term reads clip_text[:, i]: its name must be that row's (schema.TEXT_ROWS), and its
    centre the same field of stats.json (pretrain.run.CLIP_FIELDS)."""
    from pipeline.pretrain.run import CLIP_FIELDS

    assert [t.removeprefix("clip_") for t in TEXT_TERMS] == list(TEXT_ROWS)
    assert [CLIP_FIELDS[t] for t in TEXT_TERMS] == list(TEXT_ROWS) and set(CLIP_FIELDS) == set(TERMS) - {
        "flow",
        "reward",
    }


def test_term_weights_share_the_text_weight() -> None:
    assert term_weights(1.0, 0.5, 2.0, 0.1, 0.3) == {
        "clip_image": 1.0,
        "clip_caption": 0.5,
        "clip_objects": 0.5,
        "clip_motion": 0.3,
        "flow": 2.0,
        "reward": 0.1,
    }
    assert set(term_weights(1.0, 0.5, 2.0, 0.1, 0.3)) == set(TERMS)


def test_batch_without_annotations_counts_the_empty_terms_and_trains_the_rest() -> None:
    torch.manual_seed(0)
    model = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=8)
    batch = make_batch()
    batch["text_valid"][:] = False
    batch["clip_text"].zero_()
    history = train(
        model,
        iter([batch]),
        steps=1,
        optimizer=make_optimizer(model, "adamw", 1e-3, 0.01),
        weights={t: 1.0 for t in TERMS},
        clip_loss="infonce",
        temperature=0.1,
        device=torch.device("cpu"),
        show_progress=False,
    )
    record = history[0]
    assert all(math.isnan(record[t]) for t in ("clip_caption", "clip_objects", "clip_motion"))
    # the total is over the fixed set of active terms: not a silently smaller sum, but NaN, and counted
    assert record["empty_terms"] == 3 and math.isnan(record["total"])
    assert all(math.isfinite(record[t]) for t in ("clip_image", "flow", "reward"))
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- CLIP targets centred on the train mean ------------------------------------------------------


def cone(n: int, dim: int, spread: float, seed: int = 0) -> torch.Tensor:
    """(n, dim) unit vectors in a narrow cone around one fixed direction, like random-CLIP embeddings
    of one dataset; ``seed`` picks the frames."""
    axis = F.normalize(torch.randn(dim, generator=torch.Generator().manual_seed(1234)), dim=0)
    return F.normalize(axis + spread * torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_centred_targets_have_zero_train_mean_unit_norm_and_defeat_a_constant_predictor() -> None:
    train_targets = cone(400, 16, spread=0.03)
    assert (train_targets @ train_targets.T).mean() > 0.98  # nearly identical, as the measured 0.9992
    mean = train_targets.mean(dim=0)
    centred = centre_targets(train_targets, mean)
    torch.testing.assert_close(centred.norm(dim=1), torch.ones(400))
    assert (train_targets - mean).mean(dim=0).abs().max() < 1e-6
    assert centred.mean(dim=0).norm() < 0.15  # unit vectors spread all round: no shared direction left
    # zero rows (no annotation) stay zero, so they are still recognised as missing
    assert centre_targets(torch.zeros(2, 16), mean).abs().sum() == 0

    # the best constant prediction: nearly perfect on raw targets, about chance (1 - 0) once centred
    rows = torch.ones(400, dtype=torch.bool)
    held_out = cone(100, 16, spread=0.03, seed=1)  # same cone, other frames
    raw_best = F.normalize(mean, dim=0).expand(100, -1)
    raw_loss, n = alignment(raw_best, held_out, rows[:100], "cosine", 0.1)
    assert raw_loss.item() / n.item() < 0.01
    centred_best = F.normalize(centred.mean(dim=0), dim=0).expand(100, -1)
    centred_loss, n = alignment(centred_best, held_out, rows[:100], "cosine", 0.1, centre=mean)
    assert centred_loss.item() / n.item() > 0.8
    # and a predictor that knows each frame still scores (near) perfectly
    perfect, n = alignment(centre_targets(held_out, mean), held_out, rows[:100], "cosine", 0.1, centre=mean)
    assert perfect.item() / n.item() < 1e-5


def test_loss_terms_centre_each_clip_term_on_its_own_mean() -> None:
    batch = make_batch()
    mean_image, mean_caption = torch.full((CLIP_DIM,), 0.2), torch.full((CLIP_DIM,), -0.3)
    outputs = {
        "clip_image": centre_targets(batch["clip_image"], mean_image),
        "clip_caption": centre_targets(batch["clip_text"][:, 0], mean_caption),
    }
    weights = {"clip_image": 1.0, "clip_caption": 1.0}
    terms = loss_terms(outputs, batch, weights, centres={"clip_image": mean_image, "clip_caption": mean_caption})
    assert terms["clip_image"][0].item() == pytest.approx(0.0, abs=1e-5) and terms["clip_caption"][
        0
    ].item() == pytest.approx(0.0, abs=1e-5)
    swapped = loss_terms(outputs, batch, weights, centres={"clip_image": mean_caption, "clip_caption": mean_image})
    assert swapped["clip_image"][0].item() > 0.1 and swapped["clip_caption"][0].item() > 0.1


# --- duplicate-aware InfoNCE ----------------------------------------------------------------------


def test_duplicates_are_equal_targets_up_to_float16_rounding() -> None:
    g = torch.Generator().manual_seed(0)
    v = F.normalize(torch.randn(1, 512, generator=g), dim=1)
    nudged = F.normalize(
        v * (1 + 2e-4 * torch.randn(1, 512, generator=g)), dim=1
    )  # float32 noise upstream of the rounding
    stored_twice = torch.cat([v.half().float(), nudged.half().float()])
    near = F.normalize(
        v + 0.05 * F.normalize(torch.randn(1, 512, generator=g), dim=1), dim=1
    )  # cosine ~0.999: another frame
    assert 0.998 < (near @ v.T).item() < 0.9995
    others = torch.cat([stored_twice, near, torch.zeros(1, 512)])
    assert duplicates(v, others).tolist() == [[True, True, False, False]]
    assert (stored_twice[0] - stored_twice[1]).norm() < DUPLICATE_DISTANCE
    assert not duplicates(torch.zeros(1, 512), torch.zeros(1, 512)).any()  # a missing target duplicates nothing


def _captions(copies: int = 4, distinct: int = 4, dim: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct * copies, dim) caption targets, each caption repeated ``copies`` times (interleaved),
    and caption ids."""
    g = torch.Generator().manual_seed(3)
    base = F.normalize(torch.randn(distinct, dim, generator=g), dim=1)
    ids = torch.arange(distinct).repeat(copies)
    return base[ids].half().float(), ids


def test_infonce_perfect_predictor_with_duplicate_captions_reaches_the_minimum() -> None:
    target, ids = _captions()
    n = len(target)
    valid = torch.ones(n, dtype=torch.bool)
    temperature = 0.1
    loss, count = alignment(target.clone(), target, valid, "infonce", temperature)
    perfect = loss.item() / count.item()
    # uninformative prediction (all logits equal): -log(copies / n) = log(4)
    chance = alignment(torch.zeros_like(target), target, valid, "infonce", temperature)[0].item() / n
    assert chance == pytest.approx(math.log(4), rel=1e-5)
    # the minimum possible loss of this batch: log(1 + sum_negatives exp((cos - 1) / T) / copies), about 0 here
    t = F.normalize(target, dim=1)
    cos = t @ t.T
    same = ids[:, None] == ids[None, :]
    minimum = torch.log1p((torch.exp((cos - 1) / temperature) * ~same).sum(1) / same.sum(1)).mean().item()
    assert perfect == pytest.approx(minimum, rel=1e-4, abs=1e-6)
    assert perfect < 0.05 * chance
    # duplicates as negatives (plain cross-entropy) cannot go below log(copies), i.e. not below chance
    plain = F.cross_entropy(t @ t.T / temperature, torch.arange(n)).item()
    assert plain >= math.log(4) - 1e-4


def test_infonce_duplicates_are_positives_not_negatives() -> None:
    target, ids = _captions(copies=3, distinct=3)
    valid = torch.ones(len(target), dtype=torch.bool)
    g = torch.Generator().manual_seed(5)
    pred = torch.randn(len(target), target.shape[1], generator=g, requires_grad=True)
    loss, _ = alignment(pred, target, valid, "infonce", 0.2)
    # by hand: -log(sum over the same caption's rows / sum over all rows), per row
    logits = F.normalize(pred, dim=1) @ F.normalize(target, dim=1).T / 0.2
    same = ids[:, None] == ids[None, :]
    by_hand = -(torch.logsumexp(logits.masked_fill(~same, float("-inf")), 1) - torch.logsumexp(logits, 1)).sum()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    # a perfect prediction's loss does not grow with the number of copies of its caption in the batch
    # (as negatives each copy would add about log(1 + 1/copies)); it only shrinks
    one_each = target[:3]
    row_alone = alignment(one_each, one_each, valid[:3], "infonce", 0.2)[0].item() / 3
    rows = alignment(target, target, valid, "infonce", 0.2)[0].item() / len(target)
    assert rows <= row_alone + 1e-6
    plain = F.cross_entropy(
        F.normalize(target, dim=1) @ F.normalize(target, dim=1).T / 0.2, torch.arange(len(target))
    ).item()
    assert plain > row_alone + math.log(3) - 0.01


def _replay_two_ranks(fn, halves):
    """Run ``fn(half, gather, offset)`` for two simulated DDP ranks: a first pass records what each
    rank gathers (identity gather), the second gives every gather the concatenation over ranks."""
    recorded = [[], []]
    for rank, half in enumerate(halves):
        fn(half, lambda x, r=rank: recorded[r].append(x) or x, 0)
    results = []
    for rank, half in enumerate(halves):
        calls = iter(range(len(recorded[rank])))
        gather = lambda x, c=calls: torch.cat([recorded[0][(k := next(c))], recorded[1][k]])  # noqa: E731
        results.append(fn(half, gather, rank * len(halves[0]["clip_image"])))
    return results


def test_duplicate_aware_infonce_and_flow_weights_split_over_processes_like_one_batch() -> None:
    batch = make_batch(batch=8, seed=2)
    target, _ = _captions(copies=2, distinct=4, dim=CLIP_DIM)
    batch["clip_image"] = target  # duplicates across the two halves
    batch["flow"][4:] = 0.0  # one half static: the flow weights depend on the other half's counts
    g = torch.Generator().manual_seed(7)
    outputs = {"clip_image": torch.randn(8, CLIP_DIM, generator=g), "flow": torch.randn(8, 2, 16, 16, generator=g)}
    weights = {"clip_image": 1.0, "flow": 1.0}
    centres = {"clip_image": target.mean(0) * 0.5}

    def fn(part, gather, offset):
        return loss_terms(part["out"], part, weights, "infonce", 0.2, gather, offset, centres=centres)

    whole = fn({**batch, "out": outputs}, lambda x: x, 0)
    halves = [
        {
            **{k: v[i * 4 : (i + 1) * 4] for k, v in batch.items()},
            "out": {k: v[i * 4 : (i + 1) * 4] for k, v in outputs.items()},
        }
        for i in range(2)
    ]
    parts = _replay_two_ranks(fn, halves)
    for name in weights:
        assert parts[0][name][0].item() + parts[1][name][0].item() == pytest.approx(whole[name][0].item(), rel=1e-5), (
            name
        )
        assert parts[0][name][1].item() + parts[1][name][1].item() == pytest.approx(whole[name][1].item(), rel=1e-6), (
            name
        )


# --- flow loss: moving pixels count ---------------------------------------------------------------


def _square_flow(size: int = 64, side: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 2, size, size) flow: a side x side square moves 1 px right, the rest is still; valid mask; moving mask."""
    target = torch.zeros(1, 2, size, size)
    target[0, 0, :side, :side] = 1.0
    valid = torch.ones(1, size, size, dtype=torch.bool)
    return target, valid, target[:, 0] > 0


def test_flow_loss_makes_a_miss_on_moving_pixels_count() -> None:
    target, valid, moving = _square_flow()
    miss_moving = torch.zeros_like(target)  # right where nothing moves, wrong (1 px) on the 16 moving pixels
    miss_static = target.clone()
    miss_static[:, 0] += 0.1 * ~moving  # right on the moving pixels, 0.1 px off on every static one

    def ratio(fn) -> float:
        (a, na), (b, nb) = fn(miss_moving), fn(miss_static)
        return (a / na).item() / (b / nb).item()

    before = ratio(lambda pred: flow_epe(pred, target, valid))
    after = ratio(lambda pred: flow_loss(pred, target, valid))
    assert before < 0.1  # plain mean EPE: missing the only thing that moves looks 25x *better*
    assert after > 5.0  # now it is much worse
    assert after > 100 * before


@pytest.mark.parametrize("share", [0.0, 0.2, 0.5, 0.9])
def test_flow_weights_bound_the_static_share(share: float) -> None:
    target, valid, moving = _square_flow()
    w = flow_weights(target, valid, static_share=share)
    static_weight = (w * ~moving).sum() / w.sum()
    assert static_weight.item() == pytest.approx(
        share, abs=1e-6
    )  # static pixels outnumber moving ones: the bound binds
    assert (w[moving] == 1).all() and (w <= 1).all()
    # when most pixels move (a tracking camera), static pixels are never up-weighted
    busy = torch.ones(1, 2, 8, 8)
    busy[..., 0, 0] = 0.0
    w_busy = flow_weights(busy, torch.ones(1, 8, 8, dtype=torch.bool), static_share=share)
    assert w_busy[0, 0, 0].item() == (0.0 if share == 0.0 else 1.0) and (w_busy[0].flatten()[1:] == 1).all()


def test_flow_loss_reduces_to_plain_epe_when_asked_or_when_nothing_moves() -> None:
    target, valid, _ = _square_flow()
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(target.shape, generator=g)
    valid = valid & (torch.rand(valid.shape, generator=g) > 0.2)
    for share, tgt in [(1.0, target), (0.5, torch.zeros_like(target)), (0.5, target * FLOW_MOVING_THRESHOLD * 0.99)]:
        weighted, plain = flow_loss(pred, tgt, valid, static_share=share), flow_epe(pred, tgt, valid)
        assert weighted[0].item() == pytest.approx(plain[0].item(), rel=1e-6) and weighted[1].item() == plain[1].item()
    assert FLOW_STATIC_SHARE == 0.5  # the params' default (pipeline/config/pretrain.py) says why


def test_loss_defaults_match_the_params_defaults() -> None:
    from pipeline.config import PretrainParams

    params = PretrainParams()
    assert (params.flow_moving_threshold, params.flow_static_share) == (FLOW_MOVING_THRESHOLD, FLOW_STATIC_SHARE)


def test_validation_losses_average_every_target_once() -> None:
    torch.manual_seed(0)
    model = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=8)
    batches = [make_batch(batch=4, seed=1), make_batch(batch=6, seed=2)]
    weights = {t: 1.0 for t in TERMS}
    result = evaluate_losses(
        model, batches, weights=weights, clip_loss="cosine", temperature=0.1, device=torch.device("cpu")
    )
    with torch.no_grad():
        per_batch = [loss_terms(model(b["obs"]), b, weights) for b in batches]
    for term in TERMS:
        expected = sum(p[term][0] for p in per_batch) / sum(p[term][1] for p in per_batch)
        assert result[term] == pytest.approx(expected.item(), rel=1e-5)
    assert result["total"] == pytest.approx(sum(result[t] for t in TERMS))
    assert model.training  # restored
