"""The Keras-style recipe options of the shared training loop (step schedule, rotation and shift), and that
adding them moved no cached victim's key."""

from __future__ import annotations

import pytest
import torch

from advbench.plan import _options
from advbench_victims._training import TrainOptions, lr_schedule, warp_batch
from advbench_victims.alexnet import AlexNetOptions
from advbench_victims.review_cnn import ReviewCnnOptions
from advbench_victims.vgg_like import VggLikeOptions

NEW = {"schedule", "lr_drop_epochs", "rotation", "shift"}


@pytest.mark.parametrize("options", [AlexNetOptions(), VggLikeOptions(width=64, epochs=40), ReviewCnnOptions()])
def test_the_new_fields_stay_out_of_the_cache_key_at_their_defaults(options):
    assert not NEW & set(_options(options))
    keyed = _options(type(options)(schedule="step", rotation=15, shift=0.1))
    assert (keyed["schedule"], keyed["rotation"], keyed["shift"]) == ("step", 15.0, 0.1)


def test_the_step_schedule_halves_lr_every_lr_drop_epochs():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    schedule = lr_schedule(optimizer, TrainOptions(lr=0.01, epochs=7, schedule="step", lr_drop_epochs=3), 4)
    seen = []
    for _ in range(7 * 4):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    per_epoch = [seen[e * 4] for e in range(7)]
    assert per_epoch == pytest.approx([0.01] * 3 + [0.005] * 3 + [0.0025])
    assert all(seen[e * 4 + i] == seen[e * 4] for e in range(7) for i in range(4))  # constant within an epoch


def test_warp_without_rotation_or_shift_is_the_identity():
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = warp_batch(x, torch.Generator().manual_seed(1), rotation=0.0, shift=0.0, flip=False)
    assert torch.allclose(out, x, atol=1e-5)


def test_warp_repeats_the_border_instead_of_padding_with_black():
    x = torch.full((8, 3, 32, 32), 0.7)
    out = warp_batch(x, torch.Generator().manual_seed(2), rotation=15.0, shift=0.1)
    assert torch.allclose(out, x, atol=1e-5)  # a constant image stays constant: no zero fill at the edges


def test_a_shift_moves_the_content_by_at_most_its_share_and_draws_are_reproducible():
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 16, 16] = 1.0  # one bright pixel at the centre
    out = warp_batch(x, torch.Generator().manual_seed(3), rotation=0.0, shift=0.1, flip=False)
    rows = torch.arange(32.0).view(1, 32, 1)
    cols = torch.arange(32.0).view(1, 1, 32)
    mass = out[:, 0].sum(dim=(1, 2))
    cy = (out[:, 0] * rows).sum(dim=(1, 2)) / mass
    cx = (out[:, 0] * cols).sum(dim=(1, 2)) / mass
    moved = torch.maximum((cy - 16).abs(), (cx - 16).abs())
    assert moved.max() <= 0.1 * 32 + 1e-4 and moved.max() > 1.0  # moved, and never beyond +-3.2 pixels
    again = warp_batch(x, torch.Generator().manual_seed(3), rotation=0.0, shift=0.1, flip=False)
    assert torch.equal(out, again)
