"""Property tests for lid and mahalanobis on data where the answer is known by construction (issue 13).

LID: the maximum-likelihood estimate of points on a d-dimensional linear subspace is close to d, whatever the
ambient dimension. Mahalanobis: on two Gaussians with a shared covariance the score is the closed-form squared
distance to the nearest mean, and the regression separates benign from scaled-out points as the closed form says.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from advbench.api import DetectorEnv, RunContext
from advbench.metrics import detection_metrics
from advbench.plan import _options
from advbench_detectors.lid import Lid, LidOptions, clean_sources, lid_mle, masked_lid_mle
from advbench_detectors.mahalanobis import Mahalanobis


def _ctx(batch_size: int = 256) -> RunContext:
    return RunContext(device=torch.device("cpu"), batch_size=batch_size, seed=3)


def _subspace(n: int, d: int, ambient: int, seed: int, basis_seed: int = 0) -> torch.Tensor:
    """n Gaussian points on a random d-dimensional linear subspace of R^ambient (float64)."""
    basis, _ = torch.linalg.qr(torch.randn(ambient, d, generator=torch.Generator().manual_seed(basis_seed),
                                           dtype=torch.float64))
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) @ basis.T


# ------------------------------------------------------------------------------ LID


@pytest.mark.parametrize("d,ambient", [(2, 30), (5, 30), (5, 120)])
def test_lid_of_a_linear_subspace_is_its_dimension(d, ambient):
    reference, queries = _subspace(3000, d, ambient, seed=1), _subspace(300, d, ambient, seed=2)
    estimate = lid_mle(torch.cdist(queries, reference), k=20)
    assert abs(estimate.mean().item() - d) < 0.15 * d, estimate.mean()
    # each query against its own random minibatch of 1000: still the subspace's dimension
    allowed = torch.rand(300, 3000, generator=torch.Generator().manual_seed(4)) < 1000 / 3000
    masked = masked_lid_mle(torch.cdist(queries, reference), allowed, k=20)
    assert abs(masked.mean().item() - d) < 0.15 * d, masked.mean()
    assert not torch.equal(masked, estimate)  # the mask changed which neighbours were used


def _flat_victim(ambient: int) -> nn.Module:
    """Layers seen by lid: the input (ambient wide) and a 2-wide linear output."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(ambient, 2)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _images(points: torch.Tensor) -> torch.Tensor:
    return (0.5 + 0.05 * points).float().clamp(0, 1).view(len(points), 1, 1, -1)


def test_lid_detector_finds_the_dimension_and_rises_off_the_subspace():
    d, ambient = 3, 40
    victim = _flat_victim(ambient)
    train = _images(_subspace(600, d, ambient, seed=1))
    env = DetectorEnv(victim, train, torch.zeros(len(train), dtype=torch.int64), 2)
    on = _images(_subspace(120, d, ambient, seed=2))
    off = (on + 0.01 * torch.randn(on.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1)
    det = Lid(k=20, minibatch=100, pool=600)
    det.fit(env, on, off, _ctx())
    lids = det._lids(victim, on)
    assert abs(lids[:, 0].mean().item() - d) < 0.2 * d, lids[:, 0].mean()  # the input layer: the subspace's d
    assert det._lids(victim, off)[:, 0].mean() > 2 * d  # off the subspace the neighbourhood fills more dimensions
    out = det.score(env, torch.cat([on, off]), _ctx())
    m = detection_metrics(out.score[:120], out.score[120:], out.flag[:120], out.flag[120:])
    assert m["auroc"] > 0.95, m


def test_lid_reference_is_drawn_per_input_from_its_content():
    victim = _flat_victim(16)
    train = torch.rand(300, 1, 1, 16, generator=torch.Generator().manual_seed(0))
    env = DetectorEnv(victim, train, torch.zeros(300, dtype=torch.int64), 2)
    det = Lid(k=10, minibatch=50, pool=200)
    x = torch.rand(40, 1, 1, 16, generator=torch.Generator().manual_seed(1))
    det.fit(env, x, (x + 0.1).clamp(0, 1), _ctx())
    allowed = det._allowed(x)
    assert (allowed.sum(1) == 50).all()
    assert len({tuple(row.nonzero().flatten().tolist()) for row in allowed}) == 40  # a draw per input
    assert torch.equal(allowed[7:8], det._allowed(x[7:8]))  # the same input, the same draw, alone or in a batch
    moved = x[7:8].clone()
    moved[0, 0, 0, 0] += 1e-3
    assert not torch.equal(allowed[7:8], det._allowed(moved))
    # a pool image scored itself is left out of its own minibatch (Ma et al. drop a point's own distance)
    own = det._allowed(det._pool[:5])
    assert not own[torch.arange(5), torch.arange(5)].any()
    assert torch.isfinite(det._lids(victim, det._pool[:5])).all()


def test_clean_sources_finds_the_image_each_attack_started_from():
    gen = torch.Generator().manual_seed(0)
    benign = torch.rand(200, 3, 8, 8, generator=gen)
    picked = torch.randperm(200, generator=gen)[:60]
    x = benign[picked]
    linf = (x + (8 / 255) * torch.sign(torch.randn(x.shape, generator=gen))).clamp(0, 1)
    l0 = x.clone().flatten(1)
    l0[:, :20] = 1.0  # a tenth of the features pushed to the maximum, as JSMA does
    l2 = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    for adversarial in (linf, l0.view_as(x), l2):
        assert torch.equal(clean_sources(adversarial, benign), picked)


def test_lid_held_out_reference_comes_from_benign_fit_images_and_leaves_their_attacks_out(monkeypatch):
    victim = _flat_victim(16)
    train = torch.rand(300, 1, 1, 16, generator=torch.Generator().manual_seed(0))
    env = DetectorEnv(victim, train, torch.zeros(300, dtype=torch.int64), 2)
    benign = torch.rand(60, 1, 1, 16, generator=torch.Generator().manual_seed(1))
    adversarial = (benign + 0.02).clamp(0, 1)
    seen = {}
    import advbench_detectors.lid as lid_module
    real_fit = lid_module.fit_logistic

    def spy(fb, fa, c=None):
        seen["benign"], seen["adversarial"] = len(fb), len(fa)
        return real_fit(fb, fa, c=c)

    monkeypatch.setattr(lid_module, "fit_logistic", spy)
    det = Lid(k=10, minibatch=20, pool=500, reference="held-out")
    det.fit(env, benign, adversarial, _ctx())
    assert len(det._pool) == 30  # at most half of the benign fit images
    in_pool = (det._pool.flatten(1)[:, None] == benign.flatten(1)[None]).all(-1).any(0)
    assert int(in_pool.sum()) == 30  # every pool image is a benign fit image, none a training image
    # the regression sees the other benign half and only the attacks whose source is outside the pool
    assert seen == {"benign": 30, "adversarial": 30}
    out = det.score(env, torch.cat([benign[~in_pool], adversarial[~in_pool]]), _ctx())
    assert torch.isfinite(out.score).all()


def test_lid_reference_option_leaves_the_cache_key_alone_at_its_default():
    # caches made before the option existed stay valid: at "training" it is not part of the key
    assert "reference" not in _options(LidOptions())
    assert _options(LidOptions(reference="held-out"))["reference"] == "held-out"
    assert _options(LidOptions())["pool"] == 500


# ------------------------------------------------------------------------------ Mahalanobis

MEANS = torch.tensor([[-4.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
ROOT = torch.tensor([[0.6, 0.0, 0.0, 0.0], [0.2, 0.5, 0.0, 0.0], [0.0, 0.1, 0.4, 0.0], [0.1, 0.0, 0.2, 0.5]],
                    dtype=torch.float64)  # Sigma = ROOT ROOT^T


def _gaussian_victim() -> nn.Module:
    """Penultimate features f = 20 x - 10 (x in [0, 1] maps onto [-10, 10]); no conv block."""
    first = nn.Linear(4, 4)
    with torch.no_grad():
        first.weight.copy_(20 * torch.eye(4))
        first.bias.fill_(-10.0)
    model = nn.Sequential(nn.Flatten(), first, nn.Linear(4, 2)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _draw(n: int, seed: int, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, features): n points per class at mean + scale * ROOT z."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(n)
    f = MEANS[labels] + scale * torch.randn(2 * n, 4, generator=gen, dtype=torch.float64) @ ROOT.T
    return ((f + 10) / 20).float().view(-1, 1, 1, 4), labels, f


def _closed_form(f: torch.Tensor) -> torch.Tensor:
    precision = torch.linalg.inv(ROOT @ ROOT.T)
    diff = f[:, None, :] - MEANS[None]
    return torch.einsum("ncd,de,nce->nc", diff, precision, diff).min(dim=1).values


def test_mahalanobis_score_is_the_closed_form_distance_to_the_nearest_mean():
    train_x, train_y, _ = _draw(4000, seed=0)
    env = DetectorEnv(_gaussian_victim(), train_x, train_y, 2)
    det = Mahalanobis(layers="penultimate", max_train=len(train_x))  # every training point, no subsample
    det.fit(env, train_x[:100], train_x[:0], _ctx())
    x, _, f = _draw(200, seed=1)
    f = (x.double().view(-1, 4) * 20 - 10)  # the features the victim sees (float32 images)
    score = det.score(env, x, _ctx()).score.double()
    # exactly the distance under the fitted class means and pooled covariance ...
    means = torch.stack([env.train_x.view(-1, 4).double()[train_y == c].mean(0) * 20 - 10 for c in range(2)])
    centered = env.train_x.view(-1, 4).double() * 20 - 10 - means[train_y]
    precision = torch.linalg.inv(centered.T @ centered / len(centered))
    diff = f[:, None, :] - means[None]
    fitted = torch.einsum("ncd,de,nce->nc", diff, precision, diff).min(dim=1).values
    torch.testing.assert_close(score, fitted, rtol=1e-5, atol=1e-5)
    # ... and close to the true one: the estimates converge
    true = _closed_form(f)
    assert ((score - true).abs() / true.clamp_min(0.5)).median() < 0.03


def test_mahalanobis_regression_separates_as_the_closed_form_says():
    train_x, train_y, _ = _draw(2000, seed=0)
    env = DetectorEnv(_gaussian_victim(), train_x, train_y, 2)
    fit_benign, fit_out = _draw(300, seed=1)[0], _draw(300, seed=2, scale=2.0)[0]
    det = Mahalanobis(noise=0.0)
    det.fit(env, fit_benign, fit_out, _ctx())
    assert det._layers == [0] and det.noise == 0.0  # no conv block here: the penultimate layer alone
    assert det._model[-1].coef_[0, 0] > 0  # farther from every mean: more adversarial
    benign, _, fb = _draw(1500, seed=3)
    out, _, fo = _draw(1500, seed=4, scale=2.0)
    sb, so = det.score(env, benign, _ctx()).score, det.score(env, out, _ctx()).score
    # the score ranks inputs as the closed-form distance does
    score, true = torch.cat([sb, so]).double().numpy(), _closed_form(torch.cat([fb, fo])).numpy()
    assert stats.spearmanr(score, true).statistic > 0.99
    # benign d^2 ~ chi2_4 and scaled-out d^2 ~ 4 chi2_4 (the means are 8 sigma apart): AUROC = P(chi2_4 / chi2_4' < 4)
    expected = stats.f.cdf(4.0, 4, 4)
    auroc = detection_metrics(sb, so)["auroc"]
    assert abs(auroc - expected) < 0.03, (auroc, expected)
