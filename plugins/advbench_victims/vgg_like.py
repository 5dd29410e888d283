"""VGG-style CIFAR-10 network: the paper's transfer source."""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from torch import nn

from advbench.api import RunContext, Victim
from advbench_victims._training import Normalize, TrainOptions, conv_block, flat_size, train_classifier


class VggLikeOptions(TrainOptions):
    epochs: int = Field(15, ge=1, le=500)
    lr: float = Field(0.1, gt=0, le=10)
    width: int = Field(32, ge=8, le=512, description="channels of the first stage (doubled per stage)")
    dropout: float = Field(0.3, ge=0, lt=1)


class VggLike(Victim):
    """VGG-style classifier (Simonyan & Zisserman 2015), the "VGG-like" transfer model of the paper.

    Three stages of two 3x3 convolution + batch-norm layers each (width, 2x, 4x channels), max-pool after each
    stage, global average pooling, dropout and one linear layer. Deeper than ``alexnet`` at a similar cost,
    so it is more accurate. Same recipe as ``alexnet`` (one-cycle SGD, crop and flip), ``epochs`` epochs.
    Inputs in [0, 1]; normalization is the model's first layer.
    """

    name = "vgg-like"
    aliases = ("vgg",)
    description = "VGG-style CNN (3 stages of 2 conv+BN), more accurate than alexnet; the transfer source"
    revision = "1"
    Options = VggLikeOptions

    def build(self, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        w = self.options.width
        c = input_shape[0]
        features = nn.Sequential(
            *conv_block(c, w, pool=False), *conv_block(w, w),
            *conv_block(w, 2 * w, pool=False), *conv_block(2 * w, 2 * w),
            *conv_block(2 * w, 4 * w, pool=False), *conv_block(4 * w, 4 * w),
        )
        return nn.Sequential(Normalize(c), features, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(self.options.dropout), nn.Linear(4 * w, num_classes))

    def fit(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext) -> None:
        train_classifier(model, train_x, train_y, ctx, self.options, label=f"train {self.name}")
