"""The tiny world the conformance checks run in, generated (seeded) the first time a check needs it.

Images are 3 x 16 x 16 in [0, 1], four classes: each class is a bright square in its own quadrant of a seeded
noise background, with a class tint, so a tiny CNN learns it in well under a second on one CPU core. Nothing
here touches the caller's global random state: every draw comes from a private generator, and the one piece of
library code that draws from torch's global RNG (weight initialisation) runs inside a forked RNG.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from torch import nn

C, H, W, K = 3, 16, 16, 4
SEED = 20240614
N_TRAIN, N_TEST = 160, 48
TINTS = ((1.0, 0.4, 0.4), (0.4, 1.0, 0.4), (0.4, 0.4, 1.0), (1.0, 1.0, 0.4))


def images(n: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` labelled images (float32 N x 3 x 16 x 16 in [0, 1], int64 labels in [0, 4)), a function of the seed."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n, dtype=torch.int64) % K
    y = y[torch.randperm(n, generator=gen)]
    x = 0.35 * torch.rand(n, C, H, W, generator=gen)
    for i, label in enumerate(y.tolist()):
        top, left = 8 * (label // 2), 8 * (label % 2)
        dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
        tint = torch.tensor(TINTS[label]).view(C, 1, 1)
        x[i, :, top + dy:top + dy + 5, left + dx:left + dx + 5] += 0.6 * tint
    return x.clamp(0, 1), y


class Normalize(nn.Module):
    """Per-channel standardization inside the model, so the model takes [0, 1] inputs (as victims do)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", std.reshape(1, -1, 1, 1).clamp_min(1e-3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class TinyCNN(nn.Module):
    """Normalize, two conv blocks, a hidden linear layer with dropout, and the classification layer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, classes: int = K) -> None:
        super().__init__()
        channels = mean.numel()
        self.norm = Normalize(mean, std)
        self.features = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * (H // 4) * (W // 4), 32), nn.ReLU(),
                                  nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.norm(x)))


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def train(x: torch.Tensor, y: torch.Tensor, steps: int = 30, seed: int = SEED) -> nn.Module:
    """A TinyCNN trained full-batch with Adam, inside a forked and seeded global RNG (init and dropout)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyCNN(x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3)))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
    return freeze(model)


def saliency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Gradient saliency |d max logit / dx|, channel max, scaled to [0, 1] per image: N x 1 x H x W."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).max(dim=1).values.sum(), x)
    sal = grad.abs().amax(dim=1, keepdim=True)
    return (sal / sal.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)).detach()


def bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 10) -> torch.Tensor:
    """Iterative FGSM (l-inf ``eps``), deterministic: the kit's adversarial images for detectors."""
    adv = x.detach().clone()
    with torch.enable_grad():
        for _ in range(steps):
            adv.requires_grad_(True)
            logits = model(adv)
            true = logits.gather(1, y[:, None]).squeeze(1)
            other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
            (grad,) = torch.autograd.grad((other - true).sum(), adv)  # a margin: no softmax saturation
            adv = (adv.detach() + 2.5 * eps / steps * grad.sign())
            adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


@dataclass(frozen=True)
class World:
    """Everything the checks hand to a plugin: data, a trained victim, its masks' classifier f2, adversarial images."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    victim: nn.Module
    mask_classifier: nn.Module
    adversarial_x: torch.Tensor  # iterative FGSM on test_x, only those that fool the victim
    accuracy: float

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (C, H, W)

    @property
    def num_classes(self) -> int:
        return K

    def fresh_victim(self, device: torch.device) -> nn.Module:
        """A private copy of the victim, frozen and in eval mode on ``device`` (as the harness hands it)."""
        return freeze(copy.deepcopy(self.victim)).to(device)

    def fresh_mask_classifier(self, device: torch.device) -> nn.Module:
        return freeze(copy.deepcopy(self.mask_classifier)).to(device)


@functools.lru_cache(maxsize=1)
def world() -> World:
    """The world, built once per process (well under a second)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster and the sums are reproducible
    try:
        train_x, train_y = images(N_TRAIN, SEED)
        test_x, test_y = images(N_TEST, SEED + 1)
        victim = train(train_x, train_y)
        masks = saliency(victim, train_x)
        f2 = train(masks, train_y, seed=SEED + 2)
        adversarial = bim(victim, test_x, test_y)
        with torch.no_grad():
            fooled = victim(adversarial).argmax(1) != test_y
            accuracy = float((victim(test_x).argmax(1) == test_y).float().mean())
    finally:
        torch.set_num_threads(threads)
    return World(train_x, train_y, test_x, test_y, victim, f2, adversarial[fooled], accuracy)
