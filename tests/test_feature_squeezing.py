"""Property tests for feature squeezing (Xu et al. 2018): the non-local means squeezer and the joint score."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from advbench.api import DetectorEnv, RunContext
from advbench_detectors._features import map_batches
from advbench_detectors.feature_squeezing import FeatureSqueezing, non_local_means, non_local_means_bpda


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_nlm_of_a_constant_image_is_that_image():
    x = torch.full((2, 3, 16, 16), 0.37)
    assert torch.allclose(non_local_means(x), x, atol=1e-6)


def test_nlm_reduces_the_noise_of_a_piecewise_constant_image():
    clean = torch.full((2, 3, 32, 32), 0.3)
    clean[..., :, 16:] = 0.7                         # two flat halves with a sharp edge
    noisy = (clean + 3 / 255 * torch.randn(clean.shape, generator=_gen())).clamp(0, 1)
    denoised = non_local_means(noisy)                # the paper's 13-3-2
    before = (noisy - clean).pow(2).mean().sqrt()
    after = (denoised - clean).pow(2).mean().sqrt()
    assert after < 0.6 * before
    # the edge is not blurred: patches across it differ by ~100 levels and get weight 0
    assert (denoised[..., :, 15] - 0.3).abs().mean() < 0.01 and (denoised[..., :, 16] - 0.7).abs().mean() < 0.01


def _smooth_noisy(n: int, seed: int) -> torch.Tensor:
    """Smooth random images (upsampled 4x4 noise) plus 2/255 Gaussian noise: what non-local means acts on."""
    gen = _gen(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(16, 16), mode="bilinear", align_corners=False)
    return (smooth + 2 / 255 * torch.randn(smooth.shape, generator=gen)).clamp(0, 1)


def test_nlm_with_a_tiny_filter_strength_is_close_to_the_identity():
    x = _smooth_noisy(2, 1)
    assert (non_local_means(x, strength=0.05) - x).abs().max() < 1e-5
    assert (non_local_means(x, strength=2.0) - x).abs().max() > 1e-4  # ... and the default does change it


def test_nlm_matches_a_direct_per_pixel_computation():
    """One pixel, written out from the definition (search 5, patch 3, h = 20, reflect-101 border)."""
    x = torch.rand(1, 3, 8, 8, generator=_gen(2))
    out = non_local_means(x, search=5, patch=3, strength=20.0)
    padded = torch.nn.functional.pad(x * 255, (3, 3, 3, 3), mode="reflect")[0]
    i, j = 0, 5                                      # a border pixel
    def patch(a, b):
        return padded[:, a + 3 - 1:a + 3 + 2, b + 3 - 1:b + 3 + 2]
    total, norm = torch.zeros(3), 0.0
    for di in range(-2, 3):
        for dj in range(-2, 3):
            d = (patch(i + di, j + dj) - patch(i, j)).pow(2).mean()
            weight = torch.exp(-d / 400.0)
            weight = weight if weight >= 1e-3 else torch.tensor(0.0)
            total += weight * padded[:, i + di + 3, j + dj + 3]
            norm += weight
    torch.testing.assert_close(out[0, :, i, j], total / norm / 255, rtol=1e-5, atol=1e-6)


def test_nlm_is_per_image_and_its_bpda_gradient_is_the_identity():
    x = torch.rand(3, 3, 12, 12, generator=_gen(3))
    batch = non_local_means(x)
    torch.testing.assert_close(batch[1:2], non_local_means(x[1:2]))
    xg = x.clone().requires_grad_(True)
    out = non_local_means_bpda(xg, 13, 3, 2.0)
    assert torch.equal(out.detach(), batch)
    upstream = torch.randn(x.shape, generator=_gen(4))
    (grad,) = torch.autograd.grad(out, xg, upstream)
    assert torch.equal(grad, upstream)


def test_options_name_known_squeezers_and_odd_windows():
    assert FeatureSqueezing.Options().squeezers == ("bit-depth", "median", "non-local-means")
    for bad in ({"squeezers": ["blur"]}, {"squeezers": []}, {"squeezers": ["median", "median"]},
                {"nlm_search": 12}, {"nlm_patch": 4}):
        with pytest.raises(ValidationError):
            FeatureSqueezing.Options(**bad)


def _world():
    gen = _gen(5)
    victim = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16 * 16, 5)).eval()
    for p in victim.parameters():
        p.requires_grad_(False)
    x = _smooth_noisy(24, 6)
    env = DetectorEnv(victim=victim, train_x=x[:0], train_y=torch.zeros(0, dtype=torch.int64), num_classes=5)
    return env, x, RunContext(device=torch.device("cpu"), batch_size=8, seed=0)


def test_the_joint_score_is_the_max_of_the_single_squeezer_scores():
    env, x, ctx = _world()
    singles = []
    for name in ("bit-depth", "median", "non-local-means"):
        det = FeatureSqueezing(squeezers=[name], bits=3)
        det.fit(env, x, x[:0], ctx)
        singles.append(det.score(env, x, ctx).score)
    joint = FeatureSqueezing(bits=3)
    joint.fit(env, x, x[:0], ctx)
    out = joint.score(env, x, ctx)
    singles = torch.stack(singles)
    torch.testing.assert_close(out.score, singles.max(dim=0).values)
    assert (singles > 0).all() and len(set(singles.argmax(dim=0).tolist())) >= 2  # each squeezer matters somewhere
    # at most fpr of the benign fit inputs score above the threshold, read as fit read them (batch by batch: a
    # one-batch score of the same images may differ in the last float bit), and the flag is that threshold
    fitted = map_batches(lambda b: joint._scores(env, b), x, ctx, "benign scores")
    assert (fitted > joint.threshold).float().mean() <= 0.05 + 1e-9
    assert torch.equal(out.flag, out.score > joint.threshold)


def test_attack_score_has_the_score_s_values_with_nlm():
    env, x, ctx = _world()
    det = FeatureSqueezing(bits=3)
    det.fit(env, x, x[:0], ctx)
    xg = x[:8].clone().requires_grad_(True)
    score = det.attack_score(env, xg, ctx)
    torch.testing.assert_close(score.detach(), det.score(env, x[:8], ctx).score)
    (grad,) = torch.autograd.grad(score.sum(), xg)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
