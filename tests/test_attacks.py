"""The built-in attacks, driven by one table: every row gets the same contract tests, through the attack
template (``Attack.__call__``) as the harness calls them, under a threat model on the digits' 1/16 grid.

The victim is a tiny CNN trained for a few seconds on sklearn's 8x8 digits (module-scoped fixture).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from advbench.api import Attack, AttackResult, RunContext, ThreatModel
from advbench.plugins import lookup

# (attack name, options, least success rate expected on the digits model before quantisation, the threat
# model's budget in the attack's norm)
ATTACKS = [
    ("fgsm", {"eps": 0.3}, 0.9, 0.3),
    ("bim", {"eps": 0.2, "alpha": 0.02, "steps": 20}, 0.9, 0.2),
    ("pgd", {"eps": 0.2, "alpha": 0.02, "steps": 20}, 0.9, 0.2),
    ("cw", {"binary_search_steps": 5, "steps": 50, "stepsize": 0.05}, 0.9, 2.0),
    ("deepfool", {"steps": 50}, 0.9, 2.0),
    ("jsma", {"gamma": 0.5}, 0.85, 32),
]
IDS = [row[0] for row in ATTACKS]
N_IMAGES = 48
LEVELS = 16  # the digits' grid


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - 0.3)  # a stand-in for the victims' built-in normalisation


@pytest.fixture(scope="module")
def digits():
    """(frozen eval model, test images in [0, 1] it classifies correctly, their labels)."""
    from sklearn.datasets import load_digits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=gen)
    train, test = perm[:1400], perm[1400:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # test fixture only: a reproducible initialisation
        model = TinyCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _epoch in range(15):
        order = train[torch.randperm(len(train), generator=gen)]
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        pred = model(x[test]).argmax(1)
    accuracy = (pred == y[test]).float().mean().item()
    assert accuracy > 0.9, accuracy
    correct = test[pred == y[test]][:N_IMAGES]
    yield model, x[correct], y[correct]
    torch.set_num_threads(threads)


def make(name: str, options: dict) -> Attack:
    return lookup("attack", name).cls(**options)


def threat_for(name: str, eps) -> ThreatModel:
    return ThreatModel(norm=lookup("attack", name).cls.norm, eps=eps, levels=LEVELS)


_cache: dict[tuple, AttackResult] = {}


def attack_once(name: str, options: dict, digits, seed: int = 0, eps=None) -> AttackResult:
    """The attack through the template, once per (attack, options, seed, budget) in this module."""
    model, x, y = digits
    key = (name, tuple(sorted(options.items())), seed, eps)
    if key not in _cache:
        _cache[key] = make(name, options)(model, x.clone(), y.clone(), RunContext(seed=seed), threat_for(name, eps))
    return _cache[key]


def success(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x_adv).argmax(1) != y


@pytest.mark.parametrize("name,options,least,eps", ATTACKS, ids=IDS)
def test_metadata(name, options, least, eps):
    cls = lookup("attack", name).cls
    assert cls.norm in ("linf", "l2", "l0")
    assert cls.description and "\n" not in cls.description
    assert cls.revision == "1"
    assert "[0, 1]" in cls.__doc__
    for field in cls.Options.model_fields:
        assert field in cls.__doc__, f"{name}: option {field} is not documented"
    cls.Options(**options)  # the table's options validate


@pytest.mark.parametrize("name,options,least,eps", ATTACKS, ids=IDS)
def test_through_the_template_on_grid_and_in_the_ball(name, options, least, eps, digits):
    model, x, y = digits
    result = attack_once(name, options, digits, eps=eps)
    x_adv = result.adversarial
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    steps = x_adv * LEVELS
    assert torch.equal(steps, steps.round()), f"{name}: an output off the 1/{LEVELS} grid"
    norm = make(name, options).norm
    measured = {"linf": (x_adv - x).flatten(1).abs().amax(1), "l2": (x_adv - x).flatten(1).norm(dim=1),
                "l0": (x_adv != x).flatten(1).sum(1).float()}[norm]
    assert measured.max() <= eps + 1e-5, f"{name}: {norm} {float(measured.max())} > {eps}"
    torch.testing.assert_close(result.norms[norm], measured)
    assert torch.equal(result.success, success(model, x_adv, y)), "success is judged on the submitted image"
    rate = result.success_unquantized.float().mean().item()
    assert rate >= least, f"{name}: success before quantisation {rate:.2f} < {least}"
    assert result.success.float().mean() > 0, f"{name}: quantisation undid every success"


@pytest.mark.parametrize("name,options,least,eps", ATTACKS, ids=IDS)
def test_deterministic_and_global_rng_untouched(name, options, least, eps, digits):
    model, x, y = digits
    first = attack_once(name, options, digits, eps=eps).adversarial
    state = torch.random.get_rng_state()
    again = make(name, options)(model, x.clone(), y.clone(), RunContext(seed=0), threat_for(name, eps)).adversarial
    assert torch.equal(torch.random.get_rng_state(), state), f"{name} touched the global RNG"
    assert torch.equal(first, again)


@pytest.mark.parametrize("name,options,least,eps", ATTACKS, ids=IDS)
def test_non_contiguous_input(name, options, least, eps, digits):
    model, x, y = digits
    x_nc = x.transpose(2, 3).contiguous().transpose(2, 3)  # same values, transposed strides
    y_nc = torch.stack([y, y], 1)[:, 0]
    assert not x_nc.is_contiguous() and not y_nc.is_contiguous()
    threat = threat_for(name, eps)
    out = make(name, options)(model, x_nc[:8], y_nc[:8], RunContext(seed=0), threat).adversarial
    assert out.shape == x_nc[:8].shape
    expected = make(name, options)(model, x[:8].clone(), y[:8].clone(), RunContext(seed=0), threat).adversarial
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name,options", [("pgd", {"eps": 0.3, "alpha": 0.03, "steps": 20}), ("jsma", {"gamma": 0.5})])
def test_targeted_attacks_reach_the_target(name, options, digits):
    model, x, y = digits
    assert lookup("attack", name).cls.supports_targeted
    target = (y + 3) % 10
    threat = ThreatModel(norm=make(name, options).norm, eps=options.get("eps"), levels=LEVELS, targeted=True)
    result = make(name, options)(model, x, target, RunContext(seed=0), threat)
    with torch.no_grad():
        reached = model(result.adversarial).argmax(1) == target
    assert torch.equal(result.success, reached)
    assert reached.float().mean() >= 0.7, float(reached.float().mean())


def test_random_choices_follow_the_seed(digits):
    model, x, y = digits
    a = make("pgd", {"eps": 0.1, "steps": 1}).run(model, x[:8], y[:8], RunContext(seed=1))
    b = make("pgd", {"eps": 0.1, "steps": 1}).run(model, x[:8], y[:8], RunContext(seed=2))
    assert not torch.equal(a, b)
    jsma = make("jsma", {})
    t1 = jsma.targets(model, x, y, RunContext(seed=1))
    t2 = jsma.targets(model, x, y, RunContext(seed=2))
    assert not torch.equal(t1, t2)
    for t in (t1, t2, make("jsma", {"target": "next"}).targets(model, x, y, RunContext()),
              make("jsma", {"target": "least_likely"}).targets(model, x, y, RunContext())):
        assert ((t != y) & (t >= 0) & (t < 10)).all()


def test_jsma_l0_budget(digits):
    model, x, y = digits
    n = x[0].numel()
    for gamma in (0.1, 0.5):
        x_adv = attack_once("jsma", {"gamma": gamma}, digits).adversarial
        changed = (x_adv != x).flatten(1).sum(1)
        assert changed.max() <= 2 * math.floor(gamma * n / 2) <= gamma * n
    x_adv = attack_once("jsma", {"gamma": 0.5}, digits).adversarial
    assert ((x_adv == x) | (x_adv == 1)).all()  # theta = 1: changed features are set to 1


def test_jsma_decreasing_theta(digits):
    model, x, y = digits
    x_adv = make("jsma", {"theta": -1.0, "gamma": 0.5}).run(model, x[:16], y[:16], RunContext())
    assert ((x_adv == x[:16]) | (x_adv == 0)).all()
    assert success(model, x_adv, y[:16]).float().mean() >= 0.25


def test_jsma_pair_search_matches_dense_reference():
    from advbench_attacks.jsma import best_pairs, best_pairs_dense

    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        bsz, n = 4, int(torch.randint(2, 120, (1,), generator=gen))
        a = torch.randn(bsz, n, generator=gen)
        b = torch.randn(bsz, n, generator=gen) - 0.5 * a
        domain = torch.rand(bsz, n, generator=gen) < 0.7
        p1, q1, f1 = best_pairs_dense(a, b, domain)
        p2, q2, f2 = best_pairs(a, b, domain, block_elements=500)
        assert torch.equal(f1, f2)
        assert torch.equal(p1[f1], p2[f2]) and torch.equal(q1[f1], q2[f2])
        assert (p2[f2] != q2[f2]).all() and domain.gather(1, p2[:, None])[f2].all()


def test_jsma_matches_torchattacks_reference(digits):
    """Same targets, theta and budget as torchattacks' per-image JSMA: same success, (nearly) same images.

    On digits (values k/16) torchattacks' search domain (x < 0.99) equals ours (x < 1). Only theta > 0:
    torchattacks 3.5.1 scores decreasing pairs as alpha * |beta| < 0 and so picks a masked-out pair (it
    changes nothing); we follow cleverhans (-alpha * beta > 0).
    """
    theta = 1.0
    import torchattacks

    model, x, y = digits
    x, y = x[:24], y[:24]
    ours = make("jsma", {"gamma": 0.25, "theta": theta})  # 64 * 0.25 / 2 = 8 iterations (floor = ceil)
    ctx = RunContext(seed=0)
    target = ours.targets(model, x, y, ctx)
    mine = ours.run(model, x, y, ctx)
    reference = torchattacks.JSMA(model, theta=theta, gamma=0.25)
    reference.set_mode_targeted_by_function(lambda images, labels: target, quiet=True)
    theirs = reference(x.clone(), y)
    with torch.no_grad():
        hit_mine = model(mine).argmax(1) == target
        hit_theirs = model(theirs).argmax(1) == target
    assert hit_mine.float().mean() >= hit_theirs.float().mean() - 1 / 24
    same = (mine == theirs).flatten(1).all(1).float().mean()
    assert same >= 0.8, same


def test_cw_failed_points_return_the_input(digits):
    """foolbox returns an all-zero image where C&W found nothing; the plugin returns the input there."""
    model, x, y = digits
    out = make("cw", {"binary_search_steps": 1, "steps": 2, "initial_const": 1e-6}).run(
        model, x[:8], y[:8], RunContext())
    fooled = success(model, out, y[:8])
    assert not fooled.all()
    assert torch.equal(out[~fooled], x[:8][~fooled])
