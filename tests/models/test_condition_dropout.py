"""Train-time condition dropout: statistics of the official DropPath scheme, seeding, eval mode."""

from __future__ import annotations

import torch

from animatex_train.models.condition_dropout import ConditionDropout
from animatex_train.models.config import ConditionDropoutConfig

DRAWS = 20_000


def draw_many(batch: int, seed: int = 0) -> torch.Tensor:
    dropout = ConditionDropout(ConditionDropoutConfig()).train()
    g = torch.Generator().manual_seed(seed)
    keeps = []
    for _ in range(DRAWS):
        m = dropout(batch, torch.device("cpu"), g)
        keeps.append(torch.stack([m.local_image, m.pose_images, m.image_tokens, m.all_dropped.float()]))
    return torch.stack(keeps)  # (draws, 4, batch)


def test_single_sample_probabilities_match_closed_form():
    # batch 1: all-dropped w.p. 0.1; all-kept w.p. 0.9 * 0.1 (the keep slot comes after the zero slot);
    # otherwise each condition is dropped w.p. 0.5.
    keeps = draw_many(batch=1)[:, :3, 0]
    dropped = 1 - keeps
    p_rest = 0.9 * 0.9
    assert abs(dropped.mean(0) - (0.1 + p_rest * 0.5)).max() < 0.012  # 0.505 each
    assert abs(dropped.all(1).float().mean() - (0.1 + p_rest * 0.125)) < 0.01  # 0.20125
    assert abs(keeps.all(1).float().mean() - (0.09 + p_rest * 0.125)) < 0.01  # 0.19125


def test_batch_statistics():
    keeps = draw_many(batch=8)
    all_dropped = keeps[:, 3]
    assert abs(all_dropped.mean() - 0.1) < 0.01  # each sample is in the all-zero group w.p. 0.1
    assert torch.all(keeps[:, :3][all_dropped.bool().unsqueeze(1).expand(-1, 3, -1)] == 0)
    # about half the remaining samples lose each condition (n ~ Binomial(8, 0.5), capped by the group size)
    rest = ~all_dropped.bool()
    assert 0.40 < float(1 - keeps[:, 0][rest].mean()) < 0.55


def test_seeded_and_disabled_in_eval_mode():
    dropout = ConditionDropout(ConditionDropoutConfig()).train()
    a = dropout(16, torch.device("cpu"), torch.Generator().manual_seed(3))
    b = dropout(16, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert torch.equal(a.pose_images, b.pose_images) and torch.equal(a.all_dropped, b.all_dropped)
    dropout.eval()
    m = dropout(16, torch.device("cpu"))
    assert m.local_image.eq(1).all() and m.image_tokens.eq(1).all() and not m.all_dropped.any()
    disabled = ConditionDropout(ConditionDropoutConfig(enabled=False)).train()
    assert disabled(16, torch.device("cpu")).pose_images.eq(1).all()
