"""The UCI handwritten digits bundled with scikit-learn (no download)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from advbench.api import DataSplits, Dataset, Options, RunContext


class Digits(Dataset):
    """UCI optical recognition of handwritten digits: 1,797 8x8 grey images, values 0..16, 10 classes.

    Source: E. Alpaydin and C. Kaynak, "Optical Recognition of Handwritten Digits", UCI Machine Learning
    Repository, 1998 (https://doi.org/10.24432/C50P49), as shipped by scikit-learn
    (``sklearn.datasets.load_digits``). Pixels are divided by 16 into [0, 1]; the train/test split is a fixed
    stratified ``train_test_split`` seeded by ``split_seed`` (not the suite seed, so every suite sees the same
    split).
    """

    name = "digits"
    description = "UCI handwritten digits from scikit-learn (8x8 grey, 10 classes, no download)"
    revision = "1"
    levels = 16  # the stored intensities are the integers 0..16, divided by 16

    class Options(Options):
        test_size: float = Field(default=0.3, gt=0, lt=1, description="fraction of the images held out for test")
        split_seed: int = Field(default=0, ge=0, description="seed of the stratified train/test split")
        upsample: int = Field(default=1, ge=1, le=4, description="scale images to 8*upsample pixels a side")
        interpolation: Literal["nearest", "bilinear"] = Field(
            default="nearest", description="how upsample scales images (nearest keeps the original values)")

    def load(self, ctx: RunContext) -> DataSplits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
        labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
        if self.options.upsample > 1:
            size = 8 * self.options.upsample
            if self.options.interpolation == "nearest":
                images = F.interpolate(images, size=(size, size), mode="nearest")
            else:
                images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
            images = images.clamp_(0.0, 1.0)
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=self.options.test_size,
                                               stratify=labels.numpy(), random_state=self.options.split_seed)
        train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
        return DataSplits(images[train_idx].contiguous(), labels[train_idx], images[test_idx].contiguous(),
                          labels[test_idx], [str(d) for d in range(10)])
