"""The training loop the built-in victims share: SGD with a one-cycle (or step) schedule, optional crop and flip
(or rotation and shift) augmentation."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Iterator, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_serializer
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
    amp: Literal["off", "bf16", "fp16"] = Field(
        "off", description="mixed precision for training on CUDA (bf16, or fp16 with loss scaling); ignored on "
                           "the CPU, which always trains in float32; inference stays float32")
    # added after victims were cached: key_neutral keeps them out of the cache key at their defaults (the old
    # recipe), so no cached victim is recomputed
    schedule: Literal["one-cycle", "step"] = Field(
        "one-cycle", json_schema_extra={"key_neutral": True},
        description="one-cycle (peaking at lr) or step: lr halved every lr_drop_epochs epochs, as the Keras "
                    "recipes of the detector literature")
    lr_drop_epochs: int = Field(30, ge=1, le=500, json_schema_extra={"key_neutral": True},
                                description="with schedule: step, epochs between halvings")
    rotation: float = Field(0.0, ge=0, le=180, json_schema_extra={"key_neutral": True},
                            description="with augment: random rotation, uniform in +-degrees (Keras' "
                                        "rotation_range); with shift, it replaces the crop")
    shift: float = Field(0.0, ge=0, lt=1, json_schema_extra={"key_neutral": True},
                         description="with augment: random translation, uniform in +-this share of the width and "
                                     "height (Keras' width/height_shift_range)")

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        # "amp: off" is what every recipe did before the option existed: leave it out of the dump (which is the
        # cache key's options) so the victims cached before it stay valid
        data = handler(self)
        if isinstance(data, dict) and data.get("amp") == "off":
            data.pop("amp")
        return data


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
        out = (x - self.mean) / self.std
        if out.is_cuda and out.dim() == 4:
            # channels-last from the first layer on: cuDNN then runs every convolution in NHWC (faster at
            # inference too). Only on CUDA: on the CPU oneDNN's channels-last convolutions round differently in
            # the last bits, and the CPU's numbers must not move.
            out = out.contiguous(memory_format=torch.channels_last)
        return out


def augment_batch(x: torch.Tensor, generator: torch.Generator, flip: bool = True, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding and random horizontal flip, drawn from ``generator``.

    Tensor ops only (a gather, no per-image loop and no host round trip), on x's device; the draws are made on
    the generator's device and moved to x's. Pure copies: the same draws give the same pixels anywhere.
    """
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=generator.device).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w)
    images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
    out = padded[images, channels, rows, cols]
    if flip:
        mirror = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
        out = torch.where(mirror.view(n, 1, 1, 1), out.flip(-1), out)
    return out


def warp_batch(x: torch.Tensor, generator: torch.Generator, rotation: float, shift: float, flip: bool = True
               ) -> torch.Tensor:
    """Random rotation (uniform in +-``rotation`` degrees) and translation (uniform in +-``shift`` of the size)
    about the image centre, bilinear, the border pixels repeated outward (Keras' fill_mode "nearest" up to the
    interpolation), then the random horizontal flip; draws from ``generator``, as ``augment_batch``."""
    n = x.shape[0]
    draw = lambda: (torch.rand(n, generator=generator, device=generator.device) * 2 - 1).to(x.device)  # noqa: E731
    angle = draw() * math.radians(rotation)
    tx, ty = draw() * 2 * shift, draw() * 2 * shift  # affine_grid's units: the image spans [-1, 1]
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if flip:
        mirror = (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(x.device)
        out = torch.where(mirror.view(n, 1, 1, 1), out.flip(-1), out)
    return out


def _on_device(train_x: torch.Tensor, train_y: torch.Tensor, device: torch.device
               ) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """The training set copied to the device once per fit, when it takes under a quarter of the free memory."""
    free, _ = torch.cuda.mem_get_info(device)
    if train_x.nbytes + train_y.nbytes >= free // 4:
        return None
    return train_x.to(device), train_y.to(device)


def _device_batches(resident: Optional[tuple[torch.Tensor, torch.Tensor]], train_x: torch.Tensor,
                    train_y: torch.Tensor, ctx: RunContext, generator: torch.Generator,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``ctx.batches(..., shuffle=True)`` for CUDA: the same order, drawn from the same CPU generator; a batch is
    a gather on the device from the ``resident`` copy, or, without one, a gather into pinned host memory copied
    without blocking (``t[idx]`` of a pinned tensor is not pinned, so pinning the source would not help)."""
    n = len(train_x)
    order = torch.randperm(n, generator=generator)
    if resident is not None:
        order = order.to(ctx.device, non_blocking=True)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield resident[0][idx], resident[1][idx]
        return
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield (train_x[idx].pin_memory().to(ctx.device, non_blocking=True),
               train_y[idx].pin_memory().to(ctx.device, non_blocking=True))


_AMP_NOTED: set[str] = set()


def _autocast(opts: TrainOptions, device: torch.device, label: str):
    """The autocast context of ``opts.amp`` on CUDA; on the CPU "off" always (said once in the log)."""
    if opts.amp == "off":
        return None
    if device.type != "cuda":
        if label not in _AMP_NOTED:
            _AMP_NOTED.add(label)
            log.info("%s: amp %s is for CUDA only; training in float32 on %s", label, opts.amp, device.type)
        return None
    return torch.autocast("cuda", dtype=torch.bfloat16 if opts.amp == "bf16" else torch.float16)


def lr_schedule(optimizer: torch.optim.Optimizer, opts: TrainOptions, steps_per_epoch: int
                ) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``opts``, stepped once per batch: one-cycle peaking at ``lr``, or ``lr``
    halved every ``lr_drop_epochs`` epochs (the factor changes at epoch boundaries)."""
    if opts.schedule == "step":
        drop = opts.lr_drop_epochs
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** (step // steps_per_epoch // drop))
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opts.lr, epochs=opts.epochs,
                                               steps_per_epoch=steps_per_epoch)


def train_classifier(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext,
                     opts: TrainOptions, label: str = "train", flip: bool = True) -> None:
    """Train ``model`` in place. Finds its ``Normalize`` module (if any) and fits it to the data first."""
    for module in model.modules():
        if isinstance(module, Normalize):
            module.fit(train_x)
    # channels-last runs the convolutions about twice as fast on CPU (oneDNN) and is neutral on CUDA
    model.to(ctx.device, memory_format=torch.channels_last).train()
    generator = ctx.generator("train", label)
    cuda = ctx.device.type == "cuda"
    # on CUDA the crop and flip are drawn on the device from a generator of their own (other numbers than the
    # CPU's); on the CPU they come from the shuffling generator, as they always have
    aug_gen = ctx.generator("train", label, "augment", device=ctx.device) if cuda else generator
    autocast = _autocast(opts, ctx.device, label)
    scaler = torch.amp.GradScaler("cuda") if autocast is not None and opts.amp == "fp16" else None
    resident = _on_device(train_x, train_y, ctx.device) if cuda else None
    batch_size = min(opts.batch_size, len(train_x))
    steps_per_epoch = (len(train_x) + batch_size - 1) // batch_size
    optimizer = torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum,
                                weight_decay=opts.weight_decay, nesterov=opts.momentum > 0)
    schedule = lr_schedule(optimizer, opts, steps_per_epoch)
    total = opts.epochs * steps_per_epoch
    first = 0
    resume = ctx.restore_progress()
    if cuda and resume is not None and "augment_generator" not in resume:
        resume = None  # saved on CUDA by the code that augmented on the host: its draws cannot be continued here
    if resume is not None and resume.get("label") == label:  # a stopped run's last epoch: go on from there
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        generator.set_state(resume["generator"])
        if cuda and resume.get("augment_generator") is not None:
            aug_gen.set_state(resume["augment_generator"])
        if scaler is not None and resume.get("scaler") is not None:
            scaler.load_state_dict(resume["scaler"])
        torch.set_rng_state(resume["rng"])
        if resume.get("cuda_rng") is not None and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(resume["cuda_rng"], ctx.device)
        first = int(resume["epoch"])
    steps = iter(ctx.track(range(first * steps_per_epoch, total), f"{label} ({opts.epochs} epochs)",
                           total - first * steps_per_epoch))
    for epoch in range(first, opts.epochs):
        # the loss is summed on the device (float64: the sums the host made from each float(loss)) and read once
        # an epoch, for the log: no sync per step
        started, seen = time.perf_counter(), 0
        loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        batches = (_device_batches(resident, train_x, train_y, ctx, generator, batch_size) if cuda else
                   ctx.batches(train_x, train_y, shuffle=True, generator=generator, batch_size=batch_size))
        for xb, yb in batches:
            if opts.augment and (opts.rotation or opts.shift):
                xb = warp_batch(xb, aug_gen, opts.rotation, opts.shift, flip=flip)
            elif opts.augment:
                xb = augment_batch(xb, aug_gen, flip=flip)
            xb = xb.contiguous(memory_format=torch.channels_last)
            if autocast is None:
                loss = F.cross_entropy(model(xb), yb, label_smoothing=opts.label_smoothing)
            else:
                with autocast:
                    loss = F.cross_entropy(model(xb), yb, label_smoothing=opts.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            schedule.step()
            next(steps, None)
            loss_sum += loss.detach().double() * len(yb)
            seen += len(yb)
        log.info("%s: epoch %d/%d, loss %.4f, %.1fs", label, epoch + 1, opts.epochs, float(loss_sum) / max(1, seen),
                 time.perf_counter() - started)
        if epoch + 1 < opts.epochs:  # everything the next epoch draws from, so a resumed run continues exactly
            ctx.save_progress({"label": label, "epoch": epoch + 1, "model": model.state_dict(),
                               "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                               "generator": generator.get_state(), "rng": torch.get_rng_state(),
                               "augment_generator": aug_gen.get_state() if cuda else None,
                               "scaler": scaler.state_dict() if scaler is not None else None,
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


