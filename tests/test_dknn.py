"""Property tests for dknn (Papernot and McDaniel 2018) on Gaussian classes whose answer is known."""

from __future__ import annotations

import torch
from torch import nn

from advbench.api import DetectorEnv, RunContext
from advbench.plugins import lookup
from advbench_detectors.dknn import DeepKnn

CENTRES = torch.tensor([[5.0, 5.0], [15.0, 5.0], [5.0, 15.0]])


def _points(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three well separated classes (std 1, centres 10 apart) in the positive quadrant, as N x 2 x 1 x 1."""
    y = torch.arange(n) % 3
    return (CENTRES[y] + torch.randn(n, 2, generator=gen)).view(n, 2, 1, 1), y


def _victim() -> nn.Module:
    """Identity layer + ReLU (an identity on the positive quadrant), then the nearest-centre classifier:
    logit_c = mu_c . z - |mu_c|^2 / 2."""
    hidden, head = nn.Linear(2, 2), nn.Linear(2, 3)
    with torch.no_grad():
        hidden.weight.copy_(torch.eye(2))
        hidden.bias.zero_()
        head.weight.copy_(CENTRES)
        head.bias.copy_(-0.5 * CENTRES.pow(2).sum(dim=1))
    victim = nn.Sequential(nn.Flatten(), hidden, nn.ReLU(), head).eval()
    for p in victim.parameters():
        p.requires_grad_(False)
    return victim


def _fitted(**options):
    gen = torch.Generator().manual_seed(0)
    train_x, train_y = _points(600, gen)
    calibration, _ = _points(150, gen)
    env = DetectorEnv(victim=_victim(), train_x=train_x, train_y=train_y, num_classes=3)
    ctx = RunContext(device=torch.device("cpu"), batch_size=64, seed=0)
    det = DeepKnn(k=10, max_train=300, **options)
    det.fit(env, calibration, calibration[:0], ctx)
    return det, env, ctx, gen


def test_registered_under_its_name_and_alias():
    assert lookup("detector", "dknn").cls is DeepKnn and lookup("detector", "deep-knn").cls is DeepKnn
    assert DeepKnn.adaptive_gradient == "" and not DeepKnn.needs_adversarial_fit
    assert "Papernot" in DeepKnn.__doc__


def test_benign_inputs_are_credible_and_a_point_in_another_class_with_a_wrong_label_is_not():
    det, env, ctx, gen = _fitted()
    x, y = _points(90, gen)
    # benign: every neighbour in both layers agrees with the true label, as for every calibration point
    credibility = det.p_values(env, x, y)
    assert (credibility == 1.0).all()
    out = det.score(env, x, ctx)
    assert (out.score == 0).all() and not out.flag.any()
    # a point deep in class 1's region claimed as class 0: all 2 x 10 neighbours disagree, no calibration value
    # is that large, so its p-value is 0
    inside_1 = CENTRES[1].view(1, 2, 1, 1).repeat(3, 1, 1, 1)
    assert (det.p_values(env, inside_1, torch.zeros(3, dtype=torch.int64)) == 0).all()
    # ... and its own label is fully credible
    assert (det.p_values(env, inside_1, torch.ones(3, dtype=torch.int64)) == 1).all()


def test_a_point_between_classes_gets_low_credibility_and_is_flagged():
    det, env, ctx, _ = _fitted()
    between = ((CENTRES[0] + CENTRES[1]) / 2).view(1, 2, 1, 1)  # equidistant from classes 0 and 1
    out = det.score(env, between, ctx)
    assert out.score.item() == 1.0 and out.flag.item()  # about half of its neighbours disagree with any label


def test_p_values_are_the_share_of_calibration_values_at_least_as_large():
    det, env, ctx, gen = _fitted(candidate="victim")
    det._calibration = torch.tensor([0.0, 0.0, 1.0, 3.0, 5.0])  # a hand-made calibration set
    torch.testing.assert_close(det._p_value(torch.tensor([0.0, 1.0, 2.0, 5.0, 6.0])),
                               torch.tensor([1.0, 0.6, 0.4, 0.2, 0.0]))


def test_p_values_of_exchangeable_points_are_roughly_uniform():
    """With overlapping classes the calibration non-conformities spread out; fresh benign inputs then get
    p-values whose distribution is close to uniform (conformal prediction's guarantee): about 20% below 0.2."""
    gen = torch.Generator().manual_seed(1)
    n = 900
    y = torch.arange(n) % 3
    x = (CENTRES[y] / 5 + torch.randn(n, 2, generator=gen)).abs().view(n, 2, 1, 1)  # centres 2 apart, std 1
    env = DetectorEnv(victim=_victim(), train_x=x[:300], train_y=y[:300], num_classes=3)
    ctx = RunContext(device=torch.device("cpu"), batch_size=128, seed=0)
    det = DeepKnn(k=15, max_train=300, candidate="victim")
    det.fit(env, x[300:600], x[:0], ctx)
    score = det.score(env, x[600:], ctx).score
    credibility = 1 - score
    assert 0.1 < (credibility <= 0.2).float().mean() < 0.3
    assert 0.4 < (credibility <= 0.5).float().mean() < 0.62
    assert det.score(env, x[600:], ctx).flag.float().mean() <= 0.1  # about fpr (ties make it lower)
