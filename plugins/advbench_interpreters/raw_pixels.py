"""A control interpreter: the "mask" is the image itself."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from advbench import api


class RawPixels(api.Interpreter):
    """The identity map g(x) = x: no interpretation at all.

    With the contrastive detector this makes f2 a second classifier trained on the raw images (the same
    architecture the interpreters' f2 uses), so the rule "f1's label differs from f2's" is tested without any
    interpretation in between. An interpretation-based detector earns its place only by beating this control
    by more than the noise (an attack that ignores f2 fools f1 alone, and a second, different classifier
    disagrees with f1 on many adversarial inputs whatever it reads). Masks are N x C x H x W, the inputs; with
    ``ctx.differentiable`` the identity keeps x's graph.
    """

    name = "raw-pixels"
    description = "Control: the mask is the image itself, so f2 is a second classifier on raw pixels"
    revision = "1"
    control = True

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        return x.clone() if ctx.differentiable else x.detach().clone()
