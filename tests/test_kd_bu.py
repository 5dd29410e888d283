"""Property tests for kd-bu (Feinman et al. 2017) with answers known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advbench.api import DetectorEnv, RunContext
from advbench_detectors.kd_bu import KdBu, gaussian_kde_log_density


def test_density_is_the_gaussian_mixture_log_density():
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(7, 3, generator=gen)
    x = torch.randn(5, 3, generator=gen)
    h = 0.8
    # closed form: log of (1/n) sum_i (2 pi h^2)^(-D/2) exp(-|x - r_i|^2 / 2 h^2), summed in float64
    expected = torch.stack([
        torch.log(sum((2 * math.pi * h ** 2) ** -1.5 * torch.exp(-((p.double() - r.double()) ** 2).sum() / (2 * h ** 2))
                      for r in reference) / len(reference)) for p in x])
    torch.testing.assert_close(gaussian_kde_log_density(x, reference, h).double(), expected, rtol=1e-5, atol=1e-5)
    sklearn = pytest.importorskip("sklearn.neighbors")
    kde = sklearn.KernelDensity(kernel="gaussian", bandwidth=h).fit(reference.double().numpy())
    torch.testing.assert_close(gaussian_kde_log_density(x, reference, h).double(),
                               torch.from_numpy(kde.score_samples(x.double().numpy())), rtol=1e-5, atol=1e-5)


def test_density_is_highest_on_the_reference_and_falls_with_distance():
    reference = torch.zeros(1, 2)
    x = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 0.0]])
    density = gaussian_kde_log_density(x, reference, 0.26)
    assert density[0] > density[1] > density[2]
    # one kernel: the drop is exactly the Gaussian exponent
    torch.testing.assert_close(density[0] - density[2], torch.tensor(1.0 / (2 * 0.26 ** 2)))


def test_uncertainty_without_dropout_is_zero():
    victim = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(6, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(KdBu()._uncertainty(victim, x, seed=3), torch.zeros(6))


def test_uncertainty_of_a_known_dropout_layer_matches_its_expectation():
    """One input value v, dropout p = 0.5, logits (w * dropped, 0): the class-0 probability is sigmoid(2 w v)
    with probability 1/2 and sigmoid(0) = 1/2 otherwise, so each class's variance is (1/4)(sigmoid(2wv) - 1/2)^2
    and so is their mean; 1000 passes estimate it to about 1%."""
    w = 1.5
    linear = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[w], [0.0]]))
    victim = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), linear).eval()
    x = torch.tensor([0.2, 0.5, 1.0]).view(3, 1, 1, 1)
    state = torch.get_rng_state()
    got = KdBu(mc_samples=1000)._uncertainty(victim, x, seed=11)
    assert torch.equal(state, torch.get_rng_state())  # masks from a forked, seeded RNG
    expected = 0.25 * (torch.sigmoid(2 * w * x.flatten()) - 0.5) ** 2
    torch.testing.assert_close(got, expected, rtol=0.03, atol=0)
    assert not victim[1].training  # eval mode restored


def test_the_paper_s_settings_are_the_defaults_and_the_median_heuristic_stays_reachable():
    o = KdBu.Options()
    assert o.bandwidth == 0.26 and o.mc_samples == 50 and o.fpr == 0.05
    assert KdBu.Options(bandwidth=None).bandwidth is None


def _blobs(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of 2-d points around (+2, 0) and (-2, 0), as N x 2 x 1 x 1 images."""
    y = torch.arange(n) % 2
    centre = torch.stack([torch.where(y == 0, 2.0, -2.0), torch.zeros(n)], dim=1)
    return (centre + 0.3 * torch.randn(n, 2, generator=gen)).view(n, 2, 1, 1), y


def test_fit_flags_off_manifold_inputs_at_the_benign_fpr():
    """Features = the input (identity layer before the classifier); adversarial inputs sit on the decision
    boundary, far from both classes' training points: low density, so they are flagged; about 5% of held-out
    benign inputs are flagged by the benign-quantile threshold."""
    gen = torch.Generator().manual_seed(0)
    hidden = nn.Linear(2, 2)
    with torch.no_grad():
        hidden.weight.copy_(torch.eye(2))
        hidden.bias.zero_()
    head = nn.Linear(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        head.bias.zero_()
    victim = nn.Sequential(nn.Flatten(), hidden, head).eval()
    train_x, train_y = _blobs(400, gen)
    benign, _ = _blobs(200, gen)
    adversarial = torch.cat([0.05 * torch.randn(200, 1, generator=gen), 3 * torch.randn(200, 1, generator=gen)],
                            dim=1).view(200, 2, 1, 1)
    env = DetectorEnv(victim=victim, train_x=train_x, train_y=train_y, num_classes=2)
    ctx = RunContext(device=torch.device("cpu"), batch_size=64, seed=0)
    det = KdBu(bandwidth=0.3, max_train=400)
    det.fit(env, benign, adversarial, ctx)
    fresh_benign, _ = _blobs(400, gen)
    b, a = det.score(env, fresh_benign, ctx), det.score(env, adversarial, ctx)
    assert a.score.mean() > 0.8 and b.score.mean() < 0.2
    assert 0.0 < b.flag.float().mean() < 0.12 and a.flag.float().mean() > 0.9
