"""Occlusion sensitivity (Zeiler & Fergus 2014) as an advbench interpreter."""

from __future__ import annotations

import torch
from pydantic import Field

from advbench import api


class Occlusion(api.Interpreter):
    """Occlusion sensitivity: slide a gray patch over the image and record how much the probability of the
    class the victim predicts for the clean image drops (Zeiler & Fergus 2014, "Visualizing and Understanding
    Convolutional Networks", ECCV).

    Each pixel's value is the mean drop over the patch positions that cover it, negative drops count as 0, and
    the map is scaled to [0, 1] per image (an image whose prediction no patch changes gets zeros). Masks are
    N x 1 x H x W. One forward pass per patch position; no gradients, no training, no randomness.
    """

    name = "occlusion"
    description = "Occlusion sensitivity: drop of the predicted class's probability under a sliding gray patch"
    revision = "1"  # bump when a change alters the masks (part of every cache key)

    class Options(api.Options):
        patch: int = Field(4, ge=1, le=64, description="side of the square patch, in pixels")
        stride: int = Field(2, ge=1, le=64, description="step between patch positions, in pixels")
        fill: float = Field(0.5, ge=0.0, le=1.0, description="the patch's gray value")

    def explain(self, state, victim, x, ctx):
        n, _, h, w = x.shape
        patch, stride = min(self.options.patch, h, w), self.options.stride
        tops = sorted(set(range(0, h - patch + 1, stride)) | {h - patch})
        lefts = sorted(set(range(0, w - patch + 1, stride)) | {w - patch})
        drop = torch.zeros(n, 1, h, w, device=x.device, dtype=x.dtype)
        cover = torch.zeros(1, 1, h, w, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            probs = torch.softmax(victim(x), dim=1)
            predicted = probs.argmax(dim=1, keepdim=True)
            clean = probs.gather(1, predicted).squeeze(1)
            for top in tops:
                for left in lefts:
                    occluded = x.clone()
                    occluded[:, :, top:top + patch, left:left + patch] = self.options.fill
                    p = torch.softmax(victim(occluded), dim=1).gather(1, predicted).squeeze(1)
                    drop[:, :, top:top + patch, left:left + patch] += (clean - p).clamp_min(0).view(n, 1, 1, 1)
                    cover[:, :, top:top + patch, left:left + patch] += 1
        sensitivity = drop / cover
        peak = sensitivity.flatten(1).amax(dim=1).view(n, 1, 1, 1)
        return torch.where(peak > 0, sensitivity / peak.clamp_min(1e-12), torch.zeros_like(sensitivity)).clamp(0, 1)
