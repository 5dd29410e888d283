"""The training loop the built-in victims share: SGD with a one-cycle schedule, optional crop and flip."""

from __future__ import annotations

import logging
import time
from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from advbench.api import Options, RunContext

log = logging.getLogger("advbench.victims")


class TrainOptions(Options):
    """A training recipe; each victim sets its own defaults by subclassing."""

    epochs: int = Field(10, ge=1, le=500)
    lr: float = Field(0.05, gt=0, le=10, description="peak learning rate of the one-cycle schedule")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0, le=1)
    batch_size: int = Field(128, ge=1, le=8192)
    augment: bool = Field(True, description="random crop (4-pixel padding) and horizontal flip")
    label_smoothing: float = Field(0.0, ge=0, lt=1)


class Normalize(nn.Module):
    """Per-channel standardization inside the model, so the model takes [0, 1] inputs."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(dim=(0, 2, 3), keepdim=True))
        self.std.copy_(x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def augment_batch(x: torch.Tensor, generator: torch.Generator, flip: bool = True, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, drawn from ``generator``."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    if flip:
        mirror = torch.rand(n, generator=generator) < 0.5
        out[mirror] = out[mirror].flip(-1)
    return out


def train_classifier(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext,
                     opts: TrainOptions, label: str = "train", flip: bool = True) -> None:
    """Train ``model`` in place. Finds its ``Normalize`` module (if any) and fits it to the data first."""
    for module in model.modules():
        if isinstance(module, Normalize):
            module.fit(train_x)
    # channels-last runs the convolutions about twice as fast on CPU (oneDNN) and is neutral on CUDA
    model.to(ctx.device, memory_format=torch.channels_last).train()
    generator = ctx.generator("train", label)
    batch_size = min(opts.batch_size, len(train_x))
    steps_per_epoch = (len(train_x) + batch_size - 1) // batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum,
                                weight_decay=opts.weight_decay, nesterov=opts.momentum > 0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, epochs=opts.epochs,
                                                   steps_per_epoch=steps_per_epoch)
    total = opts.epochs * steps_per_epoch
    first = 0
    resume = ctx.restore_progress()
    if resume is not None and resume.get("label") == label:  # a stopped run's last epoch: go on from there
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["rng"])
        if resume.get("cuda_rng") is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"], ctx.device)
        first = int(resume["epoch"])
    steps = iter(ctx.track(range(first * steps_per_epoch, total), f"{label} ({opts.epochs} epochs)",
                           total - first * steps_per_epoch))
    for epoch in range(first, opts.epochs):
        started, loss_sum, seen = time.perf_counter(), 0.0, 0
        for xb, yb in ctx.batches(train_x, train_y, shuffle=True, generator=generator, batch_size=batch_size):
            if opts.augment:
                xb = augment_batch(xb.cpu(), generator, flip=flip).to(ctx.device)
            xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=opts.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            next(steps, None)
            loss_sum += float(loss.detach()) * len(yb)
            seen += len(yb)
        log.info("%s: epoch %d/%d, loss %.4f, %.1fs", label, epoch + 1, opts.epochs, loss_sum / max(1, seen),
                 time.perf_counter() - started)
        if epoch + 1 < opts.epochs:  # everything the next epoch draws from, so a resumed run continues exactly
            ctx.save_progress({"label": label, "epoch": epoch + 1, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                               "generator": generator.get_state(), "rng": torch.get_rng_state(),
                               "cuda_rng": torch.cuda.get_rng_state(ctx.device) if ctx.device.type == "cuda"
                               else None})
    for _ in steps:  # drain so the bar completes
        pass
    model.to(memory_format=torch.contiguous_format).eval()


def conv_block(c_in: int, c_out: int, pool: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


def flat_size(features: nn.Module, input_shape) -> int:
    """Number of features after ``features`` for one input (evaluated in eval mode: no BN statistics move)."""
    features.eval()
    with torch.no_grad():
        size = int(features(torch.zeros(1, *input_shape)).numel())
    features.train()
    return size


