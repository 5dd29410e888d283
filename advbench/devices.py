"""Choosing the torch device a run uses, with an error that blames whoever asked for it, and the batch size
``batch_size: auto`` picks on it."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from advbench.errors import AdvbenchError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str, origin: str = "--device") -> torch.device:
    """The device for ``requested`` (auto, cpu or cuda); ``origin`` says who asked for it in the error line.

    ``origin`` is ``"--device"`` for the command-line option, or ``"<suite file>: device"`` when the suite's own
    ``device:`` field chose it, so the user is sent to the right place to fix it.
    """
    if requested not in DEVICES:
        raise AdvbenchError(f"{origin}: found {requested!r}; allowed: {', '.join(DEVICES)}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise AdvbenchError(f"{origin} cuda: CUDA is not available on this machine; allowed here: auto, cpu")
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")



# ---------------------------------------------------------------------- batch_size: auto

DEFAULT_BATCH = 128  # what batch_size: auto gives where there is no GPU memory to size batches to
AUTO_BATCH_CAP = 4096  # the largest batch auto picks: beyond it a GPU gains little and a step's latency grows


def largest_fitting(fits: Callable[[int], bool], cap: int = AUTO_BATCH_CAP) -> int:
    """The largest power of two ``n <= cap`` for which ``fits(n)`` holds, trying 1, 2, 4, ... and stopping at
    the first that does not fit (memory grows with n); 0 when not even 1 fits."""
    best, n = 0, 1
    while n <= cap and fits(n):
        best, n = n, n * 2
    return best


def fits_forward_backward(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> Callable[[int], bool]:
    """A probe for ``largest_fitting``: whether a forward and a backward pass (to the input and the weights, as an
    attack's or a fit's step takes them) of a batch of ``n`` images runs on ``device`` without running out of
    memory. Memory is freed after every try."""

    def fits(n: int) -> bool:
        x = out = None
        try:
            x = torch.full((n, *input_shape), 0.5, device=device, requires_grad=True)
            out = model(x)
            out.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del x, out
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()

    return fits
