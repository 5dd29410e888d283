"""The attack template (advbench.threat): what every attack's output goes through before the harness stores it.

Throwaway attacks return what a careless or malicious plugin might (far outside the ball, off the data's grid),
and a toy victim whose label flips at a known intensity shows how success is judged. The suite's threat model
(advbench.suite) is checked here too: resolution, eps lists and the harness filling ``eps`` options.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from advbench.api import Attack, Defence, RunContext, ThreatModel
from advbench.errors import AdvbenchError
from advbench.stages import draw_targets
from advbench.suite import budget_name, load_suite
from advbench.threat import norms, project, quantize

LEVELS = 16
DIGITS = Path(__file__).resolve().parents[1] / "suites" / "digits.yaml"


class Returns(Attack):
    """A throwaway attack: ``run`` returns ``make(x)`` and records the context it got."""

    name = "test-returns"
    description = "returns a fixed function of its input"
    norm = "linf"
    supports_targeted = True

    def __init__(self, make, **kwargs):
        super().__init__(**kwargs)
        self.make = make
        self.seen: list = []

    def run(self, model, x, y, ctx, *rest):
        self.seen.append((x, y, ctx, rest))
        return self.make(x)


class Adaptive(Returns):
    name = "test-adaptive"
    knowledge = "adaptive"


class Threshold(nn.Module):
    """Class 1 where the first pixel exceeds 0.51, else class 0: a label that rounding to 1/16 can flip back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x.flatten(1)[:, 0] - 0.51) * 100
        return torch.stack([torch.zeros_like(score), score], dim=1)


def grid_images(n: int = 6, shape=(1, 4, 4)) -> torch.Tensor:
    """Images on the 1/16 grid, away from 0 and 1 so every move shows."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(4, 13, (n, *shape), generator=gen).float() / LEVELS


def on_grid(x: torch.Tensor) -> bool:
    return torch.equal(x * LEVELS, (x * LEVELS).round())


def attack(make, x, y=None, model=None, **threat):
    y = torch.zeros(len(x), dtype=torch.long) if y is None else y
    return Returns(make)(model or Threshold(), x, y, RunContext(), ThreatModel(**threat))


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5), ("l0", 3)])
@pytest.mark.parametrize("quantized", [False, True], ids=["raw", "quantized"])
def test_an_output_outside_the_ball_is_projected(norm, eps, quantized):
    x = grid_images()
    gen = torch.Generator().manual_seed(1)
    far = x + torch.randn(x.shape, generator=gen)  # far outside the ball and outside [0, 1]
    result = attack(lambda _: far, x, norm=norm, eps=eps, levels=LEVELS if quantized else None)
    adv = result.adversarial
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    size = {"linf": delta.abs().amax(1), "l2": delta.norm(dim=1), "l0": (delta != 0).sum(1).float()}[norm]
    assert (size <= eps + 1e-6).all(), size
    assert (size >= (eps / 2 if quantized else eps - 1e-6)).all(), "projected onto the ball, not to x"
    torch.testing.assert_close(result.norms[norm], size)
    assert on_grid(adv) == quantized


def test_an_output_inside_the_ball_and_the_grid_is_kept_exactly():
    x = grid_images()
    inside = (x + 1 / LEVELS).clamp(0, 1)
    result = attack(lambda _: inside, x, norm="linf", eps=2 / LEVELS, levels=LEVELS)
    assert torch.equal(result.adversarial, inside)


def test_an_off_grid_output_is_quantised_onto_the_grid():
    x = grid_images()
    off = x + 0.3 / LEVELS  # between grid points, nearer the lower one
    result = attack(lambda _: off, x, norm="linf", eps=0.5, levels=LEVELS)
    assert on_grid(result.adversarial)
    assert torch.equal(result.adversarial, x)  # rounded back to x
    assert (result.norms["l0"] == 0).all() and (result.norms["linf"] == 0).all()


def test_quantize_off_leaves_outputs_off_the_grid():
    x = grid_images()
    off = x + 0.3 / LEVELS
    result = attack(lambda _: off, x, norm="linf", eps=0.5, levels=LEVELS, quantize=False)
    assert not on_grid(result.adversarial)
    torch.testing.assert_close(result.adversarial, off)
    # an element's change below half a grid step is not counted as changed (l0), its size is (linf)
    assert (result.norms["l0"] == 0).all()
    torch.testing.assert_close(result.norms["linf"], torch.full((len(x),), 0.3 / LEVELS))


def test_quantisation_that_undoes_success_counts_as_failure():
    x = torch.full((2, 1, 4, 4), 8 / LEVELS)  # first pixel 0.5: class 0
    nudged = x.clone()
    nudged[:, 0, 0, 0] = 0.52  # class 1 before rounding, 0.5 (class 0) after
    result = attack(lambda _: nudged, x, norm="linf", eps=0.1, levels=LEVELS)
    assert result.success_unquantized.all()
    assert not result.success.any()
    kept = attack(lambda _: nudged, x, norm="linf", eps=0.1, levels=LEVELS, quantize=False)
    assert kept.success.all() and kept.success_unquantized.all()


def test_rounding_out_of_the_ball_truncates_toward_x_instead():
    x = torch.full((1, 1, 4, 4), 8 / LEVELS)
    # 0.7 grid steps on every element: rounding gives 1 step each, an l2 norm of 4 steps > eps
    far = x + 0.7 / LEVELS
    eps = 3.0 / LEVELS
    projected = project(far, x, "l2", eps)
    out = quantize(projected, x, LEVELS, "l2", eps)
    assert on_grid(out)
    assert float(norms(out, x, LEVELS)["l2"]) <= eps
    assert ((out - x).abs() <= (projected - x).abs() + 1e-7).all()  # no element moved further from x


def test_targeted_success_is_reaching_the_target():
    x = torch.full((2, 1, 4, 4), 8 / LEVELS)
    moved = x.clone()
    moved[:, 0, 0, 0] = 12 / LEVELS  # class 1
    to_one = attack(lambda _: moved, x, y=torch.ones(2, dtype=torch.long), norm="linf", eps=0.5, levels=LEVELS,
                    targeted=True)
    assert to_one.success.all()
    to_zero = attack(lambda _: moved, x, y=torch.zeros(2, dtype=torch.long), norm="linf", eps=0.5, levels=LEVELS,
                     targeted=True)
    assert not to_zero.success.any()
    untargeted = attack(lambda _: moved, x, y=torch.zeros(2, dtype=torch.long), norm="linf", eps=0.5, levels=LEVELS)
    assert untargeted.success.all()


def test_run_gets_detached_contiguous_copies_and_the_threat_model():
    x = grid_images().transpose(2, 3)
    y = torch.zeros(len(x), dtype=torch.long)
    source = x.clone().requires_grad_(True)
    plugin = Returns(lambda inp: inp.mul_(0) + 0.5)  # writes into its input: must not reach the reference x
    threat = ThreatModel(norm="linf", eps=1 / LEVELS, levels=LEVELS)
    result = plugin(Threshold(), source, y, RunContext(), threat)
    seen_x, _, ctx, rest = plugin.seen[0]
    assert seen_x.is_contiguous() and not seen_x.requires_grad and rest == ()
    assert ctx.threat == threat
    assert ((result.adversarial - x).abs() <= 1 / LEVELS + 1e-7).all()  # projected around the caller's x


def test_an_adaptive_attack_needs_the_defence_and_gets_it():
    x = grid_images()
    y = torch.zeros(len(x), dtype=torch.long)
    threat = ThreatModel(norm="linf", eps=0.1)
    with pytest.raises(AdvbenchError, match="adaptive"):
        Adaptive(lambda inp: inp)(Threshold(), x, y, RunContext(), threat)
    defence = Defence(victim=Threshold(), detector="none", score=lambda b: b.flatten(1).sum(1), threshold=0.0)
    plugin = Adaptive(lambda inp: inp)
    plugin(Threshold(), x, y, RunContext(), threat, defence)
    assert plugin.seen[0][3] == (defence,)


def test_the_harness_draws_targets_among_the_other_classes():
    y = torch.arange(10).repeat(100)
    targets = draw_targets(y, 10, torch.Generator().manual_seed(0))
    assert (targets != y).all() and targets.min() >= 0 and targets.max() <= 9
    counts = torch.bincount((targets - y) % 10, minlength=10)
    assert counts[0] == 0 and counts[1:].min() > 70  # every other class, about 111 times each
    assert torch.equal(targets, draw_targets(y, 10, torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------------------------------------- the suite


def suite_file(tmp_path: Path, change) -> Path:
    raw = yaml.safe_load(DIGITS.read_text())
    change(raw)
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_without_a_threat_model_an_attack_runs_under_its_own_norm_and_eps():
    suite = load_suite(DIGITS)
    assert suite.threat("fgsm") == {"norm": "linf", "eps": 0.2, "quantize": True, "targeted": False, "levels": 16}


def test_the_top_level_threat_model_fills_eps_options_and_an_attack_overrides_it(tmp_path):
    def change(raw):
        raw["threat_model"] = {"eps": 0.125, "quantize": False}
        raw["attacks"] = {"fgsm": {}, "pgd": {"threat_model": {"eps": 0.25, "targeted": True}},
                          "jsma": {"threat_model": {"eps": 20}}}  # an l0 budget counts input elements
    suite = load_suite(suite_file(tmp_path, change))
    assert suite.component("attacks", "fgsm")[1].eps == 0.125
    assert suite.threat("fgsm") == {"norm": "linf", "eps": 0.125, "quantize": False, "targeted": False, "levels": 16}
    assert suite.component("attacks", "pgd")[1].eps == 0.25
    assert suite.threat("pgd")["targeted"] is True and suite.threat("pgd")["quantize"] is False
    assert suite.threat("jsma") == {"norm": "l0", "eps": 20.0, "quantize": False, "targeted": False, "levels": 16}


def test_an_eps_list_makes_one_attack_per_budget_and_set_reaches_them_all(tmp_path):
    def change(raw):
        raw["attacks"] = {"pgd": {"threat_model": {"eps": [2 / 255, 0.5]}},
                          "jsma": {"threat_model": {"eps": [5, 10]}}}
    suite = load_suite(suite_file(tmp_path, change), ["attacks.pgd.options.steps=3"])
    assert suite.usable("attacks") == ["pgd@2/255", "pgd@eps=0.5", "jsma@eps=5", "jsma@eps=10"]
    assert [suite.threat(a)["eps"] for a in suite.usable("attacks")] == [2 / 255, 0.5, 5.0, 10.0]
    for name in ("pgd@2/255", "pgd@eps=0.5"):
        assert suite.component("attacks", name)[1].steps == 3
    assert suite.component("attacks", "pgd@2/255")[1].eps == 2 / 255


def test_budget_names():
    assert budget_name("pgd", "linf", 8 / 255) == "pgd@8/255"
    assert budget_name("cw", "l2", 0.5) == "cw@eps=0.5"
    assert budget_name("cw", "l2", 255 / 255) == "cw@255/255"
    assert budget_name("jsma", "l0", 2) == "jsma@eps=2"
