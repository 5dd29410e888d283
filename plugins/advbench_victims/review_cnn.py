"""The CIFAR-10 CNN of the Aldahdooh et al. detector review: their 89.11% victim, rebuilt layer for layer."""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field
from torch import nn

from advbench.api import RunContext, Victim
from advbench_victims._training import TrainOptions, conv_block, flat_size, train_classifier


class ReviewCnnOptions(TrainOptions):
    epochs: int = Field(40, ge=1, le=500)
    lr: float = Field(0.05, gt=0, le=10)
    dropout: float = Field(0.1, ge=0, lt=0.6, description="dropout after the first block; +0.1 after each next one")


class ReviewCnn(Victim):
    """The CIFAR-10 network of Aldahdooh, Hamidouche, Fezza and Deforges' detector review (2022; their code,
    baselineCNN/cnn/cnn_cifar10.py, read for this): the victim behind the review's published detection rates.

    Four stages: two 3x3 convolutions of 64, two of 128, two of 256, one of 512, each convolution followed by
    batch norm and ReLU; max-pool after each stage, then dropout at 0.1, 0.2, 0.3 and 0.4 (``dropout`` sets the
    first). Flatten, a 512-unit linear layer with no activation (the features their KD+BU density reads), and the
    10-way linear output. Inputs in [0, 1] go in unnormalized, as theirs do.

    Departures: their recipe (SGD lr 0.01 halved every 30 epochs, batch 32, 100 epochs, rotation, shift and
    flip augmentation, L2 on the kernels) is replaced by the shared one (one-cycle SGD peaking at ``lr``, batch
    128, crop and flip, weight decay on every weight), for ``epochs`` epochs. Measured on an H100 (seed 0, the
    CIFAR-10 JPEG export, reports/baselines-review-cnn/): 30 epochs in 57 s, 88.75% clean accuracy.
    """

    name = "review-cnn"
    description = "the Aldahdooh et al. review's CIFAR-10 CNN (conv stages with dropout, linear 512 features)"
    revision = "1"
    Options = ReviewCnnOptions

    def build(self, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        rate = self.options.dropout
        layers: list[nn.Module] = []
        c_in = input_shape[0]
        for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 2), (512, 1))):
            for i in range(convs):
                layers += conv_block(c_in, width, pool=i == convs - 1)
                c_in = width
            layers.append(nn.Dropout(round(rate + 0.1 * stage, 4)))
        features = nn.Sequential(*layers)
        return nn.Sequential(features, nn.Flatten(), nn.Linear(flat_size(features, input_shape), 512),
                             nn.Linear(512, num_classes))

    def fit(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, ctx: RunContext) -> None:
        train_classifier(model, train_x, train_y, ctx, self.options, label=f"train {self.name}")
