"""Choosing the torch device a run uses, with an error that blames whoever asked for it."""

from __future__ import annotations

import torch

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

