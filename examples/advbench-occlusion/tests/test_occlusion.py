"""advbench's conformance kit on Occlusion, and its registration through the installed entry point."""

import pytest

from advbench import plugins
from advbench.testing import check_plugin, parametrize_plugin_checks
from advbench_occlusion.occlusion import Occlusion


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVBENCH_CACHE", str(tmp_path / "cache"))


# one test per check of the kit, for the defaults and for another option set
@parametrize_plugin_checks(Occlusion, Occlusion(patch=3, stride=1, fill=0.0))
def test_conformance(plugin, check):
    check()


def test_registered_through_its_entry_point():
    plugins.reset()
    registration = plugins.lookup("interpreter", "occlusion")
    assert registration.cls is Occlusion
    assert registration.distribution == "advbench-occlusion"


def test_check_plugin_runs_the_whole_kit_at_once():
    check_plugin(Occlusion)


def test_the_mask_is_where_occluding_changes_the_prediction():
    """A victim that looks only at the top-left 4 x 4 corner: occlusion finds that corner and nothing else."""
    import torch
    from advbench.api import RunContext

    class Corner(torch.nn.Module):
        def forward(self, x):
            corner = x[:, :, :4, :4].mean(dim=(1, 2, 3))
            return torch.stack([10 * corner, 10 * (1 - corner)], dim=1)

    x = torch.ones(2, 3, 16, 16)
    masks = Occlusion(patch=4, stride=4).explain(None, Corner(), x, RunContext())
    assert masks.shape == (2, 1, 16, 16)
    assert torch.all(masks[:, :, :4, :4] == 1) and masks[:, :, 4:, :].max() == 0 and masks[:, :, :, 4:].max() == 0
