"""A small CNN for tiny images such as scikit-learn's 8x8 digits."""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from torch import nn

from advbench.api import RunContext, Victim
from advbench_victims._training import Normalize, TrainOptions, conv_block, flat_size, train_classifier


class SmallCnnOptions(TrainOptions):
    epochs: int = Field(30, ge=1, le=500)
    lr: float = Field(0.05, gt=0, le=10)
    augment: bool = Field(False, description="random crop and flip; off for digits, whose orientation matters")
    width: int = Field(32, ge=4, le=512)
    dropout: float = Field(0.25, ge=0, lt=1)


class SmallCnn(Victim):
    """Two 3x3 convolution + batch-norm blocks (the first keeps the size, the second pools), then two linear
    layers with dropout. Trains to about 98% on scikit-learn's digits in seconds on a CPU."""

    name = "small-cnn"
    description = "Two conv+BN blocks and two linear layers, for tiny images (digits)"
    revision = "1"
    Options = SmallCnnOptions

    def build(self, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        w, c = self.options.width, input_shape[0]
        features = nn.Sequential(*conv_block(c, w, pool=False), *conv_block(w, 2 * w))
        n_flat = flat_size(features, input_shape)
        return nn.Sequential(Normalize(c), features, nn.Flatten(), nn.Dropout(self.options.dropout),
                             nn.Linear(n_flat, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def fit(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext) -> None:
        train_classifier(model, train_x, train_y, ctx, self.options, label=f"train {self.name}", flip=False)
