"""Grad-CAM (Selvaraju et al. 2017)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from advbench import api
from advbench_interpreters._common import (InterpreterError, exact_map_surrogate_gradient, normalize_per_sample,
                                           predicted_labels)


def find_layer(victim: nn.Module, name: Optional[str]) -> tuple[str, nn.Module]:
    """The module called ``name`` in ``victim``, or the last ``nn.Conv2d`` in module order when ``name`` is None."""
    modules = dict(victim.named_modules())
    if name is not None:
        if name not in modules:
            convs = [k for k, v in modules.items() if isinstance(v, nn.Conv2d)]
            raise InterpreterError(f"gradcam: the victim has no module named {name!r}; its Conv2d layers are: "
                                   f"{', '.join(convs) or 'none'}")
        return name, modules[name]
    last = None
    for key, module in victim.named_modules():
        if isinstance(module, nn.Conv2d):
            last = (key, module)
    if last is None:
        raise InterpreterError(f"gradcam needs a convolutional layer, but the victim "
                               f"({type(victim).__name__}) has no nn.Conv2d; use another interpreter or name a "
                               f"layer with a spatial N x K x h x w output in the 'layer' option")
    return last


class GradCAM(api.Interpreter):
    """Grad-CAM of Selvaraju, Cogswell, Das, Vedantam, Parikh & Batra, "Grad-CAM: Visual Explanations from Deep
    Networks via Gradient-based Localization" (ICCV 2017).

    The layer is the module named by ``layer`` (a ``named_modules`` name) or, by default, the last ``nn.Conv2d``
    in the victim's module order; its output A (N x K x h x w) is captured with a forward hook. For the victim's
    own predicted label ``c = argmax f1(x)``, the channel weights are the spatial mean of ``d logit_c / dA`` and
    the map is ``relu(sum_k w_k A_k)``, upsampled bilinearly to the input's H x W, and divided by its per-sample
    maximum. Masks are N x 1 x H x W. A victim without a Conv2d raises an error naming the problem.
    No randomness.

    How an adaptive attacker differentiates it (``ctx.differentiable``): the value is the exact map above; its
    gradient w.r.t. x is that of the same map on the victim with every ``nn.ReLU`` module replaced by a softplus of
    sharpness ``_common.SURROGATE_BETA`` (Dombrowski et al., NeurIPS 2019), through the activations and, by double
    backprop, through the channel weights (a ReLU victim's own weights are piecewise constant in x). The ReLU on the
    CAM itself is kept: it is part of the map, not of the victim. ``F.relu`` called in a victim's ``forward``
    cannot be swapped and stays piecewise linear.
    """

    name = "gradcam"
    aliases = ("grad-cam",)
    description = "Grad-CAM on the last Conv2d (or a named layer), upsampled to the input (Selvaraju et al. 2017)"
    revision = "1"

    class Options(api.Options):
        layer: Optional[str] = Field(None, min_length=1, max_length=200,
                                     description="module name (victim.named_modules()); default: last Conv2d")

    def explain(self, state: Optional[nn.Module], victim: nn.Module, x: torch.Tensor,
                ctx: api.RunContext) -> torch.Tensor:
        layer_name, layer = find_layer(victim, self.options.layer)
        labels = predicted_labels(victim, x)
        return exact_map_surrogate_gradient(
            lambda inputs, differentiable: self._cam(victim, layer_name, layer, labels, inputs, differentiable),
            victim, x, ctx)

    @staticmethod
    def _cam(victim: nn.Module, layer_name: str, layer: nn.Module, labels: torch.Tensor, x: torch.Tensor,
             differentiable: bool) -> torch.Tensor:
        """The map for ``labels``; ``differentiable``: it stays a function of x (the weights by double backprop)."""
        captured: list[torch.Tensor] = []

        def hook(module: nn.Module, inputs: object, output: object) -> None:
            captured.append(output[0] if isinstance(output, (tuple, list)) else output)

        handle = layer.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                if differentiable:
                    xg = x if x.requires_grad else x.detach().requires_grad_(True)
                else:
                    xg = x.detach().clone().requires_grad_(True)
                logits = victim(xg)
                if not captured:
                    raise InterpreterError(f"gradcam: layer {layer_name!r} was not run by the victim's forward")
                acts = captured[-1]
                if acts.dim() != 4:
                    raise InterpreterError(f"gradcam: layer {layer_name!r} outputs shape {tuple(acts.shape)}; "
                                           f"a spatial N x K x h x w output is needed")
                score = logits.gather(1, labels.view(-1, 1)).sum()
                (grads,) = torch.autograd.grad(score, acts, create_graph=differentiable)
        finally:
            handle.remove()
        weights = grads.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * (acts if differentiable else acts.detach())).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp_min(0)
        return normalize_per_sample(cam)
