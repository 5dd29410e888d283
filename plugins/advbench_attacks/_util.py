"""Small helpers shared by the built-in attacks (no plugin classes here)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def batch_salt(y: torch.Tensor) -> tuple[Any, ...]:
    """A salt that tells batches apart for ``ctx.generator``: the batch's labels (device independent)."""
    return (len(y), tuple(int(v) for v in y.tolist()))


def prepare(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached, contiguous float copies on ``device`` (libraries such as torchattacks' JSMA need contiguous input)."""
    x = x.detach().to(device).clone(memory_format=torch.contiguous_format)
    y = y.detach().to(device).long().contiguous()
    return x, y


def model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return fallback


def uniform(shape: torch.Size, low: float, high: float, generator: torch.Generator,
            device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(low, high) drawn on the CPU from a private generator, then moved (same numbers on every device)."""
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return (low + (high - low) * u).to(device)
