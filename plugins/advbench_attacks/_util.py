"""Small helpers shared by the built-in attacks (no plugin classes here)."""

from __future__ import annotations

from typing import Any

import torch


def batch_salt(y: torch.Tensor) -> tuple[Any, ...]:
    """A salt that tells batches apart for ``ctx.generator``: the batch's labels (device independent)."""
    return (len(y), tuple(int(v) for v in y.tolist()))


def uniform(shape: torch.Size, low: float, high: float, generator: torch.Generator,
            device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(low, high) drawn on the CPU from a private generator, then moved (same numbers on every device)."""
    u = torch.rand(shape, generator=generator, dtype=dtype)
    return (low + (high - low) * u).to(device)
