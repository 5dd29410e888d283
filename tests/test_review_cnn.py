"""review-cnn: the review's CIFAR-10 victim, checked against the layer list of their Keras model."""

from __future__ import annotations

import torch
from torch import nn

from advbench import plugins
from advbench_detectors._features import penultimate
from advbench_detectors.kd_bu import KdBu, dropout_modules


def build() -> nn.Module:
    reg = plugins.lookup("victim", "review-cnn")  # through the entry points, as a suite finds it
    return reg.cls().build((3, 32, 32), 10)


def test_the_layers_follow_the_review_s_model():
    model = build()
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [64, 64, 128, 128, 256, 256, 512]  # their l_1 ... l_25
    # every conv is followed by batch norm and ReLU; every stage ends in max-pool then dropout 0.1, 0.2, 0.3, 0.4
    layers = list(model[0])
    for i, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.ReLU)
        if isinstance(layer, nn.Dropout):
            assert isinstance(layers[i - 1], nn.MaxPool2d)
    assert [m.p for m in dropout_modules(model)] == [0.1, 0.2, 0.3, 0.4]
    # their head: Flatten, Dense 512 with no activation (l_31), Dense 10
    head = list(model)[1:]
    assert [type(m) for m in head] == [nn.Flatten, nn.Linear, nn.Linear]
    assert (head[1].in_features, head[1].out_features, head[2].out_features) == (512 * 2 * 2, 512, 10)


def test_kd_bu_reads_the_linear_512_features_and_samples_the_conv_dropout():
    torch.manual_seed(0)
    model = build().eval()
    x = torch.rand(16, 3, 32, 32)
    features, logits = penultimate(model, x)
    # the review's density layer: 512 units, no ReLU after it, so some coordinates are negative
    assert features.shape == (16, 512) and (features < 0).any()
    assert torch.allclose(model[-1](features), logits, atol=1e-5)
    # MC dropout samples the conv stages' dropout: the softmax varies across passes, while eval mode is fixed
    uncertainty = KdBu()._uncertainty(model, x, seed=0, mc_samples=8)
    assert (uncertainty > 0).all()
    assert all(not m.training for m in dropout_modules(model))  # put back to eval after the passes
