"""LeNet: the paper's mask classifier f2, also a victim for small inputs."""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from torch import nn

from advbench.api import RunContext, Victim
from advbench_victims._training import Normalize, TrainOptions, flat_size, train_classifier


class LeNetOptions(TrainOptions):
    epochs: int = Field(10, ge=1, le=500)
    lr: float = Field(0.05, gt=0, le=10)
    augment: bool = Field(False, description="random crop and flip; off by default since masks are aligned")
    width: int = Field(6, ge=1, le=256, description="channels of the first convolution (the second has 16/6 x)")


class LeNet(Victim):
    """LeNet-5 (LeCun et al. 1998): two 5x5 convolutions with max-pooling, then 120-84-classes linear layers.

    Padding keeps 8x8 inputs (scikit-learn digits) usable; on 32x32 inputs it is the classic shape.
    The paper trains it on LAN masks as the mask classifier f2. Recipe: one-cycle SGD, no augmentation.
    """

    name = "lenet"
    description = "LeNet-5; the paper's mask classifier f2, or a victim for small inputs"
    revision = "1"
    Options = LeNetOptions

    def build(self, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        c, w = input_shape[0], self.options.width
        w2 = max(1, round(w * 16 / 6))
        pad = 2 if min(input_shape[1:]) < 28 else 0
        features = nn.Sequential(
            nn.Conv2d(c, w, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(w, w2, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        n_flat = flat_size(features, input_shape)
        return nn.Sequential(Normalize(c), features, nn.Flatten(), nn.Linear(n_flat, 120), nn.ReLU(inplace=True),
                             nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))

    def fit(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext) -> None:
        train_classifier(model, train_x, train_y, ctx, self.options, label=f"train {self.name}", flip=False)
